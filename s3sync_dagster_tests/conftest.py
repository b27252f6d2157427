"""Shared fixtures: a real moto server over HTTP, embedded Chroma, a real Dagster instance, config files."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import yaml
from hypothesis import settings

from s3sync_dagster import local_s3
from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.local_s3 import LOOPBACK, free_port
from s3sync_dagster.pipeline.embed import ChromaDefaultFunction

# Credentials the tests hand over through the environment, as users do. Moto accepts anything; the
# values are distinctive so a test can prove they never leak into output, events or metadata.
TEST_KEY_ID = "S3SYNC-TEST-KEY-ID-7f3a"
TEST_SECRET = "s3sync-test-secret-value-9c41e2"

_bucket_numbers = itertools.count()

# CI must be repeatable: the same examples every run there; locally each run explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    os.environ["S3SYNC_TEST_KEY_ID"] = TEST_KEY_ID
    os.environ["S3SYNC_TEST_SECRET"] = TEST_SECRET
    # boto3 clients made directly by the tests use the default chain: give it the same values.
    os.environ["AWS_ACCESS_KEY_ID"] = TEST_KEY_ID
    os.environ["AWS_SECRET_ACCESS_KEY"] = TEST_SECRET
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with local_s3.running() as server:
        yield server.endpoint_url


@pytest.fixture(scope="session")
def s3(moto_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"s3sync-test-{os.getpid()}-{next(_bucket_numbers)}"
    s3.create_bucket(Bucket=name)
    return name


class CountingEmbedder:
    """The real embedding function, counting the texts it is asked to embed."""

    def __init__(self, inner: ChromaDefaultFunction) -> None:
        self.inner = inner
        self.texts: list[str] = []
        self.calls = 0

    def __call__(self, texts: list[str]) -> Any:
        self.texts.extend(texts)
        self.calls += 1
        return self.inner(texts)


@pytest.fixture(scope="session")
def embedding_function() -> ChromaDefaultFunction:
    return ChromaDefaultFunction()


@pytest.fixture
def embedder(embedding_function: ChromaDefaultFunction) -> CountingEmbedder:
    return CountingEmbedder(embedding_function)


@pytest.fixture
def chroma_client(tmp_path: Path) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(tmp_path / "chroma"), settings=Settings(anonymized_telemetry=False))


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


ConfigFactory = Callable[..., tuple[AppConfig, Path]]


@pytest.fixture
def make_config(tmp_path: Path, moto_endpoint: str) -> ConfigFactory:
    """Write a YAML config for one source on `bucket` and load it as the CLI would."""

    def make(bucket_name: str, name: str = "docs", **source: Any) -> tuple[AppConfig, Path]:
        entry: dict[str, Any] = {
            "name": name,
            "bucket_name": bucket_name,
            "region": "us-east-1",
            "collection_name": f"{name}-collection",
            "endpoint_url": moto_endpoint,
            "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"},
            "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
        }
        entry.update(source)
        path = tmp_path / "s3sync.yaml"
        path.write_text(yaml.safe_dump({"chroma": {"path": "chroma"}, "sources": [entry]}), encoding="utf-8")
        return load_config(path), path

    return make


def put(s3: Any, bucket_name: str, files: dict[str, bytes | str]) -> None:
    for object_key, body in files.items():
        s3.put_object(Bucket=bucket_name, Key=object_key, Body=body.encode() if isinstance(body, str) else body)


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    chroma = shutil.which("chroma") or str(Path(__import__("sys").executable).parent / "chroma")
    port = free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    process = subprocess.Popen(
        [chroma, "run", "--path", str(data), "--host", LOOPBACK, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import chromadb

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
    yield port
    process.terminate()
    process.wait(timeout=20)


def notifying_queue(sqs: Any, s3: Any, bucket_name: str, queue_name: str) -> str:
    """A queue that receives the bucket's created and removed events, as S3 event notifications."""
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket_name,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
        },
    )
    return str(url)
