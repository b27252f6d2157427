"""Finding chunks by their meaning and by their exact words: dense, lexical and hybrid ranking of a collection.

The lexical side is read from what Chroma itself holds: each query term is looked up in the collection's
full-text index over chunk texts (`where_document` `$regex`, whole words, any case), which gives the
term's document frequency; the chunks holding the rarest terms are then scored with BM25 (Okapi, k1 1.2,
b 0.75). Nothing is stored beside the chunks, so the lexical side is exactly as current as they are: a
changed object's new words are found and its old ones are not, a removed object's are gone, on every
target (embedded, a `chroma run` server, the production deployment's). Hybrid scores every candidate of
either side on both and sums them (FUSION: the lexical side weighted by how much of the query its best
candidates hold, chosen by benchmarks/RESULTS.md section 7).

Words match as people type them, not only as they were stored: the query and the chunk texts are compared
folded (`fold`: NFC, Unicode case folding, the Turkish dotted and dotless i as plain i), so "istanbul"
finds "İstanbul", "strasse" finds "Straße", and a café typed with a combining accent finds one stored
precomposed, and the reverse. Chunk texts are stored as written, so the pattern Chroma runs spells out
each letter of the folded term in the forms that fold to it (`term_pattern`); BM25 then counts the term in
the folded text. Accents still tell words apart: "cafe" is not "café".

On Chroma Cloud a collection s3sync creates also holds Chroma's own BM25 sparse index over the chunk
texts (`hybrid_schema`): there the lexical side is that index, asked through Chroma's Search API in the
same request as the dense side, and fused as everywhere else. A Cloud collection made without it (by an
earlier release, or by another tool) is searched the portable way.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from chromadb import K, Knn, Schema, Search, SparseVectorIndexConfig
from chromadb.api.models.Collection import Collection
from chromadb.utils.embedding_functions.chroma_bm25_embedding_function import ChromaBm25EmbeddingFunction

from s3sync_dagster.pipeline import keys, lexicon
from s3sync_dagster.pipeline.lexicon import LexicalIndex
from s3sync_dagster.pipeline.terms import (  # how text becomes terms, read by both sides of search
    fold,
    query_terms,
    term_frequency,
    term_pattern,
)

Mode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "lexical", "hybrid")
_WORD = re.compile(r"\w+")

# A term in more chunks than this, or with a BM25 idf under MIN_IDF (in over ~80% of the chunks of a large
# collection, in both of two), is common: it scores, but picks no candidates.
DF_LIMIT = 2000
MIN_IDF = 0.2
BM25_K1 = 1.2
BM25_B = 0.75
# Where a Chroma Cloud collection keeps each chunk's BM25 sparse vector (computed from its text by chromadb).
SPARSE_KEY = "bm25_sparse"

Ranking = list[tuple[str, str, dict[str, Any], float]]  # (chunk id, text, metadata, score or distance)


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
    # Each side offers this many candidates times the results asked for (at least `min_pool`).
    pool_factor: int = 4
    min_pool: int = 20
    coverage_power: float | None = None

    def pool(self, n: int) -> int:
        return max(self.min_pool, self.pool_factor * n)


# The two rankings fused as they are (issue 26's default): what Chroma Cloud's BM25 index, which scores only
# its own candidates, is fused with; a `scored` fusion asked of a Cloud collection runs as this.
RANKINGS_FUSION = Fusion(method="relative", lexical_weight=0.6, pool_factor=2, min_pool=10)
# Measured (benchmarks/RESULTS.md section 7: 1,200 known-item, 126 semantic and 187 paraphrase probes, 56
# variants, the rule written before their figures; re-measured with the lexical index): every candidate scored
# on both sides, the lexical side at 0.9 x coverage^4, 20 candidates a side. The rule put first the variants
# missing the fewest of issue 36's figures: this one misses only paraphrase recall@5 (0.225, dense's; it asks
# +0.02), where coverage^2 also fell one probe short of dense's paraphrase recall@1. A remembered sentence
# (coverage near 1) is found by its words: known-item recall@1 0.917/0.910/0.865 by third (dense 0.53),
# recall@5 0.99/0.98/0.97; a question in the user's own words (coverage low) is left to meaning: paraphrase
# recall@1 0.11, MRR@10 0.16 (dense's); semantic recall@1 0.48, @5 0.75 (dense 0.39, 0.67).
FUSION = Fusion(method="scored", lexical_weight=0.9, pool_factor=4, min_pool=20, coverage_power=4.0)
# The lexical side's best candidates whose coverage of the query is read (`Candidates.coverage`).
COVERAGE_TOP = 3


@dataclass(frozen=True)
class Passage:
    """A chunk of the hit's object around it (`with_context`): its place in the object and its text."""

    chunk_id: str
    chunk_index: int
    document: str


