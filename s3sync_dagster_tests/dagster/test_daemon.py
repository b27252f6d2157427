"""The real thing: `dagster-daemon` runs the SQS sensor on its own, runs go through the run queue in
their own processes, and an upload to the bucket becomes a queryable chunk in a `chroma run` server."""

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import chromadb
import dagster as dg
import pytest
import yaml

from s3sync_dagster.commands.demo.local_s3 import LOOPBACK
from s3sync_dagster.defs.failpoints import FAILPOINTS_ENV
from s3sync_dagster.defs.sensors.monitor import fail_dead, worker_pid
from s3sync_dagster.defs.sensors.readers import IN_PROGRESS
from s3sync_dagster.defs.tags import AUTO_RETRY_RUN_TAG, RETRY_NUDGED_TAG, WILL_RETRY_TAG
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import Row, notifying_queue, put, store_chunks

REPO = Path(__file__).resolve().parents[2]
# S3SYNC_LATENCY_UPLOADS=10 turns this test into the latency measurement quoted in the notes.
UPLOADS = int(os.environ.get("S3SYNC_LATENCY_UPLOADS", "2"))
WAIT_S = 300
# The crash tests chain their waits (a first upload indexed, the crash, every upload indexed: 2 x WAIT_S, the queue
# drained; 5 x WAIT_S at most): their own messages, with the daemons' logs, must come before pytest's timeout, and a
# slow but sound recovery on a busy machine must pass (under load one took over 600 s, the default timeout, in all).
CHAINED_TIMEOUT_S = 5 * WAIT_S + 120


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
                # The first upload's run reads the queue after it: the next uploads are that run's (short here, so
                # that the run ends on its own within the test).
                "sqs_linger_seconds": 10,
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
        with dg.DagsterInstance.from_config(str(home)) as instance:
            # One run took every upload: the first from the sensor's tick, the others from the queue itself. It
            # ends on its own once the queue has been quiet for sqs_linger_seconds.
            deadline = time.monotonic() + WAIT_S
            while instance.get_runs_count(dg.RunsFilter(statuses=IN_PROGRESS)):
                assert time.monotonic() < deadline, "the run reading the queue did not end"
                time.sleep(1)
            runs = instance.get_runs(dg.RunsFilter(job_name="live_auto_sync"))
            assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS], runs
            written = instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            assert len(written) == UPLOADS
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


