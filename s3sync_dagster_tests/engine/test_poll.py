"""Poll state: passes over a key-value store (engine), shared through the Dagster instance, legacy files moved in."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from benchmarks.common import sensor_tick
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import partitions_name
from s3sync_dagster.defs.state import (
    InstanceKeyValues,
    clear_poll_state,
    legacy_poll_file,
    poll_state,
    poll_store,
)
from s3sync_dagster.pipeline.records.keys import to_partition_key
from s3sync_dagster.pipeline.s3 import poll
from s3sync_dagster.pipeline.s3.objects import ObjectInfo
from s3sync_dagster.pipeline.s3.poll import InMemoryStore, KeyValueStore, PollState, migrate_legacy_file
from s3sync_dagster_tests.conftest import ConfigFactory, put

Listing = list[dict[str, str]]  # pages of {object_key: etag}


def infos(page: dict[str, str]) -> list[ObjectInfo]:
    return [ObjectInfo(object_key, 1, etag, "2026-01-01T00:00:00+00:00") for object_key, etag in page.items()]


def tick(store: KeyValueStore, listing: Listing, pages_per_tick: int = 1000, commit: bool = True) -> tuple[list, list]:
    """What the poll sensor does in one tick: pages from the stored token on, the pass's end, commit."""
    state = PollState(store)
    try:
        changed: list[str] = []
        vanished: list[str] = []
        index = int(state.continuation_token or 0)  # S3's tokens are opaque: here, the next page's index
        for _ in range(pages_per_tick):
            changed += state.observe(infos(listing[index]))
            index += 1
            state.next_page(str(index) if index < len(listing) else None)
            if index == len(listing):
                vanished = state.finish_pass()
                break
        if commit:
            state.commit()
        return changed, sorted(vanished)
    finally:
        state.close()


def one_pass(store: KeyValueStore, listing: Listing, pages_per_tick: int = 1000) -> tuple[list, list]:
    completed = PollState(store).completed_passes
    changed: list[str] = []
    vanished: list[str] = []
    while PollState(store).completed_passes == completed:
        new, gone = tick(store, listing, pages_per_tick)
        changed += new
        vanished += gone
    return changed, sorted(vanished)


LISTING = [{"a": "1", "b": "1"}, {"c": "1", "d": "1"}, {"e": "1"}]


@pytest.fixture(params=["memory", "instance"])
def store(request: pytest.FixtureRequest) -> Iterator[KeyValueStore]:
    """Each engine test runs over a dict and over the instance's key-value store (SQLite)."""
    if request.param == "memory":
        yield InMemoryStore()
        return
    with dg.instance_for_test() as instance:
        yield poll_store(instance, "docs")


def snapshot(store: KeyValueStore) -> Mapping[str, str]:
    return store.get_many(["progress", *(f"page/{slot}/{index}" for slot in (0, 1) for index in range(10))])


def test_a_pass_spans_ticks_and_resumes_from_its_token(store: KeyValueStore) -> None:
    assert tick(store, LISTING, pages_per_tick=1) == (["a", "b"], [])
    state = PollState(store)
    assert (state.pass_number, state.continuation_token, state.completed_passes) == (1, "1", 0)
    assert tick(store, LISTING, pages_per_tick=1) == (["c", "d"], [])
    assert tick(store, LISTING, pages_per_tick=1) == (["e"], [])
    state = PollState(store)
    assert (state.pass_number, state.continuation_token, state.completed_passes) == (2, None, 1)

    assert one_pass(store, LISTING, pages_per_tick=1) == ([], [])
    changed = [{"a": "1", "x": "1"}, {"c": "1", "d": "2"}, {"e": "1"}]  # b gone, x new, d changed
    assert tick(store, changed, pages_per_tick=1) == (["x"], [])
    assert tick(store, changed, pages_per_tick=1) == (["d"], [])
    # Vanished keys are known at the pass's end only.
    assert tick(store, changed, pages_per_tick=1) == ([], ["b"])
    assert one_pass(store, changed, pages_per_tick=2) == ([], [])


def test_vanished_keys_come_from_whole_passes_not_listing_order(store: KeyValueStore) -> None:
    one_pass(store, LISTING)
    # The same keys, in another order and other pages: nothing new, nothing vanished.
    reordered = [{"e": "1", "c": "1", "a": "1"}, {"d": "1"}, {"b": "1"}]
    assert one_pass(store, reordered, pages_per_tick=1) == ([], [])
    assert one_pass(store, [{"e": "1"}, {"a": "1"}], pages_per_tick=1) == ([], ["b", "c", "d"])


