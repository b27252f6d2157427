"""Chunks -> Chroma: replace an object's chunks exactly, skip what did not change, delete, in client batches."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from chromadb import Schema
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.types import Documents, EmbeddingFunction

from s3sync_dagster.pipeline import keys, lexicon
from s3sync_dagster.pipeline.owners import Owner, describe

MetadataValue = str | int | float | bool | list[str] | list[int] | list[float] | list[bool]
Metadata = dict[str, MetadataValue]
Embedder = Callable[[list[str]], Sequence[Any]]

# Keys this project writes on every chunk; user metadata may not overwrite them.
RESERVED_METADATA_KEYS = frozenset(
    {
        "object_key", "bucket_name", "source", "etag", "last_modified", "size_bytes",
        "chunk_index", "chunk_count", "start_line", "end_line", "language", "chunker",
        "custom_id", "document_id", "sync_signature", "extractor", "page", "slide", "sheet",
        "page_end", "metadata_key", "container_tag", "project", "text_hash",
    }
)  # fmt: skip

# Every chunk records a hash of its text and of the embedding function its collection records: a chunk of
# another object of the same writer with the same text (a copy, a licence header, a template) takes its vector
# from there instead of from the model (_vectors_for). The function is in the hash, so a vector is never taken
# across functions (a rebuild copy under another model, or int8 beside float32).
TEXT_HASH = "text_hash"
# Hashes one read asks for: a `$in` of a write group's texts.
READ_HASHES = 256
# The metadata that says whose a chunk is (owners.Owner.stamp, the bucket): vectors are taken from the writer's own.
WRITER_FIELDS = ("source", "project", "bucket_name")


@dataclass(frozen=True)
class ChunkRecord:
    chunk_id: str
    text: str
    metadata: Metadata


@dataclass
class WriteStats:
    written: int = 0  # chunks whose text is new or changed (embedded or reused by text)
    embedded: int = 0  # of those, how many needed the model
    metadata_only: int = 0  # same text, new metadata (no embedding, no vector rewrite)
    unchanged: int = 0
    deleted: int = 0
    embed_seconds: float = 0.0  # time in the model, included in the write
    embedded_texts: set[str] = dataclasses.field(default_factory=set)  # the texts the model embedded


def function_record(collection: Collection) -> str:
    """The embedding function its collection records (name and config), as text: what a vector depends on."""
    recorded = (collection.configuration_json or {}).get("embedding_function") or {}
    return json.dumps({"name": recorded.get("name"), "config": recorded.get("config") or {}}, sort_keys=True)


def text_hash(text: str, function: str) -> str:
    """The hash of a chunk's text and its collection's function (function_record): equal hashes, equal vectors."""
    return hashlib.sha256(f"{function}\n{text}".encode()).hexdigest()[:32]


def _hashed(records: Sequence[ChunkRecord], function: str) -> list[ChunkRecord]:
    return [
        dataclasses.replace(record, metadata={**record.metadata, TEXT_HASH: text_hash(record.text, function)})
        for record in records
    ]


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# How many records one request may carry is the client's to say (5,461 embedded here; a server or
# Chroma Cloud answers with its own), and a Collection keeps its client to itself: the limit is
# recorded by collection id when a collection is opened here (open_collection, get_collection). A
# collection opened elsewhere gets the fallback, below every limit seen.
FALLBACK_MAX_BATCH = 1000
_max_batch: dict[UUID, int] = {}


def _opened(client: ClientAPI, collection: Collection) -> Collection:
    _max_batch[collection.id] = int(client.get_max_batch_size())
    settings = client.get_settings()
    if settings.is_persistent:  # an embedded store: its lexical index lies in its folder (pipeline/lexicon.py)
        lexicon.attach(collection, settings.persist_directory)
    elif (served := lexicon.served(settings.chroma_server_host, settings.chroma_server_http_port)) is not None:
        lexicon.attach_index(collection, served)  # a server's, in PostgreSQL (pipeline/lexicon_postgres.py)
    return collection


def opened(client: ClientAPI, collection: Collection) -> Collection:
    """A collection got from `client` elsewhere, made known here as open_collection's are (batch limit, index)."""
    return _opened(client, collection)


