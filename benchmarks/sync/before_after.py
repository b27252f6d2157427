"""Before and after a change that should not change speed (issue 51's split of the package): B's bulk sync and
hybrid query latency, by the code of an earlier commit and by this checkout's, in one run on one corpus.

`.venv/bin/python -m benchmarks.sync.before_after W --before REV` syncs `--objects` objects of benchmarks/sync/corpus.py with
`s3sync sync --all` (B, a fresh process each, its own embedded Chroma and Dagster home) by REV's code and by this
checkout's, alternating, `--rounds` times each; then times `--queries` hybrid queries (SourceSearch, opened once,
the first query apart as the warm-up) by each code against the same store, alternating in blocks. It prints a
markdown table of objects/s and query p50 with the after/before ratios, and writes W/before_after.json. Nothing
here asserts a duration.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.sync import corpus, throughput
from s3sync_dagster.commands import demo

# Run by each side's code in a fresh process (PYTHONPATH: its tree): the hybrid queries, timed one by one.
QUERY_SCRIPT = """
import json, sys, time
from s3sync_dagster.commands.query import SourceSearch
from s3sync_dagster.config import load_config
config_file, texts = sys.argv[1], json.loads(sys.argv[2])
searcher = SourceSearch("bench", config=load_config(config_file))
searcher.search(texts[0], mode="hybrid", n=5)
seconds = []
for text in texts[1:]:
    started = time.perf_counter()
    searcher.search(text, mode="hybrid", n=5)
    seconds.append(time.perf_counter() - started)
print(json.dumps(seconds))
"""


def probes(data: dict[str, bytes], count: int, seed: int = 11) -> list[str]:
    """Queries of a few words drawn from the corpus's own text lines, as a user quotes what they remember."""
    rng = random.Random(seed)
    lines = [
        line.strip()
        for blob in data.values()
        for line in blob.decode("utf-8", errors="ignore").splitlines()
        if 20 < len(line.strip()) < 200 and line.isprintable()
    ]
    chosen = []
    for line in rng.sample(lines, min(count, len(lines))):
        words = line.split()
        start = rng.randrange(max(1, len(words) - 5))
        chosen.append(" ".join(words[start : start + 6]))
    return chosen


def query_seconds(tree: Path | None, config_file: Path, texts: list[str]) -> list[float]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    done = subprocess.run(
        [sys.executable, "-c", QUERY_SCRIPT, str(config_file), json.dumps(texts)],
        capture_output=True, text=True, env=env, cwd=tree or common.REPO, timeout=3600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return [float(second) for second in json.loads(done.stdout.strip().splitlines()[-1])]


def measure(workdir: Path, before: str, objects: int, rounds: int, queries: int) -> dict[str, Any]:
    common.credentials()
    workdir.mkdir(parents=True, exist_ok=True)
    tree = common.snapshot(before, workdir / "before-tree")
    server = demo.start()
    try:
        data = corpus.generate(objects)
        bucket = "before-after"
        s3 = common.s3_client(server.endpoint_url)
        common.fill_bucket(s3, bucket, data)
        syncs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        configs: dict[str, Path] = {}
        for round_ in range(rounds):
            for side, side_tree in (("before", tree), ("after", None)):
                base = workdir / f"{side}-{round_}"
                configs[side] = common.write_config(base / "b.yaml", server.endpoint_url, bucket, base / "chroma")
                result = throughput.run_dagster(configs[side], base / "home", tree=side_tree)
                syncs[side].append({**result, **throughput.rates(result)})
                print(f"B {side} round {round_}: {result['seconds']:.1f} s", file=sys.stderr)
        texts = probes(data, queries + 1)
        latencies: dict[str, list[float]] = {"before": [], "after": []}
        half = len(texts) // 2
        for block in (texts[: half + 1], [texts[0], *texts[half + 1 :]]):
            for side, side_tree in (("before", tree), ("after", None)):
                latencies[side] += query_seconds(side_tree, configs["after"], block)
    finally:
        server.stop()
    return {"machine": common.machine(), "before": before, "objects": objects, "syncs": syncs, "queries": latencies}


def markdown(raw: dict[str, Any]) -> str:
    objects_s = {side: common.median(run["objects_s"] for run in runs) for side, runs in raw["syncs"].items()}
    p50 = {side: common.median(seconds) * 1000 for side, seconds in raw["queries"].items()}
    spread = {side: common.spread([run["seconds"] for run in runs]) for side, runs in raw["syncs"].items()}
    machine = raw["machine"]
    return "\n".join(
        [
            f"Before ({raw['before']}) and after ({machine['commit']}), {machine['date']}, {machine.get('cpu', '')}:"
            f" {raw['objects']} corpus objects, B (`s3sync sync --all`) {len(raw['syncs']['after'])} times each,"
            f" alternating; {len(raw['queries']['after'])} hybrid queries each against the same store.",
            "",
            "| | before | after | after / before |",
            "| --- | ---: | ---: | ---: |",
            f"| B objects/s (median) | {objects_s['before']:.2f} | {objects_s['after']:.2f} |"
            f" {objects_s['after'] / objects_s['before']:.2f} |",
            f"| B seconds, spread | {spread['before']} | {spread['after']} | |",
            f"| hybrid query p50 ms | {p50['before']:.1f} | {p50['after']:.1f} | {p50['after'] / p50['before']:.2f} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sync.before_after", description=__doc__)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--before", required=True, help="the git revision measured as 'before'")
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    raw = measure(args.workdir, args.before, args.objects, args.rounds, args.queries)
    (args.workdir / "before_after.json").write_text(json.dumps(raw, indent=2, default=str))
    print(markdown(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
