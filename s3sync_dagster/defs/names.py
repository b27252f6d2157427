"""The names of a source's Dagster objects, in one place: what the UI shows, and what runs and sensors refer to.

A source `docs` has the asset `docs/documents` over the dynamic partitions `docs_objects` (one per object
key), its checks, the jobs `docs_auto_sync` (its sensors' runs), `docs_repair` and `docs_backfill`, and the sensors
`docs_sqs` and `docs_poll`, and every op of them that writes the collection is in the concurrency pool
`s3sync_docs`. defs/source.py makes them all.
"""

from collections.abc import Sequence

import dagster as dg
from sqlalchemy.exc import IntegrityError

from s3sync_dagster.config import SourceConfig

INDEX_CHECK_NAME = "indexed_keys_have_chunks"
DRIFT_CHECK_NAME = "drift"


def documents_asset_key(source: SourceConfig | str) -> dg.AssetKey:
    """`<asset_key_prefix>/documents`, the prefix being the source's name unless it sets one. A bare name stands
    for a source that sets none (the tests', the benchmarks')."""
    if isinstance(source, str):
        return dg.AssetKey([source, "documents"])
    return dg.AssetKey([*(source.asset_key_prefix or [source.name]), "documents"])


def asset_op_name(source: SourceConfig | str) -> str:
    """The asset's op, under which a run's config carries the asset's (invocation) config."""
    return "__".join(documents_asset_key(source).path)


def pool_name(source_name: str) -> str:
    """The concurrency pool of the source's writing ops (asset, sync, repair): the instance's pool limit
    (deploy/dagster.yaml: 1) holds every run of the source to it, whoever launched the run."""
    return f"s3sync_{source_name}"


def partitions_name(source_name: str) -> str:
    return f"{source_name}_objects"


def partitions_def(source_name: str) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=partitions_name(source_name))


# Keys registered per call: Dagster looks the keys up first in one `IN (...)` query, which SQLite refuses past its
# bound on parameters (a million keys failed here) and Postgres past 65,535.
REGISTER_BATCH = 10_000


def register_partitions(instance: dg.DagsterInstance, source_name: str, partition_keys: Sequence[str]) -> None:
    """Register keys as the source's partitions (keys already there are left as they are), in batches."""
    for start in range(0, len(partition_keys), REGISTER_BATCH):
        instance.add_dynamic_partitions(partitions_name(source_name), partition_keys[start : start + REGISTER_BATCH])


def register_new(
    instance: dg.DagsterInstance, source_name: str, partition_keys: Sequence[str], existing: set[str]
) -> list[str]:
    """Register the keys not in `existing` (the source's partitions as last read, brought up to date here); those
    this call added. A writer that registers beside it (the daemon's sensors) makes Dagster refuse a key it
    added meanwhile: the partitions are read again and the rest registered once more."""
    new = [partition_key for partition_key in dict.fromkeys(partition_keys) if partition_key not in existing]
    try:
        register_partitions(instance, source_name, new)
    except IntegrityError:
        existing |= set(instance.get_dynamic_partitions(partitions_name(source_name)))
        new = [partition_key for partition_key in new if partition_key not in existing]
        register_partitions(instance, source_name, new)
    existing.update(new)
    return new


def register_requests(source_name: str, partition_keys: Sequence[str]) -> list[dg.AddDynamicPartitionsRequest]:
    """The same for a sensor: the daemon applies each request with one call."""
    definition = partitions_def(source_name)
    return [
        definition.build_add_request(list(partition_keys[start : start + REGISTER_BATCH]))
        for start in range(0, len(partition_keys), REGISTER_BATCH)
    ]


def documents_job_name(source_name: str) -> str:
    """The documents asset's job, which runs on Celery workers are rebuilt from (definitions.documents_job)."""
    return f"{source_name}_documents"


def sync_job_name(source_name: str) -> str:
    return f"{source_name}_auto_sync"


def sync_op_name(source_name: str) -> str:
    return f"{source_name}_sync_keys"


def repair_job_name(source_name: str) -> str:
    return f"{source_name}_repair"


def repair_op_name(source_name: str) -> str:
    return f"{source_name}_repair_drift"


def reembed_job_name(source_name: str) -> str:
    return f"{source_name}_reembed"


def reembed_op_name(source_name: str) -> str:
    return f"{source_name}_reembed_collection"


def backfill_job_name(source_name: str) -> str:
    return f"{source_name}_backfill"


def backfill_op_name(source_name: str) -> str:
    return f"{source_name}_request_backfill"


def plan_job_name(source_name: str) -> str:
    return f"{source_name}_plan"


def plan_op_name(source_name: str) -> str:
    return f"{source_name}_plan_sync"


def sqs_sensor_name(source_name: str) -> str:
    return f"{source_name}_sqs"


def poll_sensor_name(source_name: str) -> str:
    return f"{source_name}_poll"
