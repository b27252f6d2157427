"""Shared fixtures: a real moto server over HTTP, embedded Chroma, a real Dagster instance, config files."""

from __future__ import annotations

import gc
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import yaml
from hypothesis import settings

from benchmarks.scale.reliability import REPORT_ENV
from s3sync_dagster.commands.demo import local_s3
from s3sync_dagster.commands.demo.local_s3 import LOOPBACK, free_port
from s3sync_dagster.commands.resident import SERVER_ENV as RESIDENT_ENV
from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction
from s3sync_dagster.pipeline.store import close_clients

# Credentials the tests hand over through the environment, as users do. Moto accepts anything; the
# values are distinctive so a test can prove they never leak into output, events or metadata.
TEST_KEY_ID = "S3SYNC-TEST-KEY-ID-7f3a"
TEST_SECRET = "s3sync-test-secret-value-9c41e2"

_bucket_numbers = itertools.count()

# `s3sync query` run by a test answers in its own process and leaves no resident query process behind; the
# tests of the resident process turn it on for themselves (test_query).
os.environ[RESIDENT_ENV] = "0"

# The Dagster daemons the tests start look for backfill work every DAEMON_INTERVAL_S seconds, not Dagster's 30
# (daemon_pace/sitecustomize.py says how and why): a backfill of a few keys is done in seconds instead of ~1 minute.
DAEMON_INTERVAL_S = 5
DAEMON_INTERVAL_ENV = "S3SYNC_TEST_DAEMON_INTERVAL_S"
os.environ[DAEMON_INTERVAL_ENV] = str(DAEMON_INTERVAL_S)
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(Path(__file__).resolve().parent / "daemon_pace"), os.environ.get("PYTHONPATH")])
)

# CI must be repeatable: the same examples every run there; locally each run explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


OPEN_FILES_COLLECTED = 300

TESTS = Path(__file__).resolve().parent
# Modules whose tests start processes of their own: a Dagster webserver or daemon, `dg` and `create-dagster`
# projects, Celery workers, PostgreSQL, a `chroma run` server, the resident query process, Chromium, fresh
# virtualenvs, or `s3sync` commands killed, raced and watched on a terminal. They carry the `servers` mark; so does
# any test elsewhere that uses a server (SERVER_FIXTURES: the moto S3 endpoint, `chroma run`, PostgreSQL), directly
# or through its fixtures. `./scripts/test --fast` leaves them out.
SERVER_MODULES = frozenset(
    {
        "cli/test_concurrent_commands.py",
        "cli/test_demo.py",
        "cli/test_named_blocks.py",
        "cli/test_named_errors.py",
        "cli/test_progress.py",
        "cli/test_secret_doors.py",
        "dagster/test_component.py",
        "dagster/test_component_attributes.py",
        "dagster/test_daemon.py",
        "dagster/test_queues.py",
        "dagster/test_ui_backfill.py",
        "dagster/test_ui_backfill_million.py",
        "dagster/test_webserver.py",
        "deploy/test_celery.py",
        "deploy/test_celery_daemon.py",
        "deploy/test_chroma_server.py",
        "deploy/test_deploy.py",
        "deploy/test_install.py",
        "deploy/test_wheel.py",
        "house/test_benchmarks.py",
        "safety/test_claims.py",
        "safety/test_faults.py",
        "safety/test_store_open.py",
        "search/test_resident.py",
    }
)
SERVER_FIXTURES = frozenset(
    {"moto_endpoint", "chroma_server", "postgres", "postgres_database", "lexicon_database", "readers_lexicon"}
)
# The longest modules first (measured by the suite's own durations): the workers take whole modules in this order
# (scripts/test), so none of the long ones starts last and leaves one worker running alone at the end.
LONGEST_FIRST = (
    "deploy/test_deploy.py",
    "dagster/test_daemon.py",
    "deploy/test_celery_daemon.py",
    "deploy/test_wheel.py",
    "dagster/test_ui_backfill.py",
    "dagster/test_sensors.py",
    "dagster/test_component.py",
    "dagster/test_webserver.py",
    "dagster/test_ui_backfill_million.py",
    "safety/test_tenancy.py",
    "deploy/test_celery.py",
    "safety/test_reliability.py",
    "dagster/test_reembed.py",
    "deploy/test_install.py",
    "engine/test_sync.py",
    "cli/test_concurrent_commands.py",
    "safety/test_faults.py",
    "search/test_resident.py",
    "cli/test_progress.py",
    "cli/test_secret_doors.py",
    "cli/test_named_errors.py",
    "search/test_query.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark what starts servers (see SERVER_MODULES), and put the longest modules first."""
    for item in items:
        module = item.path.relative_to(TESTS).as_posix()
        params = getattr(getattr(item, "callspec", None), "params", {})
        served = any(isinstance(value, str) and value == "server" for value in params.values())
        if module in SERVER_MODULES or SERVER_FIXTURES & set(item.fixturenames) or served:
            item.add_marker(pytest.mark.servers)
    rank = {module: index for index, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.relative_to(TESTS).as_posix(), len(rank)))


