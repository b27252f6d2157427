"""Builds the Dagster Definitions from the user's config file: each source's own (defs/source.py), merged."""

from __future__ import annotations

import dagster as dg

from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.defs.executor import executor_for
from s3sync_dagster.defs.invocation_sensor import build_invocation_sensor
from s3sync_dagster.defs.monitor import build_run_monitor
from s3sync_dagster.defs.names import documents_asset_key, documents_job_name
from s3sync_dagster.defs.resources import resources_for
from s3sync_dagster.defs.source import source_definitions


def build_definitions(config: AppConfig) -> dg.Definitions:
    shared = dg.Definitions(
        # Turns `s3sync invoke` requests into runs; fails runs whose worker died.
        sensors=[build_invocation_sensor(config.sources), build_run_monitor()] if config.sources else [],
        resources=resources_for(config),
        executor=executor_for(config),
    )
    return dg.Definitions.merge(shared, *(source_definitions(source) for source in config.sources))


@dg.definitions
def defs() -> dg.Definitions:
    # Loaded by `dagster dev` / the webserver through workspace.yaml; the config file is found as
    # the CLI finds it (`$S3SYNC_CONFIG`, else ./s3sync.yaml).
    return build_definitions(load_config())


def documents_job(source_name: str) -> dg.JobDefinition:
    """The job of one source's documents asset, from the config file ($S3SYNC_CONFIG, else ./s3sync.yaml).

    What the runs of `s3sync sync` executed through Celery are rebuilt from (`dg.build_reconstructable_job`):
    each worker calls this in its own process, on the same config file. The implicit asset job cannot be:
    Dagster refuses to put a job of that reserved name into the repository a reconstructed job needs.
    Runs the daemon launches (sensors, UI backfills) need none of this: their pointer is the code
    location's (`defs` above, through workspace.yaml), whose repository holds the implicit asset job and the
    sensors' jobs, and a worker rebuilds the job from it (test_celery_daemon.py).
    """
    documents = dg.define_asset_job(documents_job_name(source_name), selection=[documents_asset_key(source_name)])
    merged = dg.Definitions.merge(build_definitions(load_config()), dg.Definitions(jobs=[documents]))
    return merged.resolve_job_def(documents.name)
