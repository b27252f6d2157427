"""Drift audit and repair: real moto, embedded Chroma, a real Dagster instance; drift made behind the sync's back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from s3sync_dagster.commands import cli
from s3sync_dagster.commands.runs.audited_repair import repair
from s3sync_dagster.commands.runs.runner import sync
from s3sync_dagster.commands.subcommand import EXIT_OK
from s3sync_dagster.config import AppConfig
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import DRIFT_CHECK_NAME, documents_asset_key, repair_job_name
from s3sync_dagster.defs.resources import chroma_outside_runs, embedding_resource
from s3sync_dagster.defs.runs.checks import drift_of
from s3sync_dagster.pipeline.audit import drift as audit
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import ConfigFactory, put

FILES: dict[str, bytes | str] = {
    "a/keep.txt": "kept as it is\n",
    "a/change.txt": "first version\n",
    "a/gone.txt": "deleted behind the sync's back\n",
    "a/empty.txt": "",  # no text: legitimately no chunks, never reported missing
    "a/two.md": "# Two\n\nA second paragraph.\n\n## More\n\nAnd a third one.\n",
}


def _chunks(config: AppConfig, collection_name: str) -> dict[str, tuple[str, str]]:
    """Every chunk in the collection: id -> (object_key, etag)."""
    chroma = chroma_outside_runs(config.chroma)
    found = chroma.client().get_collection(collection_name).get(include=["metadatas"])
    return {
        chunk_id: (str(m["object_key"]), str(m["etag"]))
        for chunk_id, m in zip(found["ids"], found["metadatas"] or [], strict=True)
    }


def _drift(config: AppConfig, home_instance: dg.DagsterInstance, s3: Any) -> audit.Drift:
    source = config.source("docs")
    chroma = chroma_outside_runs(config.chroma)
    return drift_of(source, home_instance, s3, chroma, embedding_resource(config.embedding))


def _check_result(config: AppConfig, home_instance: dg.DagsterInstance) -> dg.AssetCheckEvaluation:
    """Run the drift check alone, through Dagster, as the UI's "Execute" does."""
    check_key = dg.AssetCheckKey(documents_asset_key("docs"), DRIFT_CHECK_NAME)
    job = dg.define_asset_job("drift_only", selection=dg.AssetSelection.checks(check_key))
    defs = dg.Definitions.merge(build_definitions(config), dg.Definitions(jobs=[job]))
    result = defs.resolve_job_def("drift_only").execute_in_process(instance=home_instance)
    assert result.success
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


@pytest.fixture
def drifted(
    s3: Any, bucket: str, make_config: ConfigFactory, home_instance: dg.DagsterInstance, embedding_function: Any
) -> tuple[AppConfig, Path, dict[str, tuple[str, str]]]:
    """A source synced once, then changed behind its back; returns the chunks the sync had written."""
    config, path = make_config(bucket, path_prefix="a/")
    put(s3, bucket, FILES)
    result = sync(config, "docs", home_instance, list(FILES))
    assert not result.failed
    assert {r["object_key"]: r["status"] for r in result.reports}["a/empty.txt"] == "empty"
    synced = _chunks(config, "docs-collection")
    # Sync runs do not audit the whole bucket: Dagster skips the asset's checks in them.
    for run in result.runs:
        assert not home_instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    assert _drift(config, home_instance, s3).clean  # the empty object is not missing

    put(s3, bucket, {"a/new.txt": "uploaded while nobody listened\n", "a/change.txt": "second version\n"})
    s3.delete_object(Bucket=bucket, Key="a/gone.txt")
    put(s3, bucket, {"b/outside.txt": "not under the prefix: not ours\n"})
    chroma = chroma_outside_runs(config.chroma)
    collection = chroma.client().get_collection("docs-collection")
    foreign = {"object_key": "a/phantom.txt", "source": "docs", "etag": "0" * 32}
    collection.add(
        ids=["phantom-0"],
        documents=["a chunk of nothing"],
        metadatas=[foreign],
        embeddings=embedding_function(["a chunk of nothing"]),
    )
    # A chunk of a writer this config does not know, in the source's own collection: foreign, which repair removes.
    other = {"object_key": "a/theirs.txt", "source": "other", "etag": "1" * 32}
    collection.add(ids=["theirs-0"], documents=["theirs"], metadatas=[other], embeddings=embedding_function(["theirs"]))
    return config, path, synced


def test_audit_reports_exactly_the_drift(drifted: Any, s3: Any, home_instance: dg.DagsterInstance) -> None:
    config, _, _ = drifted
    drift = _drift(config, home_instance, s3)
    assert drift.missing == ["a/new.txt"]
    assert drift.stale == ["a/change.txt"]
    assert drift.orphaned == ["a/gone.txt", "a/phantom.txt"]
    assert drift.unselected == []
    assert drift.empty == 1
    assert drift.listed == 5 and drift.indexed == 3  # keep, change, two (empty has no chunks, new none yet)
    assert drift.to_sync() == ["a/change.txt", "a/gone.txt", "a/new.txt", "a/phantom.txt"]


