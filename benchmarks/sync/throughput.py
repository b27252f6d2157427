"""Bulk sync of one corpus three ways, each in a fresh process, into its own embedded Chroma:

A. our engine in a plain Python loop (no Dagster): the floor for our overhead;
B. `s3sync sync SOURCE --all`: the same work through Dagster runs recorded on an instance;
C. a peer pipeline (LlamaIndex), built from its own public API with its usual settings.

Each process is timed from its start to its exit, so imports and the model load count for all three.
`python -m benchmarks.sync.throughput engine CONFIG` is A's process; it prints its figures as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common

STEPS = ("s3_head", "chroma_read", "s3_read", "extract", "chunk", "embed", "chroma_write")


def summarise(reports: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    timings = {step: 0.0 for step in STEPS}
    for report in reports:
        for step, value in (report.get("timings_s") or report.get("timings") or {}).items():
            timings[step] = timings.get(step, 0.0) + float(value)
    statuses: dict[str, int] = {}
    for report in reports:
        statuses[report["status"]] = statuses.get(report["status"], 0) + 1
    return {
        "objects": len(reports),
        "chunks": sum(int(r.get("chunks", r.get("chunk_count", 0)) or 0) for r in reports),
        "bytes": sum(int(r.get("bytes", r.get("size_bytes", 0)) or 0) for r in reports),
        "seconds_in_process": seconds,
        "key_seconds": sum(float(r.get("duration_s", 0.0) or 0.0) for r in reports),
        "timings": timings,
        "statuses": statuses,
        # Chunks whose text the model embedded (the rest took a stored vector: the same text stored already).
        "embedded": sum(int(r.get("chunks_embedded", 0) or 0) for r in reports),
    }


def engine_main(config_file: str) -> None:
    """A: what the asset does for its keys, called directly: list, then sync_keys over everything."""
    started = time.perf_counter()
    from s3sync_dagster.config import load_config
    from s3sync_dagster.defs.resources import (
        DocumentsResource,
        chroma_outside_runs,
        embedding_resource,
        s3_connection,
    )
    from s3sync_dagster.pipeline.extraction import DocumentPool
    from s3sync_dagster.pipeline.s3 import list_objects
    from s3sync_dagster.pipeline.sync import Collections, sync_keys

    config = load_config(config_file)
    source = config.sources[0]
    s3 = s3_connection(source).get_client()
    documents = DocumentsResource(**config.documents.model_dump())
    spec = source.spec(config.embedding.spec(), documents.options())
    chroma = chroma_outside_runs(config.chroma)
    embedding = embedding_resource(config.embedding)
    object_keys = [info.object_key for info in list_objects(s3, source.bucket_name, source.path_prefix, (), ())]
    collections = Collections(lambda name: chroma.collection(name, embedding))
    pool = DocumentPool(documents.workers)
    try:
        reports = sync_keys(s3, spec, collections, embedding.embedding_function(), object_keys, pool=pool)
    finally:
        pool.close()
    summary = summarise([report.as_dict() for report in reports], time.perf_counter() - started)
    print(json.dumps(summary))


def _timed(command: list[str], env: dict[str, str], cwd: Path = common.REPO) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: some keys failed, which the figures report
        raise RuntimeError(f"{command[:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def run_engine(config_file: Path, tree: Path | None = None) -> dict[str, Any]:
    """A in a fresh process; with ``tree``, the engine of that snapshot of the repo (an earlier commit)."""
    env = dict(os.environ)
    if tree is not None:
        # `python -m` puts the working directory first on sys.path: the snapshot's package shadows ours.
        env["PYTHONPATH"] = str(tree)
    command = [sys.executable, "-m", "benchmarks.sync.throughput", "engine", str(config_file)]
    wall, out = _timed(command, env, cwd=tree or common.REPO)
    result = json.loads(out.strip().splitlines()[-1])
    result["seconds"] = wall
    return result


def run_dagster(config_file: Path, home: Path, source: str = "bench", tree: Path | None = None) -> dict[str, Any]:
    """B in a fresh process; with ``tree``, the `s3sync` of that snapshot of the repo (an earlier commit)."""
    env = dict(os.environ, DAGSTER_HOME=str(common.dagster_home(home)))
    if tree is not None:
        env["PYTHONPATH"] = str(tree)  # ahead of the installed package, for this process and its children
    command = [str(common.BIN / "s3sync"), "sync", source, "--all", "--json", "--config", str(config_file)]
    wall, out = _timed(command, env, cwd=tree or common.REPO)
    payload = json.loads(out)
    result = summarise(payload["keys"], float(payload["duration_s"]))
    result["seconds"] = wall
    result["runs"] = len(payload["runs"])
    result["run_seconds"] = sum(float(run["duration_s"]) for run in payload["runs"])
    return result


def run_peer(
    endpoint_url: str,
    bucket: str,
    prefix: str,
    chroma_path: Path,
    chunk_tokens: int | None = None,
    precision: str = "float32",
) -> dict[str, Any]:
    """C; with chunk_tokens and precision, held to our chunk budget and our embedding precision."""
    env = dict(os.environ)
    command = [
        sys.executable,
        "-m",
        "benchmarks.sync.throughput",
        "peer",
        endpoint_url,
        bucket,
        prefix,
        str(chroma_path),
    ]
    command += [str(chunk_tokens or 0), precision]
    wall, out = _timed(command, env)
    result = json.loads(out.strip().splitlines()[-1])
    result["seconds_in_process"] = result.get("seconds", wall)
    result["seconds"] = wall
    return result


def peer_main(
    endpoint_url: str, bucket: str, prefix: str, chroma_path: str, chunk_tokens: str = "0", precision: str = "float32"
) -> None:
    from benchmarks.sync.peer_llamaindex import run_peer as peer

    common.credentials()
    result = peer(
        endpoint_url, bucket, prefix, chroma_path, "peer-chunks",
        os.environ[common.KEY_ID_VAR], os.environ[common.SECRET_VAR],
        chunk_tokens=int(chunk_tokens) or None, precision=precision,
    )  # fmt: skip
    print(json.dumps(result, default=str))


def rates(result: dict[str, Any]) -> dict[str, float]:
    seconds = result["seconds"]
    return {
        "objects_s": result["objects"] / seconds,
        "chunks_s": result["chunks"] / seconds,
        "mb_s": result["bytes"] / 1e6 / seconds,
    }


if __name__ == "__main__":
    if sys.argv[1] == "engine":
        engine_main(sys.argv[2])
    elif sys.argv[1] == "peer":
        peer_main(*sys.argv[2:8])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]}")
