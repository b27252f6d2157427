"""What a source's sensors do on each tick: S3 event notifications read from SQS, or a pass over the prefix,
become sync runs of the keys they name (defs/source.py makes the sensors)."""

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs import failpoints
from s3sync_dagster.defs.links import InstanceMetaLinks
from s3sync_dagster.defs.names import partitions_name, register_requests
from s3sync_dagster.defs.queues import elected, queues_read_with, read_by, release_messages
from s3sync_dagster.defs.resources import S3Connections
from s3sync_dagster.defs.run_config import sync_run_config
from s3sync_dagster.defs.state import poll_state
from s3sync_dagster.defs.tags import LINGER_TAG, PREFIX_LINGER_TAG, READS_QUEUES_TAG, SOURCE_TAG, TRIGGER_TAG
from s3sync_dagster.pipeline import events, keys, objects
from s3sync_dagster.pipeline.poll import PollState

# A tick may run 60 s by default; reading stops well before, so building the result always fits.
READ_BUDGET_S = 25.0
# The sensor's minimum_interval_seconds: not what paces it (the long poll and the daemon's loop do), so that a
# tick is started at every loop once the last one has ended.
SQS_TICK_INTERVAL_S = 1
# The longest a run reads its source's queue after its keys (sqs_linger_seconds), counted from the run's creation;
# the sensor leaves the queue to such a run no longer than this, whatever became of it (a run whose worker died
# is failed sooner: defs/monitor.py). A steady flow of uploads gets a new run each hour.
LINGER_MAX_S = 3600
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
# While another run reads the queue, a tick waits up to this long for it to stop before it skips: the daemon starts
# a sensor's next tick at its next loop (every 5 s), so an upload that came as that run stopped would otherwise wait
# for that loop, and then for a new run. Ending just before the next loop, the ticks leave no gap.
READER_WAIT_S = 4.5
# How often a waiting tick looks at the reading run again.
READER_POLL_S = 0.5
# Messages awaiting deletion travel in the sensor's cursor (their receipt handles): a bound on its size.
MAX_MESSAGES_PER_TICK = 1000
LIST_PAGE_SIZE = 1000  # ListObjectsV2's own maximum
# Every run an SQS tick requests carries this tag, valued by the tick's messages: a later tick deletes
# the messages once runs with it exist.
SQS_BATCH_TAG = "s3sync/sqs_batch"
# When the oldest event of a run reached the queue (epoch ms, SQS's SentTimestamp): how old events are when
# their run starts (benchmarks, section 3).
SQS_SENT_TAG = "s3sync/sqs_sent_ms"


def _batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


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
        items = events.parse_message(message.get("Body", ""), source.bucket_name, source.path_prefix)
        for item in items:
            if isinstance(item, events.Ignored):
                context.log.info(f"source '{source.name}': ignored: {item.reason}")
            elif isinstance(item, events.SyncRequest):
                wanted.pop(item.object_key, None)
                wanted[item.object_key] = item.action
        reason = events.not_understood(items)
        if reason is not None:
            receive_count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 0))
            kept.append(KeptMessage(str(message.get("MessageId")), receive_count, reason))
    return (*plan_keys(context, source, wanted), kept)


