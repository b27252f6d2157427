"""Chunks -> Chroma: replace an object's chunks exactly, skip what did not change, in client batches.

The rest of what a write needs has its own module: collections and their lifecycle (chroma/lifecycle.py), chunks as
stored, read and deleted (chroma/stored.py), who may write where (chroma/claims.py), vectors by text hash
(chroma/vectors.py), the metadata rules (records/metadata.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline.chroma.claims import (
    claim,
)
from s3sync_dagster.pipeline.chroma.lifecycle import (
    Embedder,
    copy_gone,
    copy_of,
    function_of,
    max_batch_size,
)
from s3sync_dagster.pipeline.chroma.stored import (
    ChunkRecord,
    StoredChunk,
    batches,
)
from s3sync_dagster.pipeline.chroma.vectors import (
    function_record,
    hashed,
    vectors_for,
)
from s3sync_dagster.pipeline.chunking import embedding_input
from s3sync_dagster.pipeline.lexicon import mirrored
from s3sync_dagster.pipeline.records import (
    Metadata,
    Owner,
)

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection


@dataclass
class WriteStats:
    written: int = 0  # chunks whose text is new or changed (embedded or reused by text)
    embedded: int = 0  # of those, how many needed the model
    metadata_only: int = 0  # same text, new metadata (no embedding, no vector rewrite)
    unchanged: int = 0
    deleted: int = 0
    embed_seconds: float = 0.0  # time in the model, included in the write
    # What the model embedded (context.embedding_input: context line and text).
    embedded_texts: set[str] = dataclasses.field(default_factory=set)


def _with_deletions(new: Metadata, old: Mapping[str, Any]) -> dict[str, Any]:
    # Chroma merges metadata on update/upsert; a key the new version lacks must be removed with None.
    merged: dict[str, Any] = dict(new)
    merged.update({key: None for key in old if key not in new})
    return merged


def replace_chunks(
    collection: Collection,
    records: Sequence[ChunkRecord],
    stored: Mapping[str, StoredChunk],
    embed: Embedder,
    claim_for: Owner | None = None,
) -> WriteStats:
    """Make the collection hold exactly `records` for this object, touching only what differs.

    New rows are written before stale rows are deleted, so a crash leaves extra rows (which the next
    sync's `is_current` check notices) rather than a gap.

    claim_for: the source writing, in a collection other sources may write too: ids it does not hold yet
    (not in `stored`) are claimed (`claims.claim`) before anything else is written, so of two sources racing for
    one document id exactly one succeeds and the other raises ClaimLost having changed nothing.
    """
    stats = WriteStats()
    batch = max_batch_size(collection)
    embed = function_of(collection, embed)
    copy = copy_of(collection)
    if copy is not None:  # the same write in the copy first, in its function: it never lags the collection
        with copy_gone(collection):
            _write_copy(copy, records, stored, embed)
    records = hashed(records, function_record(collection))
    to_write: list[ChunkRecord] = []
    to_update: list[ChunkRecord] = []
    for record in records:
        old = stored.get(record.chunk_id)
        # Same text under another context (a heading renamed, a section moved): embedded again.
        if old is None or old.text != record.text or embedding_input(record.text, old.metadata) != record.embedded:
            to_write.append(record)
        elif dict(old.metadata) != record.metadata:
            to_update.append(record)
        else:
            stats.unchanged += 1

    vectors, embedded_texts, stats.embed_seconds = vectors_for(collection, to_write, stored, embed)
    stats.embedded, stats.embedded_texts = len(embedded_texts), set(embedded_texts)
    if claim_for is not None:
        claimed = [i for i, record in enumerate(to_write) if record.chunk_id not in stored]
        claiming = [to_write[i] for i in claimed]
        earlier = claim(collection, claiming, [vectors[i] for i in claimed], claim_for, batch)
        # Written by the claim; chunks of this source the add left as they were are overwritten below.
        held = set(claimed) - {claimed[i] for i in earlier}
        stored = {
            **stored,
            **{claiming[i].chunk_id: StoredChunk(claiming[i].chunk_id, None, m) for i, m in earlier.items()},
        }
        stats.written = len(held)
        to_write, vectors = (
            [r for i, r in enumerate(to_write) if i not in held],
            [v for i, v in enumerate(vectors) if i not in held],
        )
    for part in batches(list(range(len(to_write))), batch):
        written = {to_write[i].chunk_id: to_write[i].embedded for i in part}  # the lexical index holds context + text
        with mirrored(collection, list(written), written):
            collection.upsert(
                ids=[to_write[i].chunk_id for i in part],
                documents=[to_write[i].text for i in part],
                embeddings=[vectors[i] for i in part],
                metadatas=[
                    _with_deletions(to_write[i].metadata, stored[to_write[i].chunk_id].metadata)
                    if to_write[i].chunk_id in stored
                    else to_write[i].metadata
                    for i in part
                ],  # type: ignore[misc]
            )
    stats.written += len(to_write)
    for part_records in batches(to_update, batch):
        collection.update(
            ids=[record.chunk_id for record in part_records],
            metadatas=[_with_deletions(record.metadata, stored[record.chunk_id].metadata) for record in part_records],  # type: ignore[misc]
        )
    stats.metadata_only = len(to_update)

    keep = {record.chunk_id for record in records}
    stale = sorted(chunk_id for chunk_id in stored if chunk_id not in keep)
    for part_ids in batches(stale, batch):
        with mirrored(collection, part_ids, written={}):
            collection.delete(ids=list(part_ids))
    stats.deleted = len(stale)
    return stats


def _write_copy(
    copy: Collection, records: Sequence[ChunkRecord], stored: Mapping[str, StoredChunk], embed: Embedder
) -> None:
    """The write of `records` to a re-embedding's copy, read as the copy holds them, in its own function."""
    in_copy = copy.get(ids=sorted({*stored, *(r.chunk_id for r in records)}), include=["documents", "metadatas"])
    replace_chunks(
        copy,
        records,
        {
            chunk_id: StoredChunk(chunk_id, text, metadata or {})
            for chunk_id, text, metadata in zip(
                in_copy["ids"], in_copy["documents"] or [], in_copy["metadatas"] or [], strict=True
            )
        },
        embed,
    )
