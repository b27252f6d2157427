"""The dense side of search: the chunks nearest the query by the collection's embedding, and a stored vector's
distance to the query's as Chroma's index measures it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline.search.rows import Ranking, chroma_where, query_input, query_rows
from s3sync_dagster.pipeline.search.where_match import matches

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

# Under a filter the dense side first asks this many times the chunks wanted, unfiltered (`nearest`).
FILTERED_WIDEN = 16


def dense_ranking(
    collection: Collection,
    text: str,
    n: int,
    where: Mapping[str, Any] | None = None,
    query_vector: Any = None,
) -> Ranking:
    """(chunk id, text, metadata, distance) of the n nearest chunks by the collection's embedding (to
    `query_vector`, the query embedded by the collection's own function, when the caller has it; else Chroma
    embeds the text)."""
    return nearest(collection, query_input(text, query_vector), n, where)


def nearest(collection: Collection, asked: Mapping[str, Any], n: int, where: Mapping[str, Any] | None) -> Ranking:
    """(chunk id, text, metadata, distance) of the n nearest chunks to the query (`query_input`) that `where`
    admits. Chroma's filter reads every chunk's metadata (0.5 s a query at 100,000 chunks), so under one the
    FILTERED_WIDEN times n nearest are asked first, unfiltered, and tested here (pipeline/search/where_match.py, as
    Chroma tests them): the admitted among a prefix of the ranking are its first admitted ones, so when n are
    there they are the answer; only when fewer are (a filter admitting few chunks) does Chroma filter."""
    include: Any = ["documents", "metadatas", "distances"]
    if where:
        wide = n * FILTERED_WIDEN
        rows = list(query_rows(collection.query(**asked, n_results=wide, include=include)))
        admitted = [row for row in rows if matches(where, row[2])]
        if len(admitted) >= n or len(rows) < wide:  # n found, or every chunk was read
            return admitted[:n]
    return list(query_rows(collection.query(**asked, n_results=n, where=chroma_where(where), include=include)))


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
