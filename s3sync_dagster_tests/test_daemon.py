"""The real thing: `dagster-daemon` runs the SQS sensor on its own, runs go through the run queue in
their own processes, and an upload to the bucket becomes a queryable chunk in a `chroma run` server."""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from s3sync_dagster.local_s3 import LOOPBACK
from s3sync_dagster_tests.conftest import notifying_queue

REPO = Path(__file__).resolve().parent.parent
# S3SYNC_LATENCY_UPLOADS=10 turns this test into the latency measurement quoted in the notes.
UPLOADS = int(os.environ.get("S3SYNC_LATENCY_UPLOADS", "2"))
WAIT_S = 300


def wait_for_chunk(collection_getter: Any, object_key: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            if collection_getter().get(where={"object_key": object_key})["ids"]:
                return True
        except Exception:  # the collection is created by the first run
            pass
        time.sleep(0.25)
    return False


def test_daemon_syncs_uploads_end_to_end(
    s3: Any, bucket: str, moto_endpoint: str, chroma_server: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import chromadb

    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    queue_url = notifying_queue(sqs, s3, bucket, f"{bucket}-daemon")
    collection_name = f"{bucket}-daemon"
    config = {
        "chroma": {"host": LOOPBACK, "port": chroma_server},
        "sources": [
            {
                "name": "live",
                "bucket_name": bucket,
                "region": "us-east-1",
                "collection_name": collection_name,
                "endpoint_url": moto_endpoint,
                "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"},
                "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
                "auto_sync": "direct",
                "sqs_queue_url": queue_url,
            }
        ],
    }
    config_path = tmp_path / "s3sync.yaml"
    config_path.write_text(yaml.safe_dump(config))
    home = tmp_path / "dagster_home"
    home.mkdir()
    settings = yaml.safe_load((REPO / "dagster.yaml").read_text())
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))
    env = dict(os.environ, DAGSTER_HOME=str(home), S3SYNC_CONFIG=str(config_path))
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO,
        env=env,
        stdout=open(tmp_path / "daemon.log", "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )
    client = chromadb.HttpClient(host=LOOPBACK, port=chroma_server)
    latencies = []
    try:
        for number in range(UPLOADS):
            object_key = f"live/upload-{number}.txt"
            started = time.monotonic()
            s3.put_object(Bucket=bucket, Key=object_key, Body=f"upload number {number} reached the index\n".encode())
            found = wait_for_chunk(lambda: client.get_collection(collection_name), object_key, started + WAIT_S)
            log = (tmp_path / "daemon.log").read_text(errors="replace")
            assert found, f"no chunk for {object_key} after {WAIT_S} s; daemon log tail:\n{log[-3000:]}"
            latencies.append(time.monotonic() - started)
        hit = client.get_collection(collection_name).query(
            query_texts=["upload number 0 reached the index"], n_results=1
        )
        assert hit["metadatas"][0][0]["object_key"] == "live/upload-0.txt"
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
    with capsys.disabled():
        print(
            f"\nupload -> queryable with the daemon: {len(latencies)} uploads, median {statistics.median(latencies):.1f} s, "
            f"max {max(latencies):.1f} s (first includes daemon start-up: {latencies[0]:.1f} s)"
        )