@pytest.fixture(autouse=True)
def _closes_its_stores(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test's embedded stores are closed after it. Chroma keeps an engine per store path for the life of
    the process (its SQLite files, its threads' event fds): a worker running ~400 tests reached 1,756 open
    files, past select()'s 1,024 (pexpect failed). A module whose fixture holds a client across its tests
    is marked `keeps_clients`; its stores close with the next test of another module. An engine left in a
    reference cycle (a collection kept by Dagster's objects of the test) closes when the cycle is collected:
    collected here once over OPEN_FILES_COLLECTED files are open (a collection takes ~0.1 s)."""
    yield
    if request.node.get_closest_marker("keeps_clients") is None:
        close_clients()
        if len(os.listdir("/proc/self/fd")) > OPEN_FILES_COLLECTED:
            gc.collect()


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
    """A real instance in memory, for sensor ticks and in-process runs (a test needing one on disk takes
    `home_instance`): one on disk (`instance_for_test`) took ~0.4 CPU s to create its databases and ~0.2 s more
    per run for that run's event database, each stamped with Dagster's migrations (cProfile of test_reliability:
    a fifth of its CPU)."""
    with dg.DagsterInstance.ephemeral() as test_instance:
        yield test_instance


@pytest.fixture(scope="session")
def home_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Dagster home whose databases Dagster made, copied for each test that needs a home: making them takes
    ~0.5 CPU s (each stamped with Dagster's migrations), a copy opened ~0.1 s."""
    home = tmp_path_factory.mktemp("dagster_home_template")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dg.DagsterInstance.from_config(str(home)).dispose()
    return home


@pytest.fixture
def home_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home_template: Path) -> Iterator[dg.DagsterInstance]:
    """A real instance in $DAGSTER_HOME, so a command the test runs (`s3sync plan`, `s3sync repair`, which open
    that) and the test share it."""
    home = tmp_path / "dagster_home"
    shutil.copytree(home_template, home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as opened:
        yield opened


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home_template: Path) -> Path:
    """A real Dagster home in $DAGSTER_HOME, the one the `s3sync` command opens (and the test may read)."""
    home = tmp_path / "dagster_home"
    shutil.copytree(home_template, home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


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
        if "auto_sync" in source:
            # The sensor's run ends with its keys, as a test of anything else expects; test_sensors' linger tests
            # (and the benchmarks) read the queue from the run as the default does.
            entry.setdefault("sqs_linger_seconds", 0)
            # A tick of an empty queue in a test returns in 4 s, not the default 19.
            entry.setdefault("sqs_wait_seconds", 4)
        if "poll_interval_seconds" in source:
            entry.setdefault("poll_linger_seconds", 0)  # as sqs_linger_seconds: the linger tests set it
        path = tmp_path / "s3sync.yaml"
        path.write_text(yaml.safe_dump({"chroma": {"path": "chroma"}, "sources": [entry]}), encoding="utf-8")
        return load_config(path), path

    return make


def put(s3: Any, bucket_name: str, files: dict[str, bytes | str]) -> None:
    for object_key, body in files.items():
        s3.put_object(Bucket=bucket_name, Key=object_key, Body=body.encode() if isinstance(body, str) else body)


def start_chroma_server(data: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """A `chroma run` server on a free loopback port over `data`, once it answers: (port, its process)."""
    import chromadb

    chroma = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    port = free_port()
    process = subprocess.Popen(
        [chroma, "run", "--path", str(data), "--host", LOOPBACK, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            chromadb.HttpClient(host=LOOPBACK, port=port).heartbeat()
            return port, process
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("chroma run did not start") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port, process = start_chroma_server(tmp_path_factory.mktemp("chroma-server"))
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


# --- the reliability table (RELIABILITY.md, `python -m benchmarks.scale.reliability`) ----------------------------

# (collection name, chunk id) -> chunk text: what Chroma must hold, all collections together.
Chunks = dict[tuple[str, str], str]


@dataclass
class Row:
    """One case's line in RELIABILITY.md."""

    family: str
    case: str
    known_bug: str = ""  # the xfail reason, when the case shows a bug not fixed yet
    passed: bool = False  # set by the case's last line: an assertion on the way leaves it False
    chunks_expected: int = 0
    chunks_found: int = 0
    lost: int = 0  # expected chunks missing, or holding another text
    duplicated: int = 0  # ids or texts present more often than expected
    stray: int = 0  # chunks that should not be there at all (neither their id nor their text is expected)

    def observe(self, expected: Chunks, found: list[tuple[str, str, str]]) -> None:
        """Count what differs between the chunks expected and those found; the worst of all checks stays."""
        by_key = {(collection, chunk_id): text for collection, chunk_id, text in found}
        expected_ids = Counter(chunk_id for _, chunk_id in expected)
        expected_texts = Counter(expected.values())
        found_ids = Counter(chunk_id for _, chunk_id, _ in found)
        found_texts = Counter(text for _, _, text in found)
        self.chunks_expected = len(expected)
        self.chunks_found = max(self.chunks_found, len(found))
        self.lost = max(self.lost, sum(1 for key, text in expected.items() if by_key.get(key) != text))
        self.duplicated = max(
            self.duplicated,
            sum(max(0, n - expected_ids[i]) for i, n in found_ids.items() if i in expected_ids)
            + sum(max(0, n - expected_texts[t]) for t, n in found_texts.items() if t in expected_texts),
        )
        self.stray = max(
            self.stray, sum(1 for key, text in by_key.items() if key not in expected and text not in expected_texts)
        )


@pytest.fixture(scope="session")
def reliability_rows() -> Iterator[list[Row]]:
    rows: list[Row] = []
    yield rows
    target = os.environ.get(REPORT_ENV)
    if target:
        worker = os.environ.get("PYTEST_XDIST_WORKER")  # each xdist worker its own file: TARGET.gw0, TARGET.gw1
        Path(f"{target}.{worker}" if worker else target).write_text(
            json.dumps([asdict(row) for row in rows], indent=1), encoding="utf-8"
        )


@pytest.fixture
def fault_row(request: pytest.FixtureRequest, reliability_rows: list[Row]) -> Row:
    """The table's row of a fault-injection test (marked `reliability`): it observes the chunks at its end."""
    callspec = getattr(request.node, "callspec", None)
    marker = request.node.get_closest_marker("reliability")
    family = str(marker.args[0]) if marker is not None and marker.args else "faults"
    this = Row(family=family, case=request.node.originalname + (f"[{callspec.id}]" if callspec else ""))
    reliability_rows.append(this)
    return this


def store_chunks(client: Any) -> list[tuple[str, str, str]]:
    """(collection, chunk id, text) of every chunk in a Chroma store."""
    found: list[tuple[str, str, str]] = []
    for collection in client.list_collections():
        rows = collection.get(include=["documents"])
        found += [(collection.name, i, text) for i, text in zip(rows["ids"], rows["documents"], strict=True)]
    return found


class ResidentCommands:
    """`s3sync` commands run as a user runs them with the resident query process on (commands/resident.py),
    their runtime folder a short one of their own: a socket's path holds at most 107 bytes, and tmp_path under
    pytest-xdist is longer than that allows. `env` is theirs to change."""

    def __init__(self) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="s3q-"))
        self.env = dict(
            os.environ, S3SYNC_QUERY_SERVER="1", XDG_RUNTIME_DIR=str(self.run_dir), S3SYNC_QUERY_IDLE_SECONDS="120",
            S3SYNC_TEST_KEY_ID=TEST_KEY_ID, S3SYNC_TEST_SECRET=TEST_SECRET,
        )  # fmt: skip

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(Path(sys.executable).parent / "s3sync"), *args]
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=300)

    def served(self) -> int | None:
        """How many queries the resident process answered; None when none runs."""
        status = json.loads(self("query-server", "status", "--json").stdout)
        return status["served"] if status["running"] else None

    def wait_until_serving(self, seconds: float = 120) -> int | None:
        deadline = time.monotonic() + seconds
        while self.served() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.served()

    def close(self) -> None:
        self("query-server", "stop")
        shutil.rmtree(self.run_dir, ignore_errors=True)
