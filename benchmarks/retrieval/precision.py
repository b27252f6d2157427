"""`embedding.precision: int8` against float32 (issue 39, part 2): quality on section 7's probe sets, and B's
bulk sync of section 1's corpus in each precision.

    python -m benchmarks.retrieval.precision quality WORKDIR --files 200 --probes 1200 --semantic 160
    python -m benchmarks.retrieval.precision speed WORKDIR --objects 500
    python -m benchmarks.retrieval.precision duplicates WORKDIR --objects 300   # part 3: copies take stored vectors

Each writes its JSON in WORKDIR and its subsection into benchmarks/RESULTS.md (section 7's or section 1's,
replaced where it stands); `section` rewrites both from the JSON files.

Section 7's corpus is synced once by the engine in float32 (as `benchmarks.retrieval.chunks` does; a store an earlier
run left in WORKDIR/budget-unset is reused with --reuse), then every chunk, exactly as stored (same ids, texts,
metadata), is embedded again in int8 into a second store: both collections hold the same chunks and differ only
in their vectors. Each probe set of section 7 (known-item sentences, semantic questions, paraphrase questions)
is then asked of both, each collection embedding its queries with its own precision, and scored as section 7
scores it (hybrid.py): recall@1 and @5 of dense search and of the default hybrid search. The cosine of each
chunk's int8 vector to its float32 one is reported too. Speed is measured elsewhere: section 1 (B at 500 objects,
`benchmarks.sync.throughput --precisions`) and section 11 (`benchmarks.sync.flops`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks import common
from benchmarks.retrieval import chunks as retrieval
from benchmarks.retrieval import hybrid
from benchmarks.sync import corpus, throughput
from s3sync_dagster.pipeline.embedding import EmbeddingSpec

HERE = Path(__file__).resolve().parents[1]
ALLOWED_DELTA = 0.01  # the bound on recall@1 and @5, every set
SETS = ("known", "semantic", "paraphrase")
PAGE = 500  # chunks read, embedded and written at a time


def int8_copy(chroma_path: Path, into: Path, name: str) -> dict[str, Any]:
    """Every chunk of the float32 collection, embedded again in int8 into a fresh store `into`: the copy's
    cosines to the float32 vectors and the seconds the embedding took."""
    import numpy as np

    from s3sync_dagster.pipeline.chroma import open_collection
    from s3sync_dagster.pipeline.lexicon import of
    from s3sync_dagster.pipeline.store import embedded_client

    shutil.rmtree(into, ignore_errors=True)
    source = retrieval.read_chunks(chroma_path, name)[0]
    spec = EmbeddingSpec(precision="int8")
    function = spec.build()
    copy = open_collection(embedded_client(into), name, function, metadata={"created_by": "benchmark"})
    cosines: list[float] = []
    seconds = 0.0
    offset = 0
    while True:
        page = source.get(limit=PAGE, offset=offset, include=["documents", "metadatas", "embeddings"])
        if not page["ids"]:
            break
        documents = [document or "" for document in page["documents"] or []]
        started = time.perf_counter()
        vectors = np.array(function(documents))
        seconds += time.perf_counter() - started
        exact = np.array(page["embeddings"])
        cosines += list((vectors * exact).sum(axis=1) / np.linalg.norm(exact, axis=1))
        copy.add(ids=page["ids"], embeddings=vectors, documents=documents, metadatas=page["metadatas"])  # type: ignore[arg-type]
        offset += len(page["ids"])
    index_of = of(copy)
    if index_of is not None:  # the copy's lexical index, as a sync would have written it
        index_of.rebuild(copy)
    ordered = sorted(cosines)
    return {
        "chunks": len(cosines),
        "embed_s": seconds,
        "texts_per_s": len(cosines) / seconds if seconds else None,
        "cosine_mean": float(np.mean(cosines)),
        "cosine_min": ordered[0],
        "cosine_p1": ordered[len(ordered) // 100],
        "cosine_p5": ordered[len(ordered) // 20],
    }


def figures(
    store: Path, name: str, spec: EmbeddingSpec, probes: int, seed: int, semantic: Any, paraphrase: Any, workdir: Path
) -> dict[str, Any]:
    """Section 7's sets asked of one store, its queries embedded by `spec`: recall per set, dense and hybrid."""
    collection, ids, documents, metadatas = retrieval.read_chunks(store, name, spec)
    object_keys = [str(metadata.get("object_key", "")) for metadata in metadatas]
    chosen = retrieval.sample_probes(ids, documents, object_keys, probes, seed)
    workdir.mkdir(parents=True, exist_ok=True)
    measured = hybrid.measure(
        collection, store, ids, documents, object_keys, chosen, semantic, workdir,
        seed=seed, paraphrase=paraphrase, costs=False, function=spec.build(),
    )  # fmt: skip
    default = next(row for row in measured["variants"] if row["default"])
    out: dict[str, Any] = {"chunks": len(ids)}
    for set_name in SETS:
        out[set_name] = {
            "n": measured["modes"]["dense"][set_name]["n"],
            "dense": {k: measured["modes"]["dense"][set_name][k] for k in ("recall_at_1", "recall_at_5")},
            "hybrid": {k: default["sets"][set_name][k] for k in ("recall_at_1", "recall_at_5")},
        }
    return out


