"""The instance this repo's dagster.yaml makes: Dagster's stock event log, whose live run view still fires."""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[2]


def _project_home(path: Path) -> Path:
    """A Dagster home with this repo's instance settings, as scripts/setup links them."""
    path.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", path / "dagster.yaml")
    return path


def test_the_project_instance_keeps_dagsters_own_event_log(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    with (
        dg.DagsterInstance.from_config(str(_project_home(tmp_path / "home"))) as project,
        dg.DagsterInstance.from_config(str(bare)) as stock,
    ):
        # The storage a home without any dagster.yaml gets, not a subclass of it.
        assert type(project.event_log_storage) is type(stock.event_log_storage)
        run_id = str(uuid.uuid4())
        project.report_engine_event("written by the test", job_name="sync", run_id=run_id)
        assert [record.event_log_entry.message for record in project.get_records_for_run(run_id).records] == [
            "written by the test"
        ]
    assert (tmp_path / "home" / "history" / "runs" / f"{run_id}.db").exists()  # the stock layout


def test_a_watcher_sees_a_runs_events_as_they_are_written(tmp_path: Path) -> None:
    """The webserver's live run view watches the run's event log: each write must reach it."""
    home = _project_home(tmp_path / "home")
    run_id = str(uuid.uuid4())
    seen: list[str] = []
    arrived = threading.Event()

    def on_event(entry: dg.EventLogEntry, _cursor: str) -> None:
        seen.append(entry.message)
        if len(seen) >= 3:
            arrived.set()

    # Writer and watcher apart, as a run's process and the webserver are.
    with dg.DagsterInstance.from_config(str(home)) as writer, dg.DagsterInstance.from_config(str(home)) as webserver:
        writer.report_engine_event(
            "run starting", job_name="sync", run_id=run_id
        )  # the run's log exists before it is watched
        webserver.event_log_storage.watch(run_id, None, on_event)
        try:
            for message in ("key a/one.txt", "key a/two.txt"):
                writer.report_engine_event(message, job_name="sync", run_id=run_id)
            assert arrived.wait(timeout=60), f"the watcher saw {seen} of the events written"
            assert seen[-2:] == ["key a/one.txt", "key a/two.txt"]
        finally:
            webserver.event_log_storage.end_watch(run_id, on_event)
