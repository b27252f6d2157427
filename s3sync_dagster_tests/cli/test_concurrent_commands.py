"""Commands at the same time (issue 35, part 7): each ends with its summary and exact counts, the index exact.

`sync`, `repair`, `discover`, `remove-source` and the sensors may work on one source at once. A repair's
run (or a sensor's) removes the partitions of objects gone from the bucket, and `remove-source` all of a
source's, while a sync has already listed them and is about to launch ranged runs over them: the sync
reports each such key (`removed` when its object is gone, synced again when it is still there), never a
traceback. A `.meta.json` naming a document not uploaded yet is `waiting`, not missing, to the audit.

Real parts throughout: a moto server over HTTP, embedded Chroma, a real Dagster home, the `s3sync`
command. The interleavings are made certain, not raced against a clock: `runner.sync`'s `on_start` (told
just before the first run starts, once the keys are listed and batched) runs the other command to its
end; a hook on the instance's `has_dynamic_partition`, which Dagster asks about a run's range when it
creates the run and again in its step, removes a partition at that very moment, as another command
would. The last case starts `sync --all` and `repair` as two real processes together.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.runs import runner
from s3sync_dagster.commands.runs.audited_repair import RepairResult, repair
from s3sync_dagster.commands.runs.source_admin import remove_source
from s3sync_dagster.config import AppConfig
from s3sync_dagster.defs.names import partitions_name
from s3sync_dagster.defs.resources import chroma_outside_runs
from s3sync_dagster_tests.conftest import Chunks, ConfigFactory, Row, put, store_chunks

pytestmark = pytest.mark.reliability("shared stores")

REPO = Path(__file__).resolve().parents[2]
COLLECTION = "docs-collection"
PARTITIONS = partitions_name("docs")
# One line per object and one line per chunk: each object is exactly one chunk, its whole text.
ONE_CHUNK_EACH = {"chunking": {"type": "lines", "max_lines": 1}}


def sha_id(object_key: str) -> str:
    """Chroma Sync's document id, written out here rather than taken from the code under test."""
    return hashlib.sha256(object_key.encode()).hexdigest()


def exact(contents: dict[str, str], collection_name: str = COLLECTION) -> Chunks:
    """The chunks Chroma must hold for these objects: one each, under the object's own id."""
    return {(collection_name, f"{sha_id(object_key)}-0"): text for object_key, text in contents.items()}


@dataclass
class Source:
    """The case's source `docs` on its bucket, on the Dagster home of $DAGSTER_HOME."""

    s3: Any
    bucket: str
    config: AppConfig
    path: Path
    instance: dg.DagsterInstance

    def contents(self) -> dict[str, str]:
        """Every object in the bucket with its text, as the index must hold it."""
        listed = self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return {
            item["Key"]: self.s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read().decode()
            for item in listed
        }

    def chunks(self) -> list[tuple[str, str, str]]:
        return store_chunks(chroma_outside_runs(self.config.chroma).client())

    def remove_chunks(self, object_key: str) -> None:
        client = chroma_outside_runs(self.config.chroma).client()
        if COLLECTION in [collection.name for collection in client.list_collections()]:
            client.get_collection(COLLECTION).delete(where={"object_key": object_key})

    def stillborn_runs(self) -> list[str]:
        """Runs created and never started (they would count as in flight to `remove-source` for ever)."""
        records = self.instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.NOT_STARTED]))
        return [record.dagster_run.run_id for record in records]


@pytest.fixture
def source_factory(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path
) -> Iterator[Callable[..., Source]]:
    with dg.DagsterInstance.get() as instance:

        def make(**settings: Any) -> Source:
            config, path = make_config(bucket, path_prefix="d/", **{**ONE_CHUNK_EACH, **settings})
            return Source(s3, bucket, config, path, instance)

        yield make


def check(row: Row, source: Source) -> None:
    expected, found = exact(source.contents()), source.chunks()
    row.observe(expected, found)
    assert {(c, i): text for c, i, text in found} == expected
    assert len(found) == len(expected)


def accounted(result: runner.SyncResult) -> dict[str, str]:
    """Every key asked has one outcome and the counts add up: each key's status."""
    assert sum(result.counts().values()) == result.asked == len(result.reports) + len(result.not_tried), result
    statuses = {report["object_key"]: report["status"] for report in result.reports}
    assert len(statuses) == len(result.reports), "a key reported twice"
    return statuses


# --- the bucket the tester used: 20 changed, 10 deleted, 10 new objects -------------------------------------

# Every third key is deleted, so deleted keys open, close and sit inside the ranges of the sync's runs.
FIRST = {f"d/k-{n:02}.txt": f"object {n}, first version\n" for n in range(30)}
DELETED = [key for n, key in enumerate(FIRST) if n % 3 == 0]
CHANGED = {key: text.replace("first", "second") for key, text in FIRST.items() if key not in DELETED}
NEW = {f"d/n-{n:02}.txt": f"new object {n}\n" for n in range(10)}


