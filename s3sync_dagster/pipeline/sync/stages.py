"""A key's sync as named stages joined in one place: the loop over a run's keys (sync_keys), and one object's
sync (sync_object).

A key travels read (HEAD, skip check, GET: fetch) -> extract (its text) -> chunk (its records: write.prepare) ->
embed and write (write.NewObjects: new objects in shared batches, the others alone) -> settle (checked against
the bucket again: settle.RunChecks) -> report (settle.Reporter: kept, and told to on_report). One bad key fails only
itself: every stage turns its key's error into that key's failed report.

How the stages overlap, said here once:

  stage                        runs on                       ahead of the write      holds in memory
  read, extract, chunk         the staging thread            up to STAGE_AHEAD keys  the objects' bytes, under
    (plain keys)               (staging.Stager)                                      STAGE_BYTES (staging.Held)
  extract (documents,          the pool's worker processes   a window of 2 per       the window's documents, in
    with a pool)               (extracting.Conversions)      worker, in key order    the workers (not here)
  read (other keys), embed,    this thread                   -                       new objects waiting for a
    write, settle, report      (write.NewObjects, ...)                               shared write: BATCH_OBJECTS
                                                                                     objects, BATCH_CHUNKS chunks

What waits for what:
- Before this thread waits on a staged key or a conversion, the new objects waiting for a shared write are
  written once they have waited write.PATIENCE_S (NewObjects.wait_for): a slow key holds back none before it.
- A key is read on this thread only once the chunks it could read or replace are written (NewObjects.holds, then
  flush): its own, or for a .meta.json any waiting.
- The staging thread reads the next key only while the staged bytes not yet taken are under STAGE_BYTES.
- Staging runs only where no key's sync reads or writes another's chunks (staging.stages_ahead): no .meta.json,
  no document named by one, not metadata mode; an invoked key is never staged.
- A key is reported only once written and settled, on this thread: in key order, but for new objects waiting
  for a shared write, reported once it is done (after any key written alone meanwhile); the settle checks
  after such a batch read their stored chunks in one go (RunChecks.read_written).
- stop: once set, no further key is begun, conversions in flight are cancelled and objects waiting for a shared
  write are dropped; what was reported stays reported.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import s3sync_dagster.pipeline.sync.settle as settle
from s3sync_dagster.pipeline.chroma import Embedder, delete_ids, stored_chunks
from s3sync_dagster.pipeline.extraction import DocumentPool, Extracted
from s3sync_dagster.pipeline.s3 import InMemoryMetaLinks, MetaLinks, S3Client, is_meta_key
from s3sync_dagster.pipeline.spec import Invocation, SourceSpec
from s3sync_dagster.pipeline.sync.extracting import (
    Conversions,
    chunked_in_process,
    extract_in_process,
    extract_with,
)
from s3sync_dagster.pipeline.sync.fetch import Fetched, fetch
from s3sync_dagster.pipeline.sync.reports import KeyReport, lap
from s3sync_dagster.pipeline.sync.staging import Staged, Stager, stages_ahead
from s3sync_dagster.pipeline.sync.targets import CollectionFor, Collections, searchable
from s3sync_dagster.pipeline.sync.worklist import Worklist
from s3sync_dagster.pipeline.sync.write import NewObjects, finish

# How many keys ahead of the one being written a sync fetches, extracts and chunks in its staging thread:
# one batch of new objects (write.BATCH_OBJECTS), so the next batch is ready when the model finishes one.
STAGE_AHEAD = 64
# ... and while the objects staged and not yet written hold fewer bytes than this: of a run of large objects,
# at most one is held besides the one being written (a sync without staging holds that one).
STAGE_BYTES = 64 * 1024 * 1024


def sync_object(
    s3: S3Client,
    spec: SourceSpec,
    collection_for: CollectionFor,
    embed: Embedder,
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

    def extract_text(key: str, data: bytes) -> Extracted:
        return extract_in_process(key, data, spec)

    fetched = check()
    if isinstance(fetched, KeyReport):
        return settle.settle(fetched, check, extract_text, spec, embed)
    mark = time.perf_counter()
    extracted = extract_text(fetched.report.document_key or object_key, fetched.data)
    lap(fetched.report, "extract", mark)
    return settle.settle(finish(fetched, extracted, spec, embed), check, extract_text, spec, embed)


def document_in_metadata_mode(
    spec: SourceSpec, collection_for: CollectionFor, object_key: str, linked: list[str]
) -> tuple[KeyReport, list[str]]:
    """In metadata mode a document is indexed only through the metadata files naming it, which are synced
    next: the linked ones and any whose chunks hold it. Chunks it has of its own (indexed directly) go."""
    started = time.perf_counter()
    report = KeyReport(object_key=object_key, status="ignored", collection_name=spec.collection_name)
    meta_keys = list(linked)
    for collection in searchable(collection_for, spec.collection_name):
        own = []
        for chunk_id, chunk in stored_chunks(collection, object_key, spec.owner, with_text=False).items():
            meta_key = chunk.metadata.get("metadata_key")
            if not meta_key:
                own.append(chunk_id)
            elif meta_key not in meta_keys:
                meta_keys.append(str(meta_key))
        if own:
            delete_ids(collection, own)
            report.chunks_deleted += len(own)
    report.message = (
        f"'{object_key}' is indexed through its metadata file(s) {', '.join(meta_keys)}"
        if meta_keys
        else f"'{object_key}' is named by no .meta.json file: in metadata mode only named documents are indexed"
    ) + (f"; removed {report.chunks_deleted} chunk(s) it had of its own" if report.chunks_deleted else "")
    report.duration_s = time.perf_counter() - started
    return report, meta_keys


@dataclass
class RunStages:
    """The stages of one run, joined: where a key goes on this thread after it is read here or taken from the
    staging thread. Each method reports a key's failure as the key's own (settle.Reporter.failed)."""

    s3: S3Client
    spec: SourceSpec
    collection_for: CollectionFor
    invocations: Mapping[str, Invocation]
    links: MetaLinks
    worklist: Worklist
    reporter: settle.Reporter
    new_objects: NewObjects
    conversions: Conversions

    def sync_one(self, object_key: str, started: float) -> None:
        """The read stage on this thread (a key not staged): its invocation, the metadata files to follow it, and
        the fetch once no write waiting could change what it reads; then on to extract or straight to report."""
        try:
            invocation = self.invocations.get(object_key, Invocation())
            invocation.validate(self.spec, object_key)
            if not is_meta_key(object_key):
                meta_keys = self.worklist.naming.get(object_key, [])
                if self.spec.auto_sync == "metadata" and invocation == Invocation():
                    report, meta_keys = document_in_metadata_mode(self.spec, self.collection_for, object_key, meta_keys)
                    self.worklist.then_sync(object_key, meta_keys)
                    self.reporter.done(report)
                    return
                self.worklist.then_sync(object_key, meta_keys)
            if self.new_objects.holds(object_key):
                # Its chunks (or those its .meta.json names) must be in Chroma before it is looked at again.
                self.new_objects.flush()
            fetched = fetch(
                self.s3, self.spec, self.collection_for, object_key,
                custom_id=invocation.custom_id, user_metadata=invocation.metadata,
                target_collection_name=invocation.target_collection_name,
                links=self.links,
            )  # fmt: skip
            if isinstance(fetched, KeyReport):
                self.reporter.done(fetched)
            elif self.conversions.takes(fetched.report.document_key or object_key):
                self.conversions.submit(fetched)
            else:
                self.new_objects.deliver(chunked_in_process(fetched, self.spec))
        except Exception as error:  # one bad object fails its own key, never the others
            self.reporter.failed(object_key, error, started)

    def take_staged(self, object_key: str, staged: Staged) -> None:
        """A key the staging thread read: failed, final (report), a document to convert, or chunks to write."""
        if staged.error is not None:
            self.reporter.failed(object_key, staged.error, staged.started)
        elif isinstance(staged.result, KeyReport):
            self.reporter.done(staged.result)
        elif isinstance(staged.result, Fetched):
            self.conversions.submit(staged.result)
        elif staged.result is not None:
            self.new_objects.deliver(staged.result)


def sync_keys(
    s3: S3Client,
    spec: SourceSpec,
    collection_for: CollectionFor,
    embed: Embedder,
    object_keys: Iterable[str],
    on_report: Callable[[KeyReport], None] | None = None,
    pool: DocumentPool | None = None,
    invocations: Mapping[str, Invocation] | None = None,
    links: MetaLinks | None = None,
    ahead: int = STAGE_AHEAD,
    stop: threading.Event | None = None,
) -> list[KeyReport]:
    """Sync many keys; a key that fails is reported as failed and never stops the others.

    The stages overlap as the module's docstring says: a staging thread reads, extracts and chunks up to
    `ahead` plain keys ahead of the one this thread embeds and writes; with a pool, documents are converted
    in its worker processes; writes, settle checks and reports stay on this thread, in key order. A key
    staged ahead is checked against the bucket again after its write (settle), as any sync is. A document's
    sync also syncs the metadata files that name it (links), after it; in metadata mode only they index it.

    stop: once set (the run is being stopped), no further key is begun, conversions in flight are cancelled
    and objects waiting for a shared write are dropped; what was reported stays reported.
    """
    links = links if links is not None else InMemoryMetaLinks()
    worklist = Worklist(object_keys, links)
    checks = settle.RunChecks(s3, spec, collection_for, embed, extract_with(pool, spec), invocations, links)
    reporter = settle.Reporter(spec, checks, worklist, links, on_report)
    new_objects = NewObjects(embed, reporter.done, reporter.write_failed, checks.read_written)
    conversions = Conversions(pool, spec, new_objects, reporter.failed)
    stages = RunStages(s3, spec, collection_for, invocations or {}, links, worklist, reporter, new_objects, conversions)
    staging = stages_ahead(worklist, spec, ahead, bool(worklist.naming))
    stager = Stager(s3, spec, collection_for, pool is not None, ahead, STAGE_BYTES, invocations) if staging else None

    stop = stop or threading.Event()
    try:
        while worklist and not stop.is_set():
            if stager is not None:
                stager.top_up(worklist)
            object_key = worklist.popleft()
            started = time.perf_counter()
            if stager is not None and stager.has(object_key):
                try:
                    stages.take_staged(object_key, stager.take(object_key, new_objects))
                except Exception as error:  # one bad object fails its own key, never the others
                    reporter.failed(object_key, error, started)
                continue
            stages.sync_one(object_key, started)
        conversions.drain(stop.is_set)
        if not stop.is_set():
            new_objects.flush()
    finally:
        conversions.cancel()  # left only when stopped
        if stager is not None:
            stager.close()  # a staging thread waiting for room stops waiting
    return reporter.reports


def sync_keys_following_swaps(
    s3: S3Client,
    spec: SourceSpec,
    collections: Collections,
    embed: Embedder,
    object_keys: Iterable[str],
    on_report: Callable[[KeyReport], None] | None = None,
    **options: Any,
) -> list[KeyReport]:
    """sync_keys, beside a re-embedding that may swap a collection for its copy while the keys are written: a key
    that failed once the swap was done is not reported, and every key that wrote to a swapped collection (or
    failed) is synced once more on the swapped-in one. A write that reached the old collection after its last
    check is in the new one then (the skip check reads the new one), none fails for the swap, nothing stays stale.
    A key failing again says which collection was swapped."""
    told = settle.ToldBesideSwap(collections, on_report)
    held = told.held
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
    retold = settle.ToldBesideSwap(collections, on_report, swapped)
    redone = {r.object_key: r for r in sync_keys(s3, spec, collections, embed, again, on_report=retold, **options)}
    return [redone.get(report.object_key, report) for report in reports]