def plan_keys(
    context: dg.SensorEvaluationContext | dg.OpExecutionContext, source: SourceConfig, wanted: dict[str, str]
) -> tuple[list[str], list[str]]:
    """Which of the wanted keys to sync and which partitions to register (document_limit applied).

    In metadata mode only .meta.json files are partitions; a document's upload is synced (that is, the
    metadata files naming it are) only when one names it, and its deletion always (its chunks go).
    """
    if not wanted:  # a pass over an unchanged bucket: no need to read every registered key
        return [], []
    registered = set(context.instance.get_dynamic_partitions(partitions_name(source.name)))
    room = None if source.document_limit is None else max(source.document_limit - len(registered), 0)
    metadata_mode = source.auto_sync == "metadata"
    named = (
        InstanceMetaLinks(context.instance, source.name).naming(k for k in wanted if not events.is_meta_key(k))
        if metadata_mode
        else {}
    )
    to_sync: list[str] = []
    to_register: list[str] = []
    for object_key, action in wanted.items():
        partition_key = keys.to_partition_key(object_key)
        if metadata_mode and not events.is_meta_key(object_key):
            if action == "remove" or object_key in named:
                to_sync.append(object_key)
            else:
                context.log.info(
                    f"source '{source.name}': ignored: '{object_key}' is named by no {events.META_SUFFIX} file "
                    "and this source syncs in metadata mode"
                )
        elif partition_key in registered:
            to_sync.append(object_key)
        elif action == "remove":
            context.log.info(f"source '{source.name}': '{object_key}' was deleted but never indexed: nothing to remove")
        elif room is not None and len(to_register) >= room:
            context.log.warning(
                f"source '{source.name}': '{object_key}' not indexed: document_limit of {source.document_limit} reached"
            )
        else:
            to_register.append(partition_key)
            to_sync.append(object_key)
    return to_sync, to_register


def _sync_result(
    source: SourceConfig,
    to_sync: list[str],
    to_register: list[str],
    run_key_seed: Sequence[str],
    trigger: str,
    extra_tags: dict[str, str] | None = None,
    linger_seconds: int = 0,
    reads_queues_of: Sequence[str] = (),
    poll_linger_seconds: int = 0,
) -> dg.SensorResult:
    """The runs of these keys, keys_per_run each; with linger_seconds, the last one reads the queue after its keys
    (and those of the sources `reads_queues_of` names), with poll_linger_seconds it passes over the prefix."""
    batches = list(_batches(to_sync, source.keys_per_run))
    run_requests = []
    for number, batch in enumerate(batches):
        last = number == len(batches) - 1
        lingers, poll_lingers = (linger_seconds, poll_linger_seconds) if last else (0, 0)
        run_requests.append(
            dg.RunRequest(
                run_key=hashlib.sha256("\n".join([*run_key_seed, *batch]).encode()).hexdigest()[:32],
                run_config=sync_run_config(source.name, batch, lingers, poll_lingers),
                tags={
                    SOURCE_TAG: source.name,
                    TRIGGER_TAG: trigger,
                    **(extra_tags or {}),
                    **({LINGER_TAG: "true"} if lingers else {}),
                    **({READS_QUEUES_TAG: ",".join(reads_queues_of)} if lingers and reads_queues_of else {}),
                    **({PREFIX_LINGER_TAG: "true"} if poll_lingers else {}),
                },
            )
        )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=register_requests(source.name, to_register),
        skip_reason=None if run_requests else "nothing to sync",
    )


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


def reading_run(instance: dg.DagsterInstance, source: SourceConfig, tag: str = LINGER_TAG) -> str | None:
    """The run that reads this source's queue (with PREFIX_LINGER_TAG, passes over its prefix) after its keys, or is
    about to, if one is in progress and was made less than LINGER_MAX_S ago: the sensor leaves the queue (the
    prefix) to it. A run reading queues may be another source's, reading this one's too (defs/queues.py)."""
    tags = {tag: "true"} if tag == LINGER_TAG else {SOURCE_TAG: source.name, tag: "true"}
    for record in instance.get_run_records(dg.RunsFilter(tags=tags, statuses=IN_PROGRESS)):
        if time.time() - record.create_timestamp.timestamp() < LINGER_MAX_S and source.name in read_by(
            record.dagster_run
        ):
            return record.dagster_run.run_id
    return None


