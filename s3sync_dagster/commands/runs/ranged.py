"""The ranged runs of a sync: one per batch of neighbouring partitions, in this process or orchestrated from a
pool of processes with the step on Celery, and a run Dagster refused because another command broke its range
told apart from any other failure."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Generator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from s3sync_dagster.commands.errors import RunError
from s3sync_dagster.commands.runs.reports import failure_reason
from s3sync_dagster.config import AppConfig
from s3sync_dagster.definitions import build_definitions, documents_job
from s3sync_dagster.defs.names import documents_job_name, partitions_name
from s3sync_dagster.defs.run_config import QUIET_LOGGERS
from s3sync_dagster.defs.sensors import in_process_tags
from s3sync_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG, SOURCE_TAG

# The CLI prints its own summary, a line per failed key or failed run; the run's full event log,
# warnings and tracebacks included, stays on the instance for the UI (`dagster` prints failures at
# ERROR level with their whole traceback: hundreds of lines for one unreachable store).
QUIET_RUN_CONFIG = {"loggers": QUIET_LOGGERS}


@dataclass(frozen=True)
class Executed:
    """What a sync reads back from a finished run, wherever it was orchestrated (it crosses processes)."""

    run_id: str
    success: bool
    error: str  # the first line of what failed the run (never empty then); "" when it succeeded
    # False: no run was made, because the batch was no longer a range of partitions when its turn came
    # (another command removed one of them): its keys are planned again (`sync`).
    launched: bool = True

    @classmethod
    def of(cls, execution: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> Executed:
        return cls(
            execution.run_id, execution.success, "" if execution.success else failure_reason(execution.all_events)
        )

    @classmethod
    def not_launched(cls) -> Executed:
        return cls("", False, "its partition range changed before its run started", launched=False)


def outside_range(
    instance: dg.DagsterInstance, source_name: str, batch: Sequence[str], partition_keys: Sequence[str]
) -> list[str]:
    """Of these keys of a batch, those no longer between the batch's first and last partitions."""
    registered = instance.get_dynamic_partitions(partitions_name(source_name))
    try:
        covered = set(registered[registered.index(batch[0]) : registered.index(batch[-1]) + 1])
    except ValueError:  # an end is gone, and the range with it
        covered = set()
    return [partition_key for partition_key in partition_keys if partition_key not in covered]


def ends_registered(instance: dg.DagsterInstance, source_name: str, batch: Sequence[str]) -> bool:
    """Whether the first and last keys of a batch are still partitions: Dagster refuses to make a run over a
    range whose ends are not (a key gone from inside the range is skipped, and the sync, commands/runs/runner.py,
    plans it again). Read right before the run is made, since another command may have removed one since the batch was planned."""
    name = partitions_name(source_name)
    return instance.has_dynamic_partition(name, batch[0]) and instance.has_dynamic_partition(name, batch[-1])


def execute_runs(
    config: AppConfig,
    source_name: str,
    instance: dg.DagsterInstance,
    batches: list[list[str]],
    tags: dict[str, str],
) -> Generator[tuple[list[str], Executed, float]]:
    """One run per batch, yielded in batch order with its duration: in this process, or through Celery.

    In process, one run after another. With `executor.celery`, `concurrent_runs` runs at a time, each
    orchestrated from a process of a pool while its step executes on a worker (`_orchestrate`).
    A caller that stops early (a run failed as a whole) leaves the batches not yet started untried.
    """

    def run_tags(batch: list[str]) -> dict[str, str]:
        return {RANGE_START_TAG: batch[0], RANGE_END_TAG: batch[-1], SOURCE_TAG: source_name, **tags}

    celery = config.executor.celery
    if celery is None:
        # The source's documents job: the asset without its checks (defs/source.py), as on Celery.
        job = build_definitions(config).resolve_job_def(documents_job_name(source_name))
        for batch in batches:
            run_started = time.perf_counter()
            if not ends_registered(instance, source_name, batch):
                yield batch, Executed.not_launched(), 0.0
                continue
            run_id = str(uuid.uuid4())  # Dagster's own form of run id
            try:
                execution = job.execute_in_process(
                    instance=instance,
                    tags={**run_tags(batch), **in_process_tags()},
                    run_config=QUIET_RUN_CONFIG,
                    raise_on_error=False,
                    run_id=run_id,
                )
            except dg.DagsterInvalidInvocationError:
                if not _range_broke(instance, source_name, batch, [run_id]):
                    raise
                yield batch, Executed.not_launched(), 0.0
                continue
            yield batch, Executed.of(execution), time.perf_counter() - run_started
        return
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no lock or thread of this one
    with ProcessPoolExecutor(max_workers=celery.concurrent_runs, mp_context=spawn) as pool:
        futures = [
            pool.submit(_orchestrate, instance.get_ref(), source_name, batch, run_tags(batch)) for batch in batches
        ]
        try:
            for batch, future in zip(batches, futures, strict=True):
                try:
                    yield batch, *future.result()
                except BrokenProcessPool as error:
                    raise RunError(
                        f"the process orchestrating the run of {batch[0]}..{batch[-1]} died: {error}"
                    ) from None
        finally:
            for future in futures:
                future.cancel()


def _orchestrate(instance_ref: Any, source_name: str, batch: list[str], tags: dict[str, str]) -> tuple[Executed, float]:
    """One run of `definitions.documents_job` (rebuilt here, and by the workers, from the same config file),
    its step sent to Celery, in a process of the sync's pool.

    Not a thread: Dagster sets up each run's logging with `logging.config.dictConfig`, which closes every
    handler under logging's global lock; runs set up in threads of one process while others write events
    deadlock (seen with the PostgreSQL instance: a sync hung with four runs in flight).
    """
    run_started = time.perf_counter()
    recon_job = dg.build_reconstructable_job(documents_job.__module__, documents_job.__name__, (source_name,))
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        if not ends_registered(instance, source_name, batch):
            return Executed.not_launched(), 0.0
        launched = datetime.now(UTC)
        try:
            execution = dg.execute_job(
                recon_job, instance=instance, tags=tags, run_config=QUIET_RUN_CONFIG, raise_on_error=False
            )
        except dg.DagsterInvalidInvocationError:
            # execute_job takes no run id: the run it stored is the one of these tags (the range, the source,
            # the command's) made since, never started.
            made = instance.get_run_records(
                filters=dg.RunsFilter(tags=tags, statuses=[dg.DagsterRunStatus.NOT_STARTED], created_after=launched)
            )
            if not _range_broke(instance, source_name, batch, [record.dagster_run.run_id for record in made]):
                raise
            return Executed.not_launched(), 0.0
        return Executed.of(execution), time.perf_counter() - run_started


def _range_broke(instance: dg.DagsterInstance, source_name: str, batch: list[str], run_ids: Sequence[str]) -> bool:
    """Dagster refused to make a batch's run: whether another command removed an end of its range since
    `ends_registered` looked. Dagster stores the run before it checks the range: that run, never started, is
    deleted, so nothing counts it as in flight. False: both ends are there, the error is another one."""
    if ends_registered(instance, source_name, batch):
        return False
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status == dg.DagsterRunStatus.NOT_STARTED:
            instance.delete_run(run_id)
    return True
