"""Who reads a source's queue (or passes over its prefix) now, besides its sensor: a run reading it after its keys,
or another source's sensor elected to make that run; a tick leaves the queue to them."""

import time
from collections.abc import Sequence

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.sensors.queues import elected, queues_read_with, read_by
from s3sync_dagster.defs.tags import LINGER_TAG, SOURCE_TAG

# The longest a run reads its source's queue after its keys (sqs_linger_seconds), counted from the run's creation;
# the sensor leaves the queue to such a run no longer than this, whatever became of it (a run whose worker died
# is failed sooner: defs/sensors/monitor.py). A steady flow of uploads gets a new run each hour.
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


def reading_run(instance: dg.DagsterInstance, source: SourceConfig, tag: str = LINGER_TAG) -> str | None:
    """The run that reads this source's queue (with PREFIX_LINGER_TAG, passes over its prefix) after its keys, or is
    about to, if one is in progress and was made less than LINGER_MAX_S ago: the sensor leaves the queue (the
    prefix) to it. A run reading queues may be another source's, reading this one's too (defs/sensors/queues.py)."""
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


def reader_after_read(
    context: dg.SensorEvaluationContext, source: SourceConfig, sources: Sequence[SourceConfig]
) -> tuple[list[str], str | None]:
    """After a tick's read: the other sources whose queues its run would read, and who reads this queue instead if
    not its run (the messages are then given back, visible at once, rather than a run of their own: seconds to
    start, a run slot). Another source's run may have begun reading this queue during the long poll; or other
    sources' ticks found events in the same moment, and one of them was elected to make the run (defs/sensors/queues.py)."""
    reader = reading_run(context.instance, source)
    if reader is not None:
        return [], f"run {reader}"
    reads_with = queues_read_with(context.instance, source, sources)
    maker = elected(context.instance, source.name) if reads_with else None
    return reads_with, None if maker is None else f"the run source '{maker}''s sensor makes"
