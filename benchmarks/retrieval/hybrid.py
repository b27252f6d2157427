"""Hybrid search measured (section 7, issue 26): which fusion of the dense and lexical rankings to keep.

On the collection `retrieval.py` synced with the default budget:

1. every probe asks once for each side's candidates, `POOL` of each (`search.dense_ranking` by the
   collection's embedding function, the engine's own; `search.lexical_ranking` by Chroma's full-text
   index), and every fusion variant is computed offline from those lists with `search.fuse`: a variant
   with a pool of p candidates per side reads the first p of each list, which is what `search.search`
   would have asked for;
2. two probe sets: the known-item probes of `retrieval.py` (a sentence of a chunk) and semantic probes:
   the first sentence of the library reference's description of a standard-library function
   (`<dl class="py function">`) asking for the chunk of that module's source holding `def function(`;
   a probe whose sentence appears word for word in any stored chunk (a docstring copied into the
   reference, the reference page itself in the corpus) is left out: it would be a known-item probe;
3. the winner: the variant with the best mean recall@5 over the two sets among those whose semantic
   recall@5 is not below dense's (ties: mean recall@1, then the smaller pool);
4. what it costs (search_cost.py): query latency of `search.search` per mode on that collection and on
   a synthetic one of `large` chunks, and what Chroma's full-text index costs the writes.
"""

from __future__ import annotations

import html
import json
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from benchmarks.retrieval import search_cost
from s3sync_dagster.pipeline import search
from s3sync_dagster.pipeline.lexicon import query_terms, term_pattern
from s3sync_dagster.pipeline.search import FUSION, Candidate, Fusion, fuse, fuse_scored, scored_candidates

POOL = 50  # candidates each side offers per probe, asked once
POOLS = (10, 20, 50)  # the candidates per side the variants read (search.search asks for Fusion.pool(n))
# Lexical weights; 0.6 joined after a first run of this benchmark put the best between 0.5 and 0.7.
WEIGHTS = (0.3, 0.5, 0.6, 0.7)
RRF_K = 60
TOP = 5  # results a query returns (search.search's default n)
SEMANTIC_PROBES = 160  # asked for before the verbatim ones are left out
PER_MODULE = 3  # semantic probes from one module at most
MIN_QUERY_WORDS, MAX_QUERY_WORDS = 5, 40
LATENCY_QUERIES = 60
# A function documented under one module and defined in another.
MODULE_FILES = {"os.path": "posixpath"}
_FUNCTION_ENTRY = re.compile(
    r'<dl class="py function">\s*((?:<dt\b[^>]*>(?:(?!</dt>).)*</dt>\s*)+)<dd>\s*<p>((?:(?!</p>).)*)</p>', re.S
)
_DT_ID = re.compile(r'<dt\b[^>]*\bid="([\w.]+)"')
_TAG = re.compile(r"<[^>]+>")
_FIRST_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
_NON_WORD = re.compile(r"\W+")


def words_of(text: str) -> str:
    """The text's words, lower-cased, one space apart: "every line in *text*." -> "every line in text"."""
    return " ".join(_NON_WORD.split(text.lower())).strip()


# --- semantic probes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SemanticProbe:
    query: str
    name: str  # as documented: "textwrap.dedent"
    function: str  # "dedent"
    object_key: str  # where it is defined: "py/textwrap.py"


def documented_functions(html_root: Path) -> list[tuple[str, str, str]]:
    """(module, function, first sentence of its description) for every function of the library reference."""
    found = []
    for page in sorted((html_root / "library").glob("*.html")):
        for entry in _FUNCTION_ENTRY.finditer(page.read_text(errors="replace")):
            ident = _DT_ID.search(entry.group(1))
            if not ident or "." not in ident.group(1):
                continue
            module, function = ident.group(1).rsplit(".", 1)
            paragraph = " ".join(html.unescape(_TAG.sub("", entry.group(2))).split())
            found.append((module, function, _FIRST_SENTENCE_END.split(paragraph, 1)[0]))
    return found


def semantic_candidates(html_root: Path, py_files: dict[str, Path]) -> dict[str, list[SemanticProbe]]:
    """Per object key (`py/...`), the probes of the functions its module defines at top level (`def f(`),
    where the reference's sentence is not in the module's source word for word; `py_files` are the
    standard-library files the corpus may take, by object key."""
    by_key: dict[str, list[SemanticProbe]] = {}
    sources: dict[str, tuple[str, str]] = {}
    seen: set[str] = set()
    for module, function, sentence in documented_functions(html_root):
        name = f"{module}.{function}"
        if name in seen or not MIN_QUERY_WORDS <= len(sentence.split()) <= MAX_QUERY_WORDS:
            continue
        seen.add(name)
        relative = MODULE_FILES.get(module, module).replace(".", "/")
        object_key = next((key for key in (f"py/{relative}.py", f"py/{relative}/__init__.py") if key in py_files), None)
        if object_key is None:
            continue
        if object_key not in sources:
            text = py_files[object_key].read_text()
            sources[object_key] = (text, words_of(text))
        text, text_words = sources[object_key]
        if re.search(rf"^def {re.escape(function)}\(", text, re.M) and words_of(sentence) not in text_words:
            by_key.setdefault(object_key, []).append(SemanticProbe(sentence, name, function, object_key))
    return by_key


