"""One source's Dagster objects, all made here: its asset, checks, jobs and sensors (definitions.py merges them).

Everything a source is comes from its SourceConfig (the user's YAML); resources are connections only, asked
for by the keys the config names (config.ResourceKeysConfig, `s3sync_*`: never a key of the user's project). What the objects do on a run or a tick lives beside them: defs/runs/assets.py
(indexing), defs/runs/checks.py, defs/sensors/ticks.py and defs/runs/repair.py.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg

from s3sync_dagster.config import SOURCE_KINDS, ConfigError, ResourceKeysConfig, SourceConfig
from s3sync_dagster.defs import names
from s3sync_dagster.defs.resources import required, taken
from s3sync_dagster.defs.run_config import (
    BackfillConfig,
    InvocationConfig,
    ReembedConfig,
    RepairConfig,
    SyncKeysConfig,
)
from s3sync_dagster.defs.runs import (
    RunEvent,
    drift_check,
    index_check,
    index_partitions,
    plan_output,
    read_prefix,
    read_queue,
    reembed_source,
    repair_drift,
    request_backfill,
)
from s3sync_dagster.defs.sensors import SQS_TICK_INTERVAL_S, poll_tick, sqs_tick
from s3sync_dagster.defs.tags import SOURCE_TAG, TRIGGER_TAG
from s3sync_dagster.pipeline.records import to_partition_key


def source_definitions(
    source: SourceConfig, keys: ResourceKeysConfig, sources: Sequence[SourceConfig] = ()
) -> dg.Definitions:
    """The asset (one partition per object key) with its two checks, the repair job, and with auto-sync or
    polling configured, the sync job and the sensors that launch it. `sources` are the code location's, this one
    among them: the SQS sensor's run reads the queues of the others too (defs/sensors/queues.py)."""
    documents_asset = _documents_asset(source, keys)
    jobs: list[dg.JobDefinition | dg.UnresolvedAssetJobDefinition] = [
        _repair_job(source, keys),
        _backfill_job(source, keys),
        _reembed_job(source, keys),
        _documents_job(source),
        _plan_job(source, keys),
    ]
    sensors: list[dg.SensorDefinition] = []
    if source.auto_sync != "none" or source.poll_interval_seconds is not None:
        sync_job = _sync_job(source, keys, sources)
        jobs.append(sync_job)
        sensors += _sensors(source, sync_job, keys, sources)
    return dg.Definitions(assets=[documents_asset], jobs=jobs, sensors=sensors)


def _taking(context: Any, keys: ResourceKeysConfig, *roles: str) -> dict[str, Any]:
    """The resources of these roles that a run or check holds, by role (the keyword arguments of what it calls)."""
    return {role: taken(context.resources, keys, role) for role in roles}


def _writing(keys: ResourceKeysConfig) -> set[str]:
    """The resource keys of what writes a source's chunks: its asset and the ops that sync keys."""
    return required(keys, "s3", "chroma", "embedding", "documents")


def _no_value(keys: ResourceKeysConfig) -> dg.Out:
    """Our ops output no value: to our own IO manager, so a run never starts the project's `io_manager`."""
    return dg.Out(dg.Nothing, io_manager_key=keys.io_manager)


def _documents_asset(source: SourceConfig, keys: ResourceKeysConfig) -> dg.AssetsDefinition:
    """The source's asset: one partition per object key, each run indexing its keys' chunks. Its two checks are
    its own step's: a run of keys evaluates the ones it selected on its keys (no step of theirs to skip), and
    executed alone (the Checks tab) they compare the whole source."""
    # What the user's `asset:` says (config.AssetAttributes) beside what the source itself says.
    attributes = source.asset
    asset_key = names.documents_asset_key(source)
    spec = dg.AssetSpec(
        key=asset_key,
        kinds={*SOURCE_KINDS, *attributes.kinds},
        group_name=source.group_name or source.name,
        tags=attributes.tag_values(),
        owners=attributes.owners,
        automation_condition=automation_condition(source),
        description=attributes.description or _asset_description(source),
        metadata={
            **attributes.metadata,
            "collection": source.collection_name,
            "bucket": source.bucket_name,
            "path_prefix": source.path_prefix,
            "chunking": source.chunking.signature(),
        },
        # Each key reports its own materialisation; the step itself yields no output.
        skippable=True,
    ).with_io_manager_key(keys.io_manager)

    @dg.multi_asset(
        name=names.asset_op_name(source),
        description=spec.description,
        specs=[spec],
        check_specs=_check_specs(source),
        # The asset without its checks (`s3sync sync`, invocations), or the checks without the asset (Execute).
        can_subset=True,
        partitions_def=names.partitions_def(source.name),
        required_resource_keys=_writing(keys),
        # A UI backfill over many keys becomes runs of keys_per_run keys, never one run per object.
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=source.keys_per_run),
        # The run's tags are the launcher's (a UI backfill has none of ours): the pool is the op's own.
        pool=names.pool_name(source.name),
    )
    def documents_asset(context: dg.AssetExecutionContext, config: InvocationConfig) -> Iterator[RunEvent]:
        if asset_key not in context.selected_asset_keys:  # the checks alone: the whole source
            yield from _whole_source_checks(context, source, keys)
            return
        yield from index_partitions(
            context,
            source,
            context.partition_keys,
            **_taking(context, keys, "s3", "chroma", "embedding", "documents"),
            invocation=config.invocation(),
        )

    return documents_asset


