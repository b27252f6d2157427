"""A model change without downtime (issue 39, part 1): `s3sync reembed` re-embeds a synced collection from its
stored texts into a copy under the configured function and swaps it in; queries are answered throughout, syncs
meanwhile land in both, and a kill at any step leaves a store the next open and the next run make whole.

The model change is a real one that runs offline: the bundled model in float32, then `precision: int8`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
import yaml

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.query import SourceSearch
from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.defs import failpoints
from s3sync_dagster.pipeline import store
from s3sync_dagster.pipeline.chunking.context import embedding_input
from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction
from s3sync_dagster.pipeline.reembed import swap as reembed
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster_tests.conftest import put

BIN = Path(sys.executable).parent
TOPICS = {
    "boiler": "the boiler pressure gauge and the pilot light",
    "kettle": "descaling the kettle element with vinegar",
    "router": "resetting the wifi router with a pin",
    "garden": "pruning roses and feeding the lawn in spring",
}
FILES = {
    f"manuals/{name}.txt": "".join(f"Step {n} about {topic}: part {n} of the {name} manual.\n" for n in range(10))
    for name, topic in TOPICS.items()
}
QUESTION, ANSWER = "how do I reset my wifi router", "manuals/router.txt"


@pytest.fixture(params=["embedded", "server"])
def synced(
    request: pytest.FixtureRequest, s3: Any, bucket: str, tmp_path: Path, moto_endpoint: str, dagster_home: Path
) -> Any:
    """A source synced in float32 (lines chunking, one line a chunk: 40 chunks); `configure` writes its config
    again with another precision. `s3sync reembed` runs the source's reembed job on the Dagster home."""
    chroma: dict[str, Any] = {"path": "chroma"}
    if request.param == "server":
        chroma = {"host": "127.0.0.1", "port": request.getfixturevalue("chroma_server")}
    source = {
        "name": "manuals", "bucket_name": bucket, "region": "us-east-1", "collection_name": f"re-{bucket}"[:60],
        "endpoint_url": moto_endpoint, "path_prefix": "manuals/", "chunking": {"type": "lines", "max_lines": 1},
        "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"}, "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
    }  # fmt: skip
    path = tmp_path / "s3sync.yaml"

    def configure(precision: str) -> AppConfig:
        config = {"chroma": chroma, "embedding": {"precision": precision}, "sources": [source]}
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return load_config(path)

    config = configure("float32")
    put(s3, bucket, FILES)
    sync(s3, config, sorted(FILES))
    yield path, configure, source["collection_name"]
    if request.param == "server":
        client = configure("float32").chroma.store().client()
        for name in client.list_collections():
            if name.name.startswith(source["collection_name"]):
                client.delete_collection(name.name)


def sync(s3: Any, config: AppConfig, keys: list[str]) -> None:
    spec = config.embedding.spec()
    name = config.sources[0].collection_name
    # Opened for the source's writes, as a run opens it (assets.py): a model change begins the copy.
    collection = config.chroma.store().collection(name, spec, owner=config.sources[0].spec(spec).owner)
    reports = sync_keys(s3, config.sources[0].spec(spec), lambda _: collection, spec.build(), keys)
    assert {report.status for report in reports} <= {"indexed", "unchanged"}, reports


def held(config: AppConfig, name: str) -> dict[str, Any]:
    """What the store holds under the name: precision recorded, chunks (id -> text, vector), what was embedded for
    each (its context line and text), the other names."""
    client = config.chroma.store().client()
    collection = client.get_collection(name)
    found = collection.get(include=["documents", "embeddings", "metadatas"])
    return {
        "precision": (collection.configuration_json["embedding_function"]["config"] or {}).get("precision", "float32"),
        "chunks": {i: (d, np.array(v)) for i, d, v in zip(found["ids"], found["documents"], found["embeddings"], strict=True)},
        "inputs": {i: embedding_input(d, m) for i, d, m in zip(found["ids"], found["documents"], found["metadatas"], strict=True)},
        "names": sorted(c.name for c in client.list_collections() if c.name.startswith(name) and c.name != name),
    }  # fmt: skip


