"""One object, top to bottom: fetch (HEAD, skip check, bytes) -> text -> chunks -> Chroma -> settle; and the loop
over a run's keys, which batches new objects and keeps documents converting in a pool while it writes others."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from s3sync_dagster.pipeline import documents, events, extract, index, settle
from s3sync_dagster.pipeline.fetch import Fetched, fetch
from s3sync_dagster.pipeline.meta_links import InMemoryMetaLinks, MetaLinks
from s3sync_dagster.pipeline.objects import S3Client
from s3sync_dagster.pipeline.owners import Owner
from s3sync_dagster.pipeline.reports import KeyReport, failure_message, lap
from s3sync_dagster.pipeline.spec import Invocation, SourceSpec
from s3sync_dagster.pipeline.targets import CollectionFor, Collections, searchable
from s3sync_dagster.pipeline.write import NewObjects, Prepared, finish, prepare, write


def extract_in_process(object_key: str, data: bytes, spec: SourceSpec) -> extract.Extracted:
    if documents.is_converted(object_key):
        return documents.convert_document(object_key, data, spec.document_options).to_extracted()
    return extract.extract_text(object_key, data)


def chunked_in_process(fetched: Fetched, spec: SourceSpec) -> Prepared:
    """A fetched object's text, extracted in this process, cut into the records its write needs."""
    mark = time.perf_counter()
    extracted = extract_in_process(fetched.report.document_key or fetched.report.object_key, fetched.data, spec)
    lap(fetched.report, "extract", mark)
    fetched.data = b""  # chunked next: the text is what the write needs
    return prepare(fetched, extracted, spec)


def sync_object(
    s3: S3Client,
    spec: SourceSpec,
    collection_for: CollectionFor,
    embed: index.Embedder,
    object_key: str,
    *,
    custom_id: str | None = None,
    user_metadata: Mapping[str, Any] | None = None,
    target_collection_name: str | None = None,
) -> KeyReport:
    """Bring one object's chunks in Chroma up to date. Raises on bad input, naming the object and the rule."""

    def check(report: KeyReport | None = None) -> KeyReport | Fetched:
        return fetch(
            s3, spec, collection_for, object_key,
            custom_id=custom_id, user_metadata=user_metadata, target_collection_name=target_collection_name,
            empty_etag=report.etag if report is not None and report.status == "empty" else None,
        )  # fmt: skip

    def extract_text(key: str, data: bytes) -> extract.Extracted:
        return extract_in_process(key, data, spec)

    fetched = check()
    if isinstance(fetched, KeyReport):
        return settle.settle(fetched, check, extract_text, spec, embed)
    mark = time.perf_counter()
    extracted = extract_text(fetched.report.document_key or object_key, fetched.data)
    lap(fetched.report, "extract", mark)
    return settle.settle(finish(fetched, extracted, spec, embed), check, extract_text, spec, embed)


def _document_in_metadata_mode(
    spec: SourceSpec, collection_for: CollectionFor, object_key: str, linked: list[str]
) -> tuple[KeyReport, list[str]]:
    """In metadata mode a document is indexed only through the metadata files naming it, which are synced
    next: the linked ones and any whose chunks hold it. Chunks it has of its own (indexed directly) go."""
    started = time.perf_counter()
    report = KeyReport(object_key=object_key, status="ignored", collection_name=spec.collection_name)
    meta_keys = list(linked)
    for collection in searchable(collection_for, spec.collection_name):
        own = []
        for chunk_id, chunk in index.stored_chunks(collection, object_key, spec.owner, with_text=False).items():
            meta_key = chunk.metadata.get("metadata_key")
            if not meta_key:
                own.append(chunk_id)
            elif meta_key not in meta_keys:
                meta_keys.append(str(meta_key))
        if own:
            index.delete_ids(collection, own)
            report.chunks_deleted += len(own)
    report.message = (
        f"'{object_key}' is indexed through its metadata file(s) {', '.join(meta_keys)}"
        if meta_keys
        else f"'{object_key}' is named by no .meta.json file: in metadata mode only named documents are indexed"
    ) + (f"; removed {report.chunks_deleted} chunk(s) it had of its own" if report.chunks_deleted else "")
    report.duration_s = time.perf_counter() - started
    return report, meta_keys


# How many keys ahead of the one being written a sync fetches, extracts and chunks in its staging thread:
# one batch of new objects (write.BATCH_OBJECTS), so the next batch is ready when the model finishes one.
STAGE_AHEAD = 64
# ... and while the objects staged and not yet written hold fewer bytes than this: of a run of large objects,
# at most one is held besides the one being written (a sync without staging holds that one).
STAGE_BYTES = 64 * 1024 * 1024


