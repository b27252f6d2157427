"""The settle and report stages: a sync's outcome checked against the bucket (concurrent writers), synced again
until they agree; in a run of many keys, the stored chunks of a batch of new objects read for their checks at once
(RunChecks), then each key's report kept and told (Reporter), beside a re-embedding's swap too (ToldBesideSwap)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from s3sync_dagster.pipeline.chroma import Embedder
from s3sync_dagster.pipeline.extraction import Extracted
from s3sync_dagster.pipeline.s3 import MetaLinks, S3Client, is_meta_key
from s3sync_dagster.pipeline.spec import Invocation, SourceSpec
from s3sync_dagster.pipeline.sync.fetch import Fetched, fetch
from s3sync_dagster.pipeline.sync.reports import KeyReport, Status, failure_message, lap
from s3sync_dagster.pipeline.sync.staging import ReadAhead
from s3sync_dagster.pipeline.sync.targets import CollectionFor, Collections
from s3sync_dagster.pipeline.sync.worklist import Worklist
from s3sync_dagster.pipeline.sync.write import Prepared, finish

# Two writers of one key (a sensor run and a backfill, two hosts on one Chroma server) take no lock
# together, and can interleave: one reads version 1, the other writes version 2, then the first writes
# version 1's chunks over them and deletes from a snapshot taken before. So a sync that wrote or removed
# an object's chunks ends with the skip check (HEAD again, read the stored chunks' ids and ETags) and
# syncs again while they are not exactly the current version's. A writer's writes all come before its
# own last check, so the check that passes last sees every write: it leaves the newest version's exact
# chunk set, whatever the order of the others. Bounded, so a key rewritten without pause fails, named.
MAX_RESYNCS = 3
_WRITES: frozenset[Status] = frozenset({"indexed", "empty", "removed", "waiting"})

# The skip check of an object key, as the sync that produced a report ran it (same invocation).
Check = Callable[[KeyReport], "KeyReport | Fetched"]
# Object key, bytes -> text: in this process, or in the run's document pool (its timeout, its isolation).
Extract = Callable[[str, bytes], Extracted]


def settle(report: KeyReport, check: Check, extract_text: Extract, spec: SourceSpec, embed: Embedder) -> KeyReport:
    """Check a sync's outcome against the bucket's current version; sync again until they agree."""
    if report.status not in _WRITES:
        return report  # nothing written: nothing another writer could have raced
    first, started = report, time.perf_counter()
    resyncs = 0
    try:
        while True:
            checked = check(report)
            if isinstance(checked, KeyReport) and (
                checked.status == "unchanged" or (checked.status == report.status and not checked.chunks_deleted)
            ):
                break  # the chunks are the current version's (or the object is still gone, and so are they)
            if resyncs == MAX_RESYNCS:
                seen = checked.etag if isinstance(checked, KeyReport) else checked.info.etag
                raise ValueError(
                    f"object '{report.object_key}' or its chunks changed under {MAX_RESYNCS + 1} syncs in a row "
                    f"(last stored at ETag '{report.etag or 'none'}', now '{seen or 'none'}'): another writer keeps "
                    "replacing it; a sync ends only when the stored chunks are the current version's, and the "
                    "next sync of the key tries again"
                )
            resyncs += 1
            if isinstance(checked, KeyReport):
                report = checked  # removed (or waiting) meanwhile: that removal is checked in turn
            else:
                mark = time.perf_counter()
                extracted = extract_text(checked.report.document_key or checked.report.object_key, checked.data)
                lap(checked.report, "extract", mark)
                report = finish(checked, extracted, spec, embed)
    except Exception as error:
        return KeyReport(
            object_key=first.object_key,
            status="failed",
            collection_name=first.collection_name,
            document_key=first.document_key,
            message=failure_message(first.object_key, error),
            duration_s=first.duration_s + time.perf_counter() - started,
        )
    # The check's own cost (a HEAD and a read of the stored chunks' metadata), resyncs included.
    report.timings["settle"] = time.perf_counter() - started
    report.duration_s = first.duration_s + report.timings["settle"]
    if resyncs:
        report.message = (report.message + "; " if report.message else "") + (
            f"synced {resyncs} more time(s): another writer changed the object or its chunks meanwhile"
        )
    return report


class RunChecks:
    """The settle stage of a run of many keys: each key's check as its sync ran it (its invocation, the run's
    metadata links), its resyncs extracted as the run extracts, and the stored chunks of a batch of plain new
    objects read for their checks in one go once the batch is written (read_written), each key's share of that
    read counted in its settle time."""

    def __init__(
        self,
        s3: S3Client,
        spec: SourceSpec,
        collection_for: CollectionFor,
        embed: Embedder,
        extract_text: Extract,
        invocations: Mapping[str, Invocation] | None,
        links: MetaLinks,
    ) -> None:
        self._s3, self._spec, self._collection_for, self._embed = s3, spec, collection_for, embed
        self._extract_text, self._invocations, self._links = extract_text, invocations or {}, links
        self._reads = ReadAhead()
        self._read_share: dict[str, float] = {}

    def read_written(self, group: list[Prepared]) -> None:
        """A batch of new objects is in Chroma: read their chunks for the settle checks in one go."""
        plain = [
            prepared.fetched.report.object_key
            for prepared in group
            if prepared.fetched.meta_key is None
            and prepared.fetched.custom_id is None
            and not prepared.fetched.shared
            and prepared.fetched.report.object_key not in self._invocations
            and not is_meta_key(prepared.fetched.report.object_key)
        ]
        if len(plain) > 1:  # plain: the source's own
            self._reads.read(self._collection_for, self._spec.collection_name, plain, self._spec.owner)

    def settled(self, report: KeyReport) -> KeyReport:
        """The key's report once settled (settle), its share of a batch's read counted in its settle time."""
        report = settle(report, self._check, self._extract_text, self._spec, self._embed)
        self._reads.take(report.object_key)  # unread where the settle check did not run: never used later
        share = self._read_share.pop(report.object_key, 0.0)
        if "settle" in report.timings:
            report.timings["settle"] += share
        return report

    def _check(self, report: KeyReport) -> KeyReport | Fetched:
        invocation = self._invocations.get(report.object_key, Invocation())
        stored, share = self._reads.take(report.object_key)  # only a plain key's, once, just after its write
        if share:
            self._read_share[report.object_key] = share
        return fetch(
            self._s3, self._spec, self._collection_for, report.object_key,
            custom_id=invocation.custom_id, user_metadata=invocation.metadata,
            target_collection_name=invocation.target_collection_name, links=self._links,
            empty_etag=report.etag if report.status == "empty" else None, stored=stored,
        )  # fmt: skip


class Reporter:
    """The settle and report stages of a run: each key's report settled (RunChecks), a metadata file's link to a
    document it no longer names dropped, and the report kept and told (on_report), in the order the keys' writes
    finish on the run's thread (see stages.py's docstring)."""

    def __init__(
        self,
        spec: SourceSpec,
        checks: RunChecks,
        worklist: Worklist,
        links: MetaLinks,
        on_report: Callable[[KeyReport], None] | None,
    ) -> None:
        self._spec, self._checks, self._worklist, self._links = spec, checks, worklist, links
        self._on_report = on_report
        self.reports: list[KeyReport] = []

    def done(self, report: KeyReport) -> None:
        """A key's sync has its outcome: settle it, then keep and tell the report."""
        report = self._checks.settled(report)
        document = self._worklist.named_document(report.object_key)
        if document is not None and report.status != "failed" and report.document_key != document:
            self._links.unlink(document, report.object_key)  # the metadata file is gone or names another object now
        self.reports.append(report)
        if self._on_report is not None:
            self._on_report(report)

    def failed(self, object_key: str, error: Exception, started: float) -> None:
        """A key failed at some stage: reported as failed, with the error's message naming it."""
        self.done(
            KeyReport(
                object_key=object_key,
                status="failed",
                collection_name=self._spec.collection_name,
                message=failure_message(object_key, error),
                duration_s=time.perf_counter() - started,
            )
        )

    def write_failed(self, fetched: Fetched, error: Exception) -> None:
        """A key read and prepared failed at its write (write.NewObjects): reported as failed."""
        self.failed(fetched.report.object_key, error, fetched.started)


class ToldBesideSwap:
    """A run's reports told (on_report) beside a re-embedding that may swap a collection for its copy while the
    keys are written (stages.sync_keys_following_swaps). First pass: a key failed once a swap was done is held, not
    told (it is synced again on the swapped-in collection). Again (`swapped` given: the second pass, on the
    swapped-in collections): a failure says which collections were swapped."""

    def __init__(
        self,
        collections: Collections,
        on_report: Callable[[KeyReport], None] | None,
        swapped: list[str] | None = None,
    ) -> None:
        self._collections, self._on_report, self._swapped = collections, on_report, swapped
        self.held: set[str] = set()

    def __call__(self, report: KeyReport) -> None:
        if report.status == "failed" and self._swapped is None and self._collections.swapped():
            self.held.add(report.object_key)
            return
        if report.status == "failed" and self._swapped:
            report.message = (
                f"collection(s) {', '.join(repr(name) for name in self._swapped)} were swapped for their re-embedded "
                f"copy while this key was written, and syncing it again there failed: {report.message}"
            )
        if self._on_report is not None:
            self._on_report(report)