def assert_whole_in_int8(config: AppConfig, name: str, before: dict[str, Any]) -> None:
    after = held(config, name)
    assert after["precision"] == "int8" and after["names"] == [], after["names"]
    assert {i: text for i, (text, _) in after["chunks"].items()} == {
        i: text for i, (text, _) in before["chunks"].items()
    }
    ids = sorted(after["chunks"])
    exact = np.array(ChromaDefaultFunction(precision="int8")([after["inputs"][i] for i in ids]))
    assert np.allclose(np.array([after["chunks"][i][1] for i in ids]), exact, atol=1e-5)


def answers(config: AppConfig) -> list[str]:
    store.close_clients()  # another process wrote the store: read it afresh
    return [hit.object_key for hit in SourceSearch("manuals", config).search(QUESTION, mode="dense", n=3)]


def test_a_model_change_reembeds_from_stored_texts_and_swaps_with_queries_answered_throughout(
    synced: Any, s3: Any, bucket: str
) -> None:
    path, configure, name = synced
    float32 = configure("float32")
    before = held(float32, name)
    assert before["precision"] == "float32" and len(before["chunks"]) == 40
    searcher = SourceSearch("manuals", float32)  # opened before: it must follow the swap
    failures: list[str] = []
    asked = [0]
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            try:
                found = [hit.object_key for hit in searcher.search(QUESTION, mode="hybrid", n=3)]
                asked[0] += 1
                if not found or found[0] != ANSWER:
                    failures.append(f"answer {found}")
            except Exception as error:  # any error is the failure this test looks for
                failures.append(f"{type(error).__name__}: {error}")

    int8 = configure("int8")
    # A sync with the new config: the collection still answers and takes writes in float32; the new object
    # lands in the copy too, in int8.
    put(s3, bucket, {"manuals/lamp.txt": "Changing the bulb of the desk lamp.\n"})
    sync(s3, int8, ["manuals/lamp.txt"])
    assert held(int8, name)["precision"] == "float32" and held(int8, name)["names"] == [reembed.copy_name(name)]
    copy = held(int8, reembed.copy_name(name))
    (lamp,) = [(i, text, vector) for i, (text, vector) in copy["chunks"].items() if "desk lamp" in text]
    assert copy["precision"] == "int8" and len(copy["chunks"]) == 1
    assert copy["inputs"][lamp[0]] == f"manuals/lamp.txt\n\n{lamp[1]}"  # its context line, then its text
    assert np.allclose(lamp[2], ChromaDefaultFunction(precision="int8")([copy["inputs"][lamp[0]]])[0], atol=1e-5)
    before = held(int8, name)
    assert any("desk lamp" in text for text, _ in before["chunks"].values())  # in the collection too, in float32
    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    try:
        assert main(["reembed", "manuals", "--config", str(path), "--batch-size", "8"]) == 0
    finally:
        stop.set()
        thread.join(timeout=60)
    assert asked[0] >= 3 and failures == [], (asked[0], failures[:5])
    assert_whole_in_int8(int8, name, before)
    # A run of the source's reembed job on the instance, as the UI shows it: its progress in its log.
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(dg.RunsFilter(job_name="manuals_reembed"))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        lines = [r.user_message for r in instance.all_logs(run.run_id) if r.dagster_event is None]
        assert any("re-embedding: " in line and "of 41 chunks in the copy" in line for line in lines), lines
        assert any(
            line.endswith("swapped: 41 of 41 chunks in the copy (100%)") or "swapped: 41 of 41" in line
            for line in lines
        ), lines
    assert searcher.embedding_function.precision == "int8"  # type: ignore[attr-defined]
    assert answers(int8)[0] == ANSWER
    # Nothing to do the second time; going back to float32 is another re-embedding.
    assert main(["reembed", "manuals", "--config", str(path)]) == 0
    assert held(int8, name)["precision"] == "int8"


