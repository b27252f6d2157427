"""The repair job's run: sync exactly the keys the audit found and delete the chunks no sync would remove.

Missing and stale keys are registered as partitions and indexed; keys whose object is gone are
synced too, which removes their chunks (and records `removed` on their partition); chunks of keys
the source no longer selects are deleted directly, since a sync would index those objects again.
Misembedded chunks are deleted and their keys synced, which writes them again from S3; keys whose
labels are not S3's are synced, which updates them alone.
Metadata files waiting for their document are synced only if no sync has recorded which document
they name yet (so that its upload completes them).
"""

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dagster as dg
from sqlalchemy.exc import IntegrityError

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.links import InstanceMetaLinks
from s3sync_dagster.defs.names import partitions_name, register_partitions
from s3sync_dagster.defs.resources import ChromaResource, DocumentsResource, EmbeddingResource, S3Connections
from s3sync_dagster.defs.run_config import RepairConfig
from s3sync_dagster.defs.runs.assets import RunEvent, index_partitions
from s3sync_dagster.defs.runs.checks import audited_collections, drift_of
from s3sync_dagster.pipeline import audit
from s3sync_dagster.pipeline.audit import Drift, may_write, misembedded_partitions, writer_of
from s3sync_dagster.pipeline.chroma import chunks_of, delete_ids, delete_owned, strangers
from s3sync_dagster.pipeline.lexicon import rebuild_all
from s3sync_dagster.pipeline.records import to_partition_key
from s3sync_dagster.pipeline.s3 import ObjectError, ObjectMissing, head_object, is_meta_key
from s3sync_dagster.pipeline.spec import SourceSpec


def delete_unselected(
    chroma: ChromaResource, embedding: EmbeddingResource, source: SourceConfig, partitions: list[str]
) -> int:
    """Delete the chunks that belong to these partition keys (their object or their .meta.json)."""
    deleted = 0
    for collection in audited_collections(chroma, embedding, source):
        for partition in partitions:
            field_name = "metadata_key" if is_meta_key(partition) else "object_key"
            ids = [
                chunk_id
                # A chunk a .meta.json indexed belongs to that file's partition, not to its document's.
                for chunk_id, chunk in chunks_of(
                    collection, field_name, partition, source.spec(embedding.spec()).owner
                ).items()
                if field_name == "metadata_key" or not chunk.metadata.get("metadata_key")
            ]
            deleted += delete_ids(collection, ids)
    return deleted


def delete_foreign(chroma: ChromaResource, embedding: EmbeddingResource, source: SourceConfig) -> dict[str, int]:
    """Delete every chunk in this source's own collection that is not the source's (another source's, another
    project's, an unknown writer's: none may write there), so its documents can be restored under their own
    ids; counted by who wrote them."""
    collection = chroma.collection(source.collection_name, embedding)
    spec = source.spec(embedding.spec())
    found = strangers(collection, spec.owner, lambda metadata: writer_of(metadata, spec))
    delete_ids(collection, [chunk_id for ids in found.values() for chunk_id in ids])
    return {writer: len(ids) for writer, ids in found.items()}


def delete_misplaced(
    chroma: ChromaResource, embedding: EmbeddingResource, source: SourceConfig, collection_names: list[str]
) -> int:
    """Delete the source's own chunks from collections it may not write (another source's). A name it may
    write (its own collection, say, typed into a repair's config in the launchpad) is never emptied."""
    from chromadb.errors import NotFoundError

    spec = source.spec(embedding.spec())
    deleted = 0
    for name in collection_names:
        if may_write(spec, name):
            continue
        try:
            collection = chroma.collection(name, embedding, create=False)
        except NotFoundError:  # dropped since the audit: nothing of the source is left there
            continue
        deleted += delete_owned(collection, spec.owner)  # never a same-named source's of another project
    return deleted


def delete_misembedded(
    chroma: ChromaResource,
    embedding: EmbeddingResource,
    source: SourceConfig,
    collection_names: list[str],
    readable: Callable[[str], bool] = lambda object_key: True,
) -> tuple[dict[str, int], list[str]]:
    """Delete the source's chunks whose text hash is not their text's (chunk_drift.misembedded_partitions), so a
    sync of their partitions writes them again from what S3 holds (never from their own texts): how many went, by
    collection, and those partitions. A chunk no sync of the source writes again (an invocation's, in another
    collection) takes the rest of its document there with it: an absent document, not a partial one.

    readable: whether a sync could read the chunk's object now (not archived, not too large): a chunk of one it
    could not is left as it is, to be written again once it can (the audit still counts it)."""
    from chromadb.errors import NotFoundError

    spec = source.spec(embedding.spec())
    deleted: dict[str, int] = {}
    partitions: set[str] = set()
    for name in collection_names:
        if not may_write(spec, name):
            continue
        try:
            collection = chroma.collection(name, embedding, create=False)
        except NotFoundError:
            continue
        found = misembedded_partitions(collection, spec.owner)
        if not found:
            deleted[name] = 0
            continue
        held = collection.get(ids=sorted(found), include=["metadatas"])
        ids: set[str] = set()
        for chunk_id, held_metadata in zip(held["ids"], held.get("metadatas") or [], strict=True):
            metadata: Mapping[str, Any] = held_metadata or {}
            object_key, partition = str(metadata.get("object_key", "")), found[chunk_id]
            if not readable(object_key):
                continue
            if audit.rewritten(spec, name, partition):
                ids.add(chunk_id)
                partitions.add(partition)
            else:  # the invocation's whole document in this collection, no other document of the object
                ids |= set(_invoked(collection, object_key, str(metadata.get("document_id", "")), spec))
        deleted[name] = delete_ids(collection, sorted(ids))
    return deleted, sorted(partitions)


