"""Chroma Cloud's quotas as rules (pipeline/chroma/limits.py): a `cloud:` config that would break one is refused at
load, and an object whose records would break one fails its own key before anything of it is written. No Chroma
Cloud is reachable here: the engine test writes to an embedded store with the Cloud rules switched on, as a
`cloud:` config switches them on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from s3sync_dagster.config import ConfigError, load_config
from s3sync_dagster.pipeline.chroma import limits as cloud_limits
from s3sync_dagster.pipeline.chroma.limits import (
    DOCUMENT_BYTES,
    ID_BYTES,
    KEY_BYTES,
    METADATA_KEYS,
    VALUE_BYTES,
    check_records,
    record_problem,
)
from s3sync_dagster.pipeline.chroma.stored import ChunkRecord
from s3sync_dagster.pipeline.chroma.vectors import TEXT_HASH
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster.pipeline.records.metadata import Metadata
from s3sync_dagster.pipeline.spec import Invocation
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster_tests.conftest import Row, put, store_chunks

CLOUD = {"tenant": "t", "database": "d", "api_key": {"env": "S3SYNC_TEST_CLOUD_KEY"}}
# What the sync writes on a plain text object's chunk (write.prepare), besides the text hash the write adds.
OURS: Metadata = {
    "object_key": "docs/a.txt", "bucket_name": "b", "source": "docs", "etag": "e", "last_modified": "2025-01-01",
    "size_bytes": 10, "chunk_index": 0, "chunk_count": 1, "start_line": 1, "end_line": 1, "chunker": "lines",
    "extractor": "text", "document_id": "d" * 64, "sync_signature": "s" * 16, "chunk_context": "docs/a.txt",
}  # fmt: skip


def write_config(tmp_path: Path, chroma: dict[str, Any], **source: Any) -> Path:
    path = tmp_path / "s3sync.yaml"
    base = {"name": "docs", "bucket_name": "my-bucket", "region": "eu-west-1", "collection_name": "docs-col"}
    path.write_text(yaml.safe_dump({"chroma": chroma, "sources": [{**base, **source}]}), encoding="utf-8")
    return path


def record(text: str = "hello", chunk_id: str = "d" * 64 + "-0", **user: Any) -> ChunkRecord:
    return ChunkRecord(chunk_id, text, {**user, **OURS})


# --- at load -------------------------------------------------------------------------------------------------


@pytest.mark.reliability("newest features")
def test_a_cloud_config_whose_chunks_would_pass_16_kib_is_refused_at_load(tmp_path: Path, fault_row: Row) -> None:
    # The hostile case: max_size_bytes 36,120 with `cloud:` loaded silently, and chunks of 36,120 bytes were stored.
    for chunking in ({"max_size_bytes": 36_120}, {"type": "lines", "max_size_bytes": 16_385}):
        with pytest.raises(ConfigError) as caught:
            load_config(write_config(tmp_path, {"cloud": CLOUD}, chunking=chunking))
        # One line names the source, the setting, its value, the limit and where the limit is published.
        (line,) = [line for line in str(caught.value).splitlines() if "chunking.max_size_bytes" in line]
        assert "source 'docs'" in line and f"is {chunking['max_size_bytes']:,}" in line and "16,384" in line, line
        assert "Maximum document bytes" in line and cloud_limits.SOURCE in line, line
    # At the limit it loads, and the engine's view of the source carries the Cloud rules.
    config = load_config(write_config(tmp_path, {"cloud": CLOUD}, chunking={"max_size_bytes": 16_384}))
    assert config.sources[0].spec().cloud_limits
    fault_row.passed = True


def test_other_stores_keep_todays_chunk_sizes(tmp_path: Path) -> None:
    # Local Chroma and a server have no such quota: a large chunk size is the user's choice there.
    config = load_config(write_config(tmp_path, {"path": "chroma"}, chunking={"max_size_bytes": 36_120}))
    assert config.sources[0].chunking.max_size_bytes == 36_120
    assert not config.sources[0].spec().cloud_limits


def test_a_cloud_collection_or_database_name_over_128_bytes_is_refused(tmp_path: Path) -> None:
    long_name = "c" * 129  # a valid Chroma collection name (3-512 characters), too long for Cloud
    with pytest.raises(ConfigError, match=r"source 'docs': collection_name is 129 bytes.*at most 128"):
        load_config(write_config(tmp_path, {"cloud": CLOUD}, collection_name=long_name))
    assert load_config(write_config(tmp_path, {"path": "chroma"}, collection_name=long_name))
    with pytest.raises(ConfigError, match=r"chroma.cloud.database is 129 bytes.*at most 128"):
        load_config(write_config(tmp_path, {"cloud": {**CLOUD, "database": "d" * 129}}))


# --- each record, before a write ------------------------------------------------------------------------------


def test_the_table_holds_the_published_values() -> None:
    values = {limit.name: limit.value for limit in cloud_limits.LIMITS}
    assert values["Maximum document bytes"] == 16_384 and values["Maximum ID size bytes"] == 128
    assert values["Maximum number of record metadata keys"] == 32
    assert values["Maximum metadata key size bytes"] == 36
    assert values["Maximum record metadata value size bytes"] == 4_096
    assert all(limit.source == cloud_limits.SOURCE for limit in cloud_limits.LIMITS)


def test_each_limit_holds_at_its_value_and_breaks_one_past_it() -> None:
    assert record_problem(record()) is None
    assert record_problem(record("é" * (DOCUMENT_BYTES.value // 2))) is None
    assert "is 16,385 bytes of text" in str(record_problem(record("x" * (DOCUMENT_BYTES.value + 1))))
    assert record_problem(record(chunk_id="i" * ID_BYTES.value)) is None
    assert "id is 129 bytes" in str(record_problem(record(chunk_id="i" * (ID_BYTES.value + 1))))
    assert record_problem(record(**{"k" * KEY_BYTES.value: 1})) is None
    problem = str(record_problem(record(**{"k" * (KEY_BYTES.value + 4): 1})))
    assert "is 40 bytes" in problem and "Maximum metadata key size bytes" in problem
    assert record_problem(record(note="v" * VALUE_BYTES.value)) is None
    problem = str(record_problem(record(note="v" * 5_000)))
    assert "metadata 'note' is 5,000 bytes" in problem and "4,096" in problem and "v" * 20 not in problem
    # An array counts its items together.
    assert "is 4,100 bytes" in str(record_problem(record(tags=["t" * 2_050, "u" * 2_050])))


def test_the_key_count_includes_the_syncs_own_keys() -> None:
    own = len(OURS) + 1  # and the text hash the write adds
    fits = {f"user_{n}": n for n in range(METADATA_KEYS.value - own)}
    assert record_problem(record(**fits)) is None
    assert record_problem(ChunkRecord("x-0", "t", {**OURS, TEXT_HASH: "h", **fits})) is None  # not counted twice
    problem = str(record_problem(record(**fits, one_more=1)))
    assert f"33 metadata keys ({METADATA_KEYS.value - own + 1} of the object's own metadata and {own}" in problem
    assert f"at most {METADATA_KEYS.value - own} of its own fit" in problem


@pytest.mark.reliability("newest features")
def test_32_user_keys_break_clouds_32_keys_a_record(fault_row: Row) -> None:
    # The hostile case: 32 user keys (today's rule allows 32) gave 49 keys a record; Cloud stores 32.
    thirty_two = {f"k{n}": n for n in range(32)}
    with pytest.raises(ValueError) as caught:
        check_records([record(), record(**thirty_two)], "object 'docs/a.txt'")
    message = str(caught.value)
    assert message.startswith("object 'docs/a.txt': chunk 0 would carry 48 metadata keys"), message
    assert "Maximum number of record metadata keys" in message and "nothing of it was written" in message
    fault_row.passed = True


# --- through the engine ---------------------------------------------------------------------------------------


@pytest.mark.reliability("newest features")
def test_an_object_breaking_a_cloud_quota_fails_its_key_and_the_others_go_on(
    s3: Any, bucket: str, tmp_path: Path, moto_endpoint: str, fault_row: Row
) -> None:
    source = {
        "bucket_name": bucket, "region": "us-east-1", "collection_name": f"cl-{bucket}"[:60],
        "endpoint_url": moto_endpoint, "path_prefix": "docs/",
        "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"}, "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
    }  # fmt: skip
    config = load_config(write_config(tmp_path, {"path": "chroma"}, **source))
    embedding = config.embedding.spec()
    # No Chroma Cloud here: the embedded store, with the rules a `cloud:` config switches on.
    spec = dataclasses.replace(config.sources[0].spec(embedding), cloud_limits=True)
    bad = {
        "docs/long-key.txt": {"k" * 40: "x"},
        "docs/big-value.txt": {"note": "v" * 5_000},
        "docs/many-keys.txt": {f"k{n}": n for n in range(32)},
    }
    put(s3, bucket, {key: f"The text of {key}.\n" for key in ["docs/good.txt", *bad]})
    collection = config.chroma.store().collection(spec.collection_name, embedding)
    reports = sync_keys(
        s3, spec, lambda _: collection, embedding.build(), ["docs/good.txt", *bad],
        invocations={key: Invocation(metadata=metadata) for key, metadata in bad.items()},
    )  # fmt: skip
    by_key = {report.object_key: report for report in reports}
    assert by_key["docs/good.txt"].status == "indexed", by_key["docs/good.txt"]
    for key, limit in zip(bad, ["Maximum metadata key size bytes", "Maximum record metadata value size bytes",
                                "Maximum number of record metadata keys"], strict=True):  # fmt: skip
        report = by_key[key]
        assert report.status == "failed" and f"object '{key}'" in report.message and limit in report.message, report
        assert "\n" not in report.message
    good = keys.chunk_id(keys.object_id("docs/good.txt"), 0)
    fault_row.observe(
        {(collection.name, good): "The text of docs/good.txt.\n"}, store_chunks(config.chroma.store().client())
    )
    assert (fault_row.chunks_found, fault_row.lost, fault_row.stray) == (1, 0, 0), fault_row
    fault_row.passed = True
