"""Before/after figures for the fixes the profile called for, measured in the same run as the rest.

1. Embedding precision: the same corpus chunks embedded in float32 (before) and with bfloat16 matrix
   products (`embedding.precision: auto` on a CPU with native bfloat16), and how far the vectors moved.
2. Chroma writes of new small objects: one upsert per object (before) against the engine's shared
   writes (`write.BATCH_CHUNKS` / `BATCH_OBJECTS`), vectors precomputed so only Chroma is timed.
3. Dagster's event log (not a fix: what it costs). A run of keys that reports a materialisation per key,
   as the project's asset does, executed on an instance with this repo's dagster.yaml (Dagster's stock
   SQLite storage on disk), on the production instance (deploy/dagster.yaml: PostgreSQL, a throw-away
   server started here) and on an in-memory instance, side by side: the difference is what writing the
   run's events costs, per event, per key and per run.
"""

import os
import tempfile
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from benchmarks import common
from benchmarks.servers import postgres_server
from benchmarks.sync import corpus
from s3sync_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG
from s3sync_dagster.pipeline.chroma import ChunkRecord, replace_chunks
from s3sync_dagster.pipeline.chunking import chunk_text
from s3sync_dagster.pipeline.embedding import LazySentenceTransformer, cpu_has_native_bf16
from s3sync_dagster.pipeline.records import chunk_id, object_id
from s3sync_dagster.pipeline.sync import BATCH_CHUNKS, BATCH_OBJECTS, batch_is_full


def _corpus_chunks(objects: int) -> list[list[str]]:
    """Chunk texts per object, from the benchmark corpus's text and code files, as the engine cuts them."""
    data = corpus.generate(objects)
    out: list[list[str]] = []
    for object_key, body in sorted(data.items()):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            continue  # documents: their text comes from docling, not what is measured here
        if "<html" in text[:200].lower():
            continue
        out.append([piece.text for piece in chunk_text(text, object_key).chunks])
    return out


def _embedding(texts: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"chunks": len(texts), "native_bf16": cpu_has_native_bf16()}
    vectors = {}
    for precision in ("float32", "bfloat16"):
        embed = LazySentenceTransformer(precision=precision)
        embed(texts[:8])  # model load and warm-up, not timed
        started = time.perf_counter()
        vectors[precision] = np.array(embed(texts))
        result[f"{precision}_ms_per_chunk"] = (time.perf_counter() - started) / len(texts) * 1000
    cosines = (vectors["float32"] * vectors["bfloat16"]).sum(axis=1)
    result["min_cosine"] = float(cosines.min())
    result["nearest_is_own"] = float(
        np.mean((vectors["bfloat16"] @ vectors["float32"].T).argmax(axis=1) == np.arange(len(texts)))
    )
    return result


def _records(objects: list[list[str]]) -> list[list[ChunkRecord]]:
    out = []
    for number, texts in enumerate(objects):
        document_id = object_id(f"fixes/{number}")
        out.append(
            [
                ChunkRecord(chunk_id(document_id, n), text, {"object_key": f"fixes/{number}", "chunk_index": n})
                for n, text in enumerate(texts)
            ]
        )
    return out


def _writes(objects: list[list[str]]) -> dict[str, Any]:
    from s3sync_dagster.pipeline.store import embedded_client

    rng = np.random.default_rng(7)
    vector_for = {text: rng.standard_normal(384).astype(np.float32) for texts in objects for text in texts}

    def embed(texts: list[str]) -> list[Any]:
        return [vector_for[text] for text in texts]

    small = [texts for texts in objects if 0 < len(texts) < BATCH_CHUNKS]
    records = _records(small)
    result: dict[str, Any] = {"objects": len(small), "chunks": sum(len(r) for r in records)}
    with tempfile.TemporaryDirectory(prefix="fixes-chroma-") as path:
        client = embedded_client(path)
        alone = client.create_collection("per-object", embedding_function=None)
        started = time.perf_counter()
        for object_records in records:
            replace_chunks(alone, object_records, {}, embed)
        result["per_object_s"] = time.perf_counter() - started
        shared = client.create_collection("shared", embedding_function=None)
        started = time.perf_counter()
        group: list[ChunkRecord] = []
        count = 0
        for object_records in records:
            group += object_records
            count += 1
            if batch_is_full(len(group), count):
                replace_chunks(shared, group, {}, embed)
                group, count = [], 0
        if group:
            replace_chunks(shared, group, {}, embed)
        result["shared_s"] = time.perf_counter() - started
        assert alone.count() == shared.count() == result["chunks"]
    return result


# An asset shaped like the project's: dynamic partitions, a range of keys per run, one materialisation
# reported per key, no output.
_EVENTS_ASSET = dg.AssetKey(["fixes", "documents"])
_EVENTS_PARTITIONS = dg.DynamicPartitionsDefinition(name="fixes_documents")


@dg.asset(key=_EVENTS_ASSET, partitions_def=_EVENTS_PARTITIONS, output_required=False)
def _documents(context: dg.AssetExecutionContext) -> Iterator[dg.Output[None]]:
    for partition_key in context.partition_keys:
        context.log_event(
            dg.AssetMaterialization(
                asset_key=_EVENTS_ASSET, partition=partition_key, metadata={"status": "written", "chunks": 3}
            )
        )
    yield from ()


