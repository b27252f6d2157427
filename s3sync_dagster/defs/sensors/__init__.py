"""What a tick does: the SQS tick and the poll tick (ticks), an SQS tick's messages, the run requests a tick
makes, who else reads a queue or prefix now, the queues one run reads, invocations turned into runs, and the
monitor that fails runs whose worker died.

May import: failpoints, links, names, resources, run_config, state, tags.
"""

from __future__ import annotations

from s3sync_dagster.defs.sensors.invocations import (
    INVOCATION_SENSOR,
    InvocationRequest,
    build_invocation_sensor,
    invocation_tags,
    new_invocation_id,
    record_request,
    recorded_requests,
    runs_of_invocations,
)
from s3sync_dagster.defs.sensors.monitor import build_run_monitor, fail_dead, in_process_tags
from s3sync_dagster.defs.sensors.queues import WAIT_S, QueueReaders, Watched, lingers_on_queue, read_by
from s3sync_dagster.defs.sensors.readers import IN_PROGRESS, LINGER_MAX_S
from s3sync_dagster.defs.sensors.sqs_messages import delete_messages, plan_sync, receive_messages, report_kept
from s3sync_dagster.defs.sensors.tick_runs import READ_BUDGET_S, plan_keys
from s3sync_dagster.defs.sensors.ticks import SQS_SENT_TAG, SQS_TICK_INTERVAL_S, pass_over_prefix, poll_tick, sqs_tick

__all__ = [
    "INVOCATION_SENSOR",
    "IN_PROGRESS",
    "LINGER_MAX_S",
    "READ_BUDGET_S",
    "SQS_SENT_TAG",
    "SQS_TICK_INTERVAL_S",
    "WAIT_S",
    "InvocationRequest",
    "QueueReaders",
    "Watched",
    "build_invocation_sensor",
    "build_run_monitor",
    "delete_messages",
    "fail_dead",
    "in_process_tags",
    "invocation_tags",
    "lingers_on_queue",
    "new_invocation_id",
    "pass_over_prefix",
    "plan_keys",
    "plan_sync",
    "poll_tick",
    "read_by",
    "receive_messages",
    "record_request",
    "recorded_requests",
    "report_kept",
    "runs_of_invocations",
    "sqs_tick",
]
