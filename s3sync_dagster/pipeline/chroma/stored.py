"""Chunks as this project stores them: the records written, the chunks read back by owner, and deletions, in
client batches (a collection being re-embedded loses them from its copy too)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline import records
from s3sync_dagster.pipeline.chroma.lifecycle import copy_gone, copy_of, max_batch_size
from s3sync_dagster.pipeline.chunking import embedding_input
from s3sync_dagster.pipeline.lexicon import mirrored
from s3sync_dagster.pipeline.records import Metadata, Owner

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection


@dataclass(frozen=True)
class ChunkRecord:
    chunk_id: str
    text: str
    metadata: Metadata

    @property
    def embedded(self) -> str:
        """What is embedded and lexically indexed for it: its context line and its text (pipeline/chunking/context.py)."""
        return embedding_input(self.text, self.metadata)


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def delete_ids(collection: Collection, ids: Sequence[str]) -> int:
    for part in batches(ids, max_batch_size(collection)):
        with mirrored(collection, part, written={}):
            collection.delete(ids=list(part))
    copy = copy_of(collection)
    if copy is not None:
        with copy_gone(collection):
            delete_ids(copy, ids)
    return len(ids)


@dataclass(frozen=True)
class StoredChunk:
    chunk_id: str
    text: str | None
    metadata: Mapping[str, Any]


def chunks_of(
    collection: Collection, field: str, value: str, owner: Owner, *, with_text: bool = False, own: bool = True
) -> dict[str, StoredChunk]:
    """The chunks whose metadata `field` is `value`, of one owner (or, own=False, of every other writer).

    Chroma is asked for the one selective field and the source is tested here: in embedded Chroma a
    `{"$and": [{field: value}, {"source": source}]}` filter costs in proportion to the source's whole
    collection (every row matches the source), 104 ms at 170,000 chunks against 16 ms for the field
    alone, and a bulk sync asks it twice per key (the skip check and the settle check; RESULTS.md
    section 10: Chroma's share grew from 10% to 23% between 500 and 10,000 objects).
    """
    include: list[Any] = ["metadatas", "documents"] if with_text else ["metadatas"]
    found = collection.get(where={field: value}, include=include)
    no_text: list[str | None] = [None] * len(found["ids"])
    documents: list[str | None] = list(found.get("documents") or no_text)
    metadatas = found.get("metadatas") or [{}] * len(found["ids"])
    return {
        chunk_id: StoredChunk(chunk_id, text, metadata or {})
        for chunk_id, text, metadata in zip(found["ids"], documents, metadatas, strict=True)
        if owner.owns(metadata or {}) == own
    }


def stored_chunks(
    collection: Collection, object_key: str, owner: Owner, with_text: bool = True
) -> dict[str, StoredChunk]:
    """The chunks one source wrote for an object: another source's chunks of a same-named key are not its own."""
    return chunks_of(collection, "object_key", object_key, owner, with_text=with_text)


# Object keys one read of stored chunks asks for (chunks_of_keys).
READ_KEYS = 64


def chunks_of_keys(
    collection: Collection, object_keys: Sequence[str], owner: Owner
) -> dict[str, dict[str, StoredChunk]]:
    """Each object's chunks of one source (metadata only), for many objects in one read per READ_KEYS keys.

    Embedded Chroma answers a metadata filter by scanning the collection whatever it matches (it keeps no
    index over metadata: chroma-core/chroma#4089, #7092): one key's read cost 26 ms at 170,000 chunks
    against 2 ms at 8,500, and a `$in` of 64 keys about as much as one (benchmarks/RESULTS.md, section 10).
    """
    found_chunks: dict[str, dict[str, StoredChunk]] = {key: {} for key in object_keys}
    for part in batches(list(found_chunks), READ_KEYS):
        where: Any = {"object_key": {"$in": list(part)}}
        found = collection.get(where=where, include=["metadatas"])
        for chunk_id, metadata in zip(found["ids"], found.get("metadatas") or [{}] * len(found["ids"]), strict=True):
            metadata = metadata or {}
            key = metadata.get("object_key")
            if owner.owns(metadata) and isinstance(key, str) and key in found_chunks:
                found_chunks[key][chunk_id] = StoredChunk(chunk_id, None, metadata)
    return found_chunks


def delete_of(collection: Collection, field: str, value: str, owner: Owner) -> int:
    """Delete one owner's chunks whose metadata `field` is `value` (read as chunks_of reads them)."""
    return delete_ids(collection, sorted(chunks_of(collection, field, value, owner)))


def pages(
    collection: Collection, where: Mapping[str, Any] | None = None
) -> Iterator[list[tuple[str, Mapping[str, Any]]]]:
    """(chunk id, metadata) of the chunks matching `where` (all, when None), a page (the client's batch) at a time."""
    size, offset = max_batch_size(collection), 0
    while True:
        found = collection.get(where=dict(where) if where else None, include=["metadatas"], limit=size, offset=offset)
        metadatas = found.get("metadatas") or [{}] * len(found["ids"])
        yield [(chunk_id, metadata or {}) for chunk_id, metadata in zip(found["ids"], metadatas, strict=True)]
        if len(found["ids"]) < size:
            return
        offset += size


def is_current(stored: Mapping[str, StoredChunk], document_id: str, etag: str, sync_signature: str) -> bool:
    """True when the collection holds exactly the chunks this object version and these settings produce."""
    if not stored:
        return False
    count = next(iter(stored.values())).metadata.get("chunk_count")
    if not isinstance(count, int) or count != len(stored):
        return False
    expected_ids = {records.chunk_id(document_id, index) for index in range(count)}
    return set(stored) == expected_ids and all(
        chunk.metadata.get("etag") == etag and chunk.metadata.get("sync_signature") == sync_signature
        for chunk in stored.values()
    )


def delete_object(collection: Collection, object_key: str) -> int:
    """Remove every chunk of an object, whatever id scheme wrote it; returns how many."""
    return delete_where(collection, {"object_key": object_key})


def delete_where(collection: Collection, where: dict[str, Any]) -> int:
    return delete_ids(collection, collection.get(where=where, include=[])["ids"])  # type: ignore[arg-type]