def _run_of_keys(instance: dg.DagsterInstance, partition_keys: list[str]) -> tuple[float, Counter[str]]:
    """One run over `partition_keys` on `instance`: its seconds and the events it wrote, by type."""
    assert _EVENTS_PARTITIONS.name is not None
    if not instance.has_dynamic_partition(_EVENTS_PARTITIONS.name, partition_keys[0]):
        instance.add_dynamic_partitions(_EVENTS_PARTITIONS.name, partition_keys)
    started = time.perf_counter()
    result = dg.materialize(
        [_documents], instance=instance, tags={RANGE_START_TAG: partition_keys[0], RANGE_END_TAG: partition_keys[-1]}
    )
    seconds = time.perf_counter() - started
    records = instance.get_records_for_run(result.run_id, limit=100 * len(partition_keys)).records
    kinds = (record.event_log_entry.dagster_event_type for record in records)
    return seconds, Counter(kind.value if kind is not None else "log message" for kind in kinds)


def _event_log(keys_per_run: int = 100, runs: int = 5) -> dict[str, Any]:
    """One run of `keys_per_run` keys, `runs` times on each instance (alternating, after a warm-up run
    on each), timed from the call to its return."""
    partition_keys = [f"fixes/{number:05d}.txt" for number in range(keys_per_run)]
    seconds: dict[str, list[float]] = {"disk": [], "memory": [], "postgres": []}
    load_before = os.getloadavg()[0]  # disk writes and fsyncs slow down a lot on a shared machine
    with (
        tempfile.TemporaryDirectory(prefix="fixes-dagster-") as path,
        postgres_server.running() as database,
        database.exported(),
    ):
        home = common.dagster_home(Path(path) / "home")
        postgres_home = common.dagster_home(Path(path) / "postgres", settings=common.DEPLOY_SETTINGS)
        with (
            dg.DagsterInstance.from_config(str(home)) as disk,
            dg.DagsterInstance.ephemeral() as memory,
            dg.DagsterInstance.from_config(str(postgres_home)) as postgres,
        ):
            instances = {"disk": disk, "memory": memory, "postgres": postgres}
            for instance in instances.values():
                _run_of_keys(instance, partition_keys)
            for _ in range(runs):
                for name, instance in instances.items():
                    elapsed, events = _run_of_keys(instance, partition_keys)
                    seconds[name].append(elapsed)
            storage = type(disk.event_log_storage).__name__
    disk_s, memory_s = common.median(seconds["disk"]), common.median(seconds["memory"])
    postgres_s = common.median(seconds["postgres"])
    asset_events = events["ASSET_MATERIALIZATION_PLANNED"] + events["ASSET_MATERIALIZATION"]
    return {
        "keys_per_run": keys_per_run,
        "runs": runs,
        "storage": storage,
        "events_per_run": sum(events.values()),
        "asset_events_per_run": asset_events,
        "disk_s": disk_s,
        "memory_s": memory_s,
        "load_average": [load_before, os.getloadavg()[0]],
        "disk_spread": common.spread(seconds["disk"]),
        "memory_spread": common.spread(seconds["memory"]),
        # What the instance on disk adds to a run: nearly all of it the event log's writes.
        "run_ms": (disk_s - memory_s) * 1000,
        "ms_per_event": (disk_s - memory_s) / sum(events.values()) * 1000,
        "ms_per_key": (disk_s - memory_s) / keys_per_run * 1000,
        # The same on the production instance (deploy/dagster.yaml): a PostgreSQL server on loopback.
        "postgres_s": postgres_s,
        "postgres_spread": common.spread(seconds["postgres"]),
        "postgres_ms_per_event": (postgres_s - memory_s) / sum(events.values()) * 1000,
        "postgres_ms_per_key": (postgres_s - memory_s) / keys_per_run * 1000,
    }


# The figures section 6 reports; a run may measure some and carry the others over (run.py --fixes-parts).
PARTS = ("embedding", "writes", "events")


def measure(
    objects: int = 1000, embed_chunks: int = 128, keys_per_run: int = 100, parts: Collection[str] = PARTS
) -> dict[str, Any]:
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"section 6 has no part {sorted(unknown)}: its parts are {', '.join(PARTS)}")
    result: dict[str, Any] = {}
    if "embedding" in parts or "writes" in parts:
        chunked = _corpus_chunks(objects)
        if "embedding" in parts:
            result["embedding"] = _embedding([text for texts in chunked for text in texts][:embed_chunks])
        if "writes" in parts:
            result["writes"] = _writes(chunked)
    if "events" in parts:
        result["events"] = _event_log(keys_per_run)
    return result


def _by_origin(carried: Mapping[str, str]) -> dict[str, list[str]]:
    names = {"embedding": "embedding", "writes": "Chroma writes", "events": "event log"}
    grouped: dict[str, list[str]] = {}
    for part in PARTS:
        if part in carried:
            grouped.setdefault(carried[part], []).append(names[part])
    return grouped