class LiveSource:
    """A direct-mode source on a real queue, a Dagster home with this repo's dagster.yaml, and daemons run on it."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        moto_endpoint: str,
        chroma_port: int,
        tmp_path: Path,
        name: str,
        linger_seconds: int = 0,
    ) -> None:
        self.s3, self.bucket, self.tmp_path = s3, bucket, tmp_path
        self.sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
        self.queue_url = notifying_queue(self.sqs, s3, bucket, f"{bucket}-{name}")
        self.collection_name = f"{bucket}-{name}"
        config = {
            "chroma": {"host": LOOPBACK, "port": chroma_port},
            "sources": [
                {
                    "name": "live",
                    "bucket_name": bucket,
                    "region": "us-east-1",
                    "collection_name": self.collection_name,
                    "endpoint_url": moto_endpoint,
                    "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"},
                    "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
                    "auto_sync": "direct",
                    "sqs_queue_url": self.queue_url,
                    # Short, so a tick that died is redelivered within the test.
                    "sqs_visibility_timeout_seconds": 15,
                    # 0: each run ends with its keys (the tests that kill daemons and runs around the sensor's ticks).
                    "sqs_linger_seconds": linger_seconds,
                }
            ],
        }
        config_path = tmp_path / "s3sync.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self.home = tmp_path / "dagster_home"
        self.home.mkdir()
        settings = yaml.safe_load((REPO / "dagster.yaml").read_text())
        # A run a killed daemon stored but never launched stays STARTING until run monitoring fails it (and run
        # retries try it again): after start_timeout_seconds, 180 in the repo's instance. 60 here, still far above
        # a run's start on a busy machine, so the crash tests wait one minute on it, not three.
        settings["run_monitoring"]["start_timeout_seconds"] = 60
        # Checked every 5 s, not 30: such a run is failed a minute after its start, not up to a minute and a half.
        settings["run_monitoring"]["poll_interval_seconds"] = 5
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(settings))
        # The databases are made before any daemon starts: two processes creating a fresh SQLite home at once
        # can both stamp its schema version, and then neither can open it.
        dg.DagsterInstance.from_config(str(self.home)).dispose()
        self.env = dict(os.environ, DAGSTER_HOME=str(self.home), S3SYNC_CONFIG=str(config_path))
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.chroma = chromadb.HttpClient(host=LOOPBACK, port=chroma_port)

    def start_daemon(self, **env: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"daemon-{len(self.daemons)}.log", "wb")  # noqa: SIM115 - closed with the process
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
            cwd=REPO,
            env=dict(self.env, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: code server and run workers with it
        )
        self.daemons.append(daemon)
        return daemon

    def stop(self) -> None:
        for daemon in self.daemons:
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGTERM)
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(daemon.pid, signal.SIGKILL)

    def logs(self) -> str:
        """Each daemon's log, its every-second lines left out (a sensor checked, skipped; Dagster's beta warnings),
        the last 4,000 characters of each; then every run of the home with its status and tags."""
        noise = ("Checking for new runs for sensor", " skipped: ", "BetaWarning", "return SensorDefinition(")
        said = []
        for path in sorted(self.tmp_path.glob("daemon-*.log")):
            lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
            said.append(
                f"--- {path.name}\n" + "\n".join(line for line in lines if not any(n in line for n in noise))[-4000:]
            )
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            for run in instance.get_runs():
                tags = {key: value for key, value in run.tags.items() if not key.startswith(".dagster")}
                said.append(f"--- run {run.run_id} {run.status.value} {tags}")
        return "\n".join(said)

    def chunks(self) -> dict[str, str]:
        try:
            found = self.chroma.get_collection(self.collection_name).get()
        except Exception:  # created by the first run
            return {}
        return dict(zip(found["ids"], found["documents"], strict=True))

    def store_chunks(self) -> list[tuple[str, str, str]]:
        """Every chunk of this source's collection (the server is shared by other tests' collections)."""
        return [chunk for chunk in store_chunks(self.chroma) if chunk[0] == self.collection_name]

    def queue_depth(self) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)["Attributes"]
        return sum(int(attributes[name]) for name in names)

    def assert_indexed_once(self, want: dict[str, str], fault_row: Row) -> None:
        """Every upload indexed, the queue drained, and then exactly these chunks: nothing lost, nothing twice."""
        self.wait_until("every upload indexed", lambda: self.chunks() == want, timeout_s=2 * WAIT_S)
        self.wait_until("the queue drained", lambda: self.queue_depth() == 0)
        fault_row.observe({(self.collection_name, i): text for i, text in want.items()}, self.store_chunks())
        assert self.chunks() == want  # exactly these ids and texts: nothing lost, nothing twice
        fault_row.passed = True

    def wait_until(self, what: str, condition: Any, timeout_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"{what} not reached after {timeout_s} s; daemon logs:\n{self.logs()}"
            time.sleep(1)


# The key under which Dagster's event-log consumer (run retries) keeps its place in the log of run failures.
RETRY_CURSOR = f"EVENT_LOG_CONSUMER_CURSOR-{dg.DagsterEventType.RUN_FAILURE.value}"


def run_of(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    run = instance.get_run_by_id(run_id)
    assert run is not None, run_id
    return run


def wait_for_retry(live: LiveSource, instance: dg.DagsterInstance, run_id: str) -> str:
    """The id of the run Dagster's run retries made of this failed run; fails at once if they decided against one."""

    def retried() -> bool:
        tags = run_of(instance, run_id).tags
        assert tags.get(WILL_RETRY_TAG) != "false", f"run {run_id} will not be retried; logs:\n{live.logs()}"
        return AUTO_RETRY_RUN_TAG in tags

    live.wait_until("the failed run's retry made", retried)
    return run_of(instance, run_id).tags[AUTO_RETRY_RUN_TAG]