def choose_semantic(
    html_root: Path, py_files: dict[str, Path], sampled: set[str], count: int, seed: int
) -> tuple[list[SemanticProbe], dict[str, bytes]]:
    """Up to `count` probes, at most PER_MODULE a module: first from the modules already sampled, then from
    others (in a seeded order), whose files are returned to be added to the corpus: {object_key: bytes}."""
    rng = random.Random(seed)
    by_key = semantic_candidates(html_root, py_files)
    present = [key for key in sorted(by_key) if key in sampled]
    others = [key for key in sorted(by_key) if key not in sampled]
    rng.shuffle(others)
    chosen: list[SemanticProbe] = []
    added: dict[str, bytes] = {}
    for object_key in [*present, *others]:
        if len(chosen) >= count:
            break
        probes = rng.sample(by_key[object_key], min(PER_MODULE, len(by_key[object_key])))
        chosen += probes[: count - len(chosen)]
        if object_key not in sampled:
            added[object_key] = py_files[object_key].read_bytes()
    return sorted(chosen, key=lambda probe: probe.name), added


def semantic_targets(
    probes: list[SemanticProbe], ids: list[str], documents: list[str], object_keys: list[str]
) -> tuple[list[SemanticProbe], list[set[str]], dict[str, int]]:
    """The probes kept, each with its target chunks (of its module, holding `def function(`), and how many
    were left out: their sentence in a stored chunk word for word, or no chunk holding the def."""
    chunk_words = [words_of(document) for document in documents]
    kept: list[SemanticProbe] = []
    targets: list[set[str]] = []
    left_out = {"verbatim": 0, "no_target": 0}
    for probe in probes:
        query = words_of(probe.query)
        if any(query in text for text in chunk_words):
            left_out["verbatim"] += 1
            continue
        definition = re.compile(rf"\bdef {re.escape(probe.function)}\(")
        found = {
            chunk_id
            for chunk_id, document, object_key in zip(ids, documents, object_keys, strict=True)
            if object_key == probe.object_key and definition.search(document)
        }
        if not found:
            left_out["no_target"] += 1
            continue
        kept.append(probe)
        targets.append(found)
    return kept, targets, left_out


def term_overlap(query: str, document: str) -> float:
    """The share of the query's looked-up terms (terms.query_terms) that the document holds as whole words."""
    looked_up = query_terms(query)
    if not looked_up:
        return 0.0
    return sum(bool(re.search(term_pattern(term), document)) for term in looked_up) / len(looked_up)


# --- paraphrase probes (issue 36) -----------------------------------------------------------------

PARAPHRASE_FILE = Path(__file__).parents[1] / "probes" / "paraphrase.json"
_MARKDOWN_LINK = re.compile(r"\]\([^)]*\)")


@dataclass(frozen=True)
class ParaphraseProbe:
    """A question in a user's own words (benchmarks/probes/paraphrase.json, written from the pages alone,
    before any ranking was seen), answered on one page of the python3.11-doc HTML by the passage holding
    `anchor` (6-12 words of its prose)."""

    question: str
    page: str  # "howto/sorting.html"
    kind: str  # faq, howto, tutorial
    anchor: str

    @property
    def object_key(self) -> str:
        return f"html/{self.page}"


def load_paraphrase(count: int | None = None) -> list[ParaphraseProbe]:
    """The paraphrase probes, all of them or the first `count` of the smallest pages (a smoke run's few)."""
    raw = json.loads(PARAPHRASE_FILE.read_text(encoding="utf-8"))
    probes = [ParaphraseProbe(p["question"], p["page"], p["kind"], p["anchor"]) for p in raw["probes"]]
    if count is None or count >= len(probes):
        return probes
    root = Path("/usr/share/doc/python3.11/html")
    size = {page: (root / page).stat().st_size for page in {probe.page for probe in probes}}
    return sorted(probes, key=lambda probe: (size[probe.page], probe.page, probe.question))[:count]


def answer_words(text: str) -> str:
    """A chunk's words as an anchor is matched against them: markdown link targets dropped, then words_of."""
    return words_of(_MARKDOWN_LINK.sub("]", text))


class Anchored(Protocol):
    """A question answered on one object by the passage holding its anchor (ParaphraseProbe, answers.Question)."""

    @property
    def object_key(self) -> str: ...

    @property
    def anchor(self) -> str: ...


AnchoredT = TypeVar("AnchoredT", bound=Anchored)


