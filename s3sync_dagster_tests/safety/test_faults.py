"""Faults that must say what happened: a frozen S3 endpoint, Chroma down, two syncs on a fresh Dagster home."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import dagster as dg
import pytest
import yaml
from chromadb.config import Settings

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo.local_s3 import LOOPBACK, free_port
from s3sync_dagster.commands.runs.dagster_home import open_instance
from s3sync_dagster.commands.runs.partitions import register_keys
from s3sync_dagster.commands.runs.ranged import QUIET_RUN_CONFIG
from s3sync_dagster.commands.runs.reports import reports_of
from s3sync_dagster.config import load_config
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import documents_asset_key, partitions_name
from s3sync_dagster.defs.resources import S3Connection, s3_connection
from s3sync_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import ConfigFactory, Row, put, store_chunks

REPO = Path(__file__).resolve().parents[2]
SHORT_TIMEOUTS = {"connect_seconds": 1, "read_seconds": 1, "max_attempts": 2}


class FrozenEndpoint:
    """A TCP server that accepts every connection and never answers: a hung S3 server or balancer."""

    def __init__(self) -> None:
        self._server = socket.create_server((LOOPBACK, 0), backlog=64)
        self.url = f"http://{LOOPBACK}:{self._server.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:  # closed
                return
            self.connections.append(connection)  # held open, never read, never answered

    def __enter__(self) -> FrozenEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def frozen() -> Iterator[FrozenEndpoint]:
    with FrozenEndpoint() as endpoint:
        yield endpoint


def _cli(*argv: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`s3sync` in its own process, as a user runs it: what lands on the terminal is what is checked."""
    return subprocess.run(
        [sys.executable, "-m", "s3sync_dagster.commands.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DAGSTER_HOME": str(home)},
        cwd=REPO,
    )


def _fresh_home(path: Path) -> Path:
    """A new Dagster home with this repo's instance settings."""
    path.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", path / "dagster.yaml")
    return path


def _store(config_path: Path) -> Any:
    config = load_config(config_path)
    return chromadb.PersistentClient(path=config.chroma.embedded_path, settings=Settings(anonymized_telemetry=False))


def _chunks(config_path: Path, collection_name: str) -> dict[str, Any]:
    client = _store(config_path)
    try:
        found = client.get_collection(collection_name).get(include=["metadatas"])
    except Exception:  # never created
        return {}
    return {chunk_id: metadata for chunk_id, metadata in zip(found["ids"], found["metadatas"] or [], strict=True)}


# (a) A frozen S3 endpoint: timeouts, retries, then the run's one failure that says so (its bucket is tried once,
# before any key: every key would fail alike).


