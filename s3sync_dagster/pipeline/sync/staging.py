"""The read stage run ahead: a staging thread that fetches, extracts and chunks the next plain keys of a sync
while its writing thread embeds and writes the current one, within a budget of bytes held (see pipeline/sync/stages.py
for how the stages overlap)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from s3sync_dagster.pipeline.chroma import StoredChunk, chunks_of_keys
from s3sync_dagster.pipeline.extraction import is_converted
from s3sync_dagster.pipeline.records import Owner
from s3sync_dagster.pipeline.s3 import S3Client, is_meta_key
from s3sync_dagster.pipeline.spec import Invocation, SourceSpec
from s3sync_dagster.pipeline.sync.extracting import chunked_in_process
from s3sync_dagster.pipeline.sync.fetch import Fetched, fetch
from s3sync_dagster.pipeline.sync.reports import KeyReport
from s3sync_dagster.pipeline.sync.targets import CollectionFor
from s3sync_dagster.pipeline.sync.worklist import Worklist
from s3sync_dagster.pipeline.sync.write import NewObjects, Prepared


class Held:
    """The bytes of the objects staged and not yet taken by the writing thread; the staging thread reads
    the next key only while they are under the limit (one object of any size when none is held)."""

    def __init__(self, limit: int) -> None:
        self._limit, self._bytes, self._closed = limit, 0, False
        self._changed = threading.Condition()

    def wait_for_room(self) -> bool:
        """Wait until the next key may be read; False once the sync is closing."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._bytes < self._limit)
            return not self._closed

    def add(self, count: int) -> None:
        with self._changed:
            self._bytes += count

    def release(self, count: int) -> None:
        with self._changed:
            self._bytes -= count
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class ReadAhead:
    """Stored chunks read for many keys at once (index.chunks_of_keys), each key's taken once by its check;
    with each, its share of the read's time."""

    def __init__(self) -> None:
        self._found: dict[str, tuple[dict[str, StoredChunk], float]] = {}
        self._lock = threading.Lock()

    def read(self, collection_for: CollectionFor, collection_name: str, object_keys: list[str], owner: Owner) -> None:
        started = time.perf_counter()
        try:
            found = chunks_of_keys(collection_for(collection_name), object_keys, owner)
        except Exception:  # each key's check reads for itself then, and fails on its own
            return
        share = (time.perf_counter() - started) / len(object_keys)
        with self._lock:
            self._found.update({key: (chunks, share) for key, chunks in found.items()})

    def take(self, object_key: str) -> tuple[dict[str, StoredChunk] | None, float]:
        """The key's chunks as read (None where it was not read, or its read failed), and its share of the time."""
        with self._lock:
            return self._found.pop(object_key, (None, 0.0))


@dataclass
class Staged:
    """A key fetched (and, unless a document for the pool, extracted and chunked) ahead of its write."""

    result: KeyReport | Fetched | Prepared | None = None
    error: Exception | None = None
    started: float = 0.0
    held: int = 0  # the object's bytes, counted in Held until the writing thread takes it


def stage(
    s3: S3Client,
    spec: SourceSpec,
    collection_for: CollectionFor,
    object_key: str,
    pooled: bool,
    held: Held,
    reads: ReadAhead,
) -> Staged:
    """The read side of one plain key, in the staging thread: HEAD, skip check, GET, text, chunks. Never raises:
    the key's own failure is kept in `error` and reported in its turn."""
    staged = Staged(started=time.perf_counter())
    stored, read_share = reads.take(object_key)
    if not held.wait_for_room():
        staged.error = RuntimeError(f"object '{object_key}': the sync stopped before it was read")
        return staged
    try:
        fetched = fetch(s3, spec, collection_for, object_key, stored=stored)
        report = fetched if isinstance(fetched, KeyReport) else fetched.report
        report.timings["chroma_read"] = report.timings.get("chroma_read", 0.0) + read_share
        if isinstance(fetched, Fetched):
            staged.held = fetched.info.size
            held.add(staged.held)
        if isinstance(fetched, KeyReport) or (pooled and is_converted(object_key)):
            staged.result = fetched  # final, or a document for the run's converter pool (submitted in order)
            return staged
        staged.result = chunked_in_process(fetched, spec)
    except Exception as error:  # the key's own failure, reported in its turn
        staged.error = error
    return staged


def stages_ahead(object_keys: Worklist, spec: SourceSpec, ahead: int, named: bool) -> bool:
    """Whether a sync of these keys stages any ahead (named: some document of them is named by a .meta.json).

    Staging ahead only where no key's sync reads or writes another's chunks: a .meta.json (and the
    documents named by one) is synced in order after every earlier write, as before."""
    return (
        ahead > 0
        and len(object_keys) > 1
        and spec.auto_sync != "metadata"
        and not named
        and not any(is_meta_key(key) for key in object_keys)
    )


class Stager:
    """The staging thread of one sync and the keys it has staged, each taken once, in order, by the writing thread.

    Keeps up to `ahead` keys staged (topped up once half are taken, with one read of their stored chunks), and
    the bytes of the objects staged but not taken under `limit` (Held)."""

    def __init__(
        self,
        s3: S3Client,
        spec: SourceSpec,
        collection_for: CollectionFor,
        pooled: bool,
        ahead: int,
        limit: int,
        invocations: Mapping[str, Invocation] | None,
    ) -> None:
        self._s3, self._spec, self._collection_for, self._pooled = s3, spec, collection_for, pooled
        self._ahead, self._invocations = ahead, invocations or {}
        self._held = Held(limit)
        # The skip checks of staged keys read the stored chunks of many keys at once: in embedded Chroma a read
        # costs about the same for 1 key or 64.
        self._reads = ReadAhead()
        self._staged: dict[str, Future[Staged]] = {}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3sync-stage")

    def top_up(self, upcoming: Iterable[str]) -> None:
        """Top the staged keys up to `ahead` once half of them are taken: one read of stored chunks each time.
        upcoming: the keys still to sync, in order (invoked keys are never staged)."""
        if len(self._staged) > self._ahead // 2:
            return
        wanted = [
            key
            for key in itertools.islice(upcoming, self._ahead)
            if key not in self._staged and key not in self._invocations
        ][: self._ahead - len(self._staged)]
        if not wanted:
            return
        self._thread.submit(
            self._reads.read, self._collection_for, self._spec.collection_name, wanted, self._spec.owner
        )
        for key in wanted:
            self._staged[key] = self._thread.submit(
                stage, self._s3, self._spec, self._collection_for, key, self._pooled, self._held, self._reads
            )

    def has(self, object_key: str) -> bool:
        return object_key in self._staged

    def take(self, object_key: str, new_objects: NewObjects) -> Staged:
        """The key's staged result, waited for (the new objects waiting meanwhile are written after PATIENCE_S);
        its bytes no longer count as held."""
        future = self._staged.pop(object_key)
        new_objects.wait_for(future)
        result = future.result()
        self._held.release(result.held)
        return result

    def close(self) -> None:
        """Stop the staging thread: one waiting for room stops waiting, keys not begun are never read."""
        self._held.close()
        self._thread.shutdown(wait=True, cancel_futures=True)
