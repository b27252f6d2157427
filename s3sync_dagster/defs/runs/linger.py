"""A sync run that reads its source's queue after its keys: events that come meanwhile are synced by a process that
has already started, imported and loaded everything (a fraction of a second), instead of by a new run (seconds to
start: Dagster's run worker, then the imports, the model, the clients). The poll sensor's run does the same with
the prefix (read_prefix, at the end).

The SQS sensor asks for it (the source's `sqs_linger_seconds`, on the last run of a tick) and, while such a run is
in progress, leaves the queue to it (readers.reading_run). Each event it takes is handled as the sensor would
(sqs_messages.plan_sync: direct and metadata modes, ignored and not-understood records, document_limit), its keys are
registered as partitions and synced in this run with their own materialisations, and its messages are deleted
only once their keys are reported: a run that dies before leaves them to come back after the visibility timeout,
for the sensor to read again (at-least-once, as a tick's). Tagged to (defs/sensors/queues.py), it reads the queues of the code
location's other SQS sources the same way, a thread long-polling each, their sensors leaving them to it. The run stops
reading when no event has come for `sqs_linger_seconds` (on any of its queues, each its source's), when another run waits in the queue for a slot (it gives its own up), on Celery when another run
has started (its steps may wait for this one's worker), or LINGER_MAX_S after it was made: then the sensor reads the
queue again.
"""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs import failpoints
from s3sync_dagster.defs.names import partitions_name
from s3sync_dagster.defs.resources import ChromaResource, DocumentsResource, EmbeddingResource, S3Connections
from s3sync_dagster.defs.runs.assets import RunEvent, index_partitions
from s3sync_dagster.defs.sensors import (
    IN_PROGRESS,
    LINGER_MAX_S,
    READ_BUDGET_S,
    WAIT_S,
    QueueReaders,
    Watched,
    delete_messages,
    lingers_on_queue,
    pass_over_prefix,
    plan_keys,
    plan_sync,
    read_by,
    receive_messages,
    report_kept,
)
from s3sync_dagster.defs.state import poll_state
from s3sync_dagster.defs.tags import LINGER_TAG, READS_QUEUES_TAG
from s3sync_dagster.pipeline.records import to_partition_key
from s3sync_dagster.pipeline.store import close_clients

# A run queued longer than this waits for a slot (the queue daemon's dequeue interval is 1-5 s).
SLOT_WAIT_S = 10


def _why_stop(context: dg.OpExecutionContext, quiet: str, quiet_until: float, ends_at: float) -> str | None:
    if time.monotonic() >= quiet_until:
        return quiet
    if time.time() >= ends_at:
        return f"{LINGER_MAX_S} s since the run was made: the next event gets a run of its own"
    # Every run passes through the queue (for up to the coordinator's dequeue interval); one still there after
    # SLOT_WAIT_S waits for a slot, which this run gives up.
    waiting = dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.QUEUED],
        created_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=SLOT_WAIT_S),
    )
    if context.instance.get_runs_count(waiting):
        return "another run waits in the queue for a slot: this run gives its slot up"
    if context.job_def.executor_def.name != dg.in_process_executor.name:
        # Steps on shared workers (Celery): another run's step may be waiting for the worker this one holds.
        started = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
        if any(
            record.dagster_run.run_id != context.run_id for record in context.instance.get_run_records(started, limit=2)
        ):
            return "another run has started, its steps maybe waiting for this one's worker: the worker is given up"
    return None


def _made_at(context: dg.OpExecutionContext) -> float:
    record = context.instance.get_run_record_by_id(context.run_id)
    return record.create_timestamp.timestamp() if record is not None else time.time()


def _index_taken(
    context: dg.OpExecutionContext,
    source: SourceConfig,
    object_keys: list[str],
    seen: Any,
    reported: Callable[[], object],
    *,
    s3: S3Connections,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
    documents: DocumentsResource,
) -> Generator[RunEvent, None, Any]:
    """Sync the keys a lingering run took, under the store's write lock, reopening the store when another process
    wrote to it since `seen`; returns the store's state after. A failure that reported every key calls `reported`
    (the keys are done with) before it is raised."""
    store = chroma.store()
    with chroma.write_lock():
        if seen is not None and store.disk_state() != seen:
            close_clients()
        try:
            yield from index_partitions(
                context,
                source,
                [to_partition_key(object_key) for object_key in object_keys],
                s3=s3,
                chroma=chroma,
                embedding=embedding,
                documents=documents,
            )
        except dg.Failure as failure:
            if "failed_keys" in (failure.metadata or {}):
                reported()
            raise
        return store.disk_state()