def test_repair_fixes_exactly_the_drift_and_the_check_says_so(
    drifted: Any, s3: Any, bucket: str, home_instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    config, path, synced = drifted
    failing = _check_result(config, home_instance)
    assert not failing.passed and failing.severity == dg.AssetCheckSeverity.WARN
    assert failing.metadata["missing_count"].value == 1
    assert failing.metadata["stale_count"].value == 1
    assert failing.metadata["orphaned_count"].value == 2
    table = failing.metadata["drift"]
    assert isinstance(table, dg.TableMetadataValue)
    rows = {(r.data["kind"], r.data["object_key"]) for r in table.records}
    assert rows == {
        ("missing", "a/new.txt"),
        ("stale", "a/change.txt"),
        ("orphaned", "a/gone.txt"),
        ("orphaned", "a/phantom.txt"),
    }

    # The CLI opens the instance of $DAGSTER_HOME: the one this test reads.
    code = cli.main(["repair", "docs", "--config", str(path), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK, payload
    assert payload["before"]["counts"] == {
        "missing": 1,
        "stale": 1,
        "orphaned": 2,
        "foreign": 1,
        "misplaced": 0,
        "lexicon": 1,
        "misembedded": 0,
    }
    assert payload["after"]["clean"] is True
    statuses = {r["object_key"]: r["status"] for r in payload["reports"]}
    assert statuses == {
        "a/new.txt": "indexed",
        "a/change.txt": "indexed",
        "a/gone.txt": "removed",
        "a/phantom.txt": "removed",
    }

    after = _chunks(config, "docs-collection")
    etags = {
        k: s3.head_object(Bucket=bucket, Key=k)["ETag"].strip('"')
        for k in ("a/keep.txt", "a/two.md", "a/change.txt", "a/new.txt")
    }
    by_key: dict[str, set[str]] = {}
    for object_key, etag in after.values():
        by_key.setdefault(object_key, set()).add(etag)
    assert by_key == {k: {e} for k, e in etags.items()}
    # Keys that had not drifted were not rewritten: same ids, same metadata as after the first sync.
    untouched = {cid: v for cid, v in synced.items() if v[0] in ("a/keep.txt", "a/two.md")}
    assert untouched and all(after[cid] == v for cid, v in untouched.items())
    assert _check_result(config, home_instance).passed


def test_repair_job_from_the_ui_audits_first(drifted: Any, s3: Any, home_instance: dg.DagsterInstance) -> None:
    config, _, _ = drifted
    job = build_definitions(config).get_job_def(repair_job_name("docs"))
    result = job.execute_in_process(instance=home_instance)  # no config: as launched from the UI
    assert result.success
    assert _drift(config, home_instance, s3).clean


def test_unselected_chunks_are_deleted_not_resynced(
    s3: Any, bucket: str, make_config: ConfigFactory, home_instance: dg.DagsterInstance
) -> None:
    config, _ = make_config(bucket)
    put(s3, bucket, {"a/doc.txt": "text\n", "a/skip.log": "a log line\n"})
    assert not sync(config, "docs", home_instance, ["a/doc.txt", "a/skip.log"]).failed
    # The user now excludes logs: their chunks are left behind, the objects are still there.
    config, _ = make_config(bucket, exclude=["*.log"])
    drift = _drift(config, home_instance, s3)
    assert drift.orphaned == drift.unselected == ["a/skip.log"] and drift.to_sync() == []
    result = repair(config, "docs", home_instance)
    assert result.success and result.after["clean"]
    assert {v[0] for v in _chunks(config, "docs-collection").values()} == {"a/doc.txt"}


def test_metadata_mode_audits_orphans_only(
    s3: Any, bucket: str, make_config: ConfigFactory, home_instance: dg.DagsterInstance
) -> None:
    config, _ = make_config(bucket, auto_sync="metadata", sqs_queue_url="http://127.0.0.1:1/queue")
    put(
        s3,
        bucket,
        {
            "a/doc.txt": "text\n",
            "a/doc.meta.json": json.dumps({"version": "chroma-v1", "id": "doc-1", "path": "a/doc.txt"}),
        },
    )
    assert not sync(config, "docs", home_instance, ["a/doc.meta.json"]).failed
    put(s3, bucket, {"a/unnamed.txt": "no meta file names me\n"})
    assert _drift(config, home_instance, s3).counts() == {
        "missing": None, "stale": 0, "orphaned": 0, "foreign": 0, "misplaced": 0, "lexicon": 0,
        "misembedded": 0,
    }  # fmt: skip
    s3.delete_object(Bucket=bucket, Key="a/doc.meta.json")
    drift = _drift(config, home_instance, s3)
    assert drift.orphaned == ["a/doc.meta.json"] and drift.to_sync() == ["a/doc.meta.json"]
    assert repair(config, "docs", home_instance).after["clean"]
    assert keys.to_partition_key("a/doc.meta.json") == "a/doc.meta.json"
