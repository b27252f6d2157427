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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from s3sync_dagster.pipeline.search.dense import dense_ranking
from s3sync_dagster.pipeline.search.fusion import (
    FUSION,
    RANKINGS_FUSION,
    Fusion,
    fuse,
    fuse_scored,
    scored_candidates,
    section_of,
)
from s3sync_dagster.pipeline.search.hits import Hit
from s3sync_dagster.pipeline.search.lexical import lexical_ranking
from s3sync_dagster.pipeline.search.sparse import has_sparse_index, sparse_rankings

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

Mode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "lexical", "hybrid")


def search(
    collection: Collection,
    text: str,
    *,
    mode: Mode = "hybrid",
    n: int = 5,
    where: Mapping[str, Any] | None = None,
    fusion: Fusion = FUSION,
    embedding_function: Callable[[list[str]], Any] | None = None,
    keep: Callable[[Hit], bool] | None = None,
    per_object: int | None = None,
    most: int | None = None,
    sections: bool = False,
) -> list[Hit]:
    """The n chunks of the collection that best answer `text`: by meaning (dense), by its words (lexical), or
    both fused (hybrid). `where` filters by chunk metadata, as in Chroma (`{"source": "docs"}`).
    embedding_function: the collection's own, when the caller holds it: the query is then embedded once, here,
    for every request of the dense side (else Chroma embeds it for each).

    keep: which hits may be returned, tested on each as the ranking is read (a test Chroma's filter cannot make:
    an owner's prefix); per_object: at most this many hits of one object; most: read at most this many of the
    ranking for them (None: all it has). Both are applied while the tiers are read (`in_tiers`), so each pool is
    ranked once, however many hits they drop.

    sections: hybrid ranks sections, not chunks (`search_fusion.ranked_sections`): each section of the candidates
    once, scored by all its chunks' evidence, the hit its best chunk. Measured against the chunks' ranking
    (benchmarks/RESULTS.md section 7, issue 63), it found the answer's section more often and showed the answer's
    passage less often, so chunks are the default.

    The ranking does not depend on n: the first k hits of a search for n >= k are those of a search for k
    (`in_tiers`)."""
    if mode not in MODES:
        raise ValueError(f"search mode '{mode}' is not one of {', '.join(MODES)}")
    if n < 1:
        raise ValueError(f"the number of results must be at least 1, got {n}")
    if not text.strip():
        raise ValueError("the query is empty: give the words or the meaning to search for")
    vector = embedding_function([text])[0] if embedding_function is not None and mode != "lexical" else None
    if per_object is not None and per_object < 1:
        raise ValueError(f"per_object must be at least 1, got {per_object}")
    return in_tiers(
        lambda pool: ranked(collection, text, mode, pool, where, fusion, vector, sections),
        n,
        max(1, fusion.min_pool),
        admitted(keep, per_object, sections),
        most,
    )


def admitted(
    keep: Callable[[Hit], bool] | None, per_object: int | None, sections: bool = False
) -> Callable[[Hit], bool] | None:
    """One test of the hits in ranking order: `keep`'s, at most `per_object` of one object (counting the hits
    admitted before it), and with `sections` one hit a section (a wider pool may stand for a section by another
    of its chunks); None when there is nothing to test."""
    if keep is None and per_object is None and not sections:
        return None
    seen: dict[str, int] = {}
    places: set[Any] = set()

    def test(hit: Hit) -> bool:
        if keep is not None and not keep(hit):
            return False
        if sections:
            place = section_of(hit.metadata) or hit.chunk_id
            if place in places:
                return False
            places.add(place)
        if per_object is None:
            return True
        seen[hit.object_key] = seen.get(hit.object_key, 0) + 1
        return seen[hit.object_key] <= per_object

    return test


def in_tiers(
    rank: Callable[[int], list[Hit]],
    n: int,
    first: int,
    admit: Callable[[Hit], bool] | None = None,
    most: int | None = None,
) -> list[Hit]:
    """The first n hits of one list that does not depend on n: its first `first` are `rank(first)`'s (the best
    of a pool of that many candidates a side), the next `first` the best of `rank(2 * first)` not yet taken,
    the next 2 * first the best of `rank(4 * first)`'s, and so on, until n are taken or a pool ranks fewer
    hits than it was asked (the collection has no more).

    With `admit`, the hits it refuses are read past, as they come: the n are the first n of that list it admits
    (so still not depending on n), read from each tier once; `most` caps how many of the list are read."""
    hits: list[Hit] = []
    taken: set[str] = set()
    read = 0
    pool = first
    while True:
        found = rank(pool)
        for hit in found:
            if read >= pool or (most is not None and read >= most):
                break
            if hit.chunk_id not in taken:
                taken.add(hit.chunk_id)
                read += 1
                if admit is None or admit(hit):
                    hits.append(hit)
                    if len(hits) >= n:
                        return hits
        if len(found) < pool or (most is not None and read >= most):
            return hits
        pool *= 2


def ranked(
    collection: Collection,
    text: str,
    mode: Mode,
    pool: int,
    where: Mapping[str, Any] | None,
    fusion: Fusion,
    query_vector: Any,
    sections: bool = False,
) -> list[Hit]:
    """Every candidate of a pool of `pool` a side, best first, as `mode` ranks them (at least `pool` hits
    when the collection holds that many); with `sections`, hybrid's (scored fusion) sections, each once."""
    if mode == "dense":
        return [
            Hit(chunk_id, document, metadata, -distance, rank, None, distance)
            for rank, (chunk_id, document, metadata, distance) in enumerate(
                dense_ranking(collection, text, pool, where, query_vector), 1
            )
        ]
    if has_sparse_index(collection):
        dense, lexical = sparse_rankings(collection, text, pool, where)
        if mode == "lexical":
            return [
                Hit(chunk_id, document, metadata, score, None, rank)
                for rank, (chunk_id, document, metadata, score) in enumerate(lexical, 1)
            ]
        # Chroma Cloud's BM25 scores only its own candidates: its two rankings are fused as they are.
        if fusion.method == "scored":
            fusion = dataclasses.replace(RANKINGS_FUSION, pool_factor=fusion.pool_factor, min_pool=fusion.min_pool)
        return fuse(dense, lexical, 2 * pool, fusion)
    if mode == "lexical":
        return [
            Hit(chunk_id, document, metadata, score, None, rank)
            for rank, (chunk_id, document, metadata, score) in enumerate(
                lexical_ranking(collection, text, pool, where), 1
            )
        ]
    if fusion.method == "scored":
        return fuse_scored(scored_candidates(collection, text, pool, where, query_vector), 2 * pool, fusion, sections)
    dense_side = dense_ranking(collection, text, pool, where, query_vector)
    return fuse(dense_side, lexical_ranking(collection, text, pool, where), 2 * pool, fusion)
