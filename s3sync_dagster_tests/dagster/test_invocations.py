"""`s3sync invoke / invocations / cancel` on a real instance with no daemon: invocations wait as requests,
and the invocation sensor is evaluated here as the daemon evaluates it.

The daemon's own run of it is tested in test_daemon.py, and a UI re-execution against `dagster dev` in
test_webserver.py.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import jsonschema
import pytest
import yaml

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.runs.invocations import validate_invocation
from s3sync_dagster.config import AppConfig, load_config, parse_config
from s3sync_dagster.defs.names import asset_op_name
from s3sync_dagster.defs.resources import ChromaResource
from s3sync_dagster.defs.sensors import invocations as invocation_sensor
from s3sync_dagster.defs.sensors.invocations import INVOCATION_SENSOR, record_request
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster.pipeline.spec import Invocation
from s3sync_dagster_tests.conftest import ConfigFactory, put

SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "sync_api_jobs.schema.json").read_text())


def validate_jobs(rows: Any) -> None:
    """The Sync API's job list schema, formats (uuid, date-time) included."""
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(rows)]
    assert not errors, errors


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


@pytest.mark.parametrize(
    ("extra", "object_key", "rule"),
    [
        ([], "other/a.md", "does not start with source 'docs' path_prefix 'team/'"),
        (["--custom-id", "x" * 121], "team/a.md", "custom id is 121 bytes; at most 120 bytes are allowed"),
        (["--custom-id", "é" * 61], "team/a.md", "custom id is 122 bytes"),
        (["--metadata", '{"nested": {"a": 1}}'], "team/a.md", "metadata 'nested' must be a string, number"),
        (["--metadata", '{"mixed": [1, "a"]}'], "team/a.md", "metadata 'mixed' must be an array of one scalar type"),
        (["--metadata", '{"object_key": "x"}'], "team/a.md", "metadata key 'object_key' is reserved"),
        (["--metadata", "[1]"], "team/a.md", "--metadata must be a JSON object"),
        (["--metadata", "{nope"], "team/a.md", "--metadata is not valid JSON"),
        (["--target-collection", "a b"], "team/a.md", "target collection 'a b' is not a valid Chroma collection name"),
        ([], "team/missing.md", "object 'team/missing.md' does not exist in bucket"),
        (["--custom-id", "c"], "team/a.md.meta.json", "is a .meta.json file: it carries its own custom id"),
    ],
)
def test_invoke_refuses_what_the_sync_api_refuses_before_anything_runs(
    s3: Any,
    bucket: str,
    make_config: ConfigFactory,
    dagster_home: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    object_key: str,
    rule: str,
) -> None:
    put(s3, bucket, {"team/a.md": "# A\n", "other/a.md": "# other\n", "team/a.md.meta.json": "{}"})
    _, path = make_config(bucket, path_prefix="team/")
    code, out, err = cli(capsys, "invoke", "docs", object_key, *extra, "--config", str(path))
    assert code == 2
    assert rule in out["error"] and rule in err
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_records() == []
        assert instance.get_dynamic_partitions("docs_objects") == []
        assert instance.fetch_observations(dg.AssetKey(["docs", "documents"]), limit=1).records == []


class Daemon:
    """The daemon's part, evaluated here: a tick of the invocation sensor (with the cursor the last tick left),
    then its run requests run on the instance as the daemon's run queue would run them."""

    def __init__(self, config: AppConfig) -> None:
        from s3sync_dagster.definitions import build_definitions

        self.defs = build_definitions(config)
        self.sensor = self.defs.resolve_sensor_def(INVOCATION_SENSOR)
        self.cursor: str | None = None

    def tick(self, instance: dg.DagsterInstance, cursor: str | None = "kept") -> list[dg.RunRequest]:
        """A tick with the cursor the last one left ("kept"), or with this one (None: a reset cursor)."""
        cursor = self.cursor if cursor == "kept" else cursor
        with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=self.defs) as context:
            result = self.sensor(context)
        assert isinstance(result, dg.SensorResult)
        self.cursor = result.cursor
        return list(result.run_requests or [])

    def run(self, instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            asset_selection=list(request.asset_selection or []),
            partition_key=request.partition_key,
            run_config=request.run_config,
            tags=request.tags,
            raise_on_error=False,
        )


