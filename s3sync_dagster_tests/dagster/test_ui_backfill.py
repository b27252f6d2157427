"""The backfill job from the UI's launchpad: each selection starts Dagster's own backfill over exactly its keys,
through the webserver of `dagster dev` (at 1,000,000 registered keys: test_ui_backfill_million.py).

The tests share one server and run in file order: each builds on what the previous one left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chromadb
import dagster as dg
import pytest
import yaml

from benchmarks.servers.dagster_server import DagsterDev, dagster_dev
from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo.local_s3 import LOOPBACK, free_port
from s3sync_dagster.defs.names import backfill_job_name, backfill_op_name, partitions_name
from s3sync_dagster.defs.runs.backfill import LAUNCH_BACKFILL
from s3sync_dagster.defs.webserver import DagsterWebserver, WebserverError
from s3sync_dagster_tests.conftest import DAEMON_INTERVAL_ENV, put

SOURCE = "ui"
BIG = "big"  # an empty prefix whose partitions test_ui_backfill_million.py registers directly: a million of them
FRESH = "fresh"  # a source no one has discovered: the launchpad's default run indexes its bucket
FRESH_FILES = {
    "fresh/otters.md": "# Otters\n\nThe otter enclosure is cleaned every Tuesday.\n",
    "fresh/herons.txt": "Herons are fed smelt at noon.\n",
}
FILES: dict[str, bytes | str] = {
    "ui/guide.md": "# Guide\n\nThe quokka enclosure opens at nine.\n",
    "ui/notes.txt": "Notes: the capybara pond is cleaned on Mondays.\n",
    "ui/reports/q1.txt": "Q1 report: 41 axolotls counted.\n",
    "ui/reports/q2.txt": "Q2 report: 44 axolotls counted.\n",
    "ui/broken.txt": b"\xff\xfe\x00 not text",
}
BACKFILL = """
query Backfill($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    ... on PartitionBackfill { id status title numPartitions partitionNames tags { key value } }
  }
}"""
CANCEL = """
mutation Cancel($backfillId: String!) {
  cancelPartitionBackfill(backfillId: $backfillId) { __typename ... on PythonError { message } }
}"""
RUN_OUTPUT = """
query Output($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    ... on EventConnection { events { __typename
      ... on ExecutionStepOutputEvent { metadataEntries { label
        ... on TextMetadataEntry { text } ... on IntMetadataEntry { intValue } ... on UrlMetadataEntry { url } } }
      ... on ExecutionStepFailureEvent { error { message } failureMetadata { description } } } }
  }
}"""


@dataclass
class Live:
    server: DagsterDev
    config_file: Path
    bucket: str
    collection_name: str
    chroma_port: int

    def launch(self, source_name: str, selection: str | None = None, pattern: str = "") -> dict[str, Any]:
        """The launchpad: the source's backfill job with a selection (None: as the launchpad opens, nothing
        typed); the finished run's output metadata."""
        config = {"selection": selection, "pattern": pattern}
        run_config = {"ops": {backfill_op_name(source_name): {"config": config}}} if selection is not None else {}
        run_id = self.server.launch_job(backfill_job_name(source_name), run_config)
        run = self.server.wait_run(run_id)
        events = self.server.gql(RUN_OUTPUT, runId=run_id)["logsForRun"]["events"]
        failures = [e for e in events if e["__typename"] == "ExecutionStepFailureEvent"]
        outputs = [e for e in events if e["__typename"] == "ExecutionStepOutputEvent"]
        metadata = {
            entry["label"]: next(v for k, v in entry.items() if k != "label")
            for entry in (outputs[0]["metadataEntries"] if outputs else [])
        }
        return {"status": run["status"], "metadata": metadata, "failures": failures}

    def backfill(self, backfill_id: str) -> dict[str, Any]:
        return dict(self.server.gql(BACKFILL, backfillId=backfill_id)["partitionBackfillOrError"])

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
        assert main([*argv, "--config", str(self.config_file), "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    def indexed_keys(self, collection_name: str | None = None) -> set[str]:
        client = chromadb.HttpClient(host=LOOPBACK, port=self.chroma_port)
        collection = client.get_collection(collection_name or self.collection_name)
        return {str(m["object_key"]) for m in collection.get(include=["metadatas"])["metadatas"] or []}


@contextmanager
def serving(s3: Any, moto_endpoint: str, chroma_server: int, base: Path, paced: bool = True) -> Iterator[Live]:
    """`dagster dev` on a bucket of the sources' files and this repo's instance settings. `paced`: its daemon looks
    for backfill work every few seconds (conftest's DAEMON_INTERVAL_S), else every 30 s, as Dagster's does."""
    bucket = f"s3sync-{base.name}-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    put(s3, bucket, FILES | FRESH_FILES)
    port = free_port()
    collection_name = f"{base.name}-{os.getpid()}"
    source = {
        "bucket_name": bucket,
        "region": "us-east-1",
        "endpoint_url": moto_endpoint,
        "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"},
        "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
        "keys_per_run": 2,
    }
    config = {
        "chroma": {"host": LOOPBACK, "port": chroma_server},
        # No webserver.url: the backfill job finds the webserver `dagster dev -p PORT` started beside its run.
        "sources": [
            {"name": SOURCE, "path_prefix": "ui/", "collection_name": collection_name, **source},
            {"name": FRESH, "path_prefix": "fresh/", "collection_name": f"{collection_name}-fresh", **source},
            {"name": BIG, "path_prefix": "big/", "collection_name": f"{collection_name}-big", **source},
        ],
    }
    config_file = base / "s3sync.yaml"
    config_file.write_text(yaml.safe_dump(config))
    home = base / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((Path(__file__).parents[2] / "dagster.yaml").read_text())
    saved = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)  # the CLI and the test's instance work on the server's instance
    pace = None if paced else os.environ.pop(DAEMON_INTERVAL_ENV, None)  # for the processes started now
    try:
        with dagster_dev(home, config_file, base / "dagster-dev.log", port=port) as server:
            if pace is not None:
                os.environ[DAEMON_INTERVAL_ENV], pace = pace, None
            yield Live(server, config_file, bucket, collection_name, chroma_server)
    finally:
        if pace is not None:
            os.environ[DAEMON_INTERVAL_ENV] = pace
        if saved is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = saved


