"""The plan before a sync (`s3sync plan`, the `<source>_plan` job): real moto over HTTP, embedded Chroma, a real
Dagster instance; a source synced once, then changed behind its back in every way a plan counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from s3sync_dagster.commands import cli
from s3sync_dagster.commands.runs.runner import sync
from s3sync_dagster.commands.subcommand import EXIT_OK
from s3sync_dagster.config import AppConfig
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import partitions_name, plan_job_name, plan_op_name
from s3sync_dagster.defs.resources import chroma_outside_runs
from s3sync_dagster.pipeline.audit import plan
from s3sync_dagster_tests.conftest import ConfigFactory, put

SYNCED: dict[str, bytes | str] = {
    "a/keep.txt": "kept as it is\n",
    "a/change.txt": "first version\n",
    "a/gone.txt": "deleted behind the sync's back\n",
}
MAX_OBJECT_BYTES = 1000
# The archived object is archived, not refused too: each object is counted once, as the sync reports it.
EXPECTED = {"new": 1, "changed": 1, "deleted": 1, "unchanged": 1, "archived": 1, "refused": 2}


@pytest.fixture
def planned(
    s3: Any, bucket: str, make_config: ConfigFactory, home_instance: dg.DagsterInstance
) -> tuple[AppConfig, Path]:
    """Synced once; then one object new, one overwritten, one removed, one too large, one in GLACIER, one binary."""
    config, path = make_config(bucket, path_prefix="a/", max_object_bytes=MAX_OBJECT_BYTES)
    put(s3, bucket, SYNCED)
    assert not sync(config, "docs", home_instance, list(SYNCED)).failed
    put(s3, bucket, {"a/new.txt": "uploaded while nobody listened\n", "a/change.txt": "second version\n"})
    s3.delete_object(Bucket=bucket, Key="a/gone.txt")
    put(s3, bucket, {"a/big.txt": "x" * (MAX_OBJECT_BYTES + 1), "a/lib.zip": b"PK\x03\x04 not text"})
    s3.put_object(Bucket=bucket, Key="a/cold.txt", Body=b"in the archive tier\n", StorageClass="GLACIER")
    put(s3, bucket, {"b/outside.txt": "not under the prefix\n"})
    return config, path


def _state(config: AppConfig, home_instance: dg.DagsterInstance) -> tuple[int, list[str], int]:
    """What a plan must not change: the collection's chunks, the source's partitions, the instance's runs."""
    collection = chroma_outside_runs(config.chroma).client().get_collection("docs-collection")
    partitions = sorted(home_instance.get_dynamic_partitions(partitions_name("docs")))
    return collection.count(), partitions, home_instance.get_runs_count()


def test_plan_counts_each_kind_and_writes_nothing(
    planned: tuple[AppConfig, Path], home_instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    config, path = planned
    before = _state(config, home_instance)
    code = cli.main(["plan", "docs", "--config", str(path), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK, payload
    assert {kind: payload[kind] for kind in EXPECTED} == EXPECTED
    assert payload["keys"]["new"] == ["a/new.txt"]
    assert payload["keys"]["changed"] == ["a/change.txt"]
    assert payload["keys"]["deleted"] == ["a/gone.txt"]
    assert payload["keys"]["archived"] == ["a/cold.txt"]
    reasons = {r["object_key"]: r["reason"] for r in payload["keys"]["refused"]}
    assert "a/cold.txt" not in reasons
    assert reasons["a/big.txt"].startswith(f"too large: 1,001 bytes is over max_object_bytes ({MAX_OBJECT_BYTES:,})")
    assert reasons["a/lib.zip"].startswith("unsupported: '.zip'")
    # The work is what a sync would read: the new and the changed object, both text.
    assert payload["bytes_by_kind"] == {"text": {"objects": 2, "bytes": len("uploaded while nobody listened\n") + 15}}
    assert payload["to_register"] == 4  # new, big, zip and cold: the sync registered the others
    # Bytes per chunk measured on the one unchanged object (14 bytes in 1 chunk): 46 bytes make 4 chunks.
    assert payload["chunks"]["bytes_per_chunk"]["text"].startswith("14 (measured: 1 indexed object(s)")
    assert payload["chunks"]["total"] == 4
    assert payload["embedding"]["seconds"] is not None and "measured at plan time" in payload["embedding"]["basis"]
    assert payload["chroma_sync"]["pages"] == 0 and payload["chroma_sync"]["total_usd"] == 0.0
    assert _state(config, home_instance) == before

    code = cli.main(["plan", "docs", "--config", str(path), "--no-embedding-sample"])
    text = capsys.readouterr().out
    assert code == EXIT_OK
    assert "| new | 1 |" in text and "| refused | 2 |" in text and "| archived | 1 |" in text
    assert _state(config, home_instance) == before


def test_plan_job_output_holds_the_counts(planned: tuple[AppConfig, Path], home_instance: dg.DagsterInstance) -> None:
    config, _ = planned
    before_chunks, before_partitions, _ = _state(config, home_instance)
    job = build_definitions(config).get_job_def(plan_job_name("docs"))
    result = job.execute_in_process(instance=home_instance)
    assert result.success
    [output] = [event for event in result.events_for_node(plan_op_name("docs")) if event.is_successful_output]
    metadata = output.step_output_data.metadata
    assert {kind: metadata[kind].value for kind in EXPECTED} == EXPECTED
    assert isinstance(metadata["plan"], dg.MarkdownMetadataValue) and "| deleted | 1 |" in str(metadata["plan"].value)
    assert metadata["chunks_estimate"].value == 4
    after_chunks, after_partitions, _ = _state(config, home_instance)
    assert (after_chunks, after_partitions) == (before_chunks, before_partitions)


def test_an_empty_source_plans_every_object_new(
    s3: Any, bucket: str, make_config: ConfigFactory, home_instance: dg.DagsterInstance
) -> None:
    """No collection yet: every selected object is new, and the chunk estimate rests on the stated default."""
    config, _ = make_config(bucket, path_prefix="a/")
    put(s3, bucket, {"a/one.md": "# One\n\ntext\n", "a/two.py": "def two():\n    return 2\n", "a/r.pdf": b"%PDF"})
    from s3sync_dagster.defs.resources import embedding_resource
    from s3sync_dagster.defs.runs.plan import plan_of

    found = plan_of(
        config.source("docs"),
        home_instance,
        s3,
        chroma_outside_runs(config.chroma),
        embedding_resource(config.embedding),
        measure=False,
    )
    assert found.counts() == {
        "new": 3, "changed": 0, "relabel": 0, "deleted": 0, "unchanged": 0, "empty": 0, "archived": 0, "refused": 0,
    }  # fmt: skip
    assert set(found.by_kind) == {"text", "code", "document"}
    assert all(
        basis.endswith("(default (none of this kind indexed to measure))") for basis in found.chunk_basis.values()
    )
    assert found.chroma_sync["pages"] == 1 and found.embedding_seconds is None
    assert found.to_register == 3
    assert isinstance(found, plan.Plan)
