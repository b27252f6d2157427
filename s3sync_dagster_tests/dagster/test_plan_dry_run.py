"""The plan is the sync's dry run (issue 62, item 3): `s3sync plan` counts exactly what the next `s3sync sync --all`
does, case by case (a chunking change, a tag-only and a metadata-only change, empty and archived objects, new,
changed, deleted, too large), and writes nothing anywhere: the store's files byte for byte, the Dagster instance,
the bucket. Moto over HTTP, embedded Chroma, a real Dagster instance, the real `s3sync` command."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from s3sync_dagster.commands import cli
from s3sync_dagster.commands.subcommand import EXIT_OK
from s3sync_dagster.pipeline import store
from s3sync_dagster_tests.conftest import TEST_KEY_ID, TEST_SECRET, ConfigFactory, Row, put

pytestmark = pytest.mark.reliability("fail closed")

MAX_OBJECT_BYTES = 2000
PARAGRAPHS = "".join(
    f"Paragraph {n} of the handbook says something about otters and their keepers.\n\n" for n in range(8)
)


def plan(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert cli.main(["plan", "docs", "--config", str(path), "--json", "--no-embedding-sample"]) == EXIT_OK
    return dict(json.loads(capsys.readouterr().out))


def sync_all(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    """`s3sync sync docs --all`, its keys counted as the plan counts them."""
    capsys.readouterr()
    cli.main(["sync", "docs", "--all", "--config", str(path), "--json"])
    payload = json.loads(capsys.readouterr().out)
    outcome: Counter[str] = Counter()
    for report in payload["keys"]:
        status = report["status"]
        if status == "indexed" and str(report.get("message", "")).startswith("labels updated"):  # nothing read
            status = "relabel"
        outcome[{"indexed": "indexed", "removed": "deleted", "failed": "refused"}.get(status, status)] += 1
    return dict(outcome)


def planned_as_synced(counts: dict[str, Any]) -> dict[str, int]:
    """The plan's counts under the sync's names: what it would index (new and changed) is one outcome."""
    merged = {"indexed": counts["new"] + counts["changed"]}
    for kind in ("relabel", "unchanged", "empty", "archived", "refused", "deleted"):
        merged[kind] = counts[kind]
    return {kind: n for kind, n in merged.items() if n}


def test_the_plan_counts_what_the_next_sync_does_case_by_case(
    s3: Any, bucket: str, make_config: ConfigFactory, home_instance: dg.DagsterInstance,
    capsys: pytest.CaptureFixture[str], fault_row: Row,
) -> None:  # fmt: skip
    _, path = make_config(
        bucket, path_prefix="a/", max_object_bytes=MAX_OBJECT_BYTES, object_tags=["cls"], object_metadata=["team"],
        chunking={"type": "tree_sitter", "max_size_bytes": 4096},
    )  # fmt: skip
    put(s3, bucket, {f"a/keep{n}.md": f"# Keep {n}\n\n{PARAGRAPHS}" for n in range(3)})
    put(s3, bucket, {"a/change.txt": "first version\n", "a/gone.txt": "deleted behind the sync's back\n"})
    put(s3, bucket, {"a/empty1.txt": "", "a/empty2.txt": "   \n"})
    s3.put_object(Bucket=bucket, Key="a/tagged.txt", Body=b"a tagged note\n", Tagging="cls=secret")
    s3.put_object(Bucket=bucket, Key="a/team.txt", Body=b"a team note\n", Metadata={"team": "ops"})
    s3.put_object(Bucket=bucket, Key="a/cold-indexed.txt", Body=b"indexed before it was archived\n")
    first = plan(path, capsys)
    synced = sync_all(path, capsys)
    # Never read before, an empty object is new to the plan: only its read finds it empty.
    assert synced.pop("empty") == 2 and synced["indexed"] == 8
    assert planned_as_synced(first) == {**synced, "indexed": 10}

    # Behind the sync's back: new, changed, deleted, a tag alone, metadata alone (a copy in place), archived, big.
    put(s3, bucket, {"a/new.txt": "uploaded while nobody listened\n", "a/change.txt": "second version\n"})
    s3.delete_object(Bucket=bucket, Key="a/gone.txt")
    s3.put_object_tagging(Bucket=bucket, Key="a/tagged.txt", Tagging={"TagSet": [{"Key": "cls", "Value": "public"}]})
    s3.copy_object(
        Bucket=bucket, Key="a/team.txt", CopySource={"Bucket": bucket, "Key": "a/team.txt"},
        Metadata={"team": "legal"}, MetadataDirective="REPLACE",
    )  # fmt: skip
    s3.put_object(Bucket=bucket, Key="a/cold.txt", Body=b"never indexed, archived\n", StorageClass="GLACIER")
    s3.copy_object(
        Bucket=bucket, Key="a/cold-indexed.txt", CopySource={"Bucket": bucket, "Key": "a/cold-indexed.txt"},
        StorageClass="GLACIER",
    )  # fmt: skip
    put(s3, bucket, {"a/big.txt": "x" * (MAX_OBJECT_BYTES + 1)})
    second = plan(path, capsys)
    expected = {"indexed": 2, "relabel": 2, "unchanged": 3, "empty": 2, "archived": 2, "refused": 1, "deleted": 1}
    assert planned_as_synced(second) == expected, json.dumps(second["keys"])
    assert sync_all(path, capsys) == expected

    # A chunking change re-indexes every object it chunks: the plan says changed, not unchanged.
    _, path = make_config(
        bucket, path_prefix="a/", max_object_bytes=MAX_OBJECT_BYTES, object_tags=["cls"], object_metadata=["team"],
        chunking={"type": "tree_sitter", "max_size_bytes": 200},
    )  # fmt: skip
    third = plan(path, capsys)
    assert third["changed"] >= 3, third
    assert planned_as_synced(third) == sync_all(path, capsys)
    assert planned_as_synced(plan(path, capsys)) == sync_all(path, capsys)
    fault_row.observe({}, [])  # a case of counts: its chunks are the other cases'
    fault_row.passed = True


def rows(database: Path) -> list[str]:
    """A SQLite database's schema and rows as SQL lines (read only)."""
    import sqlite3

    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def digests(folder: Path) -> dict[str, str]:
    """Each file's content and modification time (a lock file touched counts)."""
    return {
        str(file.relative_to(folder)): f"{hashlib.sha256(file.read_bytes()).hexdigest()} {file.stat().st_mtime_ns}"
        for file in sorted(folder.rglob("*"))
        if file.is_file()
    }


