"""Live progress of the `s3sync` command's long work on a terminal: keys done, failed and unchanged, the rate and the
time left, read from the runs' own events on the instance (so a run on a Celery worker counts each key as it
reports it, like one in this process), drawn by rich on standard error. Quiet under --json or off a terminal."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# A tag on every run of one command, so its runs (in this process or on workers) are found on the instance.
COMMAND_TAG = "s3sync/command"
POLL_SECONDS = 0.5
_KEY_EVENTS = {dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_OBSERVATION}


def shown(json_output: bool) -> bool:
    """Progress is drawn only for a person: on a terminal, and not when the output is JSON for a script."""
    return not json_output and sys.stderr.isatty()


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} keys/s" if task.speed else "- keys/s", style="progress.data.speed")


def _terminal() -> Console:
    """rich's console on a copy of the terminal's standard error, taken before a run starts.

    While a step runs in this process Dagster points file descriptor 2 at the step's log file and copies that
    file to the terminal through a process of its own; on a busy machine that copy falls behind and is cut off
    when the step ends, so a display drawn on descriptor 2 stood at 0 keys until the run was over. The copy of
    the descriptor still reaches the terminal. Closed by _close."""
    stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
    return Console(file=stream)


def _close(progress: Progress) -> None:
    progress.stop()
    progress.console.file.close()


def _bar(console: Console, total: int | None) -> Progress:
    counted = TextColumn("failed {task.fields[failed]}, unchanged {task.fields[unchanged]}")
    if total is None:  # a listing: no end known ahead
        return Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed} objects"),
                        _Rate(), TimeElapsedColumn(), console=console, transient=False)  # fmt: skip
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), counted, _Rate(),
        TimeRemainingColumn(), console=console, transient=False,
    )  # fmt: skip


class RunsProgress:
    """The keys reported by the runs carrying the tag `tag` (COMMAND_TAG and the command's id, or an invocation's
    id), counted from their events as they arrive.

    Drawn from `begin(total)`, once the command knows how many keys it asked for, until the block ends.
    """

    def __init__(self, instance: dg.DagsterInstance, tag: tuple[str, str], description: str) -> None:
        self._instance, self._tag, self._description = instance, tag, description
        self._cursors: dict[str, str | None] = {}
        self.done = self.failed = self.unchanged = 0
        self._progress: Progress | None = None
        self._task: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="s3sync-progress", daemon=True)

    def begin(self, total: int) -> None:
        if total <= 0 or self._progress is not None:
            return
        _notices_first(self._instance)
        self._progress = _bar(_terminal(), total)
        self._task = self._progress.add_task(self._description, total=total, failed=0, unchanged=0)
        self._progress.start()
        self._thread.start()

    def __enter__(self) -> RunsProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is None:
            return
        self._stop.set()
        self._thread.join()
        try:
            self._poll()  # what the last runs reported after the last look
        finally:
            _close(self._progress)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._poll()
            except Exception:  # a busy SQLite file, a dropped connection: the next look counts it
                continue

    def _poll(self) -> None:
        records = self._instance.get_run_records(dg.RunsFilter(tags=dict([self._tag])))
        for record in records:
            run_id = record.dagster_run.run_id
            found = self._instance.get_records_for_run(run_id, cursor=self._cursors.get(run_id), of_type=_KEY_EVENTS)
            for entry in found.records:
                self._count(entry.event_log_entry.dagster_event)
            self._cursors[run_id] = found.cursor
        assert self._progress is not None
        self._progress.update(
            self._task, completed=self.done + self.failed + self.unchanged, failed=self.failed, unchanged=self.unchanged
        )

    def _count(self, event: dg.DagsterEvent | None) -> None:
        if event is None:
            return
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION:
            self.failed += 1  # a key's failure is recorded as an observation of its partition (defs/runs/assets.py)
            return
        status = event.step_materialization_data.materialization.metadata.get("status")
        if getattr(status, "value", status) == "unchanged":
            self.unchanged += 1
        else:
            self.done += 1


def _notices_first(instance: dg.DagsterInstance) -> None:
    """Dagster prints its telemetry notice the first time a home with telemetry on records an action: during the
    first run, through click onto the terminal's own standard error, past rich's redirection, so into the
    display. Recorded now, before the display starts, the notice comes above it, and the runs print nothing."""
    if instance.telemetry_enabled:
        from dagster_shared.telemetry import get_or_set_instance_id

        get_or_set_instance_id()


class Counting:
    """A count that grows with no end known ahead (objects listed), with its rate."""

    def __init__(self, progress: Progress, task: Any) -> None:
        self._progress, self._task = progress, task

    def advance(self, by: int) -> None:
        self._progress.advance(self._task, by)


@contextmanager
def counting(description: str, enabled: bool) -> Iterator[Counting | None]:
    """A spinner with a count and its rate while `description` goes on; None when progress is not shown."""
    if not enabled:
        yield None
        return
    progress = _bar(_terminal(), None)
    progress.start()
    try:
        yield Counting(progress, progress.add_task(description, total=None, failed=0, unchanged=0))
    finally:
        _close(progress)


@contextmanager
def runs_progress(
    instance: dg.DagsterInstance, tag: tuple[str, str], description: str, enabled: bool
) -> Iterator[RunsProgress | None]:
    """RunsProgress over the runs carrying `tag` while the block runs; None when progress is not shown."""
    if not enabled:
        yield None
        return
    with RunsProgress(instance, tag, description) as progress:
        yield progress