def test_an_uncommitted_tick_leaves_no_trace(store: KeyValueStore) -> None:
    one_pass(store, LISTING)
    before = snapshot(store)
    changed = [{"a": "2", "b": "1"}, {"c": "1"}]
    assert tick(store, changed, commit=False) == (["a"], ["d", "e"])
    assert snapshot(store) == before
    assert tick(store, changed) == (["a"], ["d", "e"])  # the next tick finds the same again
    assert snapshot(store) != before


def test_a_longer_older_generation_is_ignored(store: KeyValueStore) -> None:
    """Pages past a pass's count, left by an older and longer pass in the same slot, are never read."""
    long = [{f"k{2 * n}": "1", f"k{2 * n + 1}": "1"} for n in range(5)]
    one_pass(store, long)  # pass 1: pages 0-4 of slot 1
    one_pass(store, long)  # pass 2: slot 0
    assert one_pass(store, long[:2]) == ([], ["k4", "k5", "k6", "k7", "k8", "k9"])  # pass 3: slot 1, pages 0-1
    assert store.get_many(["page/1/4"])  # pass 1's page 4 is still there
    # k8 (on that leftover page) is back: new against pass 3; k2 and k3 vanished, nothing else.
    assert one_pass(store, [{"k0": "1", "k1": "1"}, {"k8": "1"}]) == (["k8"], ["k2", "k3"])


def test_a_pass_longer_than_the_last_in_its_slot_is_kept_whole(store: KeyValueStore) -> None:
    """One commit writes pages over an older pass's and past its end (new names and existing ones)."""
    one_pass(store, LISTING[:1])
    one_pass(store, LISTING[:1])
    assert one_pass(store, LISTING) == (["c", "d", "e"], [])  # slot 1 again: page 0 exists, pages 1-2 are new
    assert one_pass(store, LISTING) == ([], [])
    assert one_pass(store, LISTING[:1]) == ([], ["c", "d", "e"])


def test_cleared_state_starts_again(store: KeyValueStore) -> None:
    one_pass(store, LISTING)
    assert poll.has_state(store)
    poll.clear(store)
    assert not poll.has_state(store)
    assert one_pass(store, LISTING) == (["a", "b", "c", "d", "e"], [])


# --- the legacy SQLite file ----------------------------------------------------------------------


