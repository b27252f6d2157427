"""A Chroma server, or an S3 endpoint, that stops answering for longer than every timeout, in the middle of a sync
(issue 66, item 4).

The server is paused (SIGSTOP): it takes connections and reads nothing, as a host cut off without a word looks
to its clients, and chromadb's own client would wait for it without end. With `chroma.timeout_seconds` short, the
sync must end within a stated bound, each key it did not write failed with a reason naming the store and the
setting; once the server is back, the next sync leaves exactly the objects' chunks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import chromadb
import dagster as dg
import pytest
import yaml

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo import local_s3
from s3sync_dagster.commands.demo.local_s3 import LOOPBACK
from s3sync_dagster.config import load_config
from s3sync_dagster.defs.names import documents_asset_key
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster.pipeline.store import close_clients
from s3sync_dagster_tests.conftest import put, start_chroma_server

TIMEOUT_S = 3
KEYS = 12
# The sync with the server paused: the first request past the bound (TIMEOUT_S), the keys after it failed at once,
# the run's own end; what a run costs here besides, with room for a busy machine.
BOUND_S = 90


def files(version: str) -> dict[str, bytes | str]:
    return {
        f"d/note-{n:02d}.txt": f"Note {n}, {version}: shelf {n} holds {n + 3} jars of {version} honey.\n"
        for n in range(KEYS)
    }


def chunks(port: int, collection_name: str) -> dict[str, str]:
    found = chromadb.HttpClient(host=LOOPBACK, port=port).get_collection(collection_name).get()
    return dict(zip(found["ids"], found["documents"], strict=True))


def expected(by_key: dict[str, bytes | str]) -> dict[str, str]:
    return {keys.chunk_id(keys.object_id(object_key), 0): str(text) for object_key, text in by_key.items()}


def sync(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[int, Any]:
    code = main(["sync", "docs", "--all", "--config", str(config), "--json"])
    return code, json.loads(capsys.readouterr().out)


def sync_paused_after_the_first_key(
    capsys: pytest.CaptureFixture[str], config: Path, pause: Callable[[], None], what: str
) -> tuple[int, Any, float]:
    """`s3sync sync` on a thread of its own, `pause` called once its run has reported its first key written: the
    sync's exit code, its report and its seconds. A sync that hangs on the silent service fails the test here, after
    BOUND_S, not at pytest's timeout (Chroma's own client, unbounded, waits for ever: seen)."""
    instance = dg.DagsterInstance.get()
    written_before = len(instance.fetch_materializations(documents_asset_key("docs"), limit=10_000).records)
    paused: list[bool] = []

    def pause_after_the_first_key() -> None:
        deadline = time.monotonic() + BOUND_S
        while time.monotonic() < deadline:
            if len(instance.fetch_materializations(documents_asset_key("docs"), limit=10_000).records) > written_before:
                pause()
                paused.append(True)
                return
            time.sleep(0.02)

    threading.Thread(target=pause_after_the_first_key, daemon=True).start()
    ended: list[tuple[int, Any]] = []
    syncing = threading.Thread(target=lambda: ended.append(sync(capsys, config)), daemon=True)
    started = time.monotonic()
    syncing.start()
    syncing.join(timeout=BOUND_S)
    took = time.monotonic() - started
    assert paused, f"the sync ended before its first key was reported: {ended}"
    assert ended, f"the sync had not ended {BOUND_S} s after it began, {what} silent"
    return (*ended[0], took)


@dataclass
class Server:
    """A `chroma run` server of the test's own, which it may pause (SIGSTOP) and let go on (SIGCONT)."""

    port: int
    process: subprocess.Popen[bytes]
    paused: bool = False

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False
        deadline = time.monotonic() + 60
        while True:
            try:
                chromadb.HttpClient(host=LOOPBACK, port=self.port).heartbeat()
                return
            except Exception:
                assert time.monotonic() < deadline, "the Chroma server did not answer again"
                time.sleep(0.2)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port, process = start_chroma_server(tmp_path / "chroma")
    served = Server(port, process)
    try:
        yield served
    finally:
        if served.paused:
            os.kill(process.pid, signal.SIGCONT)
        close_clients()
        process.terminate()
        process.wait(timeout=20)


