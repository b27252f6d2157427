"""Sources as the Sync API shows them (settings, secrets masked, counts), and removing what one wrote."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from s3sync_dagster.commands.runs.invocations import database_name, source_id
from s3sync_dagster.config import AppConfig, EnvRef, SourceConfig
from s3sync_dagster.defs.names import partitions_name
from s3sync_dagster.defs.resources import ChromaResource, EmbeddingResource, chroma_outside_runs, embedding_resource
from s3sync_dagster.defs.state import clear_poll_state
from s3sync_dagster.pipeline.chroma import delete_owned, owned


def _masked(ref: EnvRef | None) -> dict[str, Any] | None:
    """A credential as its variable's name and whether it is set: never its value, not even in part."""
    if ref is None:
        return None
    return {"env": ref.env, "set": ref.env in os.environ}


def create_source_payload(config: AppConfig, source: SourceConfig) -> dict[str, Any]:
    """The source's settings in the shape of the Sync API's CreateSourcePayload (S3 variant)."""
    chunking = source.chunking.model_dump()
    return {
        "s3": {
            "bucket_name": source.bucket_name,
            "region": source.region,
            "collection_name": source.collection_name,
            "path_prefix": source.path_prefix or None,
            "trigger_mode": source.auto_sync,
        },
        "database_name": database_name(config),
        "chunking": chunking,
        "embedding": {"dense": {"model": config.embedding.model or "all-MiniLM-L6-v2 (bundled)"}},
    }


def _ours(chroma: ChromaResource, embedding: EmbeddingResource) -> Iterator[Any]:
    """Every collection that uses our embedding model: the ones a source may have written to."""
    for collection in chroma.client().list_collections():
        try:
            yield chroma.collection(collection.name, embedding, create=False)
        except Exception:  # another model's collection: none of our chunks there
            continue


def chunk_counts(config: AppConfig, source_name: str) -> dict[str, int]:
    """Chunks this source wrote, per collection that holds any (never another project's same-named source's)."""
    chroma = chroma_outside_runs(config.chroma)
    embedding = embedding_resource(config.embedding)
    owner = config.source(source_name).spec(config.embedding.spec()).owner
    counts = {}
    for collection in _ours(chroma, embedding):
        found = sum(1 for _ in owned(collection, owner))
        if found:
            counts[collection.name] = found
    return counts


def describe_source(config: AppConfig, source: SourceConfig, instance: dg.DagsterInstance | None) -> dict[str, Any]:
    # The settings are shown even when the store cannot be reached; the counts then say why they are missing.
    counts: dict[str, int] | None
    try:
        counts, counts_error = chunk_counts(config, source.name), None
    except Exception as error:
        counts, counts_error = None, f"Chroma could not be read: {type(error).__name__}: {error}"
    return {
        "name": source.name,
        "source_id": source_id(source),
        "payload": create_source_payload(config, source),
        "credentials": {
            "aws_access_key_id": _masked(source.aws_access_key_id),
            "aws_secret_access_key": _masked(source.aws_secret_access_key),
            "aws_session_token": _masked(source.aws_session_token),
            "from": "environment variables" if source.aws_access_key_id else "the default AWS credential chain",
        },
        "settings": {
            "endpoint_url": source.endpoint_url,
            "include": source.include,
            "exclude": source.exclude,
            "sqs_queue_url": source.sqs_queue_url,
            "poll_interval_seconds": source.poll_interval_seconds,
            "document_limit": source.document_limit,
            "container_tag_regex": source.container_tag_regex,
            "max_object_bytes": source.max_object_bytes,
            "max_document_pages": source.max_document_pages,
        },
        "registered_keys": (
            len(instance.get_dynamic_partitions(partitions_name(source.name))) if instance is not None else None
        ),
        "indexed_chunks": sum(counts.values()) if counts is not None else None,
        "chunks_by_collection": counts,
        **({"counts_error": counts_error} if counts_error else {}),
    }


@dataclass
class RemovedSource:
    source: str
    chunks_deleted: dict[str, int] = field(default_factory=dict)
    partitions_deleted: int = 0
    poll_state_deleted: bool = False


def remove_source(config: AppConfig, source_name: str, instance: dg.DagsterInstance) -> RemovedSource:
    """Delete every chunk the source wrote (in every collection), its registered keys and poll state; a
    same-named source's chunks of another project (or bucket) stay."""
    owner = config.source(source_name).spec(config.embedding.spec()).owner
    result = RemovedSource(source=source_name)
    chroma = chroma_outside_runs(config.chroma)
    embedding = embedding_resource(config.embedding)
    with chroma.write_lock():
        for collection in _ours(chroma, embedding):
            deleted = delete_owned(collection, owner)
            if deleted:
                result.chunks_deleted[collection.name] = deleted
    name = partitions_name(source_name)
    for partition_key in instance.get_dynamic_partitions(name):
        instance.delete_dynamic_partition(name, partition_key)
        result.partitions_deleted += 1
    result.poll_state_deleted = clear_poll_state(instance, source_name)
    return result
