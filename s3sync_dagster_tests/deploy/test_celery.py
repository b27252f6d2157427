"""Parallel workers on Dagster's Celery integration (dagster-celery, Redis as the broker).

Two Celery workers, each in a network namespace of its own (a host of its own as far as the network
goes), take the steps of `s3sync sync` from Redis, write their events to the production instance on
PostgreSQL (deploy/dagster.yaml) and their chunks to one `chroma run` server; S3 is a moto server
(benchmarks/servers/celery_cluster.py). One worker is killed with SIGKILL, children and all, while it executes
a step: the broker hands that step to the other worker, and the collection ends with exactly the chunks
of the bucket. The killed worker runs Celery's default pool (prefork), where the step's message is
acknowledged by the worker's main process: without late acknowledgement (defs/executor.py) the step
would be lost with it. Without root (no namespaces) the workers are two processes on this host.

A worker's cable is pulled too (the bridge's end of its link down), mid-step and as a step ends, with Redis
giving up the worker's connections meanwhile and Chroma paused: every run still ends SUCCESS (issue 66's run that
failed although its step had succeeded).

`S3SYNC_CELERY_KEYS` sets the number of keys (default 100, about a minute here; 60 for a quick check).
Throughput with one and two workers is measured in benchmarks (section 10, `python -m benchmarks.scale.cluster`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from benchmarks.servers import celery_cluster
from benchmarks.servers.celery_cluster import PREFORK, REDIS, SOLO, WAIT_S, Cluster, Hosts, Services, Worker
from s3sync_dagster.defs.failpoints import FAILPOINTS_ENV, HOLDS_ENV
from s3sync_dagster.pipeline.records import keys

KEYS = int(os.environ.get("S3SYNC_CELERY_KEYS", "100"))
BATCH = 5  # keys per run: twenty runs for two workers to share
RUNS = -(-KEYS // BATCH)
# A message taken by a worker that vanished returns to the queue after this; a run of BATCH keys takes
# a few seconds, so a live worker's message is never handed out twice.
VISIBILITY_TIMEOUT_S = 20

pytestmark = [
    pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (scripts/setup installs it)"),
    pytest.mark.timeout(WAIT_S + 180),
]


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    with celery_cluster.hosts() as where:
        yield where


@pytest.fixture
def services(hosts: Hosts, tmp_path: Path) -> Iterator[Services]:
    with celery_cluster.services(hosts, tmp_path / "services") as running:
        yield running


def notes(count: int) -> dict[str, bytes]:
    return {
        f"docs/note-{index:04}.txt": f"Note {index}: the quick brown fox {index} jumps.".encode()
        for index in range(count)
    }


class StepsBegun:
    """Steps a worker has begun: dagster-celery's task records an engine event naming it first thing."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.finished_runs: dict[str, Counter[str]] = {}

    def __call__(self, worker: Worker) -> int:
        postgres = self.cluster.services.postgres
        assert postgres is not None
        with postgres.exported(), dg.DagsterInstance.from_config(str(self.cluster.home)) as instance:
            total = 0
            for record in instance.get_run_records():
                run_id = record.dagster_run.run_id
                begun = self.finished_runs.get(run_id)
                if begun is None:
                    begun = Counter()
                    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
                        event = entry.dagster_event
                        value = event.engine_event_data.metadata.get("Celery worker") if event else None
                        if value is not None:
                            begun[str(getattr(value, "value", value))] += 1
                    if record.dagster_run.is_finished:  # its count is final
                        self.finished_runs[run_id] = begun
                total += begun[f"{worker.name}@s3sync"]
        return total