def test_a_chroma_server_silent_past_its_timeout_fails_keys_by_name_and_the_next_sync_is_exact(
    s3: Any, bucket: str, moto_endpoint: str, dagster_home: Path, server: Server, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    collection_name = f"{bucket}-partitioned"
    config = tmp_path / "s3sync.yaml"
    source = {
        "name": "docs", "bucket_name": bucket, "region": "us-east-1", "path_prefix": "d/",
        "collection_name": collection_name, "endpoint_url": moto_endpoint,
        "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"}, "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
    }  # fmt: skip
    chroma = {"host": LOOPBACK, "port": server.port, "timeout_seconds": TIMEOUT_S}
    config.write_text(yaml.safe_dump({"chroma": chroma, "sources": [source]}))
    put(s3, bucket, files("spring"))
    code, first = sync(capsys, config)
    assert code == 0 and first["counts"] == {"indexed": KEYS}, first
    assert chunks(server.port, collection_name) == expected(files("spring"))

    # Every object changed: each is written alone (a changed object replaces its chunks), one key after another.
    # The server is paused once the run has reported its first key written.
    put(s3, bucket, files("autumn"))
    code, cut, took = sync_paused_after_the_first_key(capsys, config, server.pause, "the Chroma server")

    # Named failures: the keys not written, each saying the store did not answer and which setting bounds it; the
    # key written before stays written.
    assert code == 1, cut
    assert cut["counts"].get("indexed", 0) >= 1 and cut["failed"], cut
    assert cut["counts"].get("indexed", 0) + len(cut["failed"]) + len(cut["not_tried"]) == KEYS, cut
    for failed in cut["failed"]:
        message = failed["message"]
        assert f"Chroma server http://{LOOPBACK}:{server.port}" in message, failed
        assert "chroma.timeout_seconds" in message and ("did not answer" in message or "has not answered" in message)
    assert all(run["error"] for run in cut["runs"] if not run["success"]), cut["runs"]  # and its run says why
    with capsys.disabled():
        print(
            f"\nChroma paused mid-sync: {cut['counts']} in {took:.1f} s (timeout {TIMEOUT_S} s); "
            f"first failure: {cut['failed'][0]['message']}"
        )

    # Back: the requests held while it was paused are answered, and the next sync writes exactly what is missing.
    server.resume()
    time.sleep(TIMEOUT_S)  # the client's pause after an unanswered request ends
    code, after = sync(capsys, config)
    assert code == 0 and after["failed"] == [] and after["not_tried"] == [], after
    assert chunks(server.port, collection_name) == expected(files("autumn"))


S3_TIMEOUT_S = 2


def test_an_s3_endpoint_silent_past_its_timeout_fails_the_later_keys_at_once_and_the_next_sync_is_exact(
    moto_endpoint: str, dagster_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """S3 paused mid-sync (a moto server of the test's own, SIGSTOP: it takes connections and answers nothing): the
    key whose request went unanswered fails after the source's timeouts, and the keys after it fail at once, unsent,
    naming the endpoint and the setting (a run of 100 keys would otherwise wait 100 times the timeouts)."""
    del moto_endpoint  # the suite's S3 endpoint is not used: its fixture sets the credentials' variables
    with local_s3.running() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint.endpoint_url, region_name="us-east-1")
        bucket = "partitioned-s3"
        s3.create_bucket(Bucket=bucket)
        collection_name = f"{bucket}-docs"
        source = {
            "name": "docs", "bucket_name": bucket, "region": "us-east-1", "path_prefix": "d/",
            "collection_name": collection_name, "endpoint_url": endpoint.endpoint_url,
            "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"}, "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
            "timeouts": {"connect_seconds": S3_TIMEOUT_S, "read_seconds": S3_TIMEOUT_S, "max_attempts": 1},
        }  # fmt: skip
        config = tmp_path / "s3sync.yaml"
        config.write_text(yaml.safe_dump({"chroma": {"path": str(tmp_path / "chroma")}, "sources": [source]}))
        put(s3, bucket, files("spring"))
        code, first = sync(capsys, config)
        assert code == 0 and first["counts"] == {"indexed": KEYS}, first

        put(s3, bucket, files("autumn"))
        try:
            code, cut, took = sync_paused_after_the_first_key(
                capsys, config, lambda: os.kill(endpoint.process.pid, signal.SIGSTOP), "S3"
            )
        finally:
            os.kill(endpoint.process.pid, signal.SIGCONT)
        assert code == 1 and cut["counts"].get("indexed", 0) >= 1 and cut["failed"], cut
        messages = [failed["message"] for failed in cut["failed"]]
        assert all(f"the S3 endpoint {endpoint.endpoint_url}" in message for message in messages), messages
        assert any(f"did not answer within the read timeout of {S3_TIMEOUT_S} s" in m for m in messages), messages
        unsent = [message for message in messages if "was not sent" in message]
        assert unsent and all("timeouts.read_seconds" in message for message in unsent), messages
        with capsys.disabled():
            print(f"\nS3 paused mid-sync: {cut['counts']} in {took:.1f} s (timeout {S3_TIMEOUT_S} s); {messages[-1]}")

        time.sleep(S3_TIMEOUT_S)  # the client's pause after an unanswered request ends
        code, after = sync(capsys, config)
        assert code == 0 and after["failed"] == [] and after["not_tried"] == [], after
        found = load_config(config).chroma.store().client().get_collection(collection_name).get()
        assert dict(zip(found["ids"], found["documents"], strict=True)) == expected(files("autumn"))
