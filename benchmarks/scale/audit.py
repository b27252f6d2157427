"""Drift audit at scale: N keys, N chunk records, a known drift (1% missing, 1% stale, 1% orphaned).

The bucket listing is served two ways: from memory at N keys (`scale.MemoryS3`: ListObjectsV2 pages
as S3 serves them, since moto sorts the whole bucket for every page, a pass quadratic in N), and over
HTTP by moto at a smaller N. Chroma is embedded; its records are written with tiny precomputed
embeddings (the audit never reads vectors). Each audit runs in a fresh process, so the peak RSS it
reports is its own; the figures are checked against the drift that was planted.

`python -m benchmarks.scale.audit WORKDIR [--keys N] [--moto-keys M] [--smoke]` prints the section and
writes the figures to WORKDIR/audit.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks import common
from benchmarks.scale import many_keys as scale
from s3sync_dagster.commands.demo import running
from s3sync_dagster.pipeline.audit import audit
from s3sync_dagster.pipeline.spec import SourceSpec

SOURCE = "audit"
COLLECTION = "audit-chunks"
DIMENSIONS = 8


def _kind(index: int) -> str:
    """1% of the keys are missing from the index, 1% indexed at an old ETag, the rest current."""
    return {0: "missing", 1: "stale"}.get(index % 100, "current")


def _orphan_key(index: int) -> str:
    return f"{scale.PREFIX}zz/orphan-{index:07d}.txt"


def fill_chroma(path: Path, count: int, etag_of: Any) -> float:
    """One chunk record per indexed key, plus 1% orphans; returns the seconds it took (setup)."""
    from s3sync_dagster.pipeline.store import embedded_client

    client = embedded_client(path)
    collection = client.get_or_create_collection(COLLECTION)
    records: list[tuple[str, str]] = []  # (object_key, etag)
    for index in range(count):
        kind = _kind(index)
        if kind != "missing":
            records.append((scale.object_key_at(index), "0" * 32 if kind == "stale" else etag_of(index)))
    records += [(_orphan_key(index), "f" * 32) for index in range(count // 100)]
    started = time.perf_counter()
    batch = client.get_max_batch_size()
    vectors = np.random.default_rng(7).random((batch, DIMENSIONS), dtype=np.float32)
    for start in range(0, len(records), batch):
        part = records[start : start + batch]
        collection.add(
            ids=[f"{object_key}-0" for object_key, _ in part],
            embeddings=vectors[: len(part)],
            metadatas=[
                {"object_key": object_key, "source": SOURCE, "etag": etag, "chunk_index": 0, "chunk_count": 1}
                for object_key, etag in part
            ],
        )
    return time.perf_counter() - started


def _memory_etag(index: int) -> str:
    return f"{index:032x}"  # what scale.MemoryS3 lists


def _moto_etag(index: int) -> str:
    return hashlib.md5(f"note {index}\n".encode()).hexdigest()  # scale.fill_bucket's body


def _child(options: dict[str, Any]) -> dict[str, Any]:
    """One audit in this (fresh) process: its timings, its result's counts, and the RSS it took."""
    from s3sync_dagster.pipeline.store import embedded_client

    count = options["keys"]
    s3 = common.s3_client(options["endpoint_url"]) if options["endpoint_url"] else scale.MemoryS3(count)
    client = embedded_client(options["chroma"])
    collection = client.get_collection(COLLECTION)
    target = SourceSpec(SOURCE, scale.BUCKET, COLLECTION, path_prefix=scale.PREFIX)
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    drift = audit(s3, target, [collection])
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    expected = {
        "missing": len(range(0, count, 100)),
        "stale": len(range(1, count, 100)),
        "orphaned": count // 100,
        "foreign": 0,
        "misplaced": 0,
        "lexicon": 0,  # the benchmark's store is written straight into Chroma: no lexical index of ours
        "misembedded": 0,
    }
    assert drift.counts() == expected, (drift.counts(), expected)
    return {
        "keys": count,
        "listing": "moto" if options["endpoint_url"] else "memory",
        "listed": drift.listed,
        "chunks": drift.chunks,
        "counts": drift.counts(),
        "seconds": {**drift.seconds, "total": seconds},
        "rss_before_audit_mb": before / 2**20,
        "peak_rss_mb": peak / 2**20,
    }


def _audit_in_child(chroma: Path, keys: int, endpoint_url: str | None) -> dict[str, Any]:
    options = json.dumps({"chroma": str(chroma), "keys": keys, "endpoint_url": endpoint_url})
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale.audit", "--child", options],
        check=True,
        capture_output=True,
        text=True,
        cwd=common.REPO,
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def measure(workdir: Path, keys: int = 100_000, moto_keys: int = 2_000, smoke: bool = False) -> dict[str, Any]:
    if smoke:
        keys, moto_keys = min(keys, 1_000), min(moto_keys, 200)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    result: dict[str, Any] = {"machine": common.machine(), "runs": []}
    sizes = sorted({max(keys // 5, 100), keys})
    for size in sizes:
        chroma = workdir / f"chroma-memory-{size}"
        setup = fill_chroma(chroma, size, _memory_etag)
        run = _audit_in_child(chroma, size, None)
        run["setup_chroma_s"] = setup
        result["runs"].append(run)
    if moto_keys:
        with running() as server:
            upload = scale.fill_bucket(server.endpoint_url, moto_keys)
            chroma = workdir / f"chroma-moto-{moto_keys}"
            setup = fill_chroma(chroma, moto_keys, _moto_etag)
            run = _audit_in_child(chroma, moto_keys, server.endpoint_url)
            run.update(setup_chroma_s=setup, setup_upload_s=upload)
            result["runs"].append(run)
    (workdir / "audit.json").write_text(json.dumps(result, indent=2))
    return result


def section_markdown(result: dict[str, Any]) -> str:
    rows = [
        "| listing | keys | chunks | list | Chroma reads | join | audit in all | peak RSS (before the audit) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in result["runs"]:
        s = run["seconds"]
        rows.append(
            f"| {run['listing']} | {run['keys']:,} | {run['chunks']:,} | {s['list']:.1f} s | {s['chroma']:.1f} s | "
            f"{s['join']:.2f} s | {s['total']:.1f} s | {run['peak_rss_mb']:.0f} MB ({run['rss_before_audit_mb']:.0f} MB) |"
        )
    return (
        "## Drift audit\n\n"
        "One source, one chunk per key, 1% of keys missing from the index, 1% indexed at an old ETag and 1% "
        "orphaned chunks; every audit found exactly those. Each audit ran in a fresh process (peak RSS is "
        "that process's, including Python, pandas and Chroma; the RSS before the audit is after imports, "
        "the Chroma client and, for the in-memory listing, the listing itself).\n\n" + "\n".join(rows) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("workdir", nargs="?", type=Path)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--moto-keys", type=int, default=2_000)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    if args.workdir is None:
        parser.error("WORKDIR is required")
    result = measure(args.workdir, args.keys, args.moto_keys, args.smoke)
    print(section_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
