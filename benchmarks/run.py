"""The benchmark suite: `.venv/bin/python -m benchmarks.run` (add `--smoke` for the tiny version CI runs).

Prints the ratios as it goes and writes them, with the machine and date, to benchmarks/RESULTS.md
(raw figures beside it in results.json). Figures are medians of --repeats runs measured side by side
in this one invocation; the spread says how noisy they were.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks import common
from benchmarks.latency import queues
from benchmarks.latency import upload as latency
from benchmarks.sync import corpus, fixes, incremental, throughput
from s3sync_dagster.commands.demo import start
from s3sync_dagster.pipeline.embedding import default_token_budget, resolve_precision

HERE = Path(__file__).resolve().parent
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


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


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
    result["median"] = {name: _median_run(values) for name, values in runs.items() if values}
    result["keys"] = sorted(data)
    result["last_b"] = [str(path) for path in last_b] if last_b else None
    return result


def _median_run(values: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(values, key=lambda run: run["seconds"])
    middle = dict(ordered[len(ordered) // 2])
    middle["spread"] = common.spread([run["seconds"] for run in values])
    middle.update(throughput.rates(middle))
    return middle


def bulk_markdown(results: list[dict[str, Any]]) -> str:
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


def incremental_markdown(result: dict[str, Any], bulk_seconds: float) -> str:
    after, unchanged, first = result["after_change"], result["unchanged_pass"], result["first_pass"]
    return "\n".join(
        [
            "## 2. Incremental cost",
            "",
            f"After the bulk sync of {result['objects']:,} objects: {result['changed']} changed (a line appended), "
            f"{result['deleted']} deleted. Poll sensor passes on the bulk sync's instance; its runs executed in-process.",
            "",
            "| pass | ticks | poll s | runs | keys | re-sync s |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            f"| first poll after the bulk sync (nothing recorded yet: every key checked) | {first['ticks']} | "
            f"{first['poll_s']:.2f} | {first['runs']} | {first['keys']:,} | {first['resync_s']:.1f} |",
            f"| after 1% changed + 1% deleted | {after['ticks']} | {after['poll_s']:.2f} | {after['runs']} | "
            f"{after['keys']} | {after['resync_s']:.1f} |",
            f"| unchanged bucket | {unchanged['ticks']} | {unchanged['poll_s']:.2f} | {unchanged['runs']} | "
            f"{unchanged['keys']} | {unchanged['resync_s']:.1f} |",
            "",
            f"An unchanged pass launched {unchanged['runs']} runs and cost {unchanged['poll_s']:.2f} s: "
            f"{bulk_seconds / max(unchanged['poll_s'], 1e-3):,.0f}x less than the bulk sync ({bulk_seconds:.1f} s). "
            f"The 2% change cost {after['poll_s'] + after['resync_s']:.1f} s "
            f"({(after['poll_s'] + after['resync_s']) / bulk_seconds * 100:.1f}% of the bulk sync).",
        ]
    )


def latency_markdown(results: dict[str, Any]) -> str:
    """Section 3 from latency.measure's results, one per Chroma target ('server', 'embedded')."""
    rows = []
    for chroma, result in results.items():
        rows.append(
            f"| {chroma} | {result['uploads']} | {result['median_s']:.2f} | {result['p95_s']:.2f} | "
            f"{result['max_s']:.2f} | {result['min_s']:.2f} | {result.get('taken_by_a_reading_run', 0)} | "
            f"{result.get('burst_all_queryable_s', 0):.1f} ({result.get('burst_runs', 0)} run(s)) |"
        )
    lines = [
        "## 3. Latency",
        "",
        "Upload -> queryable with `dagster-daemon` running, the SQS sensor in direct mode and default settings "
        "(`sqs_linger_seconds: 60`: the sensor's run reads the queue itself after its keys), each upload timed from "
        "PutObject's return until a read of the collection finds its chunk. Single uploads after one warm-up, in "
        "turn with the uploads below, each 8 s after the last; then a burst of uploads at once.",
        "",
        "| Chroma | uploads | p50 s | p95 s | max s | min s | taken by a run reading the queue | burst: all "
        "queryable after s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    server = results.get("server") or next(iter(results.values()))
    floor, cold = server.get("floor") or {}, server.get("cold")
    polled = server.get("poll")
    if polled:
        lines += [
            "",
            f"A poll-mode source ({server['chroma']} Chroma, `poll_interval_seconds: {polled['interval_s']}`, default "
            "settings otherwise: its run passes over the prefix itself after its keys, `poll_linger_seconds: 60`), "
            f"after the burst, on its own: {len(polled['all_s'])} single "
            "uploads after a warm-up, each made once the last was queryable (8 s after it at the soonest): right "
            "after a pass, so each waits for nearly a whole interval, the worst case. p50 "
            f"{polled['median_s']:.2f} s, p95 {polled['p95_s']:.2f} s, max {polled['max_s']:.2f} s: **at most the "
            f"interval {polled['max_over_interval_s']:+.2f} s**; {polled['taken_by_a_passing_run']} found by a run "
            f"already passing over the prefix. All: {polled['all_s']}",
        ]
    if floor:
        lines += [
            "",
            f"In the same run ({server['chroma']} Chroma): a source whose every upload is a run of its own "
            "(`sqs_linger_seconds: 0`, the first upload after a quiet minute), and the floor: the same path with an "
            "asset that does nothing (benchmarks/latency/floor.py: its own code location in the same daemon, a "
            "sensor long-polling its own queue as ours does, one partition's run per upload, queued and launched as "
            "ours). The floor's 'chunks written' is its materialisation.",
            "",
            "| | p50 s | p95 s | p50 / floor | p95 / floor |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| ours, default | {server['median_s']:.2f} | {server['p95_s']:.2f} | "
            f"{server['median_s'] / floor['median_s']:.2f}x | {server['p95_s'] / floor['p95_s']:.2f}x |",
        ]
        if cold:
            lines.append(
                f"| ours, a run per upload | {cold['median_s']:.2f} | {cold['p95_s']:.2f} | "
                f"{cold['median_s'] / floor['median_s']:.2f}x | {cold['p95_s'] / floor['p95_s']:.2f}x |"
            )
        lines.append(f"| floor | {floor['median_s']:.2f} | {floor['p95_s']:.2f} | 1.00x | 1.00x |")
        stages = (cold or {}).get("stages_median_s", {})
        floor_stages = floor.get("stages_median_s", {})
        if stages:
            lines += [
                "",
                "Where a run's upload's time goes (a run per upload): median seconds after PutObject at which it "
                "reached each stage, from its run's events.",
                "",
                "| stage | ours, a run per upload | floor |",
                "| --- | ---: | ---: |",
                *[
                    f"| {label} | {stages[name]:.2f} | "
                    + (f"{floor_stages[name]:.2f} |" if name in floor_stages else " |")
                    for name, label in latency.STAGES
                    if name in stages
                ],
                f"| (embedding, duration) | {stages.get('embed_duration', 0.0):.3f} | |",
            ]
    idle = server.get("idle")
    if idle:
        queues = idle.get("queues", {})
        per_queue = ", ".join(
            f"{queues.get(queue, queue)} {rate:.2f}/s" for queue, rate in idle["sqs_requests_per_s_by_queue"].items()
        )
        lines += [
            "",
            f"Idle, after the burst and the poll-mode uploads: {idle['seconds']:.0f} s with no upload, once the runs "
            "reading the queue or passing over the prefix had ended (after their quiet minute), the floor's sensor and "
            "the poll-mode source's (a pass every 10 s) stopped: the two SQS sources. The daemon and s3sync's code "
            "server, and every process under them: "
            f"**{idle['cpu_percent_of_one_core']:.1f}% of one core**; SQS requests per second by queue: {per_queue}.",
        ]
    lines += ["", *[f"All ({chroma}): {result['all_s']}" for chroma, result in results.items()]]
    if cold:
        lines.append(f"A run per upload, all: {cold['all_s']}")
    if floor:
        lines.append(f"Floor, all: {floor['all_s']}")
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


def _earlier_bulks(results_json: Path, endpoint_url: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
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


def inrun_markdown(result: dict[str, Any]) -> str:
    in_run, bare, changed = result["in_run"], result["bare"], result["changed"]
    return "\n".join(
        [
            "## 9. Embedding inside a run; a run of changed keys",
            "",
            f"{result['objects']} generated text and code objects synced by `s3sync sync --all` in a fresh process "
            f"({result['sync_all_s']:.1f} s): the embedding time the run's keys report against the same embedding "
            "function, in another fresh process, on the very texts the run stored (each distinct text once, in the "
            "engine's write groups). Both pay their own model load, as a run does.",
            "",
            "| | texts | embedding s | texts/s |",
            "| --- | ---: | ---: | ---: |",
            f"| inside the run | {in_run['texts']} | {in_run['embed_s']:.2f} | {in_run['texts_per_s']:.1f} |",
            f"| bare function | {bare['texts']} | {bare['seconds']:.2f} | {bare['texts_per_s']:.1f} |",
            "",
            f"In-run / bare throughput: **{result['ratio']:.2f}**.",
            "",
            f"Then {changed['keys']} neighbouring keys change and `s3sync sync --key ...` syncs them: "
            f"{changed['runs']} run, **{changed['run_start_to_last_write_s']:.1f} s from the run's start to its "
            f"last write** ({changed['command_s']:.1f} s for the whole command, process start included).",
        ]
    )


def _sync_ms_per_key(raw: dict[str, Any]) -> float | None:
    """What a key cost B (`s3sync sync --all`) at the largest size of section 1, measured or carried over."""
    for result in reversed(raw.get("bulk") or []):
        b_run = result.get("median", {}).get("B")
        if b_run and b_run.get("objects"):
            return float(b_run["seconds"]) / b_run["objects"] * 1000
    return None


# Where each section's raw figures sit in results.json (section 5 reads section 1's).
RAW_KEYS = {"1": ("bulk", "bulk_measured"), "2": ("incremental",), "3": ("latency",), "4": ("scale",),
            "5": (), "6": ("fixes",), "7": ("retrieval",), "8": (), "9": ("inrun",), "10": (), "11": (), "12": ()}  # fmt: skip
# Measured on their own, always carried over here: section 8 (drift audit, `python -m benchmarks.scale.audit
# WORKDIR`), section 10 (beyond one machine, `python -m benchmarks.scale.cluster`, which writes it) and section 11
# (the model against the CPU's peak, `python -m benchmarks.sync.flops`, its figures in results-flops.json) and
# section 12 (a million keys, `python -m benchmarks.scale.million WORKDIR`).
STANDALONE = {"8", "10", "11", "12"}
CARRIED_NOTE = "_Not measured by the invocation above: carried over from the earlier run that wrote this file"


def earlier_sections(out: Path, skip: set[str]) -> list[str]:
    """The skipped sections as the file at ``out`` has them, each with a line saying where it came from."""
    if not out.is_file():
        return []
    text = out.read_text()
    header = text.split("\n## ", 1)[0]
    measured = re.search(r"Measured (.+?) at commit (\w+)", header)
    origin = f" ({measured.group(1)}, commit {measured.group(2)})" if measured else ""
    carried = []
    for section in re.split(r"\n(?=## \d+\. )", text)[1:]:
        number = section[3:].split(".", 1)[0]
        if number in skip:
            heading, _, body = section.strip().partition("\n")
            body = body.strip()
            # Carried twice, it keeps the run that measured it; a section another module writes (section 10,
            # which dates each part) was never this file's run's to begin with: it stays as it stands.
            if not body.startswith(CARRIED_NOTE) and number not in STANDALONE:
                body = f"{CARRIED_NOTE}{origin}._\n\n{body}"
            carried.append(f"{heading}\n\n{body}")
    return carried


def _origin(text: str, number: str) -> str:
    """Which run measured section ``number`` of a RESULTS.md text: "date, commit abc1234"."""
    header = text.split("\n## ", 1)[0]
    for section in re.split(r"\n(?=## \d+\. )", text)[1:]:
        if section[3:].split(".", 1)[0] == number:
            note = re.search(re.escape(CARRIED_NOTE) + r" \((.+?)\)\._", section)
            if note:
                return note.group(1)
    measured = re.search(r"Measured (.+?) at commit (\w+)", header)
    return f"{measured.group(1)}, commit {measured.group(2)}" if measured else "an earlier run"


def carried_fixes(out: Path, parts: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Section 6's figures for the parts this run does not measure, from the results.json beside ``out``,
    and for each the run that measured it."""
    results_json = out.with_name("results.json")
    earlier = json.loads(results_json.read_text()).get("fixes", {}) if results_json.is_file() else {}
    origin = _origin(out.read_text(), "6") if out.is_file() else "an earlier run"
    figures, carried = {}, {}
    for part in fixes.PARTS:
        if part in parts:
            continue
        if part not in earlier:
            raise SystemExit(f"section 6: {results_json} has no earlier '{part}' figures to carry over: measure it")
        carried[part] = earlier[part].get("measured", origin)
        figures[part] = {**earlier[part], "measured": carried[part]}  # carried again, it still names its run
    return figures, carried


def _earlier_retrieval(out: Path) -> list[dict[str, Any]]:
    """Section 7's budget rows as the results.json beside ``out`` has them (those it carried too), each
    stamped with the run that measured it and that run's corpus; the caller keeps those not measured again."""
    results_json = out.with_name("results.json")
    earlier = json.loads(results_json.read_text()).get("retrieval") if results_json.is_file() else None
    if not earlier:
        return []
    origin = _origin(out.read_text(), "7") if out.is_file() else "an earlier run"
    corpus = {key: earlier["corpus"][key] for key in ("objects", "bytes")}
    carried = []
    for run in [*earlier.get("budgets", []), *earlier.get("carried_budgets", [])]:
        run = {key: value for key, value in run.items() if key != "hybrid"}  # hybrid: measured runs only
        carried.append({**run, "measured": run.get("measured", origin), "corpus": run.get("corpus", corpus)})
    return carried


def earlier_raw(results_json: Path, skip: set[str]) -> dict[str, Any]:
    if not results_json.is_file():
        return {}
    earlier = json.loads(results_json.read_text())
    return {key: earlier[key] for number in skip for key in RAW_KEYS.get(number, ()) if key in earlier}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: keeps the suite working (CI)")
    parser.add_argument("--sizes", default="1000,10000", help="corpus sizes (default 1000,10000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per pipeline for the smallest size")
    parser.add_argument("--peer-repeats", type=int, help="runs of the peer pipeline (default: --repeats)")
    parser.add_argument(
        "--uploads",
        type=int,
        default=30,
        help="latency: single uploads (and as many of the floor's and the run-per-upload source's), 8 s apart in turn",
    )
    parser.add_argument("--burst", type=int, default=100, help="latency: uploads in the burst")
    parser.add_argument(
        "--latency-chroma", default="server,embedded", help="latency: the Chroma targets, the first with the floor"
    )
    parser.add_argument("--idle-seconds", type=float, default=600.0, help="latency: the idle measurement's length")
    parser.add_argument("--inrun-objects", type=int, default=150, help="section 9: text objects synced")
    parser.add_argument("--scale-keys", type=int, default=100_000)
    parser.add_argument("--big-object-mb", type=int, default=200)
    parser.add_argument("--scale-repeats", type=int, default=3, help="repeats of each scale key step")
    parser.add_argument("--moto-keys", type=int, default=5_000, help="keys for the scale steps over moto")
    parser.add_argument("--big-budget-s", type=float, default=1800.0, help="time for the big-object model runs")
    parser.add_argument("--retrieval-files", type=int, default=600, help="real documentation and stdlib files")
    parser.add_argument("--retrieval-probes", type=int, default=600, help="known-item queries per budget")
    parser.add_argument(
        "--retrieval-budgets", default="none", help="chunking.max_tokens per sync, 'none' for no budget: none,256,128"
    )
    parser.add_argument("--retrieval-before", help="git revision whose engine syncs the retrieval corpus as 'before'")
    parser.add_argument(
        "--retrieval-semantic", type=int, default=160, help="semantic probes drawn (hybrid search, section 7)"
    )
    parser.add_argument(
        "--retrieval-paraphrase", type=int, help="paraphrase probes asked (hybrid search, section 7; default: all)"
    )
    parser.add_argument(
        "--retrieval-latency-chunks",
        type=int,
        default=100_000,
        help="chunks of the synthetic collection section 7 times queries on",
    )
    parser.add_argument(
        "--bulk-before", help="git revision whose engine (A0) and s3sync (B0) sync the bulk corpus as 'before'"
    )
    parser.add_argument("--skip", default="", help="sections to skip, e.g. 3,4,6")
    parser.add_argument(
        "--fixes-parts",
        default=",".join(fixes.PARTS),
        help="section 6: the parts to measure; the others are carried over from the results.json beside --out",
    )
    parser.add_argument(
        "--scale-json",
        help="section 4 from an earlier `python -m benchmarks.scale.many_keys` run's JSON instead of measuring",
    )
    parser.add_argument(
        "--bulk-json",
        help="section 1 from an earlier run's results.json (its --workdir kept) instead of measuring; "
        "sections 2 and 5 go on from it",
    )
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--workdir", help="where buckets' copies, stores and instances go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats, args.uploads, args.scale_keys, args.big_object_mb = "24", 1, 1, 200, 1
        args.burst = 3
        args.retrieval_files, args.retrieval_probes, args.retrieval_budgets = 12, 24, "none"
        args.retrieval_semantic, args.retrieval_latency_chunks, args.retrieval_paraphrase = 4, 2000, 2
    sizes = [int(size) for size in args.sizes.split(",")]
    skip = {section.strip() for section in args.skip.split(",") if section.strip()} | STANDALONE
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="s3sync-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    common.credentials()
    with_peer = peer_available()
    if not with_peer:
        log("LlamaIndex is not installed (pip install -e '.[bench]'): the peer pipeline C is skipped")
    machine = common.machine()
    sections: list[str] = []
    raw: dict[str, Any] = {"machine": machine, "argv": sys.argv[1:] if argv is None else argv}

    # Sections this invocation skips keep what an earlier run wrote to the same file, marked as such.
    carried = earlier_sections(Path(args.out), skip)
    raw.update(earlier_raw(Path(args.out).with_name("results.json"), skip))
    fixes_parts = [part.strip() for part in args.fixes_parts.split(",") if part.strip()]
    earlier_fixes, fixes_carried = ({}, {}) if "6" in skip else carried_fixes(Path(args.out), fixes_parts)
    earlier_retrieval = [] if "7" in skip else _earlier_retrieval(Path(args.out))

    def write() -> None:
        # After every section, so a long run that is stopped part-way keeps what it measured.
        header = [
            "# Benchmark results",
            "",
            f"Measured {machine['date']} at commit {machine['commit']} with "
            f"`.venv/bin/python -m benchmarks.run {' '.join(raw['argv'])}`.",
            f"Machine: {machine['cpu']}, {machine['memory']} RAM, Python {machine['python']}, {machine['os']}.",
        ]
        if "bulk_measured" in raw:
            earlier = raw["bulk_measured"]
            header.append(
                f"Section 1 (and section 5, which reads its figures) was measured on this machine by an earlier "
                f"invocation, {earlier['machine']['date']} at commit {earlier['machine']['commit']}, with "
                f"`python -m benchmarks.run {' '.join(earlier['argv'])}`; the other sections went on from its instance and stores."
            )
        ordered = sorted([*sections, *carried], key=lambda section: int(section[3:].split(".", 1)[0]))
        Path(args.out).write_text("\n\n".join(["\n".join(header), *ordered]) + "\n")
        Path(args.out).with_name("results.json").write_text(json.dumps(raw, indent=2, default=str))

    server = start()
    try:
        bulks: list[dict[str, Any]] | None = None
        if args.bulk_json:
            bulks = _earlier_bulks(Path(args.bulk_json), server.endpoint_url, raw)
        elif "1" not in skip or "2" not in skip or "5" not in skip:
            bulks = [
                bulk(
                    server.endpoint_url,
                    workdir,
                    size,
                    args.repeats if n == 0 else 1,
                    with_peer,
                    (args.peer_repeats or args.repeats) if n == 0 else 1,
                    args.bulk_before if n == 0 else None,
                )
                for n, size in enumerate(sizes)
            ]
        if bulks is not None:
            raw["bulk"] = [{k: v for k, v in result.items() if k != "keys"} for result in bulks]
            sections.append(bulk_markdown(bulks))
            write()
            for result in bulks:
                median = result["median"]
                log(
                    f"{result['size']} objects: B/A = {median['A']['seconds'] / median['B']['seconds']:.2f}"
                    + (f", B/C = {median['C']['seconds'] / median['B']['seconds']:.2f}" if "C" in median else "")
                )
            largest = bulks[-1]
            if "2" not in skip and largest["last_b"]:
                config_b, home = (Path(path) for path in largest["last_b"])
                result = incremental.measure(
                    common.s3_client(server.endpoint_url), largest["bucket"], config_b, home, largest["keys"]
                )
                raw["incremental"] = result
                sections.append(incremental_markdown(result, largest["median"]["B"]["seconds"]))
                write()
                log(f"incremental: {result}")
        if "5" not in skip and bulks is not None:
            sections.append(profile_markdown(bulks[-1]))
            write()
        if "6" not in skip:
            result = fixes.measure(
                24 if args.smoke else 1000, 4 if args.smoke else 128, 10 if args.smoke else 100, fixes_parts
            )
            for figures in result.values():
                figures["measured"] = f"{machine['date']}, commit {machine['commit']}"
            raw["fixes"] = {**earlier_fixes, **result}
            sections.append(fixes.section_markdown(raw["fixes"], _sync_ms_per_key(raw), fixes_carried))
            write()
            log(f"fixes: {result}")
        if "3" not in skip:
            from benchmarks.servers.requests_log import proxied

            latencies: dict[str, Any] = {}
            for chroma in args.latency_chroma.split(","):
                requests = workdir / f"latency-{chroma}-requests.log"
                first = not latencies  # the idle figures and the run-per-upload source: once, with the first target
                with proxied(server.endpoint_url, requests) as endpoint:
                    latencies[chroma] = latency.measure(
                        endpoint, workdir / f"latency-{chroma}", args.uploads,
                        spacing_s=1.0 if args.smoke else 8.0, burst=args.burst, chroma=chroma, cold=first,
                        idle_s=(5.0 if args.smoke else args.idle_seconds) if first else 0.0, requests_log=requests,
                        poll=first,
                    )  # fmt: skip
                (workdir / f"latency-{chroma}.json").write_text(
                    json.dumps(latencies[chroma])
                )  # kept if a later one fails
                log(
                    f"latency ({chroma}): p50 {latencies[chroma]['median_s']:.2f} s, p95 {latencies[chroma]['p95_s']:.2f} s"
                )
            raw["latency"] = latencies
            # The four-source subsection (python -m benchmarks.latency.queues) is measured apart: kept as it stands.
            sections.append(latency_markdown(latencies) + queues.earlier(Path(args.out)))
            write()
        if "4" not in skip:
            from benchmarks.scale import many_keys as scale

            if args.scale_json:
                result = json.loads(Path(args.scale_json).read_text())
                log(f"section 4 from {args.scale_json} (measured earlier by python -m benchmarks.scale.many_keys)")
            else:
                result = scale.measure(
                    workdir / "scale", args.scale_keys, args.big_object_mb, smoke=args.smoke,
                    repeats=args.scale_repeats, moto_keys=args.moto_keys, big_budget_s=args.big_budget_s,
                )  # fmt: skip
            raw["scale"] = result
            sections.append(scale.section_markdown(result))
            write()
        if "9" not in skip:
            from benchmarks.sync import inrun

            result = inrun.measure(server.endpoint_url, workdir / "inrun", 20 if args.smoke else args.inrun_objects)
            raw["inrun"] = result
            sections.append(inrun_markdown(result))
            write()
            log(f"in-run embedding: {result['ratio']:.2f}x the bare function")
        if "7" not in skip:
            from benchmarks.retrieval import chunks as retrieval

            result = retrieval.measure(
                server.endpoint_url, workdir / "retrieval", retrieval.parse_budgets(args.retrieval_budgets),
                args.retrieval_files, args.retrieval_probes,
                max_bytes=retrieval.SMOKE_MAX_BYTES if args.smoke else retrieval.MAX_BYTES,
                before=args.retrieval_before, semantic=args.retrieval_semantic,
                latency_chunks=args.retrieval_latency_chunks, paraphrase=args.retrieval_paraphrase,
            )  # fmt: skip
            # Budgets not measured again keep their earlier rows, marked with the run that measured them.
            measured = {run["label"] for run in result["budgets"]}
            result["carried_budgets"] = [run for run in earlier_retrieval if run["label"] not in measured]
            raw["retrieval"] = result
            sections.append(retrieval.section_markdown(result))
            write()
            for run in result["budgets"]:
                thirds = {third: group["recall_at_5"] for third, group in run["probes"]["by_third"].items()}
                log(f"retrieval, max_tokens {run['label']}: recall@5 by third {thirds}")
    finally:
        server.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