def synced_then_changed(source: Source) -> None:
    """The first version synced; then 20 objects changed, 10 deleted and 10 new behind the sync's back."""
    put(source.s3, source.bucket, dict(FIRST))
    runner.discover(source.config, "docs", source.instance)
    first = runner.sync(source.config, "docs", source.instance, batch_size=len(FIRST))
    assert accounted(first) == dict.fromkeys(FIRST, "indexed")
    put(source.s3, source.bucket, {**CHANGED, **NEW})
    for object_key in DELETED:
        source.s3.delete_object(Bucket=source.bucket, Key=object_key)


def test_sync_reports_the_keys_a_repair_removed_after_it_listed_them(
    source_factory: Callable[..., Source], fault_row: Row
) -> None:
    source = source_factory()
    synced_then_changed(source)
    runner.discover(source.config, "docs", source.instance)  # as `sync --all` does: the new keys are registered
    repaired: list[RepairResult] = []

    def repair_now(keys_to_sync: int) -> None:
        assert keys_to_sync == 40  # listed and batched: the 10 deleted keys are still partitions
        repaired.append(repair(source.config, "docs", source.instance))

    # Runs of 4 keys: the repair removes the partitions at the start, the end and inside of the ranges.
    result = runner.sync(source.config, "docs", source.instance, batch_size=4, on_start=repair_now)
    [done] = repaired
    assert done.success and done.after["clean"] and not done.failed, done
    assert set(source.instance.get_dynamic_partitions(PARTITIONS)) == {*CHANGED, *NEW}
    statuses = accounted(result)
    # The repair indexed the changed and new objects and removed the deleted ones' chunks and partitions.
    assert statuses == {**dict.fromkeys(DELETED, "removed"), **dict.fromkeys([*CHANGED, *NEW], "unchanged")}
    assert sorted(result.removed_elsewhere) == DELETED
    for report in result.reports:
        if report["status"] == "removed":
            assert f"'{report['object_key']}'" in report["message"] and "another command" in report["message"]
    assert not result.failed and all(run.success for run in result.runs)
    assert source.stillborn_runs() == []
    check(fault_row, source)
    fault_row.passed = True


@pytest.mark.parametrize(
    ("moment", "victim", "object_gone"),
    [
        pytest.param("at launch", 0, True, id="at-launch-range-start-object-gone"),
        pytest.param("at launch", -1, False, id="at-launch-range-end-object-still-there"),
        pytest.param("in the run", 0, True, id="in-run-range-start-object-gone"),
        pytest.param("in the run", 2, True, id="in-run-inside-range-object-gone"),
    ],
)
def test_a_partition_removed_as_dagster_checks_the_range(
    source_factory: Callable[..., Source],
    monkeypatch: pytest.MonkeyPatch,
    moment: str,
    victim: int,
    object_gone: bool,
    fault_row: Row,
) -> None:
    """Between the sync's last look at the partitions and Dagster's own, as the run is created or in its step.

    The hook is the one stand-in here: at that instant it does what a repair's run does to a gone object
    (its chunks, then its partition) or `remove-source` to a present one; Dagster then finds the range broken.
    """
    source = source_factory()
    contents = {f"d/r-{n}.txt": f"ranged object {n}\n" for n in range(5)}
    put(source.s3, source.bucket, {**contents})
    runner.discover(source.config, "docs", source.instance)
    object_key = list(contents)[victim]
    if object_gone:
        source.s3.delete_object(Bucket=source.bucket, Key=object_key)
    instance = source.instance
    checked = instance.has_dynamic_partition
    done: list[str] = []

    def another_command_meanwhile(*args: Any, **kwargs: Any) -> bool:
        runs = {record.dagster_run.status for record in instance.get_run_records()}
        now = dg.DagsterRunStatus.STARTED if moment == "in the run" else dg.DagsterRunStatus.NOT_STARTED
        if not done and now in runs:
            source.remove_chunks(object_key)
            instance.delete_dynamic_partition(PARTITIONS, object_key)
            done.append(object_key)
        return checked(*args, **kwargs)

    monkeypatch.setattr(instance, "has_dynamic_partition", another_command_meanwhile)
    result = runner.sync(source.config, "docs", instance)
    assert done == [object_key]
    statuses = accounted(result)
    assert statuses == {**dict.fromkeys(contents, "indexed"), object_key: "removed" if object_gone else "indexed"}
    if object_gone:
        [said] = [report["message"] for report in result.reports if report["object_key"] == object_key]
        assert f"'{object_key}'" in said and "another command" in said, said
        assert object_key not in instance.get_dynamic_partitions(PARTITIONS)
    else:
        assert object_key in instance.get_dynamic_partitions(PARTITIONS)  # registered again, and synced
    assert not result.failed and source.stillborn_runs() == []
    check(fault_row, source)
    fault_row.passed = True


