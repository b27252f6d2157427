"""An SQS tick's messages: read from the queue, planned into keys, deleted once the runs they led to exist (the
sensor's cursor carries them until then), and those not understood left on the queue for its dead-letter queue."""

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs import failpoints
from s3sync_dagster.defs.sensors.tick_runs import READ_BUDGET_S, plan_keys
from s3sync_dagster.pipeline.s3 import Ignored, SyncRequest, not_understood, parse_message

# Messages awaiting deletion travel in the sensor's cursor (their receipt handles): a bound on its size.
MAX_MESSAGES_PER_TICK = 1000
# Every run an SQS tick requests carries this tag, valued by the tick's messages: a later tick deletes
# the messages once runs with it exist.
SQS_BATCH_TAG = "s3sync/sqs_batch"


def receive_messages(
    client: Any,
    queue_url: str,
    visibility_timeout_s: int,
    budget_s: float = READ_BUDGET_S,
    *,
    first_wait_s: int,
) -> list[dict[str, Any]]:
    """Long-poll the queue (`first_wait_s` at most) until it is drained or the budget is spent.

    The budget stays well inside the visibility timeout, so no message comes back while its tick runs.
    """
    deadline = time.monotonic() + min(budget_s, visibility_timeout_s / 3)
    messages: list[dict[str, Any]] = []
    while len(messages) < MAX_MESSAGES_PER_TICK:
        remaining = deadline - time.monotonic()
        if remaining <= 1:
            break
        # A long wait only while nothing has arrived yet (an upload during it is seen at once); once
        # messages flow, polls that do not wait drain the rest, and the first empty one ends the read.
        wait = min(first_wait_s, int(remaining) - 1) if not messages else 0
        response = client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=max(wait, 0),
            VisibilityTimeout=visibility_timeout_s,
            AttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
        )
        batch = response.get("Messages", [])
        if not batch:
            break
        messages.extend(batch)
    return messages


def delete_messages(
    context: dg.SensorEvaluationContext | dg.OpExecutionContext,
    client: Any,
    queue_url: str,
    receipt_handles: Sequence[str],
) -> None:
    """Best effort: a message that stays is delivered again later, which is harmless (idempotent syncs)."""
    for start in range(0, len(receipt_handles), 10):
        if start:
            failpoints.reached("sqs:deleting")
        entries = [
            {"Id": str(index), "ReceiptHandle": handle}
            for index, handle in enumerate(receipt_handles[start : start + 10])
        ]
        try:
            failed = client.delete_message_batch(QueueUrl=queue_url, Entries=entries).get("Failed", [])
        except Exception as error:  # the result is built: never lose it over a failed delete
            context.log.warning(f"could not delete {len(entries)} SQS message(s); they will be redelivered ({error})")
            continue
        if failed:
            context.log.warning(f"could not delete {len(failed)} SQS message(s); they will be redelivered: {failed}")


@dataclass(frozen=True)
class KeptMessage:
    """A message not understood: never deleted, so the queue's redrive policy moves it to the dead-letter
    queue after maxReceiveCount receives; until then it is reported each time it is read."""

    message_id: str
    receive_count: int
    reason: str


def plan_sync(
    context: dg.SensorEvaluationContext | dg.OpExecutionContext,
    source: SourceConfig,
    messages: Sequence[dict[str, Any]],
) -> tuple[list[str], list[str], list[KeptMessage]]:
    """(object keys to sync, in event order; partition keys to register; messages to leave on the queue).

    A message with records we understand and records we do not is both synced and kept: what it asks for
    that we understand is done (syncs are idempotent), and the rest goes to the dead-letter queue.
    """
    assert source.auto_sync in ("direct", "metadata")
    wanted: dict[str, str] = {}  # object key -> action; syncing HEADs the object, so the last event decides
    kept: list[KeptMessage] = []
    for message in messages:
        items = parse_message(
            message.get("Body", ""), source.bucket_name, source.path_prefix,
            tag_events=bool(source.object_tags or source.readers_tag),
        )  # fmt: skip
        for item in items:
            if isinstance(item, Ignored):
                context.log.info(f"source '{source.name}': ignored: {item.reason}")
            elif isinstance(item, SyncRequest):
                wanted.pop(item.object_key, None)
                wanted[item.object_key] = item.action
        reason = not_understood(items)
        if reason is not None:
            receive_count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 0))
            kept.append(KeptMessage(str(message.get("MessageId")), receive_count, reason))
    return (*plan_keys(context, source, wanted), kept)


