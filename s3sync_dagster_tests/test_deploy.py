"""The production instance in deploy/: dagster-webserver and dagster-daemon as separate processes on
PostgreSQL storage (Debian's server, started here) and a `chroma run` server, syncing through the poll
sensors and a backfill launched over GraphQL, with at most one run in progress per source."""

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import dagster as dg
import pytest
import yaml

from benchmarks import postgres_server
from benchmarks.common import DEPLOY_SETTINGS, dagster_home
from benchmarks.dagster_server import PARTITIONS, webserver_and_daemon
from s3sync_dagster.config import load_config
from s3sync_dagster.defs import names
from s3sync_dagster.defs.tags import SOURCE_TAG
from s3sync_dagster.local_s3 import LOOPBACK
from s3sync_dagster.pipeline import keys
from s3sync_dagster_tests.conftest import put
from s3sync_dagster_tests.test_daemon import WAIT_S, expected_chunks

REPO = Path(__file__).resolve().parent.parent
DEPLOY = DEPLOY_SETTINGS.parent
POLLED = ("alpha", "beta")  # sources the poll sensors sync, one key per run
BACKFILLED = "gamma"  # a source with no sensor: only the backfill syncs it
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
    assert deploy["run_queue"]["tag_concurrency_limits"] == [
        {"key": SOURCE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]
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


def wait_until(what: str, condition: Any, logs: Any) -> None:
    until = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < until, f"{what} not reached after {WAIT_S} s; log tail:\n{logs()}"
        time.sleep(1)


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
            *(source(name, poll_interval_seconds=2, keys_per_run=1) for name in POLLED),
            source(BACKFILLED, keys_per_run=2),
        ],
    }
    config_file.write_text(yaml.safe_dump(config))
    files = {
        name: {f"{name}/note-{n}.txt": f"{name} note {n}: the {name} shelf holds {n + 3} jars\n" for n in range(3)}
        for name in (*POLLED, BACKFILLED)
    }
    # All there before the daemon's first tick: each polled source asks for its three runs at once.
    for by_key in files.values():
        put(s3, bucket, dict(by_key))
    home = dagster_home(tmp_path / "dagster_home", settings=DEPLOY_SETTINGS)
    for variable, value in postgres.env().items():
        monkeypatch.setenv(variable, value)
    chroma = chromadb.HttpClient(host=LOOPBACK, port=chroma_server)

    with (
        webserver_and_daemon(home, config_file, tmp_path / "dagster.log") as server,
        dg.DagsterInstance.from_config(str(home)) as instance,
    ):
        # (a) The poll sensors find the uploads and their runs index them: exactly these chunks.
        for name in POLLED:
            want = expected_chunks(files[name])
            wait_until(f"{name} indexed", lambda: chunks_of(chroma, f"{bucket}-{name}") == want, server.tail)  # noqa: B023

        # (b) A backfill over the third source's keys, launched as the UI does, runs and materialises them.
        partition_keys = sorted(keys.to_partition_key(object_key) for object_key in files[BACKFILLED])
        for partition_key in partition_keys:
            assert (
                server.add_partition(names.partitions_name(BACKFILLED), partition_key) == "AddDynamicPartitionSuccess"
            )
        asset_path = names.documents_asset_key(BACKFILLED).path
        backfill = server.wait_backfill(server.backfill(asset_path, partition_keys))
        assert backfill["status"] == "COMPLETED_SUCCESS" and len(backfill["runs"]) == 2, backfill
        node = server.gql(PARTITIONS, assetKey={"path": asset_path})["assetNodeOrError"]
        assert sorted(node["assetPartitionStatuses"]["materializedPartitions"]) == partition_keys
        assert chunks_of(chroma, f"{bucket}-{BACKFILLED}") == expected_chunks(files[BACKFILLED])

        # (c) One run in progress per source: a source's runs never overlap; another source's may.
        wait_until(
            "every run finished",
            lambda: not instance.get_run_records(dg.RunsFilter(statuses=list(set(dg.DagsterRunStatus) - FINISHED))),
            server.tail,
        )
        spans: dict[str, list[tuple[float, float]]] = {}
        for name in POLLED:
            records = instance.get_run_records(dg.RunsFilter(tags={SOURCE_TAG: name}))
            assert [record.dagster_run.status for record in records] == [dg.DagsterRunStatus.SUCCESS] * 3, name
            spans[name] = sorted((record.start_time or 0.0, record.end_time or 0.0) for record in records)
            for (_, earlier_end), (later_start, _) in itertools.pairwise(spans[name]):
                assert later_start >= earlier_end, (name, spans[name])
        # Per source, not one run at a time overall: alpha's and beta's first runs are dequeued in one pass
        # and each lasts seconds, so some pair overlaps (a limit on the tag's key alone would forbid it).
        assert any(
            a_start < b_end and b_start < a_end
            for (a_start, a_end) in spans["alpha"]
            for (b_start, b_end) in spans["beta"]
        ), spans

        # (d) Everything went to PostgreSQL: Dagster's storages are dagster-postgres's, and no SQLite file exists.
        for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
            assert type(storage).__module__.startswith("dagster_postgres."), type(storage)
    assert sorted(path.relative_to(home) for path in home.rglob("*") if path.suffix in {".db", ".sqlite"}) == []
    assert not (home / "history").exists()
