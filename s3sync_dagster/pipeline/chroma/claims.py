"""Who may write where: the one place that decides, by owners.Owner's rule, whether a writer may take a
collection (its own, recorded on it), a document id (not another writer's, not a live document's) or a chunk id
(raced for in a collection several sources write), and which stored chunks are its own."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline.chroma.lifecycle import max_batch_size
from s3sync_dagster.pipeline.chroma.stored import ChunkRecord, StoredChunk, batches, chunks_of, delete_ids, pages
from s3sync_dagster.pipeline.lexicon import mirrored
from s3sync_dagster.pipeline.records import RESERVED_SUFFIXES, Owner, describe
from s3sync_dagster.pipeline.s3 import ObjectMissing, S3Client, head_object

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection


def owned(collection: Collection, owner: Owner) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(chunk id, metadata) of every chunk of one owner in a collection: what a source counts, audits and
    removes as its own, never a same-named source's of another project or bucket."""
    for page in pages(collection, owner.where()):
        yield from ((chunk_id, metadata) for chunk_id, metadata in page if owner.owns(metadata))


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


def delete_owned(collection: Collection, owner: Owner) -> int:
    """Delete every chunk of one owner in a collection (a removed source's, a source's misplaced ones)."""
    return delete_ids(collection, [chunk_id for chunk_id, _ in owned(collection, owner)])


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
            for part in batches(ids, max_batch_size(target)):
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
    if collection.name.endswith(RESERVED_SUFFIXES):
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


class ClaimLost(ValueError):
    """Another source took a chunk id first, in a collection several sources write: nothing of this write stays."""

    def __init__(self, collection_name: str, chunk_id: str, holder: str) -> None:
        super().__init__(
            f"id '{chunk_id}' in collection '{collection_name}' was claimed by {holder} while this sync "
            "prepared its chunks; a source replaces or deletes only its own chunks, so none of these were written"
        )
        self.holder = holder


def claim(
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
        for part in batches(phase, batch):
            with mirrored(collection, [records[i].chunk_id for i in part]):
                collection.add(
                    ids=[records[i].chunk_id for i in part],
                    documents=[records[i].text for i in part],
                    embeddings=[vectors[i] for i in part],
                    metadatas=[records[i].metadata for i in part],  # type: ignore[misc]
                )
        for part_ids in batches(ids, batch):
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


def check_id_free(collection: Collection, owner: Owner, document_id: str, what: str) -> None:
    """A source never takes the id of another writer's document: its chunks would replace theirs."""
    others = chunks_of(collection, "document_id", document_id, owner, own=False)
    if others:
        other = describe(next(iter(others.values())).metadata)
        raise ValueError(
            f"{what}: id '{document_id}' in collection '{collection.name}' is the id of a document of {other}; "
            f"{owner.describe()} replaces or deletes only its own chunks, so it may not take that id"
        )


def own_chunks(stored: dict[str, StoredChunk], meta_key: str | None) -> dict[str, StoredChunk]:
    """The object's chunks that this sync owns: each .meta.json naming the object is its own document,
    and the object's own (direct) chunks are those no metadata file wrote."""
    return {chunk_id: chunk for chunk_id, chunk in stored.items() if chunk.metadata.get("metadata_key") == meta_key}


def claim_document_id(
    s3: S3Client,
    collection: Collection,
    owner: Owner,
    *,
    own_collection: str,
    bucket_name: str,
    metadata_mode: bool,
    meta_key: str,
    document_id: str,
) -> list[str]:
    """One id, one document: a metadata file may not take over the chunks of another document that still exists.
    Raises naming the other document; else returns the ids of the chunks it takes over (the caller deletes them).

    Whose chunks hold the id decides, wherever that document lives: another source's are never taken (in
    this source's own collection, `own_collection`, where no other source may write, they are an intrusion and
    replaced); this source's are taken only when the document that wrote them is gone (its metadata file, or,
    for chunks an object's own sync wrote, the object) or when an invocation wrote them.
    """
    what = f"metadata file '{meta_key}'"
    found = collection.get(where={"document_id": document_id}, include=["metadatas"])
    stale: list[str] = []
    for chunk_id, metadata in zip(found["ids"], found.get("metadatas") or [], strict=True):
        metadata = metadata or {}
        other_meta = str(metadata.get("metadata_key") or "")
        if not owner.owns(metadata):
            if collection.name != own_collection:
                check_id_free(collection, owner, document_id, what)
            stale.append(chunk_id)
            continue
        if other_meta == meta_key:
            continue
        # An object's own chunks, in metadata mode, are leftovers: that mode indexes documents only through
        # their metadata files (the object's next sync removes them anyway).
        direct = not metadata.get("custom_id") and not metadata_mode
        claimer = other_meta or (str(metadata.get("object_key") or "") if direct else None)
        if claimer:
            try:
                head_object(s3, str(metadata.get("bucket_name") or bucket_name), claimer)
            except ObjectMissing:
                stale.append(chunk_id)
                continue
            kind = f"metadata file '{claimer}'" if other_meta else f"object '{claimer}'"
            raise ValueError(
                f"{what}: id '{document_id}' is already the id of the document of {kind} in collection "
                f"'{collection.name}'; each metadata file is its own document and needs its own id"
            )
        stale.append(chunk_id)
    return stale
