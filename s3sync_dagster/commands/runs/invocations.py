"""The Sync API's workflow on a Dagster instance: invoke one key, list runs as jobs, cancel.

An invocation is a request recorded on the instance (defs/sensors/invocations.py) that the daemon's
`s3sync_invocations` sensor turns into a run of the source's asset for one partition. Its parameters are
the run's config: visible in the UI, and used again by a re-execution from there. Its id (the Sync API's
job id) is known at once; its run's id once the sensor has made the run, which carries the id as a tag.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from s3sync_dagster.commands.errors import InvocationError, UsageError
from s3sync_dagster.commands.runs.partitions import meta_keys_for, unnamed_document
from s3sync_dagster.commands.runs.reports import reports_of, run_failure
from s3sync_dagster.config import AppConfig, EmbeddingConfig, SourceConfig
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import (
    asset_op_name,
    documents_asset_key,
    documents_job_name,
    partitions_name,
    sync_op_name,
)
from s3sync_dagster.defs.run_config import QUIET_LOGGERS, invocation_run_config
from s3sync_dagster.defs.sensors import (
    INVOCATION_SENSOR,
    InvocationRequest,
    in_process_tags,
    recorded_requests,
    runs_of_invocations,
)
from s3sync_dagster.defs.tags import (
    BACKFILL_TAG,
    INVOCATION_TAG,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    SOURCE_TAG,
    TRIGGER_TAG,
)
from s3sync_dagster.pipeline.records import to_object_key, to_partition_key
from s3sync_dagster.pipeline.s3 import ObjectMissing, head_object, is_meta_key
from s3sync_dagster.pipeline.spec import Invocation

Status = str  # pending | processing | complete | failed | cancelled
STATUSES: dict[Status, frozenset[dg.DagsterRunStatus]] = {
    "pending": frozenset({dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING}),
    "processing": frozenset({dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING}),
    "complete": frozenset({dg.DagsterRunStatus.SUCCESS}),
    "failed": frozenset({dg.DagsterRunStatus.FAILURE}),
    "cancelled": frozenset({dg.DagsterRunStatus.CANCELED}),
}
FINISHED = STATUSES["complete"] | STATUSES["failed"] | STATUSES["cancelled"]


def status_name(status: dg.DagsterRunStatus) -> Status:
    return next(name for name, members in STATUSES.items() if status in members)


def source_id(source: SourceConfig) -> str:
    """A stable UUID for a source, as the Sync API gives one: the same name and bucket, the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"s3sync-dagster:{source.name}:{source.bucket_name}"))


def validate_invocation(
    source: SourceConfig, object_key: str, invocation: Invocation, embedding: EmbeddingConfig
) -> None:
    """The Sync API's rules, checked before anything is registered or run."""
    try:
        spec = source.spec(embedding.spec())
        invocation.validate(spec, object_key)
        to_partition_key(object_key)
    except ValueError as error:
        raise InvocationError(str(error)) from None


def check_object_exists(client: Any, source: SourceConfig, object_key: str) -> None:
    try:
        head_object(client, source.bucket_name, object_key)
    except ObjectMissing:
        raise InvocationError(
            f"object '{object_key}' does not exist in bucket '{source.bucket_name}' "
            f"(to remove the chunks of a deleted object: s3sync sync {source.name} --key KEY)"
        ) from None


def check_indexable(
    instance: dg.DagsterInstance, source: SourceConfig, object_key: str, invocation: Invocation
) -> None:
    """An invocation that could index nothing is refused, not run and reported complete.

    In metadata mode a document is indexed only through the .meta.json files naming it, unless the
    invocation's own parameters index it directly (pipeline/sync/stages.py `sync_keys`): with none given and no
    metadata file naming it, its run would index nothing.
    """
    if source.auto_sync != "metadata" or is_meta_key(object_key) or invocation != Invocation():
        return
    try:
        meta_keys_for(instance, source, [object_key])
    except UsageError:
        raise InvocationError(
            f"{unnamed_document(source, object_key)}: invoke the metadata file, or give the invocation a "
            "--custom-id, --metadata or --target-collection to index the object by itself"
        ) from None