def quality(
    workdir: Path, files: int, probes: int, seed: int, semantic: int, max_bytes: int, reuse: bool
) -> dict[str, Any]:
    from s3sync_dagster.commands.demo import start

    name = f"{retrieval.SOURCE}-chunks"
    base = workdir / f"budget-{retrieval.label(None)}"
    common.credentials()
    server = start()
    try:
        described, semantic_probes, paraphrase_probes = retrieval.fill_corpus(
            server.endpoint_url, files, seed, max_bytes, semantic, None
        )
        synced: dict[str, Any] = {}
        if not (reuse and (base / "chroma").exists()):
            synced = retrieval.measure_budget(server.endpoint_url, workdir, None, described, probes, seed)["sync"]
    finally:
        server.stop()
    copy = int8_copy(base / "chroma", workdir / "int8" / "chroma", name)
    runs = {
        "float32": figures(
            base / "chroma", name, EmbeddingSpec(), probes, seed, semantic_probes, paraphrase_probes, workdir / "q-f32"
        ),
        "int8": figures(
            workdir / "int8" / "chroma", name, EmbeddingSpec(precision="int8"), probes, seed, semantic_probes,
            paraphrase_probes, workdir / "q-int8",
        ),
    }  # fmt: skip
    deltas = {
        set_name: {
            mode: {
                k: (runs["int8"][set_name][mode][k] or 0) - (runs["float32"][set_name][mode][k] or 0)
                for k in ("recall_at_1", "recall_at_5")
            }
            for mode in ("dense", "hybrid")
        }
        for set_name in SETS
    }
    worst = min(value for by_mode in deltas.values() for by_k in by_mode.values() for value in by_k.values())
    return {
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": common.machine().get("commit", ""),
        "corpus": {k: described[k] for k in ("objects", "bytes") if k in described},
        "sync": synced,
        "copy": copy,
        "runs": runs,
        "deltas": deltas,
        "worst_delta": worst,
        "within_bound": worst >= -ALLOWED_DELTA,
        "load_average": os.getloadavg(),
    }