class _Held:
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


class _ReadAhead:
    """Stored chunks read for many keys at once (index.chunks_of_keys), each key's taken once by its check;
    with each, its share of the read's time."""

    def __init__(self) -> None:
        self._found: dict[str, tuple[dict[str, index.StoredChunk], float]] = {}
        self._lock = threading.Lock()

    def read(self, collection_for: CollectionFor, collection_name: str, object_keys: list[str], owner: Owner) -> None:
        started = time.perf_counter()
        try:
            found = index.chunks_of_keys(collection_for(collection_name), object_keys, owner)
        except Exception:  # each key's check reads for itself then, and fails on its own
            return
        share = (time.perf_counter() - started) / len(object_keys)
        with self._lock:
            self._found.update({key: (chunks, share) for key, chunks in found.items()})

    def take(self, object_key: str) -> tuple[dict[str, index.StoredChunk] | None, float]:
        """The key's chunks as read (None where it was not read, or its read failed), and its share of the time."""
        with self._lock:
            return self._found.pop(object_key, (None, 0.0))


@dataclass
class _Staged:
    """A key fetched (and, unless a document for the pool, extracted and chunked) ahead of its write."""

    result: KeyReport | Fetched | Prepared | None = None
    error: Exception | None = None
    started: float = 0.0
    held: int = 0  # the object's bytes, counted in _Held until the writing thread takes it


def _stage(
    s3: S3Client,
    spec: SourceSpec,
    collection_for: CollectionFor,
    object_key: str,
    pooled: bool,
    held: _Held,
    reads: _ReadAhead,
) -> _Staged:
    """The read side of one plain key, in the staging thread: HEAD, skip check, GET, text, chunks."""
    staged = _Staged(started=time.perf_counter())
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
        if isinstance(fetched, KeyReport) or (pooled and documents.is_converted(object_key)):
            staged.result = fetched  # final, or a document for the run's converter pool (submitted in order)
            return staged
        staged.result = chunked_in_process(fetched, spec)
    except Exception as error:  # the key's own failure, reported in its turn
        staged.error = error
    return staged


