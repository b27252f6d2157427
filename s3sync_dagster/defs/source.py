"""One source's Dagster objects, all made here: its asset, checks, jobs and sensors (definitions.py merges them).

Everything a source is comes from its SourceConfig (the user's YAML); resources are connections only,
taken as typed parameters. What the objects do on a run or a tick lives beside them: defs/assets.py
(indexing), defs/checks.py, defs/sensors.py and defs/repair.py.
"""

from collections.abc import Iterator

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs import names
from s3sync_dagster.defs.assets import index_partitions
from s3sync_dagster.defs.backfill import request_backfill
from s3sync_dagster.defs.checks import drift_check, index_check
from s3sync_dagster.defs.repair import repair_drift
from s3sync_dagster.defs.resources import (
    ChromaResource,
    DagsterWebserver,
    DocumentsResource,
    EmbeddingResource,
    S3Connections,
)
from s3sync_dagster.defs.run_config import BackfillConfig, InvocationConfig, RepairConfig, SyncKeysConfig
from s3sync_dagster.defs.sensors import poll_tick, sqs_tick
from s3sync_dagster.defs.tags import SOURCE_TAG, TRIGGER_TAG
from s3sync_dagster.pipeline import keys


def source_definitions(source: SourceConfig) -> dg.Definitions:
    """The asset (one partition per object key), its two checks, the repair job, and with auto-sync or
    polling configured, the sync job and the sensors that launch it."""
    asset_key = names.documents_asset_key(source.name)

    @dg.asset(
        key=asset_key,
        partitions_def=names.partitions_def(source.name),
        kinds={"s3", "chroma"},
        group_name=source.name,
        description=(
            f"Chunks of the objects in s3://{source.bucket_name}/{source.path_prefix} "
            f"in Chroma collection '{source.collection_name}'. One partition per object key. "
            f"To backfill all, missing, failed or stale keys, or a prefix or glob, at any number of keys, "
            f"launch the job {names.backfill_job_name(source.name)}."
        ),
        metadata={
            "collection": source.collection_name,
            "bucket": source.bucket_name,
            "path_prefix": source.path_prefix,
            "chunking": source.chunking.signature(),
        },
        # A UI backfill over many keys becomes runs of keys_per_run keys, never one run per object.
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=source.keys_per_run),
        # Each key reports its own materialisation; the step itself yields no output.
        output_required=False,
        # The run's tags are the launcher's (a UI backfill has none of ours): the pool is the op's own.
        pool=names.pool_name(source.name),
    )
    def documents_asset(
        context: dg.AssetExecutionContext,
        config: InvocationConfig,
        s3: S3Connections,
        chroma: ChromaResource,
        embedding: EmbeddingResource,
        documents: DocumentsResource,
    ) -> Iterator[dg.Output[None]]:
        index_partitions(
            context,
            source,
            context.partition_keys,
            s3=s3,
            chroma=chroma,
            embedding=embedding,
            documents=documents,
            invocation=config.invocation(),
        )
        yield from ()

    @dg.asset_check(
        asset=asset_key,
        name=names.INDEX_CHECK_NAME,
        blocking=False,
        description=(
            "Compares the keys this asset last reported as indexed with the chunks in Chroma: a key "
            "with no chunks fails the check; chunks of keys the asset does not know are reported."
        ),
    )
    def indexed_keys_have_chunks(
        context: dg.AssetCheckExecutionContext, chroma: ChromaResource, embedding: EmbeddingResource
    ) -> dg.AssetCheckResult:
        return index_check(context, source, chroma, embedding)

    @dg.asset_check(
        asset=asset_key,
        name=names.DRIFT_CHECK_NAME,
        blocking=False,
        description=(
            "Joins the bucket listing with the chunks' metadata: objects missing from the index, indexed at "
            f"an old ETag, and chunks whose object is gone. `s3sync repair {source.name}` (or the "
            f"{names.repair_job_name(source.name)} job) fixes exactly those."
        ),
    )
    def drift(
        context: dg.AssetCheckExecutionContext, s3: S3Connections, chroma: ChromaResource, embedding: EmbeddingResource
    ) -> dg.AssetCheckResult:
        return drift_check(context, source, s3.client(source.name), chroma, embedding)

    @dg.op(
        name=names.repair_op_name(source.name),
        description=f"Syncs the keys of source '{source.name}' that drifted from the bucket (its `drift` check).",
        pool=names.pool_name(source.name),
    )
    def repair_keys(
        context: dg.OpExecutionContext,
        config: RepairConfig,
        s3: S3Connections,
        chroma: ChromaResource,
        embedding: EmbeddingResource,
        documents: DocumentsResource,
    ) -> None:
        repair_drift(context, source, config, s3=s3, chroma=chroma, embedding=embedding, documents=documents)

    @dg.job(name=names.repair_job_name(source.name), tags={SOURCE_TAG: source.name, TRIGGER_TAG: "repair"})
    def repair_job() -> None:
        repair_keys()

    @dg.op(
        name=names.backfill_op_name(source.name),
        description=(
            f"Starts Dagster's own backfill of source '{source.name}''s asset over the keys chosen: all, "
            "missing, failed, stale, a prefix or a glob. Through the webserver, in seconds at a million keys."
        ),
    )
    def backfill_keys(
        context: dg.OpExecutionContext,
        config: BackfillConfig,
        webserver: DagsterWebserver,
        s3: S3Connections,
        chroma: ChromaResource,
        embedding: EmbeddingResource,
    ) -> dg.Output[str | None]:
        return request_backfill(context, source, config, webserver=webserver, s3=s3, chroma=chroma, embedding=embedding)

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

    jobs = [repair_job, backfill_job]
    sensors: list[dg.SensorDefinition] = []
    if source.auto_sync != "none" or source.poll_interval_seconds is not None:
        # Keys from events are scattered over the partition list, so they cannot form one partition
        # range; this job takes them as a list and records the same per-key materialisations.
        @dg.op(
            name=names.sync_op_name(source.name),
            description=f"Syncs the given object keys of source '{source.name}' into Chroma.",
            pool=names.pool_name(source.name),
        )
        def sync_keys(
            context: dg.OpExecutionContext,
            config: SyncKeysConfig,
            s3: S3Connections,
            chroma: ChromaResource,
            embedding: EmbeddingResource,
            documents: DocumentsResource,
        ) -> None:
            partition_keys = [keys.to_partition_key(object_key) for object_key in config.object_keys]
            index_partitions(
                context, source, partition_keys, s3=s3, chroma=chroma, embedding=embedding, documents=documents
            )

        @dg.job(name=names.sync_job_name(source.name), tags={SOURCE_TAG: source.name})
        def sync_job() -> None:
            sync_keys()

        jobs.append(sync_job)
        sensors += _sensors(source, sync_job)
    return dg.Definitions(
        assets=[documents_asset], asset_checks=[indexed_keys_have_chunks, drift], jobs=jobs, sensors=sensors
    )


def _sensors(source: SourceConfig, job: dg.JobDefinition) -> list[dg.SensorDefinition]:
    sensors = []
    if source.auto_sync != "none":

        @dg.sensor(
            name=names.sqs_sensor_name(source.name),
            job=job,
            minimum_interval_seconds=5,
            # A user who configured auto-sync expects it on as soon as `dagster dev` starts.
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=f"S3 event notifications for source '{source.name}' ({source.auto_sync} mode) from SQS.",
        )
        def sqs_sensor(context: dg.SensorEvaluationContext, s3: S3Connections) -> dg.SensorResult:
            return sqs_tick(context, source, s3)

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
        )
        def poll_sensor(context: dg.SensorEvaluationContext, s3: S3Connections) -> dg.SensorResult:
            return poll_tick(context, source, s3)

        sensors.append(poll_sensor)
    return sensors
