"""The asset check of a source: every key the asset says it indexed has chunks in Chroma, and no more."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.assets import documents_asset_key
from s3sync_dagster.pipeline import keys
from s3sync_dagster.resources import ChromaResource, EmbeddingResource

CHECK_NAME = "indexed_keys_have_chunks"
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


def _chunk_keys(collections: Iterator[Any], source_name: str) -> set[str]:
    """Partition object keys (an object's, or its .meta.json's) with at least one chunk of this source."""
    found: set[str] = set()
    for collection in collections:
        offset = 0
        while True:
            page = collection.get(where={"source": source_name}, include=["metadatas"], limit=5000, offset=offset)
            for metadata in page["metadatas"] or []:
                # A document indexed through a .meta.json belongs to that file's partition.
                key = metadata.get("metadata_key") or metadata.get("object_key")
                if key:
                    found.add(str(key))
            if len(page["ids"]) < 5000:
                break
            offset += 5000
    return found


def _listing(items: list[str]) -> dg.MetadataValue:
    shown = "\n".join(f"- `{item}`" for item in items[:SHOWN])
    more = f"\n- ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return dg.MetadataValue.md(shown + more if items else "none")


def build_index_check(source: SourceConfig) -> dg.AssetChecksDefinition:
    asset_key = documents_asset_key(source.name)

    @dg.asset_check(
        asset=asset_key,
        name=CHECK_NAME,
        required_resource_keys={"chroma", "embedding"},
        blocking=False,
        description=(
            "Compares the keys this asset last reported as indexed with the chunks in Chroma: a key "
            "with no chunks fails the check; chunks of keys the asset does not know are reported."
        ),
    )
    def indexed_keys_have_chunks(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        chroma: ChromaResource = context.resources.chroma
        embedding: EmbeddingResource = context.resources.embedding
        statuses = latest_statuses(context.instance, asset_key)
        expected = {partition for partition, meta in statuses.items() if meta.get("status") in HAS_CHUNKS}
        collections = {source.collection_name} | {
            str(meta["collection"]) for meta in statuses.values() if meta.get("collection")
        }
        existing = {collection.name for collection in chroma.client().list_collections()}

        def opened() -> Iterator[Any]:
            for name in sorted(collections & existing):
                yield chroma.collection(name, embedding, create=False)

        with_chunks = {keys.to_partition_key(key) for key in _chunk_keys(opened(), source.name)}
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

    return indexed_keys_have_chunks