STEPS = ["reembed:begun", "reembed:page", "reembed:copied", "reembed:retired", "reembed:swapped"]


@pytest.mark.parametrize("step", STEPS)
def test_a_kill_at_any_step_leaves_queries_answered_and_the_next_run_finishes(synced: Any, step: str) -> None:
    path, configure, name = synced
    before = held(configure("float32"), name)
    int8 = configure("int8")
    env = dict(os.environ, S3SYNC_FAILPOINTS=step)
    store.close_clients()  # the embedded store is the killed process's while it runs
    killed = subprocess.run(
        [str(BIN / "s3sync"), "reembed", "manuals", "--config", str(path), "--batch-size", "8"],
        env=env, capture_output=True, text=True, timeout=300, start_new_session=True,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # Queries after the kill: answered, from whichever collection now holds the name (a swap the kill cut
    # between its renames is finished by the open).
    assert answers(int8)[0] == ANSWER
    assert main(["reembed", "manuals", "--config", str(path), "--batch-size", "8"]) == 0
    assert_whole_in_int8(int8, name, before)
    assert answers(int8)[0] == ANSWER


RETRIES = "telemetry:\n  enabled: false\nrun_retries:\n  enabled: true\n  max_retries: 2\n"


@pytest.mark.parametrize("synced", ["embedded"], indirect=True)  # the store makes no difference to the command
@pytest.mark.parametrize("retries", ["on", "off"])
def test_a_run_that_fails_at_a_step_is_run_again_by_the_command(
    synced: Any, dagster_home: Path, retries: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon cannot retry the run `s3sync reembed` executes: the command runs it again from the step it
    recorded, within the instance's run_retries. The run fails once the copy is made (failpoint reembed:copied:lost,
    raised once in the process, as a store gone there would)."""
    if retries == "on":
        (dagster_home / "dagster.yaml").write_text(RETRIES)
    path, configure, name = synced
    before = held(configure("float32"), name)
    int8 = configure("int8")
    monkeypatch.setenv("S3SYNC_FAILPOINTS", "reembed:copied:lost")
    monkeypatch.setattr(failpoints, "_failed", set())  # once in this test, whatever ran before in the process
    code = main(["reembed", "manuals", "--config", str(path), "--batch-size", "8", "--json"])
    said = capsys.readouterr()
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="manuals_reembed"))
        statuses = sorted(run.status.value for run in runs)
    if retries == "on":
        assert code == 0, said.err[-2000:]
        payload = json.loads(said.out)
        assert [(run["success"], run["retry"]) for run in payload["runs"]] == [(False, 0), (True, 1)], payload
        assert "FailpointError: failpoint reembed:copied:lost" in payload["runs"][0]["error"]
        assert payload["status"] == "swapped" and statuses == ["FAILURE", "SUCCESS"]
        assert_whole_in_int8(int8, name, before)
    else:
        assert code != 0 and statuses == ["FAILURE"], said.err[-2000:]
        assert "the re-embedding failed" in said.err and "failpoint reembed:copied:lost" in said.err, said.err[-2000:]
    assert answers(int8)[0] == ANSWER


def test_abandon_drops_the_copy_and_leaves_the_collection(synced: Any, s3: Any, bucket: str) -> None:
    path, configure, name = synced
    int8 = configure("int8")
    sync(s3, int8, sorted(FILES))  # unchanged objects: nothing written, but the copy is begun
    assert held(int8, name)["names"] == [reembed.copy_name(name)]
    assert main(["reembed", "manuals", "--config", str(path), "--abandon"]) == 0
    left = held(int8, name)
    assert left["precision"] == "float32" and left["names"] == [] and len(left["chunks"]) == 40
