"""Chroma Cloud's BM25 sparse index over a collection's chunk texts: the schema that makes it, whether a collection
has it, and both sides' rankings read from it and the dense index in one Search API request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline.search.rows import SPARSE_KEY, Ranking, plain_metadata

if TYPE_CHECKING:
    from chromadb import Schema, Search
    from chromadb.api.models.Collection import Collection


def hybrid_schema() -> Schema:
    """A Chroma Cloud collection's indexes: the dense one, and Chroma's BM25 sparse index over the chunk texts."""
    from chromadb import K, Schema, SparseVectorIndexConfig
    from chromadb.utils.embedding_functions.chroma_bm25_embedding_function import ChromaBm25EmbeddingFunction

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
    from chromadb import K, Knn, Search

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
        (row["id"], row.get("document") or "", plain_metadata(row.get("metadata")), float(row.get("score") or 0.0))
        for row in rows[0]
    ]
    lexical: Ranking = [
        (row["id"], row.get("document") or "", plain_metadata(row.get("metadata")), -float(row.get("score") or 0.0))
        for row in rows[1]
    ]
    return dense, lexical
