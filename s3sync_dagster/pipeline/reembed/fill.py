"""What a re-embedding writes to its copy (pipeline/reembed/swap.py): chunks of the collection embedded by the new
function, and the differences between the collection and its copy found and made good (reconcile, catch_up).
A chunk written before context lines gets one as it is copied (pipeline/reembed/context_backfill.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline.chroma import TEXT_HASH, delete_ids, function_record, text_hash
from s3sync_dagster.pipeline.chunking import CONTEXT_KEY, TokenBudget, embedding_input
from s3sync_dagster.pipeline.lexicon import mirrored
from s3sync_dagster.pipeline.reembed.context_backfill import completed

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Documents, EmbeddingFunction

PAGE = 500  # chunks read, embedded and written at a time

# A chunk as reconcile compares the two collections: a digest of its text and metadata but its text hash (which
# names the function) and its context line, and that line (None: written before context lines).
Digest = tuple[str, str | None]


def embed_into(
    copy: Collection,
    function: EmbeddingFunction[Documents],
    ids: list[str],
    documents: list[str],
    metadatas: list[Any],
    upsert: bool,
) -> int:
    """Embed each distinct input (context line and text) once and write the chunks to the copy; returns the
    inputs embedded."""
    record = function_record(copy)
    inputs = [embedding_input(text, metadata) for text, metadata in zip(documents, metadatas, strict=True)]
    distinct = sorted(set(inputs))
    vectors = dict(zip(distinct, function(distinct), strict=True)) if distinct else {}
    write = copy.upsert if upsert else copy.add
    with mirrored(copy, ids):
        write(
            ids=ids,
            embeddings=[vectors[embedded] for embedded in inputs],  # type: ignore[arg-type]
            documents=documents,
            metadatas=[{**m, TEXT_HASH: text_hash(e, record)} for m, e in zip(metadatas, inputs, strict=True)],  # type: ignore[misc]
        )
    return len(distinct)


def _digests(collection: Collection) -> dict[str, Digest]:
    """Each chunk's Digest, by id."""
    out: dict[str, Digest] = {}
    offset = 0
    while True:
        page = collection.get(limit=PAGE * 4, offset=offset, include=["documents", "metadatas"])  # type: ignore[list-item]
        if not page["ids"]:
            return out
        offset += len(page["ids"])
        for chunk_id, text, metadata in zip(page["ids"], page["documents"] or [], page["metadatas"] or [], strict=True):
            kept = {k: v for k, v in (metadata or {}).items() if k not in (TEXT_HASH, CONTEXT_KEY)}
            context = (metadata or {}).get(CONTEXT_KEY)
            digest = hashlib.sha256(json.dumps([text, kept], sort_keys=True, default=str).encode()).hexdigest()
            out[chunk_id] = (digest, context if isinstance(context, str) else None)


def _holds(ours: Digest | None, theirs: Digest | None) -> bool:
    """Whether a chunk as the copy holds it is the collection's: the same text and metadata, and the same context
    line where the collection's has one (the line a chunk without one was given as it was copied is no difference)."""
    if ours is None or theirs is None:
        return ours is theirs
    return ours[0] == theirs[0] and (theirs[1] is None or theirs[1] == ours[1])


def reconcile(
    collection: Collection,
    copy: Collection,
    function: EmbeddingFunction[Documents],
    contexts: TokenBudget | None = None,
) -> tuple[int, dict[str, Digest]]:
    """Make the copy hold exactly the collection's chunks (ids, texts, metadata): returns how many it fixed, and
    the collection's digests as read (what the copy holds now, unless written meanwhile)."""
    theirs, ours = _digests(collection), _digests(copy)
    extra = sorted(set(ours) - set(theirs))
    differing = sorted(chunk_id for chunk_id, digest in theirs.items() if not _holds(ours.get(chunk_id), digest))
    if extra:
        delete_ids(copy, extra)
    copy_chunks(collection, copy, function, differing, contexts)
    return len(extra) + len(differing), theirs


def copy_chunks(
    source: Collection,
    copy: Collection,
    function: EmbeddingFunction[Documents],
    ids: list[str],
    contexts: TokenBudget | None,
) -> None:
    for start in range(0, len(ids), PAGE):
        found = source.get(ids=ids[start : start + PAGE], include=["documents", "metadatas"])  # type: ignore[list-item]
        if found["ids"]:
            documents = [text or "" for text in found["documents"] or []]
            metadatas = completed(source, list(found["ids"]), list(found["metadatas"] or []), contexts)
            embed_into(copy, function, list(found["ids"]), documents, metadatas, upsert=True)


def catch_up(
    retired: Collection,
    swapped: Collection,
    snapshot: Mapping[str, Digest],
    function: EmbeddingFunction[Documents],
    contexts: TokenBudget | None = None,
) -> int:
    """Bring into the swapped-in collection what reached the old one after the last reconcile pass read it
    (`snapshot`) and before it was retired: a writer that opened the collection before the copy was begun writes
    it alone. A chunk the new collection changed since too (a newer write, to both or after the swap) is left
    as it is. Returns how many chunks it wrote or removed."""
    now_old, now_new = _digests(retired), _digests(swapped)
    changed = [
        chunk_id
        for chunk_id in sorted(set(now_old) | set(snapshot))
        if now_old.get(chunk_id) != snapshot.get(chunk_id) and _holds(now_new.get(chunk_id), snapshot.get(chunk_id))
    ]
    gone = [chunk_id for chunk_id in changed if chunk_id not in now_old]
    if gone:
        delete_ids(swapped, gone)
    copy_chunks(retired, swapped, function, [chunk_id for chunk_id in changed if chunk_id in now_old], contexts)
    return len(changed)