def execute_partition_run(
    instance: dg.DagsterInstance,
    config: AppConfig,
    source_name: str,
    partition_key: str,
    invocation: Invocation,
    tags: Mapping[str, str],
) -> str:
    """Run one partition in this process (no daemon serves the queue), recorded on the instance as the
    queued run would be: same asset, config, tags and events, so the UI and `s3sync invocations` show it. The
    source's documents job runs it (the asset without its checks, as the sensor's run request selects)."""
    execution = (
        build_definitions(config)
        .resolve_job_def(documents_job_name(source_name))
        .execute_in_process(
            instance=instance,
            tags={**tags, PARTITION_TAG: partition_key, **in_process_tags()},
            run_config=invocation_run_config(config.source(source_name), invocation, loggers=QUIET_LOGGERS),
            raise_on_error=False,
        )
    )
    return execution.run_id


def daemon_running(instance: dg.DagsterInstance, within_s: float = 60.0) -> bool:
    """Whether a dagster-daemon (or `dagster dev`) evaluates this instance's sensors and dequeues its runs:
    the invocation sensor makes an invocation's run, the queue starts it."""
    heartbeats = instance.get_daemon_heartbeats()
    now = time.time()
    return all(
        (beat := heartbeats.get(daemon)) is not None and now - beat.timestamp < within_s
        for daemon in ("SENSOR", "QUEUED_RUN_COORDINATOR")
    )


def wait_for_run(instance: dg.DagsterInstance, invocation_id: str, timeout_s: float, poll_s: float = 0.5) -> str | None:
    """The id of the invocation's run once the sensor has made it; None if the timeout passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = runs_of_invocations(instance, [invocation_id]).get(invocation_id)
        if runs:
            return runs[0].dagster_run.run_id
        if time.monotonic() > deadline:
            return None
        time.sleep(poll_s)


def wait_for(
    instance: dg.DagsterInstance,
    run_id: str,
    timeout_s: float,
    on_status: Callable[[Status], None] | None = None,
    poll_s: float = 0.5,
) -> dg.DagsterRun:
    """Follow a run until it finishes (or the timeout passes: the run itself goes on)."""
    deadline = time.monotonic() + timeout_s
    seen: Status | None = None
    while True:
        run = instance.get_run_by_id(run_id)
        if run is None:
            raise InvocationError(f"run {run_id} does not exist on this instance")
        status = status_name(run.status)
        if status != seen and on_status is not None:
            on_status(status)
        seen = status
        if run.status in FINISHED or time.monotonic() > deadline:
            return run
        time.sleep(poll_s)


@dataclass(frozen=True)
class RunScope:
    """What a run did, as the Sync API names it: which source, which object key (None: many)."""

    source: str
    object_key: str | None
    keys: int | None
    collection_name: str
    trigger: str


def run_scope(run: dg.DagsterRun, config: AppConfig) -> RunScope | None:
    """The source a run synced and the key it covered; None for runs that are not ours."""
    by_name = {source.name: source for source in config.sources}
    name = run.tags.get(SOURCE_TAG)
    if name is None:
        selected = {tuple(key.path) for key in run.asset_selection or ()}
        name = next((s for s, source in by_name.items() if tuple(documents_asset_key(source).path) in selected), None)
    if name is None or name not in by_name:
        return None
    source = by_name[name]
    object_key, count = None, None
    ops: dict[str, Any] = dict((run.run_config or {}).get("ops") or {})  # type: ignore[call-overload]
    sensor_keys = ops.get(sync_op_name(name), {}).get("config", {}).get("object_keys")
    if PARTITION_TAG in run.tags:
        object_key, count = _object_key(run.tags[PARTITION_TAG]), 1
    elif run.tags.get(RANGE_START_TAG) is not None and run.tags.get(RANGE_START_TAG) == run.tags.get(RANGE_END_TAG):
        object_key, count = _object_key(run.tags[RANGE_START_TAG]), 1
    elif sensor_keys is not None:
        count = len(sensor_keys)
        object_key = sensor_keys[0] if count == 1 else None
    target = ops.get(asset_op_name(source), {}).get("config", {}).get("target_collection_name")
    if INVOCATION_TAG in run.tags:
        trigger = "invocation"
    elif BACKFILL_TAG in run.tags:
        trigger = "backfill"
    else:
        trigger = run.tags.get(TRIGGER_TAG) or ("sync" if name == run.tags.get(SOURCE_TAG) else "ui")
    return RunScope(name, object_key, count, target or source.collection_name, trigger)


def _object_key(partition_key: str) -> str:
    try:
        return to_object_key(partition_key)
    except ValueError:  # a non-canonical key typed in the UI: shown as typed
        return partition_key


def _timestamp(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, tz=UTC).isoformat().replace("+00:00", "Z")


def run_error(instance: dg.DagsterInstance, run_id: str) -> str:
    """Why a run failed: its failed keys' own messages, else the step's or the run's failure; never empty."""
    failed = [report for report in reports_of(instance, run_id) if report["status"] == "failed"]
    if failed:
        shown = "; ".join(f"{report['object_key']}: {report['message']}" for report in failed[:5])
        return shown + (f" (and {len(failed) - 5} more)" if len(failed) > 5 else "")
    return run_failure(instance, run_id)


