"""The command's work on a Dagster instance: which home, keys as partitions, discovery and the ranged runs of a
sync (one per batch of neighbouring partitions), what a finished run did (read back from its events), repair, the
Sync API's invocations, sources as it shows them, and the live progress on a terminal.

May import: errors.
"""

from __future__ import annotations

from s3sync_dagster.commands.runs.audited_repair import repair
from s3sync_dagster.commands.runs.dagster_home import home_in_words, open_instance
from s3sync_dagster.commands.runs.invocations import (
    cancel,
    check_indexable,
    check_object_exists,
    daemon_running,
    execute_partition_run,
    list_invocations,
    list_invocations_by_id,
    source_runs_in_flight,
    validate_invocation,
    wait_for,
    wait_for_run,
)
from s3sync_dagster.commands.runs.partitions import register_keys
from s3sync_dagster.commands.runs.progress import COMMAND_TAG, RunsProgress, counting, runs_progress, shown
from s3sync_dagster.commands.runs.reports import run_failure
from s3sync_dagster.commands.runs.runner import DiscoverResult, RunSummary, SyncResult, discover, s3_client, sync
from s3sync_dagster.commands.runs.source_admin import chunk_counts, describe_source, remove_source

__all__ = [
    "COMMAND_TAG",
    "DiscoverResult",
    "RunSummary",
    "RunsProgress",
    "SyncResult",
    "cancel",
    "check_indexable",
    "check_object_exists",
    "chunk_counts",
    "counting",
    "daemon_running",
    "describe_source",
    "discover",
    "execute_partition_run",
    "home_in_words",
    "list_invocations",
    "list_invocations_by_id",
    "open_instance",
    "register_keys",
    "remove_source",
    "repair",
    "run_failure",
    "runs_progress",
    "s3_client",
    "shown",
    "source_runs_in_flight",
    "sync",
    "validate_invocation",
    "wait_for",
    "wait_for_run",
]
