"""How search reads Chroma's rows: a side's ranking, the query and filter as Chroma takes them, and a row's
metadata as it was written."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Where a Chroma Cloud collection keeps each chunk's BM25 sparse vector (computed from its text by chromadb).
SPARSE_KEY = "bm25_sparse"

Ranking = list[tuple[str, str, dict[str, Any], float]]  # (chunk id, text, metadata, score or distance)


def plain_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A chunk's metadata as written; a Cloud collection's BM25 vector is Chroma's, not the caller's."""
    return {key: value for key, value in (metadata or {}).items() if key != SPARSE_KEY}


def chroma_where(where: Mapping[str, Any] | None) -> Any:
    """A metadata filter as Chroma takes it: a dict, or None for no filter."""
    return dict(where) if where else None


def query_input(text: str, embedded: Any) -> dict[str, Any]:
    """A Chroma query's input: the query's vector where the caller embedded it, else its text."""
    return {"query_embeddings": [embedded]} if embedded is not None else {"query_texts": [text]}


def query_rows(found: Any) -> Iterator[tuple[str, str, dict[str, Any], float]]:
    """(chunk id, text, metadata, distance) of a one-query `collection.query` answer, nearest first."""
    yield from (
        (chunk_id, document or "", plain_metadata(metadata), float(distance))
        for chunk_id, document, metadata, distance in zip(
            found["ids"][0],
            (found["documents"] or [[]])[0],
            (found["metadatas"] or [[]])[0],
            (found["distances"] or [[]])[0],
            strict=True,
        )
    )
