"""What a source's collection holds now, document by document: what an asset of the user's reads downstream of the
source's (`s3sync_dagster.read_index`), from Chroma itself. Dagster's partitions of the source say which keys were
materialised, and keep a deleted object's key where `forget_deleted_keys: false`; this says which are indexed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from s3sync_dagster.config import AppConfig
from s3sync_dagster.pipeline.chroma import owned
from s3sync_dagster.pipeline.records import to_partition_key


@dataclass(frozen=True)
class IndexedDocument:
    """One object's chunks in the source's collection."""

    object_key: str
    partition_key: str  # its partition of the source's asset (its .meta.json file's, if one named it)
    chunks: int
    etag: str  # the object's ETag when the chunks were made


@dataclass(frozen=True)
class IndexSummary:
    """A source's own chunks in its collection, by object key (sorted); another writer's chunks are not counted."""

    source: str
    collection: str
    documents: Mapping[str, IndexedDocument] = field(default_factory=dict)

    @property
    def chunk_count(self) -> int:
        return sum(document.chunks for document in self.documents.values())

    def __len__(self) -> int:
        return len(self.documents)

    def __contains__(self, object_key: object) -> bool:
        return object_key in self.documents


def summarize(config: AppConfig, source_name: str) -> IndexSummary:
    """The source's documents and their chunk counts as its collection holds them now: one read of the source's
    chunks' metadata (no text, no vectors), page by page. A collection not made yet holds none."""
    from chromadb.errors import NotFoundError

    source = config.source(source_name)
    embedding = config.embedding.spec()
    owner = source.spec(embedding).owner
    try:
        collection = config.chroma.store().collection(source.collection_name, embedding, create=False, queries=True)
    except NotFoundError:
        return IndexSummary(source.name, source.collection_name)
    found: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for _, metadata in owned(collection, owner):
        object_key = metadata.get("object_key")
        if isinstance(object_key, str):
            found[object_key].append(metadata)
    documents = {
        object_key: IndexedDocument(
            object_key=object_key,
            partition_key=to_partition_key(str(chunks[0].get("metadata_key") or object_key)),
            chunks=len(chunks),
            etag=str(chunks[0].get("etag", "")),
        )
        for object_key, chunks in sorted(found.items())
    }
    return IndexSummary(source.name, source.collection_name, documents)
