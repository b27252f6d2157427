"""Auto-sync sensors: S3 event notifications read from SQS become sync runs of the keys they name."""

import hashlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.assets import partitions_def, partitions_name
from s3sync_dagster.defs.jobs import sync_run_config
from s3sync_dagster.pipeline import events, keys, objects
from s3sync_dagster.pipeline.poll import PollState
from s3sync_dagster.resources import S3SourceResource, SQSQueueResource, source_resource_key, sqs_resource_key

# A tick may run 60 s by default; reading stops well before, so building the result and deleting
# the messages it covers always fit.
READ_BUDGET_S = 25.0
MAX_MESSAGES_PER_TICK = 5000
# Received messages stay invisible to other readers this long; a tick that dies before deleting
# them has them delivered again, which is harmless: syncs are idempotent.
VISIBILITY_TIMEOUT_S = 300
LIST_PAGE_SIZE = 1000  # ListObjectsV2's own maximum


def _batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def receive_messages(client: Any, queue_url: str, budget_s: float = READ_BUDGET_S) -> list[dict[str, Any]]:
    """Long-poll the queue until it is drained or the budget is spent."""
    deadline = time.monotonic() + budget_s
    messages: list[dict[str, Any]] = []
    while len(messages) < MAX_MESSAGES_PER_TICK:
        remaining = deadline - time.monotonic()
        if remaining <= 1:
            break
        # A long wait only while nothing has arrived yet; once a burst is flowing, short polls drain it.
        wait = min(5 if not messages else 1, int(remaining) - 1)
        response = client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=max(wait, 0),
            VisibilityTimeout=VISIBILITY_TIMEOUT_S,
        )
        batch = response.get("Messages", [])
        if not batch:
            break
        messages.extend(batch)
    return messages


def delete_messages(
    context: dg.SensorEvaluationContext, client: Any, queue_url: str, messages: Sequence[dict[str, Any]]
) -> None:
    """Best effort: a message that stays is delivered again later, which is harmless (idempotent syncs)."""
    for start in range(0, len(messages), 10):
        entries = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
            for index, message in enumerate(messages[start : start + 10])
        ]
        try:
            failed = client.delete_message_batch(QueueUrl=queue_url, Entries=entries).get("Failed", [])
        except Exception as error:  # the result is built: never lose it over a failed delete
            context.log.warning(f"could not delete {len(entries)} SQS message(s); they will be redelivered ({error})")
            continue
        if failed:
            context.log.warning(f"could not delete {len(failed)} SQS message(s); they will be redelivered: {failed}")


def plan_sync(
    context: dg.SensorEvaluationContext,
    source: SourceConfig,
    messages: Sequence[dict[str, Any]],
) -> tuple[list[str], list[str]]:
    """(object keys to sync, in event order; partition keys to register) for the received messages."""
    assert source.auto_sync in ("direct", "metadata")
    wanted: dict[str, str] = {}  # object key -> action; syncing HEADs the object, so the last event decides
    for message in messages:
        for item in events.parse_message(
            message.get("Body", ""), source.bucket_name, source.path_prefix, source.auto_sync
        ):
            if isinstance(item, events.Ignored):
                context.log.info(f"source '{source.name}': ignored: {item.reason}")
            else:
                wanted.pop(item.object_key, None)
                wanted[item.object_key] = item.action
    return plan_keys(context, source, wanted)


def plan_keys(
    context: dg.SensorEvaluationContext, source: SourceConfig, wanted: dict[str, str]
) -> tuple[list[str], list[str]]:
    """Which of the wanted keys to sync and which partitions to register (document_limit applied)."""
    registered = set(context.instance.get_dynamic_partitions(partitions_name(source.name)))
    room = None if source.document_limit is None else max(source.document_limit - len(registered), 0)
    to_sync: list[str] = []
    to_register: list[str] = []
    for object_key, action in wanted.items():
        partition_key = keys.to_partition_key(object_key)
        if partition_key in registered:
            to_sync.append(object_key)
        elif action == "remove" and source.auto_sync != "metadata":
            context.log.info(f"source '{source.name}': '{object_key}' was deleted but never indexed: nothing to remove")
        elif action == "remove":
            # Metadata mode: the document was a .meta.json's target, not a partition; its removal is
            # recorded on a partition of its own (and does not count against document_limit).
            to_register.append(partition_key)
            to_sync.append(object_key)
        elif room is not None and len(to_register) >= room:
            context.log.warning(
                f"source '{source.name}': '{object_key}' not indexed: document_limit of {source.document_limit} reached"
            )
        else:
            to_register.append(partition_key)
            to_sync.append(object_key)
    return to_sync, to_register


