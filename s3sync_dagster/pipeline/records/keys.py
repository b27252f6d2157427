"""Object key <-> partition key, and the chunk id scheme."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import unquote

# Dagster refuses "..." and control characters in partition keys, a "," splits a UI backfill
# selection and a "|" breaks adding a partition in the UI. S3 keys may hold all of them, so those
# characters are percent-encoded; "%" itself is always encoded, which makes the mapping reversible
# while ordinary keys ("docs/guide v2.md") stay exactly as they are.
# Cc (ASCII and C1 controls) and Zl/Zp (the unicode line and paragraph separators, which split log lines) hold
# exactly these code points; test_keys checks the class against unicodedata over every code point.
_ENCODED = re.compile("[%,|\x00-\x1f\x7f-\x9f\u2028\u2029]")
_DOT_RUN = re.compile(r"\.{3,}")
MAX_CUSTOM_ID_BYTES = 120


def needs_encoding(char: str) -> bool:
    return _ENCODED.fullmatch(char) is not None


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8"))


def to_partition_key(object_key: str) -> str:
    """A Dagster-safe partition key for an S3 object key; `to_object_key` undoes it."""
    if _ENCODED.search(object_key) is None and "..." not in object_key:
        return object_key  # nearly every key: one regex scan (a million keys are listed in seconds)
    escaped = _ENCODED.sub(_percent, object_key)
    # Every dot of a run of three or more is encoded so no "..." remains.
    return _DOT_RUN.sub(lambda run: "%2E" * len(run.group()), escaped)


def to_object_key(partition_key: str) -> str:
    """The object key of a partition key; refuses keys `to_partition_key` would not have produced
    (say `a%41` typed in the UI for `aA`), so a materialisation always lands on its own partition."""
    try:
        object_key = unquote(partition_key, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"partition key '{partition_key}' percent-decodes to bytes that are not UTF-8") from None
    if to_partition_key(object_key) != partition_key:
        raise ValueError(
            f"partition key '{partition_key}' is not in canonical form: the partition for object key "
            f"'{object_key}' is '{to_partition_key(object_key)}'"
        )
    return object_key


def object_id(object_key: str) -> str:
    """The document id Chroma Sync uses when no custom id is given: sha256 of the UTF-8 key, hex."""
    return hashlib.sha256(object_key.encode("utf-8")).hexdigest()


def chunk_id(document_id: str, chunk_index: int) -> str:
    return f"{document_id}-{chunk_index}"


def validate_custom_id(custom_id: str) -> str:
    size = len(custom_id.encode("utf-8"))
    if not custom_id:
        raise ValueError("custom id is empty")
    if size > MAX_CUSTOM_ID_BYTES:
        raise ValueError(f"custom id is {size} bytes; at most {MAX_CUSTOM_ID_BYTES} bytes are allowed")
    return custom_id


# The names this project gives collections of its own making: the copy a rebuild or a re-embedding fills
# (pipeline/reembed/swap.py, index.rebuild_collection) and a re-embedded collection's old self between the two
# renames of its swap. No source may name a collection so, nor write one: its owner's swap would take it.
REBUILD_SUFFIX = "-s3sync-rebuild"
RETIRED_SUFFIX = "-s3sync-retired"
RESERVED_SUFFIXES = (REBUILD_SUFFIX, RETIRED_SUFFIX)


def check_not_reserved(name: str, what: str) -> str:
    """Refuse a collection name ending in a suffix this project gives its own collections (RESERVED_SUFFIXES)."""
    for suffix in RESERVED_SUFFIXES:
        if name.endswith(suffix):
            raise ValueError(
                f"{what}: collection name '{name}' ends in '{suffix}', which s3sync-dagster reserves for the "
                "collections a rebuild or a re-embedding makes of another; no source may name or write one: "
                "choose another name"
            )
    return name


def validate_collection_name(name: str, what: str) -> str:
    """Chroma's rule for collection names, checked before a run so the error names who asked for it."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]", name):
        raise ValueError(
            f"{what} '{name}' is not a valid Chroma collection name: 3-512 characters from [a-zA-Z0-9._-], "
            "starting and ending with a letter or digit"
        )
    return name
