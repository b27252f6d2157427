"""What a source's sensors do on each tick: S3 event notifications read from SQS, or a pass over the prefix,
become sync runs of the keys they name (defs/source.py makes the sensors).

The ticks themselves live here; what they share is beside them: an SQS tick's messages (sqs_messages.py), the runs
a tick requests (tick_runs.py), who else reads a queue or prefix now (readers.py). READ_BUDGET_S and LIST_PAGE_SIZE
are read from this module at each tick, so setting them here changes the next tick."""

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs import failpoints
from s3sync_dagster.defs.resources import S3Connections
from s3sync_dagster.defs.sensors.queues import release_messages
from s3sync_dagster.defs.sensors.readers import (
    READER_WAIT_S,
    reader_after_read,
    reader_until_stopped,
    reading_run,
)
from s3sync_dagster.defs.sensors.sqs_messages import (
    SQS_BATCH_TAG,
    PendingDelete,
    delete_messages,
    pending_cursor,
    pending_deletes,
    plan_sync,
    receive_messages,
    report_kept,
    settle_pending,
)
from s3sync_dagster.defs.sensors.tick_runs import READ_BUDGET_S, plan_keys, sync_result
from s3sync_dagster.defs.state import poll_state
from s3sync_dagster.defs.tags import PREFIX_LINGER_TAG
from s3sync_dagster.pipeline.s3 import ObjectInfo, PollState, key_selected

# The sensor's minimum_interval_seconds: not what paces it (the long poll and the daemon's loop do), so that a
# tick is started at every loop once the last one has ended.
SQS_TICK_INTERVAL_S = 1
LIST_PAGE_SIZE = 1000  # ListObjectsV2's own maximum
# When the oldest event of a run reached the queue (epoch ms, SQS's SentTimestamp): how old events are when
# their run starts (benchmarks, section 3).
SQS_SENT_TAG = "s3sync/sqs_sent_ms"


def sqs_tick(
    context: dg.SensorEvaluationContext,
    source: SourceConfig,
    s3: S3Connections,
    sources: Sequence[SourceConfig] = (),
) -> dg.SensorResult:
    """Settle the messages of earlier ticks whose runs exist, read new ones, and request their runs; the last run
    reads, after its keys, this queue and those of the other lingering SQS `sources` (defs/sensors/queues.py)."""
    assert source.sqs_queue_url is not None
    queue_url, visibility_s = source.sqs_queue_url, source.sqs_visibility_timeout_seconds
    client = s3.sqs_client(source.name)
    pending = settle_pending(context, client, queue_url, pending_deletes(context.cursor), visibility_s)
    started = time.monotonic()
    reader = reader_until_stopped(context.instance, source, min(READER_WAIT_S, source.sqs_wait_seconds))
    if reader is not None:
        return dg.SensorResult(
            skip_reason=f"run {reader} reads the queue of source '{source.name}' (sqs_linger_seconds)",
            cursor=pending_cursor(pending),
        )
    budget_s = READ_BUDGET_S - (time.monotonic() - started)
    messages = receive_messages(client, queue_url, visibility_s, budget_s, first_wait_s=source.sqs_wait_seconds)
    if not messages:
        return dg.SensorResult(skip_reason="no S3 events in the queue", cursor=pending_cursor(pending))
    reads_with, reader = reader_after_read(context, source, sources)
    if reader is not None:
        release_messages(context.log, client, queue_url, [str(message["ReceiptHandle"]) for message in messages])
        return dg.SensorResult(
            skip_reason=f"{reader} reads the queue of source '{source.name}': {len(messages)} message(s) left to it",
            cursor=pending_cursor(pending),
        )
    to_sync, to_register, kept = plan_sync(context, source, messages)
    # Keyed by the messages it covers: a redelivered message never launches a second run.
    message_ids = sorted(str(message.get("MessageId")) for message in messages)
    batch = hashlib.sha256("\n".join(message_ids).encode()).hexdigest()[:32]
    sent = [int(message.get("Attributes", {}).get("SentTimestamp", 0)) for message in messages]
    result = sync_result(
        source,
        to_sync,
        to_register,
        message_ids,
        f"sqs:{source.auto_sync}",
        {SQS_BATCH_TAG: batch, SQS_SENT_TAG: str(min(sent))},
        source.sqs_linger_seconds,
        reads_with,
    )
    # A kept message is never deleted, by this tick or a later one: it stays invisible for the visibility
    # timeout, is read (and reported) again after it, and leaves for the dead-letter queue in the end.
    kept_ids = {entry.message_id for entry in kept}
    handles = [str(message["ReceiptHandle"]) for message in messages if str(message.get("MessageId")) not in kept_ids]
    if result.run_requests:
        if handles:
            pending.append(PendingDelete(batch, len(result.run_requests), handles, time.time()))
    elif handles:  # nothing to run: nothing is lost if these go now
        delete_messages(context, client, queue_url, handles)
    summary = f"{len(messages)} message(s) -> {len(to_sync)} key(s) in {len(result.run_requests or [])} run(s)"
    context.log.info(f"source '{source.name}': {summary}" + (f"; {len(kept)} not understood" if kept else ""))
    report = report_kept(context, source, kept)
    failpoints.reached("sqs:received")
    return dg.SensorResult(
        run_requests=result.run_requests,
        dynamic_partitions_requests=result.dynamic_partitions_requests,
        # The tick's line in the UI: a tick with runs shows them, one without says what was left and why.
        skip_reason=None if result.run_requests else "; ".join(filter(None, [_skip_message(result), report])),
        cursor=pending_cursor(pending),
    )


