"""The sync job of a source: the keys its sensors found, in one run, recorded on its asset's partitions."""

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.assets import documents_asset_key, index_partitions
from s3sync_dagster.defs.tags import SOURCE_TAG
from s3sync_dagster.pipeline import keys
from s3sync_dagster.resources import source_resource_key


class SyncKeysConfig(dg.Config):
    """Object keys to bring up to date: created or changed ones are indexed, deleted ones removed."""

    object_keys: list[str]


def sync_job_name(source_name: str) -> str:
    return f"{source_name}_auto_sync"


def sync_op_name(source_name: str) -> str:
    return f"{source_name}_sync_keys"


def build_sync_job(source: SourceConfig) -> dg.JobDefinition:
    s3_key = source_resource_key(source.name)
    asset_key = documents_asset_key(source.name)

    # Keys from events are scattered over the partition list, so they cannot form one partition
    # range; this job takes them as a list and records the same per-key materialisations.
    @dg.op(
        name=sync_op_name(source.name),
        required_resource_keys={s3_key, "chroma", "embedding", "documents"},
        description=f"Syncs the given object keys of source '{source.name}' into Chroma.",
    )
    def sync_keys_op(context: dg.OpExecutionContext, config: SyncKeysConfig) -> None:
        index_partitions(
            context,
            asset_key,
            s3_key,
            [keys.to_partition_key(k) for k in config.object_keys],
        )

    @dg.job(name=sync_job_name(source.name), tags={SOURCE_TAG: source.name})
    def sync_job() -> None:
        sync_keys_op()

    return sync_job


def sync_run_config(source_name: str, object_keys: list[str]) -> dict[str, object]:
    return {"ops": {sync_op_name(source_name): {"config": {"object_keys": object_keys}}}}
