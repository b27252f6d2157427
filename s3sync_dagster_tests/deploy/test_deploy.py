"""The production instance in deploy/: dagster-webserver and dagster-daemon as separate processes on
PostgreSQL storage (Debian's server, started here) and a `chroma run` server, syncing through the poll
sensors, `s3sync sync` and backfills launched over GraphQL, with one run of a source writing at a time."""

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import dagster as dg
import pytest
import yaml

from benchmarks.common import DEPLOY_SETTINGS, dagster_home
from benchmarks.servers import postgres_server
from benchmarks.servers.dagster_server import PARTITIONS, webserver_and_daemon
from s3sync_dagster.commands.demo.local_s3 import LOOPBACK
from s3sync_dagster.config import load_config
from s3sync_dagster.defs import names
from s3sync_dagster.defs.failpoints import FAILPOINTS_ENV, HOLDS_ENV
from s3sync_dagster.defs.tags import BACKFILL_TAG, SOURCE_TAG, TRIGGER_TAG
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import put
from s3sync_dagster_tests.dagster.test_daemon import WAIT_S, expected_chunks

REPO = Path(__file__).resolve().parents[2]
DEPLOY = DEPLOY_SETTINGS.parent
CONTENDED = "alpha"  # a polled source that a UI backfill and `s3sync sync` write as well
OTHER = "beta"  # the other polled source: its objects come while a run of CONTENDED is held
POLLED = (CONTENDED, OTHER)  # sources the poll sensors sync, one key per run
BACKFILLED = "gamma"  # a source with no sensor: only the backfill syncs it
STEP_EVENTS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@pytest.fixture(scope="session")
def postgres() -> Iterator[postgres_server.LocalPostgres]:
    with postgres_server.running() as server:
        yield server


