"""Upload -> queryable: one text file at a time, with the SQS sensor and `dagster-daemon` running, the
chunks in a `chroma run` server (what a deployment would use; an embedded store is one process's)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import yaml

from benchmarks import common
from s3sync_dagster.local_s3 import LOOPBACK, free_port

WAIT_S = 300


@contextmanager
def chroma_server(path: Path) -> Iterator[int]:
    import chromadb

    port = free_port()
    process = subprocess.Popen(
        [str(common.BIN / "chroma"), "run", "--path", str(path), "--host", LOOPBACK, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            chromadb.HttpClient(host=LOOPBACK, port=port).heartbeat()
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("chroma run did not start") from None
            time.sleep(0.2)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def notifying_queue(endpoint_url: str, bucket: str) -> str:
    sqs = boto3.client("sqs", endpoint_url=endpoint_url, region_name="us-east-1")
    s3 = common.s3_client(endpoint_url)
    url = sqs.create_queue(QueueName=f"{bucket}-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
        },
    )
    return str(url)


def measure(endpoint_url: str, workdir: Path, uploads: int = 20) -> dict[str, Any]:
    import chromadb

    common.credentials()
    bucket = "latency"
    s3 = common.s3_client(endpoint_url)
    s3.create_bucket(Bucket=bucket)
    queue_url = notifying_queue(endpoint_url, bucket)
    home = common.dagster_home(workdir / "home")
    latencies: list[float] = []
    with chroma_server(workdir / "chroma-server") as port:
        config_file = workdir / "latency.yaml"
        config_file.write_text(
            yaml.safe_dump(
                {
                    "chroma": {"host": LOOPBACK, "port": port},
                    "sources": [
                        {
                            "name": "live",
                            "bucket_name": bucket,
                            "region": "us-east-1",
                            "collection_name": "live-chunks",
                            "endpoint_url": endpoint_url,
                            "aws_access_key_id": {"env": common.KEY_ID_VAR},
                            "aws_secret_access_key": {"env": common.SECRET_VAR},
                            "auto_sync": "direct",
                            "sqs_queue_url": queue_url,
                        }
                    ],
                }
            )
        )
        env = dict(os.environ, DAGSTER_HOME=str(home), S3SYNC_CONFIG=str(config_file))
        log = workdir / "daemon.log"
        daemon = subprocess.Popen(
            [str(common.BIN / "dagster-daemon"), "run", "-w", str(common.REPO / "workspace.yaml")],
            cwd=common.REPO,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        client = chromadb.HttpClient(host=LOOPBACK, port=port)
        try:
            # A warm-up upload: the daemon's start (code server, first sensor tick) is not latency.
            for number in range(uploads + 1):
                object_key = f"uploads/file-{number:03d}.txt"
                started = time.monotonic()
                s3.put_object(Bucket=bucket, Key=object_key, Body=f"upload {number} reached the index\n".encode())
                while True:
                    try:
                        if client.get_collection("live-chunks").get(where={"object_key": object_key})["ids"]:
                            break
                    except Exception:  # the collection comes with the first run
                        pass
                    if time.monotonic() - started > WAIT_S:
                        raise TimeoutError(f"{object_key} not queryable after {WAIT_S} s:\n{log.read_text()[-3000:]}")
                    time.sleep(0.1)
                if number > 0:
                    latencies.append(time.monotonic() - started)
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
    return {
        "uploads": len(latencies),
        "median_s": common.median(latencies),
        "max_s": max(latencies),
        "min_s": min(latencies),
        "all_s": [round(value, 2) for value in latencies],
    }