def sync_keys(
    s3: S3Client,
    spec: SourceSpec,
    collection_for: CollectionFor,
    embed: index.Embedder,
    object_keys: Iterable[str],
    on_report: Callable[[KeyReport], None] | None = None,
    pool: documents.DocumentPool | None = None,
    invocations: Mapping[str, Invocation] | None = None,
    links: MetaLinks | None = None,
    ahead: int = STAGE_AHEAD,
    stop: threading.Event | None = None,
) -> list[KeyReport]:
    """Sync many keys; a key that fails is reported as failed and never stops the others.

    The stages overlap: a staging thread reads, extracts and chunks up to `ahead` plain keys (no
    `.meta.json`, no invocation, not metadata mode; under STAGE_BYTES held) ahead of the one this
    thread embeds and writes,
    so S3 and extraction wait while the model works; writes, settle checks and reports stay on this
    thread, in key order. A key staged ahead is checked against the bucket again after its write
    (settle), as any sync is. With a pool, documents are converted in its worker processes; a few
    conversions are kept in flight so every core stays busy. A document's sync also syncs the metadata
    files that name it (links), after it; in metadata mode only they index it.

    stop: once set (the run is being stopped), no further key is begun, conversions in flight are cancelled
    and objects waiting for a shared write are dropped; what was reported stays reported.
    """
    links = links if links is not None else InMemoryMetaLinks()
    worklist = deque(dict.fromkeys(object_keys))
    queued = set(worklist)
    naming = links.naming(key for key in worklist if not events.is_meta_key(key))
    named_document = {meta_key: document for document, metas in naming.items() for meta_key in metas}
    reports: list[KeyReport] = []
    in_flight: deque[tuple[Fetched, Future[documents.Converted]]] = deque()
    window = 2 * pool.workers if pool is not None else 0
    # Staging ahead only where no key's sync reads or writes another's chunks: a .meta.json (and the
    # documents named by one) is synced in order after every earlier write, as before.
    staging = (
        ahead > 0
        and len(worklist) > 1
        and spec.auto_sync != "metadata"
        and not naming
        and not any(events.is_meta_key(key) for key in worklist)
    )
    stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3sync-stage") if staging else None
    staged: dict[str, Future[_Staged]] = {}
    held = _Held(STAGE_BYTES)
    # The skip checks of staged keys, and the settle checks after a batch of new objects is written, read the
    # stored chunks of many keys at once: in embedded Chroma a read costs about the same for 1 key or 64.
    staged_reads, settle_reads = _ReadAhead(), _ReadAhead()
    settle_read_share: dict[str, float] = {}

    def stage_ahead() -> None:
        """Top the staged keys up to `ahead` once half of them are taken: one read of stored chunks each time."""
        assert stager is not None
        if len(staged) > ahead // 2:
            return
        wanted = [
            key for key in itertools.islice(worklist, ahead) if key not in staged and key not in (invocations or {})
        ][: ahead - len(staged)]
        if not wanted:
            return
        stager.submit(staged_reads.read, collection_for, spec.collection_name, wanted, spec.owner)
        for key in wanted:
            staged[key] = stager.submit(_stage, s3, spec, collection_for, key, pool is not None, held, staged_reads)

    def then_sync(document_key: str, meta_keys: list[str]) -> None:
        """The metadata files naming a document are synced after it, in this run."""
        for meta_key in meta_keys:
            named_document.setdefault(meta_key, document_key)
            if meta_key not in queued:
                worklist.append(meta_key)
                queued.add(meta_key)

    def check(report: KeyReport) -> KeyReport | Fetched:
        invocation = (invocations or {}).get(report.object_key, Invocation())
        stored, share = settle_reads.take(report.object_key)  # only a plain key's, once, just after its write
        if share:
            settle_read_share[report.object_key] = share
        return fetch(
            s3, spec, collection_for, report.object_key,
            custom_id=invocation.custom_id, user_metadata=invocation.metadata,
            target_collection_name=invocation.target_collection_name, links=links,
            empty_etag=report.etag if report.status == "empty" else None, stored=stored,
        )  # fmt: skip

    def extract_text(key: str, data: bytes) -> extract.Extracted:
        if pool is not None and documents.is_converted(key):
            return documents.result_of(key, pool.submit(key, data, spec.document_options), spec.document_options)
        return extract_in_process(key, data, spec)

    def done(report: KeyReport) -> None:
        report = settle.settle(report, check, extract_text, spec, embed)
        settle_reads.take(report.object_key)  # unread where the settle check did not run: never used later
        share = settle_read_share.pop(report.object_key, 0.0)
        if "settle" in report.timings:
            report.timings["settle"] += share
        document = named_document.get(report.object_key)
        if document is not None and report.status != "failed" and report.document_key != document:
            links.unlink(document, report.object_key)  # the metadata file is gone or names another object now
        reports.append(report)
        if on_report is not None:
            on_report(report)

    def failed(object_key: str, error: Exception, started: float) -> None:
        done(
            KeyReport(
                object_key=object_key,
                status="failed",
                collection_name=spec.collection_name,
                message=failure_message(object_key, error),
                duration_s=time.perf_counter() - started,
            )
        )

    def written(group: list[Prepared]) -> None:
        """A batch of new objects is in Chroma: read their chunks for the settle checks in one go."""
        plain = [
            prepared.fetched.report.object_key
            for prepared in group
            if prepared.fetched.meta_key is None
            and prepared.fetched.custom_id is None
            and not prepared.fetched.shared
            and prepared.fetched.report.object_key not in (invocations or {})
            and not events.is_meta_key(prepared.fetched.report.object_key)
        ]
        if len(plain) > 1:
            settle_reads.read(collection_for, spec.collection_name, plain, spec.owner)  # plain: the source's own

    new_objects = NewObjects(
        embed, done, lambda fetched, error: failed(fetched.report.object_key, error, fetched.started), written
    )

    def deliver(fetched: Fetched, extracted: extract.Extracted) -> None:
        deliver_prepared(prepare(fetched, extracted, spec))

    def deliver_prepared(prepared: Prepared) -> None:
        if new_objects.takes(prepared):
            new_objects.add(prepared)
        else:
            done(write(prepared, embed))

    def drain_one() -> None:
        fetched, future = in_flight.popleft()
        new_objects.wait_for(future)  # the new objects prepared meanwhile are written, not held behind it
        try:
            mark = time.perf_counter()
            extracted = documents.result_of(
                fetched.report.document_key or fetched.report.object_key, future, spec.document_options
            )
            lap(fetched.report, "extract", mark)
            deliver(fetched, extracted)
        except Exception as error:  # one bad object fails its own key, never the others
            failed(fetched.report.object_key, error, fetched.started)

    def submit_document(fetched: Fetched) -> None:
        document_key = fetched.report.document_key or fetched.report.object_key
        in_flight.append((fetched, pool.submit(document_key, fetched.data, spec.document_options)))  # type: ignore[union-attr]
        fetched.data = b""  # the worker has its copy; do not hold every document in memory
        while len(in_flight) >= window:
            drain_one()

    def take_staged(object_key: str) -> None:
        future = staged.pop(object_key)
        new_objects.wait_for(future)
        result = future.result()
        held.release(result.held)
        if result.error is not None:
            failed(object_key, result.error, result.started)
        elif isinstance(result.result, KeyReport):
            done(result.result)
        elif isinstance(result.result, Fetched):
            submit_document(result.result)
        elif result.result is not None:
            deliver_prepared(result.result)

    def sync_one(object_key: str, started: float) -> None:
        try:
            invocation = (invocations or {}).get(object_key, Invocation())
            invocation.validate(spec, object_key)
            if not events.is_meta_key(object_key):
                meta_keys = naming.get(object_key, [])
                if spec.auto_sync == "metadata" and invocation == Invocation():
                    report, meta_keys = _document_in_metadata_mode(spec, collection_for, object_key, meta_keys)
                    then_sync(object_key, meta_keys)
                    done(report)
                    return
                then_sync(object_key, meta_keys)
            if new_objects.holds(object_key):
                # Its chunks (or those its .meta.json names) must be in Chroma before it is looked at again.
                new_objects.flush()
            fetched = fetch(
                s3, spec, collection_for, object_key,
                custom_id=invocation.custom_id, user_metadata=invocation.metadata,
                target_collection_name=invocation.target_collection_name,
                links=links,
            )  # fmt: skip
            if isinstance(fetched, KeyReport):
                done(fetched)
            elif pool is not None and documents.is_converted(fetched.report.document_key or object_key):
                submit_document(fetched)
            else:
                deliver_prepared(chunked_in_process(fetched, spec))
        except Exception as error:  # one bad object fails its own key, never the others
            failed(object_key, error, started)

    def stopping() -> bool:
        return stop is not None and stop.is_set()

    try:
        while worklist and not stopping():
            if stager is not None:
                stage_ahead()
            object_key = worklist.popleft()
            started = time.perf_counter()
            if object_key in staged:
                try:
                    take_staged(object_key)
                except Exception as error:  # one bad object fails its own key, never the others
                    failed(object_key, error, started)
                continue
            sync_one(object_key, started)
        while in_flight and not stopping():
            drain_one()
        if not stopping():
            new_objects.flush()
    finally:
        for _, future in in_flight:  # left only when stopped
            future.cancel()
        if stager is not None:
            held.close()  # a staging thread waiting for room stops waiting
            stager.shutdown(wait=True, cancel_futures=True)
    return reports


