"""The component as complete as dagster-sling's (issue 50, item 5), in a project `create-dagster` makes: the scaffold
takes the options its `--help` lists; a source's `asset:` block sets its asset's tags, owners, kinds, description and
automation condition, and `post_processing:` adds to them, as `dg list defs --json` reads back; every job and sensor
says what it is; a partition run as the UI launches it evaluates the checks it plans; and `read_index`, what an
asset of the user's reads downstream of the source's, has a deleted object gone while Dagster's partitions keep it.

One project for the whole file: `dg` runs in its own processes (as a user runs it), the runs in this one, on the
project's definitions as `dg` loads them (its `src` on sys.path, where an install would put it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

import s3sync_dagster
from s3sync_dagster.definitions import ScaffoldParams
from s3sync_dagster.defs.names import DRIFT_CHECK_NAME, INDEX_CHECK_NAME
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import put

PROJECT = "heronry"
SOURCE = "ledger"
ASSET = dg.AssetKey([SOURCE, "documents"])
BIN = Path(sys.executable).parent
FILES = {
    "notes/herons.md": "# Herons\n\nThe herons are fed smelt at noon; the keeper logs it in ledger HX-42.\n",
    "notes/otters.txt": "The otter enclosure is cleaned every Tuesday before nine.\n",
}
# Set as a user sets them, uncommenting the scaffold's `asset:` hint and changing its values.
ASSET_BLOCK = {
    "tags: {domain: handbook}": "tags: {domain: handbook, tier: gold}",
    'owners: ["team:docs"]': 'owners: ["team:docs", "ana@heronry.example"]',
    "kinds: [markdown]": "kinds: [markdown, ledger]",
}
# Dagster's own post-processing, on the component as on any: a tag on every asset it makes.
POST_PROCESSING = """post_processing:
  assets:
    - target: "*"
      attributes:
        tags:
          reviewed: "yes"