@dataclass(frozen=True)
class Hit:
    """One chunk found: its text and metadata, the score of the mode asked (higher is better), and where
    each side ranked it (1 is first; None where that side did not offer it)."""

    chunk_id: str
    document: str
    metadata: Mapping[str, Any]
    score: float
    dense_rank: int | None = None
    lexical_rank: int | None = None
    distance: float | None = None  # the dense side's, where it offered the chunk
    # With context (`with_context`): the chunks of the same object around this one, this one among them, in
    # the object's order; empty when none was asked for.
    context: tuple[Passage, ...] = ()

    @property
    def object_key(self) -> str:
        return str(self.metadata.get("object_key") or "")


def per_object(hits: Sequence[Hit], most: int) -> list[Hit]:
    """The hits in their order, keeping at most `most` of each object (the best ones, as ranked)."""
    seen: dict[str, int] = {}
    kept = []
    for hit in hits:
        seen[hit.object_key] = seen.get(hit.object_key, 0) + 1
        if seen[hit.object_key] <= most:
            kept.append(hit)
    return kept


def with_context(
    collection: Collection, hits: Sequence[Hit], size: int, keep: Callable[[Mapping[str, Any]], bool] | None = None
) -> list[Hit]:
    """Each hit with the `size` chunks before and after it in its object (fewer at the object's ends), read by
    their ids in one request: a chunk's id is its document's id and its place (keys.chunk_id). `keep` says
    which chunks may be shown (a source's own): a neighbour it refuses is left out."""
    if size < 0:
        raise ValueError(f"the context must be 0 chunks or more, got {size}")
    if size == 0 or not hits:
        return list(hits)
    wanted: dict[str, tuple[str, int]] = {}
    for hit in hits:
        document_id, position, count = (hit.metadata.get(k) for k in ("document_id", "chunk_index", "chunk_count"))
        if not isinstance(document_id, str) or not isinstance(position, int) or not isinstance(count, int):
            continue  # not a chunk s3sync wrote: no neighbours known
        for at in range(max(0, position - size), min(count, position + size + 1)):
            wanted[keys.chunk_id(document_id, at)] = (document_id, at)
    found = collection.get(ids=list(wanted), include=["documents", "metadatas"]) if wanted else None
    passages: dict[tuple[str, int], Passage] = {}
    if found is not None:
        for chunk_id, document, metadata in zip(
            found["ids"], found["documents"] or [], found["metadatas"] or [], strict=True
        ):
            metadata = metadata or {}
            document_id, at = wanted[chunk_id]
            if metadata.get("document_id") == document_id and (keep is None or keep(metadata)):
                passages[(document_id, at)] = Passage(chunk_id, at, document or "")
    with_passages = []
    for hit in hits:
        document_id, position = hit.metadata.get("document_id"), hit.metadata.get("chunk_index")
        if not isinstance(document_id, str) or not isinstance(position, int):
            with_passages.append(hit)
            continue
        around = [
            passages.get((document_id, at)) or (Passage(hit.chunk_id, at, hit.document) if at == position else None)
            for at in range(position - size, position + size + 1)
        ]
        with_passages.append(dataclasses.replace(hit, context=tuple(p for p in around if p is not None)))
    return with_passages