def test_two_celery_workers_index_every_key_once_and_a_killed_workers_step_is_redone_by_the_other(
    hosts: Hosts, services: Services, tmp_path: Path
) -> None:
    files = notes(KEYS)
    cluster = Cluster(hosts, services, tmp_path / "cluster", files, batch=BATCH,
                      visibility_timeout_s=VISIBILITY_TIMEOUT_S)  # fmt: skip
    steps_begun = StepsBegun(cluster)
    try:
        victim, survivor = cluster.start_workers([PREFORK, SOLO])
        sync = cluster.start_sync()
        # Kill the first worker in the middle: once it has done about half its share of the steps, while it
        # executes another. Only a step the worker has begun counts: a message it has received but not begun
        # is still the broker's, so it would prove nothing.
        share = max(1, RUNS // 4)
        deadline = time.monotonic() + WAIT_S
        lost: list[str] = []
        while not lost:
            succeeded = victim.tasks("succeeded")
            # In a step: one more begun than succeeded, and none succeeded while the events were read.
            if (
                len(succeeded) >= share
                and steps_begun(victim) == len(succeeded) + 1
                and victim.tasks("succeeded") == succeeded
            ):
                victim.kill()
                lost = [task for task in victim.tasks("received") if task not in victim.tasks("succeeded")]
                assert steps_begun(victim) > len(victim.tasks("succeeded")), "the step ended before the kill"
            if sync.poll() is not None:
                pytest.fail(f"the sync ended before the worker could be killed: {cluster.sync_output()}")
            assert time.monotonic() < deadline, f"the first worker never took step {share + 1}"
            time.sleep(0.05)
        result = cluster.sync_result()
    finally:
        cluster.stop()

    # The killed worker's step (and any message it held) was handed to the other worker, which finished it.
    assert set(lost) <= set(survivor.tasks("received")), survivor.text()[-3000:]
    assert set(lost) <= set(survivor.tasks("succeeded")), survivor.text()[-3000:]
    # Both workers did work, and every run succeeded.
    assert victim.tasks("succeeded") and survivor.tasks("succeeded")
    assert len(result["runs"]) == RUNS
    assert all(run["success"] for run in result["runs"]), result["runs"]
    # Every key reported; its chunks embedded and written once: a key the killed worker had written is
    # found unchanged when its step is redone, not written again.
    statuses = Counter(report["status"] for report in result["keys"])
    assert set(statuses) <= {"indexed", "unchanged"}, statuses
    assert {report["object_key"] for report in result["keys"]} == set(files)
    indexed = Counter(report["object_key"] for report in result["keys"] if report["status"] == "indexed")
    assert max(indexed.values()) == 1, [key for key, times in indexed.items() if times > 1]
    # The server's collection holds exactly the bucket's chunks: none missing, none twice, none stale.
    expected = {keys.chunk_id(keys.object_id(key), 0): body.decode() for key, body in files.items()}
    assert cluster.stored_chunks() == expected


def hold(holds: Path, point: str, worker: Worker, sync: subprocess.Popen[bytes]) -> Path:
    """Arm the failpoint (defs/failpoints.py, `holds`), then the file of the worker's process held there, once the
    worker's next step reaches it."""
    name = point.replace(":", "-")
    (holds / name).touch()
    deadline = time.monotonic() + WAIT_S
    while not (found := sorted(holds.glob(f"{name}-*"))):
        if sync.poll() is not None:
            pytest.fail(f"the sync ended before a step reached {point}: exit code {sync.returncode}")
        assert time.monotonic() < deadline, f"no step reached {point}; worker log:\n{worker.text()[-3000:]}"
        time.sleep(0.1)
    return found[0]


def test_a_worker_cut_off_mid_step_and_as_it_ends_it_and_chroma_paused_leave_every_run_successful(
    hosts: Hosts, services: Services, tmp_path: Path
) -> None:
    """One worker, which has stored a step's result already (so it keeps a connection to Redis for the next), has
    its cable pulled twice, and each time Redis gives up its connections meanwhile (the resets are lost on the cut
    link: the worker learns of it only when it next writes to Redis):
    - in a step, once its first key is reported: the cable out for 4 s while the worker goes on (its S3 and Chroma
      requests wait for the link), then Chroma paused for 3 s (it takes requests and answers none);
    - as the next step ends, its keys written and the step's end not yet stored.
    Each time, the worker stores the step's result again on a new connection (defs/executor.py): every run
    SUCCESS, exactly the bucket's chunks. Seen across hosts before that (issue 66): the write of the result failed
    ("Broken pipe") and the run whose step had succeeded ended FAILURE."""
    if not hosts.namespaces:
        pytest.skip("needs network namespaces (root): the worker's link is what is cut")
    files = notes(4 * BATCH)
    cluster = Cluster(hosts, services, tmp_path / "cluster", files, batch=BATCH, concurrent_runs=1,
                      visibility_timeout_s=VISIBILITY_TIMEOUT_S)  # fmt: skip
    holds = tmp_path / "holds"
    holds.mkdir()
    worker_address = hosts.worker_addresses[0]
    try:
        env = {FAILPOINTS_ENV: "hold:reported,hold:done", HOLDS_ENV: str(holds)}
        [worker] = cluster.start_workers([SOLO], env=env)
        sync = cluster.start_sync()
        deadline = time.monotonic() + WAIT_S
        while not worker.tasks("succeeded"):
            assert sync.poll() is None and time.monotonic() < deadline, cluster.sync_output()
            time.sleep(0.1)

        mid_step = hold(holds, "hold:reported", worker, sync)
        hosts.link(0, up=False)
        try:
            assert services.forget_redis_clients(worker_address) >= 1, "the worker held no connection to Redis"
            mid_step.unlink()  # the worker goes on while its cable is out
            time.sleep(4)
        finally:
            hosts.link(0, up=True)
        os.kill(services.chroma_pid, signal.SIGSTOP)
        try:
            time.sleep(3)
        finally:
            os.kill(services.chroma_pid, signal.SIGCONT)

        ending = hold(holds, "hold:done", worker, sync)
        hosts.link(0, up=False)
        try:
            services.forget_redis_clients(worker_address)  # those it made since the first cut, if any
        finally:
            hosts.link(0, up=True)
        ending.unlink()
        result = cluster.sync_result()
    finally:
        cluster.stop()
    assert [run["success"] for run in result["runs"]] == [True] * 4, result["runs"]
    assert {report["object_key"] for report in result["keys"]} == set(files)
    expected = {keys.chunk_id(keys.object_id(key), 0): body.decode() for key, body in files.items()}
    assert cluster.stored_chunks() == expected
    # The worker met the lost connection as it stored a result, and stored it again (Celery says so).
    assert "Failed operation _store_result. Retrying" in worker.text(), worker.text()[-3000:]