def test_deploy_instance_keeps_the_repo_instance_settings() -> None:
    """Run retries, monitoring, sensors, retention and the queue's dequeueing are the repo's dagster.yaml's."""
    deploy = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    local = yaml.safe_load((REPO / "dagster.yaml").read_text())
    for section in local.keys() - {"run_queue"}:
        assert deploy[section] == local[section], section
    for setting in local["run_queue"].keys() - {"max_concurrent_runs"}:
        assert deploy["run_queue"][setting] == local["run_queue"][setting], setting
    # One run of a source at a time: the queue's tag limit for our tagged runs, the pools' limit for all.
    assert deploy["concurrency"]["runs"]["tag_concurrency_limits"] == [
        {"key": SOURCE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]
    assert deploy["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    # The repo's SQLite instance sets no per-source limit (its dagster.yaml says why).
    assert "concurrency" not in local and "tag_concurrency_limits" not in local["run_queue"]
    # Credentials and addresses come from the environment only.
    database = deploy["storage"]["postgres"]["postgres_db"]
    assert all(database[field].keys() == {"env"} for field in ("username", "password", "hostname", "db_name", "port"))
    example = load_config(DEPLOY / "s3sync.yaml")
    assert example.chroma.host is not None and example.chroma.path is None and example.sources


def chunks_of(client: Any, collection_name: str) -> dict[str, str]:
    try:
        found = client.get_collection(collection_name).get()
    except Exception:  # created by the source's first run
        return {}
    return dict(zip(found["ids"], found["documents"], strict=True))


def sync_command(source_name: str) -> list[str]:
    """`s3sync sync` of the source's first key, from this checkout: its run executes in its own process."""
    return [
        sys.executable,
        "-m",
        "s3sync_dagster.commands.cli",
        "sync",
        source_name,
        "--key",
        f"{source_name}/note-0.txt",
    ]


def op_spans(instance: dg.DagsterInstance, source_name: str) -> list[tuple[float, float, str]]:
    """(start, end, launcher) of every execution of an op writing the source's collection, in any run."""
    ops = {names.asset_op_name(source_name), names.sync_op_name(source_name), names.repair_op_name(source_name)}
    spans = []
    for record in instance.get_run_records():
        run = record.dagster_run
        # The `s3sync sync` command tags its runs with the source alone; the sensors add why.
        launcher = "backfill" if BACKFILL_TAG in run.tags else run.tags.get(TRIGGER_TAG, "s3sync sync")
        started: dict[str, float] = {}
        for entry in instance.all_logs(run.run_id, of_type=STEP_EVENTS):
            if entry.step_key not in ops:
                continue
            if entry.dagster_event_type == dg.DagsterEventType.STEP_START:
                started[entry.step_key] = entry.timestamp
            else:
                spans.append((started.pop(entry.step_key), entry.timestamp, launcher))
        assert not started, f"run {run.run_id} started {started} and never ended them"
    return sorted(spans)


def wait_until(what: str, condition: Any, logs: Any) -> None:
    until = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < until, f"{what} not reached after {WAIT_S} s; log tail:\n{logs()}"
        time.sleep(1)


# About 5 min on a quiet 2-core machine beside the rest of the suite, and twice that with two CPU-bound processes
# beside it: pytest's default 600 s is a guard against hangs, not this test's length.
@pytest.mark.timeout(1200)
def test_production_instance_syncs_through_sensors_and_backfills(
    s3: Any,
    bucket: str,
    moto_endpoint: str,
    chroma_server: int,
    postgres: postgres_server.LocalPostgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def source(name: str, **settings: Any) -> dict[str, Any]:
        return {
            "name": name, "bucket_name": bucket, "region": "us-east-1", "path_prefix": f"{name}/",
            "collection_name": f"{bucket}-{name}", "endpoint_url": moto_endpoint,
            "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"}, "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
            **settings,
        }  # fmt: skip

    config_file = tmp_path / "s3sync.yaml"
    config = {
        "chroma": {"host": LOOPBACK, "port": chroma_server},
        "sources": [
            # Each poll run ends with its keys (poll_linger_seconds 0): one run per key (keys_per_run 1, counted
            # below), none passing over the prefix after them for the default minute, which the test would wait out.
            *(source(name, poll_interval_seconds=2, keys_per_run=1, poll_linger_seconds=0) for name in POLLED),
            source(BACKFILLED, keys_per_run=2),
        ],
    }
    config_file.write_text(yaml.safe_dump(config))
    # Two keys of each polled source (two runs each: enough to see a source's runs never overlap), three of the
    # backfilled one (two runs of keys_per_run 2).
    files = {
        name: {f"{name}/note-{n}.txt": f"{name} note {n}: the {name} shelf holds {n + 3} jars\n" for n in range(count)}
        for name, count in {**dict.fromkeys(POLLED, 2), BACKFILLED: 3}.items()
    }
    # All but beta's there before the daemon's first tick: alpha asks for its two runs at once. The first of them
    # to end its step holds there (a failpoint, armed by a file) until a run of beta has started beside it.
    for name, by_key in files.items():
        if name != OTHER:
            put(s3, bucket, dict(by_key))
    home = dagster_home(tmp_path / "dagster_home", settings=DEPLOY_SETTINGS)
    for variable, value in postgres.env().items():
        monkeypatch.setenv(variable, value)
    holds = tmp_path / "holds"
    holds.mkdir()
    (holds / "hold-done").touch()
    monkeypatch.setenv(FAILPOINTS_ENV, "hold:done")
    monkeypatch.setenv(HOLDS_ENV, str(holds))
    chroma = chromadb.HttpClient(host=LOOPBACK, port=chroma_server)

    with (
        webserver_and_daemon(home, config_file, tmp_path / "dagster.log") as server,
        dg.DagsterInstance.from_config(str(home)) as instance,
    ):
        # (a) The poll sensors find the uploads and their runs index them: exactly these chunks. While alpha's first
        # run holds alpha's place in the queue (its tag limit 1), beta's first run starts: the limit is per source.
        wait_until(f"a run of {CONTENDED} held at its step's end", lambda: any(holds.glob("hold-done-*")), server.tail)
        put(s3, bucket, dict(files[OTHER]))
        wait_until(
            f"a run of {OTHER} started beside it",
            lambda: any(
                record.start_time is not None
                for record in instance.get_run_records(dg.RunsFilter(tags={SOURCE_TAG: OTHER, TRIGGER_TAG: "poll"}))
            ),
            server.tail,
        )
        for held in holds.glob("hold-done-*"):
            held.unlink()
        for name in POLLED:
            want = expected_chunks(files[name])
            wait_until(f"{name} indexed", lambda: chunks_of(chroma, f"{bucket}-{name}") == want, server.tail)  # noqa: B023

        # (b) Backfills launched as the UI does (GraphQL: Dagster's asset job, none of our tags): over the third
        # source's keys, and over alpha's (registered by its poll sensor in (a)). Once a run of alpha's backfill
        # is executing its op, alpha gets the two other kinds of runs too: new objects for its poll sensor, and a
        # run of `s3sync sync` executed in its own process, which the run queue never sees.
        backfilled_keys = sorted(keys.to_partition_key(object_key) for object_key in files[BACKFILLED])
        for partition_key in backfilled_keys:
            assert (
                server.add_partition(names.partitions_name(BACKFILLED), partition_key) == "AddDynamicPartitionSuccess"
            )
        backfills = {
            name: server.backfill(
                names.documents_asset_key(name).path,
                sorted(keys.to_partition_key(object_key) for object_key in files[name]),
            )
            for name in (BACKFILLED, CONTENDED)
        }
        wait_until(
            f"{CONTENDED}'s backfill executing its op",
            lambda: any(
                instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_START)
                for record in instance.get_run_records(dg.RunsFilter(tags={BACKFILL_TAG: backfills[CONTENDED]}))
            ),
            server.tail,
        )
        later = {f"{CONTENDED}/later-{n}.txt": f"{CONTENDED} later note {n}: {n + 7} jars\n" for n in range(2)}
        put(s3, bucket, dict(later))
        files[CONTENDED].update(later)
        env = dict(os.environ, DAGSTER_HOME=str(home), S3SYNC_CONFIG=str(config_file), PYTHONPATH=str(REPO))
        synced = subprocess.run(
            sync_command(CONTENDED), cwd=REPO, env=env, capture_output=True, text=True, timeout=WAIT_S
        )
        assert synced.returncode == 0, synced.stdout + synced.stderr
        for name, runs in ((BACKFILLED, 2), (CONTENDED, 2)):  # keys_per_run 2 and 1
            backfill = server.wait_backfill(backfills[name])
            assert backfill["status"] == "COMPLETED_SUCCESS" and len(backfill["runs"]) == runs, backfill
        # Every key ends indexed: exactly the objects' chunks (and, once every run has finished, below, every
        # partition materialised).
        for name in (BACKFILLED, CONTENDED):
            want = expected_chunks(files[name])
            wait_until(f"{name} indexed", lambda: chunks_of(chroma, f"{bucket}-{name}") == want, server.tail)  # noqa: B023

        # (c) One run in progress per source: a source's runs never overlap; another source's may.
        wait_until(
            "every run finished",
            lambda: not instance.get_run_records(dg.RunsFilter(statuses=list(set(dg.DagsterRunStatus) - FINISHED))),
            server.tail,
        )
        assert {record.dagster_run.status for record in instance.get_run_records()} == {dg.DagsterRunStatus.SUCCESS}
        for name in (BACKFILLED, CONTENDED):
            node = server.gql(PARTITIONS, assetKey={"path": names.documents_asset_key(name).path})["assetNodeOrError"]
            materialized = sorted(node["assetPartitionStatuses"]["materializedPartitions"])
            assert materialized == sorted(keys.to_partition_key(object_key) for object_key in files[name]), name
        # The sensors' runs, which the queue's tag limit holds: never two of one source in progress at once.
        spans: dict[str, list[tuple[float, float]]] = {}
        for name in POLLED:
            records = instance.get_run_records(dg.RunsFilter(tags={SOURCE_TAG: name, TRIGGER_TAG: "poll"}))
            assert len(records) == len(files[name]), name  # keys_per_run 1
            spans[name] = sorted((record.start_time or 0.0, record.end_time or 0.0) for record in records)
            for (_, earlier_end), (later_start, _) in itertools.pairwise(spans[name]):
                assert later_start >= earlier_end, (name, spans[name])
        # Per source, not one run at a time overall: beta's first run started while alpha's was held in its step
        # (a limit on the tag's key alone would have kept it queued: the wait in (a) would have failed).
        assert any(
            a_start < b_end and b_start < a_end
            for (a_start, a_end) in spans[CONTENDED]
            for (b_start, b_end) in spans[OTHER]
        ), spans
        # Every run, whoever launched it (UI backfill, sensor, `s3sync sync`): the source's pool lets one op
        # write its collection at a time. Without the pool, a backfill's runs carry no s3sync/source tag and
        # start together (alpha's three are dequeued in one pass), beside the sensors' and the command's.
        for name in (*POLLED, BACKFILLED):
            ops = op_spans(instance, name)
            for (_, earlier_end, earlier), (later_start, _, later) in itertools.pairwise(ops):
                assert later_start >= earlier_end, (name, earlier, later, ops)
        assert {launcher for *_, launcher in op_spans(instance, CONTENDED)} == {"backfill", "poll", "s3sync sync"}

        # (d) The wait itself, for a run no queue sees: while another step holds beta's slot (the test claims
        # it through the event log storage, as a run's step does), `s3sync sync beta` starts its run and its
        # step waits on the pool, not started; freed, the step runs and the command succeeds.
        pool, holder = names.pool_name(OTHER), ("held-by-the-test", "holder")
        if pool not in {limit.name for limit in instance.event_log_storage.get_pool_limits()}:  # a pool never used
            instance.event_log_storage.initialize_concurrency_limit_to_default(pool)
        assert instance.event_log_storage.claim_concurrency_slot(pool, *holder).is_claimed
        try:
            waiting = subprocess.Popen(
                sync_command(OTHER), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )

            def pending() -> list[str]:
                steps = instance.event_log_storage.get_concurrency_info(pool).pending_steps
                return [step.run_id for step in steps if step.run_id != holder[0] and step.assigned_timestamp is None]

            wait_until(
                "s3sync sync waiting on the pool, or done", lambda: pending() or waiting.poll() is not None, server.tail
            )
            assert pending(), "`s3sync sync beta` did not wait for the slot another step held"
            (run_id,) = pending()
            assert not instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        finally:
            instance.event_log_storage.free_concurrency_slot_for_step(*holder)
        output, _ = waiting.communicate(timeout=WAIT_S)
        assert waiting.returncode == 0, output
        assert [launcher for *_, launcher in op_spans(instance, OTHER)].count("s3sync sync") == 1

        # (e) Everything went to PostgreSQL: Dagster's storages are dagster-postgres's, and no SQLite file exists.
        for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
            assert type(storage).__module__.startswith("dagster_postgres."), type(storage)
    assert sorted(path.relative_to(home) for path in home.rglob("*") if path.suffix in {".db", ".sqlite"}) == []
    assert not (home / "history").exists()
