"""What a chunk's metadata may hold: the keys this project reserves, and the rules for an object's own metadata."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from s3sync_dagster.pipeline.chunking import CONTEXT_KEY

MetadataValue = str | int | float | bool | list[str] | list[int] | list[float] | list[bool]
Metadata = dict[str, MetadataValue]

# Keys this project writes on every chunk; user metadata may not overwrite them.
RESERVED_METADATA_KEYS = frozenset(
    {
        "object_key", "bucket_name", "source", "etag", "last_modified", "size_bytes",
        "chunk_index", "chunk_count", "start_line", "end_line", "language", "chunker",
        "custom_id", "document_id", "sync_signature", "extractor", "page", "slide", "sheet",
        "page_end", "metadata_key", "container_tag", "project", "text_hash",
        "readers",  # who may read the object: only a source's readers_tag or default_readers (pipeline/chroma/labels.py)
        "version_id",
        CONTEXT_KEY,  # where the chunk stands in its object: embedded and indexed before its text
    }
)  # fmt: skip

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