def expected_chunks(files: dict[str, str]) -> dict[str, str]:
    return {keys.chunk_id(keys.object_id(object_key), 0): text for object_key, text in files.items()}


@pytest.mark.reliability
@pytest.mark.timeout(CHAINED_TIMEOUT_S)
@pytest.mark.parametrize("failpoint", ["sqs:received", "sqs:deleting", "sqs:deleted"])
def test_no_event_is_lost_when_the_daemon_dies(
    failpoint: str, s3: Any, bucket: str, moto_endpoint: str, chroma_server: int, tmp_path: Path, fault_row: Row
) -> None:
    """kill -9 of the daemon's process group (daemon, code server, run workers) before the tick's runs are
    stored, while its messages are being deleted, and right after: every upload is indexed exactly once."""
    live = LiveSource(s3, bucket, moto_endpoint, chroma_server, tmp_path, "crash")
    # More than one delete batch (10 per call), so "sqs:deleting" falls between two of them.
    files = {f"crash/file-{n:02d}.txt": f"upload {n} must survive a crash at {failpoint}\n" for n in range(14)}
    put(s3, bucket, files)
    try:
        crashing = live.start_daemon(S3SYNC_FAILPOINTS=failpoint)
        try:
            crashing.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon never reached {failpoint}; logs:\n{live.logs()}")
        assert crashing.returncode == -signal.SIGKILL
        live.start_daemon()
        live.assert_indexed_once(expected_chunks(files), fault_row)
    finally:
        live.stop()


@pytest.mark.reliability
@pytest.mark.timeout(CHAINED_TIMEOUT_S)
def test_no_event_is_lost_when_the_run_reading_the_queue_dies(
    s3: Any, bucket: str, moto_endpoint: str, chroma_server: int, tmp_path: Path, fault_row: Row
) -> None:
    """kill -9 of the daemon's process group (the run with it) once the run reading the queue after its keys has
    written the keys it took, before it deletes their messages: they come back after the visibility timeout and
    every upload is indexed exactly once."""
    # The later uploads must reach the queue while the first run still reads it: the run waits this long for an
    # event, ample for the test's look at Chroma and four uploads even on a busy machine (a kill ends the wait).
    live = LiveSource(s3, bucket, moto_endpoint, chroma_server, tmp_path, "lingering", linger_seconds=30)
    first = {"lingering/first.txt": "the upload that starts the run\n"}
    later = {f"lingering/later-{n}.txt": f"upload {n}, taken from the queue by the run\n" for n in range(4)}
    put(s3, bucket, first)
    try:
        crashing = live.start_daemon(S3SYNC_FAILPOINTS="linger:written")
        live.wait_until("the first upload indexed", lambda: live.chunks() == expected_chunks(first))
        put(s3, bucket, later)
        try:
            crashing.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run never reached linger:written; logs:\n{live.logs()}")
        assert crashing.returncode == -signal.SIGKILL
        live.start_daemon()
        live.assert_indexed_once(expected_chunks(first | later), fault_row)
    finally:
        live.stop()


