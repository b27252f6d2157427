"""The benchmark suite's smoke version: tiny sizes, every section, so `python -m benchmarks.run` keeps
working. It measures nothing worth keeping; the real figures are in benchmarks/RESULTS.md.

The smoke runs that take minutes (every section of `benchmarks.run`, the precision, cluster and million-key
benchmarks) carry the `benchmarks` mark: `./scripts/test --benchmarks` runs them (about 12 minutes), the suite
leaves them out. The suite keeps what checks the harness in seconds: each section rendered from the figures the
last real run committed, the quick benchmarks' smoke runs, and the carried-section rules."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from benchmarks.latency import report as latency_report
from benchmarks.run import CARRIED_NOTE, carried_fixes, earlier_raw, earlier_sections, main
from benchmarks.scale import many_keys
from benchmarks.sync import bulk, fixes, incremental, inrun

# Every section's smoke run, in two invocations of `benchmarks.run` (each skips the other's sections) with a budget
# each: all in one took 10 min on a quiet 2-core machine and over 15 with two CPU-bound processes beside it. Section 6
# goes with section 1, whose figures it reads.
SMOKE_HALVES = {"bulk": ("1", "2", "5", "6", "9"), "live": ("3", "4", "7")}
HEADINGS = {
    "1": "## 1. Bulk sync throughput",
    "2": "## 2. Incremental cost",
    "3": "## 3. Latency",
    "4": "## 4. Scale",
    "5": "## 5. Where the time goes",
    "6": "## 6. Fixes: before and after",
    "7": "## 7. Retrieval quality",
    "9": "## 9. Embedding inside a run; a run of changed keys",
}


def smoke_run(tmp_path: Path, half: str, *argv: str) -> tuple[str, dict[str, Any]]:
    """`python -m benchmarks.run --smoke` of one half's sections: the RESULTS.md it wrote and its results.json."""
    skipped = ",".join(sorted(set(HEADINGS) - set(SMOKE_HALVES[half])))
    out, workdir = tmp_path / "RESULTS.md", tmp_path / "work"
    assert main(["--smoke", *argv, "--skip", skipped, "--out", str(out), "--workdir", str(workdir)]) == 0
    text = out.read_text()
    for number, heading in HEADINGS.items():
        assert (heading in text) == (number in SMOKE_HALVES[half]), heading  # its sections, nothing carried
    return text, json.loads((tmp_path / "results.json").read_text())


def test_the_smoke_halves_write_every_section_between_them() -> None:
    assert sorted(number for half in SMOKE_HALVES.values() for number in half) == sorted(HEADINGS)


@pytest.mark.benchmarks
@pytest.mark.timeout(900)  # 4 min on a quiet 2-core machine; 8 with two CPU-bound processes beside the suite
def test_benchmark_smoke_run_writes_the_bulk_sections(tmp_path: Path) -> None:
    # A0 and B0: the engine and the command of a commit (here the checked-out one), from its own snapshot.
    text, raw = smoke_run(tmp_path, "bulk", "--bulk-before", "HEAD")
    bulk = raw["bulk"][0]["median"]
    # Every pipeline indexed the whole corpus (24 objects, each kind at least once).
    assert bulk["A"]["objects"] == bulk["B"]["objects"] == 24
    assert bulk["A"]["chunks"] == bulk["B"]["chunks"] > 24
    assert bulk["B"]["statuses"] == {"indexed": 24}
    assert bulk["A0"]["statuses"] == {"indexed": 24} and bulk["A0"]["chunks"] > 24
    # B0: that commit's `s3sync sync --all`, on its own instance and store; B/B0 is the issue's ratio.
    assert bulk["B0"]["statuses"] == {"indexed": 24} and bulk["B0"]["chunks"] == bulk["B"]["chunks"]
    assert "| B/B0 |" in text
    if "C" in bulk:  # the peer, held to our chunk budget and precision, indexed every object too
        assert bulk["C"]["settings"]["chunk_tokens"] == 128 and bulk["C"]["chunks"] >= 24
    incremental = raw["incremental"]
    assert incremental["unchanged_pass"]["runs"] == 0
    assert incremental["after_change"]["keys"] == incremental["changed"] + incremental["deleted"]
    assert raw["inrun"]["in_run"]["texts"] == raw["inrun"]["bare"]["texts"] > 0
    assert raw["inrun"]["changed"]["runs"] == 1
    # The before/after measurements wrote the same chunks both ways and compared real vectors.
    fixes = raw["fixes"]
    assert fixes["writes"]["chunks"] > fixes["writes"]["objects"] > 0
    assert fixes["embedding"]["min_cosine"] > 0.999
    # The event log's cost: a real run of keys on the project's instance (stock storage) and in memory.
    events = fixes["events"]
    assert events["storage"] == "SqliteEventLogStorage"
    assert events["asset_events_per_run"] == 2 * events["keys_per_run"] > 0
    assert events["events_per_run"] > events["asset_events_per_run"]
    assert events["disk_s"] > 0 and events["memory_s"] > 0 and events["postgres_s"] > 0
    # Section 6 sets the event log's cost beside what a key cost B in section 1 of the same run.
    assert "of what a key costs B in section 1" in text