def test_invoke_records_a_request_that_the_sensor_turns_into_one_run_carrying_its_parameters(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    object_key = "team/notes, draft.md"  # a comma: the partition key is encoded, the object key is not
    put(s3, bucket, {object_key: "# Notes\n\nThe invoice total is 42.\n"})
    config, path = make_config(bucket, path_prefix="team/")
    metadata = {"team": "finance", "tags": ["a", "b"], "score": 1.5, "draft": True, "dropped": None}
    code, row, err = cli(
        capsys, "invoke", "docs", object_key, "--custom-id", "notes-1", "--metadata", json.dumps(metadata),
        "--target-collection", "finance-notes", "--config", str(path),
    )  # fmt: skip
    assert code == 0, err
    assert "no dagster-daemon is serving this instance" in err
    # The invocation's id at once; no run yet: the daemon's sensor makes it.
    assert row["status"] == "pending" and row["trigger"] == "invocation" and row["run_id"] is None
    assert row["metadata"] == {
        "s3": {"bucket_name": bucket, "object_key": object_key},
        "database_name": "default_database",
        "collection_name": "finance-notes",
    }
    validate_jobs([row])
    code, rows, _ = cli(capsys, "invocations", "docs", "--status", "pending", "--config", str(path))
    assert code == 0 and rows == [row]
    code, rows, _ = cli(capsys, "invocations", "--status", "complete", "--config", str(path))
    assert code == 0 and rows == []
    code, out, _ = cli(capsys, "cancel", row["id"], "--config", str(path))
    assert code == 2 and f"invocation {row['id']} has no run yet" in out["error"]

    partition_key = keys.to_partition_key(object_key)
    daemon = Daemon(config)
    with dg.DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions("docs_objects") == [partition_key]
        assert instance.get_run_records() == []
        [request] = daemon.tick(instance)
        assert request.run_key == row["id"]
        assert request.asset_selection == [dg.AssetKey(["docs", "documents"])] and request.asset_check_keys == []
        assert request.partition_key == partition_key
        assert request.tags == {"s3sync/source": "docs", "s3sync/invocation": row["id"]}
        run = daemon.run(instance, request)
        assert run.success
        # Seen again (the next tick, or a tick whose cursor was lost): no second run.
        assert daemon.tick(instance) == []
        assert daemon.tick(instance, cursor=None) == [] and daemon.tick(instance, cursor="0") == []
        [record] = instance.get_run_records()
        assert record.dagster_run.tags["dagster/partition"] == partition_key
        # The parameters are the run's config: shown in the UI, reused by a re-execution.
        assert record.dagster_run.run_config["ops"] == {
            asset_op_name("docs"): {
                "config": {
                    "custom_id": "notes-1",
                    "metadata": {"team": "finance", "tags": ["a", "b"], "score": 1.5, "draft": True},
                    "target_collection_name": "finance-notes",
                }
            }
        }

    found = ChromaResource(path=config.chroma.embedded_path).client().get_collection("finance-notes").get()
    assert found["ids"] == ["notes-1-0"] and found["metadatas"][0]["team"] == "finance"
    # The same job, by the id invoke gave: now with its run.
    code, rows, _ = cli(capsys, "invocations", "--config", str(path))
    assert [(r["id"], r["run_id"], r["trigger"]) for r in rows] == [(row["id"], run.run_id, "invocation")]
    assert "complete" in rows[0]["status"]
    validate_jobs(rows)
    code, out, _ = cli(capsys, "cancel", row["id"], "--config", str(path))
    assert code == 2 and out["error"] == f"run {row['id']} has already finished (complete): nothing to cancel"
    code, out, _ = cli(capsys, "cancel", "00000000-0000-0000-0000-000000000000", "--config", str(path))
    assert code == 2 and "does not exist on this instance" in out["error"]


def test_one_sensor_serves_every_source_and_holds_its_cursor_on_a_long_backlog(
    make_config: ConfigFactory, bucket: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sources' requests, more than a tick reads for one of them: each becomes one run of its own source's
    asset, in order, none skipped and none twice; a request whose key was forgotten since runs nothing."""
    config, path = make_config(bucket, path_prefix="a/")
    raw = yaml.safe_load(path.read_text())
    raw["sources"].append({**raw["sources"][0], "name": "other", "path_prefix": "b/", "collection_name": "other-c"})
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    monkeypatch.setattr(invocation_sensor, "REQUESTS_PER_TICK", 2)
    instance.add_dynamic_partitions("docs_objects", ["a/1", "a/2", "a/3"])
    instance.add_dynamic_partitions("other_objects", ["b/1", "b/gone"])
    recorded = [
        record_request(instance, source, key, Invocation(custom_id=key.replace("/", "-")))
        for source, key in [("docs", "a/1"), ("other", "b/1"), ("docs", "a/2"), ("other", "b/gone"), ("docs", "a/3")]
    ]
    instance.delete_dynamic_partition("other_objects", "b/gone")
    daemon = Daemon(config)
    # A reset cursor reads each source's latest tick's worth, not its whole history: a/1 is older.
    assert [r.partition_key for r in daemon.tick(instance, cursor=None)] == ["b/1", "a/2", "a/3"]
    first = daemon.tick(instance, cursor="0")
    # docs has three requests, two read: the cursor stops at docs' second, so other's b/gone waits too.
    assert [(r.partition_key, r.run_key) for r in first] == [
        ("a/1", recorded[0].invocation_id), ("b/1", recorded[1].invocation_id), ("a/2", recorded[2].invocation_id)
    ]  # fmt: skip
    assert [r.asset_selection for r in first] == [[dg.AssetKey([s, "documents"])] for s in ("docs", "other", "docs")]
    assert first[1].run_config["ops"] == {"other__documents": {"config": {"custom_id": "b-1", "metadata": {}}}}
    assert daemon.cursor == str(recorded[2].storage_id)
    second = daemon.tick(instance)
    assert [r.partition_key for r in second] == ["a/3"]  # b/gone: no longer registered, not run
    assert daemon.cursor == str(recorded[4].storage_id)
    assert daemon.tick(instance) == []


def test_invocations_pages_newest_first_and_lists_every_kind_of_run(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(s3, bucket, {f"p/{n}.txt": f"file {n}\n" for n in range(3)} | {"p/bad.txt": b"\xff\xfe\x00bad"})
    _, path = make_config(bucket, path_prefix="p/")
    invoked = [cli(capsys, "invoke", "docs", f"p/{n}.txt", "--config", str(path))[1]["id"] for n in range(3)]
    # An in-process sync: one ranged run over the four keys, one of which fails.
    assert main(["sync", "docs", "--all", "--config", str(path)]) == 1
    capsys.readouterr()
    code, rows, _ = cli(capsys, "invocations", "--config", str(path))
    validate_jobs(rows)
    assert [r["id"] for r in rows[1:]] == invoked[::-1]
    synced = rows[0]
    assert synced["trigger"] == "sync" and synced["metadata"]["s3"]["object_key"] is None
    assert synced["status"]["failed"]["error"].startswith("p/bad.txt: object 'p/bad.txt' is not UTF-8 text")
    code, page, _ = cli(capsys, "invocations", "docs", "--limit", "2", "--offset", "1", "--config", str(path))
    assert [r["id"] for r in page] == [rows[1]["id"], rows[2]["id"]]
    code, failed, _ = cli(capsys, "invocations", "--status", "failed", "--config", str(path))
    assert [r["id"] for r in failed] == [synced["id"]]
    code, out, _ = cli(capsys, "invocations", "nope", "--config", str(path))
    assert code == 2 and "nope" in out["error"]


def test_sources_still_shows_settings_when_chroma_is_down(
    bucket: str, make_config: ConfigFactory, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from s3sync_dagster.commands.demo.local_s3 import LOOPBACK, free_port

    _, path = make_config(bucket)
    raw = yaml.safe_load(path.read_text())
    raw["chroma"] = {"host": LOOPBACK, "port": free_port()}  # nothing listens there
    path.write_text(yaml.safe_dump(raw))
    code, out, _ = cli(capsys, "sources", "--config", str(path))
    source = out["sources"][0]
    assert code == 0 and source["payload"]["s3"]["bucket_name"] == bucket
    assert source["indexed_chunks"] is None and source["counts_error"].startswith("Chroma could not be read")
    assert source["registered_keys"] == 0


def test_an_invocation_is_checked_against_the_configured_model_not_the_bundled_one() -> None:
    # OpenAI's model reads 8,191 tokens: 1,000-token chunks are valid for it (all-MiniLM-L6-v2's 256 are refused
    # when the config loads), so the invocation's checks must use the configured model, not the bundled one.
    source = {"name": "docs", "bucket_name": "docs-bucket", "region": "us-east-1", "collection_name": "docs"}
    source["path_prefix"] = "docs/"
    openai = {"function": "openai", "config": {"model_name": "text-embedding-3-small", "api_key": {"env": "K"}}}
    chunking = {"type": "tree_sitter", "max_tokens": 1000}
    config = parse_config({"embedding": openai, "sources": [{**source, "chunking": chunking}]})
    validate_invocation(config.sources[0], "docs/a.md", Invocation(), config.embedding)


def test_invoke_wait_with_no_daemon_runs_the_invocation_here(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No daemon serves the queue: `--wait` does not wait on nobody, it runs the invocation in this process,
    recorded on the instance as the queued run would be (same job, config, tags and events)."""
    object_key = "team/report.md"
    put(s3, bucket, {object_key: "# Report\n\nThe quarterly total is 42.\n"})
    config, path = make_config(bucket, path_prefix="team/")
    code, row, err = cli(
        capsys, "invoke", "docs", object_key, "--custom-id", "report-1", "--metadata", '{"team": "finance"}',
        "--wait", "--timeout", "5", "--config", str(path),
    )  # fmt: skip
    assert code == 0, err
    assert "no dagster-daemon" not in err
    assert row["status"]["complete"]["duration_ms"] > 0 and row["trigger"] == "invocation"
    validate_jobs([row])
    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(row["run_id"])
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["s3sync/invocation"] == row["id"] != row["run_id"]
        # Run here, so nothing is left for a daemon's sensor to run again.
        assert Daemon(config).tick(instance, cursor="0") == []
        assert run.tags["dagster/partition"] == keys.to_partition_key(object_key)
        assert run.run_config["ops"][asset_op_name("docs")]["config"]["custom_id"] == "report-1"
    found = ChromaResource(path=config.chroma.embedded_path).client().get_collection("docs-collection").get()
    assert found["ids"] == ["report-1-0"] and found["metadatas"][0]["team"] == "finance"


def test_a_sensor_that_started_before_any_request_reads_every_later_one(
    make_config: ConfigFactory, bucket: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first tick on an empty instance leaves a cursor: a request followed by more than a tick's worth of
    other observations (failed keys) is still read, not hidden behind the latest ones."""
    config, _ = make_config(bucket)
    monkeypatch.setattr(invocation_sensor, "REQUESTS_PER_TICK", 2)
    daemon = Daemon(config)
    assert daemon.tick(instance, cursor=None) == [] and daemon.cursor == "0"
    instance.add_dynamic_partitions("docs_objects", ["k"])
    request = record_request(instance, "docs", "k", Invocation())
    for _ in range(3):
        failed = dg.AssetObservation(asset_key=["docs", "documents"], partition="k", metadata={"status": "failed"})
        instance.report_runless_asset_event(failed)
    assert [r.run_key for r in daemon.tick(instance)] == [request.invocation_id]


@pytest.mark.parametrize(
    "module",
    [
        "commands/runs/invocations.py",
        "commands/cli.py",
        "commands/subcommands/invocations.py",
        "defs/sensors/invocations.py",
    ],
)
def test_the_invocation_path_names_nothing_private_of_dagster(module: str) -> None:
    source = (Path(__file__).parents[2] / "s3sync_dagster" / module).read_text()
    assert "dagster._" not in source and "__ASSET_JOB" not in source
