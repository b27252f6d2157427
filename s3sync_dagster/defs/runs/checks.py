"""What the asset checks of a source find (defs/source.py makes the checks): every key the asset says it indexed has
chunks in Chroma; and no drift between the bucket and the collection (missing, stale and orphaned keys).

Executed on their own (the UI's Execute, a schedule) they compare the whole source. A launch from the UI and a
backfill select them with the asset (Dagster's asset job holds every check, and the UI selects them all): there
the asset's own step evaluates them on the run's keys (evaluate_in_run), cheaply, so no run plans a check it skips
and no sync pays for listing the whole bucket."""

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.names import DRIFT_CHECK_NAME, INDEX_CHECK_NAME, documents_asset_key, repair_job_name
from s3sync_dagster.defs.resources import ChromaResource, EmbeddingResource
from s3sync_dagster.pipeline.audit import Drift, audit
from s3sync_dagster.pipeline.chroma import chunks_of_keys, owned
from s3sync_dagster.pipeline.records import RESERVED_SUFFIXES, Owner, to_object_key, to_partition_key
from s3sync_dagster.pipeline.sync import KeyReport

SHOWN = 20
# Statuses whose object must have chunks in Chroma ("empty" and "removed" must not have any).
HAS_CHUNKS = frozenset({"indexed", "unchanged"})
# An archived object (pipeline/s3/archive.py) keeps whatever chunks an earlier version left: not unreported ones.
MAY_KEEP_CHUNKS = HAS_CHUNKS | {"archived"}


def latest_statuses(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> dict[str, dict[str, Any]]:
    """Each partition's newest materialisation metadata (status, chunks, collection), paging the event log."""
    latest: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key), limit=1000, cursor=cursor, ascending=False
        )
        for record in result.records:
            materialization = record.asset_materialization
            if materialization is None or materialization.partition is None:
                continue
            if materialization.partition not in latest:
                latest[materialization.partition] = {
                    name: getattr(value, "value", value) for name, value in materialization.metadata.items()
                }
        if not result.has_more:
            return latest
        cursor = result.cursor


def _chunk_keys(collections: Iterator[Any], owner: Owner) -> set[str]:
    """Partition object keys (an object's, or its .meta.json's) with at least one chunk of this source."""
    found: set[str] = set()
    for collection in collections:
        for _, metadata in owned(collection, owner):
            # A document indexed through a .meta.json belongs to that file's partition.
            key = metadata.get("metadata_key") or metadata.get("object_key")
            if key:
                found.add(str(key))
    return found


def _listing(items: list[str]) -> dg.MetadataValue:
    shown = "\n".join(f"- `{item}`" for item in items[:SHOWN])
    more = f"\n- ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return dg.MetadataValue.md(shown + more if items else "none")


def index_check(
    context: dg.AssetExecutionContext, source: SourceConfig, chroma: ChromaResource, embedding: EmbeddingResource
) -> dg.AssetCheckResult:
    """Every key the asset last reported as indexed has chunks in Chroma; chunks of other keys are reported."""
    asset_key = documents_asset_key(source)
    statuses = latest_statuses(context.instance, asset_key)
    expected = {partition for partition, meta in statuses.items() if meta.get("status") in HAS_CHUNKS}
    collections = {source.collection_name} | {
        str(meta["collection"]) for meta in statuses.values() if meta.get("collection")
    }
    existing = {collection.name for collection in chroma.client().list_collections()}

    def opened() -> Iterator[Any]:
        for name in sorted(collections & existing):
            yield chroma.collection(name, embedding, create=False)

    owner = source.spec(embedding.spec()).owner
    with_chunks = {to_partition_key(key) for key in _chunk_keys(opened(), owner)}
    missing = sorted(to_object_key(partition) for partition in expected - with_chunks)
    unknown = sorted(
        to_object_key(partition)
        for partition in with_chunks
        if statuses.get(partition, {}).get("status") not in MAY_KEEP_CHUNKS
    )
    context.log.info(
        f"{len(expected)} key(s) indexed, {len(missing)} without chunks, {len(unknown)} with chunks "
        "the asset does not report as indexed"
    )
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=INDEX_CHECK_NAME,
        passed=not missing,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{len(missing)} indexed key(s) have no chunks in Chroma: re-sync them (backfill the partitions)"
            if missing
            else f"all {len(expected)} indexed key(s) have chunks in Chroma"
        ),
        metadata={
            "indexed_keys": len(expected),
            "keys_with_chunks": len(with_chunks),
            "missing_count": len(missing),
            "missing": _listing(missing),
            "unreported_count": len(unknown),
            "unreported": _listing(unknown),
            "collections": sorted(collections & existing),
        },
    )


# --- drift: the bucket against the collection --------------------------------------------------

DRIFT_SHOWN = 50  # drifted keys shown per kind in the check's table