def job_status(instance: dg.DagsterInstance, record: Any) -> Any:
    """A run's status in the Sync API's JobStatus shape."""
    run: dg.DagsterRun = record.dagster_run
    status = status_name(run.status)
    if status == "complete":
        start = record.start_time or record.create_timestamp.timestamp()
        end = record.end_time or start
        return {"complete": {"finished_at": _timestamp(end), "duration_ms": max(0, round((end - start) * 1000))}}
    if status == "failed":
        return {"failed": {"error": run_error(instance, run.run_id)}}
    return status


def job_id(run: dg.DagsterRun) -> str:
    """A run's id in the Sync API's list: the invocation's id for the run made for it (what `invoke` returned),
    the run's own id for every other run (a re-execution carries its parent's tags, not its identity)."""
    invocation_id = run.tags.get(INVOCATION_TAG)
    if invocation_id is not None and run.parent_run_id is None and _is_uuid(invocation_id):
        return invocation_id
    return run.run_id


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:  # "cli": the tag's value on runs of an earlier version
        return False
    return True


def invocation_row(instance: dg.DagsterInstance, config: AppConfig, record: Any, scope: RunScope) -> dict[str, Any]:
    """One run, shaped as an item of the Sync API's job list (plus a few fields of ours)."""
    run: dg.DagsterRun = record.dagster_run
    source = config.source(scope.source)
    return {
        "id": job_id(run),
        "run_id": run.run_id,
        "source_id": source_id(source),
        "created_at": _timestamp(record.create_timestamp.timestamp()),
        "status": job_status(instance, record),
        "metadata": {
            "s3": {"bucket_name": source.bucket_name, "object_key": scope.object_key},
            "database_name": database_name(config),
            "collection_name": scope.collection_name,
        },
        "source": scope.source,
        "keys": scope.keys,
        "trigger": scope.trigger,
        "job_name": run.job_name,
    }


def request_row(config: AppConfig, request: InvocationRequest) -> dict[str, Any]:
    """An invocation recorded but not run yet (no daemon has made its run): pending, with no run id."""
    source = config.source(request.source_name)
    return {
        "id": request.invocation_id,
        "run_id": None,
        "source_id": source_id(source),
        "created_at": _timestamp(request.timestamp),
        "status": "pending",
        "metadata": {
            "s3": {"bucket_name": source.bucket_name, "object_key": _object_key(request.partition_key)},
            "database_name": database_name(config),
            "collection_name": request.invocation.target_collection_name or source.collection_name,
        },
        "source": source.name,
        "keys": 1,
        "trigger": "invocation",
        "job_name": None,
    }


def database_name(config: AppConfig) -> str:
    return config.chroma.cloud.database if config.chroma.cloud is not None else "default_database"


def _records(instance: dg.DagsterInstance, statuses: frozenset[dg.DagsterRunStatus] | None) -> Iterator[Any]:
    """Every run record, newest first, fetched a page at a time."""
    cursor = None
    while True:
        page = instance.get_run_records(
            filters=dg.RunsFilter(statuses=sorted(statuses, key=lambda s: s.value)) if statuses else None,
            limit=200,
            cursor=cursor,
        )
        yield from page
        if len(page) < 200:
            return
        cursor = page[-1].dagster_run.run_id


def pending_requests(
    instance: dg.DagsterInstance, config: AppConfig, source_names: Sequence[str] | None = None
) -> list[InvocationRequest]:
    """Invocations recorded but not run yet, newest first: the requests among each source's latest 1,000
    observations that no run carries (the sensor makes runs within seconds while a daemon runs)."""
    names = source_names if source_names is not None else [source.name for source in config.sources]
    requests = [request for name in names for request in recorded_requests(instance, config.source(name))]
    made = runs_of_invocations(instance, [request.invocation_id for request in requests])
    waiting = [request for request in requests if request.invocation_id not in made]
    return sorted(waiting, key=lambda request: request.timestamp, reverse=True)