def section_markdown(
    result: dict[str, Any], sync_ms_per_key: float | None = None, carried: Mapping[str, str] | None = None
) -> str:
    """Section 6; `sync_ms_per_key`, when known (section 1's B), gives the event log's share of a key's sync;
    `carried` names the parts an earlier run measured, each with that run ("date, commit abc1234")."""
    emb, writes, events = result["embedding"], result["writes"], result["events"]
    speedup = emb["float32_ms_per_chunk"] / emb["bfloat16_ms_per_chunk"]
    share = (
        f", {events['ms_per_key'] / sync_ms_per_key * 100:.0f}% of what a key costs B in section 1 "
        f"({sync_ms_per_key:.0f} ms per key, embedding included)"
        if sync_ms_per_key
        else ""
    )
    postgres_row, postgres_text = [], ""
    if "postgres_s" in events:  # measured since the production instance exists (deploy/dagster.yaml)
        postgres_row = [
            f"| instance on PostgreSQL (deploy/dagster.yaml, server on loopback) | {events['postgres_s']:.2f} | "
            f"{events['postgres_spread']} |"
        ]
        postgres_text = (
            f" On PostgreSQL (the production instance, Debian's server on a loopback port) the run's events cost "
            f"{events['postgres_ms_per_event']:.1f} ms per event, {events['postgres_ms_per_key']:.1f} ms per key "
            f"({events['postgres_ms_per_event'] / events['ms_per_event']:.2f}x SQLite's in this run): "
            "dagster-postgres opens a connection for every write (it pools none outside the webserver) and "
            "notifies listeners of each event, so for one run it is no cheaper per event than SQLite, even with "
            "the test server's fsync off (a remote server adds its round trips). What it buys is one instance for "
            "every host, and runs that write at once without taking turns on files."
        )
    return "\n".join(
        [
            "## 6. Fixes: before and after",
            "",
            "Measured in this run, each against its own floor (see `benchmarks/sync/fixes.py`).",
            "",
            *[
                f"_Not measured by the invocation above: the {' and '.join(parts)} figures, carried over from the "
                f"earlier run that measured them ({origin})._\n"
                for origin, parts in _by_origin(carried or {}).items()
            ],
            "| step | before | after | ratio |",
            "| --- | ---: | ---: | ---: |",
            f"| embedding, {emb['chunks']} corpus chunks: float32 -> bfloat16 matrix products (ms per chunk) | "
            f"{emb['float32_ms_per_chunk']:.1f} | {emb['bfloat16_ms_per_chunk']:.1f} | {speedup:.2f}x |",
            f"| Chroma writes of {writes['objects']:,} new objects ({writes['chunks']:,} chunks): one upsert per "
            f"object -> shared upserts of up to {BATCH_OBJECTS} objects / {BATCH_CHUNKS} chunks (s) | "
            f"{writes['per_object_s']:.1f} | {writes['shared_s']:.1f} | {writes['per_object_s'] / writes['shared_s']:.2f}x |",
            "",
            f"bfloat16 vectors against float32 ones: minimum cosine {emb['min_cosine']:.6f}; each text's nearest "
            f"float32 vector is its own for {emb['nearest_is_own'] * 100:.0f}% of them. This CPU "
            + ("has" if emb["native_bf16"] else "lacks")
            + " native bfloat16 (`avx512_bf16`/`amx_bf16`), so `embedding.precision: auto` "
            + ("uses bfloat16 here." if emb["native_bf16"] else "keeps float32 here."),
            "",
            f"What Dagster's event log costs (not a fix: `dagster.yaml` names no event log storage, so it is "
            f"Dagster's stock `{events['storage']}`). One run of {events['keys_per_run']} keys of an asset shaped "
            f"like ours (one materialisation reported per key) writes {events['events_per_run']} events, "
            f"{events['asset_events_per_run']} of them asset events (planned + materialised per key); the same run "
            f"on an instance with this repo's `dagster.yaml` and on an in-memory instance, median of "
            f"{events['runs']} each, alternating (1-minute load average {events['load_average'][0]:.1f} before, "
            f"{events['load_average'][1]:.1f} after: on a busy machine the disk's share grows several-fold):",
            "",
            f"| run of {events['keys_per_run']} keys | seconds | noise |",
            "| --- | ---: | --- |",
            f"| instance on disk (stock SQLite storage) | {events['disk_s']:.2f} | {events['disk_spread']} |",
            f"| instance in memory | {events['memory_s']:.2f} | {events['memory_spread']} |",
            *postgres_row,
            f"| on disk / in memory | {events['disk_s'] / events['memory_s']:.2f}x | |",
            "",
            f"Writing to disk costs the run {events['run_ms'] / 1000:.2f} s: {events['ms_per_event']:.1f} ms per "
            f"event, {events['ms_per_key']:.1f} ms per key{share}. Each event opens, writes and closes the "
            "run's database, and each asset event the asset index's too; with many concurrent runs a Postgres "
            f"instance is Dagster's answer.{postgres_text}",
        ]
    )
