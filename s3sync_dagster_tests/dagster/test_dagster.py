"""Through Dagster: definitions from YAML, ranged runs on a real instance, per-key materialisations and failures."""

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.runs.runner import contiguous_batches
from s3sync_dagster.config import ConfigError, load_config
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import documents_asset_key, partitions_name
from s3sync_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests import document_fixtures as fx
from s3sync_dagster_tests.conftest import ConfigFactory, put


def test_definitions_load_from_yaml(bucket: str, make_config: ConfigFactory) -> None:
    config, _ = make_config(bucket, name="handbook", path_prefix="hb/")
    defs = build_definitions(config)
    asset = defs.resolve_assets_def(dg.AssetKey(["handbook", "documents"]))
    assert asset.partitions_def == dg.DynamicPartitionsDefinition(name="handbook_objects")
    spec = asset.specs_by_key[asset.key]
    assert spec.metadata["collection"] == "handbook-collection"
    assert {"s3", "chroma"} <= set(spec.kinds)
    assert asset.backfill_policy == dg.BackfillPolicy.multi_run(100)  # keys_per_run by default
    defs.resolve_implicit_global_asset_job_def()  # the whole thing resolves
    # Credentials stay environment-variable names in the definitions, read only when a client is made.
    resource = defs.resources["s3sync_s3"].for_source("handbook")
    assert resource.aws_secret_access_key is None and resource.aws_secret_access_key_env == "S3SYNC_TEST_SECRET"


def test_ranged_run_indexes_every_key_and_fails_only_the_bad_one(
    s3: Any, bucket: str, make_config: ConfigFactory, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    config, _ = make_config(bucket)
    files: dict[str, bytes | str] = {
        "a/one.md": "# One\n\nFirst document.\n",
        "a/two, with comma.txt": "second\n",
        "a/three...dots.txt": "third\n",
        "a/bad.txt": b"\xff\xfe not utf-8",
        "a/four.py": "def four():\n    return 4\n",
        "a/report.docx": fx.docx_bytes(),  # converted in the run's worker processes
    }
    put(s3, bucket, files)
    # The last partition is what a user might type in the UI: not canonical, it must fail alone.
    partition_keys = [keys.to_partition_key(k) for k in files] + ["a/typed%41.txt"]
    instance.add_dynamic_partitions(partitions_name("docs"), partition_keys)
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[documents_asset_key("docs")],
        tags={RANGE_START_TAG: partition_keys[0], RANGE_END_TAG: partition_keys[-1]},
        raise_on_error=False,
    )
    assert not result.success
    records = instance.fetch_materializations(documents_asset_key("docs"), limit=100).records
    materialized = {keys.to_object_key(r.partition_key or ""): r.asset_materialization.metadata for r in records}
    assert set(materialized) == set(files) - {"a/bad.txt"}
    one = materialized["a/one.md"]
    assert (
        one["status"].value == "indexed" and one["chunks"].value >= 1 and one["bytes"].value == len(files["a/one.md"])
    )
    assert one["chunker"].value == "tree_sitter:markdown"
    for name in ("chunks_written", "chunks_deleted", "chunks_unchanged", "duration_s", "preview"):
        assert name in one
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert materialized["a/report.docx"]["extractor"].value == "docling:docx"
    assert "2 of 7 object(s) failed" in message and "a/bad.txt: object 'a/bad.txt' is not UTF-8 text" in message
    assert "partition key 'a/typed%41.txt' is not in canonical form" in message
    status = instance.get_status_by_partition(
        documents_asset_key("docs"), partition_keys, dg.DynamicPartitionsDefinition(name=partitions_name("docs"))
    )
    assert status[keys.to_partition_key("a/bad.txt")] == dg.AssetPartitionStatus.FAILED
    assert status[keys.to_partition_key("a/one.md")] == dg.AssetPartitionStatus.MATERIALIZED
    assert status["a/typed%41.txt"] == dg.AssetPartitionStatus.FAILED


def test_contiguous_batches_never_span_unwanted_keys() -> None:
    ordered = [f"k{n}" for n in range(10)]
    assert contiguous_batches(ordered, ordered, 4) == [ordered[0:4], ordered[4:8], ordered[8:10]]
    assert contiguous_batches(ordered, ["k1", "k2", "k5", "k9", "k8"], 10) == [["k1", "k2"], ["k5"], ["k8", "k9"]]


def test_an_asset_key_prefix_names_the_asset_and_every_run_of_it(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(s3, bucket, {"p/a.txt": "alpha\n", "p/b.txt": "beta\n"})
    config, path = make_config(bucket, path_prefix="p/", asset_key_prefix=["riverbank", "handbook"])
    key = dg.AssetKey(["riverbank", "handbook", "documents"])
    defs = build_definitions(config)
    assert defs.resolve_assets_def(key).partitions_def == dg.DynamicPartitionsDefinition(name="docs_objects")
    assert main(["sync", "docs", "--all", "--config", str(path), "--json"]) == 0
    capsys.readouterr()
    put(s3, bucket, {"p/a.txt": "alpha, changed\n"})
    assert main(["invoke", "docs", "p/a.txt", "--wait", "--config", str(path), "--json"]) == 0, capsys.readouterr()
    with dg.DagsterInstance.get() as instance:
        records = instance.fetch_materializations(key, limit=10).records
        assert sorted(keys.to_object_key(r.partition_key or "") for r in records) == ["p/a.txt", "p/a.txt", "p/b.txt"]
        assert instance.fetch_materializations(dg.AssetKey(["docs", "documents"]), limit=1).records == []
        # Neither run plans the source's checks (they compare the whole source and run on their own): none is
        # planned, none skipped.
        runs = instance.get_runs()
        assert len(runs) == 2 and {run.job_name for run in runs} == {"docs_documents"}
        for run in runs:
            unwanted = {dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED, dg.DagsterEventType.STEP_SKIPPED}
            assert [
                e.dagster_event_type for e in instance.all_logs(run.run_id) if e.dagster_event_type in unwanted
            ] == []
    # Two sources may not share a key.
    raw = yaml.safe_load(path.read_text())
    raw["sources"].append({**raw["sources"][0], "name": "other", "collection_name": "other-collection",
                           "path_prefix": "q/", "asset_key_prefix": ["riverbank", "handbook"]})  # fmt: skip
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="sources 'docs' and 'other' both have the asset key 'riverbank/handbook/doc"):
        load_config(path)
