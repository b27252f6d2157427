"""The Sync API's workflow on a Dagster instance: invoke one key (a queued run), list runs as jobs, cancel.

An invocation is a run of the source's asset for one partition, created as the UI creates one and
put on the instance's run queue, so `dagster dev` or `dagster-daemon` executes it. Its parameters
are the run's config: visible in the UI, and used again by a re-execution from there.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from s3sync_dagster.config import CONFIG_ENV_VAR, AppConfig, EmbeddingConfig, SourceConfig, config_path
from s3sync_dagster.defs.names import asset_op_name, documents_asset_key, partitions_name, sync_op_name
from s3sync_dagster.defs.tags import INVOCATION_TAG, RANGE_END_TAG, RANGE_START_TAG, SOURCE_TAG, TRIGGER_TAG
from s3sync_dagster.pipeline import keys, objects
from s3sync_dagster.pipeline.sync import Invocation

PARTITION_TAG = "dagster/partition"
ASSET_JOB = "__ASSET_JOB"
# workspace.yaml's location: runs made here must name it, so the daemon and the UI find their code.
LOCATION_NAME = "s3sync_dagster.definitions"
DEFINITIONS_MODULE = "s3sync_dagster.definitions"

Status = str  # pending | processing | complete | failed | cancelled
STATUSES: dict[Status, frozenset[dg.DagsterRunStatus]] = {
    "pending": frozenset({dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING}),
    "processing": frozenset({dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING}),
    "complete": frozenset({dg.DagsterRunStatus.SUCCESS}),
    "failed": frozenset({dg.DagsterRunStatus.FAILURE}),
    "cancelled": frozenset({dg.DagsterRunStatus.CANCELED}),
}
FINISHED = STATUSES["complete"] | STATUSES["failed"] | STATUSES["cancelled"]


class InvocationError(ValueError):
    """The invocation breaks a rule (prefix, custom id, metadata, target, a missing object): nothing ran."""


def status_name(status: dg.DagsterRunStatus) -> Status:
    return next(name for name, members in STATUSES.items() if status in members)


def source_id(source: SourceConfig) -> str:
    """A stable UUID for a source, as the Sync API gives one: the same name and bucket, the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"s3sync-dagster:{source.name}:{source.bucket_name}"))


def invocation_run_config(source_name: str, invocation: Invocation) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if invocation.custom_id is not None:
        config["custom_id"] = invocation.custom_id
    if invocation.metadata:
        # Dagster config has no nulls; the Sync API drops null metadata values anyway.
        config["metadata"] = {key: value for key, value in invocation.metadata.items() if value is not None}
    if invocation.target_collection_name is not None:
        config["target_collection_name"] = invocation.target_collection_name
    return {"ops": {asset_op_name(source_name): {"config": config}}} if config else {}


def validate_invocation(
    source: SourceConfig, object_key: str, invocation: Invocation, embedding: EmbeddingConfig
) -> None:
    """The Sync API's rules, checked before anything is registered or run."""
    try:
        spec = source.spec(embedding.spec())
        invocation.validate(spec, object_key)
        keys.to_partition_key(object_key)
    except ValueError as error:
        raise InvocationError(str(error)) from None


def check_object_exists(client: Any, source: SourceConfig, object_key: str) -> None:
    try:
        objects.head_object(client, source.bucket_name, object_key)
    except objects.ObjectMissing:
        raise InvocationError(
            f"object '{object_key}' does not exist in bucket '{source.bucket_name}' "
            f"(to remove the chunks of a deleted object: s3sync sync {source.name} --key KEY)"
        ) from None


def _code_location(instance: dg.DagsterInstance, config_file: str | None) -> Any:
    """The project's definitions loaded in this process, under the name workspace.yaml gives them."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    # The definitions find the config as every Dagster process does: through $S3SYNC_CONFIG.
    os.environ[CONFIG_ENV_VAR] = str(config_path(config_file).resolve())
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            executable_path=sys.executable, module_name=DEFINITIONS_MODULE, working_directory=os.getcwd()
        ),
        location_name=LOCATION_NAME,
    )
    return origin.create_location(instance)


def submit_partition_run(
    instance: dg.DagsterInstance,
    config_file: str | None,
    source_name: str,
    partition_key: str,
    run_config: Mapping[str, Any],
    tags: Mapping[str, str],
) -> dg.DagsterRun:
    """Create the run the UI's "Materialize" creates for one partition, and put it on the run queue."""
    from dagster._core.definitions.selector import JobSubsetSelector

    asset_key = documents_asset_key(source_name)
    with _code_location(instance, config_file) as location:
        repository = next(iter(location.get_repositories().values()))
        selector = JobSubsetSelector(
            location_name=location.name,
            repository_name=repository.name,
            job_name=ASSET_JOB,
            op_selection=None,
            asset_selection=[asset_key],
            # The source's check compares the whole source: run it on its own, not after each key.
            asset_check_selection=[],
        )
        remote_job = location.get_job(selector)
        plan = location.get_execution_plan(
            remote_job, dict(run_config), step_keys_to_execute=None, known_state=None, instance=instance
        ).execution_plan_snapshot
        run = instance.create_run(
            job_name=ASSET_JOB,
            run_id=None,
            run_config=dict(run_config),
            resolved_op_selection=None,
            step_keys_to_execute=plan.step_keys_to_execute,
            op_selection=None,
            status=None,
            root_run_id=None,
            parent_run_id=None,
            tags={**remote_job.tags, **tags, PARTITION_TAG: partition_key},
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=frozenset([asset_key]),
            asset_check_selection=frozenset(),
            asset_graph=repository.asset_graph,
        )
        return instance.submit_run(run.run_id, workspace=None)  # type: ignore[arg-type]