def paraphrase_targets(
    probes: Sequence[AnchoredT], ids: list[str], documents: list[str], object_keys: list[str]
) -> tuple[list[AnchoredT], list[set[str]], dict[str, int]]:
    """Each probe's answer chunks: those of its page holding its anchor's words in a row; where the chunking
    cut the anchor in two, those holding its first or its last half. A probe whose anchor no chunk of its page
    holds (the conversion changed its words) is left out and counted."""
    words = {chunk_id: answer_words(document) for chunk_id, document in zip(ids, documents, strict=True)}
    by_page: dict[str, list[str]] = {}
    for chunk_id, object_key in zip(ids, object_keys, strict=True):
        by_page.setdefault(object_key, []).append(chunk_id)
    kept: list[AnchoredT] = []
    targets: list[set[str]] = []
    left_out = {"anchor_not_found": 0, "anchor_split": 0}
    for probe in probes:
        anchor = words_of(probe.anchor).split()
        chunks = by_page.get(probe.object_key, [])
        whole = {chunk_id for chunk_id in chunks if " ".join(anchor) in words[chunk_id]}
        if not whole:
            half = len(anchor) // 2
            whole = {
                chunk_id
                for chunk_id in chunks
                if words[chunk_id].endswith(" ".join(anchor[:half]))
                or words[chunk_id].startswith(" ".join(anchor[half:]))
            }
            left_out["anchor_split"] += bool(whole)
        if not whole:
            left_out["anchor_not_found"] += 1
            continue
        kept.append(probe)
        targets.append(whole)
    return kept, targets, left_out


# --- candidates and fusion ------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """One probe's candidates, as `search.scored_candidates` gives them: each side's POOL best, every one
    scored on both sides; (chunk id, distance, BM25, dense rank or None, lexical rank or None), and the ids of
    those holding the query word for word (`search.Candidates.quoted`)."""

    rows: list[tuple[str, float, float, int | None, int | None]]
    coverage: float
    quoted: tuple[str, ...] = ()  # sorted: the lists are written as JSON

    @property
    def dense(self) -> list[tuple[str, float]]:  # (chunk id, distance), nearest first
        ranked = sorted((row for row in self.rows if row[3] is not None), key=lambda row: row[3] or 0)
        return [(row[0], row[1]) for row in ranked]

    @property
    def lexical(self) -> list[tuple[str, float]]:  # (chunk id, BM25 score), best first
        ranked = sorted((row for row in self.rows if row[4] is not None), key=lambda row: row[4] or 0)
        return [(row[0], row[2]) for row in ranked]


def gather(
    collection: Any, queries: Sequence[str], pool: int = POOL, embedding_function: Any = None
) -> tuple[list[Candidates], dict[str, float]]:
    """Each query's candidates from both sides, scored on both, and the seconds that took in all."""
    out = []
    started = time.perf_counter()
    for query in queries:
        vector = embedding_function([query])[0] if embedding_function is not None else None
        found = scored_candidates(collection, query, pool, None, vector)
        rows = [(row.chunk_id, row.distance, row.bm25, row.dense_rank, row.lexical_rank) for row in found.rows]
        out.append(Candidates(rows, found.coverage, tuple(sorted(found.quoted))))
    return out, {"scored": time.perf_counter() - started}


# Issue 36: every candidate scored on both sides; the lexical weight static, or adaptive (times the query's
# coverage to a power). Written down before any figure of them was seen, as the rule below.
SCORED_WEIGHTS = (0.3, 0.5, 0.7, 0.9)
COVERAGE_POWERS: tuple[float | None, ...] = (None, 1.0, 2.0, 4.0)
SCORED_POOLS = (10, 20)


