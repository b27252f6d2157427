"""A run of a source's asset or jobs: sync the objects behind its partition keys, one materialisation per key."""

import queue
import threading
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeAlias

import dagster as dg

from s3sync_dagster.config import ConfigError, SourceConfig
from s3sync_dagster.defs import failpoints
from s3sync_dagster.defs.links import InstanceMetaLinks
from s3sync_dagster.defs.names import documents_asset_key, partitions_name
from s3sync_dagster.defs.resources import ChromaResource, DocumentsResource, EmbeddingResource, S3Connections
from s3sync_dagster.defs.runs.checks import evaluate_in_run
from s3sync_dagster.pipeline.chroma import bind_owner
from s3sync_dagster.pipeline.extraction import DocumentPool
from s3sync_dagster.pipeline.records import to_object_key, to_partition_key
from s3sync_dagster.pipeline.reembed import abandoned
from s3sync_dagster.pipeline.s3 import BucketError, ObjectMissing, S3Client, check_bucket, head_object
from s3sync_dagster.pipeline.spec import Invocation, SourceSpec
from s3sync_dagster.pipeline.sync import Collections, KeyReport, sync_keys_following_swaps

KeyEvent: TypeAlias = dg.AssetMaterialization | dg.AssetObservation
# What a run of keys yields: each key's event, then the checks it selected, evaluated on its keys.
RunEvent: TypeAlias = KeyEvent | dg.AssetCheckResult
# A key's entry in the run: its event, or a line of the run's log (level, text).
Said: TypeAlias = KeyEvent | tuple[Literal["info", "warning", "error"], str]


def _told(context: dg.OpExecutionContext | dg.AssetExecutionContext, said: Iterable[Said]) -> Iterator[KeyEvent]:
    """Each line logged and each event yielded to Dagster, which stores it before taking the next."""
    for item in said:
        if isinstance(item, (dg.AssetMaterialization, dg.AssetObservation)):  # named tuples both: asked first
            yield item
            if isinstance(item, dg.AssetMaterialization):
                failpoints.reached("run:reported")  # a test's kill -9 of the run, its first key's outcome stored
                failpoints.fails_once("run:lost")  # a test's run failing as a whole there, once per process
                failpoints.holds("hold:reported")  # a test cuts the worker's link here, mid-step
            continue
        level, text = item
        getattr(context.log, level)(text)


def _until_done(said: queue.SimpleQueue[Said | None]) -> Iterator[Said]:
    """What the syncing thread says, until it says None; waiting in short steps, so that a signal stopping the run
    (Dagster raises it in this thread) is taken at once."""
    while True:
        try:
            item = said.get(timeout=0.5)
        except queue.Empty:
            continue
        if item is None:
            return
        yield item


def _key_metadata(report: KeyReport) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "object_key": report.object_key,
        "status": report.status,
        "collection": report.collection_name,
        "bytes": report.size_bytes,
        "etag": report.etag,
        "chunks": report.chunk_count,
        "chunks_written": report.chunks_written,
        "chunks_embedded": report.chunks_embedded,
        "chunks_metadata_only": report.chunks_metadata_only,
        "chunks_unchanged": report.chunks_unchanged,
        "chunks_deleted": report.chunks_deleted,
        "chunker": report.chunker,
        "duration_s": round(report.duration_s, 4),
    }
    if report.document_key:
        metadata["document_key"] = report.document_key
    if report.language:
        metadata["language"] = report.language
    if report.extractor:
        metadata["extractor"] = report.extractor
    if report.message:
        metadata["message"] = report.message
    if report.pages is not None:
        metadata["pages"] = report.pages
    if report.warnings:
        metadata["warnings"] = "\n".join(report.warnings)
    if report.timings:
        # Where this key's time went (s3_head, s3_read, extract, chunk, chroma_read, embed, chroma_write).
        metadata["timings_s"] = {step: round(seconds, 4) for step, seconds in report.timings.items()}
    if report.preview:
        metadata["preview"] = dg.MetadataValue.md(f"```\n{report.preview}\n```")
    return metadata


def forget_removed(
    instance: dg.DagsterInstance, spec: SourceSpec, s3: S3Client, reports: Sequence[KeyReport]
) -> list[str]:
    """Keys whose object and chunks are gone leave the source's partitions, so its pages and queries hold only
    what exists (each key's history stays in the event log). Each object is looked for once more first:
    one uploaded again since its removal keeps its partition (its next sync indexes it)."""
    forgotten = []
    for report in reports:
        if report.status != "removed":
            continue
        try:
            head_object(s3, spec.bucket_name, report.object_key)
        except ObjectMissing:
            partition_key = to_partition_key(report.object_key)
            instance.delete_dynamic_partition(partitions_name(spec.name), partition_key)
            forgotten.append(partition_key)
    return forgotten


