"""Scale: one source with many keys, and one very large text object.

Measured, against a moto server on loopback and SQLite-backed Dagster instances made with the
project's dagster.yaml:

1. `discover` of N keys on a fresh instance (listing + registration), then again (nothing new);
2. `add_dynamic_partitions` of N keys alone, on a fresh instance;
3. the `<source>_poll` sensor, invoked directly as the tests do: every tick of the first pass over
   the bucket (which registers and launches everything) and of the next pass (which must launch
   nothing);
4. the asset page's GraphQL queries against `dagster dev` over an instance holding the N partitions;
5. peak RSS of `s3sync sync SOURCE --key KEY` (the run process: `execute_in_process`) for text
   objects of growing size, so the memory bound can be given as a function of object size.

`python -m benchmarks.scale.many_keys WORKDIR [--keys N] [--big-mb MB] [--smoke]` runs it and prints the
section (and the figures as JSON into WORKDIR/scale.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import boto3
import dagster as dg
import psutil
from botocore.config import Config as BotoConfig

from benchmarks import common
from benchmarks.servers import dagster_server
from benchmarks.sync.corpus import WORDS
from s3sync_dagster.commands.demo import running
from s3sync_dagster.commands.runs import discover
from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import documents_asset_key, partitions_name, sync_op_name
from s3sync_dagster.defs.resources import S3Connection
from s3sync_dagster.defs.state import poll_state
from s3sync_dagster.pipeline.records import to_partition_key

SOURCE = "scale"
BUCKET = "s3sync-scale"
PREFIX = "in/"
MIB = 1024 * 1024
MAX_TICKS = 10_000  # a pass that never ends is a bug: stop rather than spin
# The asset overview's partition figures, besides the partitions view's own query.
PARTITION_STATS = """
query PartitionStats($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode { partitionStats { numMaterialized numMaterializing numFailed numPartitions } }
  }
}"""

T = TypeVar("T")


def _timed(action: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def object_key_at(index: int) -> str:
    # 100 folders, as a real prefix has some depth; every key is distinct and sorts by index.
    return f"{PREFIX}{index % 100:02d}/doc-{index:07d}.txt"


def fill_bucket(endpoint_url: str, count: int, threads: int = 32) -> float:
    """N tiny objects in parallel (setup, not measured); returns the seconds it took."""
    common.credentials()
    s3 = boto3.client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1", config=BotoConfig(max_pool_connections=threads)
    )
    s3.create_bucket(Bucket=BUCKET)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(
            lambda index: s3.put_object(Bucket=BUCKET, Key=object_key_at(index), Body=f"note {index}\n".encode()),
            range(count),
        ):
            pass
    return time.perf_counter() - started


@contextmanager
def dagster_instance(home: Path) -> Iterator[dg.DagsterInstance]:
    """A fresh (or existing) instance in `home`, with the project's dagster.yaml."""
    common.dagster_home(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


class MemoryS3:
    """ListObjectsV2 over N keys held in memory, paged as S3 pages (1000 keys, continuation tokens).

    moto lists and sorts the whole bucket for every page (a pass is quadratic in N there: 1 s a page
    at 5,000 keys on this machine), so the project's own costs at N keys are measured against this;
    moto is used at a smaller N for the same steps over HTTP.
    """

    def __init__(self, count: int) -> None:
        # Only the sorted keys stay in memory (about 100 MB at a million); a page's entries are made when it is
        # listed, so the memory measured is the project's, not the stand-in's.
        self._indices = sorted(range(count), key=object_key_at)
        self._modified = datetime(2026, 1, 1, tzinfo=UTC)

    def _entry(self, index: int) -> dict[str, Any]:
        return {"Key": object_key_at(index), "Size": 10, "ETag": f'"{index:032x}"', "LastModified": self._modified}

    def head_bucket(self, **_: Any) -> dict[str, Any]:
        return {}

    def list_objects_v2(
        self, Bucket: str, Prefix: str = "", MaxKeys: int = 1000, ContinuationToken: str | None = None, **_: Any
    ) -> dict[str, Any]:
        start = int(ContinuationToken or 0)
        listed = (self._entry(index) for index in self._indices[start : start + MaxKeys])
        entries = [e for e in listed if str(e["Key"]).startswith(Prefix)]
        truncated = start + MaxKeys < len(self._indices)
        page: dict[str, Any] = {"Contents": entries, "KeyCount": len(entries), "IsTruncated": truncated}
        if truncated:
            page["NextContinuationToken"] = str(start + MaxKeys)
        return page

    def get_paginator(self, name: str) -> MemoryS3:
        assert name == "list_objects_v2"
        return self

    def paginate(
        self, Bucket: str, Prefix: str = "", PaginationConfig: dict[str, int] | None = None
    ) -> Iterator[dict[str, Any]]:
        size = (PaginationConfig or {}).get("PageSize", 1000)
        token: str | None = None
        while True:
            page = self.list_objects_v2(Bucket, Prefix, size, token)
            yield page
            if not page["IsTruncated"]:
                return
            token = page["NextContinuationToken"]


@contextmanager
def listing_from(fake: MemoryS3 | None) -> Iterator[None]:
    """With a MemoryS3, discovery and the poll sensor list from it instead of the S3 endpoint."""
    if fake is None:
        yield
        return
    with (
        mock.patch("s3sync_dagster.commands.runs.runner.s3_client", lambda source: fake),
        mock.patch.object(S3Connection, "get_client", lambda self: fake),
    ):
        yield


# --- 1. discover, 2. registration alone ---------------------------------------------------------


def _discover_once(config: AppConfig, home: Path, count: int) -> dict[str, float]:
    with dagster_instance(home) as instance:
        first_s, first = _timed(lambda: discover(config, SOURCE, instance))
        again_s, again = _timed(lambda: discover(config, SOURCE, instance))
    assert first.new == count and again.new == 0 and again.registered == count, (first, again)
    return {"first_s": first_s, "again_s": again_s}


def _register_once(home: Path, count: int) -> float:
    names = [to_partition_key(object_key_at(index)) for index in range(count)]
    with dagster_instance(home) as instance:
        seconds, _ = _timed(lambda: instance.add_dynamic_partitions(partitions_name(SOURCE), names))
        assert len(instance.get_dynamic_partitions(partitions_name(SOURCE))) == count
    return seconds


# --- 3. the poll sensor --------------------------------------------------------------------------


def _completed_passes(instance: dg.DagsterInstance) -> int:
    state = poll_state(instance, SOURCE)
    try:
        return state.completed_passes
    finally:
        state.close()


def poll_pass(instance: dg.DagsterInstance, defs: dg.Definitions, sensor: dg.SensorDefinition) -> dict[str, Any]:
    """Tick until the pass ends, applying each tick's partition requests as the daemon does."""
    target = _completed_passes(instance) + 1
    ticks: list[float] = []
    register_s = 0.0
    runs = registered = run_keys = 0
    while _completed_passes(instance) < target:
        assert len(ticks) < MAX_TICKS, "the poll pass does not end"
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
            seconds, result = _timed(lambda context=context: common.sensor_tick(sensor, context))  # type: ignore[misc]
        assert isinstance(result, dg.SensorResult)
        ticks.append(seconds)
        runs += len(result.run_requests or [])
        run_keys += sum(
            len(r.run_config["ops"][sync_op_name(SOURCE)]["config"]["object_keys"]) for r in result.run_requests or []
        )
        for request in result.dynamic_partitions_requests or []:
            assert isinstance(request, dg.AddDynamicPartitionsRequest)
            names = list(request.partition_keys)
            registered += len(names)
            started = time.perf_counter()
            instance.add_dynamic_partitions(request.partitions_def_name, names)
            register_s += time.perf_counter() - started
    return {
        "ticks": len(ticks),
        "tick_s": ticks,
        "pass_s": sum(ticks),
        "runs": runs,
        "run_keys": run_keys,
        "registered": registered,
        "register_s": register_s,
    }


def _poll_once(config: AppConfig, home: Path, count: int) -> dict[str, Any]:
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def(f"{SOURCE}_poll")
    with dagster_instance(home) as instance:
        first = poll_pass(instance, defs, sensor)
        again = poll_pass(instance, defs, sensor)
    assert first["run_keys"] == count and first["registered"] == count, first
    assert again["runs"] == 0, f"an unchanged bucket launched {again['runs']} run(s)"
    return {"first": first, "again": again}


# --- 4. the asset page through the webserver -----------------------------------------------------


def _materialize_some(home: Path, count: int) -> float:
    """Record materialisations for a share of the partitions, so statuses have both kinds (setup)."""
    asset_key = documents_asset_key(SOURCE)
    started = time.perf_counter()
    with dagster_instance(home) as instance:
        # One key in 100: the statuses need both kinds, and each event is a write (~40 ms on SQLite).
        for index in range(0, count, 100):
            partition = to_partition_key(object_key_at(index))
            instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key=asset_key, partition=partition, metadata={"status": "indexed"})
            )
    return time.perf_counter() - started


