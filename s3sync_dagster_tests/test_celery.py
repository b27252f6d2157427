"""Parallel workers on Dagster's Celery integration (dagster-celery, Redis as the broker).

Two Celery workers, each in a network namespace of its own (a host of its own as far as the network
goes), take the steps of `s3sync sync` from Redis and write to one `chroma run` server; S3 is a moto
server. One worker is killed with SIGKILL while it executes a step: the broker hands that step to the
other worker, and the collection ends with exactly the chunks of the bucket. Without root (no
namespaces) the workers are two processes on this host.

`S3SYNC_CELERY_KEYS` sets the number of keys (default 500, about 3 minutes here; 60 for a quick check);
`S3SYNC_CELERY_BENCH=1` also measures keys/s with one and with two workers (no kill).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import yaml

from s3sync_dagster import local_s3
from s3sync_dagster.defs.executor import WORKER_APP
from s3sync_dagster.local_s3 import LOOPBACK, free_port
from s3sync_dagster.pipeline import keys
from s3sync_dagster_tests.conftest import TEST_KEY_ID, TEST_SECRET, put

REPO = Path(__file__).resolve().parent.parent
KEYS = int(os.environ.get("S3SYNC_CELERY_KEYS", "500"))
BATCH = 5  # keys per run: a hundred runs for two workers to share
RUNS = -(-KEYS // BATCH)
# A message taken by a worker that vanished returns to the queue after this; a run of BATCH keys takes
# a few seconds, so a live worker's message is never handed out twice.
VISIBILITY_TIMEOUT_S = 20
WAIT_S = 600  # against hangs only
BENCH_ENV = "S3SYNC_CELERY_BENCH"  # =1: also measure keys/s with one and with two workers
REDIS = shutil.which("redis-server")
CHROMA = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
# No snapshot, no append-only file, reachable from the namespaces; then the data directory.
REDIS_EPHEMERAL = ["--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir"]
# One step at a time in the worker's own process (a kill -9 of it is a lost host); no chatter between workers.
WORKER_OPTIONS = ["--pool", "solo", "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]

pytestmark = [
    pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (scripts/setup installs it)"),
    pytest.mark.timeout(WAIT_S + 120),
]


@dataclass
class Hosts:
    """Where the services listen (`address`) and the command prefix that puts a worker on a host of its own."""

    address: str
    worker_prefixes: list[list[str]]
    namespaces: bool


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """A bridge on this host and two namespaces on it, one per worker; loopback and no namespaces without root."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield Hosts(LOOPBACK, [[], []], namespaces=False)
        return
    tag = os.getpid() % 100000
    subnet = f"10.213.{tag % 250}"
    bridge = f"s3b{tag}"
    namespaces = [f"s3sync-w{index}-{tag}" for index in (1, 2)]
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for index, namespace in enumerate(namespaces, start=2):
            host_end, worker_end = f"s3h{tag}{index}", f"s3n{tag}{index}"
            _ip("netns", "add", namespace)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", worker_end)
            _ip("link", "set", host_end, "master", bridge)
            _ip("link", "set", host_end, "up")
            _ip("link", "set", worker_end, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{subnet}.{index}/24", "dev", worker_end)
            _ip("-n", namespace, "link", "set", worker_end, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield Hosts(f"{subnet}.1", [["ip", "netns", "exec", namespace] for namespace in namespaces], namespaces=True)
    finally:
        for namespace in namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)  # takes its veth pair with it
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def _wait(what: str, ready: Any, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit code {process.poll()})")
        time.sleep(0.2)


def _answers(call: Any) -> bool:
    """Whether call() returns: a server answers (clients may raise already when made)."""
    try:
        call()
        return True
    except Exception:
        return False


@dataclass
class Services:
    s3_endpoint: str
    broker: str
    chroma_port: int


@pytest.fixture
def services(hosts: Hosts, tmp_path: Path) -> Iterator[Services]:
    """Redis (no persistence), a `chroma run` server and a moto S3 server, all on the workers' side of the bridge."""
    import chromadb
    import redis

    os.environ.update(S3SYNC_TEST_KEY_ID=TEST_KEY_ID, S3SYNC_TEST_SECRET=TEST_SECRET)
    redis_port, chroma_port = free_port(), free_port()
    started: list[subprocess.Popen[bytes]] = []
    s3_server = None
    try:
        (tmp_path / "redis").mkdir()
        broker = subprocess.Popen(
            [str(REDIS), "--bind", hosts.address, "--port", str(redis_port), *REDIS_EPHEMERAL, str(tmp_path / "redis")],
            stdout=subprocess.DEVNULL,
        )
        started.append(broker)
        _wait("redis-server", lambda: _answers(lambda: redis.Redis(host=hosts.address, port=redis_port).ping()), broker)
        chroma = subprocess.Popen(
            [CHROMA, "run", "--path", str(tmp_path / "chroma"), "--host", hosts.address, "--port", str(chroma_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(chroma)
        _wait(
            "chroma run",
            lambda: _answers(lambda: chromadb.HttpClient(host=hosts.address, port=chroma_port).heartbeat()),
            chroma,
        )
        s3_server = local_s3.start(host=hosts.address)
        yield Services(s3_server.endpoint_url, f"redis://{hosts.address}:{redis_port}/0", chroma_port)
    finally:
        if s3_server is not None:
            s3_server.stop()
        for process in started:
            process.terminate()
            process.wait(timeout=30)


class Worker:
    """`celery -A s3sync_dagster.celery_worker worker` on a host of its own, its log in a file."""

    def __init__(self, name: str, prefix: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                [
                    *prefix,
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    WORKER_APP,
                    "worker",
                    "-n",
                    f"{name}@s3sync",
                    *WORKER_OPTIONS,
                ],
                cwd=REPO,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tasks(self, state: str) -> list[str]:
        """Ids of the tasks this worker logged as `received` or `succeeded`, in order."""
        return re.findall(rf"Task execute_plan\[([0-9a-f-]+)\] {state}", self.text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Cluster:
    """A bucket of `keys` notes, a config sending steps to Celery, and workers on their hosts."""

    def __init__(
        self, hosts: Hosts, services: Services, tmp_path: Path, keys_count: int, concurrent_runs: int = 4
    ) -> None:
        self.hosts, self.services, self.tmp_path = hosts, services, tmp_path
        bucket = f"s3sync-celery-{os.getpid()}-{keys_count}"
        s3 = boto3.client(
            "s3",
            endpoint_url=services.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id=TEST_KEY_ID,
            aws_secret_access_key=TEST_SECRET,
        )
        s3.create_bucket(Bucket=bucket)
        self.files = {
            f"docs/note-{index:04}.txt": f"Note {index}: the quick brown fox {index} jumps."
            for index in range(keys_count)
        }
        put(s3, bucket, self.files)
        self.collection_name = f"{bucket}-docs"
        config = {
            "chroma": {"host": hosts.address, "port": services.chroma_port},
            "executor": {
                "celery": {
                    "broker": services.broker,
                    "visibility_timeout_s": VISIBILITY_TIMEOUT_S,
                    "concurrent_runs": concurrent_runs,
                }
            },
            "sources": [
                {
                    "name": "docs",
                    "bucket_name": bucket,
                    "region": "us-east-1",
                    "collection_name": self.collection_name,
                    "endpoint_url": services.s3_endpoint,
                    "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"},
                    "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
                }
            ],
        }
        config_path = tmp_path / "s3sync.yaml"
        config_path.write_text(yaml.safe_dump(config))
        home = tmp_path / "dagster_home"
        home.mkdir()
        self.env = dict(
            os.environ,
            S3SYNC_CONFIG=str(config_path),
            DAGSTER_HOME=str(home),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )
        self.workers: list[Worker] = []
        self.sync_log = tmp_path / "sync.json"
        self.sync: subprocess.Popen[bytes] | None = None
        self._begun: dict[str, Counter[str]] = {}

    def start_workers(self, count: int) -> list[Worker]:
        self.workers = [
            Worker(f"w{index}", prefix, self.env, self.tmp_path / f"w{index}.log")
            for index, prefix in enumerate(self.hosts.worker_prefixes[:count], start=1)
        ]
        for worker in self.workers:
            _wait(f"worker {worker.name}", lambda worker=worker: " ready." in worker.text(), worker.process, 120)
        return self.workers

    def start_sync(self) -> subprocess.Popen[bytes]:
        """`s3sync sync docs --all`, its JSON report in a file."""
        with open(self.sync_log, "wb") as output:
            self.sync = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "s3sync_dagster.cli",
                    "sync",
                    "docs",
                    "--all",
                    "--batch-size",
                    str(BATCH),
                    "--json",
                ],
                cwd=self.tmp_path,
                env=self.env,
                stdout=output,
                stderr=subprocess.PIPE,
            )
        return self.sync

    def sync_output(self) -> str:
        """The end of the sync's error output and report, once it has ended."""
        assert self.sync is not None
        _, errors = self.sync.communicate(timeout=WAIT_S)
        report = self.sync_log.read_text()[-3000:]
        return f"exit code {self.sync.returncode}\n{errors.decode(errors='replace')[-3000:]}\n{report}"

    def sync_result(self) -> dict[str, Any]:
        output = self.sync_output()
        assert self.sync is not None and self.sync.returncode == 0, output
        result: dict[str, Any] = json.loads(self.sync_log.read_text())
        return result

    def stop(self) -> None:
        if self.sync is not None and self.sync.poll() is None:
            self.sync.kill()
            self.sync.wait()
        for worker in self.workers:
            worker.stop()

    def steps_begun(self, worker: Worker) -> int:
        """Steps the worker has begun: dagster-celery's task records an engine event naming it first thing."""
        with dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"]) as instance:
            total = 0
            for record in instance.get_run_records():
                run_id = record.dagster_run.run_id
                begun = self._begun.get(run_id)
                if begun is None:
                    begun = Counter()
                    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
                        event = entry.dagster_event
                        value = event.engine_event_data.metadata.get("Celery worker") if event else None
                        if value is not None:
                            begun[str(getattr(value, "value", value))] += 1
                    if record.dagster_run.is_finished:  # its count is final
                        self._begun[run_id] = begun
                total += begun[f"{worker.name}@s3sync"]
        return total

    def stored_chunks(self) -> dict[str, str]:
        import chromadb

        client = chromadb.HttpClient(host=self.hosts.address, port=self.services.chroma_port)
        rows = client.get_collection(self.collection_name).get(include=["documents"])
        assert len(rows["ids"]) == len(set(rows["ids"]))
        return dict(zip(rows["ids"], rows["documents"], strict=True))

    def expected_chunks(self) -> dict[str, str]:
        return {keys.chunk_id(keys.object_id(object_key), 0): text for object_key, text in self.files.items()}


def test_two_celery_workers_index_every_key_once_and_a_killed_workers_step_is_redone_by_the_other(
    hosts: Hosts, services: Services, tmp_path: Path
) -> None:
    cluster = Cluster(hosts, services, tmp_path, KEYS)
    try:
        victim, survivor = cluster.start_workers(2)
        sync = cluster.start_sync()
        # Kill the first worker in the middle: once it has done about half its share of the steps, while it
        # executes another.
        # Only a step the worker has begun counts: a message it has received but not begun is still the
        # broker's even when acknowledged early (Celery's default), so it would prove nothing.
        share = max(1, RUNS // 4)
        deadline = time.monotonic() + WAIT_S
        killed_task = None
        while killed_task is None:
            received, succeeded = victim.tasks("received"), victim.tasks("succeeded")
            in_a_step = len(received) == len(succeeded) + 1 == cluster.steps_begun(victim)
            if len(succeeded) >= share and in_a_step:
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait()
                killed_task = received[-1]
            if sync.poll() is not None:
                pytest.fail(f"the sync ended before the worker could be killed: {cluster.sync_output()}")
            assert time.monotonic() < deadline, f"the first worker never took step {share + 1}"
            time.sleep(0.05)
        assert killed_task not in victim.tasks("succeeded"), "the kill came after the step ended: nothing to redo"
        result = cluster.sync_result()
    finally:
        cluster.stop()

    # The killed worker's step was handed to the other worker, which finished it.
    assert killed_task in survivor.tasks("received"), survivor.text()[-3000:]
    assert killed_task in survivor.tasks("succeeded"), survivor.text()[-3000:]
    # Both workers did work, and every run succeeded.
    assert victim.tasks("succeeded") and survivor.tasks("succeeded")
    assert len(result["runs"]) == RUNS
    assert all(run["success"] for run in result["runs"]), result["runs"]
    # Every key reported; its chunks embedded and written once: a key the killed worker had written is
    # found unchanged when its step is redone, not written again.
    statuses = Counter(report["status"] for report in result["keys"])
    assert set(statuses) <= {"indexed", "unchanged"}, statuses
    assert {report["object_key"] for report in result["keys"]} == set(cluster.files)
    indexed = Counter(report["object_key"] for report in result["keys"] if report["status"] == "indexed")
    assert max(indexed.values()) == 1, [key for key, times in indexed.items() if times > 1]
    # The server's collection holds exactly the bucket's chunks: none missing, none twice, none stale.
    assert cluster.stored_chunks() == cluster.expected_chunks()


@pytest.mark.skipif(not os.environ.get(BENCH_ENV), reason=f"a measurement: set {BENCH_ENV}=1")
@pytest.mark.parametrize(("workers", "concurrent_runs"), [(1, 2), (2, 2), (1, 4), (2, 4)])
def test_throughput_with_one_and_two_workers(
    workers: int,
    concurrent_runs: int,
    hosts: Hosts,
    services: Services,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = Cluster(hosts, services, tmp_path, KEYS, concurrent_runs)
    try:
        cluster.start_workers(workers)
        cluster.start_sync()
        result = cluster.sync_result()
    finally:
        cluster.stop()
    assert cluster.stored_chunks() == cluster.expected_chunks()
    with capsys.disabled():
        print(
            f"\ncelery, {workers} worker(s), {concurrent_runs} runs at a time, {KEYS} keys in runs of {BATCH}: "
            f"{result['duration_s']:.1f} s, "
            f"{KEYS / result['duration_s']:.2f} keys/s"
        )