def _asset_description(source: SourceConfig) -> str:
    """What the asset page says of a source: where its chunks come from and go, and how to index it from the UI."""
    backfill = names.backfill_job_name(source.name)
    return (
        f"Chunks of the objects in s3://{source.bucket_name}/{source.path_prefix} "
        f"in Chroma collection '{source.collection_name}'. One partition per object key. "
        f"To index the bucket from here, launch the job {backfill} (Jobs, then Launchpad) with its default "
        "selection ALL: it lists the bucket, adds a partition for each key it finds, and backfills them all; launched "
        "again, it adds the keys uploaded since. Its other selections backfill missing, failed or stale keys, or a "
        "prefix or glob."
    )


def _check_specs(source: SourceConfig) -> list[dg.AssetCheckSpec]:
    """The asset's two checks: every indexed key has chunks, and the index matches the bucket (its drift)."""
    asset_key = names.documents_asset_key(source)
    return [
        dg.AssetCheckSpec(
            names.INDEX_CHECK_NAME,
            asset=asset_key,
            blocking=False,
            description=(
                "Compares the keys this asset last reported as indexed with the chunks in Chroma: a key "
                "with no chunks fails the check; chunks of keys the asset does not know are reported."
            ),
        ),
        dg.AssetCheckSpec(
            names.DRIFT_CHECK_NAME,
            asset=asset_key,
            blocking=False,
            description=(
                "Joins the bucket listing with the chunks' metadata: objects missing from the index, indexed at "
                f"an old ETag, and chunks whose object is gone. `s3sync repair {source.name}` (or the "
                f"{names.repair_job_name(source.name)} job) fixes exactly those."
            ),
        ),
    ]


def _whole_source_checks(
    context: dg.AssetExecutionContext, source: SourceConfig, keys: ResourceKeysConfig
) -> Iterator[dg.AssetCheckResult]:
    """The checks this run selected, each comparing the whole source: every key's chunks, the bucket's listing."""
    selected = {check.name for check in context.selected_asset_check_keys}
    if names.INDEX_CHECK_NAME in selected:
        yield index_check(context, source, **_taking(context, keys, "chroma", "embedding"))
    if names.DRIFT_CHECK_NAME in selected:
        s3 = taken(context.resources, keys, "s3")
        yield drift_check(context, source, s3.client(source.name), **_taking(context, keys, "chroma", "embedding"))


def _repair_job(source: SourceConfig, keys: ResourceKeysConfig) -> dg.JobDefinition:
    """The job that syncs exactly the drift the `drift` check reports (`s3sync repair`)."""

    @dg.op(
        name=names.repair_op_name(source.name),
        description=f"Syncs the keys of source '{source.name}' that drifted from the bucket (its `drift` check).",
        pool=names.pool_name(source.name),
        required_resource_keys=_writing(keys),
        out=_no_value(keys),
    )
    def repair_keys(context: dg.OpExecutionContext, config: RepairConfig) -> Iterator[RunEvent]:
        yield from repair_drift(
            context, source, config, **_taking(context, keys, "s3", "chroma", "embedding", "documents")
        )

    @dg.job(
        name=names.repair_job_name(source.name),
        tags={SOURCE_TAG: source.name, TRIGGER_TAG: "repair"},
        description=(
            f"Repair source '{source.name}': audit it, then sync exactly the drift its `drift` check reports "
            "(objects missing from the index or indexed at an old ETag, chunks whose object is gone); launched "
            f"with nothing set from the launchpad, or by `s3sync repair {source.name}` with the keys it found."
        ),
    )
    def repair_job() -> None:
        repair_keys()

    return repair_job