@pytest.mark.reliability
@pytest.mark.timeout(240)  # the old clients waited 60 s per read, 5 times per request: minutes per key
def test_a_frozen_s3_endpoint_fails_the_run_once_naming_it_and_the_timeout(
    bucket: str, make_config: ConfigFactory, instance: dg.DagsterInstance, frozen: FrozenEndpoint, fault_row: Row
) -> None:
    object_keys = ["d/a.txt", "d/b.md", "d/c.py"]
    config, path = make_config(bucket, path_prefix="d/", endpoint_url=frozen.url, timeouts=SHORT_TIMEOUTS)
    register_keys(instance, config.source("docs"), object_keys)
    ordered = instance.get_dynamic_partitions(partitions_name("docs"))
    execution = (
        build_definitions(config)
        .resolve_implicit_global_asset_job_def()
        .execute_in_process(
            instance=instance,
            asset_selection=[documents_asset_key("docs")],
            tags={RANGE_START_TAG: ordered[0], RANGE_END_TAG: ordered[-1]},
            run_config=QUIET_RUN_CONFIG,
            raise_on_error=False,
        )
    )
    assert not execution.success
    assert reports_of(instance, execution.run_id) == []  # no key was tried, none failed on its own
    failures = [event for event in execution.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert [failure.step_failure_data.user_failure_data.description for failure in failures] == [
        f"source 'docs' endpoint_url: the S3 endpoint {frozen.url} did not answer within the read timeout of 1 s "
        "(2 attempts): correct endpoint_url, or start the endpoint"
    ]
    assert len(frozen.connections) >= 2  # every attempt was made, on a new connection
    fault_row.observe({}, store_chunks(_store(path)))
    assert _chunks(path, "docs-collection") == {}
    fault_row.passed = True


@pytest.mark.timeout(240)
def test_sync_against_a_frozen_endpoint_says_so_in_one_line(
    bucket: str, make_config: ConfigFactory, tmp_path: Path, frozen: FrozenEndpoint
) -> None:
    _, path = make_config(bucket, path_prefix="d/", endpoint_url=frozen.url, timeouts=SHORT_TIMEOUTS)
    done = _cli("sync", "docs", "--key", "d/a.txt", "--config", str(path), home=_fresh_home(tmp_path / "home"))
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert done.stderr == (
        f"s3sync: source 'docs' endpoint_url: the S3 endpoint {frozen.url} did not answer within the read timeout "
        "of 1 s (2 attempts): correct endpoint_url, or start the endpoint\n"
    )


def test_sqs_clients_get_the_sources_timeouts_and_room_for_a_long_poll(bucket: str, make_config: ConfigFactory) -> None:
    config, _ = make_config(bucket, sqs_queue_url="http://127.0.0.1:1/123/q", timeouts=SHORT_TIMEOUTS)
    client = s3_connection(config.source("docs")).get_sqs_client()
    assert client.meta.config.connect_timeout == 1
    assert client.meta.config.read_timeout == 1 + 20  # a 20 s long poll is silent, not frozen
    assert client.meta.config.retries == {"total_max_attempts": 2, "mode": "standard"}
    default = S3Connection(source_name="docs").get_sqs_client()
    assert (default.meta.config.connect_timeout, default.meta.config.retries["total_max_attempts"]) == (10, 3)


# (b) Chroma down: one line naming the store, the cause and the settings to check, said before any run starts
# (so no run is made, nor its partitions marked failed). A run launched from the UI fails once with the same
# words, the whole chain in its log (test_errors).


@pytest.mark.reliability
def test_chroma_down_is_one_line_on_the_terminal_and_no_run(
    fault_row: Row,
    s3: Any,
    bucket: str,
    make_config: ConfigFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    put(s3, bucket, {f"d/file-{n}.txt": f"file {n}\n" for n in range(3)})
    _, path = make_config(bucket, path_prefix="d/", keys_per_run=1)
    raw = yaml.safe_load(path.read_text())
    port = free_port()  # nothing listens there
    raw["chroma"] = {"host": LOOPBACK, "port": port}
    path.write_text(yaml.safe_dump(raw))
    home = _fresh_home(tmp_path / "home")

    done = _cli("sync", "docs", "--all", "--config", str(path), home=home)
    assert done.returncode == 2, done
    assert done.stdout == ""
    store = f"Chroma server http://{LOOPBACK}:{port}"
    assert done.stderr == (
        f"s3sync: {store} cannot be reached: Connection refused: check chroma.host and chroma.port, and that a "
        f"Chroma server runs there (chroma run --port {port})\n"
    )

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_records() == []  # said before any run

    assert main(["sync", "docs", "--all", "--config", str(path), "--json"]) == 2
    out = capsys.readouterr()
    assert out.err.startswith(f"s3sync: {store} ") and out.err.count("\n") == 1 and "Traceback" not in out.err
    fault_row.observe({}, [])  # the store was down: nothing could be written, and nothing else happened
    fault_row.passed = True


# (d) Two syncs started together on a fresh Dagster home.


def _open_and_register(home: str, config_path: str, start: Any, errors: Any) -> None:
    os.environ["DAGSTER_HOME"] = home
    config = load_config(config_path)
    start.wait()  # both processes set up the fresh home at the same moment
    try:
        with open_instance(config_path) as instance:
            register_keys(instance, config.source("docs"), [f"d/file-{n:03d}.txt" for n in range(300)])
    except Exception as error:
        errors.put(f"{type(error).__name__}: {error}")


def test_two_processes_set_up_a_fresh_home_and_register_the_same_keys_together(
    bucket: str, make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = make_config(bucket, path_prefix="d/")
    spawn = multiprocessing.get_context("spawn")
    for repetition in range(4):
        home = _fresh_home(tmp_path / f"home-{repetition}")
        start, errors = spawn.Barrier(2), spawn.Queue()
        workers = [
            spawn.Process(target=_open_and_register, args=(str(home), str(path), start, errors)) for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert [worker.exitcode for worker in workers] == [0, 0]
        assert errors.empty(), errors.get()
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.get() as instance:
            assert len(instance.get_dynamic_partitions(partitions_name("docs"))) == 300


@pytest.mark.reliability
@pytest.mark.timeout(600)
def test_two_syncs_started_together_on_a_fresh_home_both_succeed_with_the_exact_chunks(
    s3: Any, bucket: str, make_config: ConfigFactory, tmp_path: Path, fault_row: Row
) -> None:
    object_keys = [f"d/file-{n:02d}.txt" for n in range(12)]
    put(s3, bucket, {object_key: f"small file {object_key}\n" for object_key in object_keys})
    for repetition in range(3):
        workdir = tmp_path / f"run-{repetition}"
        workdir.mkdir()
        _, path = make_config(bucket, path_prefix="d/")
        config_path = workdir / "s3sync.yaml"  # its own embedded Chroma (`chroma` beside it) each time
        shutil.move(path, config_path)
        home = _fresh_home(workdir / "home")
        argv = [
            sys.executable,
            "-m",
            "s3sync_dagster.commands.cli",
            "sync",
            "docs",
            "--all",
            "--config",
            str(config_path),
        ]
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        syncs = [
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
            for _ in range(2)
        ]
        outcomes = [sync.communicate(timeout=300) for sync in syncs]
        assert [sync.returncode for sync in syncs] == [0, 0], outcomes
        chunks = _chunks(config_path, "docs-collection")
        expected = {
            ("docs-collection", keys.chunk_id(keys.object_id(object_key), 0)): f"small file {object_key}\n"
            for object_key in object_keys
        }
        fault_row.observe(expected, store_chunks(_store(config_path)))
        assert len(chunks) == len(object_keys)  # one chunk per small file: none lost, none twice
        assert {chunk_id: metadata["object_key"] for chunk_id, metadata in chunks.items()} == {
            keys.chunk_id(keys.object_id(object_key), 0): object_key for object_key in object_keys
        }
    fault_row.passed = True