def empty_at(instance: dg.DagsterInstance, asset_key: dg.AssetKey, object_keys: Sequence[str]) -> dict[str, str]:
    """The keys whose newest materialisation says `empty` (no text), with the ETag it saw.

    Asked only for the keys that look missing, so the cost follows the drift, not the bucket.
    """
    found: dict[str, str] = {}
    for start in range(0, len(object_keys), 500):
        partitions = [to_partition_key(object_key) for object_key in object_keys[start : start + 500]]
        seen: set[str] = set()
        cursor = None
        while True:
            result = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=partitions),
                limit=1000,
                cursor=cursor,
                ascending=False,
            )
            for record in result.records:
                materialization = record.asset_materialization
                if materialization is None or materialization.partition in seen or materialization.partition is None:
                    continue
                seen.add(materialization.partition)
                metadata = {name: getattr(value, "value", value) for name, value in materialization.metadata.items()}
                if metadata.get("status") == "empty":
                    found[to_object_key(materialization.partition)] = str(metadata.get("etag", ""))
            if not result.has_more:
                break
            cursor = result.cursor
    return found


def audited_collections(chroma: ChromaResource, embedding: EmbeddingResource, source: SourceConfig) -> Iterator[Any]:
    """The source's collection first, then every other collection of our model (targets of invocations
    and .meta.json files): a removal searches them all, so orphans are looked for in them all."""
    # A copy being filled or a retired collection (a re-embedding's, pipeline/reembed/swap.py) is the re-embedding's
    # to keep exact and drop: never audited, so a repair never deletes from it.
    names = [
        collection.name
        for collection in chroma.client().list_collections()
        if not collection.name.endswith(RESERVED_SUFFIXES)
    ]
    for name in sorted(names, key=lambda name: name != source.collection_name):
        try:
            yield chroma.collection(name, embedding, create=False)
        except Exception:  # another model's collection: none of our chunks there
            continue


def drift_of(
    source: SourceConfig,
    instance: dg.DagsterInstance,
    s3: Any,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
    hold: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Drift:
    """The source's drift; objects whose last sync found no text at their ETag are not missing. hold: held while
    the store is read (audit.audit)."""
    asset_key = documents_asset_key(source)
    return audit(
        s3,
        source.spec(embedding.spec()),
        audited_collections(chroma, embedding, source),
        known_empty=lambda object_keys: empty_at(instance, asset_key, object_keys),
        hold=hold,
    )


_REPAIRS = {
    "missing": "sync: indexes it",
    "stale": "sync: re-indexes it",
    "orphaned": "sync: removes its chunks",
    "unselected": "delete its chunks (not selected by the source)",
}


def drift_rows(drift: Drift, shown: int = DRIFT_SHOWN) -> list[dict[str, str]]:
    """The first `shown` drifted keys of each kind, with what a repair does to them."""
    unselected = set(drift.unselected)
    rows: list[dict[str, str]] = []
    for kind, found in (("missing", drift.missing), ("stale", drift.stale), ("orphaned", drift.orphaned)):
        for object_key in (found or [])[:shown]:
            action = "unselected" if kind == "orphaned" and object_key in unselected else kind
            rows.append({"kind": kind, "object_key": object_key, "repair": _REPAIRS[action]})
    return rows


def drift_table(drift: Drift) -> dg.MetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord(row) for row in drift_rows(drift)],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("kind", "string", description="missing, stale (old ETag) or orphaned"),
                dg.TableColumn("object_key", "string"),
                dg.TableColumn("repair", "string", description="what `s3sync repair` does to it"),
            ]
        ),
    )


def drift_check(
    context: dg.AssetExecutionContext,
    source: SourceConfig,
    s3: Any,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
) -> dg.AssetCheckResult:
    """The bucket against the collection: objects missing from the index, at an old ETag, or gone.

    Executed on its own (the UI's Execute, a schedule): a run of keys evaluates it on its keys alone
    (evaluate_in_run), so no sync pays for listing the whole bucket.
    """
    found = drift_of(source, context.instance, s3, chroma, embedding)
    context.log.info(found.summary())
    counts = found.counts()
    return dg.AssetCheckResult(
        asset_key=documents_asset_key(source),
        check_name=DRIFT_CHECK_NAME,
        passed=found.clean,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{found.summary()}: run `s3sync repair {source.name}` or the {repair_job_name(source.name)} job"
            if not found.clean
            else f"no drift: {found.listed} object(s), {found.chunks} chunk(s)"
        ),
        metadata={
            "listed": found.listed,
            "indexed": found.indexed,
            "empty": found.empty,
            "chunks": found.chunks,
            "missing_count": counts["missing"] if counts["missing"] is not None else "n/a (metadata mode)",
            "stale_count": counts["stale"] if counts["stale"] is not None else "n/a (metadata mode)",
            "orphaned_count": counts["orphaned"],
            # Tenancy: chunks of other sources in this source's collection, and its own where it may not write.
            "foreign_chunks": dict(found.foreign),
            "misplaced_chunks": dict(found.misplaced),
            "drift": drift_table(found),
            "collections": found.collections,
            "seconds": {step: round(seconds, 3) for step, seconds in found.seconds.items()},
        },
    )


# --- in a run that materialises keys: the run's own keys --------------------------------------------------------

