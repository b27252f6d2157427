"""What a source sensor's tick asks of Dagster: how long it may read, which keys to sync and which partitions to
register, and the run requests that carry them, keys_per_run each."""

import hashlib
from collections.abc import Iterator, Sequence

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.links import InstanceMetaLinks
from s3sync_dagster.defs.names import partitions_name, register_requests
from s3sync_dagster.defs.run_config import sync_run_config
from s3sync_dagster.defs.tags import LINGER_TAG, PREFIX_LINGER_TAG, READS_QUEUES_TAG, SOURCE_TAG, TRIGGER_TAG
from s3sync_dagster.pipeline.records import to_partition_key
from s3sync_dagster.pipeline.s3 import META_SUFFIX, is_meta_key

# A tick may run 60 s by default; reading stops well before, so building the result always fits.
READ_BUDGET_S = 25.0


def _batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    """The items in order, `size` at a time (the last batch holds the rest)."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def plan_keys(
    context: dg.SensorEvaluationContext | dg.OpExecutionContext, source: SourceConfig, wanted: dict[str, str]
) -> tuple[list[str], list[str]]:
    """Which of the wanted keys to sync and which partitions to register (document_limit applied).

    In metadata mode only .meta.json files are partitions; a document's upload is synced (that is, the
    metadata files naming it are) only when one names it, and its deletion always (its chunks go).
    """
    if not wanted:  # a pass over an unchanged bucket: no need to read every registered key
        return [], []
    registered = set(context.instance.get_dynamic_partitions(partitions_name(source.name)))
    room = None if source.document_limit is None else max(source.document_limit - len(registered), 0)
    metadata_mode = source.auto_sync == "metadata"
    named = (
        InstanceMetaLinks(context.instance, source.name).naming(k for k in wanted if not is_meta_key(k))
        if metadata_mode
        else {}
    )
    to_sync: list[str] = []
    to_register: list[str] = []
    for object_key, action in wanted.items():
        partition_key = to_partition_key(object_key)
        if metadata_mode and not is_meta_key(object_key):
            if action == "remove" or object_key in named:
                to_sync.append(object_key)
            else:
                context.log.info(
                    f"source '{source.name}': ignored: '{object_key}' is named by no {META_SUFFIX} file "
                    "and this source syncs in metadata mode"
                )
        elif partition_key in registered:
            to_sync.append(object_key)
        elif action == "remove":
            context.log.info(f"source '{source.name}': '{object_key}' was deleted but never indexed: nothing to remove")
        elif room is not None and len(to_register) >= room:
            context.log.warning(
                f"source '{source.name}': '{object_key}' not indexed: document_limit of {source.document_limit} reached"
            )
        else:
            to_register.append(partition_key)
            to_sync.append(object_key)
    return to_sync, to_register


def sync_result(
    source: SourceConfig,
    to_sync: list[str],
    to_register: list[str],
    run_key_seed: Sequence[str],
    trigger: str,
    extra_tags: dict[str, str] | None = None,
    linger_seconds: int = 0,
    reads_queues_of: Sequence[str] = (),
    poll_linger_seconds: int = 0,
) -> dg.SensorResult:
    """The runs of these keys, keys_per_run each; with linger_seconds, the last one reads the queue after its keys
    (and those of the sources `reads_queues_of` names), with poll_linger_seconds it passes over the prefix."""
    batches = list(_batches(to_sync, source.keys_per_run))
    run_requests = []
    for number, batch in enumerate(batches):
        last = number == len(batches) - 1
        lingers, poll_lingers = (linger_seconds, poll_linger_seconds) if last else (0, 0)
        run_requests.append(
            dg.RunRequest(
                run_key=hashlib.sha256("\n".join([*run_key_seed, *batch]).encode()).hexdigest()[:32],
                run_config=sync_run_config(source.name, batch, lingers, poll_lingers),
                tags={
                    SOURCE_TAG: source.name,
                    TRIGGER_TAG: trigger,
                    **(extra_tags or {}),
                    **({LINGER_TAG: "true"} if lingers else {}),
                    **({READS_QUEUES_TAG: ",".join(reads_queues_of)} if lingers and reads_queues_of else {}),
                    **({PREFIX_LINGER_TAG: "true"} if poll_lingers else {}),
                },
            )
        )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=register_requests(source.name, to_register),
        skip_reason=None if run_requests else "nothing to sync",
    )