def _webserver(home: Path, config_file: Path, count: int, workdir: Path) -> dict[str, Any]:
    asset = {"path": list(documents_asset_key(SOURCE).path)}
    some = [to_partition_key(object_key_at(index)) for index in range(0, min(count, 50), 10)]
    queries: dict[str, Callable[[dagster_server.DagsterDev], Any]] = {
        "partitions + statuses": lambda server: server.gql(dagster_server.PARTITIONS, assetKey=asset),
        "partition stats": lambda server: server.gql(PARTITION_STATS, assetKey=asset),
        f"latest by partition ({len(some)} keys)": lambda server: server.gql(
            dagster_server.LATEST, assetKey=asset, partitions=some
        ),
    }
    started = time.perf_counter()
    out: dict[str, Any] = {}
    with dagster_server.dagster_dev(home, config_file, workdir / "dagster-dev.log") as server:
        out["startup_s"] = time.perf_counter() - started
        for name, query in queries.items():
            cold_s, body = _timed(lambda query=query: query(server))  # type: ignore[misc]
            warm = [_timed(lambda query=query: query(server))[0] for _ in range(5)]  # type: ignore[misc]
            out[name] = {"cold_s": cold_s, "median_s": _median(warm), "runs_s": warm}
        node = server.gql(dagster_server.PARTITIONS, assetKey=asset)["assetNodeOrError"]
        statuses = node["assetPartitionStatuses"]
        assert len(node["partitionKeys"]) == count, len(node["partitionKeys"])
        out["materialized"] = len(statuses["materializedPartitions"])
        out["response_bytes"] = len(json.dumps(node))
        del body
    return out


