"""Celery workers on hosts of their own, for test_celery.py and section 10 of the benchmarks.

Redis (the broker), a `chroma run` server, a moto S3 server and, for the production instance, PostgreSQL
listen on a bridge; each worker runs in a network namespace on it: a host of its own as far as the network
goes. Without root (no namespaces) everything is on loopback and the workers are two processes here.
`Cluster` fills a bucket, writes the config sending steps to Celery, starts workers and `s3sync sync --all`.
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
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks import common
from benchmarks.servers import postgres_server
from s3sync_dagster.commands.demo import LOOPBACK, free_port, start
from s3sync_dagster.defs.executor import WORKER_APP
from s3sync_dagster.defs.names import pool_name

REPO = common.REPO
REDIS = shutil.which("redis-server")
CHROMA = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
# No snapshot, no append-only file, reachable from the namespaces; then the data directory.
REDIS_EPHEMERAL = ["--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir"]
# No chatter between workers; the pool is the worker's own choice (Worker below).
WORKER_OPTIONS = ["-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
# One step at a time in the worker's own process, as docs/deployment.md starts workers.
SOLO = ["--pool", "solo"]
# Celery's default pool, one child: the worker's main process takes messages, a child executes them.
PREFORK = ["--pool", "prefork", "--concurrency", "1"]
WAIT_S = 600  # against hangs only


@dataclass
class Hosts:
    """Where the services listen (`address`) and the command prefix that puts a worker on a host of its own;
    with namespaces, each worker's address and the bridge's end of its link, to cut."""

    address: str
    worker_prefixes: list[list[str]]
    namespaces: bool
    worker_addresses: list[str] = field(default_factory=list)
    worker_links: list[str] = field(default_factory=list)

    def link(self, worker: int, up: bool) -> None:
        """Worker `worker`'s cable in (`up`) or out, at the bridge's end: what it sends and what is sent to it is
        lost meanwhile, and nothing tells it so (its connections stay open, a new one waits for an answer)."""
        _ip("link", "set", self.worker_links[worker], "up" if up else "down")


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@contextmanager
def hosts(count: int = 2) -> Iterator[Hosts]:
    """A bridge on this host and `count` namespaces on it, one per worker; loopback and no namespaces
    without root."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield Hosts(LOOPBACK, [[] for _ in range(count)], namespaces=False)
        return
    tag = os.getpid() % 100000
    subnet = f"10.213.{tag % 250}"
    bridge = f"s3b{tag}"
    namespaces = [f"s3sync-w{index}-{tag}" for index in range(1, count + 1)]
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
        yield Hosts(
            f"{subnet}.1",
            [["ip", "netns", "exec", namespace] for namespace in namespaces],
            namespaces=True,
            worker_addresses=[f"{subnet}.{index}" for index in range(2, count + 2)],
            worker_links=[f"s3h{tag}{index}" for index in range(2, count + 2)],
        )
    finally:
        for namespace in namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)  # takes its veth pair with it
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def wait_until(what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit code {process.poll()})")
        time.sleep(0.2)


def answers(call: Callable[[], object]) -> bool:
    """Whether call() returns: a server answers (clients may raise already when made)."""
    try:
        call()
        return True
    except Exception:
        return False


@dataclass
class Services:
    address: str
    s3_endpoint: str
    broker: str
    chroma_port: int
    postgres: postgres_server.LocalPostgres | None  # None: the instance is SQLite files in DAGSTER_HOME
    chroma_pid: int = 0  # the `chroma run` server's process, to pause (SIGSTOP: it takes connections, answers none)

    def forget_redis_clients(self, client_address: str) -> int:
        """Redis's side of every connection from `client_address` destroyed at once (`ss -K`: the kernel sends
        one reset and keeps nothing), as a server does that gave up on a client; how many there were. Sent
        while that client's link is cut, the resets are lost: the client learns of it only when it next writes."""
        port = self.broker.rsplit(":", 1)[1].split("/")[0]
        selector = ["state", "established", "dst", client_address, "sport", "=", f":{port}"]
        listed = subprocess.run(["ss", "-H", "-t", *selector], check=True, capture_output=True, text=True)
        subprocess.run(["ss", "-K", "-t", *selector], check=True, capture_output=True)
        return len(listed.stdout.splitlines())


