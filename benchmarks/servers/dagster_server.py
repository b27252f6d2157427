"""`dagster dev` (webserver and daemon in one), or dagster-webserver and dagster-daemon apart, on a loopback
port, and GraphQL as the UI sends it.

The documents below are the ones the UI itself sends (dagster-webserver 1.13's own TypeScript):
one key is launched as one run, several keys or "all" as a partition backfill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from s3sync_dagster.commands.demo import LOOPBACK, free_port

REPO = Path(__file__).resolve().parents[2]
REPOSITORY = "__repository__"  # the repository of a plain Definitions object
# workspace.yaml's location (its module's name) and the job Dagster makes of all assets: what the UI launches.
LOCATION_NAME = "s3sync_dagster.definitions"
ASSET_JOB = "__ASSET_JOB"
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

WORKSPACE = """
query { workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
DAEMONS = "query { instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }"

ADD_DYNAMIC_PARTITION = """
mutation AddDynamicPartitionMutation($partitionsDefName: String!, $partitionKey: String!,
                                     $repositorySelector: RepositorySelector!) {
  addDynamicPartition(partitionsDefName: $partitionsDefName, partitionKey: $partitionKey,
                      repositorySelector: $repositorySelector) {
    __typename
    ... on DuplicateDynamicPartitionError { partitionName }
    ... on PythonError { message }
  }
}"""
PARTITION_TAGS = """
query ConfigPartitionForAssetJobQuery($repositoryName: String!, $repositoryLocationName: String!,
    $jobName: String!, $partitionName: String!, $assetKeys: [AssetKeyInput!]!) {
  pipelineOrError(params: {pipelineName: $jobName, repositoryName: $repositoryName,
                           repositoryLocationName: $repositoryLocationName}) {
    ... on Pipeline { partition(partitionName: $partitionName, selectedAssetKeys: $assetKeys) {
        runConfigOrError { ... on PartitionRunConfig { yaml } }
        tagsOrError { ... on PartitionTags { results { key value } } } } }
  }
}"""
ASSET_CHECKS = """
query AssetChecks($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks { name jobNames } } } } }
}"""
LAUNCH = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message }
  }
}"""
REEXECUTE = """
mutation Reexecute($reexecutionParams: ReexecutionParams!) {
  launchPipelineReexecution(reexecutionParams: $reexecutionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}"""
BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionKeysNotFoundError { message }
    ... on PythonError { message }
  }
}"""
BACKFILL_STATUS = """
query Backfill($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    ... on PartitionBackfill { id status runs { runId status tags { key value } } }
  }
}"""
RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run { runId status jobName runConfigYaml tags { key value } parentRunId }
  }
}"""
RUNS = """
query Runs($limit: Int) { runsOrError(limit: $limit) { ... on Runs { results { runId status } } } }"""
RUN_FAILURES = """
query RunFailure($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    ... on EventConnection { events { __typename
      ... on ExecutionStepFailureEvent { stepKey error { message } failureMetadata { description } } } }
  }
}"""
RUN_LOG = """
query RunLog($runId: ID!) {
  logsForRun(runId: $runId, limit: 5000) {
    ... on EventConnection { events { __typename ... on MessageEvent { message stepKey } } }
  }
}"""
PARTITIONS = """
query AssetPartitions($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode { partitionKeys
      assetPartitionStatuses { ... on DefaultPartitionStatuses {
        materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions } } }
  }
}"""
LATEST = """
query Latest($assetKey: AssetKeyInput!, $partitions: [String!]) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode { latestMaterializationByPartition(partitions: $partitions) {
      partition runId
      metadataEntries { label
        ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text }
        ... on FloatMetadataEntry { floatValue } } } }
  }
}"""
OBSERVATIONS = """
query Observations($assetKey: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $assetKey) {
    ... on Asset { assetObservations(partitions: $partitions, limit: 10) {
      partition runId metadataEntries { label ... on TextMetadataEntry { text } } } }
  }
}"""
CHECK_EXECUTIONS = """
query CheckExecs($assetKey: AssetKeyInput!, $checkName: String!) {
  assetCheckExecutions(assetKey: $assetKey, checkName: $checkName, limit: 10) {
    runId status
    evaluation { success metadataEntries { label
      ... on IntMetadataEntry { intValue } ... on MarkdownMetadataEntry { mdStr } } }
  }
}"""


class GraphQLError(RuntimeError):
    pass


@dataclass
class DagsterDev:
    url: str
    process: subprocess.Popen[bytes]  # `dagster dev`, or dagster-webserver when the daemon runs apart
    log: Path
    client: httpx.Client
    others: tuple[subprocess.Popen[bytes], ...] = ()  # dagster-daemon, run apart as in production
    location: str = LOCATION_NAME  # the code location: this repo's workspace.yaml, or a dg project's name

    def gql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = self.client.post("/graphql", json={"query": query, "variables": variables})
        if response.status_code >= 500:  # GraphQL says why in the body: an error in a resolver
            errors = response.text[response.text.find('"errors"') :] if '"errors"' in response.text else response.text
            raise GraphQLError(f"{response.status_code}: {errors[:3000]}")
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise GraphQLError(str(body["errors"])[:3000])
        return dict(body["data"])

    def repository(self) -> dict[str, str]:
        return {"repositoryLocationName": self.location, "repositoryName": REPOSITORY}

    def add_partition(self, partitions_def: str, partition_key: str) -> str:
        result = self.gql(
            ADD_DYNAMIC_PARTITION,
            partitionsDefName=partitions_def,
            partitionKey=partition_key,
            repositorySelector=self.repository(),
        )
        return str(result["addDynamicPartition"]["__typename"])

    def launch_partition(self, asset_path: list[str], partition_key: str, run_config: Any = None) -> str:
        """What the UI's Materialize dialog sends for one key: the partition's tags, the asset's checks."""
        partition = self.gql(
            PARTITION_TAGS,
            repositoryName=REPOSITORY,
            repositoryLocationName=self.location,
            jobName=ASSET_JOB,
            partitionName=partition_key,
            assetKeys=[{"path": asset_path}],
        )["pipelineOrError"]["partition"]
        checks = self.gql(ASSET_CHECKS, assetKey={"path": asset_path})["assetNodeOrError"]["assetChecksOrError"]
        tags = [*partition["tagsOrError"]["results"], {"key": "dagster/from_ui", "value": "true"}]
        params = {
            "mode": "default",
            "executionMetadata": {"tags": tags},
            "runConfigData": run_config if run_config is not None else partition["runConfigOrError"]["yaml"],
            "selector": {
                **self.repository(),
                "pipelineName": ASSET_JOB,
                "assetSelection": [{"path": asset_path}],
                "assetCheckSelection": [
                    {"name": check["name"], "assetKey": {"path": asset_path}} for check in checks["checks"]
                ],
            },
        }
        launched = self.gql(LAUNCH, executionParams=params)["launchPipelineExecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return str(launched["run"]["runId"])

    def launch_job(self, job_name: str, run_config: dict[str, Any]) -> str:
        """The launchpad's "Launch run" for a job, with the config typed into it."""
        params = {
            "mode": "default",
            "executionMetadata": {"tags": [{"key": "dagster/from_ui", "value": "true"}]},
            "runConfigData": run_config,
            "selector": {**self.repository(), "pipelineName": job_name},
        }
        launched = self.gql(LAUNCH, executionParams=params)["launchPipelineExecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return str(launched["run"]["runId"])

    def launch_check(self, asset_path: list[str], check_name: str) -> str:
        """The Checks tab's "Execute": a run of the check alone."""
        params = {
            "mode": "default",
            "executionMetadata": {"tags": [{"key": "dagster/from_ui", "value": "true"}]},
            "runConfigData": "{}",
            "selector": {
                **self.repository(),
                "pipelineName": ASSET_JOB,
                "assetSelection": [],
                "assetCheckSelection": [{"name": check_name, "assetKey": {"path": asset_path}}],
            },
        }
        launched = self.gql(LAUNCH, executionParams=params)["launchPipelineExecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return str(launched["run"]["runId"])

    def reexecute(self, run_id: str) -> str:
        launched = self.gql(REEXECUTE, reexecutionParams={"parentRunId": run_id, "strategy": "ALL_STEPS"})
        assert launched["launchPipelineReexecution"]["__typename"] == "LaunchRunSuccess", launched
        return str(launched["launchPipelineReexecution"]["run"]["runId"])

    def backfill(self, asset_path: list[str], partition_keys: list[str] | None = None) -> str:
        params: dict[str, Any] = {
            "tags": [{"key": "dagster/from_ui", "value": "true"}],
            "assetSelection": [{"path": asset_path}],
        }
        if partition_keys is None:
            params["allPartitions"] = True
        else:
            params["partitionNames"] = partition_keys
            params["fromFailure"] = False
        launched = self.gql(BACKFILL, backfillParams=params)["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        return str(launched["backfillId"])

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.gql(RUN, runId=run_id)["runOrError"])

    def run_log(self, run_id: str) -> list[dict[str, Any]]:
        """The run's events as its page in the UI lists them: each one's type, step and message."""
        return list(self.gql(RUN_LOG, runId=run_id)["logsForRun"]["events"])

    def wait_run(self, run_id: str, timeout_s: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run["status"] in TERMINAL_RUN:
                return run
            time.sleep(0.5)
        raise TimeoutError(f"run {run_id} still {self.run(run_id)['status']}; log tail:\n{self.tail()}")

    def wait_backfill(self, backfill_id: str, timeout_s: float = 300) -> dict[str, Any]:
        """Dagster's backfill daemon looks every 30 s: a backfill takes about a minute however small (the suite's
        daemons look every few seconds: s3sync_dagster_tests/daemon_pace)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            backfill = self.gql(BACKFILL_STATUS, backfillId=backfill_id)["partitionBackfillOrError"]
            runs_done = all(run["status"] in TERMINAL_RUN for run in backfill["runs"])
            if backfill["status"] in TERMINAL_BACKFILL and runs_done:
                return dict(backfill)
            time.sleep(1)
        raise TimeoutError(f"backfill {backfill_id} not finished; log tail:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _ready(server: DagsterDev, deadline: float) -> None:
    """Up when the code location has loaded and the run queue and backfill daemons are healthy."""
    while time.monotonic() < deadline:
        for process in (server.process, *server.others):
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited ({process.returncode}):\n{server.tail()}")
        try:
            entries = server.gql(WORKSPACE)["workspaceOrError"]["locationEntries"]
            if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
                if errors:
                    raise RuntimeError(f"the code location failed to load: {errors}")
                statuses = server.gql(DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
                healthy = {status["daemonType"] for status in statuses if status["healthy"]}
                if {"BACKFILL", "QUEUED_RUN_COORDINATOR"} <= healthy:
                    return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"dagster not ready; log tail:\n{server.tail()}")


def stop_group(process: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    """The whole process group: code servers outlive a SIGTERM to `dagster dev` otherwise."""

    def alive() -> bool:
        try:
            os.killpg(process.pid, 0)
            return True
        except ProcessLookupError:
            return False

    if alive():
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.2)
    if alive():
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen[bytes]:
    """One Dagster process in its own process group (its code servers and run workers with it); logs appended."""
    return subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def code_server_serving(port: int, host: str = LOOPBACK) -> bool:
    """Whether the code server on `port` answers gRPC's health check as serving: what `dagster api
    grpc-health-check` asks, asked from this process (that command is a Python start importing Dagster, about a
    second of CPU, which a wait of a second per try spent beside the code server's own start)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            request = health_pb2.HealthCheckRequest(service="DagsterApi")
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
    except grpc.RpcError:
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def wait_serving(process: subprocess.Popen[bytes], port: int, failure: str, timeout_s: float = 180) -> None:
    """Wait for a `dagster api grpc` process to serve on `port`; RuntimeError(failure) if it exits or never does."""
    deadline = time.monotonic() + timeout_s
    while not code_server_serving(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(failure)
        time.sleep(0.5)


@contextmanager
def _serving(
    argvs: list[list[str]],
    env: dict[str, str],
    port: int,
    log: Path,
    cwd: Path = REPO,
    location: str = LOCATION_NAME,
) -> Iterator[DagsterDev]:
    """Start the processes (the first serves GraphQL on `port`), wait until they are ready, stop them all."""
    processes: list[subprocess.Popen[bytes]] = []
    client = httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=60)
    try:
        processes += [spawn(argv, env, log, cwd) for argv in argvs]
        server = DagsterDev(f"http://{LOOPBACK}:{port}", processes[0], log, client, tuple(processes[1:]), location)
        _ready(server, time.monotonic() + 180)
        # The "Join the Dagster community" dialog would cover the page in the browser test.
        server.gql("mutation SetNuxSeen { setNuxSeen }")
        yield server
    finally:
        client.close()
        for process in processes:
            stop_group(process)


# Headless Chromium as the UI tests drive it; without the network flags it keeps dialling out on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A Playwright page in Debian's Chromium, the Dagster community banner dismissed, waiting up to 60 s for what
    it is asked (on a busy 2-core machine a page can take well over Playwright's default 5 s to load)."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            yield page
        finally:
            browser.close()


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@contextmanager
def dagster_dev(home: Path, config_file: Path, log: Path, port: int | None = None) -> Iterator[DagsterDev]:
    """`dagster dev`: webserver and daemon in one command, as a developer runs them. `port`: one chosen ahead
    (free_port), for a config file that names the webserver's URL."""
    port = port or free_port()
    env = dict(os.environ, DAGSTER_HOME=str(home), S3SYNC_CONFIG=str(config_file))
    argv = [_bin("dagster"), "dev", "-w", str(REPO / "workspace.yaml"), "-h", LOOPBACK, "-p", str(port)]
    with _serving([argv], env, port, log) as server:
        yield server


@contextmanager
def dg_dev(project: Path, home: Path, log: Path, env: dict[str, str]) -> Iterator[DagsterDev]:
    """`dg dev` in a Dagster project of the user's (webserver and daemon on its code location, named after it)."""
    port = free_port()
    argv = [_bin("dg"), "dev", "--host", LOOPBACK, "--port", str(port)]
    with _serving([argv], dict(env, DAGSTER_HOME=str(home)), port, log, project, project.name) as server:
        yield server


@contextmanager
def webserver_and_daemon(
    home: Path, config_file: Path, log: Path, extra_env: dict[str, str] | None = None
) -> Iterator[DagsterDev]:
    """dagster-webserver, dagster-daemon and the project's code server as separate processes on one instance, as
    deployed (docs/deployment.md, deploy/workspace.yaml): the code server on a free port instead of 4000."""
    port, grpc_port = free_port(), free_port()
    env = dict(os.environ, DAGSTER_HOME=str(home), S3SYNC_CONFIG=str(config_file), **(extra_env or {}))
    workspace = home / "workspace.yaml"
    deployed = yaml.safe_load((REPO / "deploy" / "workspace.yaml").read_text())
    deployed["load_from"][0]["grpc_server"] |= {"host": LOOPBACK, "port": grpc_port}
    workspace.write_text(yaml.safe_dump(deployed))
    # As deployed (docs/deployment.md): the schema first, once. Two services creating the tables of a fresh
    # database at once race ("type event_logs already exists") and one of them exits.
    subprocess.run([_bin("dagster"), "instance", "migrate"], env=env, check=True, capture_output=True)
    code_server = spawn(
        [_bin("dagster"), "api", "grpc", "-h", LOOPBACK, "-p", str(grpc_port), "-m", LOCATION_NAME], env, log
    )
    try:
        wait_serving(code_server, grpc_port, f"the code server did not start; see {log}")
        webserver = [_bin("dagster-webserver"), "-w", str(workspace), "-h", LOOPBACK, "-p", str(port)]
        daemon = [_bin("dagster-daemon"), "run", "-w", str(workspace)]
        with _serving([webserver, daemon], env, port, log) as server:
            yield server
    finally:
        stop_group(code_server)  # its process group: the runs it launched with it
