"""The `s3sync` command end to end: moto server, embedded Chroma, runs on a real Dagster instance."""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo.local_s3 import free_port
from s3sync_dagster.config import AppConfig
from s3sync_dagster.defs import failpoints
from s3sync_dagster.defs.failpoints import FAILPOINTS_ENV
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import TEST_KEY_ID, TEST_SECRET, ConfigFactory, put


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_sync_all_uses_a_handful_of_runs_then_skips_everything(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(s3, bucket, {f"bulk/file-{n:03d}.txt": f"small file number {n}\n" for n in range(200)})
    _, path = make_config(bucket, path_prefix="bulk/")
    code, first = run_json(capsys, "sync", "docs", "--all", "--config", str(path))
    assert code == 0, first
    assert first["counts"] == {"indexed": 200}
    assert len(first["runs"]) == 2  # 100 keys per run
    with dg.DagsterInstance.get() as instance:
        assert len(instance.get_run_records()) == 2
    code, second = run_json(capsys, "sync", "docs", "--all", "--config", str(path))
    assert code == 0 and second["counts"] == {"unchanged": 200}
    assert all(k["chunks_written"] == 0 for k in second["keys"])

    code, found = run_json(capsys, "query", "docs", "small file number 42", "-n", "3", "--config", str(path))
    assert code == 0 and found["results"][0]["object_key"] == "bulk/file-042.txt"


def test_discover_then_sync_keys_with_a_failure(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(s3, bucket, {"d/ok.md": "# ok\n", "d/bad.txt": b"\xc3\x28", "d/skip.log": "x", "other/x.md": "# no\n"})
    _, path = make_config(bucket, path_prefix="d/", exclude=["*.log"])
    code, found = run_json(capsys, "discover", "docs", "--config", str(path))
    assert code == 0 and found["listed"] == 2 and found["new"] == 2
    code, again = run_json(capsys, "discover", "docs", "--config", str(path))
    assert again["new"] == 0 and again["registered"] == 2

    code, result = run_json(capsys, "sync", "docs", "--key", "d/ok.md", "--key", "d/bad.txt", "--config", str(path))
    assert code == 1
    assert result["counts"] == {"indexed": 1, "failed": 1}, result["keys"]
    assert result["failed"][0]["object_key"] == "d/bad.txt"
    assert "byte 0xc3 at offset 0" in result["failed"][0]["message"]


def test_usage_and_config_errors_exit_2(
    bucket: str, make_config: ConfigFactory, dagster_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = make_config(bucket, path_prefix="p/")
    assert main(["sync", "docs", "--config", str(path)]) == 2
    assert "give --key KEY" in capsys.readouterr().err
    assert main(["sync", "nope", "--all", "--config", str(path)]) == 2
    assert "no source named 'nope'" in capsys.readouterr().err
    assert main(["sync", "docs", "--key", "elsewhere/x.txt", "--config", str(path)]) == 2
    assert "does not start with source 'docs' path_prefix 'p/'" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("sources:\n  - name: docs\n    bucket_name: b\n")
    assert main(["sources", "--config", str(broken)]) == 2
    assert "sources[0] (source 'docs').region: Field required" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main(["sync", "docs", "--all", "--key", "p/x", "--config", str(path)]) == 2
    assert "not both" in capsys.readouterr().err


def test_store_and_credential_problems_exit_2_in_one_line(
    s3: Any,
    bucket: str,
    make_config: ConfigFactory,
    dagster_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, path = make_config("no-such-bucket-here")
    code, out = run_json(capsys, "discover", "docs", "--config", str(path))
    assert code == 2 and "bucket_name: bucket 'no-such-bucket-here' does not exist" in out["error"]
    code, out = run_json(capsys, "sync", "docs", "--all", "--config", str(path))
    assert code == 2 and "no-such-bucket-here" in out["error"]

    _, path = make_config(bucket, aws_secret_access_key={"env": "S3SYNC_TEST_UNSET"})
    monkeypatch.delenv("S3SYNC_TEST_UNSET", raising=False)
    code, out = run_json(capsys, "sync", "docs", "--all", "--config", str(path))
    assert code == 2
    assert out["error"].startswith(
        "source 'docs' aws_secret_access_key: environment variable S3SYNC_TEST_UNSET is not set: set it where "
    )

    _, path = make_config(bucket, endpoint_url=f"http://127.0.0.1:{free_port()}")
    code, out = run_json(capsys, "discover", "docs", "--config", str(path))
    assert (
        code == 2
        and "S3 endpoint http://127.0.0.1:" in out["error"]
        and "cannot be reached: Connection refused" in out["error"]
    )

    _, path = make_config(bucket)
    code, out = run_json(capsys, "query", "docs", "anything", "--config", str(path))
    assert (
        code == 2
        and out["error"] == "source 'docs' has not been synced yet: collection 'docs-collection' does not exist"
    )


def test_sources_lists_without_secrets(
    bucket: str, make_config: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = make_config(bucket)
    code, listed = run_json(capsys, "sources", "--config", str(path))
    assert code == 0 and listed["sources"][0]["name"] == "docs"
    credentials = listed["sources"][0]["credentials"]
    assert credentials["aws_access_key_id"] == {"env": "S3SYNC_TEST_KEY_ID", "set": True}
    assert credentials["from"] == "environment variables"
    printed = json.dumps(listed)
    assert TEST_SECRET not in printed and TEST_KEY_ID not in printed


def test_no_secret_in_output_events_run_config_or_metadata(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(s3, bucket, {"s/good.txt": "hello\n", "s/bad.txt": b"\x80"})
    _, path = make_config(bucket, path_prefix="s/")
    code = main(["sync", "docs", "--all", "--config", str(path)])
    captured = capsys.readouterr()
    assert code == 1
    seen = [captured.out, captured.err]
    with dg.DagsterInstance.get() as instance:
        for record in instance.get_run_records():
            seen.append(json.dumps(record.dagster_run.run_config, default=str))
            seen.append(json.dumps(record.dagster_run.tags))
            for entry in instance.all_logs(record.dagster_run.run_id):
                seen.append(entry.user_message or "")
                seen.append(str(entry.dagster_event))
    for path_ in dagster_home.rglob("*"):
        if path_.is_file() and path_.suffix in (".out", ".err", ".complete", ".json", ".yaml", ".log"):
            seen.append(path_.read_text(errors="replace"))
    text = "\n".join(seen)
    assert "s/bad.txt" in text  # the failure itself is reported...
    assert TEST_SECRET not in text and TEST_KEY_ID not in text  # ...but no credential anywhere


def test_a_plain_chromadb_client_elsewhere_gets_the_same_top_results_as_s3sync_query(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from s3sync_dagster_tests.engine.test_model import plain_client_query

    notes = {
        "kb/deploy.md": "# Deploys\n\nDrain the node, roll the release, then watch the error rate for ten minutes.\n",
        "kb/soup.md": "# Soup\n\nLeeks, potatoes and a little cream, simmered for half an hour.\n",
        "kb/tax.md": "# Taxes\n\nQuarterly filings are due fifteen days after the quarter closes.\n",
        "kb/birds.txt": "Swifts spend most of their lives in the air and can stay aloft for months.\n",
        "kb/code.py": "def replace_chunks(collection, records):\n    return collection.upsert(ids=[r.id for r in records])\n",
    }
    put(s3, bucket, notes)
    config, path = make_config(bucket, path_prefix="kb/")
    code, synced = run_json(capsys, "sync", "docs", "--all", "--config", str(path))
    assert code == 0 and synced["counts"] == {"indexed": 5}
    queries = ["how do I roll out a release", "leek soup", "when are taxes due", "birds that never land", "upsert"]
    ours, hybrid = [], []
    for query in queries:
        code, found = run_json(capsys, "query", "docs", query, "-n", "3", "--mode", "dense", "--config", str(path))
        assert code == 0 and found["mode"] == "dense"
        ours.append([hit["id"] for hit in found["results"]])
        code, found = run_json(capsys, "query", "docs", query, "-n", "3", "--config", str(path))  # hybrid
        assert code == 0 and found["mode"] == "hybrid"
        hybrid.append(found["results"][0]["id"])
    assert [hits[0] for hits in ours] == [keys.object_id(key) + "-0" for key in notes]
    assert hybrid == [hits[0] for hits in ours]  # the words do not pull a meaning query off its chunk
    # A fresh process with chromadb alone (no project code, no torch), as an application elsewhere: its
    # query is the dense side of ours.
    store = Path(str(config.chroma.path))
    assert plain_client_query(store, "docs-collection", queries) == ours


def stored_and_expected(config: AppConfig, files: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The source's chunks in the store (id: text), and those of `files` (one chunk each), to compare."""
    store = config.chroma.store().client().get_collection(config.source("docs").collection_name)
    found = store.get(include=["documents"])
    stored = dict(zip(found["ids"], found["documents"], strict=True))
    return stored, {keys.chunk_id(keys.object_id(object_key), 0): text for object_key, text in files.items()}


RETRIES = "telemetry:\n  enabled: false\nrun_retries:\n  enabled: true\n  max_retries: 2\n"


@pytest.mark.parametrize("retries", ["on", "off"])
def test_a_repair_run_that_fails_as_a_whole_is_tried_again_on_the_drift_it_left(
    retries: str,
    s3: Any,
    bucket: str,
    make_config: ConfigFactory,
    dagster_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`s3sync repair`'s run is executed by the command, which the daemon cannot retry: the command audits again
    and repairs what the failed run left, within the instance's run_retries. 200 objects never synced (four write
    batches of up to 64); the run fails once its first key is reported (failpoint run:lost, raised once in the
    process: as a lost worker), and the keys it had not written yet are left as drift."""
    if retries == "on":
        (dagster_home / "dagster.yaml").write_text(RETRIES)
    files = {f"p/file-{n:03d}.txt": f"repaired file number {n}\n" for n in range(200)}
    put(s3, bucket, files)
    config, path = make_config(bucket, path_prefix="p/")
    monkeypatch.setenv(FAILPOINTS_ENV, "run:lost")
    monkeypatch.setattr(failpoints, "_failed", set())  # once in this test, whatever ran before in the process
    code, result = run_json(capsys, "repair", "docs", "--config", str(path))
    first = result["runs"][0]
    assert not first["success"] and first["keys"] == 200 and first["retry"] == 0, result["runs"]
    assert "FailpointError: failpoint run:lost: this run fails here" in first["error"], first
    stored, every = stored_and_expected(config, files)
    reported = sorted(report["object_key"] for report in result["reports"])
    if retries == "on":
        assert code == 0, result
        [second] = result["runs"][1:]
        assert (second["success"], second["retry"], second["error"]) == (True, 1, ""), second
        assert 1 <= second["keys"] < 200  # the drift the failed run left: the keys it had not written
        assert result["success"] and result["after"]["clean"] and result["failed"] == [], result
        assert result["synced"] == 200 and reported == sorted(files), reported
        assert stored == every
    else:
        assert code == 1 and len(result["runs"]) == 1 and not result["after"]["clean"], result
        assert result["failed"] and reported == sorted(files), result["failed"]
        assert all("failpoint run:lost" in report["message"] for report in result["failed"]), result["failed"]
        assert stored.items() <= every.items() and 1 <= len(stored) < 200, len(stored)
    with dg.DagsterInstance.get() as instance:
        assert len(instance.get_run_records()) == len(result["runs"])


@pytest.mark.parametrize("retries", ["on", "off"])
def test_a_run_that_fails_as_a_whole_is_tried_again_and_says_why(
    retries: str,
    s3: Any,
    bucket: str,
    make_config: ConfigFactory,
    dagster_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon cannot retry the runs `s3sync sync` executes (they have no code location to be launched from
    again): the command tries again the keys a run that failed as a whole did not reach, within the instance's
    run_retries (on in the repo's dagster.yaml), and every failed run says why. The run fails after its first key
    is reported (failpoint run:lost, raised once in the process: as a lost worker)."""
    if retries == "on":
        (dagster_home / "dagster.yaml").write_text(RETRIES)
    files = {f"r/file-{n}.txt": f"retried file number {n}\n" for n in range(4)}
    put(s3, bucket, files)
    config, path = make_config(bucket, path_prefix="r/")
    monkeypatch.setenv(FAILPOINTS_ENV, "run:lost")
    monkeypatch.setattr(failpoints, "_failed", set())  # once in this test, whatever ran before in the process
    code, result = run_json(capsys, "sync", "docs", "--all", "--config", str(path))
    first = result["runs"][0]
    assert not first["success"] and first["keys"] == 4 and first["retry"] == 0
    assert "FailpointError: failpoint run:lost: this run fails here" in first["error"], first
    if retries == "on":
        assert code == 0, result
        assert [(run["success"], run["keys"], run["retry"], run["error"]) for run in result["runs"][1:]] == [
            (True, 3, 1, "")
        ]
        assert sum(result["counts"].values()) == 4 and set(result["counts"]) <= {"indexed", "unchanged"}, result
        assert result["failed"] == [] and result["not_tried"] == []
    else:
        assert code == 1 and len(result["runs"]) == 1, result
        assert result["counts"] == {"indexed": 1, "failed": 3}, result
        assert all(f"run {first['run_id']} failed before it reported" in k["message"] for k in result["failed"])
        assert all("failpoint run:lost" in k["message"] for k in result["failed"])
    with dg.DagsterInstance.get() as instance:
        assert len(instance.get_run_records()) == len(result["runs"])
    stored, every = stored_and_expected(config, files)
    if retries == "on":
        assert stored == every
    else:  # the keys reported failed may have been written before the run stopped: never anything else
        reported = {
            keys.chunk_id(keys.object_id(k["object_key"]), 0) for k in result["keys"] if k["status"] == "indexed"
        }
        assert reported <= set(stored) and stored.items() <= every.items(), stored

    # A run that fails after its one key is reported: nothing to try again, the key synced, the run's line says why.
    capsys.readouterr()
    monkeypatch.setattr(failpoints, "_failed", set())
    put(s3, bucket, {"r/file-0.txt": "retried file number 0, changed\n"})
    code = main(["sync", "docs", "--key", "r/file-0.txt", "--config", str(path)])
    said = capsys.readouterr().out
    assert (
        code == 0 and "1 indexed" in said and "FAILED: s3sync_dagster.defs.failpoints.FailpointError: failpoint" in said
    ), said