@pytest.fixture(scope="module")
def live(s3: Any, moto_endpoint: str, chroma_server: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with serving(s3, moto_endpoint, chroma_server, tmp_path_factory.mktemp("ui-backfill")) as served:
        yield served


def targeted(live: Live, backfill_id: str) -> list[str]:
    return sorted(live.backfill(backfill_id)["partitionNames"])


def cancel(live: Live, backfill_id: str) -> None:
    """The Backfills page's "Cancel"; the daemon finishes the cancellation on its next look."""
    answer = live.server.gql(CANCEL, backfillId=backfill_id)["cancelPartitionBackfill"]
    assert answer["__typename"] == "CancelBackfillSuccess", answer


def test_the_launchpad_as_it_opens_lists_the_bucket_registers_its_keys_and_backfills_them(s3: Any, live: Live) -> None:
    """A UI user with an empty instance and no shell: the backfill job launched with nothing typed (selection ALL)
    registers every key in the bucket and indexes them; launched again, it adds the key uploaded since."""
    instance = dg.DagsterInstance.get()
    assert instance.get_dynamic_partitions(partitions_name(FRESH)) == []
    first = live.launch(FRESH)
    assert first["status"] == "SUCCESS", first
    assert first["metadata"]["selection"] == "all" and first["metadata"]["new_partitions"] == len(FRESH_FILES)
    assert first["metadata"]["partitions"] == len(FRESH_FILES)
    assert first["metadata"]["backfill"].startswith(f"{live.server.url}/runs/b/")  # the webserver found
    assert live.server.wait_backfill(first["metadata"]["backfill_id"])["status"] == "COMPLETED_SUCCESS"
    collection_name = f"{live.collection_name}-fresh"
    assert live.indexed_keys(collection_name) == set(FRESH_FILES)

    put(s3, live.bucket, {"fresh/kingfishers.txt": "Kingfisher nest boxes are checked monthly.\n"})
    again = live.launch(FRESH)
    assert again["metadata"]["new_partitions"] == 1 and again["metadata"]["listed"] == len(FRESH_FILES) + 1
    assert live.server.wait_backfill(again["metadata"]["backfill_id"])["status"] == "COMPLETED_SUCCESS"
    assert live.indexed_keys(collection_name) == {*FRESH_FILES, "fresh/kingfishers.txt"}


def test_each_selection_backfills_exactly_its_keys(s3: Any, live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    """One backfill is waited for; the others are checked and cancelled as soon as they are launched (the tests'
    backfill daemon looks every few seconds: conftest's DAEMON_INTERVAL_S)."""
    assert live.cli(capsys, "discover", SOURCE)["registered"] == len(FILES)
    assert live.cli(capsys, "sync", SOURCE, "--key", "ui/reports/q1.txt", "--key", "ui/reports/q2.txt")

    # A glob: exactly the keys it matches, in a backfill on the Backfills page that a person can cancel.
    reports = live.launch(SOURCE, "GLOB", "ui/reports/*.txt")
    assert reports["status"] == "SUCCESS", reports
    assert reports["metadata"]["partitions"] == 2 and reports["metadata"]["selection"] == "glob 'ui/reports/*.txt'"
    reports_id = reports["metadata"]["backfill_id"]
    assert reports["metadata"]["backfill"] == f"{live.server.url}/runs/b/{reports_id}"
    assert targeted(live, reports_id) == ["ui/reports/q1.txt", "ui/reports/q2.txt"]
    assert live.backfill(reports_id)["title"] == f"{SOURCE}: glob"
    cancel(live, reports_id)

    # A prefix matching nothing: no backfill, and the run says so; a prefix selection with no prefix fails and
    # names the rule.
    nothing = live.launch(SOURCE, "PREFIX", "ui/archive/")
    assert nothing["status"] == "SUCCESS" and nothing["metadata"]["partitions"] == 0
    assert "backfill_id" not in nothing["metadata"]
    bad = live.launch(SOURCE, "PREFIX")
    assert bad["status"] == "FAILURE"
    assert "selection 'prefix' needs a pattern" in json.dumps(bad["failures"])

    # Missing: the keys never materialised, nothing else; run to its end, where the broken key fails alone.
    missing = live.launch(SOURCE, "MISSING")["metadata"]["backfill_id"]
    assert targeted(live, missing) == ["ui/broken.txt", "ui/guide.md", "ui/notes.txt"]
    done = live.server.wait_backfill(missing)
    assert done["status"] == "COMPLETED_FAILED"
    assert sorted(run["status"] for run in done["runs"]) == ["FAILURE", "SUCCESS"]  # keys_per_run 2
    assert live.indexed_keys() == {"ui/reports/q1.txt", "ui/reports/q2.txt", "ui/guide.md", "ui/notes.txt"}
    assert live.backfill(reports_id)["status"] == "CANCELED"

    # Failed: the broken key alone. Stale: an object changed in the bucket since it was indexed (the audit).
    failed = live.launch(SOURCE, "FAILED")["metadata"]["backfill_id"]
    assert targeted(live, failed) == ["ui/broken.txt"]
    cancel(live, failed)
    put(s3, live.bucket, {"ui/notes.txt": "Notes: the capybara pond is now cleaned on Fridays.\n"})
    stale = live.launch(SOURCE, "STALE")["metadata"]["backfill_id"]
    assert targeted(live, stale) == ["ui/notes.txt"]
    cancel(live, stale)
    for backfill_id in (failed, stale):
        assert live.backfill(backfill_id)["status"] in ("CANCELING", "CANCELED")


def test_an_unreachable_webserver_fails_the_run_with_where_it_looked() -> None:
    nowhere = f"http://{LOOPBACK}:{free_port()}"
    with pytest.raises(WebserverError) as caught:
        DagsterWebserver(url=nowhere, api_token="tok-secret-1").graphql(LAUNCH_BACKFILL, {"backfillParams": {}})
    assert nowhere in str(caught.value) and "webserver.url" in str(caught.value)
    assert "tok-secret-1" not in str(caught.value)


def test_an_unset_webserver_url_is_found_from_the_environment_else_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """No `dagster dev` above this test's process: DAGSTER_WEBSERVER_PORT where set, else dagster dev's default,
    and a webserver that does not answer is said with how its address was found."""
    port = free_port()
    monkeypatch.setenv("DAGSTER_WEBSERVER_PORT", str(port))
    assert DagsterWebserver().address() == (f"http://127.0.0.1:{port}", "from DAGSTER_WEBSERVER_PORT")
    monkeypatch.delenv("DAGSTER_WEBSERVER_PORT")
    url, how = DagsterWebserver().address()
    assert url == "http://localhost:3000" and "no webserver was found above this run" in how
    with pytest.raises(WebserverError) as caught:  # nothing listens on the port the variable names
        monkeypatch.setenv("DAGSTER_WEBSERVER_PORT", str(port))
        DagsterWebserver().graphql(LAUNCH_BACKFILL, {"backfillParams": {}}, timeout_seconds=5)
    said = str(caught.value)
    assert f"http://127.0.0.1:{port} (from DAGSTER_WEBSERVER_PORT) did not answer" in said
    assert "set webserver.url" in said