@contextmanager
def services(where: Hosts, workdir: Path, postgres: bool = True) -> Iterator[Services]:
    """Redis (no persistence), a `chroma run` server, a moto S3 server and (with `postgres`) PostgreSQL,
    all on the workers' side of the bridge."""
    import chromadb
    import redis

    if REDIS is None:
        raise FileNotFoundError("redis-server is not installed (scripts/setup installs it)")
    redis_port, chroma_port = free_port(), free_port()
    with ExitStack() as stack:

        def started(process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
            def stop() -> None:
                process.terminate()
                process.wait(timeout=30)

            stack.callback(stop)
            return process

        (workdir / "redis").mkdir(parents=True, exist_ok=True)
        broker = started(
            subprocess.Popen(
                [REDIS, "--bind", where.address, "--port", str(redis_port), *REDIS_EPHEMERAL, str(workdir / "redis")],
                stdout=subprocess.DEVNULL,
            )
        )
        wait_until("redis-server", lambda: answers(redis.Redis(host=where.address, port=redis_port).ping), broker)
        chroma = started(
            subprocess.Popen(
                [CHROMA, "run", "--path", str(workdir / "chroma"), "--host", where.address, "--port", str(chroma_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_until(
            "chroma run",
            lambda: answers(lambda: chromadb.HttpClient(host=where.address, port=chroma_port).heartbeat()),
            chroma,
        )
        s3_server = start(host=where.address)
        stack.callback(s3_server.stop)
        database = stack.enter_context(postgres_server.running(host=where.address)) if postgres else None
        yield Services(where.address, s3_server.endpoint_url, f"redis://{where.address}:{redis_port}/0", chroma_port,
                       database, chroma.pid)  # fmt: skip


class Worker:
    """`celery -A s3sync_dagster.commands.celery_worker worker` on a host of its own, its log in a file."""

    def __init__(self, name: str, prefix: list[str], env: Mapping[str, str], log: Path, pool: list[str] = SOLO) -> None:
        self.name, self.log = name, log
        with open(log, "wb") as output:
            command = [*prefix, sys.executable, "-m", "celery", "-A", WORKER_APP, "worker", "-n", f"{name}@s3sync"]
            # A session of its own: kill() takes the worker's children with it, as a lost host would.
            self.process = subprocess.Popen(
                [*command, *pool, *WORKER_OPTIONS], cwd=REPO, env=dict(env), stdout=output,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        return " ready." in self.text()

    def tasks(self, state: str) -> list[str]:
        """Ids of the tasks this worker logged as `received` or `succeeded`, in order."""
        return re.findall(rf"Task execute_plan\[([0-9a-f-]+)\] {state}", self.text())

    def kill(self) -> None:
        """SIGKILL to the worker and every process it started: the host is gone."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    """A bucket of `files`, a config sending steps to Celery, an instance, and workers on their hosts."""

    def __init__(
        self,
        where: Hosts,
        services: Services,
        workdir: Path,
        files: Mapping[str, bytes],
        *,
        batch: int,
        concurrent_runs: int = 4,
        visibility_timeout_s: int = 20,
        source_settings: Mapping[str, Any] | None = None,
    ) -> None:
        import boto3

        self.hosts, self.services, self.workdir, self.files, self.batch = where, services, workdir, files, batch
        common.credentials()
        bucket = f"s3sync-celery-{os.getpid()}-{len(files)}-{free_port()}"
        s3 = boto3.client("s3", endpoint_url=services.s3_endpoint, region_name="us-east-1")
        common.fill_bucket(s3, bucket, files)
        self.bucket, self.collection_name = bucket, f"{bucket}-docs"
        config = {
            "chroma": {"host": services.address, "port": services.chroma_port},
            "executor": {
                "celery": {
                    "broker": services.broker,
                    "visibility_timeout_s": visibility_timeout_s,
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
                    "aws_access_key_id": {"env": common.KEY_ID_VAR},
                    "aws_secret_access_key": {"env": common.SECRET_VAR},
                    **(source_settings or {}),  # e.g. poll_interval_seconds, keys_per_run
                }
            ],
        }
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "s3sync.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self.config_path = config_path
        settings = common.DEPLOY_SETTINGS if services.postgres is not None else common.REPO / "dagster.yaml"
        self.home = common.dagster_home(workdir / "dagster_home", settings)
        self.env = dict(
            os.environ,
            **(services.postgres.env() if services.postgres is not None else {}),
            S3SYNC_CONFIG=str(config_path),
            DAGSTER_HOME=str(self.home),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )
        if services.postgres is not None:
            # The production instance holds a source to one step at a time (its pool, deploy/dagster.yaml);
            # parallel workers on one source need the limit raised, as docs/deployment.md says.
            subprocess.run(
                [str(common.BIN / "dagster"), "instance", "concurrency", "set", pool_name("docs"), str(concurrent_runs)],
                env=self.env, check=True, capture_output=True,
            )  # fmt: skip
        self.workers: list[Worker] = []
        self.sync_log = workdir / "sync.json"
        self.sync: subprocess.Popen[bytes] | None = None

    def start_workers(self, pools: list[list[str]], env: Mapping[str, str] | None = None) -> list[Worker]:
        """One worker per entry of `pools` (its pool options), each on a host of its own; `env` added to theirs."""
        self.workers = [
            Worker(f"w{index}", prefix, {**self.env, **(env or {})}, self.workdir / f"w{index}.log", pool)
            for index, (prefix, pool) in enumerate(zip(self.hosts.worker_prefixes, pools, strict=False), start=1)
        ]
        for worker in self.workers:
            wait_until(f"worker {worker.name}", worker.ready, worker.process, 120)
        return self.workers

    def served_env(self) -> dict[str, str]:
        """What Dagster's own processes (webserver, daemon, their run workers) need beyond DAGSTER_HOME and
        S3SYNC_CONFIG, which benchmarks.servers.dagster_server sets: the instance's database, this checkout first."""
        given = {"DAGSTER_HOME", "S3SYNC_CONFIG"}
        return {name: value for name, value in self.env.items() if name not in given and os.environ.get(name) != value}

    def cli(self, *argv: str) -> str:
        """`s3sync ARGV...` on this cluster's config and instance; its output, or an error naming the command."""
        done = subprocess.run([sys.executable, "-m", "s3sync_dagster.commands.cli", *argv], cwd=self.workdir, env=self.env,
                              capture_output=True, timeout=WAIT_S)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"s3sync {' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()[-3000:]}")
        return done.stdout.decode()

    def start_sync(self) -> subprocess.Popen[bytes]:
        """`s3sync sync docs --all`, its JSON report in a file."""
        with open(self.sync_log, "wb") as output:
            self.sync = subprocess.Popen(
                [sys.executable, "-m", "s3sync_dagster.commands.cli", "sync", "docs", "--all", "--batch-size", str(self.batch),
                 "--json"],
                cwd=self.workdir, env=self.env, stdout=output, stderr=subprocess.PIPE,
            )  # fmt: skip
        return self.sync

    def sync_output(self) -> str:
        """The end of the sync's error output and report, once it has ended."""
        assert self.sync is not None
        try:
            _, errors = self.sync.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"s3sync sync did not end within {WAIT_S} s: a run waits for a step that never ends "
                               f"(lost with a worker?); its report so far: {self.sync_log.read_text()[-2000:]}") from None  # fmt: skip
        report = self.sync_log.read_text()[-3000:]
        return f"exit code {self.sync.returncode}\n{errors.decode(errors='replace')[-3000:]}\n{report}"

    def sync_result(self) -> dict[str, Any]:
        output = self.sync_output()
        if self.sync is None or self.sync.returncode != 0:
            raise RuntimeError(f"s3sync sync failed: {output}")
        result: dict[str, Any] = json.loads(self.sync_log.read_text())
        return result

    def stop(self) -> None:
        if self.sync is not None and self.sync.poll() is None:
            self.sync.kill()
            self.sync.wait()
        for worker in self.workers:
            worker.stop()

    def stored_chunks(self) -> dict[str, str]:
        import chromadb

        client = chromadb.HttpClient(host=self.services.address, port=self.services.chroma_port)
        rows = client.get_collection(self.collection_name).get(include=["documents"])
        if len(rows["ids"]) != len(set(rows["ids"])):
            raise AssertionError(f"{self.collection_name} holds an id twice")
        return dict(zip(rows["ids"], rows["documents"] or [], strict=True))
