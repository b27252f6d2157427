"""Runs the daemon launches, with their steps on a Celery worker: a backfill launched over GraphQL as the UI
does, and the poll sensor's runs.

dagster-webserver and dagster-daemon serve workspace.yaml's code location on the production instance
(PostgreSQL, deploy/dagster.yaml). Each run's process is started by Dagster's default run launcher from that
location; it orchestrates and sends its step to Redis, and a Celery worker on a host of its own (a network
namespace; benchmarks/servers/celery_cluster.py) rebuilds the job from the run's pointer (the location's implicit
asset job, or the sensor's job) and executes the step, writing to one `chroma run` server.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import dagster as dg
import pytest

from benchmarks.servers import celery_cluster
from benchmarks.servers.celery_cluster import REDIS, SOLO, WAIT_S, Cluster, Hosts, Services
from benchmarks.servers.dagster_server import DagsterDev, webserver_and_daemon
from s3sync_dagster.defs import names
from s3sync_dagster.pipeline.records import keys

KEYS = 20
KEYS_PER_RUN = 10  # a backfill of two runs; the sensor's first pass asks for two more
POLL_INTERVAL_S = 5
NEW_KEY = "docs/note-late.txt"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}

pytestmark = [
    pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (scripts/setup installs it)"),
    pytest.mark.timeout(WAIT_S + 180),
]


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    with celery_cluster.hosts(1) as where:
        yield where


@pytest.fixture
def services(hosts: Hosts, tmp_path: Path) -> Iterator[Services]:
    with celery_cluster.services(hosts, tmp_path / "services") as running:
        yield running


def note(index: int | str) -> bytes:
    return f"Note {index}: the quick brown fox {index} jumps over the daemon.".encode()


def expected_chunks(files: dict[str, bytes]) -> dict[str, str]:
    return {keys.chunk_id(keys.object_id(key), 0): body.decode() for key, body in files.items()}


def celery_workers(instance: dg.DagsterInstance, run_id: str) -> Counter[str]:
    """Steps of the run begun on each Celery worker: dagster-celery's task records an engine event naming
    the worker (its hostname) before it executes the step."""
    begun: Counter[str] = Counter()
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        value = event.engine_event_data.metadata.get("Celery worker") if event else None
        if value is not None:
            begun[str(getattr(value, "value", value))] += 1
    return begun


def steps_started(instance: dg.DagsterInstance, run_id: str) -> int:
    return len(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START))


def wait_until(what: str, condition: Callable[[], bool], details: Callable[[], str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached after {WAIT_S} s:\n{details()}"
        time.sleep(1)


def test_daemon_launched_runs_execute_their_steps_on_a_celery_worker(
    hosts: Hosts, services: Services, tmp_path: Path
) -> None:
    files = {f"docs/note-{index:02}.txt": note(index) for index in range(KEYS)}
    cluster = Cluster(hosts, services, tmp_path / "cluster", files, batch=KEYS_PER_RUN,
                      source_settings={"keys_per_run": KEYS_PER_RUN, "poll_interval_seconds": POLL_INTERVAL_S,
                                       # each poll run ends with its keys, not a minute's pass after them
                                       "poll_linger_seconds": 0})  # fmt: skip
    asset_key = names.documents_asset_key("docs")
    postgres = services.postgres
    assert postgres is not None
    try:
        (worker,) = cluster.start_workers([SOLO])
        cluster.cli("discover", "docs")  # the keys as partitions, as a user registers them before a backfill
        partition_keys = sorted(keys.to_partition_key(object_key) for object_key in files)

        def details(server: DagsterDev) -> str:
            return f"worker log:\n{worker.text()[-3000:]}\ndagster log:\n{server.tail()}"

        with (
            webserver_and_daemon(
                cluster.home, cluster.config_path, tmp_path / "dagster.log", cluster.served_env()
            ) as server,
            postgres.exported(),
            dg.DagsterInstance.from_config(str(cluster.home)) as instance,
        ):
            # (a) A backfill over the keys, launched as the UI does. The poll sensor's first pass finds the
            # same keys and syncs them too: two writers, which end on the same chunks.
            backfill = server.wait_backfill(server.backfill(asset_key.path, partition_keys), timeout_s=WAIT_S)
            assert backfill["status"] == "COMPLETED_SUCCESS", (backfill, details(server))
            backfill_runs = [run["runId"] for run in backfill["runs"]]
            assert len(backfill_runs) == KEYS // KEYS_PER_RUN, backfill
            assert cluster.stored_chunks() == expected_chunks(files)

            # (b) One more upload: the poll sensor's next pass finds it and its run indexes it.
            s3 = boto3.client("s3", endpoint_url=services.s3_endpoint, region_name="us-east-1")
            s3.put_object(Bucket=cluster.bucket, Key=NEW_KEY, Body=note("late"))
            files[NEW_KEY] = note("late")
            wait_until("the new key indexed", lambda: cluster.stored_chunks() == expected_chunks(files),
                       lambda: details(server))  # fmt: skip
            wait_until(
                "every run finished",
                lambda: not instance.get_run_records(dg.RunsFilter(statuses=list(set(dg.DagsterRunStatus) - FINISHED))),
                lambda: details(server),
            )
            new_key_runs = {
                record.run_id
                for record in instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[keys.to_partition_key(NEW_KEY)]),
                    limit=10,
                ).records
            }
            assert len(new_key_runs) == 1, new_key_runs
            sensor_run = instance.get_run_by_id(next(iter(new_key_runs)))
            assert sensor_run is not None and sensor_run.tags.get("dagster/sensor_name"), sensor_run

            # (c) Every run succeeded and executed its step on the worker, none in the run's own process.
            records = instance.get_run_records()
            assert set(backfill_runs) | new_key_runs <= {record.dagster_run.run_id for record in records}
            for record in records:
                run = record.dagster_run
                assert run.status == dg.DagsterRunStatus.SUCCESS, (run.run_id, run.job_name, details(server))
                steps = steps_started(instance, run.run_id)
                assert steps >= 1 and celery_workers(instance, run.run_id) == {f"{worker.name}@s3sync": steps}, (
                    run.run_id, run.job_name
                )  # fmt: skip
                # The UI's backfill runs the location's implicit asset job; the sensors run the source's sync job.
                assert run.job_name == names.sync_job_name("docs") or run.run_id in backfill_runs, run.job_name
    finally:
        cluster.stop()
    # The collection holds exactly the bucket's chunks: none missing, none twice, none stale.
    assert cluster.stored_chunks() == expected_chunks(files)
