"""Builds the Dagster Definitions from the user's config file: one asset and partition set per source."""

from __future__ import annotations

import dagster as dg

from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.defs.assets import build_documents_asset
from s3sync_dagster.defs.checks import build_drift_check, build_index_check
from s3sync_dagster.defs.invocation_sensor import build_invocation_sensor
from s3sync_dagster.defs.jobs import build_sync_job
from s3sync_dagster.defs.monitor import build_run_monitor
from s3sync_dagster.defs.sensors import build_poll_sensor, build_sqs_sensor
from s3sync_dagster.repair import build_repair_job
from s3sync_dagster.resources import resources_for


def build_definitions(config: AppConfig) -> dg.Definitions:
    # Every source can be repaired from the UI (the job behind `s3sync repair`).
    jobs: list[dg.JobDefinition] = [build_repair_job(source) for source in config.sources]
    sensors: list[dg.SensorDefinition] = [build_run_monitor()] if config.sources else []
    sensors += [build_invocation_sensor(config.sources)] if config.sources else []
    for source in config.sources:
        if source.auto_sync == "none" and source.poll_interval_seconds is None:
            continue
        job = build_sync_job(source)
        jobs.append(job)
        if source.auto_sync != "none":
            sensors.append(build_sqs_sensor(source, job))
        if source.poll_interval_seconds is not None:
            sensors.append(build_poll_sensor(source, job))
    return dg.Definitions(
        assets=[build_documents_asset(source) for source in config.sources],
        asset_checks=[
            *(build_index_check(source) for source in config.sources),
            *(build_drift_check(source) for source in config.sources),
        ],
        jobs=jobs,
        sensors=sensors,
        resources=resources_for(config),
        # A run is one step: running it in the run's own process saves a second process start and import
        # of everything (~3 s before the step, ~2.6 s after it; benchmarks, section 9). A step that dies
        # takes its run with it either way: run retries and the run-worker monitor handle that.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    # Loaded by `dagster dev` / the webserver through workspace.yaml; the config file is found as
    # the CLI finds it (`$S3SYNC_CONFIG`, else ./s3sync.yaml).
    return build_definitions(load_config())