def _reembed_job(source: SourceConfig, keys: ResourceKeysConfig) -> dg.JobDefinition:
    """The job that re-embeds the source's collection into the configured model and swaps it in (`s3sync reembed`)."""

    @dg.op(
        name=names.reembed_op_name(source.name),
        description=(
            f"Re-embeds the collection of source '{source.name}' with the configured embedding function from its "
            "stored chunk texts, then swaps it in; queries are answered throughout (abandon: drop it instead)."
        ),
        required_resource_keys=required(keys, "chroma", "embedding"),
        out=_no_value(keys),
    )
    def reembed_collection(context: dg.OpExecutionContext, config: ReembedConfig) -> dg.Output[None]:
        return reembed_source(context, source, config, **_taking(context, keys, "chroma", "embedding"))

    @dg.job(
        name=names.reembed_job_name(source.name),
        tags={SOURCE_TAG: source.name, TRIGGER_TAG: "reembed"},
        description=(
            f"After a change of `embedding:`: re-embed source '{source.name}''s collection into the new model and "
            "swap it in, without downtime (`s3sync reembed`). Its progress is in the run's log."
        ),
    )
    def reembed_job() -> None:
        reembed_collection()

    return reembed_job


def _backfill_job(source: SourceConfig, keys: ResourceKeysConfig) -> dg.JobDefinition:
    """The launchpad's backfill: starts Dagster's own backfill of the asset over the keys chosen."""

    @dg.op(
        name=names.backfill_op_name(source.name),
        description=(
            f"Starts Dagster's own backfill of source '{source.name}''s asset over the keys chosen: all, "
            "missing, failed, stale, a prefix or a glob, the bucket listed first and its new keys registered. "
            "Through the webserver: the backfill itself starts in seconds at a million keys."
        ),
        required_resource_keys=required(keys, "webserver", "s3", "chroma", "embedding"),
        out=_no_value(keys),
    )
    def backfill_keys(context: dg.OpExecutionContext, config: BackfillConfig) -> dg.Output[None]:
        return request_backfill(
            context, source, config, **_taking(context, keys, "webserver", "s3", "chroma", "embedding")
        )

    @dg.job(
        name=names.backfill_job_name(source.name),
        tags={SOURCE_TAG: source.name, TRIGGER_TAG: "backfill"},
        description=(
            f"Backfill source '{source.name}' from the launchpad: choose a selection (all, missing, failed, "
            "stale, prefix, glob); the run starts a backfill on the Backfills page, runs of "
            f"{source.keys_per_run} keys. Use it above 100,000 keys, where the Materialize dialog's 'All' freezes."
        ),
    )
    def backfill_job() -> None:
        backfill_keys()

    return backfill_job


def _plan_job(source: SourceConfig, keys: ResourceKeysConfig) -> dg.JobDefinition:
    """The plan before a sync (`s3sync plan`): what a sync would do now, as the run's output, writing nothing."""

    @dg.op(
        name=names.plan_op_name(source.name),
        description=(
            f"Plans a sync of source '{source.name}' without writing anything: new, changed, deleted, unchanged, "
            "archived and refused objects, bytes by kind, chunks, embedding time and Chroma Sync's price."
        ),
        required_resource_keys=required(keys, "s3", "chroma", "embedding"),
        out=_no_value(keys),
    )
    def plan_sync(context: dg.OpExecutionContext) -> dg.Output[None]:
        return plan_output(context, source, **_taking(context, keys, "s3", "chroma", "embedding"))

    @dg.job(
        name=names.plan_job_name(source.name),
        tags={SOURCE_TAG: source.name, TRIGGER_TAG: "plan"},
        description=(
            f"Plan a sync of source '{source.name}' (`s3sync plan {source.name}`): the plan is the output's "
            "metadata (a table, and the counts as numbers); nothing is written to Chroma or the instance."
        ),
    )
    def plan_job() -> None:
        plan_sync()

    return plan_job