"""


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    bucket: str
    scaffold_help: str = ""  # what `dg scaffold defs s3sync_dagster.S3ChromaSync NAME --help` said

    @property
    def defs_yaml(self) -> Path:
        return self.root / "src" / PROJECT / "defs" / SOURCE / "defs.yaml"

    def dg(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(BIN / "dg"), *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"dg {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        return done


def scaffold_options(help_text: str) -> dict[str, str]:
    """The options `--help` lists for the scaffold, each with what it says it is."""
    return dict(re.findall(r"--([a-z-]+) TEXT: ([^\n]*)", help_text))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str, s3: Any) -> Iterator[Project]:
    """A project as `create-dagster project` makes it, its source scaffolded with every option `--help` names."""
    parent = tmp_path_factory.mktemp("attributes")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(parent / PROJECT / "src"), os.environ.get("PYTHONPATH")])),
        DAGSTER_DG_UPDATE_CHECK_ENABLED="0",  # it would ask PyPI for a newer create-dagster
        DAGSTER_DISABLE_TELEMETRY="1",
        HERONRY_ENDPOINT=moto_endpoint,
    )
    env.pop("S3SYNC_CONFIG", None)
    made = subprocess.run(
        [str(BIN / "create-dagster"), "project", PROJECT, "--no-uv-sync"],
        cwd=parent, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    bucket = f"heronry-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    put(s3, bucket, FILES)
    project = Project(parent / PROJECT, env, bucket)

    project.scaffold_help = said = project.dg(
        "scaffold", "defs", "s3sync_dagster.S3ChromaSync", SOURCE, "--help"
    ).stdout
    values = {
        "bucket-name": bucket,
        "region": "us-east-1",
        "path-prefix": "notes/",
        "collection-name": "heronry-ledger",
        "endpoint-url": "{{ env.HERONRY_ENDPOINT }}",
    }
    assert set(scaffold_options(said)) == set(values), said
    project.dg(
        "scaffold", "defs", "s3sync_dagster.S3ChromaSync", SOURCE,
        *(part for option, value in values.items() for part in (f"--{option}", value)),
    )  # fmt: skip
    text = project.defs_yaml.read_text()
    text = text.replace("# aws_access_key_id: {env: AWS_ACCESS_KEY_ID}", "aws_access_key_id: {env: S3SYNC_TEST_KEY_ID}")
    text = text.replace(
        "# aws_secret_access_key: {env: AWS_SECRET_ACCESS_KEY}", "aws_secret_access_key: {env: S3SYNC_TEST_SECRET}"
    )
    # A poll sensor and an SQS one (none is ticked here), and a deleted object's partition kept (see read_index).
    text = text.replace("# poll_interval_seconds: 300", "poll_interval_seconds: 300")
    text = text.replace("# auto_sync: direct ", "auto_sync: direct ").replace("# sqs_queue_url:", "sqs_queue_url:")
    text = text.replace("# forget_deleted_keys: false", "forget_deleted_keys: false")
    text = re.sub(r"(?m)^(      )# (asset:$|  )", r"\1\2", text)  # the `asset:` hint, uncommented
    for hint, value in ASSET_BLOCK.items():
        assert f"\n        {hint}\n" in text, text
        text = text.replace(f"\n        {hint}\n", f"\n        {value}\n")
    project.defs_yaml.write_text(text + POST_PROCESSING)
    with pytest.MonkeyPatch.context() as patch:  # the runs of this process load the project as `dg` does
        patch.syspath_prepend(str(project.root / "src"))
        patch.setenv("HERONRY_ENDPOINT", moto_endpoint)
        yield project


@pytest.fixture(scope="module")
def listed(project: Project) -> dict[str, Any]:
    checked = project.dg("check", "yaml")
    assert "validated successfully" in checked.stdout + checked.stderr
    return dict(json.loads(project.dg("list", "defs", "--json").stdout))


@pytest.fixture(scope="module")
def defs(project: Project) -> dg.Definitions:
    return dg.ComponentTree.for_project(project.root).build_defs()


def test_the_scaffold_help_lists_every_option_and_the_scaffold_takes_them(project: Project) -> None:
    options = scaffold_options(project.scaffold_help)
    assert set(options) == {name.replace("_", "-") for name in ScaffoldParams.model_fields}
    assert all(options.values()), options  # each says what it is
    text = project.defs_yaml.read_text()
    for written in ('path_prefix: "notes/"', 'collection_name: "heronry-ledger"', "{{ env.HERONRY_ENDPOINT }}"):
        assert written in text, text


def test_inspect_component_lists_every_attribute_and_a_sources_settings(project: Project) -> None:
    """`dg utils inspect-component` (and an editor, from the same schema) shows the attributes and a source's settings,
    though the schema lets a literal secret through to the load, which refuses it without echoing it."""
    said = project.dg("utils", "inspect-component", "s3sync_dagster.S3ChromaSync", "--defs-yaml-example-values")
    assert said.returncode == 0, said.stderr[-2000:]
    example = yaml.safe_load(said.stdout)["attributes"]
    assert {"project", "chroma", "embedding", "sources"} <= set(example), said.stdout
    assert {"name", "bucket_name", "collection_name", "asset"} <= set(example["sources"][0]), said.stdout


def test_a_sources_asset_attributes_read_back_from_dg_list_defs(listed: dict[str, Any]) -> None:
    [asset] = [item for item in listed["assets"] if item["asset_key"] == ASSET.to_user_string()]
    assert asset["group_name"] == SOURCE
    assert asset["kinds"] == ["chroma", "ledger", "markdown", "s3"]
    assert asset["owners"] == [{"team": "docs"}, {"email": "ana@heronry.example"}]
    tags = {tag["key"]: tag["value"] for tag in asset["tags"]}
    assert {"domain": "handbook", "tier": "gold", "reviewed": "yes"}.items() <= tags.items(), tags
    assert asset["automation_condition"]["label"] == "on_missing", asset["automation_condition"]
    assert asset["description"] == "The staff handbook, chunked for search"


def test_every_job_and_sensor_says_what_it_is(listed: dict[str, Any], defs: dg.Definitions) -> None:
    jobs = {job["name"]: job["description"] for job in listed["jobs"]}
    assert {f"{SOURCE}_{job}" for job in ("repair", "backfill", "reembed", "documents", "auto_sync")} <= set(jobs)
    assert all(jobs.values()), jobs
    # `dg list defs` shows no sensor's description (Dagster's listing has none): read from the definitions.
    sensors = {sensor.name: sensor.description for sensor in defs.sensors or []}
    ours = {name: description for name, description in sensors.items() if name.startswith((SOURCE, "s3sync_"))}
    assert set(ours) == {f"{SOURCE}_poll", f"{SOURCE}_sqs", "s3sync_invocations", "s3sync_run_workers"}, sensors
    assert all(ours.values()), ours


def _partition_run(defs: dg.Definitions, instance: dg.DagsterInstance, object_key: str) -> dg.ExecuteInProcessResult:
    """One partition, as the UI's Materialize launches it: Dagster's asset job, the asset and all its checks."""
    checks = {dg.AssetCheckKey(ASSET, name) for name in (INDEX_CHECK_NAME, DRIFT_CHECK_NAME)}
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={ASSET}, asset_check_selection=checks)
    return job.execute_in_process(instance=instance, partition_key=keys.to_partition_key(object_key))


def test_a_partition_run_evaluates_every_check_it_plans_and_read_index_has_a_delete(
    project: Project, defs: dg.Definitions, s3: Any
) -> None:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(f"{SOURCE}_objects", [keys.to_partition_key(key) for key in FILES])
        for object_key in FILES:
            run = _partition_run(defs, instance, object_key)
            planned = run.get_asset_check_evaluations()
            assert {(e.check_name, e.passed) for e in planned} == {(INDEX_CHECK_NAME, True), (DRIFT_CHECK_NAME, True)}
            assert all("this run's" in (e.description or "") for e in planned)
            for check_name in (INDEX_CHECK_NAME, DRIFT_CHECK_NAME):
                record = instance.event_log_storage.get_asset_check_execution_history(
                    dg.AssetCheckKey(ASSET, check_name), limit=1
                )[0]
                assert (record.run_id, record.status.value) == (run.run_id, "SUCCEEDED")
        indexed = s3sync_dagster.read_index(SOURCE, config=project.root)
        assert sorted(indexed.documents) == sorted(FILES) and indexed.chunk_count >= 2
        assert indexed.documents["notes/herons.md"].partition_key == keys.to_partition_key("notes/herons.md")

        # The object deleted, its partition run again (as the poll sensor's run does): its chunks are gone at once;
        # Dagster's materialized partitions still count it (forget_deleted_keys: false keeps the partition).
        s3.delete_object(Bucket=project.bucket, Key="notes/otters.txt")
        run = _partition_run(defs, instance, "notes/otters.txt")
        assert {(e.check_name, e.passed) for e in run.get_asset_check_evaluations()} == {
            (INDEX_CHECK_NAME, True),
            (DRIFT_CHECK_NAME, True),
        }
        indexed = s3sync_dagster.read_index(SOURCE, config=project.root)
        assert list(indexed.documents) == ["notes/herons.md"] and len(indexed) == 1
        assert "notes/otters.txt" not in indexed
        assert len(instance.get_materialized_partitions(ASSET)) == 2


SOURCE_ENTRY = {"name": "docs", "bucket_name": "docs-bucket", "region": "us-east-1", "collection_name": "docs-chunks"}


def test_in_s3sync_yaml_the_same_block_is_rendered_and_a_wrong_value_is_named() -> None:
    """s3sync.yaml has no Dagster templates: its condition stays text, rendered where the asset is made."""
    from s3sync_dagster.config import ConfigError, parse_config
    from s3sync_dagster.definitions import build_definitions

    asset = {"automation_condition": "{{ dg.AutomationCondition.on_cron('0 3 * * *') }}", "tags": {"live": True}}
    config = parse_config({"sources": [{**SOURCE_ENTRY, "asset": asset}]}, "s3sync.yaml")
    [spec] = build_definitions(config).resolve_assets_def(["docs", "documents"]).specs
    assert spec.automation_condition is not None and spec.automation_condition.get_label() == "on_cron(0 3 * * *, UTC)"
    assert spec.tags["live"] == "true"
    for block, said in (
        ({"owners": ["ana"]}, "(source 'docs').asset.owners: Value error, owner 'ana': an email address"),
        ({"tags": {"dagster/kind/x": ""}}, "(source 'docs').asset.tags: Value error, tag key 'dagster/kind/x'"),
        ({"automation_condition": "eager"}, "(source 'docs').asset.automation_condition: Value error, write a Dagster"),
        ({"group_name": "docs"}, "(source 'docs').asset: Value error, `group_name` is the source's own"),
    ):
        with pytest.raises(ConfigError) as refused:
            parse_config({"sources": [{**SOURCE_ENTRY, "asset": block}]}, "s3sync.yaml")
        assert said in str(refused.value)
    config = parse_config({"sources": [{**SOURCE_ENTRY, "asset": {"automation_condition": "{{ 1 + 1 }}"}}]}, "x")
    with pytest.raises(ConfigError, match=r"source 'docs': asset.automation_condition: the template made a int, not"):
        build_definitions(config)