def execute_partition_run(
    instance: dg.DagsterInstance,
    config: AppConfig,
    source_name: str,
    partition_key: str,
    run_config: Mapping[str, Any],
    tags: Mapping[str, str],
) -> str:
    """Run one partition in this process (no daemon serves the queue), recorded on the instance as the
    queued run would be: same job, config, tags and events, so the UI and `s3sync invocations` show it."""
    from s3sync_dagster.definitions import build_definitions
    from s3sync_dagster.runner import QUIET_RUN_CONFIG

    execution = (
        build_definitions(config)
        .resolve_implicit_global_asset_job_def()
        .execute_in_process(
            instance=instance,
            asset_selection=[documents_asset_key(source_name)],
            tags={**tags, PARTITION_TAG: partition_key},
            run_config={**dict(run_config), **QUIET_RUN_CONFIG},
            raise_on_error=False,
        )
    )
    return execution.run_id


def daemon_running(instance: dg.DagsterInstance, within_s: float = 60.0) -> bool:
    """Whether a dagster-daemon (or `dagster dev`) is dequeuing this instance's runs."""
    heartbeats = instance.get_daemon_heartbeats()
    beat = heartbeats.get("QUEUED_RUN_COORDINATOR")
    return beat is not None and time.time() - beat.timestamp < within_s


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
        name = next((s for s in by_name if tuple(documents_asset_key(s).path) in selected), None)
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
    target = ops.get(asset_op_name(name), {}).get("config", {}).get("target_collection_name")
    if INVOCATION_TAG in run.tags:
        trigger = "invocation"
    elif "dagster/backfill" in run.tags:
        trigger = "backfill"
    else:
        trigger = run.tags.get(TRIGGER_TAG) or ("sync" if name == run.tags.get(SOURCE_TAG) else "ui")
    return RunScope(name, object_key, count, target or source.collection_name, trigger)


def _object_key(partition_key: str) -> str:
    try:
        return keys.to_object_key(partition_key)
    except ValueError:  # a non-canonical key typed in the UI: shown as typed
        return partition_key


def _timestamp(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, tz=UTC).isoformat().replace("+00:00", "Z")


def run_error(instance: dg.DagsterInstance, run_id: str) -> str:
    """Why a run failed: its failed keys' own messages, else the step's or the run's failure."""
    from s3sync_dagster.runner import reports_of

    failed = [report for report in reports_of(instance, run_id) if report["status"] == "failed"]
    if failed:
        shown = "; ".join(f"{report['object_key']}: {report['message']}" for report in failed[:5])
        return shown + (f" (and {len(failed) - 5} more)" if len(failed) > 5 else "")
    records = instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE})
    for record in records:
        event = record.dagster_event
        if event is not None and event.is_step_failure and event.step_failure_data.error is not None:
            failure = event.step_failure_data.user_failure_data
            if failure is not None and failure.description:
                return failure.description
            return event.step_failure_data.error.message.strip()
    for record in records:
        if record.dagster_event is not None and record.dagster_event.message:
            return record.dagster_event.message
    return "the run failed before any step ran"


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


def invocation_row(instance: dg.DagsterInstance, config: AppConfig, record: Any, scope: RunScope) -> dict[str, Any]:
    """One run, shaped as an item of the Sync API's job list (plus a few fields of ours)."""
    run: dg.DagsterRun = record.dagster_run
    source = config.source(scope.source)
    return {
        "id": run.run_id,
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


def list_invocations(
    instance: dg.DagsterInstance,
    config: AppConfig,
    source_name: str | None = None,
    status: Status | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Runs of the configured sources (all, or one), newest first: invocations, syncs, backfills, sensors."""
    if source_name is not None:
        config.source(source_name)
    statuses = STATUSES[status] if status is not None else None
    rows: list[dict[str, Any]] = []
    skipped = 0
    for record in _records(instance, statuses):
        scope = run_scope(record.dagster_run, config)
        if scope is None or (source_name is not None and scope.source != source_name):
            continue
        if skipped < offset:
            skipped += 1
            continue
        rows.append(invocation_row(instance, config, record, scope))
        if len(rows) >= limit:
            break
    return rows


def list_invocations_by_id(instance: dg.DagsterInstance, config: AppConfig, run_id: str) -> dict[str, Any]:
    records = instance.get_run_records(filters=dg.RunsFilter(run_ids=[run_id]), limit=1)
    scope = run_scope(records[0].dagster_run, config) if records else None
    if scope is None:
        raise InvocationError(f"run {run_id} is not a run of a configured source")
    return invocation_row(instance, config, records[0], scope)


def cancel(instance: dg.DagsterInstance, run_id: str) -> Status:
    """Cancel a queued run (or ask a running one to stop); a finished run is refused."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise InvocationError(f"run {run_id} does not exist on this instance")
    if run.status in FINISHED:
        raise InvocationError(f"run {run_id} has already finished ({status_name(run.status)}): nothing to cancel")
    instance.run_coordinator.cancel_run(run_id)
    updated = instance.get_run_by_id(run_id)
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
