"""Issue 53: does a search return the passage that answers, on every probe set, beside dense search and a plain BM25?

`python -m benchmarks.retrieval.answers WORKDIR [--second NAME] [--before REV] [--files 200] [--probes 1200] [--semantic 160]
[--large DIR]`

1. Stores. Section 7's corpus (retrieval.fill_corpus: python3.11-doc pages and standard-library modules) and, with
   `--second`, a second corpus no one here wrote (benchmarks/retrieval/second_corpus.py), each uploaded to its own moto
   bucket and synced by this checkout's engine (section 1's A) into its own embedded Chroma under WORKDIR; with
   `--before REV`, synced again by that commit's engine ("today": the dense figures the issue's targets add to).
   A store already in WORKDIR is read again, not synced (delete its folder to sync anew).
2. Sets. On the first corpus: section 7's known-item probes (a sentence of a chunk, by third of the chunk),
   semantic probes (a function's description asking for its source) and paraphrase questions
   (benchmarks/probes/paraphrase.json); on the second: its questions (benchmarks/probes/<NAME>.json). Every
   question set was written from the pages alone before any ranking was seen; an answer is a chunk of the
   question's page holding its anchor (hybrid.paraphrase_targets).
3. Rankings. Each probe is asked once per mode through `search.search` with n = 10 (the first k hits of a search
   for 10 are a search for k's: search.in_tiers), and of a plain BM25 over the same chunks (rank_bm25's
   BM25Okapi, words lowercased, nothing dropped).
4. Figures per set and ranking: recall@1/@5/@10 (an answer in the top k), MRR@10, right page@5 (a chunk of the
   answer's object in the top 5), and crowding: the share of probes whose top 5 holds a chunk of the store's
   largest object, and whose first hit is one, for probes whose answer is elsewhere.

5. With `--crowd`, a third store where one object crowds the rest (issue 53, item 5): the paraphrase
   questions' pages (faq/, howto/, tutorial/) and Python 3.11's changelog as one object (`CROWD_KEY`, most
   of the chunks), asked the paraphrase questions (their answers elsewhere: how often the changelog takes
   their top 5, "largest object in top 5") and questions whose answer is in the changelog
   (benchmarks/probes/changelog.json: is it still found).
6. With `--large DIR` (a store of 100,000 synthetic chunks that `benchmarks.retrieval.search_cost` made, `large-chunks`):
   hybrid's p50/p95 milliseconds there, with up to LATENCY_PROBES of each set's probes as the queries
   (search_cost.latency: the modes take turns, query by query, after a warm-up).

It prints the figures as JSON (and writes WORKDIR/answers.json), then a markdown table per store. Nothing here
asserts a figure.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.retrieval import chunks as retrieval
from benchmarks.retrieval import hybrid
from benchmarks.sync import throughput
from s3sync_dagster.commands.demo import start
from s3sync_dagster.pipeline.search import FUSION, MODES, search, with_context, with_passages

TOP = 10
# The crowding object: Python 3.11's changelog, one page of 3.9 MB of HTML (python3.11-doc ships it gzipped).
CROWD_KEY = "html/whatsnew/changelog.html"
CROWD_BUCKET = "crowded"
LATENCY_PROBES = 60
PROBES_DIR = Path(__file__).parents[1] / "probes"
_WORDS = re.compile(r"\w+")


@dataclass(frozen=True)
class Question:
    """A question of a set, answered on `object_key` by the passage holding `anchor` (`answer`: the words of it
    that answer, where the set names them)."""

    question: str
    object_key: str
    kind: str
    anchor: str
    answer: str = ""


def load_questions(name: str, prefix: str = "") -> list[Question]:
    """benchmarks/probes/NAME.json's questions; a probe names its object by `object_key`, or by `page` under
    `prefix` (paraphrase.json's pages are the bucket's `html/` keys)."""
    raw = json.loads((PROBES_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return [
        Question(
            p["question"],
            p.get("object_key") or f"{prefix}{p['page']}",
            p.get("kind", ""),
            p["anchor"],
            p.get("answer", ""),
        )
        for p in raw["probes"]
    ]


@dataclass(frozen=True)
class Probe:
    """One probe of a set: what is asked, and what counts as its answer."""

    text: str
    object_key: str
    answers: frozenset[str]  # chunk ids
    group: str = ""  # the known-item probe's third, the question's kind
    anchor: str = ""  # the words a shown passage must hold to show the answer ("" for a set without: semantic)


@dataclass(frozen=True)
class Store:
    name: str
    path: Path
    collection: Any
    ids: list[str]
    documents: list[str]
    object_keys: list[str]


def plain_bm25(documents: Sequence[str]) -> Callable[[str, int], list[int]]:
    """A plain BM25 over the texts (rank_bm25's BM25Okapi, k1 1.5, b 0.75, words lowercased): the baseline the
    lexical side must not fall below. Returns the indexes of a query's best n."""
    import numpy as np
    from rank_bm25 import BM25Okapi

    index = BM25Okapi([_WORDS.findall(document.lower()) for document in documents])

    def best(text: str, n: int) -> list[int]:
        scores = index.get_scores(_WORDS.findall(text.lower()))
        order = np.argsort(-scores, kind="stable")[:n]
        return [int(i) for i in order if scores[i] > 0]

    return best


# A ranking's hits: each the chunk ids it returns, its own first (one, or with its section: `--context section`).
Ranked = list[list[tuple[str, ...]]]
SECTION_RANKING = "hybrid, --context section"


# A ranking's passages: each hit's as `s3sync query` shows it (search.with_passages), for the rankings shown.
Shown = list[list[str]]
SHOWN_RANKINGS = ("hybrid", "hybrid, sections")


def rankings(store: Store, probes: Sequence[Probe], function: Any) -> tuple[dict[str, Ranked], dict[str, Shown]]:
    """Each probe's first TOP hits by each mode of search.search, by hybrid with each hit's section (a hit counts
    when its returned text holds the answer), and by a plain BM25; and the passages hybrid's hits show."""
    best = plain_bm25(store.documents)
    found: dict[str, Ranked] = {mode: [] for mode in (*MODES, SECTION_RANKING, "hybrid, sections", "bm25")}
    shown: dict[str, Shown] = {mode: [] for mode in SHOWN_RANKINGS}
    for probe in probes:
        for mode in MODES:
            hits = search(store.collection, probe.text, mode=mode, n=TOP, embedding_function=function)
            found[mode].append([(hit.chunk_id,) for hit in hits])
            if mode in SHOWN_RANKINGS:
                shown[mode].append([hit.passage for hit in with_passages(store.collection, hits, probe.text)])
            if mode == "hybrid":
                # Sections ranked (search.search sections=True): each once, a hit its best chunk.
                by_section = search(store.collection, probe.text, n=TOP, embedding_function=function, sections=True)
                found["hybrid, sections"].append([(hit.chunk_id,) for hit in by_section])
                shown["hybrid, sections"].append(
                    [hit.passage for hit in with_passages(store.collection, by_section, probe.text)]
                )
                sections = with_context(store.collection, hits, "section")
                found[SECTION_RANKING].append(
                    [
                        (hit.chunk_id, *(p.chunk_id for p in hit.context if p.chunk_id != hit.chunk_id))
                        for hit in sections
                    ]
                )
        found["bm25"].append([(store.ids[i],) for i in best(probe.text, TOP)])
    return found, shown


def holds(passage: str, anchor: str) -> bool:
    """Whether a shown passage holds the answer: the anchor's words in a row, both read as the answer's chunk is
    found (hybrid.answer_words: markdown link targets aside; a known-item sentence is markdown, a question's
    anchor the page's visible text)."""
    wanted = hybrid.answer_words(anchor)
    return bool(wanted) and f" {wanted} " in f" {hybrid.answer_words(passage)} "


def shown_figures(probes: Sequence[Probe], shown: Shown) -> dict[str, Any]:
    """How often the passages shown hold the answer: in the first, in the first 5, in all 10 (the probes with an
    anchor)."""
    asked = [(probe, passages) for probe, passages in zip(probes, shown, strict=True) if probe.anchor]
    if not asked:
        return {"shown_n": 0}
    ranks = [
        next((rank for rank, passage in enumerate(passages, 1) if holds(passage, probe.anchor)), None)
        for probe, passages in asked
    ]
    n = len(asked)
    return {
        "shown_n": n,
        "shown_at_1": sum(rank == 1 for rank in ranks) / n,
        "shown_at_5": sum(rank is not None and rank <= 5 for rank in ranks) / n,
        "shown_at_10": sum(rank is not None for rank in ranks) / n,
    }


def figures(store: Store, probes: Sequence[Probe], ranked: Ranked) -> dict[str, Any]:
    """Recall@1/@5/@10, MRR@10, right page@5 and crowding of one ranking over one set."""
    object_of = dict(zip(store.ids, store.object_keys, strict=True))
    sizes: dict[str, int] = {}
    for object_key in store.object_keys:
        sizes[object_key] = sizes.get(object_key, 0) + 1
    largest = max(sizes, key=lambda key: sizes[key]) if sizes else ""
    n = len(probes)
    if not n:
        return {"n": 0}
    ranks = [
        next((rank for rank, hit in enumerate(top, 1) if probe.answers.intersection(hit)), None)
        for probe, top in zip(probes, ranked, strict=True)
    ]
    elsewhere = [i for i, probe in enumerate(probes) if probe.object_key != largest]
    return {
        "n": n,
        "recall_at_1": sum(rank is not None and rank <= 1 for rank in ranks) / n,
        "recall_at_5": sum(rank is not None and rank <= 5 for rank in ranks) / n,
        "recall_at_10": sum(rank is not None for rank in ranks) / n,
        "mrr_at_10": sum(1 / rank for rank in ranks if rank is not None) / n,
        "page_at_5": sum(
            any(object_of.get(hit[0]) == probe.object_key for hit in top[:5])
            for probe, top in zip(probes, ranked, strict=True)
        )
        / n,
        "largest_object": largest,
        "largest_share_of_chunks": sizes.get(largest, 0) / max(1, len(store.ids)),
        "largest_in_top_5": sum(any(object_of.get(hit[0]) == largest for hit in ranked[i][:5]) for i in elsewhere)
        / max(1, len(elsewhere)),
        "largest_first": sum(bool(ranked[i]) and object_of.get(ranked[i][0][0]) == largest for i in elsewhere)
        / max(1, len(elsewhere)),
    }


def question_probes(store: Store, questions: Sequence[Question]) -> tuple[list[Probe], dict[str, int]]:
    kept, targets, left_out = hybrid.paraphrase_targets(questions, store.ids, store.documents, store.object_keys)
    probes = [
        Probe(question.question, question.object_key, frozenset(found), question.kind, question.anchor)
        for question, found in zip(kept, targets, strict=True)
    ]
    return probes, left_out


def first_sets(store: Store, files: int, probes: int, seed: int, semantic: int) -> dict[str, list[Probe]]:
    """Section 7's three sets on the first corpus's store."""
    known = retrieval.sample_probes(store.ids, store.documents, store.object_keys, probes, seed)
    normalised = [" ".join(document.split()) for document in store.documents]
    sets: dict[str, list[Probe]] = {
        "known": [
            Probe(
                probe.sentence,
                probe.object_key,
                frozenset(c for c, text in zip(store.ids, normalised, strict=True) if probe.sentence in text),
                probe.third,
                probe.sentence,
            )
            for probe in known
        ]
    }
    corpus = retrieval.select_files(files, seed, retrieval.MAX_BYTES)
    chosen, _ = hybrid.choose_semantic(
        retrieval.HTML_ROOT, retrieval.py_files(retrieval.MAX_BYTES), set(corpus), semantic, seed
    )
    kept, targets, _ = hybrid.semantic_targets(chosen, store.ids, store.documents, store.object_keys)
    sets["semantic"] = [
        Probe(probe.query, probe.object_key, frozenset(found), "") for probe, found in zip(kept, targets, strict=True)
    ]
    sets["paraphrase"], _ = question_probes(store, load_questions("paraphrase", "html/"))
    return sets


def synced_store(name: str, workdir: Path, endpoint_url: str, bucket: str, before: str | None = None) -> Store:
    """The store of `bucket` under WORKDIR/NAME, synced by this checkout's engine (or `before`'s) unless there."""
    base = workdir / name
    chroma = base / "chroma"
    if not chroma.exists():
        config = common.write_config(
            base / "config.yaml", endpoint_url, bucket, chroma, source=retrieval.SOURCE,
            chunking=retrieval.chunking(None),
        )  # fmt: skip
        tree = common.snapshot(before, base / "tree") if before else None
        started = time.perf_counter()
        throughput.run_engine(config, tree)
        print(f"{name}: synced in {time.perf_counter() - started:.0f} s", flush=True)
    collection, ids, documents, metadatas = retrieval.read_chunks(chroma, f"{retrieval.SOURCE}-chunks")
    object_keys = [str(metadata.get("object_key", "")) for metadata in metadatas]
    return Store(name, chroma, collection, ids, documents, object_keys)


def measure_store(store: Store, sets: dict[str, list[Probe]]) -> dict[str, Any]:
    from s3sync_dagster.pipeline.embedding import EmbeddingSpec

    function = EmbeddingSpec().build()
    result: dict[str, Any] = {"chunks": len(store.ids), "objects": len(set(store.object_keys)), "sets": {}}
    for set_name, probes in sets.items():
        started = time.perf_counter()
        ranked, shown = rankings(store, probes, function)
        result["sets"][set_name] = {mode: figures(store, probes, top) for mode, top in ranked.items()}
        for mode, passages in shown.items():
            result["sets"][set_name][mode].update(shown_figures(probes, passages))
        if set_name == "known":
            for third in retrieval.THIRDS:
                members = [i for i, probe in enumerate(probes) if probe.group == third]
                result["sets"][f"known, {third} third"] = {
                    mode: figures(store, [probes[i] for i in members], [top[i] for i in members])
                    for mode, top in ranked.items()
                }
                for mode, passages in shown.items():
                    result["sets"][f"known, {third} third"][mode].update(
                        shown_figures([probes[i] for i in members], [passages[i] for i in members])
                    )
        print(f"{store.name} {set_name}: {len(probes)} probes in {time.perf_counter() - started:.0f} s", flush=True)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = []
    for store_name, store in result["stores"].items():
        lines += [
            f"{store_name}: {store['chunks']:,} chunks of {store['objects']} objects",
            "",
            "| set | ranking | n | recall@1 | recall@5 | recall@10 | MRR@10 | right page@5 | largest object in top 5 "
            "| shown passage holds the answer @1 / @5 |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for set_name, by_mode in store["sets"].items():
            for mode, f in by_mode.items():
                if not f.get("n"):
                    continue
                passage = f"{f['shown_at_1']:.3f} / {f['shown_at_5']:.3f}" if f.get("shown_n") else ""
                lines.append(
                    f"| {set_name} | {mode} | {f['n']} | {f['recall_at_1']:.3f} | {f['recall_at_5']:.3f} | "
                    f"{f['recall_at_10']:.3f} | {f['mrr_at_10']:.3f} | {f['page_at_5']:.3f} | "
                    f"{f['largest_in_top_5']:.3f} | {passage} |"
                )
        large = store.get("large")
        if large:
            lines += [f"At {large['chunks']:,} chunks, ms a search (p50 / p95):", ""]
            for set_name, modes in large.items():
                if isinstance(modes, dict):
                    timed = ", ".join(f"{mode} {t['p50_ms']:.0f} / {t['p95_ms']:.0f}" for mode, t in modes.items())
                    lines.append(f"- {set_name}: {timed}")
        lines.append("")
    return "\n".join(lines)


def large_latency(large: Path, sets: dict[str, list[str]]) -> dict[str, Any]:
    """Hybrid's (and each side's) p50/p95 ms on the 100,000 synthetic chunks at `large`, each set's first
    LATENCY_PROBES queries asked for 10 hits, as the figures' rankings ask."""
    from benchmarks.retrieval import search_cost
    from s3sync_dagster.pipeline.chroma import get_collection
    from s3sync_dagster.pipeline.embedding import EmbeddingSpec
    from s3sync_dagster.pipeline.store import embedded_client

    function = EmbeddingSpec().build()
    collection = get_collection(embedded_client(large), "large-chunks", function)  # type: ignore[arg-type]
    timed: dict[str, Any] = {"chunks": collection.count()}
    for name, queries in sets.items():
        timed[name] = search_cost.latency(
            collection, queries[:LATENCY_PROBES], {"default": FUSION}, TOP, function, shown=True
        )
    return timed


def measure_crowded(workdir: Path, s3: Any, endpoint_url: str) -> dict[str, Any]:
    """The crowded store (the paraphrase pages and the changelog), synced unless there, and its two sets."""
    import gzip

    pages = {probe.object_key: (retrieval.HTML_ROOT / probe.page).read_bytes() for probe in hybrid.load_paraphrase()}
    page = CROWD_KEY.removeprefix("html/")
    pages[CROWD_KEY] = gzip.decompress((retrieval.HTML_ROOT / f"{page}.gz").read_bytes())
    common.fill_bucket(s3, CROWD_BUCKET, pages)
    store = synced_store("crowded", workdir, endpoint_url, CROWD_BUCKET)
    sets = {name: question_probes(store, load_questions(name, "html/"))[0] for name in ("paraphrase", "changelog")}
    measured = measure_store(store, sets)
    measured["crowd_share"] = store.object_keys.count(CROWD_KEY) / max(1, len(store.object_keys))
    return measured


def measure(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": common.machine(), "stores": {}}
    server = start()
    try:
        s3 = common.s3_client(server.endpoint_url)
        fresh = not (workdir / "python" / "chroma").exists()
        if args.no_first:
            pass
        elif fresh or (args.before and not (workdir / "python-before" / "chroma").exists()):
            retrieval.fill_corpus(
                server.endpoint_url, args.files, args.seed, retrieval.MAX_BYTES, args.semantic, args.paraphrase
            )
        stores = [] if args.no_first else [synced_store("python", workdir, server.endpoint_url, retrieval.BUCKET)]
        if args.before and not args.no_first:
            stores.append(
                synced_store("python-before", workdir, server.endpoint_url, retrieval.BUCKET, before=args.before)
            )
        for store in stores:
            # The probes' answers are chunk ids of their own store: the sets are made for each.
            sets = first_sets(store, args.files, args.probes, args.seed, args.semantic)
            result["stores"][store.name] = measure_store(store, sets)
            if args.large and store.name == "python":
                queries = {name: [probe.text for probe in probes] for name, probes in sets.items()}
                result["stores"][store.name]["large"] = large_latency(args.large, queries)
                # `s3sync query` in the terminal: its own process, and answered by the resident one (warm).
                from benchmarks.retrieval import search_cost

                asked = [probe.text for probe in sets["paraphrase"][:2]]
                result["stores"][store.name]["command_wall"] = search_cost.command_wall(
                    workdir / store.name / "config.yaml", retrieval.SOURCE, asked, 9
                )
        if args.crowd:
            result["stores"]["crowded"] = measure_crowded(workdir, s3, server.endpoint_url)
        for corpus in args.second or []:
            from benchmarks.retrieval import second_corpus

            # Each corpus in a bucket of its own name (Django's in "second", where its store was first synced).
            bucket = "second" if corpus == "django" else corpus
            common.fill_bucket(s3, bucket, second_corpus.load(corpus=corpus))
            questions = load_questions(corpus)
            names = [corpus, *([f"{corpus}-before"] if args.before else [])]
            for name, before in zip(names, [None, args.before], strict=False):
                store = synced_store(name, workdir, server.endpoint_url, bucket, before=before)
                probes, left_out = question_probes(store, questions)
                result["stores"][name] = measure_store(store, {corpus: probes})
                result["stores"][name]["left_out"] = left_out
                if args.large and before is None:
                    result["stores"][name]["large"] = large_latency(args.large, {name: [p.text for p in probes]})
    finally:
        server.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval.answers", description=__doc__)
    parser.add_argument("workdir", type=Path)
    parser.add_argument(
        "--second",
        action="append",
        help="a corpus of benchmarks/retrieval/second_corpus.py and its questions (benchmarks/probes/NAME.json); repeatable",
    )
    parser.add_argument("--no-first", action="store_true", help="the second corpus only")
    parser.add_argument("--before", help="a git revision whose engine syncs each corpus again ('today')")
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--probes", type=int, default=1200)
    parser.add_argument("--semantic", type=int, default=hybrid.SEMANTIC_PROBES)
    parser.add_argument("--paraphrase", type=int, help="paraphrase pages' questions added to the corpus (all)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--crowd", action="store_true", help="a store where the changelog crowds the rest")
    parser.add_argument(
        "--large", type=Path, help="benchmarks.retrieval.search_cost's store of 100,000 chunks: hybrid p50/p95"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    result = measure(args.workdir, args)
    (args.workdir / "answers.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, default=str))
    print(markdown(result))


if __name__ == "__main__":
    main()
