"""Builds the Dagster Definitions from the user's config file: each source's own (defs/source.py), merged."""

from __future__ import annotations

import dagster as dg

from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.defs.invocation_sensor import build_invocation_sensor
from s3sync_dagster.defs.monitor import build_run_monitor
from s3sync_dagster.defs.source import source_definitions
from s3sync_dagster.resources import resources_for


def build_definitions(config: AppConfig) -> dg.Definitions:
    shared = dg.Definitions(
        # Turns `s3sync invoke` requests into runs; fails runs whose worker died.
        sensors=[build_invocation_sensor(config.sources), build_run_monitor()] if config.sources else [],
        resources=resources_for(config),
        # A run is one step: running it in the run's own process saves a second process start and import
        # of everything (~3 s before the step, ~2.6 s after it; benchmarks, section 9). A step that dies
        # takes its run with it either way: run retries and the run-worker monitor handle that.
        executor=dg.in_process_executor,
    )
    return dg.Definitions.merge(shared, *(source_definitions(source) for source in config.sources))


@dg.definitions
def defs() -> dg.Definitions:
    # Loaded by `dagster dev` / the webserver through workspace.yaml; the config file is found as
    # the CLI finds it (`$S3SYNC_CONFIG`, else ./s3sync.yaml).
    return build_definitions(load_config())
