"""Vectors by text hash: each chunk records the hash of what was embedded for it (its context line and text,
pipeline/chunking/context.py) and its collection's function, so a chunk whose input another of the same writer already
holds takes that vector instead of the model's; and the repair of a chunk whose text changed without its vector."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline.chroma.lifecycle import Embedder, function_of, max_batch_size
from s3sync_dagster.pipeline.chroma.stored import ChunkRecord, StoredChunk, batches
from s3sync_dagster.pipeline.chunking import embedding_input
from s3sync_dagster.pipeline.records import Owner

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

# Every chunk records a hash of what was embedded for it (context.embedding_input: its context line and its text)
# and of the embedding function its collection records: a chunk of another object of the same writer with the
# same input (a copy, a licence header, a template, under the same context) takes its vector from there instead
# of from the model (vectors_for). The function is in the hash, so a vector is never taken across functions (a
# rebuild copy under another model, or int8 beside float32), and the context is, so never across contexts.
TEXT_HASH = "text_hash"
# Hashes one read asks for: a `$in` of a write group's texts.
READ_HASHES = 256
# The metadata that says whose a chunk is (owners.Owner.stamp, the bucket): vectors are taken from the writer's own.
WRITER_FIELDS = ("source", "project", "bucket_name")


def function_record(collection: Collection) -> str:
    """The embedding function its collection records (name and config), as text: what a vector depends on."""
    recorded = (collection.configuration_json or {}).get("embedding_function") or {}
    return json.dumps({"name": recorded.get("name"), "config": recorded.get("config") or {}}, sort_keys=True)


def text_hash(embedded: str, function: str) -> str:
    """The hash of what was embedded for a chunk (context.embedding_input: for a chunk without a context line,
    its text) and its collection's function (function_record): equal hashes, equal vectors."""
    return hashlib.sha256(f"{function}\n{embedded}".encode()).hexdigest()[:32]


def hashed(records: Sequence[ChunkRecord], function: str) -> list[ChunkRecord]:
    return [
        dataclasses.replace(record, metadata={**record.metadata, TEXT_HASH: text_hash(record.embedded, function)})
        for record in records
    ]


class EmbeddingError(RuntimeError):
    """The embedding function failed (a model behind an API that cannot be reached, a bad answer)."""


def embed_texts(embed: Embedder, texts: list[str]) -> Sequence[Any]:
    try:
        vectors = embed(texts)
    except Exception as error:
        name = getattr(embed, "name", None)
        function = f"embedding function '{name()}'" if callable(name) else "the embedding function"
        raise EmbeddingError(f"{function} failed on {len(texts)} chunk(s): {type(error).__name__}: {error}") from error
    if len(vectors) != len(texts):
        raise EmbeddingError(f"the embedding function returned {len(vectors)} vector(s) for {len(texts)} chunk(s)")
    return vectors


def vectors_for(
    collection: Collection,
    records: Sequence[ChunkRecord],
    stored: Mapping[str, StoredChunk],
    embed: Embedder,
) -> tuple[list[Any], list[str], float]:
    """Embeddings for records, reusing the stored vector of any chunk with the same input (context line and text):
    of this object (a shifted chunk), else any other chunk of the same writer whose text hash is the record's; with
    the inputs the model embedded and the seconds it took."""
    if not records:
        return [], [], 0.0
    reusable_ids: dict[str, str] = {}
    record = function_record(collection)
    for chunk in stored.values():
        if chunk.text is None:
            continue
        given, recorded = embedding_input(chunk.text, chunk.metadata), chunk.metadata.get(TEXT_HASH)
        # A chunk whose recorded hash is not its input's was changed by another hand: its vector is not trusted.
        if recorded is None or recorded == text_hash(given, record):
            reusable_ids.setdefault(given, chunk.chunk_id)
    wanted = {reusable_ids[r.embedded] for r in records if r.embedded in reusable_ids}
    reused: dict[str, Any] = {}
    if wanted:
        found = _reuse_read(collection, ids=sorted(wanted), include=["embeddings", "documents", "metadatas"])
        embeddings = found.get("embeddings") if found is not None else None
        if found is not None and embeddings is not None:
            rows = zip(found.get("documents") or [], found.get("metadatas") or [], embeddings, strict=True)
            for text, metadata, vector in rows:
                if text is not None:
                    reused[embedding_input(text, metadata)] = vector
    reused.update(_vectors_by_hash(collection, [r for r in records if r.embedded not in reused]))
    # Each distinct new input is embedded once, even when it repeats within the object.
    fresh_inputs = sorted({r.embedded for r in records if r.embedded not in reused})
    started = time.perf_counter()
    fresh = dict(zip(fresh_inputs, embed_texts(embed, fresh_inputs), strict=True)) if fresh_inputs else {}
    seconds = time.perf_counter() - started
    return [reused[r.embedded] if r.embedded in reused else fresh[r.embedded] for r in records], fresh_inputs, seconds