@pytest.mark.reliability
@pytest.mark.parametrize("retries", ["take the failure", "miss the failure"])
def test_a_run_whose_worker_died_with_the_daemon_is_failed_and_retried(
    retries: str, s3: Any, bucket: str, moto_endpoint: str, chroma_server: int, tmp_path: Path, fault_row: Row
) -> None:
    """kill -9 of the daemon's process group while a run is in progress takes the run worker and the code
    server that watched it: after a restart the run is marked failed (not left in progress forever) and its
    retry indexes the keys exactly once. (A worker killed alone is failed by its code server: Dagster's own.)

    No clock decides the moments: the failpoint `run:reported` kills the group right after the run stored its
    first key's outcome (in progress, two keys to go, its worker's pid recorded), and each later step is awaited
    as the instance records it: the run failed, its retry made, the retry ended.

    "miss the failure": Dagster's retry consumer reads a failure once, and if it reads it before the instance has
    marked the run failed it passes the run over (seen under load: a start timeout never retried). Here the run is
    failed while no daemon runs, as the monitor fails it, and the consumer's place is set past its failure, as if it
    had read it too early: the run monitor must see the missed retry and report the failure again."""
    live = LiveSource(s3, bucket, moto_endpoint, chroma_server, tmp_path, "workers")
    files = {f"workers/file-{n}.txt": f"worker test file {n}\n" for n in range(3)}
    try:
        live.start_daemon()
        with dg.DagsterInstance.from_config(str(live.home)) as instance:
            # Dagster's retries come from the daemon's event-log consumer, which on its first look ever starts at
            # the log's end ("No cursor ..., ignoring older events"): a run that failed before that look would never
            # be retried (Dagster's design, not ours). A first daemon gives the consumer its place, then stops; the
            # uploads come after it, all in the queue before the next daemon reads it (one tick, one run).
            live.wait_until(
                "the daemon's retry consumer reading the event log",
                lambda: bool(instance.daemon_cursor_storage.get_cursor_values({RETRY_CURSOR})),
            )
            live.stop()
            put(s3, bucket, files)
            crashing = live.start_daemon(**{FAILPOINTS_ENV: "run:reported"})
            try:
                crashing.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the run never reached run:reported; logs:\n{live.logs()}")
            assert crashing.returncode == -signal.SIGKILL
            [record] = instance.get_run_records(dg.RunsFilter(statuses=IN_PROGRESS))
            run_id = record.dagster_run.run_id
            assert record.dagster_run.status == dg.DagsterRunStatus.STARTED  # nobody said it ended
            assert len(instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)) == 1
            worker = worker_pid(instance, run_id)
            assert worker is not None  # the pid the run monitor judges it by

            if retries == "miss the failure":
                assert [dead.pid for dead in fail_dead(instance)] == [worker[0]]
                assert run_of(instance, run_id).tags.get(WILL_RETRY_TAG) == "true"
                end = instance.event_log_storage.get_maximum_record_id()
                instance.daemon_cursor_storage.set_cursor_values({RETRY_CURSOR: str(end)})
            live.start_daemon()
            live.wait_until(
                "the run marked failed", lambda: run_of(instance, run_id).status == dg.DagsterRunStatus.FAILURE
            )
            failure = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert f"run worker process {worker[0]} is gone" in (failure[0].dagster_event.message or "")  # type: ignore[union-attr]
            retry_id = wait_for_retry(live, instance, run_id)
            failures = [
                entry.dagster_event.message or ""  # type: ignore[union-attr]
                for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            ]
            if retries == "miss the failure":  # reported again by the monitor, which the retry followed
                assert len(failures) == 2 and "reported failed again" in failures[1], failures
                assert RETRY_NUDGED_TAG in run_of(instance, run_id).tags
            else:
                assert len(failures) == 1, failures
            live.wait_until("the retry ended", lambda: run_of(instance, retry_id).is_finished)
            assert run_of(instance, retry_id).status == dg.DagsterRunStatus.SUCCESS, live.logs()
            live.wait_until("every run ended", lambda: not instance.get_runs_count(dg.RunsFilter(statuses=IN_PROGRESS)))
            want = expected_chunks(files)
            fault_row.observe({(live.collection_name, i): text for i, text in want.items()}, live.store_chunks())
            assert live.chunks() == want  # every key indexed once: nothing lost, nothing twice
            fault_row.passed = True
    finally:
        live.stop()