@pytest.mark.benchmarks
@pytest.mark.timeout(900)  # 5 min on a quiet 2-core machine; 9 with two CPU-bound processes beside the suite
def test_benchmark_smoke_run_writes_the_live_sections(tmp_path: Path) -> None:
    text, raw = smoke_run(tmp_path, "live")
    latencies = raw["latency"]
    assert set(latencies) == {"server", "embedded"}
    for result in latencies.values():
        assert result["uploads"] == 1 and result["burst"] == 3 and result["median_s"] > 0
        # The single upload came after the warm-up's run had read its keys: that run, reading the queue, took it.
        assert result["taken_by_a_reading_run"] == 1
    server = latencies["server"]
    cold = server["cold"]["stages_median_s"]
    assert cold["queryable"] > cold["run_created"]  # a run per upload: every stage of its run
    # The floor: a run of an asset that does nothing, through the same daemon, measured beside ours.
    floor = server["floor"]
    assert floor["median_s"] > 0 and floor["stages_median_s"]["written"] >= floor["stages_median_s"]["run_created"]
    assert "| ours, a run per upload |" in text
    # The idle figures: the daemon and the code server measured, each queue's requests counted through the proxy
    idle = server["idle"]
    assert idle["cpu_percent_of_one_core"] > 0
    # (the floor's sensor is stopped for it: what is measured is the daemon and s3sync's code server)
    assert "live" in {idle["queues"][queue] for queue in idle["sqs_requests_per_s_by_queue"]}
    # Real documentation and stdlib files went through the engine; every probe was asked and scored.
    retrieval = raw["retrieval"]
    corpus = retrieval["corpus"]
    assert corpus["sampled"] == 12 and set(corpus["by_kind"]) == {"html", "py"}
    # The modules of the semantic probes that the sample lacked were added to it.
    assert corpus["objects"] == 12 + len(corpus["added_for_semantic"])
    run = retrieval["budgets"][0]
    assert run["budget"] is None and run["sync"]["statuses"] == {"indexed": corpus["objects"]}
    # Every indexed character lies inside the model's window: no chunk is cut short by the embedding.
    assert run["chunks"] > 12 and run["share_chars_inside_window"] == 1 and run["chunks_over_window"] == 0
    assert run["chunks_per_mb"] > 0
    probes = run["probes"]
    assert probes["n"] == sum(group["n"] for group in probes["by_third"].values()) > 0
    for group in [probes, *probes["by_third"].values(), *probes["by_kind"].values()]:
        for rank in ("recall_at_1", "recall_at_5"):
            assert group[rank] is None or 0 <= group[rank] <= 1
    assert probes["recall_at_1"] <= probes["recall_at_5"]
    # Hybrid search: every mode and fusion variant scored on both probe sets, one of them the winner;
    # latency per mode on the synced collection and the synthetic one; the full-text index's write cost.
    hybrid = run["hybrid"]
    semantic = hybrid["semantic"]
    assert (
        hybrid["known_n"] == probes["n"] and semantic["kept"] + sum(semantic["left_out"].values()) == semantic["asked"]
    )
    assert hybrid["winner"] in {row["label"] for row in hybrid["variants"]} and any(
        row["default"] for row in hybrid["variants"]
    )
    paraphrase = hybrid["paraphrase"]
    assert paraphrase["asked"] == 2 and paraphrase["kept"] + paraphrase["left_out"]["anchor_not_found"] == 2
    assert any(row["label"].startswith("both sides scored") for row in hybrid["variants"])
    for figures in [*hybrid["modes"].values(), *(row["sets"] for row in hybrid["variants"])]:
        assert figures["known"]["n"] == probes["n"] and figures["semantic"]["n"] == semantic["kept"]
        assert figures["paraphrase"]["n"] == paraphrase["kept"]
        for group in (figures["known"], figures["semantic"], figures["paraphrase"]):
            assert group["recall_at_1"] is None or 0 <= group["recall_at_1"] <= group["recall_at_5"] <= 1
            assert group["recall_at_5"] is None or group["recall_at_5"] <= group["recall_at_10"] <= 1
            assert group["mrr_at_10"] is None or group["recall_at_1"] <= group["mrr_at_10"] <= group["recall_at_10"]
    for latency in (hybrid["latency"], hybrid["latency_large"]):
        assert {"dense", "lexical", "hybrid (default)"} <= set(latency["modes"])
        assert all(mode["p50_ms"] > 0 for mode in latency["modes"].values())
    assert hybrid["latency_large"]["chunks"] == 2000 and hybrid["latency_large"]["dimension"] == 384
    readers = hybrid["latency_large"]["readers"]  # the same searches as a reader of one chunk in ten (issue 52)
    assert readers["share"] == 0.1 and {"dense", "lexical", "hybrid (default)"} == set(readers["modes"])
    assert all(mode["p50_ms"] > 0 for mode in readers["modes"].values())
    wall = hybrid["command_wall"]  # `s3sync query` beside a bare `import chromadb`, each in a fresh process
    assert wall["s3sync query"]["runs"] == wall["s3sync query, resident"]["runs"] == wall["import chromadb"]["runs"] > 0
    assert wall["s3sync query"]["p50_s"] > wall["import chromadb"]["p50_s"] > 0
    fts = hybrid["fts"]
    assert fts["fts_rows"]["on"] == fts["chunks"] == run["chunks"] and fts["on_s"] > 0 and fts["off_s"] > 0
    assert 0 < fts["store"]["fts_bytes"] < fts["store"]["sqlite_bytes"]