def _plain(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A chunk's metadata as written; a Cloud collection's BM25 vector is Chroma's, not the caller's."""
    return {key: value for key, value in (metadata or {}).items() if key != SPARSE_KEY}


def _where(where: Mapping[str, Any] | None) -> Any:
    return dict(where) if where else None


def hybrid_schema() -> Schema:
    """A Chroma Cloud collection's indexes: the dense one, and Chroma's BM25 sparse index over the chunk texts."""
    return Schema().create_index(
        config=SparseVectorIndexConfig(
            source_key=K.DOCUMENT.name, embedding_function=ChromaBm25EmbeddingFunction(), bm25=True
        ),
        key=SPARSE_KEY,
    )


def has_sparse_index(collection: Collection) -> bool:
    """Whether the collection keeps BM25 sparse vectors under SPARSE_KEY (a Chroma Cloud one s3sync made)."""
    schema = collection.schema
    if schema is None:
        return False
    key = schema.serialize_to_json().get("keys", {}).get(SPARSE_KEY, {})
    return bool(key.get("sparse_vector", {}).get("sparse_vector_index", {}).get("enabled"))


def search_requests(text: str, pool: int, where: Mapping[str, Any] | None = None) -> list[Search]:
    """Chroma Search API requests, sent together: the pool nearest chunks by the dense index, then by BM25."""
    select = (K.DOCUMENT, K.METADATA, K.SCORE)
    requests = []
    for key in (K.EMBEDDING, SPARSE_KEY):
        request = Search().rank(Knn(query=text, key=key, limit=pool)).limit(pool).select(*select)
        requests.append(request.where(dict(where)) if where else request)
    return requests


def sparse_rankings(
    collection: Collection, text: str, pool: int, where: Mapping[str, Any] | None = None
) -> tuple[Ranking, Ranking]:
    """The dense and the BM25 ranking of a collection with a sparse index, in one Search API request."""
    try:
        found = collection.search(search_requests(text, pool, where))
    except NotImplementedError as error:  # a local client: only Chroma Cloud (or distributed Chroma) searches
        raise ValueError(
            f"collection '{collection.name}' has a sparse index, but this Chroma does not offer the Search API "
            f"to query it ({error}); search it through Chroma Cloud"
        ) from None
    rows = found.rows()
    # Knn scores are distances (lower is nearer); the lexical side is ranked by a score, higher first.
    dense: Ranking = [
        (row["id"], row.get("document") or "", _plain(row.get("metadata")), float(row.get("score") or 0.0))
        for row in rows[0]
    ]
    lexical: Ranking = [
        (row["id"], row.get("document") or "", _plain(row.get("metadata")), -float(row.get("score") or 0.0))
        for row in rows[1]
    ]
    return dense, lexical


def dense_ranking(
    collection: Collection,
    text: str,
    n: int,
    where: Mapping[str, Any] | None = None,
    embedding_function: Callable[[list[str]], Any] | None = None,
) -> Ranking:
    """(chunk id, text, metadata, distance) of the n nearest chunks by the collection's embedding (the query
    embedded by `embedding_function`, the collection's own, when the caller holds it)."""
    embedded = embedding_function([text])[0] if embedding_function is not None else None
    found = collection.query(
        **_query_of(text, embedded), n_results=n, where=_where(where), include=["documents", "metadatas", "distances"]
    )
    return list(_query_rows(found))


def _query_rows(found: Any) -> Iterator[tuple[str, str, dict[str, Any], float]]:
    """(chunk id, text, metadata, distance) of a one-query `collection.query` answer, nearest first."""
    yield from (
        (chunk_id, document or "", _plain(metadata), float(distance))
        for chunk_id, document, metadata, distance in zip(
            found["ids"][0],
            (found["documents"] or [[]])[0],
            (found["metadatas"] or [[]])[0],
            (found["distances"] or [[]])[0],
            strict=True,
        )
    )


@dataclass(frozen=True)
class Lexical:
    """What the lexical side knows of one query: its terms, each term's BM25 idf (from its document frequency
    in the collection, read from Chroma's full-text index), and the ids of the chunks holding the rarest
    terms (its candidates). `score` gives BM25 for any chunk's text, offered by this side or not."""

    terms: tuple[str, ...]
    idf: Mapping[str, float]
    candidate_ids: tuple[str, ...]

    def bm25(self, document: str, average_words: float) -> float:
        words = len(_WORD.findall(document))
        norm = BM25_K1 * (1 - BM25_B + BM25_B * words / (average_words or 1.0))
        folded = fold(document)
        score = 0.0
        for term in self.terms:
            frequency = term_frequency(term, folded)
            if frequency:
                score += self.idf[term] * frequency * (BM25_K1 + 1) / (frequency + norm)
        return score

    def coverage(self, document: str) -> float:
        """The share of the query's idf the text holds (each term counted once): 1.0 when it holds every term."""
        total = sum(self.idf.values())
        if total <= 0:
            return 0.0
        folded = fold(document)
        return sum(idf for term, idf in self.idf.items() if term_frequency(term, folded)) / total


def lexical_side(collection: Collection, text: str, n: int, where: Mapping[str, Any] | None = None) -> Lexical:
    """Looks each query term up whole-word in the collection (`where_document` `$regex`) for its document
    frequency, and picks the chunks holding the rarest terms as candidates."""
    terms = query_terms(text)
    matching: dict[str, list[str]] = {}
    for term in terms:
        found = collection.get(
            where=_where(where), where_document={"$regex": term_pattern(term)}, include=[], limit=DF_LIMIT
        )
        matching[term] = list(found["ids"])
    total = max(collection.count(), 1) if terms else 1
    idf = {term: bm25_idf(total, len(ids)) for term, ids in matching.items()}
    # Candidates: the chunks holding the rarest terms, until there are enough to rank. A common term (past
    # DF_LIMIT, or with an idf under MIN_IDF: in most chunks) picks none: it says little, and a ranking of
    # near-equal scores would only push the dense side's answer down in a fusion. Only common terms: no answer.
    candidates: dict[str, None] = {}
    for term in sorted(terms, key=lambda term: len(matching[term])):
        if len(matching[term]) >= DF_LIMIT or idf[term] < MIN_IDF:
            break
        candidates.update(dict.fromkeys(matching[term]))
        if len(candidates) >= max(n, DF_LIMIT // 4):
            break
    return Lexical(tuple(terms), idf, tuple(candidates))


# The lexical index path: the lexical side offers this many times the pool, best first by BM25 on the
# query's rarer terms, and every candidate is then scored on all of them.
LEXICON_POOL_FACTOR = 2
# The rarer terms that pick the index's candidates hold at most this many chunks together (past the first),
# as Chroma's path keeps at most DF_LIMIT // 4 candidates: BM25 ranks each chunk holding one of them.
CANDIDATE_DF = DF_LIMIT // 4


def _query_of(text: str, embedded: Any) -> dict[str, Any]:
    """A Chroma query's input: the query's vector where the caller embedded it, else its text."""
    return {"query_embeddings": [embedded]} if embedded is not None else {"query_texts": [text]}


def bm25_idf(total: int, count: int) -> float:
    """A term's BM25 idf (the non-negative form) in `total` chunks of which `count` hold it."""
    return math.log(1 + (total - count + 0.5) / (count + 0.5))


def indexed(collection: Collection) -> LexicalIndex | None:
    """The collection's lexical index (pipeline/lexicon.py) when it can answer for it now, else None."""
    found = lexicon.of(collection)
    return found if found is not None and found.state(collection) is None else None


def lexicon_side(index: LexicalIndex, collection: Collection, text: str, n: int) -> Lexical:
    """The lexical side from the index: each term's idf from its exact document frequency, and as
    candidates the n chunks BM25 ranks best on the rarer terms (as `lexical_side` picks them: a common
    term scores, but picks no candidates)."""
    terms = query_terms(text)
    frequency, total = index.document_frequency(collection, terms)
    total = max(total, 1)
    idf = {term: bm25_idf(total, count) for term, count in frequency.items()}
    rarer: list[str] = []
    held = 0
    for term in sorted(terms, key=lambda term: (frequency[term], term)):
        if not frequency[term]:
            continue
        if frequency[term] >= DF_LIMIT or idf[term] < MIN_IDF or (rarer and held + frequency[term] > CANDIDATE_DF):
            break
        rarer.append(term)
        held += frequency[term]
    best = index.best(collection, rarer, n)
    return Lexical(tuple(terms), idf, tuple(chunk_id for chunk_id, _ in best))


def _average_words(documents: Sequence[str]) -> float:
    return sum(len(_WORD.findall(document)) for document in documents) / max(len(documents), 1) or 1.0


def lexical_ranking(collection: Collection, text: str, n: int, where: Mapping[str, Any] | None = None) -> Ranking:
    """(chunk id, text, metadata, BM25 score) of the n best chunks for the query's words."""
    index = indexed(collection) if not where else None
    if index is not None:
        side = lexicon_side(index, collection, text, LEXICON_POOL_FACTOR * n)
    else:
        side = lexical_side(collection, text, n, where)
    if not side.candidate_ids:
        return []
    got = collection.get(ids=list(side.candidate_ids), include=["documents", "metadatas"])
    rows = [
        (chunk_id, document or "", _plain(metadata))
        for chunk_id, document, metadata in zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True)
    ]
    average = _average_words([document for _, document, _ in rows])
    scored = [(chunk_id, document, metadata, side.bm25(document, average)) for chunk_id, document, metadata in rows]
    scored.sort(key=lambda row: (-row[3], row[0]))
    return scored[:n]


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
    words say where its answer is."""

    rows: tuple[Candidate, ...]
    coverage: float


def scored_candidates(
    collection: Collection,
    text: str,
    pool: int,
    where: Mapping[str, Any] | None = None,
    embedding_function: Callable[[list[str]], Any] | None = None,
) -> Candidates:
    """The pool best chunks of each side, every one scored on both: a chunk the dense side did not offer is
    given its distance, one the lexical side did not offer its BM25 score.

    The lexical side comes from an embedded store's lexical index (pipeline/lexicon.py) when it can answer and
    no filter is asked (each term's document frequency and the candidates; BM25 is computed from the texts),
    else from Chroma's full-text filter (`lexical_side`). With the query's vector known (embedding_function),
    a lexical candidate's distance is computed from its stored vector, as Chroma's index computes it; else a
    dense query narrowed to those ids asks Chroma for it."""
    embedded = embedding_function([text])[0] if embedding_function is not None else None
    asked = _query_of(text, embedded)
    dense = collection.query(
        **asked, n_results=pool, where=_where(where), include=["documents", "metadatas", "distances"]
    )
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    distance: dict[str, float] = {}
    for chunk_id, document, metadata, far in _query_rows(dense):
        rows[chunk_id], distance[chunk_id] = (document, metadata), far
    index = indexed(collection) if not where else None
    side = lexicon_side(index, collection, text, LEXICON_POOL_FACTOR * pool) if index else None
    if side is not None and embedded is not None:
        _read_with_distances(collection, side, embedded, rows, distance)
    else:
        side = side or lexical_side(collection, text, pool, where)
        lexical_only = [chunk_id for chunk_id in side.candidate_ids if chunk_id not in rows]
        if lexical_only:
            got = collection.query(
                **asked, ids=lexical_only, n_results=len(lexical_only), include=["documents", "metadatas", "distances"]
            )
            for chunk_id, document, metadata, far in _query_rows(got):
                rows[chunk_id], distance[chunk_id] = (document, metadata), far
    average = _average_words([document for document, _ in rows.values()])
    return _candidates(
        rows, distance, {c: side.bm25(document, average) for c, (document, _) in rows.items()}, side, pool
    )


def _read_with_distances(
    collection: Collection,
    side: Lexical,
    embedded: Any,
    rows: dict[str, tuple[str, dict[str, Any]]],
    distance: dict[str, float],
) -> None:
    """Read the lexical candidates the dense side did not offer into rows, by id with their vectors, and their
    distances to the query's vector (`distances`): a dense query narrowed to ids reads every chunk's metadata
    (138 ms at 100,000 chunks), this reads only theirs."""
    lexical_only = [chunk_id for chunk_id in side.candidate_ids if chunk_id not in rows]
    if not lexical_only:
        return
    got = collection.get(ids=lexical_only, include=["documents", "metadatas", "embeddings"])  # type: ignore[list-item]
    far_of = distances(collection, embedded, got["embeddings"])
    for chunk_id, document, metadata, far in zip(
        got["ids"], got["documents"] or [], got["metadatas"] or [], far_of, strict=True
    ):
        rows[chunk_id], distance[chunk_id] = (document or "", _plain(metadata)), far


def _candidates(
    rows: Mapping[str, tuple[str, dict[str, Any]]],
    distance: Mapping[str, float],
    bm25: Mapping[str, float],
    side: Lexical,
    pool: int,
) -> Candidates:
    """Each side's pool best of the chunks read, each scored on both, and the query's coverage."""
    dense_order = sorted(distance, key=lambda chunk_id: (distance[chunk_id], chunk_id))
    lexical_order = sorted(
        (chunk_id for chunk_id in side.candidate_ids if chunk_id in rows), key=lambda c: (-bm25[c], c)
    )
    dense_rank = {chunk_id: rank for rank, chunk_id in enumerate(dense_order[:pool], 1)}
    lexical_rank = {chunk_id: rank for rank, chunk_id in enumerate(lexical_order[:pool], 1)}
    kept = set(dense_rank) | set(lexical_rank)
    coverage = max((side.coverage(rows[chunk_id][0]) for chunk_id in lexical_order[:COVERAGE_TOP]), default=0.0)
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
    return Candidates(tuple(made), coverage)


def distances(collection: Collection, query: Any, vectors: Any) -> list[float]:
    """Each stored vector's distance to the query's, in the collection's space as its HNSW index measures it
    (cosine: 1 - cosine similarity; ip: 1 - inner product; l2: squared Euclidean distance)."""
    import numpy as np

    if vectors is None or len(vectors) == 0:
        return []
    space = ((collection.configuration or {}).get("hnsw") or {}).get("space") or "l2"
    target = np.asarray(query, dtype=np.float32)
    stored = np.asarray(vectors, dtype=np.float32)
    if space == "cosine":
        norms = np.linalg.norm(stored, axis=1) * (np.linalg.norm(target) or 1.0)
        return [float(value) for value in 1.0 - (stored @ target) / np.where(norms == 0, 1.0, norms)]
    if space == "ip":
        return [float(value) for value in 1.0 - stored @ target]
    return [float(value) for value in ((stored - target) ** 2).sum(axis=1)]


def lexical_weight(fusion: Fusion, coverage: float) -> float:
    """How much the lexical side counts for a query: `lexical_weight` itself, or, when the fusion is
    adaptive, that much times the query's coverage to the power `coverage_power` (a question in a user's own
    words, whose terms no chunk holds together, leaves the answer to meaning)."""
    if fusion.coverage_power is None:
        return fusion.lexical_weight
    return fusion.lexical_weight * max(0.0, min(1.0, coverage)) ** fusion.coverage_power


def fuse_scored(candidates: Candidates, n: int, fusion: Fusion) -> list[Hit]:
    """One ranking of candidates scored on both sides: each side's scores scaled to 0-1 over all the
    candidates (similarity as 1 - distance, BM25 as it is), summed with the query's lexical weight."""
    rows = candidates.rows
    if not rows:
        return []
    weight = lexical_weight(fusion, candidates.coverage)
    dense = _scaled({row.chunk_id: -row.distance for row in rows})
    lexical = _scaled({row.chunk_id: row.bm25 for row in rows}) if any(row.bm25 for row in rows) else {}
    scores = {
        row.chunk_id: (1 - weight) * dense[row.chunk_id] + weight * lexical.get(row.chunk_id, 0.0) for row in rows
    }
    ranked = sorted(rows, key=lambda row: (-scores[row.chunk_id], row.distance, row.chunk_id))[:n]
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
        for row in ranked
    ]


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