def reader_until_stopped(instance: dg.DagsterInstance, source: SourceConfig, wait_s: float) -> str | None:
    """The run reading this source's queue (reading_run), waited for up to `wait_s`: None once it has stopped."""
    deadline = time.monotonic() + wait_s
    reader = reading_run(instance, source)
    while reader is not None and time.monotonic() + READER_POLL_S < deadline:
        time.sleep(READER_POLL_S)
        reader = reading_run(instance, source)
    return reader


def _reader_after_read(
    context: dg.SensorEvaluationContext, source: SourceConfig, sources: Sequence[SourceConfig]
) -> tuple[list[str], str | None]:
    """After a tick's read: the other sources whose queues its run would read, and who reads this queue instead if
    not its run (the messages are then given back, visible at once, rather than a run of their own: seconds to
    start, a run slot). Another source's run may have begun reading this queue during the long poll; or other
    sources' ticks found events in the same moment, and one of them was elected to make the run (defs/queues.py)."""
    reader = reading_run(context.instance, source)
    if reader is not None:
        return [], f"run {reader}"
    reads_with = queues_read_with(context.instance, source, sources)
    maker = elected(context.instance, source.name) if reads_with else None
    return reads_with, None if maker is None else f"the run source '{maker}''s sensor makes"


def sqs_tick(
    context: dg.SensorEvaluationContext,
    source: SourceConfig,
    s3: S3Connections,
    sources: Sequence[SourceConfig] = (),
) -> dg.SensorResult:
    """Settle the messages of earlier ticks whose runs exist, read new ones, and request their runs; the last run
    reads, after its keys, this queue and those of the other lingering SQS `sources` (defs/queues.py)."""
    assert source.sqs_queue_url is not None
    queue_url, visibility_s = source.sqs_queue_url, source.sqs_visibility_timeout_seconds
    client = s3.sqs_client(source.name)
    pending = settle_pending(context, client, queue_url, pending_deletes(context.cursor), visibility_s)
    started = time.monotonic()
    reader = reader_until_stopped(context.instance, source, min(READER_WAIT_S, source.sqs_wait_seconds))
    if reader is not None:
        return dg.SensorResult(
            skip_reason=f"run {reader} reads the queue of source '{source.name}' (sqs_linger_seconds)",
            cursor=_cursor(pending),
        )
    budget_s = READ_BUDGET_S - (time.monotonic() - started)
    messages = receive_messages(client, queue_url, visibility_s, budget_s, first_wait_s=source.sqs_wait_seconds)
    if not messages:
        return dg.SensorResult(skip_reason="no S3 events in the queue", cursor=_cursor(pending))
    reads_with, reader = _reader_after_read(context, source, sources)
    if reader is not None:
        release_messages(context.log, client, queue_url, [str(message["ReceiptHandle"]) for message in messages])
        return dg.SensorResult(
            skip_reason=f"{reader} reads the queue of source '{source.name}': {len(messages)} message(s) left to it",
            cursor=_cursor(pending),
        )
    to_sync, to_register, kept = plan_sync(context, source, messages)
    # Keyed by the messages it covers: a redelivered message never launches a second run.
    message_ids = sorted(str(message.get("MessageId")) for message in messages)
    batch = hashlib.sha256("\n".join(message_ids).encode()).hexdigest()[:32]
    sent = [int(message.get("Attributes", {}).get("SentTimestamp", 0)) for message in messages]
    result = _sync_result(
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
        cursor=_cursor(pending),
    )


def _skip_message(result: dg.SensorResult) -> str | None:
    return result.skip_reason.skip_message if result.skip_reason else None


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


def _cursor(pending: Sequence[PendingDelete]) -> str:
    return json.dumps({"pending": [asdict(entry) for entry in pending]}, separators=(",", ":"))


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
            objects.ObjectInfo(e["Key"], int(e["Size"]), e["ETag"].strip('"'), e["LastModified"].isoformat())
            for e in page.get("Contents", [])
            if objects.key_selected(e["Key"], source.path_prefix, source.include, source.exclude)
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
        result = _sync_result(
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