def _existing(chroma: ChromaResource, embedding: EmbeddingResource, name: str) -> Any | None:
    """The collection, if it exists (a check's read creates none)."""
    try:
        return chroma.collection(name, embedding, create=False)
    except Exception:  # gone or never made: it holds no chunk
        return None


def index_partitions(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
    source: SourceConfig,
    partition_keys: Sequence[str],
    *,
    s3: S3Connections,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
    documents: DocumentsResource,
    invocation: Invocation | None = None,
) -> Iterator[RunEvent]:
    """Sync the objects behind these partition keys, one materialisation (or failure) per key, yielded as each
    key is done (the caller yields them on to Dagster).

    Shared by the asset (UI launches, backfills, `s3sync sync`) and the sensors' sync job, so both
    record the same per-key materialisations of the same partitions.
    """
    asset_key = documents_asset_key(source)
    spec = source.spec(embedding.spec(), documents.options())
    object_keys, refused = _object_keys(partition_keys)
    context.log.info(f"syncing {len(object_keys)} object(s) of source '{spec.name}' into {chroma.describe()}")
    client = checked_bucket(source, s3)
    collection_for, own = _own_collection(context, spec, chroma, embedding)
    embed = embedding.embedding_function()
    if abandoned(own, embed):  # --abandon sticks: said on every run until it is begun again
        context.log.warning(
            f"source '{spec.name}': the re-embedding of collection '{own.name}' to {embedding.spec().describe()} "
            "was abandoned (s3sync reembed --abandon): writes go on in the function it records; start it again "
            f"with `s3sync reembed {spec.name}`, or set the old `embedding:` back"
        )
    if invocation is not None and invocation.custom_id is not None and len(partition_keys) > 1:
        raise dg.Failure(
            description=(
                f"custom_id '{invocation.custom_id}' names one document, but this run covers "
                f"{len(partition_keys)} object keys: invoke one key per run"
            ),
            allow_retries=False,
        )
    for report in refused:
        yield from _told(context, _record(asset_key, report, partition_key=report.object_key))

    # Worker processes start only if a document turns up, and stay warm for the process's next runs.
    pool = DocumentPool.shared(documents.workers)

    def synced(reported: Callable[[KeyReport], None], stop: threading.Event) -> list[KeyReport]:
        return sync_keys_following_swaps(
            client,
            spec,
            collection_for,
            embed,
            object_keys,
            on_report=reported,
            pool=pool,
            invocations=dict.fromkeys(object_keys, invocation) if invocation is not None else None,
            links=InstanceMetaLinks(context.instance, spec.name),
            stop=stop,
        )

    with chroma.write_lock():
        reports = refused + (yield from _synced_as_reported(context, asset_key, synced))
    if source.forget_deleted_keys:
        forget_removed(context.instance, spec, client, reports)
    if isinstance(context, dg.AssetExecutionContext):  # a run of the asset: the checks it selected, on its keys
        yield from evaluate_in_run(
            context, source, reports, lambda name: _existing(chroma, embedding, name), spec.owner
        )
    _log_summary(context, spec, reports)
    failpoints.holds("hold:done")  # a test cuts the worker's link here: the keys written, the step's end not yet stored
    _fail_on_failed_keys(reports)


def _object_keys(partition_keys: Sequence[str]) -> tuple[list[str], list[KeyReport]]:
    """The object key of each partition key, and a failed report for each partition key that names none."""
    object_keys: list[str] = []
    refused: list[KeyReport] = []
    for partition_key in partition_keys:
        try:
            object_keys.append(to_object_key(partition_key))
        except ValueError as error:  # a partition typed by hand in the UI: fails alone
            refused.append(KeyReport(object_key=partition_key, status="failed", collection_name="", message=str(error)))
    return object_keys, refused


def checked_bucket(source: SourceConfig, s3: S3Connections) -> S3Client:
    """The source's S3 client, its bucket tried once (and the store, by `_own_collection`).

    The bucket and the store are tried once, outside the per-key isolation: a missing bucket, refused
    credentials, an unset variable, an unreachable endpoint or store, a model mismatch is the run's failure,
    said once with the field to correct, not the same error repeated for every key (nor, for a bucket name
    that is wrong, every key's HEAD answering 404, which would read as objects deleted)."""
    try:
        client = s3.client(source.name)
        check_bucket(client, source.bucket_name, source.name, source.credentials_in_words())
    except ConfigError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    except BucketError as error:
        raise dg.Failure(description=str(error), allow_retries=error.transient) from None
    return client


