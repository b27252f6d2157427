"""Before/after figures for the fixes the profile called for, measured in the same run as the rest.

1. Embedding precision: the same corpus chunks embedded in float32 (before) and with bfloat16 matrix
   products (`embedding.precision: auto` on a CPU with native bfloat16), and how far the vectors moved.
2. Chroma writes of new small objects: one upsert per object (before) against the engine's shared
   writes (`sync.BATCH_CHUNKS` / `BATCH_OBJECTS`), vectors precomputed so only Chroma is timed.
3. Dagster event writes: what each key costs the instance (a planned and a materialisation event per
   partition) on Dagster's stock SQLite event log (before) and on this repo's dagster.yaml, which keeps
   the event log's connections open (`s3sync_dagster/event_log.py`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common, corpus
from s3sync_dagster.pipeline import chunk, index, keys, sync
from s3sync_dagster.pipeline.embed import LazySentenceTransformer, cpu_has_native_bf16


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
        out.append([piece.text for piece in chunk.chunk_text(text, object_key).chunks])
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


def _records(objects: list[list[str]]) -> list[list[index.ChunkRecord]]:
    out = []
    for number, texts in enumerate(objects):
        document_id = keys.object_id(f"fixes/{number}")
        out.append(
            [
                index.ChunkRecord(
                    keys.chunk_id(document_id, n), text, {"object_key": f"fixes/{number}", "chunk_index": n}
                )
                for n, text in enumerate(texts)
            ]
        )
    return out


def _writes(objects: list[list[str]]) -> dict[str, Any]:
    import chromadb

    rng = np.random.default_rng(7)
    vector_for = {text: rng.standard_normal(384).astype(np.float32) for texts in objects for text in texts}

    def embed(texts: list[str]) -> list[Any]:
        return [vector_for[text] for text in texts]

    small = [texts for texts in objects if 0 < len(texts) < sync.BATCH_CHUNKS]
    records = _records(small)
    result: dict[str, Any] = {"objects": len(small), "chunks": sum(len(r) for r in records)}
    with tempfile.TemporaryDirectory(prefix="fixes-chroma-") as path:
        client = chromadb.PersistentClient(path=path)
        alone = client.create_collection("per-object", embedding_function=None)
        started = time.perf_counter()
        for object_records in records:
            index.replace_chunks(alone, object_records, {}, embed)
        result["per_object_s"] = time.perf_counter() - started
        shared = client.create_collection("shared", embedding_function=None)
        started = time.perf_counter()
        group: list[index.ChunkRecord] = []
        count = 0
        for object_records in records:
            group += object_records
            count += 1
            if sync.batch_is_full(len(group), count):
                index.replace_chunks(shared, group, {}, embed)
                group, count = [], 0
        if group:
            index.replace_chunks(shared, group, {}, embed)
        result["shared_s"] = time.perf_counter() - started
        assert alone.count() == shared.count() == result["chunks"]
    return result


def _key_events_seconds(home: Path, keys_per_run: int, runs: int) -> float:
    """Seconds to record what `keys_per_run` partitions cost a run's event log, `runs` times over."""
    import dagster as dg
    from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent, StepMaterializationData

    asset_key = dg.AssetKey(["fixes", "documents"])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        started = time.perf_counter()
        for _ in range(runs):
            run_id = str(uuid.uuid4())
            for number in range(keys_per_run):
                partition_key = f"fixes/{number:05d}.txt"
                planned = DagsterEvent.build_asset_materialization_planned_event(
                    "job", "step", AssetMaterializationPlannedData(asset_key, partition=partition_key)
                )
                instance.report_dagster_event(planned, run_id)
                done = dg.AssetMaterialization(
                    asset_key=asset_key, partition=partition_key, metadata={"status": "written", "chunks": 3}
                )
                materialization = DagsterEvent(
                    event_type_value=dg.DagsterEventType.ASSET_MATERIALIZATION.value,
                    job_name="job",
                    step_key="step",
                    event_specific_data=StepMaterializationData(done),
                )
                instance.report_dagster_event(materialization, run_id)
        return time.perf_counter() - started


def _event_writes(keys_per_run: int = 100, runs: int = 3) -> dict[str, Any]:
    events = keys_per_run * runs * 2
    result: dict[str, Any] = {"events": events, "keys_per_run": keys_per_run, "runs": runs}
    with tempfile.TemporaryDirectory(prefix="fixes-dagster-") as path:
        stock, pooled = Path(path) / "stock", Path(path) / "pooled"
        stock.mkdir()
        (stock / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        pooled.mkdir()
        shutil.copy(common.REPO / "dagster.yaml", pooled / "dagster.yaml")
        result["stock_ms_per_event"] = _key_events_seconds(stock, keys_per_run, runs) / events * 1000
        result["pooled_ms_per_event"] = _key_events_seconds(pooled, keys_per_run, runs) / events * 1000
    return result


def measure(objects: int = 1000, embed_chunks: int = 128, keys_per_run: int = 100) -> dict[str, Any]:
    chunked = _corpus_chunks(objects)
    texts = [text for texts in chunked for text in texts][:embed_chunks]
    return {"embedding": _embedding(texts), "writes": _writes(chunked), "events": _event_writes(keys_per_run)}


def section_markdown(result: dict[str, Any]) -> str:
    emb, writes, events = result["embedding"], result["writes"], result["events"]
    speedup = emb["float32_ms_per_chunk"] / emb["bfloat16_ms_per_chunk"]
    return "\n".join(
        [
            "## 6. Fixes: before and after",
            "",
            "Measured in this run, each against its own floor (see `benchmarks/fixes.py`).",
            "",
            "| step | before | after | ratio |",
            "| --- | ---: | ---: | ---: |",
            f"| embedding, {emb['chunks']} corpus chunks: float32 -> bfloat16 matrix products (ms per chunk) | "
            f"{emb['float32_ms_per_chunk']:.1f} | {emb['bfloat16_ms_per_chunk']:.1f} | {speedup:.2f}x |",
            f"| Chroma writes of {writes['objects']:,} new objects ({writes['chunks']:,} chunks): one upsert per "
            f"object -> shared upserts of up to {sync.BATCH_OBJECTS} objects / {sync.BATCH_CHUNKS} chunks (s) | "
            f"{writes['per_object_s']:.1f} | {writes['shared_s']:.1f} | {writes['per_object_s'] / writes['shared_s']:.2f}x |",
            f"| Dagster event log, {events['events']:,} asset events ({events['runs']} runs of "
            f"{events['keys_per_run']} keys: planned + materialised per key): stock SQLite storage -> "
            f"connections kept open, `dagster.yaml` (ms per event) | {events['stock_ms_per_event']:.1f} | "
            f"{events['pooled_ms_per_event']:.1f} | {events['stock_ms_per_event'] / events['pooled_ms_per_event']:.2f}x |",
            "",
            f"bfloat16 vectors against float32 ones: minimum cosine {emb['min_cosine']:.6f}; each text's nearest "
            f"float32 vector is its own for {emb['nearest_is_own'] * 100:.0f}% of them. This CPU "
            + ("has" if emb["native_bf16"] else "lacks")
            + " native bfloat16 (`avx512_bf16`/`amx_bf16`), so `embedding.precision: auto` "
            + ("uses bfloat16 here." if emb["native_bf16"] else "keeps float32 here."),
        ]
    )