def sync_keys_following_swaps(
    s3: S3Client,
    spec: SourceSpec,
    collections: Collections,
    embed: index.Embedder,
    object_keys: Iterable[str],
    on_report: Callable[[KeyReport], None] | None = None,
    **options: Any,
) -> list[KeyReport]:
    """sync_keys, beside a re-embedding that may swap a collection for its copy while the keys are written: a key
    that failed once the swap was done is not reported, and every key that wrote to a swapped collection (or
    failed) is synced once more on the swapped-in one. A write that reached the old collection after its last
    check is in the new one then (the skip check reads the new one), none fails for the swap, nothing stays stale.
    A key failing again says which collection was swapped."""
    held: set[str] = set()

    def told(report: KeyReport) -> None:
        if report.status == "failed" and collections.swapped():
            held.add(report.object_key)
        elif on_report is not None:
            on_report(report)

    reports = sync_keys(s3, spec, collections, embed, object_keys, on_report=told, **options)
    swapped = collections.swapped()
    if not swapped and not held:
        return reports
    if not swapped:  # failed for another reason after all (a swap's check found none at the end): told as they are
        for report in reports:
            if report.object_key in held and on_report is not None:
                on_report(report)
        return reports
    collections.refresh(swapped)
    # An unchanged key wrote nothing: the copy was reconciled with what it had.
    again = [
        r.object_key
        for r in reports
        if r.object_key in held or (r.collection_name in swapped and r.status != "unchanged")
    ]

    def retold(report: KeyReport) -> None:
        if report.status == "failed":
            report.message = (
                f"collection(s) {', '.join(repr(name) for name in swapped)} were swapped for their re-embedded "
                f"copy while this key was written, and syncing it again there failed: {report.message}"
            )
        if on_report is not None:
            on_report(report)

    redone = {r.object_key: r for r in sync_keys(s3, spec, collections, embed, again, on_report=retold, **options)}
    return [redone.get(report.object_key, report) for report in reports]