# Each kept message is a warning in the tick's log; past this many, one line counts the rest.
MAX_KEPT_REPORTED = 20


def report_kept(
    context: dg.SensorEvaluationContext | dg.OpExecutionContext, source: SourceConfig, kept: Sequence[KeptMessage]
) -> str | None:
    """Log each kept message (its id, how often it was received, why); a short summary for the tick, or None."""
    for entry in kept[:MAX_KEPT_REPORTED]:
        context.log.warning(
            f"source '{source.name}': SQS message {entry.message_id} is not an S3 event this sync understands "
            f"({entry.reason}); left on the queue (received {entry.receive_count} time(s)): its redrive policy "
            "moves it to the dead-letter queue after maxReceiveCount receives"
        )
    if len(kept) > MAX_KEPT_REPORTED:
        context.log.warning(
            f"source '{source.name}': {len(kept) - MAX_KEPT_REPORTED} more SQS message(s) not understood, left on the queue"
        )
    if not kept:
        return None
    shown = ", ".join(f"{entry.message_id} ({entry.reason})" for entry in kept[:3])
    more = f" and {len(kept) - 3} more" if len(kept) > 3 else ""
    return f"{len(kept)} SQS message(s) not understood, left on the queue for its dead-letter queue: {shown}{more}"


@dataclass(frozen=True)
class PendingDelete:
    """Messages a tick turned into run requests, kept until those runs exist on the instance.

    Deleting them in the tick that read them would lose them if the daemon died before storing the
    run requests; so the next tick deletes them once it sees the runs (Dagster resumes a tick whose
    requests it stored), and if the runs never appear the messages become visible again and are
    read anew: at-least-once delivery, with run keys and idempotent syncs against duplicates.
    """

    batch: str  # the SQS_BATCH_TAG value of its runs
    runs: int
    receipt_handles: list[str]
    received_at: float  # epoch seconds


def pending_deletes(cursor: str | None) -> list[PendingDelete]:
    if not cursor:
        return []
    try:
        return [PendingDelete(**entry) for entry in json.loads(cursor).get("pending", [])]
    except (ValueError, TypeError, AttributeError):  # a cursor from an older version: redelivery covers it
        return []


def settle_pending(
    context: dg.SensorEvaluationContext,
    client: Any,
    queue_url: str,
    pending: Sequence[PendingDelete],
    visibility_timeout_s: int,
) -> list[PendingDelete]:
    """Delete the messages whose runs exist; returns the entries still waiting for theirs."""
    waiting = []
    deleted = False
    for entry in pending:
        found = context.instance.get_runs_count(dg.RunsFilter(tags={SQS_BATCH_TAG: entry.batch}))
        if found >= entry.runs:
            delete_messages(context, client, queue_url, entry.receipt_handles)
            deleted = True
        elif time.time() - entry.received_at < visibility_timeout_s:
            waiting.append(entry)
        else:  # never launched: the messages are visible again and the next read takes them
            context.log.warning(
                f"{len(entry.receipt_handles)} SQS message(s) led to no run within the visibility timeout; "
                "they are read again"
            )
    if deleted:
        failpoints.reached("sqs:deleted")
    return waiting


def pending_cursor(pending: Sequence[PendingDelete]) -> str:
    """The sensor's cursor: the messages still waiting for their runs (read back by `pending_deletes`)."""
    return json.dumps({"pending": [asdict(entry) for entry in pending]}, separators=(",", ":"))
