"""In the Dagster project a user already has: Dagster's own scaffolding makes the project (`create-dagster`), `dg`
lists and scaffolds the S3ChromaSync component beside an asset of the user's, `dg check` validates it (and names
the field of a broken defs.yaml), and `dg dev` serves it: a partition launched through the webserver's GraphQL
and the poll sensor on its daemon index exact chunks; the `s3sync` command finds the component's sources.

The tests share one project and one `dg dev`, and run in file order: each builds on what the previous one left.
The project is not pip-installed (pip would fetch hatchling, its build backend, from the index): its `src`
folder is on PYTHONPATH, which is where an install would put it for `dg` and the code server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chromadb
import dagster as dg
import pytest
import yaml

from benchmarks.servers.dagster_server import LATEST, PARTITIONS, DagsterDev, chromium_page, dg_dev
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import TEST_SECRET, put

PROJECT = "riverbank"
SOURCE = "handbook"
ASSET = [SOURCE, "documents"]
BIN = Path(sys.executable).parent
FILES = {
    "guides/otters.md": "# Otters\n\nThe otter enclosure is cleaned every Tuesday before nine.\n",
    "guides/herons.txt": "Herons are fed smelt at noon; the keeper logs each feeding in ledger HX-42.\n",
}
LATER = {"guides/kingfishers.txt": "Kingfisher nest boxes are checked on the first of every month.\n"}
USER_ASSET = '''import dagster as dg

from riverbank.defs.resources import ChromaClient


@dg.asset
def visitor_report(chroma: ChromaClient) -> dg.MaterializeResult:
    """An asset of the user's own, beside the component's, on the project's own `chroma` resource."""
    return dg.MaterializeResult(metadata={"visitors": 1200, "chroma": chroma.host})


@dg.asset(deps=[dg.AssetKey(["handbook", "documents"])], automation_condition=dg.AutomationCondition.eager())
def handbook_digest() -> dg.MaterializeResult:
    """The user's asset downstream of the component's, kept up to date by Dagster's automation."""
    return dg.MaterializeResult()


@dg.asset(
    deps=[dg.AssetKey(["handbook", "documents"])],
    partitions_def=dg.DynamicPartitionsDefinition(name="handbook_objects"),
    automation_condition=dg.AutomationCondition.eager(),
)
def handbook_summaries() -> dg.MaterializeResult:
    """One per document, on the source's own partitions: a key that vanishes leaves this asset's history too."""
    return dg.MaterializeResult()