def _invoked(collection: Any, object_key: str, document_id: str, spec: SourceSpec) -> list[str]:
    """The ids of one document's chunks an invocation wrote to this collection for the object (none a metadata
    file sent)."""
    chunks = chunks_of(collection, "object_key", object_key, spec.owner)
    return [
        chunk_id
        for chunk_id, chunk in chunks.items()
        if not chunk.metadata.get("metadata_key") and chunk.metadata.get("document_id") == document_id
    ]


def readable_now(s3: Any, spec: SourceSpec) -> Callable[[str], bool]:
    """Whether a sync could read each object now (one HEAD each): not archived and not over max_object_bytes. A
    gone object is readable in this sense: its sync removes its chunks anyway."""

    def readable(object_key: str) -> bool:
        try:
            info = head_object(s3, spec.bucket_name, object_key)
        except ObjectMissing:
            return True
        except ObjectError:
            return False
        return info.archived is None and info.size <= spec.max_object_bytes

    return functools.lru_cache(maxsize=None)(readable)


def unlinked_waiting(instance: dg.DagsterInstance, source_name: str, drift: Drift) -> list[str]:
    """The waiting metadata files no sync has linked to their document yet (uploaded while nothing listened):
    a sync of each records the link, so the document's upload completes it; linked ones need nothing."""
    linked = InstanceMetaLinks(instance, source_name).naming(set(drift.waiting.values()))
    return sorted(meta_key for meta_key, document in drift.waiting.items() if meta_key not in linked.get(document, []))


def register_new(instance: dg.DagsterInstance, source: SourceConfig, object_keys: list[str]) -> list[str]:
    """Register the keys' partitions not registered yet; returns every key's partition key.

    In metadata mode documents are not partitions: their sync brings the metadata files naming them up to date.
    """
    name = partitions_name(source.name)
    partitions = [to_partition_key(object_key) for object_key in object_keys]
    for attempt in range(2):
        registered = set(instance.get_dynamic_partitions(name))
        new = [
            partition
            for partition, object_key in zip(partitions, object_keys, strict=True)
            if partition not in registered and (source.auto_sync != "metadata" or is_meta_key(object_key))
        ]
        try:
            register_partitions(instance, source.name, new)
            break
        except IntegrityError:
            # Another command (a sync's discovery, a sensor) registered some of them since they were read.
            if attempt:
                raise
    return partitions


def repair_drift(
    context: dg.OpExecutionContext,
    source: SourceConfig,
    config: RepairConfig,
    *,
    s3: S3Connections,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
    documents: DocumentsResource,
) -> Iterator[RunEvent]:
    """The repair job's run: the given keys (else what an audit finds) are synced, unselected chunks deleted;
    each key's event yielded as it is done."""
    object_keys, unselected = config.object_keys, config.unselected
    misplaced, foreign, indexes = config.misplaced, config.foreign, config.lexicon
    misembedded = config.misembedded
    if object_keys is None:
        drift = drift_of(source, context.instance, s3.client(source.name), chroma, embedding)
        context.log.info(drift.summary())
        object_keys = sorted({*drift.to_sync(), *unlinked_waiting(context.instance, source.name, drift)})
        unselected = drift.unselected
        misplaced, foreign, indexes = sorted(drift.misplaced), bool(drift.foreign), sorted(drift.lexicon)
        misembedded = sorted(drift.misembedded)
    if foreign:
        with chroma.write_lock():
            by_writer = delete_foreign(chroma, embedding, source)
        shown = ", ".join(f"{n} of source '{writer}'" for writer, n in sorted(by_writer.items())) or "none"
        context.log.info(f"deleted chunks other sources wrote into collection '{source.collection_name}': {shown}")
    if misplaced:
        with chroma.write_lock():
            deleted = delete_misplaced(chroma, embedding, source, misplaced)
        context.log.info(
            f"deleted {deleted} chunk(s) of source '{source.name}' from collection(s) it may not write: "
            + ", ".join(misplaced)
        )
    if unselected:
        with chroma.write_lock():
            deleted = delete_unselected(chroma, embedding, source, unselected)
        context.log.info(f"deleted {deleted} chunk(s) of {len(unselected)} key(s) the source no longer selects")
    if indexes:
        with chroma.write_lock():
            built = rebuild_all(chroma.collection(name, embedding, create=False) for name in indexes)
        context.log.info(
            "built the lexical index again: " + ", ".join(f"{name} ({n} chunks)" for name, n in built.items())
        )
    if misembedded:
        with chroma.write_lock():
            deleted_by_collection, rewritten = delete_misembedded(
                chroma, embedding, source, misembedded,
                readable_now(s3.client(source.name), source.spec(embedding.spec())),
            )  # fmt: skip
        # Found since the audit or not: every partition that lost a chunk here is synced below.
        object_keys = sorted({*object_keys, *(set(rewritten) - set(unselected))})
        context.log.info(
            "deleted the chunks whose text hash was not their text's, to be written again from S3: "
            + ", ".join(f"{name} ({n} chunks)" for name, n in deleted_by_collection.items())
        )
    if not object_keys:
        return
    partitions = register_new(context.instance, source, object_keys)
    yield from index_partitions(
        context, source, partitions, s3=s3, chroma=chroma, embedding=embedding, documents=documents
    )