def _documents_job(source: SourceConfig) -> "dg.UnresolvedAssetJobDefinition":  # a name only for type checkers
    """The asset alone, for `s3sync sync`'s runs (commands/runs/runner.py) and the Celery workers that rebuild them
    (definitions.documents_job): a run of keys the command started evaluates no check (selected, each would be
    evaluated on the run's keys in the asset's step; the command's own report says what each key did)."""
    asset_key = names.documents_asset_key(source)
    return dg.define_asset_job(
        names.documents_job_name(source.name),
        selection=dg.AssetSelection.assets(asset_key).without_checks(),
        description=f"The {asset_key.to_user_string()} asset without its checks: the runs of `s3sync sync`.",
    )


def _sync_job(source: SourceConfig, keys: ResourceKeysConfig, sources: Sequence[SourceConfig]) -> dg.JobDefinition:
    """The job the source's sensors launch: the keys they found, then the next ones read by the run itself while it
    lingers (the queues of the other `sources` too)."""
    peers = {peer.name: peer for peer in sources if peer.name != source.name}

    # Keys from events are scattered over the partition list, so they cannot form one partition
    # range; this job takes them as a list and records the same per-key materialisations.
    @dg.op(
        name=names.sync_op_name(source.name),
        description=f"Syncs the given object keys of source '{source.name}' into Chroma.",
        pool=names.pool_name(source.name),
        required_resource_keys=_writing(keys),
        out=_no_value(keys),
    )
    def sync_keys(context: dg.OpExecutionContext, config: SyncKeysConfig) -> Iterator[RunEvent]:
        partition_keys = [to_partition_key(object_key) for object_key in config.object_keys]
        resources = _taking(context, keys, "s3", "chroma", "embedding", "documents")
        yield from index_partitions(context, source, partition_keys, **resources)
        # The SQS sensor's run: the queues' next events are synced here, by a process already warm.
        yield from read_queue(context, source, config.linger_seconds, peers=peers, **resources)
        # The poll sensor's run: the prefix's next passes are made here.
        yield from read_prefix(context, source, config.poll_linger_seconds, **resources)

    @dg.job(
        name=names.sync_job_name(source.name),
        tags={SOURCE_TAG: source.name},
        description=(
            f"The runs of source '{source.name}''s sensors: the object keys they found (S3 events, or a pass "
            "over the prefix) synced into Chroma, then the next ones read by the run itself while it lingers."
        ),
    )
    def sync_job() -> None:
        sync_keys()

    return sync_job


def _sensors(
    source: SourceConfig, job: dg.JobDefinition, keys: ResourceKeysConfig, sources: Sequence[SourceConfig]
) -> list[dg.SensorDefinition]:
    sensors = []
    if source.auto_sync != "none":

        @dg.sensor(
            name=names.sqs_sensor_name(source.name),
            job=job,
            minimum_interval_seconds=SQS_TICK_INTERVAL_S,
            # A user who configured auto-sync expects it on as soon as `dagster dev` starts.
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=f"S3 event notifications for source '{source.name}' ({source.auto_sync} mode) from SQS.",
            required_resource_keys=required(keys, "s3"),
        )
        def sqs_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
            return sqs_tick(context, source, taken(context.resources, keys, "s3"), sources)

        sensors.append(sqs_sensor)
    if source.poll_interval_seconds is not None:

        @dg.sensor(
            name=names.poll_sensor_name(source.name),
            job=job,
            minimum_interval_seconds=source.poll_interval_seconds,
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=(
                f"Lists s3://{source.bucket_name}/{source.path_prefix} every {source.poll_interval_seconds} s: "
                "new and changed objects are indexed, vanished ones removed."
            ),
            required_resource_keys=required(keys, "s3"),
        )
        def poll_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
            return poll_tick(context, source, taken(context.resources, keys, "s3"))

        sensors.append(poll_sensor)
    return sensors


def automation_condition(source: SourceConfig) -> dg.AutomationCondition | None:
    """The condition of the source's `asset:` block: rendered by Dagster already in a component's defs.yaml, the
    template as written in s3sync.yaml (rendered here, with Dagster's own template scope)."""
    condition = source.asset.automation_condition
    if not isinstance(condition, str):
        return condition
    where = f"source '{source.name}': asset.automation_condition"
    try:
        rendered = dg.ResolutionContext.default().resolve_value(condition)
    except Exception as error:
        raise ConfigError(f"{where}: {error}") from None
    if not isinstance(rendered, dg.AutomationCondition):
        raise ConfigError(f"{where}: the template made a {type(rendered).__name__}, not an AutomationCondition")
    return rendered