'''
# The project's own resources under the names dagster-aws's docs and every tutorial use: the component's must not
# meet them (`dg check defs` refused the project while both were called `s3`). The project's io_manager cannot
# store anything here (it would reach the project's warehouse), and records each run that starts it.
USER_RESOURCES = """import os

import dagster as dg
from dagster_aws.s3 import S3Resource


class ChromaClient(dg.ConfigurableResource):
    host: str = "chroma.riverbank.internal"


class WarehouseIOManager(dg.ConfigurableIOManager):
    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        with open(os.environ["RIVERBANK_IO_MANAGER_LOG"], "a") as log:
            log.write(f"{context.run_id}\\n")

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        raise RuntimeError("the warehouse cannot be reached from here")

    def load_input(self, context: dg.InputContext) -> object:
        raise RuntimeError("the warehouse cannot be reached from here")


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={"s3": S3Resource(region_name="eu-west-1"), "chroma": ChromaClient(), "io_manager": WarehouseIOManager()}
    )
"""


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    bucket: str
    stderr: str = ""  # of the last `s3sync` command

    @property
    def defs_yaml(self) -> Path:
        return self.root / "src" / PROJECT / "defs" / SOURCE / "defs.yaml"

    def dg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(BIN / "dg"), *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300
        )
        if check:
            assert done.returncode == 0, (
                f"dg {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done

    def s3sync(self, *args: str) -> Any:
        done = subprocess.run(
            [str(BIN / "s3sync"), *args, "--json"], cwd=self.root, env=self.env, capture_output=True, text=True
        )
        assert done.returncode == 0, (
            f"s3sync {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
        assert TEST_SECRET not in done.stdout + done.stderr
        self.stderr = done.stderr
        return json.loads(done.stdout)

    def collection(self) -> Any:
        client = chromadb.PersistentClient(path=str(self.root / ".s3sync" / "chroma"))
        return client.get_collection(f"{SOURCE}-chunks")


def expected_chunks(files: dict[str, str]) -> dict[str, str]:
    return {keys.chunk_id(keys.object_id(object_key), 0): text for object_key, text in files.items()}


def stored(project: Project, files: dict[str, str]) -> dict[str, str]:
    rows = project.collection().get(where={"object_key": {"$in": sorted(files)}}, include=["documents"])
    return dict(zip(rows["ids"], rows["documents"], strict=True))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str, s3: Any) -> Project:
    """A project as `create-dagster project` makes it, the component scaffolded in and edited as its docs say."""
    parent = tmp_path_factory.mktemp("dg")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(parent / PROJECT / "src"), os.environ.get("PYTHONPATH")])),
        DAGSTER_DG_UPDATE_CHECK_ENABLED="0",  # it would ask PyPI for a newer create-dagster
        DAGSTER_DISABLE_TELEMETRY="1",
        RIVERBANK_IO_MANAGER_LOG=str(parent / "io_manager.log"),
    )
    env.pop("S3SYNC_CONFIG", None)
    env.pop("DAGSTER_HOME", None)
    made = subprocess.run(
        [str(BIN / "create-dagster"), "project", PROJECT, "--no-uv-sync"],
        cwd=parent, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    # The project's .env, which `dg` loads and so must `s3sync`: the defs.yaml's templates read these.
    (parent / PROJECT / ".env").write_text(f"HANDBOOK_ENDPOINT={moto_endpoint}\nARCHIVE_KEYS_PER_RUN=7\n")
    bucket = f"riverbank-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    put(s3, bucket, FILES)
    return Project(parent / PROJECT, env, bucket)


def test_dg_lists_the_component(project: Project) -> None:
    listed = json.loads(project.dg("list", "components", "--json").stdout)
    components = {item["key"]: item for item in listed["items"]}
    assert "s3sync_dagster.S3ChromaSync" in components
    assert "S3 sources kept in sync with Chroma" in components["s3sync_dagster.S3ChromaSync"]["summary"]


def test_dg_scaffolds_a_commented_source_beside_the_users_own_asset(project: Project) -> None:
    project.dg(
        "scaffold", "defs", "s3sync_dagster.S3ChromaSync", SOURCE,
        "--bucket-name", project.bucket, "--path-prefix", "guides/", "--endpoint-url", "{{ env.HANDBOOK_ENDPOINT }}",
    )  # fmt: skip
    text = project.defs_yaml.read_text()
    assert text.startswith("type: s3sync_dagster.S3ChromaSync\n")
    assert f"    - name: {SOURCE}\n" in text and "# poll_interval_seconds: 300" in text
    # As a user does: credentials by variable name, and polling turned on, by uncommenting what is shown.
    text = text.replace("# aws_access_key_id: {env: AWS_ACCESS_KEY_ID}", "aws_access_key_id: {env: S3SYNC_TEST_KEY_ID}")
    text = text.replace(
        "# aws_secret_access_key: {env: AWS_SECRET_ACCESS_KEY}", "aws_secret_access_key: {env: S3SYNC_TEST_SECRET}"
    )
    text = text.replace("# poll_interval_seconds: 300", "poll_interval_seconds: 2")
    # handbook_summaries (the user's) is partitioned by the source's partitions: a deleted object's stays.
    text = text.replace("# forget_deleted_keys: false", "forget_deleted_keys: false")
    # A second source shares the component's chroma, embedding and documents settings.
    text += (
        f'    - name: archive\n      bucket_name: "{project.bucket}"\n      region: "us-east-1"\n'
        '      collection_name: "archive-chunks"\n      path_prefix: "archive/"\n'
        '      endpoint_url: "{{ env.HANDBOOK_ENDPOINT }}"\n'
        '      keys_per_run: "{{ env.ARCHIVE_KEYS_PER_RUN }}"\n'  # a template in a number field
    )
    project.defs_yaml.write_text(text)
    project.dg("scaffold", "defs", "dagster.asset", "reports.py")
    (project.root / "src" / PROJECT / "defs" / "resources.py").write_text(USER_RESOURCES)
    (project.root / "src" / PROJECT / "defs" / "reports.py").write_text(USER_ASSET)

    checked = project.dg("check", "yaml")
    assert "validated successfully" in checked.stdout + checked.stderr
    loaded = project.dg("check", "defs")
    assert "All definitions loaded successfully" in loaded.stdout + loaded.stderr


def test_dg_list_defs_shows_the_sources_objects_beside_the_users(project: Project) -> None:
    listed = json.loads(project.dg("list", "defs", "--json").stdout)
    assets = {item["asset_key"] for item in listed["assets"]}
    assert assets == {
        f"{SOURCE}/documents",
        "archive/documents",
        "visitor_report",
        "handbook_digest",
        "handbook_summaries",
    }
    resources = {item["name"] for item in listed["resources"]}
    assert {"s3", "chroma", "io_manager", "s3sync_s3", "s3sync_chroma", "s3sync_io_manager"} <= resources, resources
    assert {item["key"] for item in listed["asset_checks"]} == {
        f"{name}/documents:{check}" for name in (SOURCE, "archive") for check in ("indexed_keys_have_chunks", "drift")
    }
    assert {item["name"] for item in listed["jobs"]} >= {f"{SOURCE}_repair", f"{SOURCE}_backfill", "archive_backfill"}
    assert {item["name"] for item in listed["sensors"]} >= {f"{SOURCE}_poll", "s3sync_invocations"}


def test_a_broken_defs_yaml_is_refused_naming_the_field(project: Project) -> None:
    good = project.defs_yaml.read_text()
    broken = good.replace('      region: "us-east-1"\n', "", 1).replace(
        "      path_prefix:", "      keys_per_run: lots\n      path_prefix:", 1
    )
    assert broken.count("\n") == good.count("\n")  # one line gone, one added
    project.defs_yaml.write_text(broken)
    try:
        checked = project.dg("check", "yaml", check=False)
        said = checked.stdout + checked.stderr
        assert checked.returncode != 0
        # dg: `FILE:LINE - TYPE attributes.PATH MESSAGE` (colours aside), a snippet below each.
        located = {
            (match[0], match[1])
            for match in re.findall(
                r"(defs\.yaml:\d+)\S* - \S*s3sync_dagster\.S3ChromaSync\S* \S*(attributes\.\S+)", said
            )
        }
        region_line = next(n for n, line in enumerate(broken.splitlines(), 1) if f"- name: {SOURCE}" in line)
        keys_line = next(n for n, line in enumerate(broken.splitlines(), 1) if "keys_per_run: lots" in line)
        assert located == {
            (f"defs.yaml:{region_line}", "attributes.sources.0"),
            (f"defs.yaml:{keys_line}", "attributes.sources.0.keys_per_run"),
        }, said[-3000:]
        assert "'region' is a required property" in said
        loaded = project.dg("check", "defs", "--no-check-yaml", check=False)
        said = loaded.stdout + loaded.stderr
        assert loaded.returncode != 0
        assert f"defs.yaml:{keys_line} - attributes.sources.0.keys_per_run 'lots' is not of type 'integer'" in said
        # s3sync says the same files, lines and fields, and the value's own fault; no Dagster tree around it.
        done = subprocess.run(
            [str(BIN / "s3sync"), "sources"], cwd=project.root, env=project.env, capture_output=True, text=True
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert (
            f"{project.defs_yaml}:{region_line} - attributes.sources.0 'region' is a required property" in done.stderr
        )
        assert (
            f"{project.defs_yaml}:{keys_line} - attributes.sources.0.keys_per_run 'lots' is not of type 'integer' "
            "(nor a {{ template }})"
        ) in done.stderr, done.stderr
        assert "Error while loading component" not in done.stderr
    finally:
        project.defs_yaml.write_text(good)


def test_a_second_component_is_refused_naming_both_files(project: Project) -> None:
    second = project.defs_yaml.parent.parent / "archive" / "defs.yaml"
    second.parent.mkdir()
    second.write_text(
        "type: s3sync_dagster.S3ChromaSync\nattributes:\n  sources:\n    - name: attic\n"
        f"      bucket_name: {project.bucket}\n      region: us-east-1\n      collection_name: attic-chunks\n"
    )
    try:
        loaded = project.dg("check", "defs", "--no-check-yaml", check=False)
        said = loaded.stdout + loaded.stderr
        assert loaded.returncode != 0
        assert "declares s3sync_dagster.S3ChromaSync 2 times" in said, said[-3000:]
        assert f"{SOURCE}/defs.yaml" in said and "archive/defs.yaml" in said
    finally:
        second.unlink()
        second.parent.rmdir()


def test_the_s3sync_command_finds_the_components_sources(project: Project) -> None:
    home = project.root / ".s3sync" / "dagster"  # where the command keeps its instance for a project
    discovered = project.s3sync("discover", SOURCE)  # registers the keys in the instance `dg dev` serves next
    assert (discovered["listed"], discovered["new"]) == (len(FILES), len(FILES))
    # The home it made has none of the settings the sources rely on: said once, with what to copy.
    assert f"the Dagster instance in {home} lacks run_retries, run_monitoring" in project.stderr, project.stderr
    assert "run_retries: {enabled: true" in project.stderr and "docs/install.md" in project.stderr
    sources = project.s3sync("sources")
    assert "lacks" not in project.stderr
    assert [row["name"] for row in sources["sources"]] == [SOURCE, "archive"]
    assert home.is_dir()


def test_a_celery_worker_in_the_project_reads_the_components_broker_from_its_env(project: Project) -> None:
    """A worker started in the project (no s3sync.yaml, no S3SYNC_CONFIG) serves the component's broker, named
    by a variable of the project's `.env`."""
    good, env_file = project.defs_yaml.read_text(), project.root / ".env"
    dotenv = env_file.read_text()
    project.defs_yaml.write_text(
        good + "  chroma: {host: localhost, port: 8123}\n  executor:\n    celery: {broker: {env: HANDBOOK_BROKER}}\n"
    )
    env_file.write_text(dotenv + "HANDBOOK_BROKER=redis://localhost:6399/5\n")
    try:
        asked = "from s3sync_dagster.commands.celery_worker import app; print(app.conf.broker_url)"
        done = subprocess.run(
            [sys.executable, "-c", asked], cwd=project.root, env=project.env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip() == "redis://localhost:6399/5"
    finally:
        project.defs_yaml.write_text(good)
        env_file.write_text(dotenv)


@pytest.fixture(scope="module")
def served(project: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    home = project.root / ".s3sync" / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    settings = yaml.safe_load((Path(__file__).resolve().parents[2] / "dagster.yaml").read_text())
    (home / "dagster.yaml").write_text(yaml.safe_dump({**settings, "telemetry": {"enabled": False}}))
    log = tmp_path_factory.mktemp("dg-dev") / "dg-dev.log"
    with dg_dev(project.root, home, log, project.env) as server:
        # Dagster's automation, as a user turns it on in the UI: it evaluates the user's assets downstream of ours.
        started = server.gql(START_SENSOR, sensorSelector={**server.repository(), "sensorName": AUTOMATION_SENSOR})
        assert started["startSensor"]["__typename"] == "Sensor", started
        yield server


def test_a_partition_launched_from_the_webserver_indexes_exact_chunks(project: Project, served: DagsterDev) -> None:
    object_key = "guides/herons.txt"
    run_id = served.launch_partition(ASSET, keys.to_partition_key(object_key))  # with the checks, as the UI does
    assert served.wait_run(run_id)["status"] == "SUCCESS", served.tail()
    assert stored(project, {object_key: FILES[object_key]}) == expected_chunks({object_key: FILES[object_key]})
    # Its log says only what ran: the checks the UI selected are evaluated in the asset's step, on its key, and
    # no step is skipped (a step of theirs would have had no output to follow).
    events = served.run_log(run_id)
    kinds = [event["__typename"] for event in events]
    assert "ExecutionStepSkippedEvent" not in kinds and not any("Skipping" in e.get("message", "") for e in events)
    assert {event["stepKey"] for event in events if event.get("stepKey")} == {"__".join(ASSET)}
    assert kinds.count("AssetCheckEvaluationEvent") == 2, kinds


ARCHIVE_FILES = {
    "archive/2019/report.md": "# 2019\n\nThe heron colony counted 212 nests.\n",
    "archive/2020/report.md": "# 2020\n\nThe heron colony counted 198 nests.\n",
    "archive/minutes.txt": "Minutes: the boardwalk closes for repairs in March.\n",
}


def test_a_ui_user_indexes_a_bucket_with_clicks_only(project: Project, served: DagsterDev, s3: Any) -> None:
    """In Chromium, on `dg dev` at a port of its own (the component names no webserver.url): a source no command has
    discovered, its backfill job launched from the launchpad as it opens. Every key in the bucket is registered and
    materialised, and a partition's run, opened, shows the asset's step alone, nothing skipped."""
    from playwright.sync_api import expect

    put(s3, project.bucket, ARCHIVE_FILES)
    archive = ["archive", "documents"]
    assert served.gql(PARTITIONS, assetKey={"path": archive})["assetNodeOrError"]["partitionKeys"] == []
    repository = served.repository()
    location = f"{repository['repositoryName']}@{repository['repositoryLocationName']}"
    with chromium_page() as page:
        page.goto(f"{served.url}/locations/{location}/jobs/archive_backfill/playground", wait_until="domcontentloaded")
        page.get_by_role("button", name=re.compile("Launch run", re.IGNORECASE)).click()
        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
        job_run = re.findall(r"/runs/([0-9a-f-]{36})", page.url)[0]
        assert served.wait_run(job_run)["status"] == "SUCCESS", served.tail()
        wanted = sorted(keys.to_partition_key(object_key) for object_key in ARCHIVE_FILES)
        deadline = time.monotonic() + 300
        while (done := served.gql(PARTITIONS, assetKey={"path": archive})["assetNodeOrError"])[
            "assetPartitionStatuses"
        ]["materializedPartitions"] != wanted:
            assert time.monotonic() < deadline, f"not materialised: {done}\n{served.tail()}"
            time.sleep(2)
        assert sorted(done["partitionKeys"]) == wanted

        latest = served.gql(LATEST, assetKey={"path": archive}, partitions=wanted[:1])["assetNodeOrError"]
        run_id = latest["latestMaterializationByPartition"][0]["runId"]
        page.goto(f"{served.url}/runs/{run_id}", wait_until="domcontentloaded")
        expect(page.get_by_text("archive__documents").first).to_be_visible()
        expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible()
        expect(page.get_by_text("Skipping", exact=False)).to_have_count(0)
    events = served.run_log(run_id)
    assert "ExecutionStepSkippedEvent" not in [event["__typename"] for event in events]
    assert {event["stepKey"] for event in events if event.get("stepKey")} == {"archive__documents"}


def test_the_poll_sensor_on_the_daemon_indexes_new_objects(project: Project, served: DagsterDev, s3: Any) -> None:
    put(s3, project.bucket, LATER)
    everything = {**FILES, **LATER}
    deadline = time.monotonic() + 240
    while stored(project, everything) != expected_chunks(everything):
        assert time.monotonic() < deadline, f"not indexed by the poll sensor; dg dev log:\n{served.tail()}"
        time.sleep(2)
    assert TEST_SECRET not in served.log.read_text(errors="replace")
    # No sync run of ours started the project's io_manager (its own assets' runs may). Our asset and ops hand their
    # (valueless) outputs to ours; the asset's checks are Dagster's, whose decorator takes no IO manager: their step
    # starts the project's `io_manager` and never hands it anything (the launched partition's run succeeded above,
    # where its handle_output raises).
    io_log = Path(project.env["RIVERBANK_IO_MANAGER_LOG"])
    started = io_log.read_text().split() if io_log.exists() else []
    jobs = {served.run(run_id)["jobName"] for run_id in started}
    assert f"{SOURCE}_auto_sync" not in jobs, jobs


AUTOMATION_SENSOR = "default_automation_condition_sensor"
START_SENSOR = """
mutation Start($sensorSelector: SensorSelector!) {
  startSensor(sensorSelector: $sensorSelector) { __typename ... on PythonError { message } }
}"""
SENSOR_TICKS = """
query Ticks($sensorSelector: SensorSelector!) {
  sensorOrError(sensorSelector: $sensorSelector) {
    ... on Sensor { sensorState { ticks(limit: 5) { timestamp status } } }
  }
}"""
# What the asset page's Automation tab asks (its GetEvaluationsQuery): it failed in some Dagster releases once a
# dynamic partition an evaluation named was deleted (dagster #33910), which is what the poll sensor does to a key
# whose object is gone.
EVALUATIONS = """
query Evaluations($assetKey: AssetKeyInput!) {
  assetConditionEvaluationRecordsOrError(assetKey: $assetKey, limit: 50) {
    __typename
    ... on AssetConditionEvaluationRecords {
      records { evaluationId timestamp numRequested evaluationNodes { uniqueId numTrue numCandidates isPartitioned } }
    }
  }
}"""


def test_a_vanished_key_leaves_the_automation_of_the_users_downstream_assets_readable(
    project: Project, served: DagsterDev, s3: Any
) -> None:
    object_key = next(iter(LATER))
    partition_key = keys.to_partition_key(object_key)
    home = project.root / ".s3sync" / "dagster"
    # The automation has evaluated (and requested) the user's per-document asset for the key before it vanishes.
    deadline = time.monotonic() + 240
    while not _requested(served, ["handbook_summaries"]):
        assert time.monotonic() < deadline, f"no evaluation requested {partition_key}; dg dev log:\n{served.tail()}"
        time.sleep(3)

    s3.delete_object(Bucket=project.bucket, Key=object_key)
    while stored(project, {**FILES, **LATER}) != expected_chunks(FILES):  # the poll sensor removes its chunks
        assert time.monotonic() < deadline + 240, f"the chunks stayed; dg dev log:\n{served.tail()}"
        time.sleep(2)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # forget_deleted_keys: false: the partition stays (deleting it is what broke the tab, dagster #33910).
        assert partition_key in instance.get_dynamic_partitions(f"{SOURCE}_objects")
    gone = time.time()
    selector = {**served.repository(), "sensorName": AUTOMATION_SENSOR}
    while not any(
        tick["timestamp"] > gone and tick["status"] in ("SUCCESS", "SKIPPED", "FAILURE")
        for tick in served.gql(SENSOR_TICKS, sensorSelector=selector)["sensorOrError"]["sensorState"]["ticks"]
    ):
        assert time.monotonic() < deadline + 480, f"no automation tick after the key vanished:\n{served.tail()}"
        time.sleep(3)
    ticks = served.gql(SENSOR_TICKS, sensorSelector=selector)["sensorOrError"]["sensorState"]["ticks"]
    assert all(tick["status"] != "FAILURE" for tick in ticks if tick["timestamp"] > gone), ticks
    for asset in (["handbook_summaries"], ["handbook_digest"]):
        answer = served.gql(EVALUATIONS, assetKey={"path": asset})["assetConditionEvaluationRecordsOrError"]
        assert answer["__typename"] == "AssetConditionEvaluationRecords", answer
        assert answer["records"], asset  # the tab shows the evaluations, before and after the key vanished


def _requested(served: DagsterDev, asset: list[str]) -> bool:
    answer = served.gql(EVALUATIONS, assetKey={"path": asset})["assetConditionEvaluationRecordsOrError"]
    return any(record["numRequested"] for record in answer.get("records", []))