def max_batch_size(collection: Collection) -> int:
    return _max_batch.get(collection.id, FALLBACK_MAX_BATCH)


# A collection being re-embedded under another function (pipeline/reembed.py): its copy, and the function of
# each side where it is not the writer's, by collection id. Every write here lands in both, each side embedded
# by its own function, so the copy stays exact while it is filled.
_copies: dict[UUID, Collection] = {}
_functions: dict[UUID, Embedder] = {}


def attach_copy(collection: Collection, copy: Collection, function: Embedder) -> None:
    """From now on, writes to `collection` land in `copy` too, embedded by `function`."""
    _copies[collection.id] = copy
    _functions[copy.id] = function


def detach_copy(collection: Collection) -> None:
    _copies.pop(collection.id, None)


def embed_with(collection: Collection, function: Embedder) -> None:
    """Writes to `collection` embed with `function` (the function it records), whatever the writer's is."""
    _functions[collection.id] = function


def delete_ids(collection: Collection, ids: Sequence[str]) -> int:
    for part in _batches(ids, max_batch_size(collection)):
        with lexicon.mirrored(collection, part, written={}):
            collection.delete(ids=list(part))
    copy = _copies.get(collection.id)
    if copy is not None:
        with _copy_gone(collection):
            delete_ids(copy, ids)
    return len(ids)


@contextlib.contextmanager
def _copy_gone(collection: Collection) -> Iterator[None]:
    """A write to a re-embedding's copy that is no longer there (abandoned, or swapped in and so the collection
    retired) is no longer needed: the copy is let go and the write to the collection goes on (a swap's own
    checks, and sync.sync_keys_following_swaps, bring what the collection took into the swapped-in one)."""
    from chromadb.errors import NotFoundError

    try:
        yield
    except NotFoundError:
        detach_copy(collection)


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
    for part in _batches(list(found_chunks), READ_KEYS):
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


def owned(collection: Collection, owner: Owner) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(chunk id, metadata) of every chunk of one owner in a collection: what a source counts, audits and
    removes as its own, never a same-named source's of another project or bucket."""
    for page in pages(collection, owner.where()):
        yield from ((chunk_id, metadata) for chunk_id, metadata in page if owner.owns(metadata))