# Each area's section, rendered from the raw figures of the last real run (benchmarks/results.json). Section 7's
# renderer reads figures added after that run: the smoke run renders it.
RENDERED = {
    "1": lambda raw: bulk.section_markdown(raw["bulk"]),
    "2": lambda raw: incremental.section_markdown(raw["incremental"], raw["bulk"][-1]["median"]["B"]["seconds"]),
    "3": lambda raw: latency_report.section_markdown(raw["latency"]),
    "4": lambda raw: many_keys.section_markdown(raw["scale"]),
    "5": lambda raw: bulk.profile_markdown(raw["bulk"][-1]),
    "6": lambda raw: fixes.section_markdown(raw["fixes"], bulk.sync_ms_per_key(raw), {}),
    "9": lambda raw: inrun.section_markdown(raw["inrun"]),
}


@pytest.mark.parametrize("number", sorted(RENDERED))
def test_each_area_renders_its_section_from_the_committed_figures(number: str) -> None:
    raw = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results.json").read_text())
    text = RENDERED[number](raw)
    assert text.startswith(HEADINGS[number] + "\n") and "| --- |" in text


def test_sections_a_run_skips_keep_the_earlier_figures_and_say_so(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    out.write_text(
        "# Benchmark results\n\nMeasured 2026-01-02 03:04 UTC at commit abc1234 with `...`.\n\n"
        "## 1. Bulk sync throughput\n\nbulk table\n\n## 3. Latency\n\nlatency table\n"
    )
    (tmp_path / "results.json").write_text(json.dumps({"bulk": [1], "latency": {"median_s": 9}}))
    carried = earlier_sections(out, {"3", "4"})
    assert carried == [f"## 3. Latency\n\n{CARRIED_NOTE} (2026-01-02 03:04 UTC, commit abc1234)._\n\nlatency table"]
    assert earlier_raw(tmp_path / "results.json", {"3", "4"}) == {"latency": {"median_s": 9}}
    # Carried again by a later run, it still names the run that measured it.
    out.write_text("# Benchmark results\n\nMeasured 2026-02-03 at commit def5678 with `...`.\n\n" + carried[0])
    assert earlier_sections(out, {"3"}) == carried


def test_audit_benchmark_smoke_finds_the_planted_drift(tmp_path: Path) -> None:
    from benchmarks.scale import audit as audit_benchmark

    # Each size's audit runs in a child process that asserts it found exactly the planted drift.
    result = audit_benchmark.measure(tmp_path / "audit", keys=500, moto_keys=0)
    assert [run["counts"] for run in result["runs"]] == [
        {"missing": 1, "stale": 1, "orphaned": 1, "foreign": 0, "misplaced": 0, "lexicon": 0, "misembedded": 0},
        {"missing": 5, "stale": 5, "orphaned": 5, "foreign": 0, "misplaced": 0, "lexicon": 0, "misembedded": 0},
    ]
    assert "## Drift audit" in audit_benchmark.section_markdown(result)


def test_flops_benchmark_counts_by_hand_and_renders_its_section() -> None:
    # No model runs here: the FLOP formula and the ONNX path's padding by hand, the section from the
    # figures the last real run committed (`python -m benchmarks.sync.flops`).
    from benchmarks.sync import flops

    shape = flops.ModelShape.bundled()
    assert (shape.layers, shape.hidden, shape.intermediate) == (6, 384, 1536)
    assert shape.sequence_flops(128) == 6 * (2 * 128 * (4 * 384 * 384 + 2 * 384 * 1536) + 2 * 2 * 128 * 128 * 384)
    # onnx_minilm's batches: texts sorted by characters, 16 a batch, each padded to its longest.
    lengths = list(range(20, 0, -1))
    assert flops._onnx_batches(["x" * n for n in lengths], lengths) == [(16, 16), (4, 20)]
    figures = json.loads(flops.JSON_FILE.read_text())
    section = flops.section_markdown(figures)
    assert section.startswith("## 11. Embedding against the CPU's peak (issue 27)\n")
    for label, _runtime, _precision in flops.PATHS:
        assert f"\n| {label} |" in section


def test_the_fusion_tables_rank_as_the_engine_a_quoted_chunk_first() -> None:
    # benchmarks/retrieval/hybrid.py ranks stored candidate lists again for each fusion variant: a chunk holding the query
    # word for word comes first there as in search (fuse_scored), though both sides put another chunk first.
    from benchmarks.retrieval import hybrid
    from s3sync_dagster.pipeline.search import query as search

    rows = [("near", 0.1, 9.0, 1, 1), ("quoted", 0.4, 3.0, 2, 2)]
    assert hybrid.ranked(hybrid.Candidates(rows, 1.0), "hybrid", search.FUSION)[0] == "near"
    assert hybrid.ranked(hybrid.Candidates(rows, 1.0, ("quoted",)), "hybrid", search.FUSION)[0] == "quoted"
    assert json.loads(json.dumps(asdict(hybrid.Candidates(rows, 1.0, ("quoted",)))))["quoted"] == ["quoted"]


def test_writers_benchmark_smoke_measures_both_arms() -> None:
    from benchmarks.sync import writers

    result = writers.measure(keys=4, rounds=2)  # it asserts every sync indexed (or skipped) every key
    assert sorted(result["per_key_s"]) == ["changed", "new", "unchanged"]
    assert all(len(arm) == 2 for arms in result["per_key_s"].values() for arm in arms.values())
    # The check runs after each write, never after a sync that wrote nothing.
    assert min(result["settle_ms"]["new"]) > 0 and result["settle_ms"]["unchanged"] == [0.0, 0.0]
    lines: list[str] = []
    writers.report(result, lines.append)
    assert len(lines) == 6 and lines[3].startswith("| new |")


def test_benchmarks_import_no_tests() -> None:
    # Tests may use the benchmarks' harness (the reliability table, dagster_server); never the other way round.
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    offenders = [
        path.name
        for path in benchmarks.glob("*.py")
        for line in path.read_text().splitlines()
        if line.lstrip().startswith(("import s3sync_dagster_tests", "from s3sync_dagster_tests"))
    ]
    assert offenders == []


def test_section_6_can_measure_some_parts_and_carry_the_others(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    out.write_text(
        "# Benchmark results\n\nMeasured 2026-02-03 04:05 UTC at commit def5678 with `...`.\n\n"
        f"## 6. Fixes: before and after\n\n{CARRIED_NOTE} (2026-01-02 03:04 UTC, commit abc1234)._\n\ntable\n"
    )
    embedding = {"chunks": 8, "float32_ms_per_chunk": 2.0, "bfloat16_ms_per_chunk": 1.0, "min_cosine": 1.0}
    embedding |= {"nearest_is_own": 1.0, "native_bf16": True}
    writes = {"objects": 2, "chunks": 4, "per_object_s": 2.0, "shared_s": 1.0, "measured": "2026-03-04, commit 0a1b2c3"}
    (tmp_path / "results.json").write_text(json.dumps({"fixes": {"embedding": embedding, "writes": writes}}))

    figures, carried = carried_fixes(out, ["events"])
    # Each part names the run that measured it: its own stamp, else the run section 6 says it came from.
    assert carried == {"embedding": "2026-01-02 03:04 UTC, commit abc1234", "writes": "2026-03-04, commit 0a1b2c3"}
    assert figures == {
        part: {**values, "measured": carried[part]} for part, values in (("embedding", embedding), ("writes", writes))
    }
    with pytest.raises(SystemExit, match="no earlier 'events' figures"):
        carried_fixes(out, ["embedding"])
    with pytest.raises(ValueError, match="no part"):
        fixes.measure(parts=["event"])


@pytest.mark.benchmarks
def test_cluster_bulk_part_measures_and_writes_section_10_once(tmp_path: Path) -> None:
    from benchmarks.scale import cluster

    figures = {"bulk": cluster.bulk(tmp_path / "work", sizes=(12,))}
    # The reads part: at each size in turn, each way finds an object's 17 chunks (reads() checks it).
    figures["reads"] = cluster.reads(tmp_path / "reads", sizes=(10, 30), probes=5)
    assert [row["chunks"] for row in figures["reads"]["runs"]] == [170, 510]
    run = figures["bulk"]["runs"][0]
    assert run["objects"] == 12 and run["statuses"] == {"indexed": 12} and run["chunks"] > 12
    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark results\n\nheader\n\n## 9. Embedding inside a run\n\nnine\n")
    for _ in range(2):  # written again, it replaces itself
        cluster.write_section(out, figures)
    text = out.read_text()
    assert text.count("## 10. Beyond one machine") == 1 and text.index("nine") < text.index("## 10.")
    assert "\n| 12 | " in text
    assert "### Chroma's reads against the collection's size" in text and "\n| 30 | 510 | " in text


@pytest.mark.benchmarks
def test_precision_benchmark_smoke_runs_b_in_both_and_writes_its_subsection_in_place(tmp_path: Path) -> None:
    from benchmarks.retrieval import precision

    result = precision.speed(tmp_path / "work", objects=12)
    for name in ("float32", "int8"):
        assert result["runs"][name]["objects"] == 12 and result["runs"][name]["statuses"] == {"indexed": 12}
    assert result["runs"]["int8"]["chunks"] == result["runs"]["float32"]["chunks"] > 12
    out = tmp_path / "RESULTS.md"
    out.write_text(
        "# Benchmark results\n\n## 1. Bulk sync throughput\n\none\n\n### Other\n\nkept\n\n## 2. Next\n\ntwo\n"
    )
    for _ in range(2):  # written again, it replaces itself where it stands
        precision.write_subsection(out, 1, precision.speed_section(result))
    text = out.read_text()
    assert text.count("### int8 against float32") == 1
    assert text.index("one") < text.index("kept") < text.index("### int8 against float32") < text.index("## 2. Next")
    with pytest.raises(ValueError, match="no section 5"):
        precision.write_subsection(out, 5, precision.speed_section(result))


@pytest.mark.benchmarks
def test_million_benchmark_steps_smoke(tmp_path: Path) -> None:
    """The key steps of benchmarks/scale/million.py at 300 keys, each in its own process as the benchmark runs them
    (its `dagster dev` part is what test_ui_backfill.py tests at a million keys)."""
    from benchmarks.scale import million

    found = {step: million._step_in_process(step, tmp_path, 300) for step in million.STEPS}
    assert found["discover"]["new"] == 300 and found["discover_again"]["new"] == 0
    assert found["poll"]["registered"] == 300 and found["poll"]["runs"] == 3
    assert found["poll_again"]["runs"] == 0
    assert all(step["peak_rss_mb"] >= step["stand_in_mb"] > 0 for step in found.values())


@pytest.mark.benchmarks
def test_submission_benchmark_smoke_counts_a_backfills_queued_runs(tmp_path: Path) -> None:
    """benchmarks/scale/submission.py at 1,000 keys in runs of 100, watched 60 s: the backfill of every key makes
    its runs (queued, never started: the queue is held) and the subsection renders."""
    from benchmarks.scale import submission

    result = submission.measure(tmp_path / "work", 1_000, [100], 60)
    [size] = result["sizes"]
    assert 0 < size["runs_made"] <= 10 and size["first_run_s"] is not None, size
    assert result["postgres_rows"]["runs"] >= size["runs_made"]
    assert "| 100 | " in submission.section_markdown(result)


def test_plan_benchmark_smoke_finds_the_planted_plan(tmp_path: Path) -> None:
    """benchmarks/scale/plan.py at 2,000 keys: the plan it measures finds exactly what it planted (it asserts so), and
    Chroma's read returns one row per document it filled."""
    from benchmarks.scale import plan as plan_benchmark

    result = plan_benchmark.measure(tmp_path / "plan", keys=2_000, chroma_keys=301)
    assert result["counts"] == plan_benchmark.expected(2_000)
    assert result["counts"]["deleted"] == 20 and result["counts"]["archived"] == 2
    # 100 documents of 3 chunks: their first chunks read, their chunks counted from what each records.
    assert (result["chroma"]["records"], result["chroma"]["documents"], result["chroma"]["chunks"]) == (300, 100, 300)
    assert "the plan after the listing" in plan_benchmark.summary(result)


def test_answers_scores_rankings_as_issue_53_counts_them() -> None:
    """benchmarks/retrieval/answers.py's figures on rankings made by hand: recall at each depth, MRR@10, the right page, and
    how often the store's largest object crowds the top 5 of a probe answered elsewhere; and its plain BM25."""
    from benchmarks.retrieval.answers import CROWD_KEY, Probe, Store, figures, load_questions, plain_bm25

    ids = ["big-0", "big-1", "big-2", "a-0", "b-0", "b-1"]
    keys = ["big.md", "big.md", "big.md", "a.md", "b.md", "b.md"]
    documents = ["release notes", "more notes", "notes again", "how to rotate a token", "cache", "timeout retry"]
    store = Store("s", Path("."), None, ids, documents, keys)
    probes = [Probe("rotate", "a.md", frozenset({"a-0"})), Probe("retry", "b.md", frozenset({"b-1"}))]
    ranked = [[("a-0",), ("big-0",)], [("big-0",), ("big-1",), ("b-0",), ("x",), ("y",), ("b-1",)]]
    found = figures(store, probes, ranked)
    assert (found["recall_at_1"], found["recall_at_5"], found["recall_at_10"]) == (0.5, 0.5, 1.0)
    assert found["mrr_at_10"] == pytest.approx((1 + 1 / 6) / 2)
    assert found["page_at_5"] == 1.0 and found["largest_object"] == "big.md"
    assert (found["largest_in_top_5"], found["largest_first"]) == (1.0, 0.5)
    assert [ids[i] for i in plain_bm25(documents)("Rotate the token", 3)] == ["a-0"]
    # A hit with its section counts when any chunk it returns is an answer.
    assert figures(store, probes[1:], [[("big-0",), ("b-0", "b-1")]])["recall_at_5"] == 1.0
    questions = load_questions("django")
    assert len(questions) >= 100 and all(q.object_key.startswith("django/") and q.anchor for q in questions)
    crowd = load_questions("changelog", "html/")  # item 5's crowded store: every answer in the one huge object
    assert len(crowd) >= 50 and {q.object_key for q in crowd} == {CROWD_KEY}
