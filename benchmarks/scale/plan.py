"""The plan before a sync at a million keys: the planning work after the listing (pipeline/audit/plan.py).

A real Dagster instance (SQLite, in WORKDIR) holds the source's partitions, registered directly in batches of
100,000 as the tests at a million keys do. The listing is generated ObjectInfo rows handed to the planner (listing
a million keys from moto is out of scope: moto sorts the whole bucket for every page, and a real listing's time is
S3's, 1,000 keys a request). The index is the frame the audit reads from Chroma (one row per key and ETag),
generated too, so the plan's own work is measured at the full size. Chroma's read of a source's documents (each
one's first chunk: plan.index_frame) is timed apart, on an embedded store of --chroma-keys chunk records, three a
document, as a rate: the plan reads it on a thread while the bucket is listed, so it adds to the time after the
listing only where it outlasts the listing.

Planted: 1% of keys new (not registered, no chunks), 1% changed (chunks at an old ETag), 0.5% registered but never
indexed (their materialisations are looked up, as a plan does for registered keys without chunks), 0.1% in
GLACIER (indexed: unchanged, archived), 0.1% over max_object_bytes (registered, unindexed: refused), 1% deleted
(chunks and a partition, not listed). The plan must find exactly those.

`python -m benchmarks.scale.plan WORKDIR [--keys N] [--chroma-keys M]` prints the figures and writes WORKDIR/plan.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks import common
from s3sync_dagster.defs.names import documents_asset_key, partitions_name
from s3sync_dagster.defs.runs import empty_at
from s3sync_dagster.pipeline.audit import index_frame, plan_source
from s3sync_dagster.pipeline.s3 import ObjectInfo
from s3sync_dagster.pipeline.spec import SourceSpec

SOURCE = "planned"
PREFIX = "plan/"
COLLECTION = "planned-chunks"
BUCKET = "bench"
MAX_OBJECT_BYTES = 1_000_000
REGISTER_BATCH = 100_000
CHUNKS_PER_KEY = 3


def _kind(index: int) -> str:
    if index % 1000 == 4:
        return "archived"
    if index % 1000 == 5:
        return "too_large"
    if index % 200 == 3:
        return "registered_only"
    return {0: "new", 1: "changed"}.get(index % 100, "unchanged")


def _key(index: int) -> str:
    return f"{PREFIX}{index // 1000:04d}/{index:07d}.txt"


def _gone_key(index: int) -> str:
    return f"{PREFIX}zz/gone-{index:07d}.txt"


def listing(keys: int) -> list[ObjectInfo]:
    """The bucket as a listing would give it."""
    rows = []
    for index in range(keys):
        kind = _kind(index)
        size = MAX_OBJECT_BYTES + 1 if kind == "too_large" else 1500 + index % 1000
        storage = "GLACIER" if kind == "archived" else "STANDARD"
        rows.append(ObjectInfo(_key(index), size, f"{index:032x}", "2026-11-27T00:00:00+00:00", storage))
    return rows


def index(keys: int) -> Any:
    """The source's chunks as audit.chunk_frame gives them: one row per key and ETag, with its chunks."""
    import pandas as pd

    object_keys: list[str] = []
    etags: list[str] = []
    for position in range(keys):
        kind = _kind(position)
        if kind in ("new", "registered_only", "too_large"):
            continue
        object_keys.append(_key(position))
        etags.append("0" * 32 if kind == "changed" else f"{position:032x}")
    for position in range(keys // 100):
        object_keys.append(_gone_key(position))
        etags.append("f" * 32)
    rows = len(object_keys)
    return pd.DataFrame(
        {
            "collection": [COLLECTION] * rows,
            "object_key": object_keys,
            "metadata_key": [""] * rows,
            "document_id": object_keys,
            "etag": etags,
            "chunk_count": [CHUNKS_PER_KEY] * rows,
            "chunks": [CHUNKS_PER_KEY] * rows,
        }
    )


def register(instance: dg.DagsterInstance, keys: int) -> tuple[int, float]:
    """Every key but the new ones, and the deleted ones, as partitions; the count and the seconds it took."""
    partition_keys = [_key(i) for i in range(keys) if _kind(i) != "new"]
    partition_keys += [_gone_key(i) for i in range(keys // 100)]
    started = time.perf_counter()
    for start in range(0, len(partition_keys), REGISTER_BATCH):
        instance.add_dynamic_partitions(partitions_name(SOURCE), partition_keys[start : start + REGISTER_BATCH])
    return len(partition_keys), time.perf_counter() - started


def expected(keys: int) -> dict[str, int]:
    kinds = [_kind(i) for i in range(keys)]
    refused = kinds.count("too_large")
    return {
        "new": kinds.count("new") + kinds.count("registered_only"),
        "changed": kinds.count("changed"),
        "relabel": 0,
        "deleted": keys // 100,
        "unchanged": kinds.count("unchanged"),  # an archived object is archived alone, as the sync reports it
        "empty": 0,
        "archived": kinds.count("archived"),
        "refused": refused,
    }


def chroma_read(workdir: Path, count: int) -> dict[str, Any]:
    """Chroma's read of a source's documents (plan.index_frame) on an embedded store of `count` records, three
    chunks a document, each stamped as a sync stamps its chunks, with tiny vectors (the read takes no vector)."""
    import numpy as np

    from s3sync_dagster.pipeline.store import embedded_client

    client = embedded_client(workdir / "chroma")
    collection = client.get_or_create_collection(COLLECTION)
    batch = client.get_max_batch_size()
    vectors = np.random.default_rng(7).random((batch, 8), dtype=np.float32)
    records = [(i // CHUNKS_PER_KEY, i % CHUNKS_PER_KEY) for i in range(count - count % CHUNKS_PER_KEY)]
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        part = records[start : start + batch]
        collection.add(
            ids=[f"{_key(i)}-{position}" for i, position in part],
            embeddings=vectors[: len(part)],
            metadatas=[
                {"object_key": _key(i), "source": SOURCE, "bucket_name": BUCKET, "etag": f"{i:032x}",
                 "document_id": _key(i), "chunk_index": position, "chunk_count": CHUNKS_PER_KEY}
                for i, position in part
            ],
        )  # fmt: skip
    fill_s = time.perf_counter() - started
    # Read twice: the first read follows the fill at once (Chroma may still be settling what it took), the second
    # is a plan's on a store at rest.
    reads = []
    for _ in range(2):
        started = time.perf_counter()
        frame = index_frame(collection, _target())
        reads.append(time.perf_counter() - started)
    return {
        "records": len(records),
        "documents": len(frame),
        "chunks": int(frame["chunks"].sum()),
        "fill_s": round(fill_s, 1),
        "first_read_s": round(reads[0], 3),
        "read_s": round(reads[1], 3),
    }


def _target() -> SourceSpec:
    return SourceSpec(SOURCE, BUCKET, COLLECTION, path_prefix=PREFIX, max_object_bytes=MAX_OBJECT_BYTES)


def measure(workdir: Path, keys: int, chroma_keys: int) -> dict[str, Any]:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    result: dict[str, Any] = {"machine": common.machine(), "keys": keys}
    target = _target()
    (workdir / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(workdir / "dagster")) as instance:
        result["registered"], result["register_s"] = register(instance, keys)
        rows, frame = listing(keys), index(keys)
        asset_key = documents_asset_key(SOURCE)
        registered_s: list[float] = []

        def registered() -> set[str]:
            started = time.perf_counter()
            found = set(instance.get_dynamic_partitions(partitions_name(SOURCE)))
            registered_s.append(time.perf_counter() - started)
            return found

        found = plan_source(
            None,
            target,
            lambda: frame,
            known_empty=lambda object_keys: empty_at(instance, asset_key, object_keys),
            registered=registered,
            listing=rows,
        )
    assert found.counts() == expected(keys), (found.counts(), expected(keys))
    result["counts"] = found.counts()
    result["seconds"] = {**found.seconds, "registered_read": round(registered_s[0], 2)}
    result["chunks_estimate"] = found.chunk_total
    if chroma_keys:
        result["chroma"] = chroma_read(workdir, chroma_keys)
    (workdir / "plan.json").write_text(json.dumps(result, indent=2))
    return result


def summary(result: dict[str, Any]) -> str:
    s = result["seconds"]
    lines = [
        f"{result['keys']:,} listed keys, {result['registered']:,} registered partitions "
        f"(registered in {result['register_s']:.1f} s); counts {result['counts']} (as planted)",
        f"the listing's frame (generated rows): {s['list']:.1f} s",
        f"the plan after the listing: {s['after_listing']:.1f} s "
        f"(of it, reading the registered partitions {s['registered_read']:.1f} s)",
    ]
    chroma = result.get("chroma")
    if chroma:
        per_second = chroma["documents"] / max(chroma["read_s"], 1e-9)
        lines.append(
            f"Chroma's read of the index: {chroma['records']:,} chunk records ({chroma['documents']:,} documents, "
            f"{chroma['chunks']:,} chunks counted) in {chroma['read_s']:.1f} s ({per_second:,.0f} documents/s; "
            f"{chroma['first_read_s']:.1f} s right after the fill, which took {chroma['fill_s']:.0f} s), on the plan's "
            "thread during the listing"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--chroma-keys", type=int, default=100_000)
    args = parser.parse_args(argv)
    print(summary(measure(args.workdir, args.keys, args.chroma_keys)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
