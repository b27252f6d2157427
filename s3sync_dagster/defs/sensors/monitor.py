"""Run workers that died (kill -9, out of memory, a lost daemon) leave their runs STARTED forever: mark them failed.

Dagster's run monitoring (on in dagster.yaml) fails runs stuck while STARTING and, for launchers that
can ask their platform (Kubernetes, ECS, Docker), runs whose worker is gone. The default launcher runs
workers as local processes and cannot answer that question, so this sensor does: a STARTED run whose
worker process (the pid its "Started process for run" event recorded) no longer exists on this host is
reported failed, and the instance's run retries (dagster.yaml) launch it again. Syncs are idempotent,
so the retry finishes what the dead worker started without duplicating anything.

It also makes sure a failed run that Dagster decided to retry is retried (`nudge_missed_retries`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import psutil

from s3sync_dagster.defs.tags import AUTO_RETRY_RUN_TAG, PROCESS_TAG, RETRY_NUDGED_TAG, WILL_RETRY_TAG

RUN_MONITOR_NAME = "s3sync_run_workers"
# Before the daemon's first look at a run there is nothing to judge; after, every 30 s is enough to
# turn a dead worker into a retry well before anyone waits on it.
INTERVAL_S = 30
# Dagster's run retries are made by the daemon's event-log consumer: every 5 s it reads the run failures logged
# since its last look, once each, and retries a run that is then tagged will_retry (or FAILURE). The instance logs a
# failure before it sets the run's status and that tag (DagsterInstance.handle_new_event), so a consumer reading in
# between passes the run over for good: seen on a busy machine, a run failed by the start timeout, tagged
# will_retry=true, never retried. A failure older than this without a retry was missed and is reported again.
RETRY_GRACE_S = 30
# How far back a missed retry is looked for (runs updated since): a daemon down longer leaves the rest to a person.
RETRY_LOOKBACK_S = 24 * 3600
# The worker's process exists before it records its pid; a process created later than that record is
# another process that was given the same pid after the worker died.
PID_REUSE_SLACK_S = 5.0


@dataclass(frozen=True)
class DeadWorker:
    run: dg.DagsterRun
    pid: int


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid of the run's worker process and when it was recorded, from the engine event it wrote on start."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        data = event.engine_event_data if event is not None else None
        pid = data.metadata.get("pid") if data is not None else None
        if pid is not None:
            return int(str(getattr(pid, "value", pid))), entry.timestamp
    return None


def worker_alive(pid: int, recorded_at: float) -> bool:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        created = process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return created <= recorded_at + PID_REUSE_SLACK_S


def dead_workers(instance: dg.DagsterInstance) -> list[DeadWorker]:
    """STARTING or STARTED runs of local workers whose process is gone. Empty unless runs are local processes."""
    if not isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        return []  # workers on other hosts or platforms: Dagster's run monitoring asks the launcher
    dead = []
    in_progress = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    for record in instance.get_run_records(dg.RunsFilter(statuses=in_progress)):
        worker = worker_pid(instance, record.dagster_run.run_id)
        launcher = record.dagster_run.tags.get(PROCESS_TAG)
        if worker is None and launcher is not None and launcher.isdigit():
            # A run executed in the `s3sync` command's own process (sync, repair, reembed, invoke): that process.
            worker = int(launcher), record.create_timestamp.timestamp()
        # No pid: not started yet (Dagster's start timeout covers it).
        if worker is not None and not worker_alive(*worker):
            dead.append(DeadWorker(record.dagster_run, worker[0]))
    return dead


def in_process_tags() -> dict[str, str]:
    """The tags of a run executed in this process (execute_in_process): the monitor fails it once it is gone."""
    return {PROCESS_TAG: str(os.getpid())}


def fail_dead(instance: dg.DagsterInstance, log: Callable[[str], None] | None = None) -> list[DeadWorker]:
    """Mark failed every in-progress run whose worker (or launching `s3sync` process) is gone."""
    dead = dead_workers(instance)
    for worker in dead:
        message = (
            f"run worker process {worker.pid} is gone (killed or crashed) while the run was in progress: "
            "marked failed so that run retries launch it again"
        )
        if log is not None:
            log(f"run {worker.run.run_id}: {message}")
        instance.report_run_failed(worker.run, message)
    return dead


def missed_retries(instance: dg.DagsterInstance, now: float) -> list[dg.RunRecord]:
    """Failed runs Dagster decided to retry (will_retry=true) that have no retry RETRY_GRACE_S after they ended."""
    since = datetime.fromtimestamp(now - RETRY_LOOKBACK_S, tz=UTC)
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], tags={WILL_RETRY_TAG: "true"}, updated_after=since)
    )
    return [
        record
        for record in records
        if AUTO_RETRY_RUN_TAG not in record.dagster_run.tags
        and RETRY_NUDGED_TAG not in record.dagster_run.tags
        and record.end_time is not None
        and now - record.end_time >= RETRY_GRACE_S
    ]


def nudge_missed_retries(
    instance: dg.DagsterInstance, log: Callable[[str], None] | None = None, now: float | None = None
) -> list[dg.RunRecord]:
    """Report each missed retry's run failed once more: the run is FAILURE and tagged will_retry before this
    failure is logged, so the retry consumer, reading it, retries the run (once: it skips a run already retried).
    Once per run (RETRY_NUDGED_TAG); its event log says why it failed twice."""
    now = time.time() if now is None else now
    missed = missed_retries(instance, now)
    for record in missed:
        run = record.dagster_run
        message = (
            f"the run failed {now - (record.end_time or now):.0f} s ago and Dagster decided to retry it, but its run"
            " retries passed the failure over (they read it before the instance marked the run failed): reported"
            " failed again so that they retry it"
        )
        if log is not None:
            log(f"run {run.run_id}: {message}")
        instance.report_run_failed(run, message)
        instance.add_run_tags(run.run_id, {RETRY_NUDGED_TAG: str(int(now))})
    return missed


def build_run_monitor() -> dg.SensorDefinition:
    @dg.sensor(
        name=RUN_MONITOR_NAME,
        minimum_interval_seconds=INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Marks runs whose local worker process died as failed, so run retries launch them again, and reports "
            "again a failed run whose retry Dagster's run retries missed."
        ),
    )
    def run_monitor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        dead = fail_dead(context.instance, context.log.warning)
        missed = nudge_missed_retries(context.instance, context.log.warning)
        said = [f"{len(dead)} run(s) with a dead worker marked failed" if dead else "all run workers alive"]
        if missed:
            said.append(f"{len(missed)} failed run(s) whose retry was missed reported again")
        return dg.SkipReason("; ".join(said))

    return run_monitor
