"""Upload -> queryable: one text file at a time, with the SQS sensor and `dagster-daemon` running, the
chunks in a `chroma run` server (what a deployment would use; an embedded store is one process's)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml

from benchmarks import common
from benchmarks.latency import floor as latency_floor
from benchmarks.servers import dagster_server
from s3sync_dagster.commands.demo import LOOPBACK, free_port

WAIT_S = 300
# The poll-mode source's poll_interval_seconds: its uploads are queryable within this plus what the run adds.
POLL_INTERVAL_S = 10
FLOOR_BUCKET = "latency-floor"


@contextmanager
def chroma_server(path: Path) -> Iterator[int]:
    import chromadb

    port = free_port()
    process = subprocess.Popen(
        [str(common.BIN / "chroma"), "run", "--path", str(path), "--host", LOOPBACK, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            chromadb.HttpClient(host=LOOPBACK, port=port).heartbeat()
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("chroma run did not start") from None
            time.sleep(0.2)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


LOCATIONS = ("s3sync_dagster.definitions", "benchmarks.latency.floor")


@contextmanager
def code_servers(
    modules: tuple[str, ...], env: dict[str, str], workdir: Path
) -> Iterator[dict[str, tuple[int, subprocess.Popen[bytes]]]]:
    """A code server of each module's own (`dagster api grpc`), as a deployment runs it (deploy/k8s) and `dagster
    dev` does: the daemon does not manage it. A daemon given python_module locations starts their servers itself
    and replaces them every 60 s (Dagster's workspace refresh): a new process importing the project each minute,
    most of what an idle daemon cost (docs/auto-sync.md, "What it costs")."""
    # The instance's databases first: two servers making a fresh SQLite home at once race.
    subprocess.run([str(common.BIN / "dagster"), "instance", "migrate"], env=env, check=True, capture_output=True)
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for module in modules:
            port = free_port()
            process = subprocess.Popen(
                [str(common.BIN / "dagster"), "api", "grpc", "-h", LOOPBACK, "-p", str(port), "-m", module],
                cwd=common.REPO,
                env=env,
                stdout=(workdir / f"code-server-{module}.log").open("wb"),
                stderr=subprocess.STDOUT,
                # Its own process group, stopped whole: the runs it launched (a run still reading its queue
                # included) are its children, and would read the next measurement's queue otherwise.
                start_new_session=True,
            )
            servers[module] = (port, process)
        for module, (port, process) in servers.items():
            failure = f"the code server of {module} did not start (see its log in {workdir})"
            dagster_server.wait_serving(process, port, failure, timeout_s=120)
        yield servers
    finally:
        for _, process in servers.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in servers.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # a run worker that outlived its server's SIGTERM


def notifying_queue(endpoint_url: str, bucket: str) -> str:
    sqs = boto3.client("sqs", endpoint_url=endpoint_url, region_name="us-east-1")
    s3 = common.s3_client(endpoint_url)
    url = sqs.create_queue(QueueName=f"{bucket}-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
        },
    )
    return str(url)


STAGES = (
    ("sqs_sent", "event in SQS"),
    ("run_created", "run requested (sensor tick)"),
    ("run_starting", "run dequeued"),
    ("worker_started", "run worker started"),
    ("run_started", "run started"),
    ("step_started", "step started"),
    ("written", "chunks written"),
    ("queryable", "queryable"),
)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def summary(latencies: list[float]) -> dict[str, Any]:
    """Upload-to-queryable seconds as the results keep them: median, p95, extremes, and each one."""
    return {
        "median_s": common.median(latencies),
        "p95_s": _percentile(latencies, 0.95),
        "max_s": max(latencies),
        "min_s": min(latencies),
        "all_s": [round(value, 2) for value in latencies],
    }


def _run_stages(instance: Any, run_id: str, sent_tag: str | None = None) -> dict[str, float]:
    """Epoch seconds at which the run reached each stage (from its own events), and its materialisations."""
    import dagster as dg

    from s3sync_dagster.defs.sensors import SQS_SENT_TAG

    record = instance.get_run_record_by_id(run_id)
    stages: dict[str, float] = {"run_created": record.create_timestamp.timestamp()}
    sent = record.dagster_run.tags.get(sent_tag or SQS_SENT_TAG)
    if sent and int(sent) > 0:
        stages["sqs_sent"] = int(sent) / 1000
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type
        if kind == dg.DagsterEventType.RUN_STARTING:
            stages.setdefault("run_starting", entry.timestamp)
        elif kind == dg.DagsterEventType.ENGINE_EVENT and "pid" in (event.engine_event_data.metadata or {}):
            stages.setdefault("worker_started", entry.timestamp)
        elif kind == dg.DagsterEventType.RUN_START:
            stages.setdefault("run_started", entry.timestamp)
        elif kind == dg.DagsterEventType.STEP_START:
            stages.setdefault("step_started", entry.timestamp)
    return stages


def _written_at(instance: Any, run_id: str) -> dict[str, tuple[float, float]]:
    """object key -> (when its materialisation was logged, seconds its embedding took), for a run."""
    import dagster as dg

    written: dict[str, tuple[float, float]] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.dagster_event.step_materialization_data.materialization
        metadata = {name: getattr(value, "value", value) for name, value in materialization.metadata.items()}
        timings = metadata.get("timings_s") or {}
        written[str(metadata.get("object_key"))] = (entry.timestamp, float(timings.get("embed", 0.0)))
    return written


@dataclass
class Source:
    """One of the benchmark's sources: its bucket, queue and collection, and the uploads made to it."""

    name: str
    bucket: str
    collection: str
    linger: bool  # the default (sqs_linger_seconds, poll_linger_seconds: 60), or every upload a run of its own
    queue_url: str = ""  # SQS in direct mode; none: the prefix polled every POLL_INTERVAL_S
    uploads: list[str] = field(default_factory=list)


def _idle_costs(pids: list[int], requests_log: Path, seconds: float) -> dict[str, Any]:
    """CPU of these processes and every process under them (the daemon and its threads, the code server, run
    workers), and SQS requests by queue, over `seconds` with no upload."""
    import psutil

    def cpu_s() -> float:
        total = 0.0
        for pid in pids:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    total += times.user + times.system + times.children_user + times.children_system
        return total

    lines_before = len(requests_log.read_text(errors="replace").splitlines())
    cpu_before, started = cpu_s(), time.monotonic()
    time.sleep(seconds)
    cpu_after, elapsed = cpu_s(), time.monotonic() - started
    lines = requests_log.read_text(errors="replace").splitlines()[lines_before:]
    by_queue: dict[str, int] = {}
    for line in lines:
        if "sqs " in line:
            queue = line.split("sqs ", 1)[1].strip()
            by_queue[queue] = by_queue.get(queue, 0) + 1
    return {
        "seconds": round(elapsed, 1),
        "cpu_percent_of_one_core": round(100 * (cpu_after - cpu_before) / elapsed, 2),
        "sqs_requests_per_s_by_queue": {queue: round(count / elapsed, 3) for queue, count in sorted(by_queue.items())},
    }


def measure(
    endpoint_url: str,
    workdir: Path,
    uploads: int = 30,
    spacing_s: float = 8.0,
    burst: int = 100,
    chroma: str = "server",
    cold: bool = True,
    idle_s: float = 0.0,
    requests_log: Path | None = None,
    poll: bool = True,
) -> dict[str, Any]:
    """Single uploads `spacing_s` apart (each timed from PutObject's return to a query finding its chunk), in turn
    with the floor's and, with `cold`, a source's whose runs end with their keys (sqs_linger_seconds: 0), and with
    `poll`, a poll-mode source's (every POLL_INTERVAL_S, default settings otherwise); then a burst of uploads at
    once; then, with `idle_s`, what the daemon costs with no upload (needs `requests_log`, the moto server's request
    log, benchmarks/servers/requests_log.py)."""
    import chromadb

    common.credentials()
    s3 = common.s3_client(endpoint_url)
    sources = [Source("live", "latency", "live-chunks", linger=True)]
    if cold:
        sources.append(Source("cold", "latency-cold", "cold-chunks", linger=False))
    if poll:
        sources.append(Source("polled", "latency-polled", "polled-chunks", linger=True))
    for source in sources:
        s3.create_bucket(Bucket=source.bucket)
        if source.name != "polled":
            source.queue_url = notifying_queue(endpoint_url, source.bucket)
    sqs_sources = [source for source in sources if source.queue_url]
    # The floor (benchmarks/latency/floor.py): its own bucket and queue, its own code location in the same daemon.
    s3.create_bucket(Bucket=FLOOR_BUCKET)
    floor_queue_url = notifying_queue(endpoint_url, FLOOR_BUCKET)
    workdir.mkdir(parents=True, exist_ok=True)
    home = common.dagster_home(workdir / "home")
    with contextlib.ExitStack() as stack:
        if chroma == "server":
            port = stack.enter_context(chroma_server(workdir / "chroma-server"))
            target: dict[str, Any] = {"host": LOOPBACK, "port": port}
            client = chromadb.HttpClient(host=LOOPBACK, port=port)
        else:
            target = {"path": str(workdir / "chroma")}
            client = None  # opened once the first run has made the store
        config_file = workdir / "latency.yaml"
        config_file.write_text(
            yaml.safe_dump(
                {
                    "chroma": target,
                    "sources": [
                        {
                            "name": source.name,
                            "bucket_name": source.bucket,
                            "region": "us-east-1",
                            "collection_name": source.collection,
                            "endpoint_url": endpoint_url,
                            "aws_access_key_id": {"env": common.KEY_ID_VAR},
                            "aws_secret_access_key": {"env": common.SECRET_VAR},
                            **(
                                {"auto_sync": "direct", "sqs_queue_url": source.queue_url}
                                if source.queue_url
                                else {"poll_interval_seconds": POLL_INTERVAL_S}
                            ),
                            **({} if source.linger else {"sqs_linger_seconds": 0}),
                        }
                        for source in sources
                    ],
                }
            )
        )
        env = dict(os.environ, DAGSTER_HOME=str(home), S3SYNC_CONFIG=str(config_file))
        env |= {latency_floor.FLOOR_QUEUE_ENV: floor_queue_url, latency_floor.FLOOR_ENDPOINT_ENV: endpoint_url}
        log = workdir / "daemon.log"
        servers = stack.enter_context(code_servers(LOCATIONS, env, workdir))
        workspace = workdir / "workspace.yaml"
        workspace.write_text(
            yaml.safe_dump(
                {
                    "load_from": [
                        {"grpc_server": {"host": LOOPBACK, "port": port, "location_name": module}}
                        for module, (port, _) in servers.items()
                    ]
                }
            )
        )
        daemon = subprocess.Popen(
            [str(common.BIN / "dagster-daemon"), "run", "-w", str(workspace)],
            cwd=common.REPO,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        put_at: dict[str, float] = {}  # object key -> epoch seconds PutObject returned
        queryable_at: dict[str, float] = {}

        def store() -> Any:
            nonlocal client
            if client is None:
                client = chromadb.PersistentClient(path=str(workdir / "chroma"))
            return client

        def watch(object_keys: list[str], deadline_s: float) -> None:
            """Poll Chroma until every key has a chunk, noting when each first did."""
            deadline = time.monotonic() + deadline_s
            while len(queryable_at.keys() & set(object_keys)) < len(object_keys):
                if time.monotonic() > deadline:
                    missing = sorted(set(object_keys) - queryable_at.keys())
                    raise TimeoutError(
                        f"{len(missing)} upload(s) not queryable, {missing[:3]}...:\n{log.read_text()[-3000:]}"
                    )
                for source in sources:
                    try:
                        found = store().get_collection(source.collection).get(include=["metadatas"])["metadatas"]
                    except Exception:  # the collection (an embedded store: the store) comes with the first run
                        found = []
                    now = time.time()
                    for metadata in found or []:
                        queryable_at.setdefault(str(metadata["object_key"]), now)
                time.sleep(0.1)

        def upload(object_key: str, into: str) -> None:
            s3.put_object(Bucket=into, Key=object_key, Body=f"{object_key} reached the index\n".encode())
            put_at[object_key] = time.time()

        idle: dict[str, Any] = {}
        try:
            # A warm-up upload each: the daemon's start (code servers, first sensor ticks) is not latency.
            warmups = [f"warmup/{source.name}.txt" for source in sqs_sources]
            for source, object_key in zip(sqs_sources, warmups, strict=True):
                upload(object_key, source.bucket)
            upload("floor-warmup/file.txt", FLOOR_BUCKET)
            watch(warmups, WAIT_S)
            _floor_done(home, ["floor-warmup/file.txt"], WAIT_S)
            for source in sources:
                source.uploads = [f"single/{source.name}-{number:03d}.txt" for number in range(uploads)]
            floors = [f"floor/file-{number:03d}.txt" for number in range(uploads)]
            singles = [object_key for source in sqs_sources for object_key in source.uploads]
            rounds = len(sqs_sources) + 1
            watcher = threading.Thread(target=watch, args=(singles, WAIT_S + rounds * uploads * spacing_s), daemon=True)
            watcher.start()
            # Ours and the floor's in turn, `spacing_s` apart: each sees the same machine, daemon and queue, and the
            # runs do not overlap (a run's process start takes most of 2 cores for seconds: 4 s apart, each run
            # slowed the next and a queue built up; it measured that, not an upload's latency).
            for number in range(uploads):
                for source in sqs_sources:
                    upload(source.uploads[number], source.bucket)
                    time.sleep(spacing_s)
                upload(floors[number], FLOOR_BUCKET)
                time.sleep(spacing_s)
            watcher.join()
            floor_at = _floor_done(home, floors, WAIT_S)
            bursts = [f"burst/file-{number:03d}.txt" for number in range(burst)]
            burst_started = time.time()
            for object_key in bursts:
                upload(object_key, sources[0].bucket)
            watch(bursts, WAIT_S)
            burst_s = max(queryable_at[key] for key in bursts) - burst_started
            # A key is queryable a moment before its run records its materialisation: wait for those before the
            # daemon (and the run reading the queue) is stopped.
            _materialised(home, sources[0], bursts, WAIT_S)
            if poll:
                # The poll-mode source on its own (its run and the SQS sources' would hold both run slots, and a
                # run waiting 10 s for one makes them give theirs up): a warm-up, then single uploads.
                polled = sources[-1]
                upload("warmup/polled.txt", polled.bucket)
                watch(["warmup/polled.txt"], WAIT_S)
                for object_key in polled.uploads:
                    upload(object_key, polled.bucket)
                    watch([object_key], WAIT_S)
                    time.sleep(max(0.0, spacing_s - (queryable_at[object_key] - put_at[object_key])))
            if idle_s and requests_log is not None:
                # The floor's sensor and the poll-mode source's (a pass every 10 s is no deployment's idle) are
                # stopped, and the runs still reading have ended: what is measured is the daemon and s3sync's code
                # server with the two SQS sources.
                stops = [("floor_sqs", LOCATIONS[1])] + [("polled_poll", LOCATIONS[0])] * poll
                for sensor, location in stops:
                    stop = ["sensor", "stop", sensor, "-w", str(workspace), "-l", location]
                    subprocess.run([str(common.BIN / "dagster"), *stop], env=env, check=True, capture_output=True)
                if idle_s >= 60:  # a figure, not the smoke's few seconds: once the lingering runs have ended
                    runs_ended(home, WAIT_S)
                idle = _idle_costs([daemon.pid, servers[LOCATIONS[0]][1].pid], requests_log, idle_s)
                idle["queues"] = {
                    source.queue_url.rsplit("/", 1)[-1]: source.name for source in sources if source.queue_url
                } | {floor_queue_url.rsplit("/", 1)[-1]: "floor"}
        finally:
            common.stop_group(daemon)
    live = sources[0]
    latencies = [queryable_at[key] - put_at[key] for key in live.uploads]
    by_run = _runs_of(home, live)
    result: dict[str, Any] = {
        "chroma": chroma,
        "uploads": len(latencies),
        "spacing_s": spacing_s,
        **summary(latencies),
        # How many single uploads a run already reading the queue took; the others started a run of their own.
        "taken_by_a_reading_run": sum(1 for key in live.uploads if not by_run[key][1]),
        "burst": burst,
        "burst_all_queryable_s": burst_s,
        "burst_runs": len({by_run[key][0] for key in bursts}),
        "floor": {
            **summary([floor_at[key] - put_at[key] for key in floors]),
            "stages_median_s": _stages_of_floor(home, floors, put_at),
        },
    }
    if poll:
        polled = sources[-1]
        polled_latencies = [queryable_at[key] - put_at[key] for key in polled.uploads]
        by_run = _runs_of(home, polled)
        result["poll"] = {
            "interval_s": POLL_INTERVAL_S,
            **summary(polled_latencies),
            "max_over_interval_s": max(polled_latencies) - POLL_INTERVAL_S,
            "taken_by_a_passing_run": sum(1 for key in polled.uploads if not by_run[key][1]),
        }
    if cold:
        cold_source = sources[1]
        cold_latencies = [queryable_at[key] - put_at[key] for key in cold_source.uploads]
        result["cold"] = {
            **summary(cold_latencies),
            "stages_median_s": _stages_of_singles(home, cold_source, put_at, queryable_at),
        }
    if idle:
        result["idle"] = idle
    return result


def runs_ended(home: Path, deadline_s: float) -> None:
    """Wait until no run is queued or in progress (the runs reading a queue or passing over a prefix end after a
    quiet minute)."""
    import dagster as dg

    from s3sync_dagster.defs.sensors import IN_PROGRESS

    deadline = time.monotonic() + deadline_s
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while instance.get_runs_count(dg.RunsFilter(statuses=IN_PROGRESS)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs still in progress after {deadline_s} s")
            time.sleep(1)


def _materialised(home: Path, source: Source, object_keys: list[str], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while not set(object_keys) <= _runs_of(home, source).keys():
        if time.monotonic() > deadline:
            raise TimeoutError(f"uploads of source '{source.name}' queryable but not materialised")
        time.sleep(0.5)


def _runs_of(home: Path, source: Source) -> dict[str, tuple[str, bool]]:
    """Object key -> (the run that wrote it, whether the run was requested for it: the key in its config, not
    taken from the queue by a run reading it)."""
    import dagster as dg

    from s3sync_dagster.defs.tags import SOURCE_TAG

    taken: dict[str, tuple[str, bool]] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for record in instance.get_run_records(dg.RunsFilter(tags={SOURCE_TAG: source.name})):
            run = record.dagster_run
            ops: list[Any] = list(dict(run.run_config.get("ops") or {}).values())  # type: ignore[call-overload]
            own = set(ops[0].get("config", {}).get("object_keys", [])) if ops else set()
            for object_key in _written_at(instance, run.run_id):
                taken[object_key] = (run.run_id, object_key in own)
    return taken


def _floor_runs(instance: Any) -> dict[str, str]:
    """The floor's partition -> its latest run's id, for the runs that materialised it."""
    import dagster as dg

    done: dict[str, str] = {}
    for record in instance.fetch_materializations(dg.AssetKey("floor"), limit=10_000).records:
        if record.partition_key is not None:
            done.setdefault(record.partition_key, record.run_id)
    return done


def _floor_done(home: Path, object_keys: list[str], deadline_s: float) -> dict[str, float]:
    """Wait until the floor's asset has materialised each key; when each was, in epoch seconds."""
    import dagster as dg

    deadline = time.monotonic() + deadline_s
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while True:
            at = {
                str(record.partition_key): record.timestamp
                for record in instance.fetch_materializations(dg.AssetKey("floor"), limit=10_000).records
                if record.partition_key in object_keys
            }
            if len(at) == len(object_keys):
                return at
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(object_keys) - len(at)} floor upload(s) not materialised")
            time.sleep(0.2)


def _stages_of_floor(home: Path, object_keys: list[str], put_at: dict[str, float]) -> dict[str, float]:
    """Median seconds after PutObject at which each floor upload reached each stage ('written': materialised)."""
    offsets: dict[str, list[float]] = {name: [] for name, _ in STAGES}
    with dg_instance(home) as instance:
        runs = _floor_runs(instance)
        written = _floor_done(home, object_keys, 0)
        for object_key in object_keys:
            reached = {
                **_run_stages(instance, runs[object_key], latency_floor.SENT_TAG),
                "written": written[object_key],
            }
            for name, at in reached.items():
                offsets[name].append(at - put_at[object_key])
    return {name: round(common.median(values), 2) for name, values in offsets.items() if values}


@contextmanager
def dg_instance(home: Path) -> Iterator[Any]:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _stages_of_singles(
    home: Path, source: Source, put_at: dict[str, float], queryable_at: dict[str, float]
) -> dict[str, float]:
    """Median seconds after PutObject at which each single upload of the source reached each stage."""
    import dagster as dg

    from s3sync_dagster.defs.tags import SOURCE_TAG

    offsets: dict[str, list[float]] = {name: [] for name, _ in STAGES}
    embed: list[float] = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_run_records(dg.RunsFilter(tags={SOURCE_TAG: source.name}))
        for record in runs:
            run_id = record.dagster_run.run_id
            stages = _run_stages(instance, run_id)
            written_by_run = _written_at(instance, run_id)
            for object_key, (written, embed_s) in written_by_run.items():
                if object_key not in source.uploads:
                    continue
                start = put_at[object_key]
                reached = {**stages, "written": written, "queryable": queryable_at[object_key]}
                if len(written_by_run) > 1:
                    reached.pop("sqs_sent", None)  # the run's tag is its oldest event's: another upload's
                for name, at in reached.items():
                    offsets[name].append(at - start)
                embed.append(embed_s)
    medians = {name: round(common.median(values), 2) for name, values in offsets.items() if values}
    medians["embed_duration"] = round(common.median(embed), 3) if embed else 0.0
    return medians
