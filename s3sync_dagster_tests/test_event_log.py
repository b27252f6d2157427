"""The pooled SQLite event log: wired by dagster.yaml, same files as Dagster's own, live run views still fire."""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from s3sync_dagster.event_log import MAX_OPEN_RUN_SHARDS, PooledSqliteEventLogStorage

REPO = Path(__file__).resolve().parent.parent
ASSET = dg.AssetKey(["bench", "documents"])


def _entry(run_id: str, dagster_event: DagsterEvent) -> EventLogEntry:
    return EventLogEntry(
        user_message="",
        level="INFO",
        job_name="job",
        run_id=run_id,
        error_info=None,
        timestamp=1.0,
        step_key="step",
        dagster_event=dagster_event,
    )


def _key_events(run_id: str, partition_key: str) -> list[EventLogEntry]:
    planned = DagsterEvent.build_asset_materialization_planned_event(
        "job", "step", AssetMaterializationPlannedData(ASSET, partition=partition_key)
    )
    materialization = DagsterEvent(
        event_type_value=dg.DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name="job",
        step_key="step",
        event_specific_data=StepMaterializationData(
            dg.AssetMaterialization(asset_key=ASSET, partition=partition_key, metadata={"status": "written"})
        ),
    )
    return [_entry(run_id, planned), _entry(run_id, materialization)]


def test_the_project_instance_uses_the_pooled_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        run_id = str(uuid.uuid4())
        for entry in _key_events(run_id, "a/one.txt"):
            instance.handle_new_event(entry)
        assert instance.get_materialized_partitions(ASSET) == {"a/one.txt"}
    assert (tmp_path / "history" / "runs" / f"{run_id}.db").exists()  # where a stock instance keeps it


def test_files_are_dagsters_own_both_ways(tmp_path: Path) -> None:
    pooled = PooledSqliteEventLogStorage(str(tmp_path))
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    for partition_key in ("a/one.txt", "a/two.txt"):
        for entry in _key_events(first, partition_key):
            pooled.store_event(entry)
    stock = SqliteEventLogStorage(str(tmp_path))
    for entry in _key_events(second, "a/three.txt"):
        stock.store_event(entry)
    try:
        # Written while the pooled storage holds its connections open, read through fresh ones.
        assert [record.event_log_entry.dagster_event_type for record in stock.get_records_for_run(first).records] == [
            dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
            dg.DagsterEventType.ASSET_MATERIALIZATION,
        ] * 2
        assert len(pooled.get_records_for_run(second).records) == 2
        materialized = pooled.get_materialized_partitions(ASSET)
        assert materialized == stock.get_materialized_partitions(ASSET) == {"a/one.txt", "a/two.txt", "a/three.txt"}
    finally:
        pooled.dispose()
        stock.dispose()


def test_a_watcher_sees_events_as_they_are_written(tmp_path: Path) -> None:
    """The webserver's live run view watches the run's .db file: each write must still reach it."""
    writer = PooledSqliteEventLogStorage(str(tmp_path))
    watcher = SqliteEventLogStorage(str(tmp_path))
    run_id = str(uuid.uuid4())
    writer.store_event(_key_events(run_id, "a/zero.txt")[0])  # the run's shard exists before it is watched
    seen: list[EventLogEntry] = []
    arrived = threading.Event()

    def on_event(entry: EventLogEntry, _cursor: str) -> None:
        seen.append(entry)
        if len(seen) >= 2:
            arrived.set()

    watcher.watch(run_id, None, on_event)
    try:
        for entry in _key_events(run_id, "a/one.txt"):
            writer.store_event(entry)
        assert arrived.wait(timeout=60), f"the watcher saw {len(seen)} of the events written after it started"
        assert {entry.dagster_event_type for entry in seen} >= {dg.DagsterEventType.ASSET_MATERIALIZATION}
    finally:
        watcher.end_watch(run_id, on_event)
        watcher.dispose()
        writer.dispose()


def test_open_connections_are_bounded_and_wipe_starts_clean(tmp_path: Path) -> None:
    storage = PooledSqliteEventLogStorage(str(tmp_path))
    try:
        run_ids = [str(uuid.uuid4()) for _ in range(MAX_OPEN_RUN_SHARDS + 4)]
        for run_id in run_ids:
            storage.store_event(_key_events(run_id, f"k/{run_id}")[0])
        open_run_shards = [shard for shard in storage._engines if shard != "index"]
        assert open_run_shards == run_ids[-MAX_OPEN_RUN_SHARDS:]
        assert all(len(storage.get_records_for_run(run_id).records) == 1 for run_id in run_ids)

        storage.wipe()
        assert not list(tmp_path.glob(f"{run_ids[-1]}.db*"))
        storage.store_event(_key_events(run_ids[-1], "k/again")[0])
        assert len(storage.get_records_for_run(run_ids[-1]).records) == 1
    finally:
        storage.dispose()


def test_an_instance_opened_by_directory_keeps_its_events_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`DagsterInstance.from_config(dir)` with $DAGSTER_HOME elsewhere (or unset): the events stay in dir."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    for dagster_home in (str(elsewhere), None):
        if dagster_home is None:
            monkeypatch.delenv("DAGSTER_HOME", raising=False)
        else:
            monkeypatch.setenv("DAGSTER_HOME", dagster_home)
        run_id = str(uuid.uuid4())
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
            for entry in _key_events(run_id, f"a/{run_id}.txt"):
                instance.handle_new_event(entry)
            assert f"a/{run_id}.txt" in instance.get_materialized_partitions(ASSET)
        assert (home / "history" / "runs" / f"{run_id}.db").exists()
    assert not elsewhere.exists()
