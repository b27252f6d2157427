"""What a search finds: each hit (a chunk, its score, where each side ranked it), at most so many of one object,
and the chunks around it in its object."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chromadb.api.models.Collection import Collection

from s3sync_dagster.pipeline import keys


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