def misembedded(collection: Collection, owner: Owner) -> list[str]:
    """The ids of one owner's chunks whose recorded text hash is not their stored text's: another hand changed
    the text (or planted the chunk) without embedding it, so the vector cannot be trusted to be the text's.

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
            if owner.owns(metadata or {}) and recorded is not None and recorded != text_hash(text or "", record):
                found.append(chunk_id)
        if len(page["ids"]) < size:
            return found
        offset += size


def embed_again(collection: Collection, chunk_ids: Sequence[str], embed: Embedder) -> int:
    """Embed the chunks' stored texts again with the function the collection records and record their hash:
    the repair of misembedded chunks (no S3 read; texts and the rest of their metadata stay)."""
    embed, record, done = _functions.get(collection.id, embed), function_record(collection), 0
    for part in _batches(list(chunk_ids), max_batch_size(collection)):
        found = collection.get(ids=list(part), include=["documents"])
        texts = [text or "" for text in found.get("documents") or []]
        if not texts:
            continue
        collection.update(
            ids=list(found["ids"]),
            embeddings=list(_embed(embed, texts)),  # type: ignore[arg-type]
            metadatas=[{TEXT_HASH: text_hash(text, record)} for text in texts],
        )
        done += len(texts)
    return done


def delete_owned(collection: Collection, owner: Owner) -> int:
    """Delete every chunk of one owner in a collection (a removed source's, a source's misplaced ones)."""
    return delete_ids(collection, [chunk_id for chunk_id, _ in owned(collection, owner)])


def strangers(
    collection: Collection, owner: Owner, writer_of: Callable[[Mapping[str, Any]], str]
) -> dict[str, list[str]]:
    """The ids of every chunk in a source's own collection that is not the source's, by who wrote it (as
    `writer_of` names them): another source, another project's, or a writer that recorded none (another
    tool). None of them may be there."""
    found: dict[str, list[str]] = {}
    for page in pages(collection):
        for chunk_id, metadata in page:
            if not owner.owns(metadata):
                found.setdefault(writer_of(metadata), []).append(chunk_id)
    return found


def is_current(stored: Mapping[str, StoredChunk], document_id: str, etag: str, sync_signature: str) -> bool:
    """True when the collection holds exactly the chunks this object version and these settings produce."""
    if not stored:
        return False
    count = next(iter(stored.values())).metadata.get("chunk_count")
    if not isinstance(count, int) or count != len(stored):
        return False
    expected_ids = {keys.chunk_id(document_id, index) for index in range(count)}
    return set(stored) == expected_ids and all(
        chunk.metadata.get("etag") == etag and chunk.metadata.get("sync_signature") == sync_signature
        for chunk in stored.values()
    )


def _with_deletions(new: Metadata, old: Mapping[str, Any]) -> dict[str, Any]:
    # Chroma merges metadata on update/upsert; a key the new version lacks must be removed with None.
    merged: dict[str, Any] = dict(new)
    merged.update({key: None for key in old if key not in new})
    return merged


class ClaimLost(ValueError):
    """Another source took a chunk id first, in a collection several sources write: nothing of this write stays."""

    def __init__(self, collection_name: str, chunk_id: str, holder: str) -> None:
        super().__init__(
            f"id '{chunk_id}' in collection '{collection_name}' was claimed by {holder} while this sync "
            "prepared its chunks; a source replaces or deletes only its own chunks, so none of these were written"
        )
        self.holder = holder


def _claim(
    collection: Collection, records: Sequence[ChunkRecord], vectors: Sequence[Any], owner: Owner, batch: int
) -> dict[int, Mapping[str, Any]]:
    """Write records whose ids this source does not hold yet so that, of writers racing for an id, exactly
    one ends holding it: Chroma's `add` leaves an id that exists as it is (embedded, `chroma run`, Cloud: its
    log applies writes in order), so the first add wins, and reading the ids back tells each writer whether it
    was first. Chunk 0 goes first, alone: every document has one, so whoever holds it holds the document, and
    a loser never puts a chunk beside the winner's (where the winner's own checks would see a stranger's).
    A writer that lost any id takes back those it got, and raises ClaimLost naming the holder.

    Returns, by position, the metadata of records whose id this source already held with other contents (a
    chunk of its own the caller did not count as this object's): the caller overwrites those.
    """
    first = [i for i, record in enumerate(records) if record.metadata.get("chunk_index") == 0]
    phases = [first, [i for i in range(len(records)) if i not in set(first)]]
    held: dict[str, Mapping[str, Any]] = {}
    claimed: list[str] = []
    for phase in (phase for phase in phases if phase):
        ids = [records[i].chunk_id for i in phase]
        for part in _batches(phase, batch):
            with lexicon.mirrored(collection, [records[i].chunk_id for i in part]):
                collection.add(
                    ids=[records[i].chunk_id for i in part],
                    documents=[records[i].text for i in part],
                    embeddings=[vectors[i] for i in part],
                    metadatas=[records[i].metadata for i in part],  # type: ignore[misc]
                )
        for part_ids in _batches(ids, batch):
            found = collection.get(ids=list(part_ids), include=["metadatas"])
            metadatas = found.get("metadatas") or [{}] * len(found["ids"])
            held.update({chunk_id: metadata or {} for chunk_id, metadata in zip(found["ids"], metadatas, strict=True)})
        claimed += [chunk_id for chunk_id in ids if chunk_id in held and owner.owns(held[chunk_id])]
        lost = [chunk_id for chunk_id in ids if chunk_id not in held or not owner.owns(held[chunk_id])]
        if lost:
            delete_ids(collection, sorted(claimed))
            holder = describe(held[lost[0]]) if lost[0] in held else "nobody (removed meanwhile)"
            raise ClaimLost(collection.name, lost[0], holder)
    return {i: held[r.chunk_id] for i, r in enumerate(records) if dict(held[r.chunk_id]) != r.metadata}


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
    (not in `stored`) are claimed (`_claim`) before anything else is written, so of two sources racing for
    one document id exactly one succeeds and the other raises ClaimLost having changed nothing.
    """
    stats = WriteStats()
    batch = max_batch_size(collection)
    embed = _functions.get(collection.id, embed)
    copy = _copies.get(collection.id)
    if copy is not None:  # the same write in the copy first, in its function: it never lags the collection
        with _copy_gone(collection):
            _write_copy(copy, records, stored, embed)
    records = _hashed(records, function_record(collection))
    to_write: list[ChunkRecord] = []
    to_update: list[ChunkRecord] = []
    for record in records:
        old = stored.get(record.chunk_id)
        if old is None or old.text != record.text:
            to_write.append(record)
        elif dict(old.metadata) != record.metadata:
            to_update.append(record)
        else:
            stats.unchanged += 1

    vectors = _vectors_for(collection, to_write, stored, embed, stats)
    if claim_for is not None:
        claimed = [i for i, record in enumerate(to_write) if record.chunk_id not in stored]
        claiming = [to_write[i] for i in claimed]
        earlier = _claim(collection, claiming, [vectors[i] for i in claimed], claim_for, batch)
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
    for part in _batches(list(range(len(to_write))), batch):
        written = {to_write[i].chunk_id: to_write[i].text for i in part}
        with lexicon.mirrored(collection, list(written), written):
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
    for part_records in _batches(to_update, batch):
        collection.update(
            ids=[record.chunk_id for record in part_records],
            metadatas=[_with_deletions(record.metadata, stored[record.chunk_id].metadata) for record in part_records],  # type: ignore[misc]
        )
    stats.metadata_only = len(to_update)

    keep = {record.chunk_id for record in records}
    stale = sorted(chunk_id for chunk_id in stored if chunk_id not in keep)
    for part_ids in _batches(stale, batch):
        with lexicon.mirrored(collection, part_ids, written={}):
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


def _vectors_for(
    collection: Collection,
    records: Sequence[ChunkRecord],
    stored: Mapping[str, StoredChunk],
    embed: Embedder,
    stats: WriteStats,
) -> list[Any]:
    """Embeddings for records, reusing the stored vector of any chunk with the same text: of this object (a
    shifted chunk), else any other chunk of the same writer whose text hash is the record's."""
    if not records:
        return []
    reusable_ids: dict[str, str] = {}
    record = function_record(collection)
    for chunk in stored.values():
        recorded = chunk.metadata.get(TEXT_HASH)
        # A chunk whose recorded hash is not its text's was changed by another hand: its vector is not trusted.
        if chunk.text is not None and (recorded is None or recorded == text_hash(chunk.text, record)):
            reusable_ids.setdefault(chunk.text, chunk.chunk_id)
    wanted = {reusable_ids[r.text] for r in records if r.text in reusable_ids}
    reused: dict[str, Any] = {}
    if wanted:
        found = collection.get(ids=sorted(wanted), include=["embeddings", "documents"])
        embeddings = found.get("embeddings")
        documents = found.get("documents") or []
        if embeddings is not None:
            for text, vector in zip(documents, embeddings, strict=True):
                if text is not None:
                    reused[text] = vector
    reused.update(_vectors_by_hash(collection, [r for r in records if r.text not in reused]))
    # Each distinct new text is embedded once, even when it repeats within the object.
    fresh_texts = sorted({r.text for r in records if r.text not in reused})
    started = time.perf_counter()
    fresh = dict(zip(fresh_texts, _embed(embed, fresh_texts), strict=True)) if fresh_texts else {}
    stats.embed_seconds = time.perf_counter() - started
    stats.embedded = len(fresh_texts)
    stats.embedded_texts = set(fresh_texts)
    return [reused[r.text] if r.text in reused else fresh[r.text] for r in records]


def _vectors_by_hash(collection: Collection, records: Sequence[ChunkRecord]) -> dict[str, Any]:
    """Stored vectors of the records' texts, by text: from chunks of the same writer with the same text hash
    and the very same stored text. The hash alone is not trusted (a chunk another tool edited in place keeps its
    old hash), and where several such chunks disagree on the vector none is taken: the model embeds it."""
    by_hash: dict[str, ChunkRecord] = {}
    for record in records:
        by_hash.setdefault(str(record.metadata[TEXT_HASH]), record)
    donors: dict[str, list[Any]] = {}
    for part in _batches(sorted(by_hash), READ_HASHES):
        where: Any = {TEXT_HASH: {"$in": list(part)}}
        found = collection.get(where=where, include=["metadatas", "embeddings", "documents"])
        embeddings = found.get("embeddings")
        if embeddings is None:
            continue
        rows = zip(found.get("metadatas") or [], found.get("documents") or [], embeddings, strict=True)
        for metadata, document, vector in rows:
            wanted = by_hash.get(str((metadata or {}).get(TEXT_HASH)))
            if (
                wanted is not None
                and document == wanted.text
                and all(metadata.get(f) == wanted.metadata.get(f) for f in WRITER_FIELDS)
            ):
                donors.setdefault(wanted.text, []).append(vector)
    return {
        text: vectors[0]
        for text, vectors in donors.items()
        if all(_same_vector(vectors[0], other) for other in vectors[1:])
    }


def _same_vector(a: Any, b: Any) -> bool:
    import numpy as np

    return len(a) == len(b) and bool(np.allclose(a, b, rtol=1e-6, atol=1e-7))


# While a collection is rebuilt under a new configuration, the copy has this name; it takes the
# collection's name only once complete, and a copy left by a crash is finished or dropped on next open.
REBUILD_SUFFIX = keys.REBUILD_SUFFIX
# On a copy this project made (a rebuild's, a re-embedding's): the name of the collection it copies. A collection
# of a reserved name without it is not this project's (another tool's, another release's) and is never renamed
# or dropped here.
COPY_OF_KEY = "s3sync_copy_of"


def is_copy_of(collection: Collection, name: str) -> bool:
    """Whether `collection` is the copy this project made of collection `name` (COPY_OF_KEY; a re-embedding's
    copy of an earlier release records `s3sync_reembedded_from` instead)."""
    metadata = collection.metadata or {}
    return collection.name == name + REBUILD_SUFFIX and (
        metadata.get(COPY_OF_KEY) == name or (COPY_OF_KEY not in metadata and "s3sync_reembedded_from" in metadata)
    )


def open_collection(
    client: ClientAPI,
    name: str,
    function: EmbeddingFunction[Documents],
    metadata: Mapping[str, Any],
    schema: Schema | None = None,
) -> Collection:
    """Get or create a collection recording ``function`` (and, new, ``schema``'s indexes); finishes a rebuild
    a crash interrupted."""
    from chromadb.errors import NotFoundError

    try:
        return get_collection(client, name, function)
    except NotFoundError:
        pass
    try:
        # The copy is complete once the original is gone (it is deleted only after the last page). A collection of
        # that name this project did not make as the copy of this one is not taken: a new collection is.
        copy = client.get_collection(name=name + REBUILD_SUFFIX, embedding_function=function)  # type: ignore[arg-type]
        if not is_copy_of(copy, name):
            raise NotFoundError(f"collection '{copy.name}' is not a copy of '{name}'")
    except NotFoundError:
        created = client.get_or_create_collection(
            name=name,
            embedding_function=function,  # type: ignore[arg-type]
            metadata=dict(metadata) or None,  # Chroma refuses an empty metadata
            schema=schema,
        )
        opened = _opened(client, created)
        index = lexicon.of(opened)
        if index is not None:
            index.create_if_empty(opened)
        return opened
    copy.modify(name=name)
    return get_collection(client, name, function)


def get_collection(client: ClientAPI, name: str, function: EmbeddingFunction[Documents]) -> Collection:
    """An existing collection (chromadb's NotFoundError if there is none), with its client's batch limit known."""
    return _opened(client, client.get_collection(name=name, embedding_function=function))  # type: ignore[arg-type]


def rebuild_collection(client: ClientAPI, collection: Collection, function: EmbeddingFunction[Documents]) -> Collection:
    """Copy every record (ids, vectors, texts, metadata) into a new collection that records ``function``,
    then give it the old one's name: Chroma refuses to change a collection's embedding function in place.

    Only for a function whose vectors are the same as the recorded one's (the same model).
    """
    from chromadb.errors import NotFoundError

    name = collection.name
    copy_name = name + REBUILD_SUFFIX
    with contextlib.suppress(NotFoundError, ValueError):
        left = client.get_collection(copy_name)
        if not is_copy_of(left, name):
            raise RuntimeError(
                f"collection '{copy_name}' is in the way of the rebuild of collection '{name}' and is not a copy "
                "s3sync-dagster made: it is left as it is; rename or remove it, then sync again"
            )
        client.delete_collection(copy_name)  # a copy a crash left before the original was deleted
    hnsw = (collection.configuration or {}).get("hnsw")
    copy = client.create_collection(
        name=copy_name,
        # The same index settings: the old record's "cosine" space must not become the new function's "l2".
        configuration={"hnsw": dict(hnsw)} if hnsw else None,  # type: ignore[arg-type,typeddict-item]
        embedding_function=function,  # type: ignore[arg-type]
        metadata={**dict(collection.metadata or {}), COPY_OF_KEY: name},
    )
    page = int(client.get_max_batch_size())
    offset = 0
    while True:
        found = collection.get(limit=page, offset=offset, include=["embeddings", "documents", "metadatas"])  # type: ignore[list-item]
        if not found["ids"]:
            break
        copy.add(
            ids=found["ids"],
            embeddings=found["embeddings"],  # type: ignore[arg-type]
            documents=found["documents"],
            metadatas=found["metadatas"],  # type: ignore[arg-type]
        )
        offset += len(found["ids"])
    client.delete_collection(name)
    copy.modify(name=name)
    rebuilt = get_collection(client, name, function)
    # The marker stays on the collection the copy became: it names that very collection, so it never reads as
    # the copy of another (is_copy_of also asks for the copy's name).
    index = lexicon.of(rebuilt)
    if index is not None:  # the copy is a new collection: its lexical index is built anew, the old one's dropped
        index.rebuild(rebuilt)
        index.drop(collection.id)
    return rebuilt


# A source's own collection records which source writes it (owners.Owner.record), in its metadata.
OWNER_KEY = "s3sync_owner"


def bind_owner(collection: Collection, owner: Owner, store: Callable[[], Iterable[Collection]] = tuple) -> int:
    """Make a source's own collection record that it is this source's, or refuse when it records another;
    returns how many chunks were stamped with the config's new `project` (see below).

    Chunk ids are the object's (sha256 of its key): another project's source writing the same collection
    would replace that source's chunks whenever their keys meet, and count, repair or remove them as its
    own. So the first source to sync into a collection is recorded on it, and any other (another project's
    same-named source, or this source moved to another bucket or prefix) is told so at its first sync; so is
    a source whose very owner (name, bucket, prefix, project) already records another collection of the
    store (`store`: lists every collection, asked only on a first binding), as two projects' identical sources would. A collection from before the
    record existed is bound by the first sync after the upgrade, and when the config has named a `project`
    since, the source's chunks are stamped with it (a metadata update: no re-sync, no embedding).
    """
    metadata = dict(collection.metadata or {})
    recorded = metadata.get(OWNER_KEY)
    if recorded == owner.record():
        return 0
    unnamed = dataclasses.replace(owner, project="")  # the same source, before its config named a project
    if recorded is not None and not (owner.project and recorded == unnamed.record()):
        raise ValueError(
            f"collection '{collection.name}' is the own collection of {_recorded(recorded)}; "
            f"{_recorded(owner.record())} may not write it: another project's source by the same name would replace "
            "and delete that source's chunks. Give this source its own collection_name, or set `project:` in one "
            "config; a source that moved to another bucket or prefix is removed under its old settings first "
            "(s3sync remove-source)"
        )
    others = [other for other in store() if other.name != collection.name]
    if recorded is None:
        for other in others:
            if (other.metadata or {}).get(OWNER_KEY) == owner.record():
                raise ValueError(
                    f"{_recorded(owner.record())} already writes collection '{other.name}' of this store, as another "
                    f"project's identical source would; collection '{collection.name}' would hold the same documents "
                    "and each project would count and remove the other's chunks as its own: set `project:` in one "
                    "config (or remove the source under its old collection_name first)"
                )
    stamped = 0
    # Stamped only where the chunks are surely this source's: its own collection, when it records the source
    # as it was (or records nothing and holds its chunks), and then the collections no source records as its
    # own (those its metadata files and invocations wrote). Another collection recording the unnamed source
    # may be another project's, which names none.
    legacy = recorded is not None or any(True for _ in itertools.islice(owned(collection, unnamed), 1))
    if owner.project and legacy:
        unbound = [other for other in others if OWNER_KEY not in (other.metadata or {})]
        for target in [collection, *unbound]:
            ids = [chunk_id for chunk_id, _ in owned(target, unnamed)]
            for part in _batches(ids, max_batch_size(target)):
                target.update(ids=list(part), metadatas=[{"project": owner.project}] * len(part))
            stamped += len(ids)
    collection.modify(metadata={**metadata, OWNER_KEY: owner.record()})
    return stamped


def moved(client: ClientAPI, name: str, owner: Owner) -> str | None:
    """Why a source finds none of its chunks in its own collection `name` while another collection of the store
    records it as its own (its collection_name was changed since it synced), with the fix; None otherwise."""
    from chromadb.errors import NotFoundError

    others = [c for c in client.list_collections() if c.name != name and c.metadata and c.metadata.get(OWNER_KEY) == owner.record()]  # fmt: skip
    if not others:
        return None
    try:
        if client.get_collection(name).get(where=owner.where(), limit=1, include=[])["ids"]:
            return None
    except (NotFoundError, ValueError):
        pass
    other = others[0]
    return (
        f"{owner.describe()} has no chunks in collection '{name}' (its collection_name), while collection "
        f"'{other.name}' records it as its own and holds {other.count():,} chunk(s): was collection_name changed? "
        f"Set it back to '{other.name}', or remove the source's chunks there (s3sync remove-source with the old "
        "collection_name) and sync again"
    )


def may_reembed(collection: Collection, owner: Owner) -> bool:
    """Whether a model change of `owner` re-embeds `collection`: its own collection (it records the owner), or a
    collection no source records as its own that holds only the owner's chunks (where its metadata files or
    invocations wrote). Another source's or project's collection, or a shared one, keeps its own function."""
    if collection.name.endswith(keys.RESERVED_SUFFIXES):
        return False
    recorded = (collection.metadata or {}).get(OWNER_KEY)
    if recorded is not None:
        return bool(recorded == owner.record())
    return all(owner.owns(metadata) for page in pages(collection) for _, metadata in page)


def _recorded(record: Any) -> str:
    try:
        return describe(json.loads(str(record)))
    except ValueError:
        return "another writer"


class EmbeddingError(RuntimeError):
    """The embedding function failed (a model behind an API that cannot be reached, a bad answer)."""


def _embed(embed: Embedder, texts: list[str]) -> Sequence[Any]:
    try:
        vectors = embed(texts)
    except Exception as error:
        name = getattr(embed, "name", None)
        function = f"embedding function '{name()}'" if callable(name) else "the embedding function"
        raise EmbeddingError(f"{function} failed on {len(texts)} chunk(s): {type(error).__name__}: {error}") from error
    if len(vectors) != len(texts):
        raise EmbeddingError(f"the embedding function returned {len(vectors)} vector(s) for {len(texts)} chunk(s)")
    return vectors


def delete_object(collection: Collection, object_key: str) -> int:
    """Remove every chunk of an object, whatever id scheme wrote it; returns how many."""
    return delete_where(collection, {"object_key": object_key})


def delete_where(collection: Collection, where: dict[str, Any]) -> int:
    return delete_ids(collection, collection.get(where=where, include=[])["ids"])  # type: ignore[arg-type]


INT64 = range(-(2**63), 2**63)
# What one object's own metadata (a .meta.json file's, an invocation's) may hold, on every chunk of it:
# Chroma Cloud's limits per record (32 metadata keys, 16 KiB) are the reference. Without a bound a 1 MB
# string on a 728-chunk document grew the store 390x (2.2 GB against 5.6 MB).
MAX_USER_METADATA_KEYS = 32
MAX_USER_METADATA_BYTES = 16 * 1024


def _check_storable(value: Any, key: str, what: str) -> None:
    """Chroma stores 64-bit integers (a larger one would silently become a float and change) and finite
    floats (NaN and Infinity, which Python's JSON reader accepts, were silently dropped)."""
    if isinstance(value, int) and not isinstance(value, bool) and value not in INT64:
        raise ValueError(f"{what}: metadata '{key}' holds an integer outside the 64-bit range Chroma stores")
    if isinstance(value, float) and not math.isfinite(value):
        shown = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        raise ValueError(f"{what}: metadata '{key}' is {shown}; only finite numbers can be stored")


def _check_size(metadata: Metadata, what: str) -> None:
    if len(metadata) > MAX_USER_METADATA_KEYS:
        raise ValueError(
            f"{what}: metadata has {len(metadata)} keys; at most {MAX_USER_METADATA_KEYS} are allowed "
            "(Chroma Cloud's limit per record)"
        )
    size = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
    if size > MAX_USER_METADATA_BYTES:
        largest = max(metadata, key=lambda key: len(json.dumps(metadata[key], ensure_ascii=False).encode("utf-8")))
        raise ValueError(
            f"{what}: metadata is {size:,} bytes as JSON (largest: '{largest}'); at most {MAX_USER_METADATA_BYTES:,} "
            "bytes are allowed, as every chunk of the object stores it"
        )


def validate_user_metadata(metadata: Mapping[str, Any], what: str) -> Metadata:
    """Sync API rule: scalars (str, number, bool, null) or non-empty homogeneous arrays of scalars.

    Null values are dropped (Chroma stores no nulls); reserved keys are refused rather than silently lost.
    """
    clean: Metadata = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{what}: metadata keys must be non-empty strings (got {key!r})")
        if key in RESERVED_METADATA_KEYS:
            raise ValueError(f"{what}: metadata key '{key}' is reserved for the sync's own metadata")
        if value is None:
            continue
        if isinstance(value, (str, bool, int, float)):
            _check_storable(value, key, what)
            clean[key] = value
        elif isinstance(value, list):
            if not value:
                raise ValueError(f"{what}: metadata '{key}' is an empty array; arrays need at least one value")
            kinds = {type(item) for item in value}
            if len(kinds) != 1 or not kinds <= {str, bool, int, float}:
                raise ValueError(
                    f"{what}: metadata '{key}' must be an array of one scalar type (got {sorted(k.__name__ for k in kinds)})"
                )
            for item in value:
                _check_storable(item, key, what)
            clean[key] = list(value)
        else:
            raise ValueError(
                f"{what}: metadata '{key}' must be a string, number, boolean, null or an array of one of those "
                f"(got {type(value).__name__})"
            )
    _check_size(clean, what)
    return clean
