"""Sections 1 and 5: one corpus through A (the engine in a plain loop), B (`s3sync sync --all`), C (a LlamaIndex peer
held to our chunk budget and precision) and, with a git revision, A0 and B0 (that commit's code on the same corpus);
where B's time goes, from its per-key timers.

Run by `python -m benchmarks.run` (sections 1, 2 and 5 share its corpus and B's instance).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks import common
from benchmarks.common import log
from benchmarks.sync import corpus, throughput
from s3sync_dagster.pipeline.embedding import default_token_budget, resolve_precision

PIPELINES = {
    "A0": "engine, plain loop, before",
    "B0": "s3sync sync --all (Dagster), before",
    "A": "engine, plain loop",
    "B": "s3sync sync --all (Dagster)",
    "C": "LlamaIndex peer, same budget and precision",
}
# C chunks to our default budget (128 of the model's tokens) and embeds at our precision,
# so B/C compares pipelines, not chunk sizes or number formats.
PEER_BUDGET = default_token_budget().max_tokens
PRECISION = resolve_precision("auto", "cpu")


def peer_available() -> bool:
    return all(
        importlib.util.find_spec(name) is not None for name in ("llama_index.core", "llama_index.vector_stores.chroma")
    )


def bulk(
    endpoint_url: str,
    workdir: Path,
    size: int,
    repeats: int,
    with_peer: bool,
    peer_repeats: int,
    before: str | None = None,
) -> dict[str, Any]:
    """A, B and C over one corpus; C held to our chunk budget and precision; with ``before`` (a git
    revision), first A and B by that commit's code on the same corpus, in this same run."""
    data = corpus.generate(size)
    bucket = f"bulk-{size}"
    s3 = common.s3_client(endpoint_url)
    started = time.perf_counter()
    common.fill_bucket(s3, bucket, data)
    log(f"{size} objects uploaded in {time.perf_counter() - started:.1f} s: {corpus.describe(data)}")
    runs: dict[str, list[dict[str, Any]]] = {"A0": [], "B0": [], "A": [], "B": [], "C": []}
    last_b: tuple[Path, Path] | None = None
    if before:
        base = workdir / f"bulk-{size}-before"
        shutil.rmtree(base, ignore_errors=True)
        config_before = common.write_config(base / "a.yaml", endpoint_url, bucket, base / "chroma-a")
        tree = common.snapshot(before, base / "tree")
        runs["A0"].append(throughput.run_engine(config_before, tree))
        log(f"A at {before} {size}: {runs['A0'][-1]['seconds']:.1f} s")
        config_before_b = common.write_config(base / "b.yaml", endpoint_url, bucket, base / "chroma-b")
        runs["B0"].append(throughput.run_dagster(config_before_b, base / "home", tree=tree))
        log(f"B at {before} {size}: {runs['B0'][-1]['seconds']:.1f} s")
    for repeat in range(repeats):
        base = workdir / f"bulk-{size}-{repeat}"
        config_a = common.write_config(base / "a.yaml", endpoint_url, bucket, base / "chroma-a")
        runs["A"].append(throughput.run_engine(config_a))
        log(f"A {size} #{repeat}: {runs['A'][-1]['seconds']:.1f} s")
        config_b = common.write_config(base / "b.yaml", endpoint_url, bucket, base / "chroma-b")
        runs["B"].append(throughput.run_dagster(config_b, base / "home"))
        last_b = (config_b, base / "home")
        log(f"B {size} #{repeat}: {runs['B'][-1]['seconds']:.1f} s in {runs['B'][-1]['runs']} run(s)")
        if with_peer and repeat < peer_repeats:
            runs["C"].append(throughput.run_peer(endpoint_url, bucket, "", base / "chroma-c", PEER_BUDGET, PRECISION))
            log(f"C {size} #{repeat}: {runs['C'][-1]['seconds']:.1f} s")
    result: dict[str, Any] = {
        "size": size, "corpus": corpus.describe(data), "runs": runs, "bucket": bucket, "before": before,
    }  # fmt: skip
    result["median"] = {name: median_run(values) for name, values in runs.items() if values}
    result["keys"] = sorted(data)
    result["last_b"] = [str(path) for path in last_b] if last_b else None
    return result


