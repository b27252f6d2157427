"""The whole Definitions for a config of three sources (SQS, polling, neither): the exact set of Dagster
objects each source gets, so a renamed asset, a lost sensor or a broken import fails here, in one place."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from s3sync_dagster.config import load_config
from s3sync_dagster.definitions import build_definitions


def test_three_sources_get_exactly_their_assets_checks_jobs_and_sensors(tmp_path: Path) -> None:
    def source(name: str, **settings: object) -> dict[str, object]:
        return {"name": name, "bucket_name": "bucket", "region": "us-east-1", "collection_name": f"{name}-chunks",
                "path_prefix": f"{name}/", **settings}  # fmt: skip

    path = tmp_path / "s3sync.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    source("events", auto_sync="direct", sqs_queue_url="https://sqs.us-east-1.amazonaws.com/1/events"),
                    source("polled", poll_interval_seconds=60),
                    source("manual"),
                ]
            }
        )
    )
    defs = build_definitions(load_config(path))
    repository = defs.get_repository_def()

    assert {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()} == {
        "events/documents",
        "polled/documents",
        "manual/documents",
    }
    checks = {(key.asset_key.to_user_string(), key.name) for key in repository.asset_graph.asset_check_keys}
    assert checks == {
        (f"{name}/documents", check)
        for name in ("events", "polled", "manual")
        for check in ("drift", "indexed_keys_have_chunks")
    }
    assert {job.name for job in repository.get_all_jobs()} == {
        "__ASSET_JOB",
        "events_auto_sync",
        "polled_auto_sync",
        "events_repair",
        "polled_repair",
        "manual_repair",
        "events_backfill",
        "polled_backfill",
        "manual_backfill",
        "events_reembed",
        "polled_reembed",
        "manual_reembed",
        "events_documents",
        "polled_documents",
        "manual_documents",
        "events_plan",
        "polled_plan",
        "manual_plan",
    }
    sensors = {sensor.name: sensor for sensor in repository.sensor_defs}
    assert set(sensors) == {"events_sqs", "polled_poll", "s3sync_run_workers", "s3sync_invocations"}
    # One sensor runs every source's invocations.
    assert sensors["s3sync_invocations"].asset_selection is not None
    assert sensors["s3sync_invocations"].asset_selection.resolve(repository.asset_graph) == {
        dg.AssetKey([name, "documents"]) for name in ("events", "polled", "manual")
    }
    assert all(sensor.default_status == dg.DefaultSensorStatus.RUNNING for sensor in sensors.values())
    assert sensors["events_sqs"].job_name == "events_auto_sync"
    assert sensors["polled_poll"].minimum_interval_seconds == 60
    # Connections only: one S3 resource holding every source's connection; one store, one model.
    # Under our own keys: a project's `s3`, `chroma` and `io_manager` are never ours (test_component.py).
    assert set(repository.get_top_level_resources()) == {
        f"s3sync_{role}" for role in ("chroma", "embedding", "documents", "s3", "webserver", "io_manager")
    }
    connections = defs.resources["s3sync_s3"].connections
    assert [connection.source_name for connection in connections] == ["events", "polled", "manual"]
    # What a source is (bucket, prefix, chunking) is its config's business, not a resource's.
    assert "bucket_name" not in type(connections[0]).model_fields
    # Every op that writes a source's collection is in the source's pool, whichever job runs it (the asset's
    # op in a UI backfill's run too): the instance's pool limit holds them all (deploy/dagster.yaml). The asset's
    # checks are its own op's (a run of keys evaluates them there, none of their own to skip), so executed alone
    # they wait in the pool too, for a source at rest.
    pools = {op.name: op.pool for job in repository.get_all_jobs() for op in job.graph.node_defs}
    assert {op_name: pool for op_name, pool in pools.items() if pool is not None} == {
        **{f"{name}__documents": f"s3sync_{name}" for name in ("events", "polled", "manual")},
        **{f"{name}_repair_drift": f"s3sync_{name}" for name in ("events", "polled", "manual")},
        **{f"{name}_sync_keys": f"s3sync_{name}" for name in ("events", "polled")},
    }
    # The backfill job's op only asks the webserver for a backfill, whose runs are the asset's (in the pool). The
    # re-embedding writes only its copy and the swap, and the source's syncs must go on beside it (they keep the
    # copy exact): were it in the pool, they would wait for the whole of it. The plan writes nothing.
    assert {op_name for op_name, pool in pools.items() if pool is None} == {
        f"{name}_{op}"
        for name in ("events", "polled", "manual")
        for op in ("request_backfill", "reembed_collection", "plan_sync")
    }


def test_loading_the_definitions_and_the_command_imports_no_chromadb(tmp_path: Path) -> None:
    """A code server, a webserver, a `dg` command and `s3sync --help` load the definitions or the command, never a
    collection: chromadb's import (about a CPU second) waits for the first store opened."""
    path = tmp_path / "s3sync.yaml"
    source = {"name": "docs", "bucket_name": "bucket", "region": "us-east-1", "collection_name": "docs-chunks"}
    path.write_text(yaml.safe_dump({"sources": [source | {"poll_interval_seconds": 60}]}))
    script = (
        "import sys\n"
        "from s3sync_dagster.config import load_config\n"
        "from s3sync_dagster.definitions import build_definitions\n"
        "import s3sync_dagster.commands.cli\n"
        f"build_definitions(load_config({str(path)!r})).get_repository_def().get_all_jobs()\n"
        "assert 'chromadb' not in sys.modules, 'chromadb was imported'\n"
        "from s3sync_dagster.pipeline.embedding import ChromaDefaultFunction\n"  # the face still gives it
        "assert ChromaDefaultFunction.name() == 'default' and 'chromadb' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
