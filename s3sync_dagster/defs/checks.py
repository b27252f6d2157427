"""What the asset checks of a source find (defs/source.py makes the checks): every key the asset says it indexed has chunks in Chroma; and no drift
between the bucket and the collection (missing, stale and orphaned keys)."""

from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.names import documents_asset_key, repair_job_name
from s3sync_dagster.defs.resources import ChromaResource, EmbeddingResource
from s3sync_dagster.pipeline import audit, index, keys
from s3sync_dagster.pipeline.owners import Owner

SHOWN = 20
# Statuses whose object must have chunks in Chroma ("empty" and "removed" must not have any).
HAS_CHUNKS = frozenset({"indexed", "unchanged"})


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
        for _, metadata in index.owned(collection, owner):
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
    context: dg.AssetCheckExecutionContext, source: SourceConfig, chroma: ChromaResource, embedding: EmbeddingResource
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
    with_chunks = {keys.to_partition_key(key) for key in _chunk_keys(opened(), owner)}
    missing = sorted(keys.to_object_key(partition) for partition in expected - with_chunks)
    unknown = sorted(
        keys.to_object_key(partition)
        for partition in with_chunks
        if statuses.get(partition, {}).get("status") not in HAS_CHUNKS
    )
    context.log.info(
        f"{len(expected)} key(s) indexed, {len(missing)} without chunks, {len(unknown)} with chunks "
        "the asset does not report as indexed"
    )
    return dg.AssetCheckResult(
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
        partitions = [keys.to_partition_key(object_key) for object_key in object_keys[start : start + 500]]
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
                    found[keys.to_object_key(materialization.partition)] = str(metadata.get("etag", ""))
            if not result.has_more:
                break
            cursor = result.cursor
    return found


def audited_collections(chroma: ChromaResource, embedding: EmbeddingResource, source: SourceConfig) -> Iterator[Any]:
    """The source's collection first, then every other collection of our model (targets of invocations
    and .meta.json files): a removal searches them all, so orphans are looked for in them all."""
    # A copy being filled or a retired collection (a re-embedding's, pipeline/reembed.py) is the re-embedding's
    # to keep exact and drop: never audited, so a repair never deletes from it.
    names = [
        collection.name
        for collection in chroma.client().list_collections()
        if not collection.name.endswith(keys.RESERVED_SUFFIXES)
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
) -> audit.Drift:
    """The source's drift; objects whose last sync found no text at their ETag are not missing."""
    asset_key = documents_asset_key(source)
    return audit.audit(
        s3,
        source.spec(embedding.spec()),
        audited_collections(chroma, embedding, source),
        known_empty=lambda object_keys: empty_at(instance, asset_key, object_keys),
    )


_REPAIRS = {
    "missing": "sync: indexes it",
    "stale": "sync: re-indexes it",
    "orphaned": "sync: removes its chunks",
    "unselected": "delete its chunks (not selected by the source)",
}


def drift_rows(drift: audit.Drift, shown: int = DRIFT_SHOWN) -> list[dict[str, str]]:
    """The first `shown` drifted keys of each kind, with what a repair does to them."""
    unselected = set(drift.unselected)
    rows: list[dict[str, str]] = []
    for kind, found in (("missing", drift.missing), ("stale", drift.stale), ("orphaned", drift.orphaned)):
        for object_key in (found or [])[:shown]:
            action = "unselected" if kind == "orphaned" and object_key in unselected else kind
            rows.append({"kind": kind, "object_key": object_key, "repair": _REPAIRS[action]})
    return rows


def drift_table(drift: audit.Drift) -> dg.MetadataValue:
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
    context: dg.AssetCheckExecutionContext,
    source: SourceConfig,
    s3: Any,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
) -> dg.AssetCheckResult:
    """The bucket against the collection: objects missing from the index, at an old ETag, or gone.

    Executed on its own (the UI's Execute, a schedule): in a sync run the asset yields no output, so
    Dagster skips its checks and no sync pays for listing the whole bucket.
    """
    found = drift_of(source, context.instance, s3, chroma, embedding)
    context.log.info(found.summary())
    counts = found.counts()
    return dg.AssetCheckResult(
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