def test_the_daemon_runs_each_invocation_once_and_a_queued_one_can_be_cancelled(
    s3: Any,
    bucket: str,
    moto_endpoint: str,
    chroma_server: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`s3sync invoke` records a request; the daemon's s3sync_invocations sensor makes its run, once, and the
    run queue runs it. Runs of source 'held' never leave the queue (a tag limit of 0): one is cancelled there."""
    import json

    from s3sync_dagster.commands.cli import main
    from s3sync_dagster.commands.runs.invocations import daemon_running

    put(s3, bucket, {"live/a.txt": "alpha invoked\n", "live/c.txt": "gamma invoked\n", "held/b.txt": "beta\n"})

    def source(name: str) -> dict[str, Any]:
        return {
            "name": name, "bucket_name": bucket, "region": "us-east-1", "collection_name": f"{bucket}-{name}",
            "endpoint_url": moto_endpoint, "path_prefix": f"{name}/",
            "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"}, "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
        }  # fmt: skip

    config_path = tmp_path / "s3sync.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {"chroma": {"host": LOOPBACK, "port": chroma_server}, "sources": [source("live"), source("held")]}
        )
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    settings = yaml.safe_load((REPO / "dagster.yaml").read_text())
    settings["run_queue"]["tag_concurrency_limits"] = [{"key": "s3sync/source", "value": "held", "limit": 0}]
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    # The home's databases are made before the daemon starts: two processes creating a fresh SQLite home
    # at once can both stamp its schema version, and then neither can open it.
    dg.DagsterInstance.from_config(str(home)).dispose()
    env = dict(os.environ, S3SYNC_CONFIG=str(config_path))
    log = tmp_path / "daemon.log"
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO,
        env=env,
        stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def cli(*argv: str) -> tuple[int, Any]:
        code = main([*argv, "--config", str(config_path), "--json"])
        out = capsys.readouterr().out
        return code, json.loads(out) if out.strip() else None

    def wait_until(what: str, condition: Any) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            assert time.monotonic() < deadline, (
                f"{what} not reached after {WAIT_S} s; daemon log:\n{log.read_text()[-3000:]}"
            )
            time.sleep(0.5)

    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            wait_until("the daemon's heartbeats", lambda: daemon_running(instance))

            def runs_of(invocation_id: str) -> list[dg.DagsterRun]:
                records = instance.get_run_records(dg.RunsFilter(tags={"s3sync/invocation": invocation_id}))
                return [record.dagster_run for record in records]

            code, alpha = cli(
                "invoke", "live", "live/a.txt", "--custom-id", "alpha", "--wait", "--timeout", str(WAIT_S)
            )
            assert code == 0 and "complete" in alpha["status"], (alpha, log.read_text()[-3000:])
            [run] = runs_of(alpha["id"])
            assert run.run_id == alpha["run_id"]
            assert (
                run.tags["dagster/sensor_name"] == "s3sync_invocations" and run.tags["dagster/run_key"] == alpha["id"]
            )
            chunks = chromadb.HttpClient(host=LOOPBACK, port=chroma_server).get_collection(f"{bucket}-live").get()
            assert chunks["ids"] == ["alpha-0"]

            code, beta = cli("invoke", "held", "held/b.txt")
            assert code == 0 and beta["status"] == "pending" and beta["run_id"] is None
            wait_until("the held invocation's run", lambda: cli("invocations", "held")[1][0]["run_id"] is not None)
            code, rows = cli("invocations", "held")
            assert [(row["id"], row["status"]) for row in rows] == [(beta["id"], "pending")]

            def held_status() -> dg.DagsterRunStatus:
                return instance.get_run_by_id(rows[0]["run_id"]).status  # type: ignore[union-attr]

            # The sensor's run exists a moment before the daemon puts it on the queue (NOT_STARTED first).
            wait_until("the held run on the queue", lambda: held_status() != dg.DagsterRunStatus.NOT_STARTED)
            assert held_status() == dg.DagsterRunStatus.QUEUED  # and there it stays: its source's limit is 0
            code, cancelled = cli("cancel", beta["id"])
            assert code == 0 and cancelled == {"id": beta["id"], "status": "cancelled"}

            code, gamma = cli("invoke", "live", "live/c.txt", "--wait", "--timeout", str(WAIT_S))
            assert code == 0 and "complete" in gamma["status"], (gamma, log.read_text()[-3000:])
            # The sensor has ticked since those runs were made: it made no second run of either.
            assert [len(runs_of(row["id"])) for row in (alpha, beta, gamma)] == [1, 1, 1]
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
