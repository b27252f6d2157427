"""What a run does: the asset's run of keys (assets), its checks, the repair, re-embed, backfill and plan jobs,
and a sync run lingering on its source's queue after its keys.

May import: failpoints, links, names, resources, run_config, sensors, state, tags, webserver.
"""

from __future__ import annotations

from s3sync_dagster.defs.runs.assets import RunEvent, index_partitions
from s3sync_dagster.defs.runs.backfill import listed_object_keys, request_backfill
from s3sync_dagster.defs.runs.checks import drift_check, drift_of, empty_at, index_check
from s3sync_dagster.defs.runs.linger import read_prefix, read_queue
from s3sync_dagster.defs.runs.plan import plan_of, plan_output
from s3sync_dagster.defs.runs.reembed import PROGRESS_PREFIX, reembed_source
from s3sync_dagster.defs.runs.repair import repair_drift, unlinked_waiting

__all__ = [
    "PROGRESS_PREFIX",
    "RunEvent",
    "drift_check",
    "drift_of",
    "empty_at",
    "index_check",
    "index_partitions",
    "listed_object_keys",
    "plan_of",
    "plan_output",
    "read_prefix",
    "read_queue",
    "reembed_source",
    "repair_drift",
    "request_backfill",
    "unlinked_waiting",
]