def search(
    collection: Collection,
    text: str,
    *,
    mode: Mode = "hybrid",
    n: int = 5,
    where: Mapping[str, Any] | None = None,
    fusion: Fusion = FUSION,
    embedding_function: Callable[[list[str]], Any] | None = None,
) -> list[Hit]:
    """The n chunks of the collection that best answer `text`: by meaning (dense), by its words (lexical), or
    both fused (hybrid). `where` filters by chunk metadata, as in Chroma (`{"source": "docs"}`).
    embedding_function: the collection's own, when the caller holds it: the query is then embedded once for
    both of the dense side's requests (else Chroma embeds it for each)."""
    if mode not in MODES:
        raise ValueError(f"search mode '{mode}' is not one of {', '.join(MODES)}")
    if n < 1:
        raise ValueError(f"the number of results must be at least 1, got {n}")
    if not text.strip():
        raise ValueError("the query is empty: give the words or the meaning to search for")
    if mode == "dense":
        return [
            Hit(chunk_id, document, metadata, -distance, rank, None, distance)
            for rank, (chunk_id, document, metadata, distance) in enumerate(
                dense_ranking(collection, text, n, where, embedding_function), 1
            )
        ]
    pool = fusion.pool(n)
    if has_sparse_index(collection):
        dense, lexical = sparse_rankings(collection, text, pool, where)
        if mode == "lexical":
            return [
                Hit(chunk_id, document, metadata, score, None, rank)
                for rank, (chunk_id, document, metadata, score) in enumerate(lexical[:n], 1)
            ]
        # Chroma Cloud's BM25 scores only its own candidates: its two rankings are fused as they are.
        if fusion.method == "scored":
            fusion = dataclasses.replace(RANKINGS_FUSION, pool_factor=fusion.pool_factor, min_pool=fusion.min_pool)
        return fuse(dense, lexical, n, fusion)
    if mode == "lexical":
        return [
            Hit(chunk_id, document, metadata, score, None, rank)
            for rank, (chunk_id, document, metadata, score) in enumerate(lexical_ranking(collection, text, n, where), 1)
        ]
    if fusion.method == "scored":
        return fuse_scored(scored_candidates(collection, text, pool, where, embedding_function), n, fusion)
    return fuse(dense_ranking(collection, text, pool, where), lexical_ranking(collection, text, pool, where), n, fusion)