def _sync_result(
    source: SourceConfig, to_sync: list[str], to_register: list[str], run_key_seed: Sequence[str], trigger: str
) -> dg.SensorResult:
    run_requests = [
        dg.RunRequest(
            run_key=hashlib.sha256("\n".join([*run_key_seed, *batch]).encode()).hexdigest()[:32],
            run_config=sync_run_config(
                source.name,
                batch,
                # In metadata mode only .meta.json files index; a document key here was deleted.
                [k for k in batch if not events.is_meta_key(k)] if source.auto_sync == "metadata" else None,
            ),
            tags={"s3sync/source": source.name, "s3sync/trigger": trigger},
        )
        for batch in _batches(to_sync, source.keys_per_run)
    ]
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[partitions_def(source.name).build_add_request(to_register)] if to_register else [],
        skip_reason=None if run_requests else "nothing to sync",
    )


def build_sqs_sensor(source: SourceConfig, job: dg.JobDefinition) -> dg.SensorDefinition:
    sqs_key = sqs_resource_key(source.name)

    @dg.sensor(
        name=f"{source.name}_sqs",
        job=job,
        minimum_interval_seconds=5,
        # A user who configured auto-sync expects it on as soon as `dagster dev` starts.
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={sqs_key},
        description=f"S3 event notifications for source '{source.name}' ({source.auto_sync} mode) from SQS.",
    )
    def sqs_sensor(context: dg.SensorEvaluationContext, **resources: Any) -> dg.SensorResult:
        # Direct invocation (tests) hands required resources over as keywords; the daemon's context has them.
        queue: SQSQueueResource = resources.get(sqs_key) or getattr(context.resources, sqs_key)
        client = queue.get_client()
        messages = receive_messages(client, queue.queue_url)
        if not messages:
            return dg.SensorResult(skip_reason="no S3 events in the queue")
        to_sync, to_register = plan_sync(context, source, messages)
        # Keyed by the messages it covers: a redelivered message never launches a second run.
        message_ids = sorted(str(message.get("MessageId")) for message in messages)
        result = _sync_result(source, to_sync, to_register, message_ids, f"sqs:{source.auto_sync}")
        # Deleted only now that the result covering every message is built (at-least-once).
        delete_messages(context, client, queue.queue_url, messages)
        context.log.info(
            f"source '{source.name}': {len(messages)} message(s) -> {len(to_sync)} key(s) "
            f"in {len(result.run_requests or [])} run(s)"
        )
        return result

    return sqs_sensor


def poll_state_path(instance: dg.DagsterInstance, source_name: str) -> Path:
    return Path(instance.root_directory) / "s3sync" / f"{source_name}-poll.sqlite"


def build_poll_sensor(source: SourceConfig, job: dg.JobDefinition) -> dg.SensorDefinition:
    s3_key = source_resource_key(source.name)
    assert source.poll_interval_seconds is not None

    @dg.sensor(
        name=f"{source.name}_poll",
        job=job,
        minimum_interval_seconds=source.poll_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={s3_key},
        description=(
            f"Lists s3://{source.bucket_name}/{source.path_prefix} every {source.poll_interval_seconds} s: "
            "new and changed objects are indexed, vanished ones removed."
        ),
    )
    def poll_sensor(context: dg.SensorEvaluationContext, **resources: Any) -> dg.SensorResult:
        s3_source: S3SourceResource = resources.get(s3_key) or getattr(context.resources, s3_key)
        client = s3_source.get_client()
        state = PollState(poll_state_path(context.instance, source.name))
        try:
            deadline = time.monotonic() + READ_BUDGET_S
            changed: list[str] = []
            vanished: list[str] = []
            pass_number = state.pass_number
            # One page at a time, resumed from the stored token: a large bucket spans several ticks
            # (at least one page each, whatever the budget).
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
                    # In metadata mode only .meta.json files are partitions, as with events.
                    and (source.auto_sync != "metadata" or events.is_meta_key(e["Key"]))
                )
                state.next_page(page.get("NextContinuationToken"))
                if not page.get("IsTruncated"):
                    vanished = state.finish_pass()
                    break
                if time.monotonic() >= deadline:
                    break
            wanted = dict.fromkeys(changed, "index") | dict.fromkeys(vanished, "remove")
            to_sync, to_register = plan_keys(context, source, wanted)
            result = _sync_result(source, to_sync, to_register, [f"poll-{pass_number}"], "poll")
            state.commit()  # only now that the result covering these changes is built
        finally:
            state.close()
        context.log.info(
            f"source '{source.name}': pass {pass_number}: {len(changed)} new or changed, {len(vanished)} vanished, "
            f"{len(result.run_requests or [])} run(s)"
        )
        return result

    return poll_sensor