def list_invocations(
    instance: dg.DagsterInstance,
    config: AppConfig,
    source_name: str | None = None,
    status: Status | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Runs of the configured sources (all, or one), newest first: invocations, syncs, backfills, sensors;
    and invocations whose run is not made yet, as pending."""
    if source_name is not None:
        config.source(source_name)
    statuses = STATUSES[status] if status is not None else None

    def runs() -> Iterator[tuple[float, Any, RunScope | None]]:
        for record in _records(instance, statuses):
            scope = run_scope(record.dagster_run, config)
            if scope is not None and (source_name is None or scope.source == source_name):
                yield record.create_timestamp.timestamp(), record, scope

    requests: list[tuple[float, Any, RunScope | None]] = []
    if status in (None, "pending"):
        names = [source_name] if source_name is not None else None
        requests = [(request.timestamp, request, None) for request in pending_requests(instance, config, names)]
    rows: list[dict[str, Any]] = []
    merged = heapq.merge(requests, runs(), key=lambda item: -item[0])
    for position, (_, found, scope) in enumerate(merged):
        if position < offset:
            continue
        rows.append(request_row(config, found) if scope is None else invocation_row(instance, config, found, scope))
        if len(rows) >= limit:
            break
    return rows


def _invocation_run(instance: dg.DagsterInstance, invocation_id: str) -> Any | None:
    """The run made for an invocation (not its re-executions): the oldest run carrying its id."""
    runs = runs_of_invocations(instance, [invocation_id]).get(invocation_id, [])
    return next((record for record in runs if record.dagster_run.parent_run_id is None), runs[0] if runs else None)


def list_invocations_by_id(instance: dg.DagsterInstance, config: AppConfig, job_id: str) -> dict[str, Any]:
    """One job by the id `invoke` returned (an invocation's), or by a run's id."""
    record = _invocation_run(instance, job_id)
    if record is None:
        records = instance.get_run_records(filters=dg.RunsFilter(run_ids=[job_id]), limit=1)
        record = records[0] if records else None
    if record is None:
        pending = next((r for r in pending_requests(instance, config) if r.invocation_id == job_id), None)
        if pending is not None:
            return request_row(config, pending)
        raise InvocationError(f"job {job_id} is neither an invocation nor a run of a configured source")
    scope = run_scope(record.dagster_run, config)
    if scope is None:
        raise InvocationError(f"run {job_id} is not a run of a configured source")
    return invocation_row(instance, config, record, scope)


def cancel(instance: dg.DagsterInstance, job_id: str, config: AppConfig | None = None) -> Status:
    """Cancel a queued run (or ask a running one to stop), by its id or its invocation's; a finished run is
    refused, and so is an invocation whose run is not made yet."""
    record = _invocation_run(instance, job_id)
    run = record.dagster_run if record is not None else instance.get_run_by_id(job_id)
    if run is None:
        if config is not None and any(r.invocation_id == job_id for r in pending_requests(instance, config)):
            raise InvocationError(
                f"invocation {job_id} has no run yet: the {INVOCATION_SENSOR} sensor of a running daemon "
                "(`dagster dev` or `dagster-daemon run`) makes it; cancel it once it is queued"
            )
        raise InvocationError(f"run {job_id} does not exist on this instance")
    if run.status in FINISHED:
        raise InvocationError(f"run {job_id} has already finished ({status_name(run.status)}): nothing to cancel")
    instance.run_coordinator.cancel_run(run.run_id)
    updated = instance.get_run_by_id(run.run_id)
    return status_name(updated.status if updated is not None else run.status)


def source_runs_in_flight(instance: dg.DagsterInstance, config: AppConfig, source_name: str) -> list[str]:
    unfinished = STATUSES["pending"] | STATUSES["processing"]
    return [
        record.dagster_run.run_id
        for record in _records(instance, unfinished)
        if (scope := run_scope(record.dagster_run, config)) is not None and scope.source == source_name
    ]


def registered_keys(instance: dg.DagsterInstance, source_name: str) -> int:
    return len(instance.get_dynamic_partitions(partitions_name(source_name)))