def _reuse_read(collection: Collection, **query: Any) -> Any | None:
    """A read of stored vectors to reuse: best effort, None where the store cannot answer it (then the model embeds).

    A `chroma run` server (1.5) fails every read that asks for embeddings while a new collection's first write is
    under way ("Error creating hnsw segment reader: Nothing found on disk", even when no row matches): a second
    writer's first write to the same new collection (a sensor's run beside a backfill) then failed its keys. What
    this read saves is embedding time, never correctness: the write goes on without it."""
    try:
        return collection.get(**query)
    except Exception:  # any failure of this read costs only the model's time
        return None


def _vectors_by_hash(collection: Collection, records: Sequence[ChunkRecord]) -> dict[str, Any]:
    """Stored vectors of the records' inputs, by input: from chunks of the same writer with the same text hash
    and the very same stored text and context. The hash alone is not trusted (a chunk another tool edited in place
    keeps its old hash), and where several such chunks disagree on the vector none is taken: the model embeds it."""
    by_hash: dict[str, ChunkRecord] = {}
    for record in records:
        by_hash.setdefault(str(record.metadata[TEXT_HASH]), record)
    donors: dict[str, list[Any]] = {}
    for part in batches(sorted(by_hash), READ_HASHES):
        where: Any = {TEXT_HASH: {"$in": list(part)}}
        found = _reuse_read(collection, where=where, include=["metadatas", "embeddings", "documents"])
        embeddings = found.get("embeddings") if found is not None else None
        if found is None or embeddings is None:
            continue
        rows = zip(found.get("metadatas") or [], found.get("documents") or [], embeddings, strict=True)
        for metadata, document, vector in rows:
            wanted = by_hash.get(str((metadata or {}).get(TEXT_HASH)))
            if (
                wanted is not None
                and document == wanted.text
                and embedding_input(document, metadata) == wanted.embedded
                and all(metadata.get(f) == wanted.metadata.get(f) for f in WRITER_FIELDS)
            ):
                donors.setdefault(wanted.embedded, []).append(vector)
    return {
        text: vectors[0]
        for text, vectors in donors.items()
        if all(_same_vector(vectors[0], other) for other in vectors[1:])
    }


def _same_vector(a: Any, b: Any) -> bool:
    import numpy as np

    return len(a) == len(b) and bool(np.allclose(a, b, rtol=1e-6, atol=1e-7))


def misembedded(collection: Collection, owner: Owner) -> list[str]:
    """The ids of one owner's chunks whose recorded text hash is not their stored input's (context line and text):
    another hand changed the text (or planted the chunk) without embedding it, so the vector cannot be trusted to
    be the text's.

    The hash says which text was embedded; it cannot prove the vector is that text's (only the model can), so
    a vector changed alone, with text and hash left as they were, is not seen here. Chunks from before the hash
    was recorded carry none and are left alone. The cost is one read of the owner's texts, page by page.
    """
    record, found = function_record(collection), []
    size, offset = max_batch_size(collection), 0
    while True:
        page = collection.get(where=owner.where(), include=["metadatas", "documents"], limit=size, offset=offset)
        rows = zip(page["ids"], page.get("metadatas") or [], page.get("documents") or [], strict=True)
        for chunk_id, metadata, text in rows:
            recorded = (metadata or {}).get(TEXT_HASH)
            embedded = embedding_input(text or "", metadata)
            if owner.owns(metadata or {}) and recorded is not None and recorded != text_hash(embedded, record):
                found.append(chunk_id)
        if len(page["ids"]) < size:
            return found
        offset += size


def embed_again(collection: Collection, chunk_ids: Sequence[str], embed: Embedder) -> int:
    """Embed the chunks' stored inputs (context line and text) again with the function the collection records and
    record their hash: the repair of misembedded chunks (no S3 read; texts and the rest of their metadata stay)."""
    embed, record, done = function_of(collection, embed), function_record(collection), 0
    for part in batches(list(chunk_ids), max_batch_size(collection)):
        found = collection.get(ids=list(part), include=["documents", "metadatas"])
        metadatas = found.get("metadatas") or [{}] * len(found["ids"])
        inputs = [
            embedding_input(text or "", metadata)
            for text, metadata in zip(found.get("documents") or [], metadatas, strict=True)
        ]
        if not inputs:
            continue
        collection.update(
            ids=list(found["ids"]),
            embeddings=list(embed_texts(embed, inputs)),  # type: ignore[arg-type]
            metadatas=[{TEXT_HASH: text_hash(embedded, record)} for embedded in inputs],
        )
        done += len(inputs)
    return done