# What a check found in a run: passed, severity, description, metadata.
Finding = tuple[bool, dg.AssetCheckSeverity, str, dict[str, Any]]


def run_chunks(
    reports: Sequence[KeyReport], opened: Callable[[str], Any | None], owner: Owner
) -> dict[str, list[Mapping[str, Any]]]:
    """Each reported key's chunks (their metadata) as they are now, read where its sync wrote them: one read per
    64 documents (index.chunks_of_keys). A key indexed through a .meta.json file owns the chunks it named."""
    wanted: dict[str, dict[str, list[KeyReport]]] = defaultdict(lambda: defaultdict(list))
    for report in reports:
        if report.collection_name:
            wanted[report.collection_name][report.document_key or report.object_key].append(report)
    found: dict[str, list[Mapping[str, Any]]] = {report.object_key: [] for report in reports}
    for collection_name, documents in wanted.items():
        collection = opened(collection_name)
        if collection is None:
            continue
        for document_key, chunks in chunks_of_keys(collection, list(documents), owner).items():
            for report in documents[document_key]:
                found[report.object_key] += [
                    chunk.metadata
                    for chunk in chunks.values()
                    if report.document_key is None or chunk.metadata.get("metadata_key") == report.object_key
                ]
    return found


def index_in_run(reports: Sequence[KeyReport], found: Mapping[str, list[Mapping[str, Any]]]) -> Finding:
    """The index check on the run's keys: those it indexed have chunks, those it emptied or removed have none."""
    expected = [report.object_key for report in reports if report.status in HAS_CHUNKS]
    missing = sorted(key for key in expected if not found.get(key))
    unreported = sorted(
        report.object_key
        for report in reports
        if report.status not in MAY_KEEP_CHUNKS and report.status != "failed" and found.get(report.object_key)
    )
    description = (
        f"{len(missing)} of this run's {len(expected)} indexed key(s) have no chunks in Chroma"
        if missing
        else f"this run's {len(expected)} indexed key(s) have chunks in Chroma"
    )
    return (
        not missing,
        dg.AssetCheckSeverity.ERROR,
        f"{description} (the run's keys only: execute the check for the whole source)",
        {
            "scope": "this run's keys",
            "indexed_keys": len(expected),
            "missing_count": len(missing),
            "missing": _listing(missing),
            "unreported_count": len(unreported),
            "unreported": _listing(unreported),
        },
    )


def drift_in_run(reports: Sequence[KeyReport], found: Mapping[str, list[Mapping[str, Any]]]) -> Finding:
    """The drift check on the run's keys, against what their sync read in the bucket: an object's chunks carry
    the ETag it read and are as many as they record (else stale); a removed object leaves none (else orphaned);
    a key that failed is not in sync."""
    stale, orphaned = [], []
    for report in reports:
        chunks = found.get(report.object_key, [])
        if report.status == "removed" and chunks:
            orphaned.append(report.object_key)
        elif report.status in HAS_CHUNKS and chunks:
            etags = {str(chunk.get("etag", "")) for chunk in chunks}
            whole = {chunk.get("chunk_count") for chunk in chunks} <= {len(chunks), None}  # None: not recorded
            if not whole or (report.document_key is None and etags != {report.etag}):
                stale.append(report.object_key)
    failed = sorted(report.object_key for report in reports if report.status == "failed")
    clean = not (stale or orphaned or failed)
    summary = f"{len(stale)} stale, {len(orphaned)} orphaned, {len(failed)} failed of this run's {len(reports)} key(s)"
    return (
        clean,
        dg.AssetCheckSeverity.WARN,
        (f"no drift in this run's {len(reports)} key(s)" if clean else summary)
        + " (the run's keys only: execute the check for the whole source)",
        {
            "scope": "this run's keys",
            "keys": len(reports),
            "stale_count": len(stale),
            "orphaned_count": len(orphaned),
            "failed_count": len(failed),
            "drifted": _listing(sorted(stale + orphaned + failed)),
        },
    )


def evaluate_in_run(
    context: dg.AssetExecutionContext,
    source: SourceConfig,
    reports: Sequence[KeyReport],
    opened: Callable[[str], Any | None],
    owner: Owner,
) -> Iterator[dg.AssetCheckResult]:
    """The source's checks this run selected (a launch from the UI, a backfill's runs), evaluated on its keys from
    one read of their chunks, as results of the asset's own step."""
    asset_key = documents_asset_key(source)
    selected = {check.name for check in context.selected_asset_check_keys if check.asset_key == asset_key}
    if not selected:
        return
    keyed = [report for report in reports if report.status != "ignored"]
    found = run_chunks(keyed, opened, owner)
    findings = {INDEX_CHECK_NAME: index_in_run, DRIFT_CHECK_NAME: drift_in_run}
    for check_name in sorted(selected & set(findings)):
        passed, severity, description, metadata = findings[check_name](keyed, found)
        yield dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=check_name,
            passed=passed,
            severity=severity,
            description=description,
            metadata=metadata,
        )