def test_the_plan_writes_nothing_anywhere(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, capsys: pytest.CaptureFixture[str], fault_row: Row,
) -> None:  # fmt: skip
    """The embedded store's files byte for byte (chroma.sqlite3, the HNSW files, the lexical index, the write lock),
    the Dagster home's, and the bucket's objects and tags."""
    _, path = make_config(bucket, path_prefix="a/", object_tags=["cls"], chunking={"type": "lines", "max_lines": 1})
    files = {f"a/{n}.txt": "".join(f"line {i} of file {n}\n" for i in range(300)) for n in range(4)}
    put(s3, bucket, files)
    assert cli.main(["sync", "docs", "--all", "--config", str(path), "--json"]) == EXIT_OK
    put(s3, bucket, {"a/new.txt": "a new one\n"})
    chroma = Path(yaml.safe_load(path.read_text())["chroma"]["path"])
    chroma = chroma if chroma.is_absolute() else path.parent / chroma

    def bucket_state() -> list[Any]:
        listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        return [(o["Key"], o["ETag"], s3.get_object_tagging(Bucket=bucket, Key=o["Key"])["TagSet"]) for o in listed]

    before = (digests(chroma), digests(dagster_home), bucket_state(), rows(chroma / "chroma.sqlite3"))
    store.close_clients()  # as a user runs it: a process of its own opening the store afresh
    ran = subprocess.run(
        [str(Path(sys.executable).parent / "s3sync"), "plan", "docs", "--config", str(path), "--json"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "S3SYNC_TEST_KEY_ID": TEST_KEY_ID, "S3SYNC_TEST_SECRET": TEST_SECRET},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["new"] == 1  # the embedding sample too
    after = (digests(chroma), digests(dagster_home), bucket_state(), rows(chroma / "chroma.sqlite3"))
    # Chroma's own engine records an `acquire_write` row whenever a process opens an embedded store, a query's
    # included (there is no read-only client: chroma-core/chroma#1438); every other row and file is as it was.
    added = sorted(set(after[3]) - set(before[3]))
    assert set(before[3]) <= set(after[3]) and all(row.startswith('INSERT INTO "acquire_write"') for row in added), (
        added
    )
    changed = sorted(name for name in {*before[0], *after[0]} if before[0].get(name) != after[0].get(name))
    assert changed in ([], ["chroma.sqlite3"]), changed
    assert after[1] == before[1], sorted(n for n in {*before[1], *after[1]} if before[1].get(n) != after[1].get(n))
    assert after[2] == before[2]
    fault_row.observe({}, [])
    fault_row.passed = True


def meta_file(document_id: str, path: str, **fields: Any) -> str:
    return json.dumps({"version": "chroma-v1", "id": document_id, "path": path, **fields})


def test_the_plan_counts_metadata_files_and_unreadable_labels_as_the_sync_does(
    s3: Any, bucket: str, make_config: ConfigFactory, home_instance: dg.DagsterInstance,
    capsys: pytest.CaptureFixture[str], fault_row: Row,
) -> None:  # fmt: skip
    """A metadata file's document under a chunking change or a changed file, an empty document a metadata file
    names, and an indexed object whose readers tag stops reading: each counted as the next sync counts it."""
    settings = {"path_prefix": "m/", "readers_tag": "readers", "default_readers": ["staff"]}
    _, path = make_config(bucket, chunking={"type": "tree_sitter", "max_size_bytes": 4096}, **settings)
    put(s3, bucket, {f"m/doc{n}.md": f"# Doc {n}\n\n{PARAGRAPHS}" for n in range(2)})
    put(s3, bucket, {"m/doc0.meta.json": meta_file("doc-0", "m/doc0.md", metadata={"team": "a"})})
    put(s3, bucket, {"m/doc1.meta.json": meta_file("doc-1", "m/doc1.md")})
    put(s3, bucket, {"m/blank.txt": "", "m/blank.meta.json": meta_file("blank", "m/blank.txt")})
    s3.put_object(Bucket=bucket, Key="m/tagged.txt", Body=b"a tagged note\n", Tagging="readers=alice")
    sync_all(path, capsys)
    assert planned_as_synced(plan(path, capsys)) == sync_all(path, capsys)

    put(s3, bucket, {"m/doc1.meta.json": meta_file("doc-1", "m/doc1.md", metadata={"team": "b"})})  # the file alone
    s3.put_object_tagging(
        Bucket=bucket, Key="m/tagged.txt", Tagging={"TagSet": [{"Key": "readers", "Value": "bob+eve smith"}]}
    )
    second = plan(path, capsys)
    assert second["changed"] == 1 and second["keys"]["changed"] == ["m/doc1.meta.json"], second["keys"]
    assert second["empty"] == 2 and second["refused"] == 1, second  # the blank object and its metadata file
    assert "labels cannot be read" in second["keys"]["refused"][0]["reason"]
    assert planned_as_synced(second) == sync_all(path, capsys)

    _, path = make_config(bucket, chunking={"type": "tree_sitter", "max_size_bytes": 200}, **settings)
    third = plan(path, capsys)
    assert {"m/doc0.meta.json", "m/doc1.meta.json", "m/doc0.md", "m/doc1.md"} <= set(third["keys"]["changed"])
    assert planned_as_synced(third) == sync_all(path, capsys)
    fault_row.observe({}, [])  # a case of counts
    fault_row.passed = True