def median_run(values: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(values, key=lambda run: run["seconds"])
    middle = dict(ordered[len(ordered) // 2])
    middle["spread"] = common.spread([run["seconds"] for run in values])
    middle.update(throughput.rates(middle))
    return middle


def section_markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "## 1. Bulk sync throughput",
        "",
        "Same corpus, same model (all-MiniLM-L6-v2, CPU), each pipeline in a fresh process into its own "
        "embedded Chroma; seconds are wall time from process start to exit (imports and model load included). "
        f"A and B embed with `embedding.precision: auto`, which is {PRECISION} on this CPU (section 6), and "
        f"chunk to the default budget ({PEER_BUDGET} tokens), so every word reaches the embedding (section 7). "
        f"C is LlamaIndex held to the same: its splitters at {PEER_BUDGET} tokens of the same tokenizer, no "
        f"overlap, HuggingFaceEmbedding in {PRECISION}. A0 and B0, where shown, are A and B by the code of an "
        "earlier commit (`--bulk-before`) on the same corpus in the same run.",
        "",
        "| objects | pipeline | seconds | objects/s | chunks/s | MB/s | chunks | noise |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for result in results:
        for name, run in result["median"].items():
            label = PIPELINES[name] + (f" ({result['before']})" if name in ("A0", "B0") else "")
            lines.append(
                f"| {result['size']:,} | {name}: {label} | {run['seconds']:.1f} | {run['objects_s']:.2f} | "
                f"{run['chunks_s']:.1f} | {run['mb_s']:.3f} | {run['chunks']:,} | {run['spread']} |"
            )
    lines += [
        "",
        "| objects | B/A (goal >= 0.80) | B/C (goal >= 2.0) | A/A0 | B/B0 |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        median = result["median"]
        b_a = median["A"]["seconds"] / median["B"]["seconds"]
        b_c = f"{median['C']['seconds'] / median['B']['seconds']:.2f}" if "C" in median else "not run"
        a_a0 = (
            f"{median['A0']['seconds'] / median['A']['seconds']:.2f} "
            f"({median['A']['chunks'] / median['A0']['chunks']:.1f}x the chunks)"
            if "A0" in median
            else "not run"
        )
        b_b0 = f"{median['B0']['seconds'] / median['B']['seconds']:.2f}" if "B0" in median else "not run"
        lines.append(f"| {result['size']:,} | {b_a:.2f} | {b_c} | {a_a0} | {b_b0} |")
    corpus_line = results[-1]["corpus"]
    lines += [
        "",
        f"Corpus (seed 7, {corpus_line['objects']:,} objects): {corpus_line['bytes'] / 1e6:.1f} MB, median "
        f"{corpus_line['median_bytes']:,} B, largest {corpus_line['max_bytes']:,} B; by kind: "
        + ", ".join(f"{kind} {count}" for kind, count in corpus_line["by_kind"].items()),
    ]
    return "\n".join(lines)


def profile_markdown(result: dict[str, Any]) -> str:
    run = result["median"]["B"]
    timings = run["timings"]
    wall = run["seconds"]
    rows = [
        ("S3 reads (HEAD + GET)", timings.get("s3_head", 0) + timings.get("s3_read", 0)),
        ("extraction (text decode; documents: waiting on the converter workers)", timings.get("extract", 0)),
        ("chunking", timings.get("chunk", 0)),
        ("embedding (model; first key includes the model load)", timings.get("embed", 0)),
        ("Chroma reads and writes", timings.get("chroma_read", 0) + timings.get("chroma_write", 0)),
    ]
    measured = sum(value for _, value in rows)
    rows.append(("Dagster and process overhead (wall minus the above)", max(0.0, wall - measured)))
    lines = [
        "## 5. Where the time goes",
        "",
        f"B over {result['size']:,} objects, from the per-key timers each materialisation records (`timings_s`); "
        f"wall {wall:.1f} s.",
        "",
        "| step | seconds | share |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {value:.1f} | {value / wall * 100:.0f}% |" for name, value in rows]
    return "\n".join(lines)


def earlier_bulks(results_json: Path, endpoint_url: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Section 1 as an earlier run measured it: its buckets refilled (same seed, same bytes and ETags) in
    this run's moto, its last B config pointed at it, so section 2 goes on from B's instance and store."""
    earlier = json.loads(results_json.read_text())
    raw["bulk_measured"] = {"machine": earlier["machine"], "argv": earlier["argv"]}
    s3 = common.s3_client(endpoint_url)
    bulks = earlier["bulk"]
    for result in bulks:
        data = corpus.generate(result["size"])
        common.fill_bucket(s3, result["bucket"], data)
        result["keys"] = sorted(data)
        config_b = Path(result["last_b"][0])
        settings = yaml.safe_load(config_b.read_text())
        for source in settings["sources"]:
            source["endpoint_url"] = endpoint_url
        config_b.write_text(yaml.safe_dump(settings))
        log(f"section 1 for {result['size']} objects from {results_json}; bucket refilled")
    return bulks


def sync_ms_per_key(raw: dict[str, Any]) -> float | None:
    """What a key cost B (`s3sync sync --all`) at the largest size of section 1, measured or carried over."""
    for result in reversed(raw.get("bulk") or []):
        b_run = result.get("median", {}).get("B")
        if b_run and b_run.get("objects"):
            return float(b_run["seconds"]) / b_run["objects"] * 1000
    return None