def test_sync_goes_on_after_remove_source_took_its_partitions(
    source_factory: Callable[..., Source], fault_row: Row
) -> None:
    # The objects are all still there: a sync asked for every key registers them again and indexes them.
    source = source_factory(keys_per_run=2)
    contents = {f"d/s-{n}.txt": f"kept object {n}\n" for n in range(5)}
    put(source.s3, source.bucket, {**contents})
    runner.discover(source.config, "docs", source.instance)
    removed: list[int] = []

    def remove_now(keys_to_sync: int) -> None:
        removed.append(remove_source(source.config, "docs", source.instance).partitions_deleted)

    result = runner.sync(source.config, "docs", source.instance, on_start=remove_now)
    assert removed == [5]
    assert accounted(result) == dict.fromkeys(contents, "indexed") and not result.failed
    assert sorted(source.instance.get_dynamic_partitions(PARTITIONS)) == sorted(contents)
    assert source.stillborn_runs() == []
    check(fault_row, source)
    fault_row.passed = True


# --- a metadata file that waits for its document ---------------------------------------------------------------


def meta_file(document_id: str, path: str) -> str:
    return json.dumps({"version": "chroma-v1", "id": document_id, "path": path})


def test_repair_counts_a_metadata_file_waiting_for_its_document_apart(
    source_factory: Callable[..., Source], capsys: pytest.CaptureFixture[str], fault_row: Row
) -> None:
    source = source_factory()

    def cli(*argv: str) -> tuple[int, Any]:
        code = main([*argv, "--config", str(source.path), "--json"])
        return code, json.loads(capsys.readouterr().out)

    put(
        source.s3,
        source.bucket,
        {"d/plain.txt": "plain text\n", "d/early.meta.json": meta_file("early", "d/early.txt")},
    )
    code, synced = cli("sync", "docs", "--all")
    assert code == 0 and synced["counts"] == {"indexed": 1, "waiting": 1}, synced
    code, repaired = cli("repair", "docs")
    before = repaired["before"]
    assert before["missing"] == [] and before["waiting"] == {"d/early.meta.json": "d/early.txt"}, before
    assert code == 0 and before["clean"] and repaired["run_id"] is None, repaired

    # One never synced yet: the repair syncs it once, so that its document's upload completes it.
    put(source.s3, source.bucket, {"d/late.meta.json": meta_file("late", "d/late.txt")})
    code, repaired = cli("repair", "docs")
    assert code == 0 and repaired["run_id"] is not None, repaired
    assert [(r["object_key"], r["status"]) for r in repaired["reports"]] == [("d/late.meta.json", "waiting")]
    assert repaired["after"]["clean"] and len(repaired["after"]["waiting"]) == 2, repaired
    code, again = cli("repair", "docs")
    assert code == 0 and again["run_id"] is None and len(again["before"]["waiting"]) == 2, again

    # The document arrives: the metadata file is missing now, and the repair indexes it.
    put(source.s3, source.bucket, {"d/early.txt": "the early document\n"})
    code, repaired = cli("repair", "docs")
    assert code == 0 and repaired["after"]["clean"], repaired
    assert repaired["before"]["missing"] == ["d/early.meta.json", "d/early.txt"], repaired["before"]
    assert repaired["after"]["waiting"] == {"d/late.meta.json": "d/late.txt"}
    expected = {
        **exact({"d/plain.txt": "plain text\n", "d/early.txt": "the early document\n"}),
        (COLLECTION, "early-0"): "the early document\n",
    }
    found = source.chunks()
    fault_row.observe(expected, found)
    assert {(c, i): text for c, i, text in found} == expected
    fault_row.passed = True


# --- two real processes --------------------------------------------------------------------------------------


def command(source: Source, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "s3sync_dagster.commands.cli", *argv, "--config", str(source.path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def test_sync_all_and_repair_started_together_both_finish(
    source_factory: Callable[..., Source], fault_row: Row
) -> None:
    source = source_factory(keys_per_run=5)
    synced_then_changed(source)
    syncing, repairing = command(source, "sync", "docs", "--all"), command(source, "repair", "docs")
    results = {}
    for name, process in (("sync", syncing), ("repair", repairing)):
        out, err = process.communicate(timeout=240)
        assert out.strip(), f"{name} printed no summary (exit {process.returncode}): {err[-3000:]}"
        results[name] = (process.returncode, json.loads(out), err)
    code, synced, err = results["sync"]
    assert code == 0, (synced, err[-3000:])
    assert sum(synced["counts"].values()) == synced["asked"] == len(synced["keys"]), synced
    assert not synced["failed"] and not synced["not_tried"] and "error" not in synced, synced
    statuses = {report["object_key"]: report["status"] for report in synced["keys"]}
    assert set(statuses) <= {*FIRST, *NEW} and {*CHANGED, *NEW} <= set(statuses), statuses
    for object_key, status in statuses.items():
        assert status in (("removed",) if object_key in DELETED else ("indexed", "unchanged")), (object_key, status)
    code, repaired, err = results["repair"]
    assert code == 0 and repaired["after"]["clean"] and not repaired["failed"], (repaired, err[-3000:])
    assert set(source.instance.get_dynamic_partitions(PARTITIONS)) == {*CHANGED, *NEW}
    assert source.stillborn_runs() == []
    check(fault_row, source)
    fault_row.passed = True