def section(result: dict[str, Any]) -> str:
    copy = result["copy"]
    lines = [
        f"### int8 against float32 (issue 39; measured {result['measured_at']}, commit {result['commit']})",
        "",
        "Section 7's corpus synced once in float32 by the engine; every chunk then embedded again in int8 "
        "(`embedding.precision: int8`) into a second store, with the same ids, texts and metadata "
        "(`python -m benchmarks.retrieval.precision quality`). Each collection embeds its queries with its own precision; "
        "the sets and their scoring are section 7's; hybrid is the default fusion.",
        "",
        "| set | n | mode | float32 @1 | int8 @1 | delta @1 | float32 @5 | int8 @5 | delta @5 |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for set_name in SETS:
        f32, i8 = result["runs"]["float32"][set_name], result["runs"]["int8"][set_name]
        for mode in ("dense", "hybrid"):
            a, b = f32[mode], i8[mode]
            d = result["deltas"][set_name][mode]
            lines.append(
                f"| {set_name} | {f32['n']} | {mode} | {a['recall_at_1']:.3f} | {b['recall_at_1']:.3f} | "
                f"{d['recall_at_1']:+.3f} | {a['recall_at_5']:.3f} | {b['recall_at_5']:.3f} | {d['recall_at_5']:+.3f} |"
            )
    lines += [
        "",
        f"- Worst delta {result['worst_delta']:+.3f} (bound: -{ALLOWED_DELTA}): "
        f"{'within' if result['within_bound'] else 'NOT within'} the bound on every set.",
        f"- Cosine of each chunk's int8 vector to its float32 one ({copy['chunks']:,} chunks): mean "
        f"{copy['cosine_mean']:.4f}, 5th percentile {copy['cosine_p5']:.4f}, 1st {copy['cosine_p1']:.4f}, "
        f"lowest {copy['cosine_min']:.4f}.",
        f"- The int8 copy embedded {copy['chunks']:,} chunks in {copy['embed_s']:.0f} s "
        f"({copy['texts_per_s']:.1f} texts/s; not a speed figure: the machine was not kept idle for it).",
    ]
    return "\n".join(lines) + "\n"


def speed(workdir: Path, objects: int) -> dict[str, Any]:
    """B (`s3sync sync --all`, a fresh process, the default instance, embedded Chroma) over section 1's corpus,
    once with `embedding.precision: float32` and once with `int8`, one after the other in this one run."""
    from s3sync_dagster.commands.demo import start

    common.credentials()
    data = corpus.generate(objects)
    bucket = f"precision-{objects}"
    server = start()
    runs: dict[str, Any] = {}
    try:
        common.fill_bucket(common.s3_client(server.endpoint_url), bucket, data)
        load = [os.getloadavg()[0]]
        for precision in ("float32", "int8"):
            base = workdir / f"speed-{precision}"
            shutil.rmtree(base, ignore_errors=True)
            config = common.write_config(base / "config.yaml", server.endpoint_url, bucket, base / "chroma")
            settings = yaml.safe_load(config.read_text())
            config.write_text(yaml.safe_dump({**settings, "embedding": {"precision": precision}}))
            run = throughput.run_dagster(config, base / "home")
            run.update(throughput.rates(run))
            runs[precision] = {k: v for k, v in run.items() if not isinstance(v, list)}
            load.append(os.getloadavg()[0])
            print(f"B {precision}: {run['seconds']:.1f} s, {run['chunks']} chunks", flush=True)
    finally:
        server.stop()
    return {
        "measured": common.machine(),
        "objects": objects,
        "corpus": corpus.describe(data),
        "runs": runs,
        "speedup": runs["float32"]["seconds"] / runs["int8"]["seconds"],
        "load_average": load,
    }


def speed_section(result: dict[str, Any]) -> str:
    f32, i8 = result["runs"]["float32"], result["runs"]["int8"]
    lines = [
        f"### int8 against float32 (issue 39; measured {result['measured']['date']}, commit "
        f"{result['measured']['commit']})",
        "",
        f"B (`s3sync sync --all`) over this section's corpus at {result['objects']:,} objects, once with "
        "`embedding.precision: float32` (ONNX Runtime, batches of 16) and once with `int8` (the quantised model, "
        "each text alone), one after the other in one run (`python -m benchmarks.retrieval.precision speed`), each in a "
        "fresh process into its own embedded Chroma and instance. Load average "
        + ", ".join(f"{value:.1f}" for value in result["load_average"])
        + " (before, after float32, after int8).",
        "",
        "| precision | seconds | objects/s | chunks/s | chunks |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, run in (("float32", f32), ("int8", i8)):
        lines.append(
            f"| {name} | {run['seconds']:.1f} | {run['objects_s']:.2f} | {run['chunks_s']:.1f} | {run['chunks']:,} |"
        )
    lines += [
        "",
        f"B in int8 against B in float32: **{result['speedup']:.2f}x** (goal >= 1.4x). The embedding alone: "
        "section 11.",
    ]
    return "\n".join(lines) + "\n"


# The commit before part 3 (one embedding per distinct text in a collection): the duplicates' "before".
BEFORE_REUSE = "619817e"


def duplicates(
    workdir: Path, objects: int = 300, copies: float = 0.5, before: str = BEFORE_REUSE, rounds: int = 2
) -> dict[str, Any]:
    """A (the engine, a fresh process, embedded Chroma) over section 1's corpus plus copies of a share of its
    objects under `copy/` (the same bytes, another key), by the engine of `before` and by this one, in one run:
    chunks written, chunks the model embedded, seconds. The two take turns, `rounds` times each, in the order
    before, now, now, before, ... (a drift of the machine's speed falls on both alike); the mean counts."""
    import random

    from s3sync_dagster.commands.demo import start

    common.credentials()
    data = corpus.generate(objects)
    copied = random.Random(7).sample(sorted(data), int(objects * copies))
    data.update({f"copy/{key}": data[key] for key in copied})
    bucket = f"duplicates-{objects}"
    server = start()
    runs: dict[str, Any] = {}
    every: dict[str, list[float]] = {"before": [], "now": []}
    trees = {"before": common.snapshot(before, workdir / "before-tree"), "now": None}
    order = [label for turn in range(rounds) for label in (("before", "now") if turn % 2 == 0 else ("now", "before"))]
    try:
        common.fill_bucket(common.s3_client(server.endpoint_url), bucket, data)
        for label in order:
            base = workdir / f"duplicates-{label}"
            shutil.rmtree(base, ignore_errors=True)
            config = common.write_config(base / "config.yaml", server.endpoint_url, bucket, base / "chroma")
            run = throughput.run_engine(config, trees[label])
            runs[label] = {k: v for k, v in run.items() if not isinstance(v, list)}
            every[label].append(run["seconds"])
            print(
                f"A {label}: {run['seconds']:.1f} s, {run['chunks']} chunks, {run.get('embedded')} embedded", flush=True
            )
    finally:
        server.stop()
    for label, seconds in every.items():
        runs[label]["each_s"] = seconds
        runs[label]["seconds"] = sum(seconds) / len(seconds)
    return {
        "measured": common.machine(),
        "before": before,
        "objects": objects,
        "copies": len(copied),
        "corpus": corpus.describe(data),
        "runs": runs,
    }


def duplicates_section(result: dict[str, Any]) -> str:
    before, now = result["runs"]["before"], result["runs"]["now"]
    total = now["chunks"]
    reused = total - now["embedded"]
    lines = [
        f"### Duplicate texts: one embedding per distinct text (issue 39; measured {result['measured']['date']}, "
        f"commit {result['measured']['commit']})",
        "",
        f"A (the engine) over {result['objects']:,} objects of this section's corpus plus {result['copies']:,} "
        "copies of some of them under `copy/` (the same bytes under another key, as a team's copies and exports "
        f"are), {result['objects'] + result['copies']:,} objects in all, each engine in a fresh process into its own "
        "embedded Chroma, taking turns in one run (before, now, now, before: `python -m benchmarks.retrieval.precision "
        f"duplicates`). Before: the engine of commit {result['before']} (a text embedded once per object, or per write "
        "group of new objects). Now: a chunk whose text the collection already holds for the source takes that "
        "vector (its text hash).",
        "",
        "| engine | seconds (mean) | each run | chunks | embedded by the model | took a stored vector |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
        f"| before ({result['before']}) | {before['seconds']:.1f} | {_each(before)} | {before['chunks']:,} | "
        "not counted | |",
        f"| now | {now['seconds']:.1f} | {_each(now)} | {total:,} | {now['embedded']:,} | "
        f"{reused:,} ({reused / total:.0%}) |",
        "",
        f"Duplicates' share of the corpus: {result['copies'] / (result['objects'] + result['copies']):.0%} of the "
        f"objects; {reused / total:.0%} of the chunks took a stored vector. Now against before: "
        f"**{before['seconds'] / now['seconds']:.2f}x** the speed.",
    ]
    return "\n".join(lines) + "\n"


def _each(run: dict[str, Any]) -> str:
    return ", ".join(f"{seconds:.1f}" for seconds in run.get("each_s", [run["seconds"]]))


def write_subsection(out: Path, number: int, text: str) -> None:
    """`text` (a `### ` subsection) at the end of section `number` of `out`, replacing the one of the same title
    prefix (up to its first parenthesis) where it stands."""
    document = out.read_text()
    parts = re.split(r"\n(?=## \d+\. )", document.rstrip("\n"))
    title = text.split("(", 1)[0]
    for index, part in enumerate(parts):
        if part.startswith(f"## {number}. "):
            pieces = re.split(r"\n(?=### )", part)
            kept = [piece.rstrip("\n") for piece in pieces if not piece.startswith(title)]
            parts[index] = "\n\n".join([*kept, text.rstrip("\n")])
            break
    else:
        raise ValueError(f"{out} has no section {number}")
    out.write_text("\n\n".join(part.rstrip("\n") for part in parts) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval.precision", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality", help="recall on section 7's sets, int8 against float32")
    q.add_argument("workdir", type=Path)
    q.add_argument("--files", type=int, default=200)
    q.add_argument("--probes", type=int, default=1200)
    q.add_argument("--seed", type=int, default=7)
    q.add_argument("--semantic", type=int, default=hybrid.SEMANTIC_PROBES)
    q.add_argument("--max-bytes", type=int, default=retrieval.MAX_BYTES)
    q.add_argument("--reuse", action="store_true", help="keep the float32 store an earlier run left in WORKDIR")
    q.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    b = sub.add_parser("speed", help="B over section 1's corpus, float32 then int8")
    b.add_argument("workdir", type=Path)
    b.add_argument("--objects", type=int, default=500)
    b.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    d = sub.add_parser("duplicates", help="A before and after one embedding per distinct text, on copies")
    d.add_argument("workdir", type=Path)
    d.add_argument("--objects", type=int, default=300)
    d.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    again = sub.add_parser("section", help="write the subsections again from the JSON an earlier run left")
    again.add_argument("workdir", type=Path)
    again.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.what == "section":
        for file, write, number in (
            ("precision-quality.json", section, 7),
            ("precision-speed.json", speed_section, 1),
            ("precision-duplicates.json", duplicates_section, 1),
        ):
            if (args.workdir / file).is_file():
                write_subsection(args.out, number, write(json.loads((args.workdir / file).read_text())))
        return
    if args.what == "quality":
        result = quality(args.workdir, args.files, args.probes, args.seed, args.semantic, args.max_bytes, args.reuse)
        (args.workdir / "precision-quality.json").write_text(json.dumps(result, indent=2, default=str))
        text, number = section(result), 7
    elif args.what == "duplicates":
        result = duplicates(args.workdir, args.objects)
        (args.workdir / "precision-duplicates.json").write_text(json.dumps(result, indent=2, default=str))
        text, number = duplicates_section(result), 1
    else:
        result = speed(args.workdir, args.objects)
        (args.workdir / "precision-speed.json").write_text(json.dumps(result, indent=2, default=str))
        text, number = speed_section(result), 1
    print(text)
    write_subsection(args.out, number, text)


if __name__ == "__main__":
    main()