def _deferred(context: dg.OpExecutionContext, names: set[str]) -> set[str]:
    """Which of these sources' queues an older lingering run in progress reads (or is about to): this run leaves
    them to it (two sensors' runs made at once, both reading every queue, or a sensor's tick that read its
    queue as another source's run began to)."""
    record = context.instance.get_run_record_by_id(context.run_id)
    if record is None:
        return set()
    older = context.instance.get_run_records(
        dg.RunsFilter(tags={LINGER_TAG: "true"}, statuses=IN_PROGRESS, created_before=record.create_timestamp)
    )
    return names & {
        name for run in older if run.dagster_run.run_id != context.run_id for name in read_by(run.dagster_run)
    }


def _queues_to_read(
    context: dg.OpExecutionContext, source: SourceConfig, linger_seconds: int, peers: Mapping[str, SourceConfig]
) -> list[tuple[SourceConfig, int]]:
    """The queues this run reads and how long each may stay quiet: its source's, and those of the sources its
    READS_QUEUES_TAG names (each for its own sqs_linger_seconds), but those an older run reads."""
    named = [peers[name] for name in context.run.tags.get(READS_QUEUES_TAG, "").split(",") if name in peers]
    wanted = [(source, linger_seconds)] + [(peer, peer.sqs_linger_seconds) for peer in named if lingers_on_queue(peer)]
    deferred = _deferred(context, {entry.name for entry, _ in wanted})
    if deferred:
        left = [entry.name for entry, _ in wanted if entry.name in deferred]
        context.log.info(f"the queues of {_names(left)} are read by an older run: left to it")
    return [(entry, seconds) for entry, seconds in wanted if entry.name not in deferred]


def _names(names: Sequence[str]) -> str:
    return ("source " if len(names) == 1 else "sources ") + ", ".join(f"'{name}'" for name in names)


def _take(
    context: dg.OpExecutionContext,
    watched: Watched,
    messages: list[dict[str, Any]],
    seen: Any,
    resources: dict[str, Any],
) -> Generator[RunEvent, None, Any]:
    """Sync what one read of a queue brought, as its sensor would, and delete its messages once their keys are
    reported; returns the store's state after."""
    source, client, queue_url = watched.source, watched.client, str(watched.source.sqs_queue_url)
    to_sync, to_register, kept = plan_sync(context, source, messages)
    report_kept(context, source, kept)
    kept_ids = {entry.message_id for entry in kept}
    handles = [str(m["ReceiptHandle"]) for m in messages if str(m.get("MessageId")) not in kept_ids]
    if to_register:
        context.instance.add_dynamic_partitions(partitions_name(source.name), to_register)
    if to_sync:
        done = functools.partial(delete_messages, context, client, queue_url, handles)
        seen = yield from _index_taken(context, source, to_sync, seen, done, **resources)
    failpoints.reached("linger:written")  # a test's kill -9: the keys written, their messages not yet deleted
    delete_messages(context, client, queue_url, handles)
    return seen