# --- 5. one big text object ----------------------------------------------------------------------


def _write_text(path: Path, size_mb: float, seed: int = 11) -> int:
    """`size_mb` MiB of prose: paragraphs of words, one per line, each numbered so no chunk repeats."""
    rng = random.Random(seed)
    words = list(WORDS)
    paragraphs = [
        " ".join(
            " ".join(rng.choice(words) for _ in range(rng.randint(8, 16))).capitalize() + "."
            for _ in range(rng.randint(2, 6))
        )
        for _ in range(4000)
    ]
    target = int(size_mb * MIB)
    written = 0
    number = 0
    with path.open("wb") as out:
        while written < target:
            block = "".join(f"{number + i}. {rng.choice(paragraphs)}\n\n" for i in range(2000)).encode()
            block = block[: target - written]
            out.write(block)
            written += len(block)
            number += 2000
    return written


def _peak_rss(command: list[str], env: dict[str, str], time_file: Path) -> dict[str, Any]:
    """Run the command under /usr/bin/time -v (when present) and poll its process tree's RSS too."""
    gnu_time = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    wrapped = [gnu_time, "-v", "-o", str(time_file), *command] if gnu_time else command
    started = time.perf_counter()
    process = subprocess.Popen(wrapped, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tree_peak = 0
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def poll() -> None:
        nonlocal tree_peak
        root = psutil.Process(process.pid)
        while not stop.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)] if p.is_running())
            except psutil.Error:
                rss = 0
            tree_peak = max(tree_peak, rss)
            samples.append((time.perf_counter() - started, rss))
            stop.wait(0.25)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    stdout, stderr = process.communicate()
    stop.set()
    watcher.join()
    elapsed = time.perf_counter() - started
    max_rss_kb = None
    if gnu_time and time_file.exists():
        for line in time_file.read_text().splitlines():
            if "Maximum resident set size" in line:
                max_rss_kb = int(line.split(":")[1])
    return {
        "returncode": process.returncode,
        "stdout": stdout.decode(errors="replace"),
        "stderr": stderr.decode(errors="replace")[-3000:],
        "elapsed_s": elapsed,
        "peak_rss_mb": (max_rss_kb / 1024) if max_rss_kb else tree_peak / MIB,
        "peak_tree_rss_mb": tree_peak / MIB,
        "rss_samples": samples[:: max(1, len(samples) // 200)],  # at most ~200 points
    }


# `s3sync` with the model replaced by random unit vectors of its width: the same process, reading,
# chunking, metadata, vectors and Chroma writes, without hours of embedding. Memory only.
STUB_EMBEDDING_S3SYNC = """
import sys
import numpy as np
from s3sync_dagster.commands.cli import main
from s3sync_dagster.pipeline.embedding import runtimes as embed
def vectors(self, input):  # Chroma checks the parameter's name
    found = np.random.default_rng(len(input)).standard_normal((len(input), 384), dtype=np.float32)
    return list(found / np.linalg.norm(found, axis=1, keepdims=True))
embed.ChromaDefaultFunction.__call__ = vectors
sys.exit(main(sys.argv[1:]))
"""


def _big_run(endpoint_url: str, workdir: Path, home: Path, size_mb: float, stub: bool = False) -> dict[str, Any]:
    """Upload one text object of `size_mb` MiB and sync it alone in `s3sync sync` (own Chroma store)."""
    tag = f"{size_mb}mb{'-stub' if stub else ''}"
    object_key = f"{PREFIX}big/text-{tag}.txt"
    text_file = workdir / f"big-{tag}.txt"
    generate_s, size = _timed(lambda: _write_text(text_file, size_mb))
    s3 = common.s3_client(endpoint_url)
    upload_s, _ = _timed(lambda: s3.upload_file(str(text_file), BUCKET, object_key))
    text_file.unlink()
    config_file = common.write_config(
        workdir / f"s3sync-big-{tag}.yaml", endpoint_url, BUCKET, workdir / f"chroma-big-{tag}",
        source=SOURCE, prefix=PREFIX, max_object_bytes=max(size, 200 * MIB),
    )  # fmt: skip
    arguments = ["sync", SOURCE, "--key", object_key, "--config", str(config_file), "--json"]
    command = (
        [str(common.BIN / "python"), "-c", STUB_EMBEDDING_S3SYNC, *arguments]
        if stub
        else [str(common.BIN / "s3sync"), *arguments]
    )
    env = dict(os.environ, DAGSTER_HOME=str(home))
    run = _peak_rss(command, env, workdir / f"time-{tag}.txt")
    out: dict[str, Any] = {
        "stub_embedding": stub,
        "size_mb": size / MIB,
        "generate_s": generate_s,
        "upload_s": upload_s,
        "elapsed_s": run["elapsed_s"],
        "peak_rss_mb": run["peak_rss_mb"],
        "peak_tree_rss_mb": run["peak_tree_rss_mb"],
        "rss_samples": run["rss_samples"],
        "returncode": run["returncode"],
    }
    try:
        payload = json.loads(run["stdout"])
        report = payload["keys"][0]
        out.update(
            status=report.get("status"),
            chunks=report.get("chunks"),
            chunks_embedded=report.get("chunks_embedded"),
            key_duration_s=report.get("duration_s"),
            timings_s=report.get("timings_s") or {},
            run_duration_s=payload.get("duration_s"),
            message=report.get("message"),
        )
        if report.get("status") == "failed":
            out["error"] = run["stderr"][-2000:]
    except (ValueError, KeyError, IndexError):
        out["error"] = (run["stdout"][-2000:] + run["stderr"])[-3000:]
    return out


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line y = a + b x through the points (one point: through the origin)."""
    if len(points) < 2:
        x, y = points[0]
        return 0.0, y / x
    slope, intercept = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    return intercept, slope


def _big_runs(
    endpoint_url: str, workdir: Path, home: Path, big_mb: int, smoke: bool, budget_s: float
) -> dict[str, Any]:
    """Real runs at growing sizes while the time fitted so far fits the budget, then stub-embedding
    runs up to `big_mb` for memory: peak(size) = the stub line + what the model adds (real - stub)."""
    # Smoke: 0.1 MiB (about 60 chunks), so the whole smoke run stays under two minutes on a busy machine.
    ladder: list[float] = (
        [0.1] if smoke else sorted({size for size in (1, 2, 5, 10, 20, 50, 100, 200) if size < big_mb} | {big_mb})
    )
    runs: list[dict[str, Any]] = []
    skipped: list[float] = []
    spent = 0.0
    for size_mb in ladder:
        if runs:
            a, b = _fit([(r["size_mb"], r["elapsed_s"]) for r in runs])
            if spent + a + b * size_mb > budget_s:
                break  # every larger size takes longer still
        runs.append(_big_run(endpoint_url, workdir, home, size_mb))
        spent += runs[-1]["elapsed_s"]
        if runs[-1].get("status") != "indexed":
            break
    skipped = [size for size in ladder if size > max(r["size_mb"] for r in runs)]
    stub_ladder = [0.1] if smoke else sorted({size for size in (20, 50, 100, 200) if size < big_mb} | {big_mb})
    stubs = [_big_run(endpoint_url, workdir, home, size_mb, stub=True) for size_mb in stub_ladder]
    ok = [r for r in runs if r.get("status") == "indexed"]
    ok_stubs = [r for r in stubs if r.get("status") == "indexed"]
    out: dict[str, Any] = {
        "runs": runs,
        "stub_runs": stubs,
        "skipped_mb": skipped,
        "budget_s": budget_s,
        "target_mb": max(ladder),
    }
    if ok:
        out["chunks_per_mb"] = _median([r["chunks"] / r["size_mb"] for r in ok])
    if len(ok) >= 2:  # a line needs two sizes
        time_a, time_b = _fit([(r["size_mb"], r["elapsed_s"]) for r in ok])
        out["time_fit"] = {"fixed_s": time_a, "s_per_mb": time_b, "target_s": time_a + time_b * max(ladder)}
    if len(ok_stubs) >= 2 and ok:
        mem_a, mem_b = _fit([(r["size_mb"], r["peak_rss_mb"]) for r in ok_stubs])
        model_mb = _median([r["peak_rss_mb"] - (mem_a + mem_b * r["size_mb"]) for r in ok])
        out["memory_fit"] = {
            "fixed_mb": mem_a + model_mb,
            "mb_per_mb": mem_b,
            "model_mb": model_mb,
            "target_mb": mem_a + model_mb + mem_b * max(ladder),
        }
    return out


# --- the whole measurement -----------------------------------------------------------------------


def _load() -> float:
    return os.getloadavg()[0]


def _key_steps(
    config: AppConfig, poll_config: AppConfig, workdir: Path, tag: str, count: int, repeats: int
) -> dict[str, Any]:
    """Discover, registration alone and the poll sensor over `count` keys, each `repeats` times."""
    out: dict[str, Any] = {"keys": count, "load_before": _load()}
    runs = [_discover_once(config, workdir / f"home-{tag}-discover-{i}", count) for i in range(repeats)]
    out["discover"] = {
        "first_s": _median([r["first_s"] for r in runs]),
        "again_s": _median([r["again_s"] for r in runs]),
        "runs": runs,
    }
    register = [_register_once(workdir / f"home-{tag}-register-{i}", count) for i in range(repeats)]
    out["register"] = {"seconds": _median(register), "keys_per_s": count / _median(register), "runs_s": register}
    polls = [_poll_once(poll_config, workdir / f"home-{tag}-poll-{i}", count) for i in range(repeats)]
    out["poll"] = {
        "first_tick_s": _median([p["first"]["tick_s"][0] for p in polls]),
        "first_pass_s": _median([p["first"]["pass_s"] for p in polls]),
        "first_pass_ticks": polls[0]["first"]["ticks"],
        "first_pass_runs": polls[0]["first"]["runs"],
        "register_s": _median([p["first"]["register_s"] for p in polls]),
        "again_tick_s": _median([p["again"]["tick_s"][0] for p in polls]),
        "again_pass_s": _median([p["again"]["pass_s"] for p in polls]),
        "again_pass_ticks": polls[0]["again"]["ticks"],
        "runs": polls,
    }
    out["load_after"] = _load()
    return out


def measure(
    workdir: Path,
    keys: int = 100_000,
    big_object_mb: int = 200,
    smoke: bool = False,
    *,
    repeats: int = 3,
    moto_keys: int = 5_000,
    big_budget_s: float = 1800.0,
) -> dict[str, Any]:
    """Every figure of the scale section, as a dict (see `section_markdown`).

    The key steps run twice: over `keys` keys listed from memory (the project's own costs), and over
    `moto_keys` keys on the moto server (the same steps over HTTP). The big-object runs stop once
    the next size would overrun `big_budget_s` in all.
    """
    if smoke:
        keys, moto_keys, big_object_mb, repeats = min(keys, 200), min(moto_keys, 200), 1, 1
    moto_keys = min(moto_keys, keys)
    workdir = Path(workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    common.credentials()
    result: dict[str, Any] = {"keys": keys, "repeats": repeats, "smoke": smoke, "step_wall_s": {}, "load": {}}
    walls, loads = result["step_wall_s"], result["load"]

    with running() as server:
        loads["upload"] = _load()
        walls["upload"] = result["upload_s"] = fill_bucket(server.endpoint_url, moto_keys)
        # Two configs over the same source: with polling (the sensor exists) and without, so the
        # daemon of `dagster dev` has no sensor launching runs while the asset page is timed.
        plain = common.write_config(
            workdir / "s3sync.yaml", server.endpoint_url, BUCKET, workdir / "chroma", source=SOURCE, prefix=PREFIX
        )
        polled = common.write_config(
            workdir / "s3sync-poll.yaml", server.endpoint_url, BUCKET, workdir / "chroma",
            source=SOURCE, prefix=PREFIX, poll_interval_seconds=300,
        )  # fmt: skip
        config, poll_config = load_config(plain), load_config(polled)

        started = time.perf_counter()
        with listing_from(MemoryS3(keys)):
            result["memory"] = _key_steps(config, poll_config, workdir, "memory", keys, repeats)
        walls["key_steps_memory"] = time.perf_counter() - started
        started = time.perf_counter()
        result["moto"] = _key_steps(config, poll_config, workdir, "moto", moto_keys, repeats)
        walls["key_steps_moto"] = time.perf_counter() - started

        # The webserver and the big runs use an instance holding the N partitions.
        main_home = workdir / "home-memory-discover-0"
        loads["webserver"] = _load()
        walls["materialize_setup"] = result["materialize_setup_s"] = _materialize_some(main_home, keys)
        started = time.perf_counter()
        result["webserver"] = _webserver(main_home, plain, keys, workdir)
        walls["webserver"] = time.perf_counter() - started

        loads["big_object"] = _load()
        started = time.perf_counter()
        result["big"] = _big_runs(server.endpoint_url, workdir, main_home, big_object_mb, smoke, big_budget_s)
        walls["big_object"] = time.perf_counter() - started
        loads["end"] = _load()
    (workdir / "scale.json").write_text(json.dumps(result, indent=1, default=str))
    return result


# --- the report ----------------------------------------------------------------------------------


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _key_rows(steps: dict[str, Any], where: str, med: str) -> list[tuple[str, str, str]]:
    n = steps["keys"]
    disc, reg, poll = steps["discover"], steps["register"], steps["poll"]
    return [
        (f"{where}: `discover` of {n:,} keys, fresh instance (list + register)", _s(disc["first_s"]), med),
        (f"{where}: `discover` again (nothing new)", _s(disc["again_s"]), med),
        (
            f"{where}: `add_dynamic_partitions` of {n:,} keys alone",
            _s(reg["seconds"]),
            f"{reg['keys_per_s']:,.0f} keys/s, {med}",
        ),
        (f"{where}: poll sensor, first tick", _s(poll["first_tick_s"]), med),
        (
            f"{where}: poll sensor, first pass (every key new)",
            _s(poll["first_pass_s"]),
            f"{poll['first_pass_ticks']} tick(s), {poll['first_pass_runs']:,} run requests; "
            f"applying its partition requests {_s(poll['register_s'])}; {med}",
        ),
        (
            f"{where}: poll sensor, pass over the unchanged bucket",
            _s(poll["again_pass_s"]),
            f"{poll['again_pass_ticks']} tick(s), first {_s(poll['again_tick_s'])}, nothing launched; {med}",
        ),
    ]


def section_markdown(result: dict[str, Any]) -> str:
    """The "## 4. Scale" section: a table of the figures and what they say."""
    n = result["keys"]
    reps = result["repeats"]
    med = f"median of {reps}" if reps > 1 else "one run"
    memory, moto, web, big = result["memory"], result["moto"], result["webserver"], result["big"]
    rows = [
        *_key_rows(memory, "in-memory listing", med),
        (
            f"setup: upload of {moto['keys']:,} objects to moto (32 threads)",
            _s(result["upload_s"]),
            f"{moto['keys'] / result['upload_s']:,.0f} objects/s; not measured",
        ),
        *_key_rows(moto, "moto", med),
        (f"setup: `dagster dev` start-up over {n:,} partitions", _s(web["startup_s"]), "code location and daemons up"),
    ]
    for name, figures in web.items():
        if isinstance(figures, dict):
            rows.append(
                (f"GraphQL: {name}", _s(figures["median_s"]), f"median of 5 warm; first (cold) {_s(figures['cold_s'])}")
            )
    for run in big["runs"]:
        if run.get("status") == "indexed":
            steps = sorted(run["timings_s"].items(), key=lambda item: -item[1])
            timings = ", ".join(f"{step} {seconds:.1f}" for step, seconds in steps if seconds >= 0.05)
            rows.append(
                (
                    f"`s3sync sync` of one {run['size_mb']:.3g} MiB text object: peak RSS",
                    f"{run['peak_rss_mb']:,.0f} MB",
                    f"{run['chunks']:,} chunks; {_s(run['elapsed_s'])} in all, per step (s): {timings}",
                )
            )
        else:
            rows.append((f"`s3sync sync` of {run['size_mb']:.3g} MiB", "failed", str(run.get("error", ""))[:200]))
    for run in big.get("stub_runs", []):
        if run.get("status") == "indexed":
            write = run["timings_s"].get("chroma_write", 0.0)
            rows.append(
                (
                    f"same, model stubbed (random vectors), {run['size_mb']:.3g} MiB: peak RSS",
                    f"{run['peak_rss_mb']:,.0f} MB",
                    f"{run['chunks']:,} chunks; {_s(run['elapsed_s'])} in all, Chroma write {_s(write)}",
                )
            )
        else:
            rows.append((f"stubbed run of {run['size_mb']:.3g} MiB", "failed", str(run.get("error", ""))[:200]))
    loads = ", ".join(f"{step} {value:.1f}" for step, value in result["load"].items())
    lines = [
        "## 4. Scale",
        "",
        f"One source with {n:,} keys. The key steps run on SQLite-backed instances with this repo's `dagster.yaml`, "
        f"once listing {n:,} keys from memory (the project's own costs: moto lists the whole bucket for every "
        f"page, so a pass over it is quadratic) and once over HTTP against moto with {moto['keys']:,} keys; "
        "the poll sensor is invoked directly as the tests do; GraphQL goes to `dagster dev` on loopback. "
        f"Load average (1 min) at each step: {loads}.",
        "",
        "| what | time / size | notes |",
        "| --- | ---: | --- |",
        *[f"| {what} | {figure} | {notes} |" for what, figure, notes in rows],
        "",
    ]
    poll = memory["poll"]
    web_s = max(f["median_s"] for f in web.values() if isinstance(f, dict))
    lines.append(
        f"Registering {n:,} keys costs {_s(memory['register']['seconds'])} and a full `discover` "
        f"{_s(memory['discover']['first_s'])}; a poll pass over {n:,} keys takes {poll['first_pass_ticks']} tick(s) "
        f"({_s(poll['first_pass_s'])}) and a pass over the unchanged bucket launches nothing. The asset page's "
        f"slowest query answers in {_s(web_s)} warm (it carries all {n:,} partition keys, "
        f"{web['response_bytes'] / 1e6:.1f} MB)."
    )
    if "memory_fit" in big:
        fit = big["memory_fit"]
        stubbed = ", ".join(f"{r['size_mb']:.3g}" for r in big["stub_runs"] if r.get("status") == "indexed")
        lines += [
            "",
            f"Peak RSS of the run process is about {fit['fixed_mb']:,.0f} MB + {fit['mb_per_mb']:.1f} MB per MiB of "
            f"text (line through the stubbed runs at {stubbed} MiB, plus {fit['model_mb']:,.0f} MB the model adds in "
            "the real runs): the object is read, decoded, chunked, embedded and written whole, so memory is bounded "
            f"only by `max_object_bytes`: about {fit['fixed_mb'] + fit['mb_per_mb'] * 200:,.0f} MB at its default "
            "200 MiB.",
        ]
    if "time_fit" in big:
        tfit = big["time_fit"]
        done = max(r["size_mb"] for r in big["runs"] if r.get("status") == "indexed")
        lines += [
            "",
            f"Time is about {tfit['s_per_mb']:.0f} s per MiB of text here, nearly all of it embedding"
            + (
                ""
                if done >= big["target_mb"]
                else f"; the {big['target_mb']:g} MiB run with the model was not made: it would embed about "
                f"{big['chunks_per_mb'] * big['target_mb']:,.0f} chunks and take about {tfit['target_s'] / 3600:.1f} h "
                "on this machine"
            )
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--moto-keys", type=int, default=5_000)
    parser.add_argument("--budget-s", type=float, default=1800.0, help="time for all the big-object runs")
    args = parser.parse_args()
    result = measure(
        args.workdir, args.keys, args.big_mb, args.smoke,
        repeats=args.repeats, moto_keys=args.moto_keys, big_budget_s=args.budget_s,
    )  # fmt: skip
    print(section_markdown(result))


if __name__ == "__main__":
    main()