def _own_collection(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
    spec: SourceSpec,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
) -> tuple[Collections, Any]:
    """The run's collections by name, and the source's own, opened once and bound to the source's project (a
    store or owner that refuses it fails the run, said once)."""
    collection_for = Collections(
        lambda name: chroma.collection(name, embedding, owner=spec.owner),
        lambda: [collection.name for collection in chroma.client().list_collections()],
    )
    try:
        own = collection_for(spec.collection_name)
    except Exception as error:
        raise dg.Failure(description=chroma.failure(error)) from error
    try:
        stamped = bind_owner(own, spec.owner, lambda: chroma.client().list_collections())
    except ValueError as error:  # another project's source: every key would be refused alike
        raise dg.Failure(description=f"source '{spec.name}': {error}", allow_retries=False) from None
    if stamped:
        context.log.info(f"source '{spec.name}': {stamped} chunk(s) of it recorded as project '{spec.project}'")
    return collection_for, own


def _record(asset_key: dg.AssetKey, report: KeyReport, partition_key: str | None = None) -> Iterator[Said]:
    """What the run's log gets for one key: its materialisation (or failure), with any lines first."""
    partition_key = partition_key or to_partition_key(report.object_key)
    if report.status == "ignored":  # a document in metadata mode: not a partition; its metadata files are
        yield "info", report.message
        return
    if report.status == "failed":
        yield "error", f"object '{report.object_key}' failed: {report.message}"
        yield dg.AssetObservation(
            asset_key=asset_key, partition=partition_key, metadata={"error": report.message, "status": "failed"}
        )
        return
    for warning in report.warnings:
        yield "warning", warning
    # No log line per key: the materialisation is the run log's entry for it (with its metadata), and
    # every event costs a write to the event log (~30 ms each on SQLite).
    yield dg.AssetMaterialization(asset_key=asset_key, partition=partition_key, metadata=_key_metadata(report))


def _synced_as_reported(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
    asset_key: dg.AssetKey,
    synced: Callable[[Callable[[KeyReport], None], threading.Event], list[KeyReport]],
) -> Generator[KeyEvent, None, list[KeyReport]]:
    """Run `synced` (given what to call with each key's report, and an event that stops it before its next key),
    handing each key's events to Dagster as it is reported; returns its reports.

    The keys sync in a thread of their own while this one hands each key's events to Dagster as it is
    reported: Dagster writes an op's logged events only when the op yields, so a run's materialisations
    (and the progress counted from them, commands/runs/progress.py) would otherwise all arrive at its end."""
    said: queue.SimpleQueue[Said | None] = queue.SimpleQueue()
    stop = threading.Event()

    def reported(report: KeyReport) -> None:
        for item in _record(asset_key, report):
            said.put(item)

    def syncing_thread() -> list[KeyReport]:
        try:
            return synced(reported, stop)
        finally:
            said.put(None)

    with ThreadPoolExecutor(1, thread_name_prefix="s3sync-sync") as syncing:
        running = syncing.submit(syncing_thread)
        try:
            yield from _told(context, _until_done(said))
        finally:
            stop.set()  # the run stopped early (terminated, interrupted): begin no further key
        return running.result()


def _log_summary(
    context: dg.OpExecutionContext | dg.AssetExecutionContext, spec: SourceSpec, reports: Sequence[KeyReport]
) -> None:
    """One line for the run: how many objects ended how, and the chunks written and deleted."""
    counts = Counter(report.status for report in reports)
    context.log.info(
        f"source '{spec.name}': {len(reports)} object(s): "
        + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        + f"; {sum(report.chunks_written for report in reports)} chunk(s) written, "
        f"{sum(report.chunks_deleted for report in reports)} deleted"
    )


def _fail_on_failed_keys(reports: Sequence[KeyReport]) -> None:
    """The run fails when a key failed, naming the first 20 of them; the others were indexed."""
    failed = [report for report in reports if report.status == "failed"]
    if failed:
        shown = "\n".join(f"- {report.object_key}: {report.message}" for report in failed[:20])
        more = f"\n(and {len(failed) - 20} more)" if len(failed) > 20 else ""
        raise dg.Failure(
            description=f"{len(failed)} of {len(reports)} object(s) failed; the others were indexed:\n{shown}{more}",
            metadata={"failed_keys": [report.object_key for report in failed], "failed_count": len(failed)},
            allow_retries=False,
        )
