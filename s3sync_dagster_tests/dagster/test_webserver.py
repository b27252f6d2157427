"""The UI's workflow end to end: `dagster dev` on a loopback port, GraphQL as the UI sends it, the CLI
on the same instance, a `chroma run` server, and headless Chromium on the asset's page.

The tests share one server and run in file order: each builds on what the previous one left.
"""

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.servers.dagster_server import (
    CHECK_EXECUTIONS,
    LATEST,
    OBSERVATIONS,
    PARTITIONS,
    RUN_FAILURES,
    RUNS,
    DagsterDev,
    chromium_page,
    dagster_dev,
)
from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo.local_s3 import LOOPBACK
from s3sync_dagster.defs.names import INDEX_CHECK_NAME as CHECK_NAME
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import TEST_KEY_ID, TEST_SECRET, put
from s3sync_dagster_tests.dagster.test_invocations import validate_jobs

SOURCE = "web"
ASSET = [SOURCE, "documents"]
PARTITIONS_DEF = f"{SOURCE}_objects"
FILES: dict[str, bytes | str] = {
    "web/alpha.md": "# Alpha\n\nThe alpha handbook explains how zebras are fed.\n",
    "web/beta.py": "def beta():\n    '''Beta computes the quarterly llama census.'''\n    return 42\n",
    "web/gamma.txt": "Gamma: the gazebo is painted every spring.\n",
    "web/delta, notes.txt": "Delta notes: the dolphin tank holds 3000 litres.\n",
    "web/bad.txt": b"\xff\xfe\x00 not text",
}


@dataclass
class Live:
    server: DagsterDev
    config_file: Path
    home: Path
    collection_name: str
    chroma_port: int
    output: Path
    check_runs: list[str]

    def collection(self, name: str | None = None) -> Any:
        import chromadb

        return chromadb.HttpClient(host=LOOPBACK, port=self.chroma_port).get_collection(name or self.collection_name)

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
        code = main([*argv, "--config", str(self.config_file), "--json"])
        out = capsys.readouterr().out
        return code, json.loads(out) if out.strip() else None


@pytest.fixture(scope="module")
def live(s3: Any, moto_endpoint: str, chroma_server: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    base = tmp_path_factory.mktemp("webserver")
    bucket = f"s3sync-web-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    put(s3, bucket, FILES)
    collection_name = f"web-{os.getpid()}"
    config = {
        "chroma": {"host": LOOPBACK, "port": chroma_server},
        "sources": [
            {
                "name": SOURCE,
                "bucket_name": bucket,
                "region": "us-east-1",
                "collection_name": collection_name,
                "endpoint_url": moto_endpoint,
                "path_prefix": "web/",
                "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"},
                "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
                "keys_per_run": 2,
            }
        ],
    }
    config_file = base / "s3sync.yaml"
    config_file.write_text(yaml.safe_dump(config))
    home = base / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((Path(__file__).parents[2] / "dagster.yaml").read_text())
    saved = {name: os.environ.get(name) for name in ("DAGSTER_HOME", "S3SYNC_CONFIG")}
    os.environ["DAGSTER_HOME"] = str(home)  # the CLI below works on the server's instance
    try:
        with dagster_dev(home, config_file, base / "dagster-dev.log") as server:
            yield Live(server, config_file, home, collection_name, chroma_server, base, [])
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def partitions(live: Live) -> dict[str, Any]:
    node = live.server.gql(PARTITIONS, assetKey={"path": ASSET})["assetNodeOrError"]
    return {"keys": node["partitionKeys"], **node["assetPartitionStatuses"]}


def latest_metadata(live: Live, partition_key: str) -> dict[str, Any]:
    latest = live.server.gql(LATEST, assetKey={"path": ASSET}, partitions=[partition_key])
    entry = latest["assetNodeOrError"]["latestMaterializationByPartition"][0]
    assert entry is not None, f"{partition_key} has no materialisation"
    return {
        item["label"]: next((v for k, v in item.items() if k != "label"), None) for item in entry["metadataEntries"]
    }


def chunk_metadatas(live: Live, object_key: str, collection: str | None = None) -> dict[str, dict[str, Any]]:
    found = live.collection(collection).get(where={"object_key": object_key}, include=["metadatas"])
    return dict(zip(found["ids"], found["metadatas"], strict=True))