def read_queue(
    context: dg.OpExecutionContext,
    source: SourceConfig,
    linger_seconds: int,
    *,
    peers: Mapping[str, SourceConfig] | None = None,
    s3: S3Connections,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
    documents: DocumentsResource,
) -> Iterator[RunEvent]:
    """Sync what the queues bring (the source's, and those of the `peers` its run is tagged to read: defs/sensors/queues.py)
    until one of the stops above; each key's events yielded as index_partitions'."""
    if linger_seconds <= 0 or source.sqs_queue_url is None:
        return
    queues = _queues_to_read(context, source, linger_seconds, peers or {})
    if not queues:
        return
    now = time.monotonic()
    watched = [Watched(entry, s3.sqs_client(entry.name), seconds, now + seconds) for entry, seconds in queues]
    resources = {"s3": s3, "chroma": chroma, "embedding": embedding, "documents": documents}
    ends_at = _made_at(context) + LINGER_MAX_S
    # An embedded store's writes by other processes since this run's last one: this process's copy of its index
    # is then stale (Store.write_lock), so it is opened again before the next write.
    seen = chroma.store().disk_state()
    if len(watched) == 1:
        whose, quiet = f"source '{source.name}': ", f"no S3 event for {linger_seconds} s"
        context.log.info(
            f"{whose}reading its queue until no event has come for {linger_seconds} s (sqs_linger_seconds)"
        )
    else:
        names = [entry.source.name for entry in watched]
        whose, quiet = f"{_names(names)}: ", "none has brought an S3 event for its source's sqs_linger_seconds"
        context.log.info(f"{whose}reading their queues until none has brought an event for its sqs_linger_seconds")

    def receive(entry: Watched) -> list[dict[str, Any]]:
        # WAIT_S at a time: how often the run looks whether another run waits for its slot, and at most one request
        # a second a queue when idle.
        visibility_s = entry.source.sqs_visibility_timeout_seconds
        return receive_messages(
            entry.client, str(entry.source.sqs_queue_url), visibility_s, budget_s=WAIT_S + 2, first_wait_s=WAIT_S
        )

    readers = QueueReaders(watched, receive)
    try:
        quiet_until = max(entry.quiet_until for entry in watched)
        while (why := _why_stop(context, quiet, quiet_until, ends_at)) is None:
            taken = readers.next(timeout_s=WAIT_S)
            if taken is None:
                continue
            entry, messages = taken
            entry.quiet_until = time.monotonic() + entry.linger_s
            quiet_until = max(entry.quiet_until for entry in watched)
            seen = yield from _take(context, entry, messages, seen, resources)
        # What the threads read as the run stopped reading is synced here all the same.
        for entry, messages in readers.stop():
            seen = yield from _take(context, entry, messages, seen, resources)
    finally:
        readers.give_back(context.log)  # a failure or a stop: what was read but not synced is visible again
    context.log.info(f"{whose}stopped reading {'its queue' if len(watched) == 1 else 'their queues'}: {why}")


def read_prefix(
    context: dg.OpExecutionContext,
    source: SourceConfig,
    linger_seconds: int,
    *,
    s3: S3Connections,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
    documents: DocumentsResource,
) -> Iterator[RunEvent]:
    """Pass over the prefix every poll_interval_seconds, as the poll sensor would, syncing what each pass finds, until
    one of the stops above; each key's events yielded as index_partitions'. The listing state is the sensor's
    (committed once a pass's keys are reported: a run that dies before leaves them to the next pass)."""
    interval = source.poll_interval_seconds
    if linger_seconds <= 0 or interval is None:
        return
    client = s3.client(source.name)
    made_at = _made_at(context)
    ends_at = made_at + LINGER_MAX_S
    next_pass = made_at + interval  # the sensor's tick passed over the prefix when it made this run
    quiet_until = time.monotonic() + linger_seconds
    seen = chroma.store().disk_state()
    context.log.info(
        f"source '{source.name}': passing over its prefix every {interval} s until no change has come for "
        f"{linger_seconds} s (poll_linger_seconds)"
    )
    quiet = f"no change for {linger_seconds} s"
    while (why := _why_stop(context, quiet, quiet_until, ends_at)) is None:
        if (wait := next_pass - time.time()) > 0:
            time.sleep(min(WAIT_S, wait))
            continue
        next_pass = max(next_pass + interval, time.time())
        state = poll_state(context.instance, source.name)
        try:
            found = pass_over_prefix(client, source, state, READ_BUDGET_S)
            to_sync, to_register = plan_keys(context, source, found.wanted())
            if to_register:
                context.instance.add_dynamic_partitions(partitions_name(source.name), to_register)
            if to_sync:
                quiet_until = time.monotonic() + linger_seconds
                context.log.info(
                    f"source '{source.name}': pass {found.number}: {len(found.changed)} new or changed, "
                    f"{len(found.vanished)} vanished"
                )
                seen = yield from _index_taken(
                    context, source, to_sync, seen, state.commit, s3=s3, chroma=chroma, embedding=embedding,
                    documents=documents,
                )  # fmt: skip
            state.commit()
        finally:
            state.close()
    context.log.info(f"source '{source.name}': stopped passing over its prefix: {why}")
