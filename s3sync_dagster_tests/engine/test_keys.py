"""Object key <-> partition key round trip on hostile keys, and the chunk id scheme."""

import hashlib
import re
import unicodedata

import pytest
from dagster._core.definitions.partitions.utils.base import INVALID_PARTITION_SUBSTRINGS
from hypothesis import given, settings
from hypothesis import strategies as st

from s3sync_dagster.pipeline.records import keys

HOSTILE = [
    "a...b",
    "....",
    "..",
    "dir/.../x",
    "tab\there",
    "new\nline",
    "nul\x00byte",
    "bell\a",
    "comma,separated,key",
    "pipe|key",
    "100%.txt",
    "%2E%2E%2E",
    "unicode/日本語/ファイル.md",
    "emoji 🎉.txt",
    "line\u2028separator",
    "c1\x85control",
    "a+b c.txt",
    "  spaces  ",
]


def assert_safe_round_trip(object_key: str) -> None:
    partition_key = keys.to_partition_key(object_key)
    assert keys.to_object_key(partition_key) == object_key
    assert not any(bad in partition_key for bad in INVALID_PARTITION_SUBSTRINGS)
    assert "," not in partition_key and "|" not in partition_key


@pytest.mark.parametrize("object_key", HOSTILE)
def test_hostile_keys_round_trip_and_are_dagster_safe(object_key: str) -> None:
    assert_safe_round_trip(object_key)


@settings(max_examples=500, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_any_key_round_trips(object_key: str) -> None:
    assert_safe_round_trip(object_key)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=2, max_size=10, unique=True))
def test_distinct_keys_stay_distinct(object_keys: list[str]) -> None:
    assert len({keys.to_partition_key(k) for k in object_keys}) == len(object_keys)


@pytest.mark.parametrize(
    "object_key", ["docs/guide v2.md", "src/main.py", "a..b/c.txt", "notes/2026-03-04 (draft).txt"]
)
def test_ordinary_keys_stay_readable(object_key: str) -> None:
    assert keys.to_partition_key(object_key) == object_key


def test_dagster_accepts_mapped_keys() -> None:
    import dagster as dg

    with dg.instance_for_test() as instance:
        partition_keys = [keys.to_partition_key(k) for k in HOSTILE]
        instance.add_dynamic_partitions("hostile", partition_keys)
        assert instance.get_dynamic_partitions("hostile") == partition_keys


def test_chunk_ids_follow_chroma_sync() -> None:
    object_key = "docs/ü.md"
    expected = hashlib.sha256(object_key.encode("utf-8")).hexdigest()
    assert keys.object_id(object_key) == expected
    assert keys.chunk_id(keys.object_id(object_key), 3) == f"{expected}-3"
    assert keys.chunk_id("my-doc", 0) == "my-doc-0"


def test_custom_id_limit_is_120_bytes() -> None:
    assert keys.validate_custom_id("x" * 120) == "x" * 120
    with pytest.raises(ValueError, match="121 bytes; at most 120"):
        keys.validate_custom_id("x" * 121)
    with pytest.raises(ValueError, match="122 bytes"):
        keys.validate_custom_id("é" * 61)
    with pytest.raises(ValueError, match="empty"):
        keys.validate_custom_id("")


def test_non_canonical_partition_keys_are_refused() -> None:
    # What a user might type in the UI: it would decode to another object's key.
    with pytest.raises(
        ValueError, match=re.escape("not in canonical form: the partition for object key 'd/aA.txt' is 'd/aA.txt'")
    ):
        keys.to_object_key("d/a%41.txt")
    with pytest.raises(ValueError, match="not UTF-8"):
        keys.to_object_key("d/%FF")


def test_the_encoded_characters_are_exactly_the_rule_over_every_code_point() -> None:
    """`%`, `,`, `|`, controls (Cc) and the line and paragraph separators (Zl, Zp): the fast path's character
    class against unicodedata, over all of Unicode."""
    for code_point in range(0x110000):
        char = chr(code_point)
        expected = char in "%,|" or unicodedata.category(char) in ("Cc", "Zl", "Zp")
        assert keys.needs_encoding(char) == expected, hex(code_point)
