"""How hybrid search joins its two sides: the fusions (two rankings as they are, or every candidate scored on
both sides and weighted by how much of the query its words cover), and the candidates scored on both."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from s3sync_dagster.pipeline.chunking import CONTEXT_KEY, embedding_input
from s3sync_dagster.pipeline.lexicon import words
from s3sync_dagster.pipeline.search.dense import distances, nearest
from s3sync_dagster.pipeline.search.hits import Hit
from s3sync_dagster.pipeline.search.lexical import (
    LEXICAL_CANDIDATES,
    LEXICON_POOL_FACTOR,
    Lexical,
    average_words,
    indexed,
    lexical_side,
    lexicon_side,
)
from s3sync_dagster.pipeline.search.rows import plain_metadata, query_input, query_rows

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection


@dataclass(frozen=True)
class Fusion:
    """How hybrid merges the two sides.

    `rrf` (k) and `relative` fuse the two rankings as they are: a chunk only one side offered has nothing on
    the other (RRF: no term; relative: 0). `scored` scores every candidate of either side on both
    (`scored_candidates`: a distance for the lexical side's, a BM25 score for the dense side's), scales each
    side's scores to 0-1 over them all and sums them. The lexical side counts `lexical_weight`, or, with
    `coverage_power` set, `lexical_weight * coverage ** coverage_power` (`lexical_weight()`).
    """

    method: Literal["rrf", "relative", "scored"] = "rrf"
    lexical_weight: float = 0.5
    k: int = 60
    # Each side offers `min_pool` candidates for the first `min_pool` hits, twice as many for the next ones,
    # and so on (search.in_tiers): the ranking does not depend on the number of hits asked. `pool_factor`
    # sizes the pool of benchmarks/retrieval/hybrid.py's variants (`pool`), which rank for one n only.
    pool_factor: int = 4
    min_pool: int = 20
    coverage_power: float | None = None

    def pool(self, n: int) -> int:
        return max(self.min_pool, self.pool_factor * n)


# The two rankings fused as they are (issue 26's default): what Chroma Cloud's BM25 index, which scores only
# its own candidates, is fused with; a `scored` fusion asked of a Cloud collection runs as this.
RANKINGS_FUSION = Fusion(method="relative", lexical_weight=0.6, pool_factor=2, min_pool=10)
# Measured (benchmarks/RESULTS.md section 7, issue 53: 1,200 known-item, 126 semantic and 187 paraphrase
# probes and Django's 203 questions; 25 variants, the rule written before their figures): every candidate scored
# on both sides, the lexical side at 0.8 x coverage, 20 candidates a side. The rule put first the variants
# meeting the most of issue 53's checks (hybrid at or above dense and a plain BM25 at @1/@5/@10 on every set,
# known-item >= 0.85 / 0.97 by third, the question sets' targets), then the best mean MRR@10. A remembered
# sentence (coverage near 1) is found by its words: known-item recall@1 0.945/0.932/0.920 by third,
# recall@5 0.995/0.990/0.988; a question in the user's own words (coverage low) leans on meaning: Django's
# recall@1 0.286 (dense 0.251), semantic 0.563 (dense 0.429, BM25 0.516).
FUSION = Fusion(method="scored", lexical_weight=0.8, pool_factor=4, min_pool=20, coverage_power=1.0)
# The lexical side's best candidates whose coverage of the query is read (`Candidates.coverage`).
COVERAGE_TOP = 3
# A query of at least this many words is taken as quoted: a chunk holding them in that order comes first.
QUOTED_WORDS = 3


@dataclass(frozen=True)
class Candidate:
    """A chunk either side offered, scored on both: its dense distance to the query and its BM25 score."""

    chunk_id: str
    document: str
    metadata: Mapping[str, Any]
    distance: float
    bm25: float
    dense_rank: int | None
    lexical_rank: int | None


@dataclass(frozen=True)
class Candidates:
    """Both sides' candidates for one query, each scored on both sides; `coverage`: the most of the query's
    idf any of the lexical side's best candidates holds (0 when it offered none): how much the query's own
    words say where its answer is; `quoted`: the candidates that hold the query word for word."""

    rows: tuple[Candidate, ...]
    coverage: float
    quoted: frozenset[str] = frozenset()
    # BM25 of any text on the query's terms (the lexical side's, with its mean length): a section's chunks
    # scored together (`fuse_scored`'s sections); None where the side cannot score a text.
    score_text: Callable[[str], float] | None = None


def scored_candidates(
    collection: Collection,
    text: str,
    pool: int,
    where: Mapping[str, Any] | None = None,
    query_vector: Any = None,
) -> Candidates:
    """The pool best chunks of each side, every one scored on both: a chunk the dense side did not offer is
    given its distance, one the lexical side did not offer its BM25 score.

    The lexical side comes from the store's lexical index (pipeline/lexicon/embedded.py) when it can answer (each term's
    document frequency and the candidates, the best the filter admits under one; BM25 is computed from the
    texts), else from Chroma's full-text filter (`lexical_side`, under the filter too). With the query's vector known (query_vector),
    a lexical candidate's distance is computed from its stored vector, as Chroma's index computes it; else a
    dense query narrowed to those ids asks Chroma for it."""
    asked = query_input(text, query_vector)
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    distance: dict[str, float] = {}
    for chunk_id, document, metadata, far in nearest(collection, asked, pool, where):
        rows[chunk_id], distance[chunk_id] = (document, metadata), far
    index = indexed(collection)
    side = (
        lexicon_side(index, collection, text, max(LEXICAL_CANDIDATES, LEXICON_POOL_FACTOR * pool), where)
        if index
        else None
    )
    if side is not None and query_vector is not None:
        bm25, average = _read_lexical_best(collection, side, query_vector, pool, rows, distance)
        return _candidates(text, rows, distance, bm25, side, pool, _indexed_texts(rows), average)
    side = side or lexical_side(collection, text, pool, where)
    lexical_only = [chunk_id for chunk_id in side.candidate_ids if chunk_id not in rows]
    if lexical_only:
        got = collection.query(
            **asked, ids=lexical_only, n_results=len(lexical_only), include=["documents", "metadatas", "distances"]
        )
        for chunk_id, document, metadata, far in query_rows(got):
            rows[chunk_id], distance[chunk_id] = (document, metadata), far
    indexed_texts = _indexed_texts(rows)
    average = average_words(list(indexed_texts.values()))
    bm25 = {chunk_id: side.bm25(text, average) for chunk_id, text in indexed_texts.items()}
    return _candidates(text, rows, distance, bm25, side, pool, indexed_texts, average)


def _indexed_texts(rows: Mapping[str, tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    """BM25 and coverage count what the lexical index holds for a chunk: its context line and its text."""
    return {chunk_id: embedding_input(document, metadata) for chunk_id, (document, metadata) in rows.items()}


def _read_lexical_best(
    collection: Collection,
    side: Lexical,
    embedded: Any,
    pool: int,
    rows: dict[str, tuple[str, dict[str, Any]]],
    distance: dict[str, float],
) -> tuple[dict[str, float], float]:
    """Every chunk's BM25, the lexical side's `pool` best of its candidates added to rows (the dense side's) with
    their distances to the query's vector; returns the BM25 of the chunks in rows, and the mean length it used.

    The lexical side's candidates (LEXICAL_CANDIDATES, as lexical mode ranks them) are read by id, texts and
    metadata only, and BM25 ranks them on every word of the query; only the `pool` best not already offered by
    the dense side are read again with their vectors (`distances`: a dense query narrowed to ids reads every
    chunk's metadata, 138 ms at 100,000 chunks)."""
    lexical_only = [chunk_id for chunk_id in side.candidate_ids if chunk_id not in rows]
    read: dict[str, tuple[str, dict[str, Any]]] = {}
    if lexical_only:
        got = collection.get(ids=lexical_only, include=["documents", "metadatas"])
        for chunk_id, document, metadata in zip(
            got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True
        ):
            read[chunk_id] = (document or "", plain_metadata(metadata))
    indexed_texts = _indexed_texts({**rows, **read})
    average = average_words(list(indexed_texts.values()))
    bm25 = {chunk_id: side.bm25(text, average) for chunk_id, text in indexed_texts.items()}
    offered = [chunk_id for chunk_id in side.candidate_ids if chunk_id in indexed_texts]
    best = sorted(offered, key=lambda chunk_id: (-bm25[chunk_id], chunk_id))[:pool]
    wanted = [chunk_id for chunk_id in best if chunk_id in read]
    if wanted:
        got = collection.get(ids=wanted, include=["embeddings"])  # type: ignore[list-item]
        for chunk_id, far in zip(got["ids"], distances(collection, embedded, got["embeddings"]), strict=True):
            rows[chunk_id], distance[chunk_id] = read[chunk_id], far
    return {chunk_id: bm25[chunk_id] for chunk_id in rows}, average


def _candidates(
    text: str,
    rows: Mapping[str, tuple[str, dict[str, Any]]],
    distance: Mapping[str, float],
    bm25: Mapping[str, float],
    side: Lexical,
    pool: int,
    indexed_texts: Mapping[str, str],
    average: float,
) -> Candidates:
    """Each side's pool best of the chunks read, each scored on both, the query's coverage (of the texts the
    lexical index holds: context line and text) and the candidates holding it word for word."""
    dense_order = sorted(distance, key=lambda chunk_id: (distance[chunk_id], chunk_id))
    lexical_order = sorted(
        (chunk_id for chunk_id in side.candidate_ids if chunk_id in rows), key=lambda c: (-bm25[c], c)
    )
    dense_rank = {chunk_id: rank for rank, chunk_id in enumerate(dense_order[:pool], 1)}
    lexical_rank = {chunk_id: rank for rank, chunk_id in enumerate(lexical_order[:pool], 1)}
    kept = set(dense_rank) | set(lexical_rank)
    coverage = max((side.coverage(indexed_texts[chunk_id]) for chunk_id in lexical_order[:COVERAGE_TOP]), default=0.0)
    made = [
        Candidate(
            chunk_id,
            *rows[chunk_id],
            distance[chunk_id],
            bm25[chunk_id],
            dense_rank.get(chunk_id),
            lexical_rank.get(chunk_id),
        )
        for chunk_id in sorted(kept)
    ]
    texts = {chunk_id: indexed_texts[chunk_id] for chunk_id in kept}
    return Candidates(tuple(made), coverage, quoted(text, texts), lambda joined: side.bm25(joined, average))


def quoted(text: str, indexed_texts: Mapping[str, str]) -> frozenset[str]:
    """The chunks whose indexed text (context line and text) holds the query's words in its order, when it has
    at least QUOTED_WORDS: a line copied from a document (an error message, a sentence, a line of code) asks
    for where it is written. Words as the lexical index reads them (`terms.words`: folded, punctuation and
    markup aside, `os.path.join` as os path join)."""
    asked = words(text)
    if len(asked) < QUOTED_WORDS:
        return frozenset()
    phrase = f" {' '.join(asked)} "
    return frozenset(
        chunk_id for chunk_id, indexed_text in indexed_texts.items() if phrase in f" {' '.join(words(indexed_text))} "
    )


def lexical_weight(fusion: Fusion, coverage: float) -> float:
    """How much the lexical side counts for a query: `lexical_weight` itself, or, when the fusion is
    adaptive, that much times the query's coverage to the power `coverage_power` (a question in a user's own
    words, whose terms no chunk holds together, leaves the answer to meaning)."""
    if fusion.coverage_power is None:
        return fusion.lexical_weight
    return fusion.lexical_weight * max(0.0, min(1.0, coverage)) ** fusion.coverage_power


def fuse_scored(candidates: Candidates, n: int, fusion: Fusion, sections: bool = False) -> list[Hit]:
    """One ranking of candidates scored on both sides: each side's scores scaled to 0-1 over all the
    candidates (similarity as 1 - distance, BM25 as it is), summed with the query's lexical weight; a chunk
    holding the query word for word (`Candidates.quoted`) scores 1 more and ranks before any that does not.

    The quoted ones first: on section 7's 1,200 known-item probes (sentences copied from a chunk) the fused
    score alone ranked the sentence's chunk below a plain BM25 in 31 of them, each time a candidate holding it
    word for word; quoted first, recall@1 went from 0.945 / 0.932 / 0.920 by third to 0.980 / 0.978 / 0.980,
    and no question set's figure moved (benchmarks/RESULTS.md section 7, "a quoted line first").

    sections: rank the candidates' sections (`section_of`), each once, by all its candidates' evidence (`ranked_sections`)."""
    rows = candidates.rows
    if not rows:
        return []
    weight = lexical_weight(fusion, candidates.coverage)
    dense = _scaled({row.chunk_id: -row.distance for row in rows})
    lexical = _scaled({row.chunk_id: row.bm25 for row in rows}) if any(row.bm25 for row in rows) else {}
    scores = {
        row.chunk_id: (1 - weight) * dense[row.chunk_id]
        + weight * lexical.get(row.chunk_id, 0.0)
        + (row.chunk_id in candidates.quoted)
        for row in rows
    }
    # The quoted tier first even where a score ties: a quoted chunk last on both sides scores 1, as one first on both.
    ranked = sorted(
        rows,
        key=lambda row: (row.chunk_id not in candidates.quoted, -scores[row.chunk_id], row.distance, row.chunk_id),
    )
    if sections:
        ranked, scores = ranked_sections(candidates, ranked, dense, weight)
    return [
        Hit(
            row.chunk_id,
            row.document,
            row.metadata,
            scores[row.chunk_id],
            row.dense_rank,
            row.lexical_rank,
            row.distance,
        )
        for row in ranked[:n]
    ]


def section_of(metadata: Mapping[str, Any]) -> tuple[str, str] | None:
    """Where a chunk stands: its document and its context line (its headings or definitions), None for a chunk
    without one (its section is itself)."""
    document_id, line = metadata.get("document_id"), metadata.get(CONTEXT_KEY)
    return (document_id, line) if isinstance(document_id, str) and isinstance(line, str) and line else None


def ranked_sections(
    candidates: Candidates, ranked: Sequence[Candidate], dense: Mapping[str, float], weight: float
) -> tuple[list[Candidate], dict[str, float]]:
    """The sections of the ranked candidates, each once, best first, each by its best chunk: a section scores its
    best chunk's similarity and the BM25 of all its candidates' texts together (a question whose words are spread
    over a section's chunks finds it), scaled over the sections and weighed as chunks are; a section holding a
    quoted chunk comes first. Returns the chunks standing for them and their sections' scores."""
    groups: dict[Any, list[Candidate]] = {}
    for row in ranked:
        groups.setdefault(section_of(row.metadata) or row.chunk_id, []).append(row)
    joined = {
        key: "\n".join(
            embedding_input(row.document, row.metadata)  # what the lexical index holds of each
            for row in sorted(group, key=lambda row: (row.metadata.get("chunk_index", 0), row.chunk_id))
        )
        for key, group in groups.items()
    }
    score_text = candidates.score_text
    bm25 = {key: score_text(text) for key, text in joined.items()} if score_text is not None else {}
    lexical = _scaled(bm25) if any(bm25.values()) else {}
    score = {
        key: (1 - weight) * max(dense[row.chunk_id] for row in group)
        + weight * lexical.get(key, 0.0)
        + any(row.chunk_id in candidates.quoted for row in group)
        for key, group in groups.items()
    }
    order = sorted(groups, key=lambda key: (-score[key], groups[key][0].distance, groups[key][0].chunk_id))
    return [groups[key][0] for key in order], {groups[key][0].chunk_id: score[key] for key in order}


def fuse(
    dense: Sequence[tuple[str, str, dict[str, Any], float]],
    lexical: Sequence[tuple[str, str, dict[str, Any], float]],
    n: int,
    fusion: Fusion = RANKINGS_FUSION,
) -> list[Hit]:
    """One ranking from the dense one (by distance, lower first) and the lexical one (by score, higher first)."""
    rows = {chunk_id: (document, metadata) for chunk_id, document, metadata, _ in [*dense, *lexical]}
    dense_rank = {row[0]: rank for rank, row in enumerate(dense, 1)}
    lexical_rank = {row[0]: rank for rank, row in enumerate(lexical, 1)}
    distance = {row[0]: row[3] for row in dense}
    weights = (1.0 - fusion.lexical_weight, fusion.lexical_weight)
    if fusion.method == "rrf":
        scores = {
            chunk_id: sum(
                weight / (fusion.k + ranks[chunk_id])
                for weight, ranks in zip(weights, (dense_rank, lexical_rank), strict=True)
                if chunk_id in ranks
            )
            for chunk_id in rows
        }
    else:
        dense_scaled = _scaled({row[0]: -row[3] for row in dense})
        lexical_scaled = _scaled({row[0]: row[3] for row in lexical})
        scores = {
            chunk_id: weights[0] * dense_scaled.get(chunk_id, 0.0) + weights[1] * lexical_scaled.get(chunk_id, 0.0)
            for chunk_id in rows
        }
    ranked = sorted(scores, key=lambda chunk_id: (-scores[chunk_id], chunk_id))[:n]
    return [
        Hit(
            chunk_id,
            rows[chunk_id][0],
            rows[chunk_id][1],
            scores[chunk_id],
            dense_rank.get(chunk_id),
            lexical_rank.get(chunk_id),
            distance.get(chunk_id),
        )
        for chunk_id in ranked
    ]


def _scaled(scores: Mapping[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high == low:
        return dict.fromkeys(scores, 1.0)
    return {chunk_id: (score - low) / (high - low) for chunk_id, score in scores.items()}