def test_cli_invocation_runs_on_the_daemon_and_a_ui_reexecution_keeps_its_parameters(
    live: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    code, row = live.cli(
        capsys, "invoke", SOURCE, "web/alpha.md", "--custom-id", "alpha-doc",
        "--metadata", '{"team": "docs", "year": 2026}', "--wait",
    )  # fmt: skip
    assert code == 0, row
    assert "complete" in row["status"] and row["status"]["complete"]["duration_ms"] > 0
    validate_jobs([row])
    stored = chunk_metadatas(live, "web/alpha.md")
    assert sorted(stored) == ["alpha-doc-0"]
    assert stored["alpha-doc-0"]["team"] == "docs" and stored["alpha-doc-0"]["year"] == 2026
    assert stored["alpha-doc-0"]["custom_id"] == "alpha-doc"

    # The daemon's invocation sensor made the run: it carries the invocation's id.
    assert row["run_id"] != row["id"]
    run = live.server.run(row["run_id"])
    run_tags = {tag["key"]: tag["value"] for tag in run["tags"]}
    assert run_tags["s3sync/invocation"] == row["id"] and run_tags["dagster/sensor_name"] == "s3sync_invocations"
    # What the UI shows of the run: its parameters are the run config.
    assert yaml.safe_load(run["runConfigYaml"])["ops"]["web__documents"]["config"]["custom_id"] == "alpha-doc"
    # Re-executed from the UI: same parameters, same partition, and nothing duplicated.
    live.collection().delete(ids=["alpha-doc-0"])
    again = live.server.wait_run(live.server.reexecute(row["run_id"]))
    assert again["status"] == "SUCCESS" and again["parentRunId"] == row["run_id"]
    assert yaml.safe_load(again["runConfigYaml"]) == yaml.safe_load(run["runConfigYaml"])
    assert {tag["key"]: tag["value"] for tag in again["tags"]}["dagster/partition"] == "web/alpha.md"
    assert sorted(chunk_metadatas(live, "web/alpha.md")) == ["alpha-doc-0"]


def test_ui_adds_a_partition_by_hand_and_materialises_it(live: Live) -> None:
    partition_key = keys.to_partition_key("web/delta, notes.txt")
    assert partition_key == "web/delta%2C notes.txt"
    assert live.server.add_partition(PARTITIONS_DEF, partition_key) == "AddDynamicPartitionSuccess"
    run = live.server.wait_run(live.server.launch_partition(ASSET, partition_key))
    assert run["status"] == "SUCCESS", live.server.tail()
    assert len(chunk_metadatas(live, "web/delta, notes.txt")) == 1
    metadata = latest_metadata(live, partition_key)
    assert metadata["status"] == "indexed" and metadata["object_key"] == "web/delta, notes.txt"
    assert metadata["chunks"] == 1


def test_backfills_run_in_batches_and_failed_keys_show_their_reason(
    s3: Any, live: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    code, found = live.cli(capsys, "discover", SOURCE)
    assert code == 0 and found["registered"] == 5
    backfill = live.server.wait_backfill(live.server.backfill(ASSET))
    assert backfill["status"] == "COMPLETED_FAILED"
    # keys_per_run is 2: five keys, three runs, each a range of at most two neighbours.
    ordered = partitions(live)["keys"]
    ranges = sorted(
        (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"])
        for tags in ({t["key"]: t["value"] for t in run["tags"]} for run in backfill["runs"])
    )
    assert len(ranges) == 3
    assert all(ordered.index(end) - ordered.index(start) <= 1 for start, end in ranges)
    assert sorted(run["status"] for run in backfill["runs"]) == ["FAILURE", "SUCCESS", "SUCCESS"]

    status = partitions(live)
    assert status["failedPartitions"] == ["web/bad.txt"]
    assert sorted(status["materializedPartitions"]) == sorted(p for p in ordered if p != "web/bad.txt")
    # The reason, on the run ...
    failed_run = next(run for run in backfill["runs"] if run["status"] == "FAILURE")
    failures = [
        e
        for e in live.server.gql(RUN_FAILURES, runId=failed_run["runId"])["logsForRun"]["events"]
        if e["__typename"] == "ExecutionStepFailureEvent"
    ]
    assert "web/bad.txt: object 'web/bad.txt' is not UTF-8 text" in failures[0]["failureMetadata"]["description"]
    # ... and on the asset's partition (its observation), while its neighbour in the run was indexed.
    observed = live.server.gql(OBSERVATIONS, assetKey={"path": ASSET}, partitions=["web/bad.txt"])
    error = {e["label"]: e.get("text") for e in observed["assetOrError"]["assetObservations"][0]["metadataEntries"]}
    assert error["error"].startswith("object 'web/bad.txt' is not UTF-8 text")

    # Fixed in the bucket, then a backfill over the failed keys only: one run, and now indexed.
    put(s3, live_bucket(live), {"web/bad.txt": "Now it is text about badgers.\n"})
    retry = live.server.wait_backfill(live.server.backfill(ASSET, status["failedPartitions"]))
    assert [run["status"] for run in retry["runs"]] == ["SUCCESS"]
    assert partitions(live)["failedPartitions"] == []
    assert latest_metadata(live, "web/bad.txt")["status"] == "indexed"


def live_bucket(live: Live) -> str:
    return str(yaml.safe_load(live.config_file.read_text())["sources"][0]["bucket_name"])


def test_the_asset_check_flags_keys_whose_chunks_are_gone(live: Live) -> None:
    run = live.server.wait_run(live.server.launch_check(ASSET, CHECK_NAME))
    live.check_runs.append(run["runId"])
    assert run["status"] == "SUCCESS", live.server.tail()
    latest = live.server.gql(CHECK_EXECUTIONS, assetKey={"path": ASSET}, checkName=CHECK_NAME)["assetCheckExecutions"][
        0
    ]
    assert latest["runId"] == run["runId"] and latest["evaluation"]["success"] is True

    lost = chunk_metadatas(live, "web/beta.py")
    live.collection().delete(ids=list(lost))
    run = live.server.wait_run(live.server.launch_check(ASSET, CHECK_NAME))
    live.check_runs.append(run["runId"])
    latest = live.server.gql(CHECK_EXECUTIONS, assetKey={"path": ASSET}, checkName=CHECK_NAME)["assetCheckExecutions"][
        0
    ]
    assert latest["runId"] == run["runId"] and latest["evaluation"]["success"] is False
    entries = {e["label"]: e.get("intValue", e.get("mdStr")) for e in latest["evaluation"]["metadataEntries"]}
    assert entries["missing_count"] == 1 and "web/beta.py" in entries["missing"]


def test_cli_lists_the_same_runs_as_the_ui(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    code, rows = live.cli(capsys, "invocations", SOURCE, "--limit", "100")
    assert code == 0
    validate_jobs(rows)
    ui_runs = {run["runId"]: run["status"] for run in live.server.gql(RUNS, limit=100)["runsOrError"]["results"]}
    listed = {row["run_id"]: row for row in rows}
    # Every run on the instance synced this source, except the check runs (they index nothing).
    assert set(listed) == set(ui_runs) - set(live.check_runs)
    expected = {"SUCCESS": "complete", "FAILURE": "failed", "CANCELED": "cancelled"}
    for run_id, row in listed.items():
        status = row["status"] if isinstance(row["status"], str) else next(iter(row["status"]))
        assert status == expected[ui_runs[run_id]]
    triggers = sorted(row["trigger"] for row in rows)
    # invoke + its re-execution, the hand-added partition's launch, 3 + 1 backfill runs
    assert triggers == ["backfill"] * 4 + ["invocation"] * 2 + ["ui"]


def test_browser_lists_partitions_and_shows_a_keys_metadata(live: Live) -> None:
    from playwright.sync_api import expect

    shot = live.output / "asset-partition.png"
    with chromium_page() as page:
        page.goto(f"{live.server.url}/assets/{SOURCE}/documents?view=partitions", wait_until="domcontentloaded")
        for partition_key in ("web/alpha.md", "web/beta.py", "web/gamma.txt"):
            expect(page.get_by_text(partition_key, exact=True).first).to_be_visible()
        page.get_by_text("web/gamma.txt", exact=True).first.click()
        page.wait_for_url(lambda url: "partition=web%2Fgamma.txt" in url or "partition=web/gamma.txt" in url)
        expect(page.get_by_text("chunks_written", exact=True).first).to_be_visible()
        expect(page.get_by_text("indexed", exact=True).first).to_be_visible()
        expect(page.get_by_text("Join the Dagster community")).to_have_count(0)
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_sources_count_then_remove_source_deletes_everything_it_wrote(
    live: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    code, listed = live.cli(capsys, "sources")
    source = listed["sources"][0]
    assert code == 0 and source["registered_keys"] == 5 and source["indexed_chunks"] >= 4
    assert source["payload"]["s3"]["path_prefix"] == "web/"
    assert TEST_SECRET not in json.dumps(listed) and TEST_KEY_ID not in json.dumps(listed)

    code, found = live.cli(capsys, "query", SOURCE, "GAZEBO", "--mode", "lexical")
    assert code == 0 and [hit["object_key"] for hit in found["results"]] == ["web/gamma.txt"]

    code, out = live.cli(capsys, "remove-source", SOURCE)  # stdin is not a terminal here
    assert code == 2 and "--yes" in out["error"]
    assert live.collection().count() > 0

    code, removed = live.cli(capsys, "remove-source", SOURCE, "--yes")
    assert code == 0 and sum(removed["chunks_deleted"].values()) == source["indexed_chunks"]
    assert removed["partitions_deleted"] == 5
    assert live.collection().count() == 0
    assert partitions(live)["keys"] == []
    for mode in ("lexical", "hybrid"):  # the words went with the chunks: nothing else held them
        code, found = live.cli(capsys, "query", SOURCE, "GAZEBO", "--mode", mode)
        assert code == 0 and found["results"] == []
    code, listed = live.cli(capsys, "sources")
    assert listed["sources"][0]["indexed_chunks"] == 0 and listed["sources"][0]["registered_keys"] == 0
