"""A chunk's record: object key <-> partition key and the chunk id scheme, the owner every read and write follows,
and the metadata keys we reserve and the rules for an object's own metadata.

May import: chunking.
"""

from __future__ import annotations

from s3sync_dagster.pipeline.records.keys import (
    REBUILD_SUFFIX,
    RESERVED_SUFFIXES,
    RETIRED_SUFFIX,
    check_not_reserved,
    chunk_id,
    object_id,
    to_object_key,
    to_partition_key,
    validate_collection_name,
    validate_custom_id,
)
from s3sync_dagster.pipeline.records.metadata import (
    RESERVED_METADATA_KEYS,
    Metadata,
    MetadataValue,
    validate_user_metadata,
)
from s3sync_dagster.pipeline.records.owners import Owner, describe

__all__ = [
    "REBUILD_SUFFIX",
    "RESERVED_METADATA_KEYS",
    "RESERVED_SUFFIXES",
    "RETIRED_SUFFIX",
    "Metadata",
    "MetadataValue",
    "Owner",
    "check_not_reserved",
    "chunk_id",
    "describe",
    "object_id",
    "to_object_key",
    "to_partition_key",
    "validate_collection_name",
    "validate_custom_id",
    "validate_user_metadata",
]
