"""A source's object keys as Dagster partitions: registered under the home's lock, and in metadata mode a
document stood in for by the metadata files naming it."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from s3sync_dagster.commands.errors import UsageError
from s3sync_dagster.commands.runs.dagster_home import home_lock
from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.links import InstanceMetaLinks
from s3sync_dagster.defs.names import partitions_name, register_new
from s3sync_dagster.pipeline.records import to_partition_key
from s3sync_dagster.pipeline.s3 import META_SUFFIX, is_meta_key


def add_partitions(
    instance: dg.DagsterInstance, source_name: str, partition_keys: Sequence[str]
) -> tuple[list[str], set[str]]:
    """Register the keys not registered yet: returns those this call added, and those there before."""
    with home_lock(instance.root_directory):
        existing = set(instance.get_dynamic_partitions(partitions_name(source_name)))
        new = register_new(instance, source_name, partition_keys, existing)
    return new, existing - set(new)  # with any the daemon registered meanwhile


def unnamed_document(source: SourceConfig, document: str) -> str:
    """Why a document of a metadata-mode source that no synced metadata file names cannot be synced by itself."""
    return (
        f"source '{source.name}' syncs in metadata mode: object '{document}' is indexed only through a "
        f"{META_SUFFIX} file naming it, and no metadata file synced so far names it"
    )


def meta_keys_for(instance: dg.DagsterInstance, source: SourceConfig, object_keys: Sequence[str]) -> list[str]:
    """Metadata mode: a document is synced through the .meta.json files naming it, which take its place."""
    documents = [object_key for object_key in object_keys if not is_meta_key(object_key)]
    named = InstanceMetaLinks(instance, source.name).naming(documents)
    for document in documents:
        if document not in named:
            raise UsageError(f"{unnamed_document(source, document)} (sync the metadata file)")
    return list(
        dict.fromkeys(
            meta_key
            for object_key in object_keys
            for meta_key in ([object_key] if is_meta_key(object_key) else named[object_key])
        )
    )


def register_keys(instance: dg.DagsterInstance, source: SourceConfig, object_keys: Sequence[str]) -> None:
    add_partitions(instance, source.name, [to_partition_key(k) for k in object_keys])