def variants() -> list[Fusion]:
    """Every fusion tried: RRF (k 60) and relative-score on the two rankings as they are, each at every
    lexical weight and pool size; `scored` (both sides) at every weight, coverage power and pool; and
    search.FUSION (the current default) where it is none of those."""
    tried = [
        Fusion(method=method, lexical_weight=weight, k=RRF_K, pool_factor=pool // TOP, min_pool=pool)
        for pool in POOLS
        for method in ("rrf", "relative")
        for weight in WEIGHTS
    ]
    tried += [
        Fusion(method="scored", lexical_weight=weight, pool_factor=pool // TOP, min_pool=pool, coverage_power=power)
        for pool in SCORED_POOLS
        for weight in SCORED_WEIGHTS
        for power in COVERAGE_POWERS
    ]
    return tried if FUSION in tried else [*tried, FUSION]


def describe_fusion(fusion: Fusion) -> str:
    if fusion.method == "scored":
        weight = (
            f"lexical {fusion.lexical_weight:g}"
            if fusion.coverage_power is None
            else f"lexical {fusion.lexical_weight:g} x coverage^{fusion.coverage_power:g}"
        )
        return f"both sides scored, {weight}, pool {fusion.pool(TOP)}"
    method = f"RRF k={fusion.k}" if fusion.method == "rrf" else "relative score"
    return f"{method}, lexical {fusion.lexical_weight:g}, pool {fusion.pool(TOP)}"


def ranked(candidates: Candidates, mode: str, fusion: Fusion | None = None, n: int = TOP) -> list[str]:
    """The top n chunk ids a mode returns from these candidates (hybrid: by `fusion`, from its pool of each)."""
    if mode == "dense":
        return [chunk_id for chunk_id, _ in candidates.dense[:n]]
    if mode == "lexical":
        return [chunk_id for chunk_id, _ in candidates.lexical[:n]]
    assert fusion is not None
    pool = fusion.pool(n)
    if fusion.method == "scored":
        inside = [row for row in candidates.rows if (row[3] or pool + 1) <= pool or (row[4] or pool + 1) <= pool]
        scored = search.Candidates(
            tuple(Candidate(row[0], "", {}, row[1], row[2], row[3], row[4]) for row in inside),
            candidates.coverage,
            frozenset(candidates.quoted).intersection(row[0] for row in inside),
        )
        return [hit.chunk_id for hit in fuse_scored(scored, n, fusion)]

    def rows(side: list[tuple[str, float]]) -> list[tuple[str, str, dict[str, Any], float]]:
        return [(chunk_id, "", {}, score) for chunk_id, score in side[:pool]]

    return [hit.chunk_id for hit in fuse(rows(candidates.dense), rows(candidates.lexical), n, fusion)]


def _rate(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def scores(found: list[list[bool]], objects: list[list[bool]], groups: dict[str, list[int]]) -> dict[str, Any]:
    """Recall@1, @5 and @10, MRR@10 and right-object@5 over all probes and per group; `found[i]` says which
    of probe i's results hit, `objects[i]` which are of the probe's object."""

    def group(members: list[int]) -> dict[str, Any]:
        return {
            "n": len(members),
            "recall_at_1": _rate([any(found[i][:1]) for i in members]),
            "recall_at_5": _rate([any(found[i][:5]) for i in members]),
            "recall_at_10": _rate([any(found[i][:10]) for i in members]),
            "mrr_at_10": (
                sum(next((1 / rank for rank, hit in enumerate(found[i][:10], 1) if hit), 0.0) for i in members)
                / len(members)
                if members
                else None
            ),
            "object_at_5": _rate([any(objects[i][:5]) for i in members]),
        }

    result = group(list(range(len(found))))
    result["groups"] = {name: group(members) for name, members in groups.items()}
    return result


@dataclass(frozen=True)
class ProbeSet:
    """Probes of one kind, their candidates, how to tell a hit (`hit(i, chunk_id)`) and the probe's own
    object (`obj(i, chunk_id)`: the chunk is of the object the answer is in)."""

    name: str
    candidates: list[Candidates]
    hit: Callable[[int, str], bool]
    groups: dict[str, list[int]]
    obj: Callable[[int, str], bool] = lambda i, chunk_id: False

    def evaluate(self, mode: str, fusion: Fusion | None = None) -> dict[str, Any]:
        top = [ranked(candidates, mode, fusion, DEEP) for candidates in self.candidates]
        found = [[self.hit(i, chunk_id) for chunk_id in ids] for i, ids in enumerate(top)]
        objects = [[self.obj(i, chunk_id) for chunk_id in ids] for i, ids in enumerate(top)]
        return scores(found, objects, self.groups)


DEEP = 10  # results read per probe: recall@10 and MRR@10


def _mean(values: Sequence[float | None]) -> float:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else 0.0


RULE = (
    "first, the variants that meet every figure issue 36 asks of a fusion (paraphrase recall@5 at least "
    "dense's + 0.02, its recall@1 and MRR@10 at least dense's; known-item recall@5 >= 0.97 and recall@1 >= 0.85 "
    "in every third; semantic recall@1 and @5 at least dense's); among them (else among those failing the "
    "fewest), the best mean recall@5 over the sets present (each set weighs the same); ties go to the better "
    "mean MRR@10, then the smaller pool"
)


def shortfalls(figures: dict[str, Any], dense: dict[str, Any]) -> list[str]:
    """Which of RULE's figures a variant misses, in words (none: it meets them all)."""
    missed = []
    para, dense_para = figures.get("paraphrase"), dense.get("paraphrase") or {}
    if para and para["n"]:
        if (para["recall_at_5"] or 0) < (dense_para.get("recall_at_5") or 0) + 0.02 - 1e-9:
            missed.append("paraphrase @5")
        if (para["recall_at_1"] or 0) < (dense_para.get("recall_at_1") or 0) - 1e-9:
            missed.append("paraphrase @1")
        if (para["mrr_at_10"] or 0) < (dense_para.get("mrr_at_10") or 0) - 1e-9:
            missed.append("paraphrase MRR")
    known = figures.get("known")
    if known and known["n"]:
        for third, group in known["groups"].items():
            if group["n"] and ((group["recall_at_5"] or 0) < 0.97 or (group["recall_at_1"] or 0) < 0.85):
                missed.append(f"known {third}")
    sem, dense_sem = figures.get("semantic"), dense.get("semantic") or {}
    below = (
        sem
        and sem["n"]
        and any((sem[metric] or 0) < (dense_sem.get(metric) or 0) - 1e-9 for metric in ("recall_at_1", "recall_at_5"))
    )
    if below:
        missed.append("semantic")
    return missed


def compare(sets: list[ProbeSet]) -> dict[str, Any]:
    """Dense, lexical and every variant on every set; the winner by RULE."""
    modes = {mode: {probe_set.name: probe_set.evaluate(mode) for probe_set in sets} for mode in ("dense", "lexical")}
    rows: list[dict[str, Any]] = []
    for fusion in variants():
        figures = {probe_set.name: probe_set.evaluate("hybrid", fusion) for probe_set in sets}
        present = [figures[probe_set.name] for probe_set in sets if probe_set.candidates]
        missed = shortfalls(figures, modes["dense"])
        rows.append(
            {
                "label": describe_fusion(fusion),
                "fusion": asdict(fusion),
                "repr": repr(fusion),
                "pool": fusion.pool(TOP),
                "default": fusion == FUSION,
                "sets": figures,
                "mean_recall_at_5": _mean([group["recall_at_5"] for group in present]),
                "mean_recall_at_1": _mean([group["recall_at_1"] for group in present]),
                "mean_mrr_at_10": _mean([group["mrr_at_10"] for group in present]),
                "missed": missed,
                "keeps_dense_semantic": "semantic" not in missed,
            }
        )
    winner = min(
        rows, key=lambda row: (len(row["missed"]), -row["mean_recall_at_5"], -row["mean_mrr_at_10"], row["pool"])
    )
    return {
        "modes": modes,
        "variants": rows,
        "winner": winner["label"],
        "rule": RULE,
        "none_eligible": bool(winner["missed"]),
    }


# --- everything -----------------------------------------------------------------------------------


def measure(
    collection: Any,
    store: Path,
    ids: list[str],
    documents: list[str],
    object_keys: list[str],
    known: Sequence[Any],
    semantic: list[SemanticProbe],
    workdir: Path,
    large: int = search_cost.LARGE_CHUNKS,
    seed: int = 7,
    paraphrase: Sequence[ParaphraseProbe] = (),
    config: Path | None = None,
    source: str | None = None,
    costs: bool = True,
    function: Any = None,
) -> dict[str, Any]:
    """Section 7's hybrid figures on a synced collection (opened with the engine's embedding function, which
    embeds the queries: `function`, the default one's if None);
    `known` are retrieval.py's known-item probes (`.sentence`, `.third`, `.object_key`); with the `config`
    that synced it and its `source`, the wall time of `s3sync query` on it too. costs=False: the quality
    figures alone (no latency, no synthetic collection, no full-text index costs)."""
    from s3sync_dagster.pipeline.embedding import EmbeddingSpec

    load_before = os.getloadavg()[0]
    function = function or EmbeddingSpec().build()
    normalised = {chunk_id: " ".join(document.split()) for chunk_id, document in zip(ids, documents, strict=True)}
    text_of = dict(zip(ids, documents, strict=True))
    object_of = dict(zip(ids, object_keys, strict=True))
    kept, targets, left_out = semantic_targets(semantic, ids, documents, object_keys)
    asked, answers, para_left_out = paraphrase_targets(paraphrase, ids, documents, object_keys)
    known_candidates, known_seconds = gather(collection, [probe.sentence for probe in known], POOL, function)
    semantic_candidates_, semantic_seconds = gather(collection, [probe.query for probe in kept], POOL, function)
    para_candidates, para_seconds = gather(collection, [probe.question for probe in asked], POOL, function)
    thirds = {
        third: [i for i, probe in enumerate(known) if probe.third == third] for third in ("first", "middle", "last")
    }
    overlaps = [
        max(term_overlap(probe.query, text_of[chunk_id]) for chunk_id in found)
        for probe, found in zip(kept, targets, strict=True)
    ]
    para_overlaps = [
        max(term_overlap(probe.question, text_of[chunk_id]) for chunk_id in found)
        for probe, found in zip(asked, answers, strict=True)
    ]
    low = [i for i, overlap in enumerate(overlaps) if overlap < 0.5]
    sets = [
        ProbeSet(
            "known",
            known_candidates,
            lambda i, chunk_id: known[i].sentence in normalised[chunk_id],
            thirds,
            lambda i, chunk_id: object_of[chunk_id] == known[i].object_key,
        ),
        ProbeSet(
            "semantic",
            semantic_candidates_,
            lambda i, chunk_id: chunk_id in targets[i],
            {"under half the terms in the target": low},
            lambda i, chunk_id: object_of[chunk_id] == kept[i].object_key,
        ),
        ProbeSet(
            "paraphrase",
            para_candidates,
            lambda i, chunk_id: chunk_id in answers[i],
            {kind: [i for i, probe in enumerate(asked) if probe.kind == kind] for kind in ("faq", "howto", "tutorial")},
            lambda i, chunk_id: object_of[chunk_id] == asked[i].object_key,
        ),
    ]
    result = compare(sets)
    # The lists themselves, so another fusion can be tried on them later without asking Chroma again.
    (workdir / "hybrid-candidates.json").write_text(
        json.dumps(
            {
                "known": [[probe.sentence, probe.third, probe.object_key] for probe in known],
                "semantic": [[asdict(probe), sorted(found)] for probe, found in zip(kept, targets, strict=True)],
                "paraphrase": [[asdict(probe), sorted(found)] for probe, found in zip(asked, answers, strict=True)],
                "object_keys": object_of,
                "candidates": {probe_set.name: [asdict(item) for item in probe_set.candidates] for probe_set in sets},
            }
        )
    )
    winner = next(fusion for fusion in variants() if describe_fusion(fusion) == result["winner"])
    probes_n = max(1, len(known) + len(kept) + len(asked))
    result.update(
        {
            "pool": POOL,
            "top": TOP,
            "known_n": len(known),
            "semantic": {
                "asked": len(semantic),
                "kept": len(kept),
                "left_out": left_out,
                "modules": len({probe.object_key for probe in kept}),
                "mean_term_overlap": _mean(overlaps),
                "low_overlap": len(low),
                "examples": [asdict(probe) for probe in kept[:: max(1, len(kept) // 5)][:5]],
            },
            "paraphrase": {
                "asked": len(paraphrase),
                "kept": len(asked),
                "left_out": para_left_out,
                "pages": len({probe.page for probe in asked}),
                "mean_term_overlap": _mean(para_overlaps),
                "examples": [asdict(probe) for probe in asked[:: max(1, len(asked) // 5)][:5]],
            },
            "gather_s": {
                "scored": (known_seconds["scored"] + semantic_seconds["scored"] + para_seconds["scored"]) / probes_n
            },
        }
    )
    if not costs:
        return result
    fusions = {"default": FUSION}
    if winner != FUSION:
        fusions["winner"] = winner
    queries = [probe.sentence for probe in known][:: max(1, len(known) // (LATENCY_QUERIES * 2 // 3))]
    queries = queries[: LATENCY_QUERIES * 2 // 3] + [probe.query for probe in kept][: LATENCY_QUERIES // 3]
    result["latency"] = {"chunks": len(ids), "modes": search_cost.latency(collection, queries, fusions, TOP)}
    if config is not None and source is not None:
        result["command_wall"] = search_cost.command_wall(config, source, queries)
    big, built = search_cost.large_collection(workdir / "large", documents, large, seed)
    result["latency_large"] = {**built, "modes": search_cost.latency(big, queries, fusions, TOP)}
    result["latency_large"].update(search_cost.readers_latency(big, queries, TOP))
    result["load_average"] = [load_before, os.getloadavg()[0]]
    result["fts"] = {
        **search_cost.fts_cost(workdir / "fts", collection, ids),
        "store": search_cost.fts_bytes(store),
    }
    return result


# --- report ---------------------------------------------------------------------------------------


def _r(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def section_lines(result: dict[str, Any]) -> list[str]:
    semantic, modes = result["semantic"], result["modes"]
    winner = next(row for row in result["variants"] if row["label"] == result["winner"])
    default = next(row for row in result["variants"] if row["default"])
    lines = [
        "",
        "### Hybrid search: dense, lexical and their fusion (issues 26, 36)",
        "",
        f"On the collection above with max_tokens unset. Each probe asked once for {result['pool']} candidates "
        "of each side, every one scored on both (`search.scored_candidates`: the dense side by the collection's "
        "embedding function, the engine's, and a dense query narrowed to the lexical side's candidates for their "
        "distances; the lexical side by each query term looked up whole-word in Chroma's full-text index, then "
        "BM25 over the chunks holding the rarest terms and over the dense side's), and every fusion variant was "
        f"computed offline from those, top {result['top']} (10 for recall@10 and MRR@10), a variant with a pool "
        "of p reading the first p candidates of each side, as `search.search` would ask for them (BM25's "
        "average length is that of all the candidates read). Known-item probes are the "
        f"{result['known_n']} above. Semantic probes: the first sentence of the library reference's "
        'description of a standard-library function (`<dl class="py function">` in the python3.11-doc HTML) '
        "asks for the chunk of that module's source holding `def function(`; the modules were added to the "
        f"corpus where the sample lacked them. {semantic['asked']} were drawn (at most {PER_MODULE} a module); "
        f"{semantic['left_out']['verbatim']} whose sentence is in some stored chunk word for word (a docstring "
        "the reference copies, the reference page itself) and "
        f"{semantic['left_out']['no_target']} with no chunk holding the def were left out, leaving "
        f"{semantic['kept']} from {semantic['modules']} modules; on average a target holds "
        f"{semantic['mean_term_overlap'] * 100:.0f}% of its query's looked-up terms ({semantic['low_overlap']} "
        "under half). Winner: " + result["rule"] + ".",
        "",
        "| mode | known-item @1 | @5 | @5 first third | @5 middle | @5 last third | semantic @1 | @5 | "
        "semantic @5, under half the terms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [
        ("dense", modes["dense"]),
        ("lexical", modes["lexical"]),
        (f"hybrid, current default ({default['label']})", default["sets"]),
        (f"hybrid, winner ({winner['label']})", winner["sets"]),
    ]
    for label, figures in rows:
        known, sem = figures["known"], figures["semantic"]
        groups = known["groups"]
        lines.append(
            f"| {label} | {_r(known['recall_at_1'])} | {_r(known['recall_at_5'])} | "
            f"{_r(groups['first']['recall_at_5'])} | {_r(groups['middle']['recall_at_5'])} | "
            f"{_r(groups['last']['recall_at_5'])} | {_r(sem['recall_at_1'])} | {_r(sem['recall_at_5'])} | "
            f"{_r(sem['groups']['under half the terms in the target']['recall_at_5'])} |"
        )
    para = result["paraphrase"]
    lines += [
        "",
        f"Paraphrase probes (issue 36): {para['asked']} questions in a user's own words about the faq/, howto/ and "
        "tutorial/ pages of the python3.11-doc HTML (benchmarks/probes/paraphrase.json, written from the pages "
        "alone before any ranking was seen; the pages are added to the corpus where the sample lacks them), each "
        "answered by the chunks of its page holding its anchor passage (where the chunking cut the anchor in two, "
        f"those holding either half: {para['left_out']['anchor_split']}); {para['left_out']['anchor_not_found']} "
        f"whose anchor no chunk holds were left out, leaving {para['kept']} over {para['pages']} pages; on average "
        f"an answer chunk holds {para['mean_term_overlap'] * 100:.0f}% of its question's looked-up terms. Every "
        "set, every metric (recall@k: an answer chunk in the top k; MRR@10; object@5: a chunk of the answer's "
        "object in the top 5):",
        "",
        "| mode | set | n | recall@1 | recall@5 | recall@10 | MRR@10 | object@5 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, figures in rows:
        for name in ("paraphrase", "known", "semantic"):
            group = figures[name]
            lines.append(
                f"| {label} | {name} | {group['n']} | {_r(group['recall_at_1'])} | {_r(group['recall_at_5'])} | "
                f"{_r(group['recall_at_10'])} | {_r(group['mrr_at_10'])} | {_r(group['object_at_5'])} |"
            )
    lines += [
        "",
        "Every variant (RRF's k is 60; a pool of p is `Fusion(pool_factor=p // 5, min_pool=p)` at n = 5; "
        "misses: the figures of the rule it does not meet):",
        "",
        "| fusion | known @1 | known @5 | first | middle | last | semantic @1 | semantic @5 | paraphrase @1 | "
        "paraphrase @5 | paraphrase MRR@10 | mean @5 | misses |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in result["variants"]:
        known, sem, par = row["sets"]["known"], row["sets"]["semantic"], row["sets"]["paraphrase"]
        groups = known["groups"]
        marks = (" (default)" if row["default"] else "") + (" **winner**" if row["label"] == result["winner"] else "")
        lines.append(
            f"| {row['label']}{marks} | {_r(known['recall_at_1'])} | {_r(known['recall_at_5'])} | "
            f"{_r(groups['first']['recall_at_5'])} | {_r(groups['middle']['recall_at_5'])} | "
            f"{_r(groups['last']['recall_at_5'])} | {_r(sem['recall_at_1'])} | {_r(sem['recall_at_5'])} | "
            f"{_r(par['recall_at_1'])} | {_r(par['recall_at_5'])} | {_r(par['mrr_at_10'])} | "
            f"{row['mean_recall_at_5']:.3f} | {', '.join(row['missed']) or 'none'} |"
        )
    dense_sem = modes["dense"]["semantic"]["recall_at_5"]
    verdict = (
        f"no variant meets every figure of the rule: the winner misses {', '.join(winner['missed'])}"
        if result["none_eligible"]
        else "it meets every figure of the rule"
    ) + (
        f"; its semantic recall@5 is {_r(winner['sets']['semantic']['recall_at_5'])} against dense's "
        f"{_r(dense_sem)} and lexical's {_r(modes['lexical']['semantic']['recall_at_5'])}; its known-item recall@1 "
        f"is {_r(winner['sets']['known']['recall_at_1'])} against lexical's "
        f"{_r(modes['lexical']['known']['recall_at_1'])}"
    )
    lines += [
        "",
        f"Winner: `{winner['repr']}`; {verdict}. With {semantic['kept']} semantic probes one probe is "
        f"{100 / max(1, semantic['kept']):.1f} points of recall.",
        "",
        f"Query latency, `search.search` n = {result['top']}, the modes taking turns query by query "
        f"({result['latency']['modes']['dense']['queries']} queries: known-item and semantic probes), on this "
        f"collection ({result['latency']['chunks']:,} chunks) and on a synthetic one of "
        f"{result['latency_large']['chunks']:,} chunks (each as many words as a real chunk, drawn at random from "
        f"all the real chunks' words; random unit vectors of dimension {result['latency_large']['dimension']}; "
        "created with the engine's embedding function, which embeds each query's text; built in "
        f"{result['latency_large']['build_s']:.0f} s). The machine's 1-minute load average was "
        f"{result['load_average'][0]:.1f} before the probes and {result['load_average'][1]:.1f} after the timings "
        "(2 cores, shared with other work: the times are of this machine under that load):",
        "",
        f"| mode | p50 ms, {result['latency']['chunks']:,} chunks | p95 ms | max ms | "
        f"p50 ms, {result['latency_large']['chunks']:,} chunks | p95 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, small in result["latency"]["modes"].items():
        big = result["latency_large"]["modes"][label]
        lines.append(
            f"| {label} | {small['p50_ms']:.0f} | {small['p95_ms']:.0f} | {small['max_ms']:.0f} | "
            f"{big['p50_ms']:.0f} | {big['p95_ms']:.0f} | {big['max_ms']:.0f} |"
        )
    readers = result["latency_large"].get("readers")
    for label, big in (readers or {}).get("modes", {}).items():
        lines.append(
            f"| {label}, as a reader of {readers['share']:.0%} of the chunks | — | — | — | "
            f"{big['p50_ms']:.0f} | {big['p95_ms']:.0f} | {big['max_ms']:.0f} |"
        )
    wall = result.get("command_wall")
    if wall:
        lines += [
            "",
            f"`s3sync query` on this collection, a fresh process each time (imports, config, store, model, a hybrid "
            f"search), p50 {wall['s3sync query']['p50_s']:.2f} s (max {wall['s3sync query']['max_s']:.2f} s) over "
            f"{wall['s3sync query']['runs']} runs, taking turns with a process that only imports chromadb: p50 "
            f"{wall['import chromadb']['p50_s']:.2f} s (max {wall['import chromadb']['max_s']:.2f} s). Answered by "
            f"the resident query process (commands/resident.py; started, and asked once, before the runs): p50 "
            f"{wall['s3sync query, resident']['p50_s']:.2f} s (max {wall['s3sync query, resident']['max_s']:.2f} s).",
        ]
    fts, store = result["fts"], result["fts"]["store"]
    refused = fts["off_query_refused"]
    lines += [
        "",
        "What the lexical side costs the writes. It stores nothing of its own: it reads the full-text index "
        "Chroma keeps of every chunk. chromadb 1.5.9 takes `Schema().delete_index(config=FtsIndexConfig(), "
        'key="#document")` for a local collection and then refuses full-text filters on it'
        + (f' ("{refused}")' if refused else " (here it did not)")
        + f", but its local store writes every text into the index all the same: "
        f"{fts['fts_rows']['off']:,} of {fts['chunks']:,} chunks written with the index off have their row in "
        f"`embedding_fulltext_search` ({fts['fts_rows']['on']:,} with it on). So it cannot be turned off "
        f"locally to save anything. The same {fts['chunks']:,} chunks ({fts['characters'] / 1e6:.1f} M characters, "
        f"stored vectors) written {fts['rounds']} times each way, taking turns: index on "
        f"{fts['on_chunks_s']:,.0f} chunks/s, off {fts['off_chunks_s']:,.0f} chunks/s (off/on throughput "
        f"{fts['off_over_on']:.2f}). A bare SQLite FTS5 trigram table (what Chroma's local index is) of the "
        f"same texts builds in {fts['bare_fts5_s']:.2f} s, {fts['bare_share_of_on'] * 100:.0f}% of the write "
        f"time with the index on, and takes {fts['bare_fts5_bytes'] / 1e6:.1f} MB. In the synced store the "
        f"index's tables take {store['fts_bytes'] / 1e6:.1f} MB of {store['sqlite_bytes'] / 1e6:.1f} MB of "
        f"SQLite ({store['fts_bytes'] / max(1, store['sqlite_bytes']) * 100:.0f}%; the HNSW vectors lie beside "
        f"it). Per query, gathering the {result['pool']} candidates of each side, each scored on both, took "
        f"{result['gather_s']['scored'] * 1000:.0f} ms on average.",
    ]
    return lines