def _skip_message(result: dg.SensorResult) -> str | None:
    return result.skip_reason.skip_message if result.skip_reason else None


@dataclass(frozen=True)
class PrefixPass:
    """What one stretch of a pass over a source's prefix found (a large bucket's pass spans several)."""

    number: int
    changed: list[str]
    vanished: list[str]

    def wanted(self) -> dict[str, str]:
        return dict.fromkeys(self.changed, "index") | dict.fromkeys(self.vanished, "remove")


def pass_over_prefix(client: Any, source: SourceConfig, state: PollState, budget_s: float) -> PrefixPass:
    """Go on with the pass over the source's prefix for up to budget_s (one page at least): new and changed keys,
    and, if the pass ends, vanished ones. The state is the caller's to commit once what was found is handled."""
    deadline = time.monotonic() + budget_s
    changed: list[str] = []
    vanished: list[str] = []
    pass_number = state.pass_number
    # One page at a time, resumed from the stored token: a large bucket spans several ticks.
    while True:
        request: dict[str, Any] = {
            "Bucket": source.bucket_name,
            "Prefix": source.path_prefix,
            "MaxKeys": LIST_PAGE_SIZE,
        }
        if state.continuation_token:
            request["ContinuationToken"] = state.continuation_token
        page = client.list_objects_v2(**request)
        changed += state.observe(
            (
                ObjectInfo(
                    e["Key"],
                    int(e["Size"]),
                    e["ETag"].strip('"'),
                    e["LastModified"].isoformat(),
                    storage_class=str(e.get("StorageClass") or "STANDARD"),
                )
                for e in page.get("Contents", [])
                if key_selected(e["Key"], source.path_prefix, source.include, source.exclude)
            ),
            last_modified=bool(source.object_metadata),  # a copy in place with new metadata keeps the ETag
        )
        state.next_page(page.get("NextContinuationToken"))
        if not page.get("IsTruncated"):
            vanished = state.finish_pass()
            break
        if time.monotonic() >= deadline:
            break
    return PrefixPass(pass_number, changed, vanished)


def poll_lingers(source: SourceConfig) -> int:
    """How long the poll sensor's run passes over the prefix after its keys: poll_linger_seconds, where a pass
    comes within it."""
    interval = source.poll_interval_seconds
    return source.poll_linger_seconds if interval is not None and interval <= source.poll_linger_seconds else 0


def poll_tick(context: dg.SensorEvaluationContext, source: SourceConfig, s3: S3Connections) -> dg.SensorResult:
    """Go on with the pass over the source's prefix: new and changed keys are synced, vanished ones removed."""
    reader = reading_run(context.instance, source, PREFIX_LINGER_TAG)
    if reader is not None:
        return dg.SensorResult(
            skip_reason=f"run {reader} of source '{source.name}' passes over the prefix (poll_linger_seconds)"
        )
    client = s3.client(source.name)
    state = poll_state(context.instance, source.name)
    try:
        found = pass_over_prefix(client, source, state, READ_BUDGET_S)
        to_sync, to_register = plan_keys(context, source, found.wanted())
        result = sync_result(
            source, to_sync, to_register, [f"poll-{found.number}"], "poll", poll_linger_seconds=poll_lingers(source)
        )
        state.commit()  # only now that the result covering these changes is built
    finally:
        state.close()
    context.log.info(
        f"source '{source.name}': pass {found.number}: {len(found.changed)} new or changed, "
        f"{len(found.vanished)} vanished, {len(result.run_requests or [])} run(s)"
    )
    return result
