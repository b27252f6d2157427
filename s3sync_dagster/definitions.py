"""Builds the Dagster Definitions from the user's config file: one asset and partition set per source."""

from __future__ import annotations

import dagster as dg

from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.defs.assets import build_documents_asset
from s3sync_dagster.resources import resources_for


def build_definitions(config: AppConfig) -> dg.Definitions:
    return dg.Definitions(
        assets=[build_documents_asset(source) for source in config.sources],
        resources=resources_for(config),
    )


@dg.definitions
def defs() -> dg.Definitions:
    # Loaded by `dagster dev` / the webserver through workspace.yaml; the config file is found as
    # the CLI finds it (`$S3SYNC_CONFIG`, else ./s3sync.yaml).
    return build_definitions(load_config())