class LegacyPollState:
    """The file-backed PollState as it was before the state moved (commit bd51c57), trimmed to its SQL."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level="DEFERRED")
        self._db.execute("CREATE TABLE IF NOT EXISTS objects (object_key TEXT PRIMARY KEY, etag TEXT, pass INTEGER)")
        self._db.execute("CREATE TABLE IF NOT EXISTS progress (name TEXT PRIMARY KEY, value TEXT)")
        self._db.commit()

    def _get(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM progress WHERE name = ?", (name,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def _set(self, name: str, value: str | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO progress (name, value) VALUES (?, ?)", (name, value))

    def observe(self, listed: Iterable[ObjectInfo]) -> None:
        current = int(self._get("pass") or 1)
        for info in listed:
            self._db.execute(
                "INSERT OR REPLACE INTO objects (object_key, etag, pass) VALUES (?, ?, ?)",
                (info.object_key, info.etag, current),
            )

    def next_page(self, token: str | None) -> None:
        self._set("token", token)

    def finish_pass(self) -> None:
        current = int(self._get("pass") or 1)
        self._db.execute("DELETE FROM objects WHERE pass < ?", (current,))
        self._set("pass", str(current + 1))
        self._set("token", None)
        self._set("completed", str(int(self._get("completed") or 0) + 1))

    def close(self) -> None:
        self._db.commit()
        self._db.close()


def legacy_file(path: Path, passes: Listing, partial: dict[str, str] | None = None) -> Path:
    """Complete passes of one page each, then the first page of an unfinished pass, as the old sensor left them."""
    state = LegacyPollState(path)
    for page in passes:
        state.observe(infos(page))
        state.next_page(None)
        state.finish_pass()
    if partial is not None:
        state.observe(infos(partial))
        state.next_page("page-2")
    state.close()
    return path


@pytest.fixture
def migrated(tmp_path: Path) -> InMemoryStore:
    # Pass 1 saw a-c; pass 2 reported d (new) on its first page, then stopped.
    path = legacy_file(tmp_path / "docs-poll.sqlite", [{"a": "1", "b": "1", "c": "1"}], partial={"a": "1", "d": "1"})
    store = InMemoryStore()
    assert migrate_legacy_file(store, path)
    assert not path.exists() and path.with_name("docs-poll.sqlite.migrated").is_file()
    assert not migrate_legacy_file(store, path)  # once
    return store


def test_a_migrated_file_reports_nothing_for_an_unchanged_bucket(migrated: InMemoryStore) -> None:
    state = PollState(migrated)
    assert (state.pass_number, state.continuation_token, state.completed_passes) == (2, None, 1)
    assert one_pass(migrated, [{"a": "1", "b": "1"}, {"c": "1", "d": "1"}], pages_per_tick=1) == ([], [])


def test_a_migrated_file_reports_changed_and_vanished_keys(migrated: InMemoryStore) -> None:
    assert one_pass(migrated, [{"a": "1", "b": "2"}, {"d": "1"}], pages_per_tick=1) == (["b"], ["c"])


# --- in the Dagster instance ---------------------------------------------------------------------


def test_new_and_existing_names_are_stored_in_one_call(instance: dg.DagsterInstance) -> None:
    store = InstanceKeyValues(instance, "s3sync/test/")
    store.set_many({"a": "1"})
    store.set_many({"a": "2", "b": "3", "c": "4"})
    assert store.get_many(["a", "b", "c", "z"]) == {"a": "2", "b": "3", "c": "4"}
    assert InstanceKeyValues(instance, "s3sync/other/").get_many(["a"]) == {}


def test_instances_on_one_home_share_the_state(tmp_path: Path) -> None:
    """The daemon and the webserver each open the instance: what one commits, the other reads."""
    with dg.DagsterInstance.from_config(str(tmp_path)) as daemon, dg.DagsterInstance.from_config(str(tmp_path)) as web:
        assert tick(poll_store(daemon, "docs"), LISTING, pages_per_tick=2) == (["a", "b", "c", "d"], [])
        state = poll_state(web, "docs")
        assert (state.pass_number, state.continuation_token) == (1, "2")
        assert tick(poll_store(web, "docs"), LISTING) == (["e"], [])
        assert poll_state(daemon, "docs").completed_passes == 1
        assert one_pass(poll_store(daemon, "docs"), LISTING) == ([], [])
        assert poll_state(web, "other").pass_number == 1  # per source

        assert clear_poll_state(web, "docs")
        assert not clear_poll_state(daemon, "docs")
        assert one_pass(poll_store(daemon, "docs"), LISTING)[0] == ["a", "b", "c", "d", "e"]


def test_clearing_deletes_an_unmigrated_file(instance: dg.DagsterInstance) -> None:
    path = legacy_file(legacy_poll_file(instance, "docs"), [{"a": "1"}])
    assert clear_poll_state(instance, "docs")
    assert not path.exists() and not path.with_name(path.name + ".migrated").exists()
    assert poll_state(instance, "docs").completed_passes == 0


def test_the_poll_sensor_moves_a_legacy_file_in(
    make_config: ConfigFactory, s3: Any, bucket: str, instance: dg.DagsterInstance
) -> None:
    put(s3, bucket, {f"p/file-{n}.txt": f"file {n}\n" for n in range(4)})
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="p/")["Contents"]
    path = legacy_file(legacy_poll_file(instance, "docs"), [{e["Key"]: e["ETag"].strip('"') for e in listed}])
    # What the old sensor's runs left: the keys registered (a removal is for registered keys only).
    instance.add_dynamic_partitions(partitions_name("docs"), [to_partition_key(e["Key"]) for e in listed])
    config, _ = make_config(bucket, path_prefix="p/", poll_interval_seconds=30)
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def("docs_poll")

    def evaluate() -> dg.SensorResult:
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
            result = sensor_tick(sensor, context)
        assert isinstance(result, dg.SensorResult)
        return result

    result = evaluate()  # the bucket is what the file saw: nothing to do
    assert not result.run_requests and not result.dynamic_partitions_requests
    assert path.with_name(path.name + ".migrated").is_file() and not path.exists()
    s3.delete_object(Bucket=bucket, Key="p/file-2.txt")
    result = evaluate()
    assert [
        r.run_config["ops"][next(iter(r.run_config["ops"]))]["config"]["object_keys"] for r in result.run_requests or []
    ] == [["p/file-2.txt"]]


def test_remove_source_forgets_the_poll_state(
    make_config: ConfigFactory, bucket: str, instance: dg.DagsterInstance
) -> None:
    from s3sync_dagster.commands.runs.source_admin import remove_source

    config, _ = make_config(bucket, path_prefix="p/", poll_interval_seconds=30)
    one_pass(poll_store(instance, "docs"), LISTING)
    assert remove_source(config, "docs", instance).poll_state_deleted
    assert one_pass(poll_store(instance, "docs"), LISTING)[0] == ["a", "b", "c", "d", "e"]  # all new again
    poll.clear(poll_store(instance, "docs"))
    assert not remove_source(config, "docs", instance).poll_state_deleted
