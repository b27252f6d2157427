"""Tenancy: no source can touch another's chunks, by metadata file, invocation, removal or repair.

Two tenants share one bucket and one Chroma store, as the issue's hostile tenant found them: `a` on
`tenant-a/` in metadata mode, `b` on `tenant-b/`; some cases add `c` on another bucket. Everything goes
through the `s3sync` command (`sync`, `invoke`, `repair`) on a real Dagster instance, a moto server over
HTTP and Chroma, embedded and a `chroma run` server. Each case ends with the exact chunk set of every
collection it uses (ids and texts), checked into the reliability table's `tenancy` family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo.local_s3 import LOOPBACK
from s3sync_dagster.commands.runs.reports import reports_of
from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import repair_job_name
from s3sync_dagster.defs.resources import chroma_outside_runs, embedding_resource
from s3sync_dagster.defs.run_config import repair_run_config
from s3sync_dagster_tests.conftest import Chunks, Row, put

pytestmark = pytest.mark.reliability("tenancy")

# Eight lines, one chunk each: a document whose partial loss shows.
SECRET = "".join(f"line {n} of tenant b's secret report\n" for n in range(8))
OWN = "tenant a's own notes, nothing else\n"
B_KEY = "tenant-b/secret.txt"


def sha_id(object_key: str) -> str:
    """Chroma Sync's document id, written out here rather than taken from the code under test."""
    import hashlib

    return hashlib.sha256(object_key.encode()).hexdigest()


@dataclass
class Tenants:
    """The config of the case's sources and what the command says."""

    path: Path
    config: AppConfig
    suffix: str
    capsys: pytest.CaptureFixture[str]
    err: str = ""  # what the last command wrote to stderr

    def name(self, base: str) -> str:
        return f"{base}-{self.suffix}"

    def cli(self, *argv: str) -> tuple[int, Any]:
        code = main([*argv, "--config", str(self.path), "--json"])
        captured = self.capsys.readouterr()
        self.err = captured.err
        return code, json.loads(captured.out) if captured.out.strip() else None

    def client(self) -> Any:
        # The store as the config names it, without Dagster's init context (whose ephemeral instance would stay
        # the process's current one once gone: definitions built later outside an instance then fail).
        return self.config.chroma.store().client()

    def chunks(self) -> list[tuple[str, str, str]]:
        """(collection, id, text) of every chunk in the case's collections."""
        found: list[tuple[str, str, str]] = []
        for collection in self.client().list_collections():
            if collection.name.endswith(self.suffix):
                rows = collection.get(include=["documents"])
                found += [(collection.name, i, t) for i, t in zip(rows["ids"], rows["documents"], strict=True)]
        return found

    def exact(self) -> Chunks:
        return {(c, i): t for c, i, t in self.chunks()}

    def a_chunk_behind(self, collection_name: str, document_id: str, meta_key: str) -> None:
        """Chunk 0 of a document of source a, written straight into Chroma as an older release let it be."""
        metadata = {
            "source": "a", "object_key": "tenant-a/own.txt", "metadata_key": meta_key, "document_id": document_id,
            "chunk_index": 0, "chunk_count": 1, "etag": "x", "bucket_name": self.suffix,
        }  # fmt: skip
        chroma = chroma_outside_runs(self.config.chroma)
        collection = chroma.collection(collection_name, embedding_resource(self.config.embedding))
        collection.upsert(ids=[f"{document_id}-0"], documents=[OWN], metadatas=[metadata])


@pytest.fixture(params=["embedded", "server"])
def chroma_target(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "embedded":
        return {"path": str(tmp_path / "chroma")}
    port = request.getfixturevalue("chroma_server")
    return {"host": LOOPBACK, "port": port}


@pytest.fixture
def tenants(
    s3: Any,
    bucket: str,
    moto_endpoint: str,
    tmp_path: Path,
    chroma_target: dict[str, Any],
    dagster_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> Any:
    """Make the case's config: `a` (metadata mode) and `b` on `bucket`, plus any extra sources given."""

    def make(extra: list[dict[str, Any]] | None = None, **a_settings: Any) -> Tenants:
        def source(name: str, **settings: Any) -> dict[str, Any]:
            return {
                "name": name,
                "bucket_name": bucket,
                "region": "us-east-1",
                "collection_name": f"coll-{name}-{bucket}",
                "endpoint_url": moto_endpoint,
                "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"},
                "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
                "chunking": {"type": "lines", "max_lines": 1},
                **settings,
            }

        queue = f"{moto_endpoint}/123456789012/{bucket}-a"  # metadata mode needs one; no sensor reads it here
        sources = [
            source("a", path_prefix="tenant-a/", auto_sync="metadata", sqs_queue_url=queue, **a_settings),
            source("b", path_prefix="tenant-b/"),
            *[source(**entry) for entry in extra or []],
        ]
        path = tmp_path / "s3sync.yaml"
        path.write_text(yaml.safe_dump({"chroma": chroma_target, "sources": sources}), encoding="utf-8")
        return Tenants(path, load_config(path), bucket, capsys)

    put(s3, bucket, {B_KEY: SECRET, "tenant-a/own.txt": OWN})
    return make


def b_synced(t: Tenants) -> Chunks:
    code, result = t.cli("sync", "b", "--all")
    assert code == 0 and result["counts"] == {"indexed": 1}, result
    baseline = t.exact()
    assert (
        len(baseline) == 8 and "".join(baseline[(t.name("coll-b"), f"{sha_id(B_KEY)}-{n}")] for n in range(8)) == SECRET
    )
    return baseline


def with_source_c(s3: Any, bucket: str, tenants: Any, path_prefix: str) -> tuple[Tenants, str]:
    """The tenants plus `c`, on a bucket of its own."""
    other_bucket = f"{bucket}-c"
    s3.create_bucket(Bucket=other_bucket)
    extra = {
        "name": "c",
        "bucket_name": other_bucket,
        "collection_name": f"coll-c-{bucket}",
        "path_prefix": path_prefix,
    }
    return tenants(extra=[extra]), other_bucket


def meta_file(document_id: str, path: str, target: str | None = None) -> str:
    content: dict[str, Any] = {"version": "chroma-v1", "id": document_id, "path": path}
    if target is not None:
        content["target_collection_name"] = target
    return json.dumps(content)


def failed_keys(result: dict[str, Any]) -> dict[str, str]:
    return {key["object_key"]: key["message"] for key in result["keys"] if key["status"] == "failed"}


def check(row: Row, t: Tenants, expected: Chunks) -> None:
    found = t.chunks()
    row.observe(expected, found)
    assert {(c, i): text for c, i, text in found} == expected
    assert len(found) == len(expected)


def clean_repair(t: Tenants, source: str) -> dict[str, Any]:
    code, result = t.cli("repair", source)
    assert code == 0 and result["after"]["clean"], result
    return result


# --- a metadata file or an invocation aimed at another source's chunks --------------------------------------


def test_a_metadata_file_cannot_take_another_sources_document(
    s3: Any, bucket: str, tenants: Any, fault_row: Row
) -> None:
    t = tenants()
    baseline = b_synced(t)
    put(s3, bucket, {"tenant-a/xb.meta.json": meta_file(sha_id(B_KEY), "tenant-a/own.txt", t.name("coll-b"))})
    code, result = t.cli("sync", "a", "--all")
    assert code == 1, result
    message = failed_keys(result)["tenant-a/xb.meta.json"]
    assert "metadata file 'tenant-a/xb.meta.json'" in message and "belongs to source 'b'" in message
    assert "source 'a' may write only to its own collection" in message
    check(fault_row, t, baseline)
    code, again = t.cli("sync", "b", "--all")
    assert code == 0 and again["counts"] == {"unchanged": 1}, again
    assert clean_repair(t, "b")["run_id"] is None
    code, result = t.cli("sync", "a", "--all")  # and again: still refused, still nothing changed
    assert code == 1
    check(fault_row, t, baseline)
    fault_row.passed = True


def test_a_metadata_file_in_another_bucket_cannot_either(s3: Any, bucket: str, tenants: Any, fault_row: Row) -> None:
    t, other_bucket = with_source_c(s3, bucket, tenants, "tenant-c/")
    baseline = b_synced(t)
    put(s3, other_bucket, {"tenant-c/doc.txt": "c's text\n"})
    put(s3, other_bucket, {"tenant-c/xb.meta.json": meta_file(sha_id(B_KEY), "tenant-c/doc.txt", t.name("coll-b"))})
    code, result = t.cli("sync", "c", "--key", "tenant-c/xb.meta.json")
    assert code == 1, result
    message = failed_keys(result)["tenant-c/xb.meta.json"]
    assert "belongs to source 'b'" in message and "source 'c' may write only" in message
    check(fault_row, t, baseline)
    fault_row.passed = True


def test_an_invocation_cannot_write_another_sources_collection(tenants: Any, fault_row: Row) -> None:
    t = tenants()
    baseline = b_synced(t)
    code, _ = t.cli(
        "invoke",
        "a",
        "tenant-a/own.txt",
        "--custom-id",
        sha_id(B_KEY),
        "--target-collection",
        t.name("coll-b"),
        "--wait",
    )
    err = t.err
    assert code == 2, err
    assert "object 'tenant-a/own.txt'" in err and "belongs to source 'b'" in err
    check(fault_row, t, baseline)
    assert clean_repair(t, "b")["run_id"] is None
    fault_row.passed = True


def test_ids_in_a_shared_collection_are_first_come(s3: Any, bucket: str, tenants: Any, fault_row: Row) -> None:
    # A collection no source owns may take chunks from several, but an id stays with the source that has it.
    t = tenants()
    baseline = b_synced(t)
    shared = t.name("shared")
    put(s3, bucket, {"tenant-a/report.meta.json": meta_file("report-1", "tenant-a/own.txt", shared)})
    code, result = t.cli("sync", "a", "--all")
    assert code == 0, result
    expected = {**baseline, (shared, "report-1-0"): OWN}
    check(fault_row, t, expected)
    code, row = t.cli("invoke", "b", B_KEY, "--custom-id", "report-1", "--target-collection", shared, "--wait")
    assert code == 1, row
    message = row["status"]["failed"]["error"]
    assert f"object '{B_KEY}'" in message and "is the id of a document of source 'a'" in message
    assert "source 'b' replaces or deletes only its own chunks" in message
    check(fault_row, t, expected)
    # Another id is fine: the collection is nobody's.
    code, row = t.cli("invoke", "b", B_KEY, "--custom-id", "report-2", "--target-collection", shared, "--wait")
    assert code == 0, row
    expected.update(
        {(shared, f"report-2-{n}"): text for (c, i), text in baseline.items() for n in [int(i.rsplit("-", 1)[1])]}
    )
    check(fault_row, t, expected)
    fault_row.passed = True


def test_a_same_named_key_in_another_bucket_is_another_sources(
    s3: Any, bucket: str, tenants: Any, fault_row: Row
) -> None:
    # b and c hold the same object key in two buckets; both send it to one shared collection.
    t, other_bucket = with_source_c(s3, bucket, tenants, "tenant-b/")
    baseline = b_synced(t)
    shared = t.name("shared")
    put(s3, other_bucket, {B_KEY: "c's own file under the same key\n"})
    code, row = t.cli("invoke", "b", B_KEY, "--target-collection", shared, "--wait")
    assert code == 0, row
    expected = {**baseline, **{(shared, i): text for (_, i), text in baseline.items()}}
    check(fault_row, t, expected)
    # The same key's id is b's in the shared collection: c's invocation fails, changing nothing.
    code, row = t.cli("invoke", "c", B_KEY, "--target-collection", shared, "--wait")
    assert code == 1 and "is the id of a document of source 'b'" in row["status"]["failed"]["error"], row
    check(fault_row, t, expected)
    # c's object is deleted and c syncs it: c removes only its own chunks (it has none in `shared`).
    s3.delete_object(Bucket=other_bucket, Key=B_KEY)
    code, result = t.cli("sync", "c", "--key", B_KEY)
    assert code == 0 and result["keys"][0]["status"] == "removed", result
    check(fault_row, t, expected)
    fault_row.passed = True


def test_target_collections_narrow_where_a_source_writes(s3: Any, bucket: str, tenants: Any, fault_row: Row) -> None:
    t = tenants(target_collections=["a-*"])
    baseline = b_synced(t)
    allowed, refused = f"a-extra-{bucket}", t.name("shared")
    put(
        s3,
        bucket,
        {
            "tenant-a/in.meta.json": meta_file("in-1", "tenant-a/own.txt", allowed),
            "tenant-a/out.meta.json": meta_file("out-1", "tenant-a/own.txt", refused),
        },
    )
    code, result = t.cli("sync", "a", "--all")
    assert code == 1, result
    message = failed_keys(result)["tenant-a/out.meta.json"]
    assert f"collection '{refused}' is not in source 'a' target_collections (a-*)" in message
    expected = {**baseline, (allowed, "in-1-0"): OWN}
    check(fault_row, t, expected)
    fault_row.passed = True


def test_a_metadata_file_may_not_take_the_id_of_a_live_object(
    s3: Any, bucket: str, tenants: Any, fault_row: Row
) -> None:
    # Within one source too: the chunks under the id are b's own object's, and that object still exists.
    t = tenants()
    baseline = b_synced(t)
    put(s3, bucket, {"tenant-b/other.txt": "another document\n"})
    put(s3, bucket, {"tenant-b/thief.meta.json": meta_file(sha_id(B_KEY), "tenant-b/other.txt")})
    code, result = t.cli("sync", "b", "--key", "tenant-b/thief.meta.json")
    assert code == 1, result
    message = failed_keys(result)["tenant-b/thief.meta.json"]
    assert f"is already the id of the document of object '{B_KEY}'" in message
    check(fault_row, t, baseline)
    fault_row.passed = True


# --- the audit sees what a probe sees, and repair restores exactly ---------------------------------------------


def test_audit_sees_a_document_missing_a_chunk_and_repair_restores_it(tenants: Any, fault_row: Row) -> None:
    t = tenants()
    baseline = b_synced(t)
    t.client().get_collection(t.name("coll-b")).delete(ids=[f"{sha_id(B_KEY)}-3"])
    code, result = t.cli("repair", "b")
    assert result["before"]["stale"] == [B_KEY] and result["before"]["incomplete"] == 1, result
    assert code == 0 and result["after"]["clean"], result
    check(fault_row, t, baseline)
    fault_row.passed = True


def test_repair_removes_what_another_source_wrote_into_its_collection(tenants: Any, fault_row: Row) -> None:
    # As an older release let a's metadata file leave it: a's text under b's id, in b's collection.
    t = tenants()
    baseline = b_synced(t)
    t.a_chunk_behind(t.name("coll-b"), sha_id(B_KEY), "tenant-a/xb.meta.json")
    code, result = t.cli("repair", "b")
    before = result["before"]
    assert before["foreign"] == {"a": 1} and before["stale"] == [B_KEY] and not before["clean"], result
    assert code == 0 and result["after"]["clean"], result
    check(fault_row, t, baseline)
    fault_row.passed = True


def test_repair_removes_a_sources_chunks_from_a_collection_it_may_not_write(tenants: Any, fault_row: Row) -> None:
    t = tenants()
    baseline = b_synced(t)
    t.a_chunk_behind(t.name("coll-b"), "stray", "tenant-a/stray.meta.json")
    code, result = t.cli("repair", "a")
    assert result["before"]["misplaced"] == {t.name("coll-b"): 1}, result
    assert code == 0 and result["after"]["clean"], result
    check(fault_row, t, baseline)
    assert clean_repair(t, "b")["run_id"] is None
    fault_row.passed = True


def test_repair_on_an_empty_prefix(tenants: Any, fault_row: Row) -> None:
    t = tenants(
        extra=[{"name": "e", "path_prefix": "nothing-here/"}],
    )
    result = clean_repair(t, "e")
    assert result["before"]["listed"] == 0 and result["run_id"] is None
    check(fault_row, t, {})
    fault_row.passed = True


def test_repair_after_every_object_is_gone(s3: Any, bucket: str, tenants: Any, fault_row: Row) -> None:
    t = tenants()
    b_synced(t)
    s3.delete_object(Bucket=bucket, Key=B_KEY)
    code, result = t.cli("repair", "b")
    assert result["before"]["orphaned"] == [B_KEY], result
    assert code == 0 and result["after"]["clean"] and result["after"]["chunks"] == 0, result
    check(fault_row, t, {})
    fault_row.passed = True


def test_instance_records_every_refusal_on_its_partition(s3: Any, bucket: str, tenants: Any, fault_row: Row) -> None:
    # The refusal is the key's own failure, recorded where the UI shows it; the other keys of the run index.
    t = tenants()
    baseline = b_synced(t)
    put(
        s3,
        bucket,
        {
            "tenant-a/xb.meta.json": meta_file(sha_id(B_KEY), "tenant-a/own.txt", t.name("coll-b")),
            "tenant-a/fine.meta.json": meta_file("fine", "tenant-a/own.txt"),
        },
    )
    code, result = t.cli("sync", "a", "--all")
    assert code == 1 and set(failed_keys(result)) == {"tenant-a/xb.meta.json"}, result
    with dg.DagsterInstance.get() as instance:
        run_id = instance.get_run_records(limit=1)[0].dagster_run.run_id
        recorded = {report["object_key"]: report for report in reports_of(instance, run_id)}
    assert recorded["tenant-a/fine.meta.json"]["status"] == "indexed"
    assert "belongs to source 'b'" in recorded["tenant-a/xb.meta.json"]["message"]
    check(fault_row, t, {**baseline, (t.name("coll-a"), "fine-0"): OWN})
    fault_row.passed = True


def test_a_refused_metadata_file_changes_nothing_it_had(s3: Any, bucket: str, tenants: Any, fault_row: Row) -> None:
    # a's metadata file is indexed, then edited to move its document under an id b holds in a shared
    # collection: the move is refused before the chunks it had are deleted.
    t = tenants()
    baseline = b_synced(t)
    shared = t.name("shared")
    code, row = t.cli("invoke", "b", B_KEY, "--custom-id", "taken", "--target-collection", shared, "--wait")
    assert code == 0, row
    put(s3, bucket, {"tenant-a/move.meta.json": meta_file("mine", "tenant-a/own.txt")})
    code, result = t.cli("sync", "a", "--all")
    assert code == 0, result
    expected = {**baseline, **{(shared, f"taken-{i.rsplit('-', 1)[1]}"): text for (_, i), text in baseline.items()}}
    expected[(t.name("coll-a"), "mine-0")] = OWN
    check(fault_row, t, expected)
    put(s3, bucket, {"tenant-a/move.meta.json": meta_file("taken", "tenant-a/own.txt", shared)})
    code, result = t.cli("sync", "a", "--all")
    assert code == 1 and "is the id of a document of source 'b'" in failed_keys(result)["tenant-a/move.meta.json"]
    check(fault_row, t, expected)
    fault_row.passed = True


def test_no_source_writes_a_rebuild_copy(s3: Any, bucket: str, tenants: Any, fault_row: Row) -> None:
    # `<collection>-s3sync-rebuild` is where a rebuild copies a collection (and which it drops and renames).
    t = tenants()
    baseline = b_synced(t)
    copy = t.name("coll-b") + "-s3sync-rebuild"
    put(s3, bucket, {"tenant-a/copy.meta.json": meta_file("copy", "tenant-a/own.txt", copy)})
    code, result = t.cli("sync", "a", "--all")
    assert (
        code == 1
        and "which s3sync-dagster reserves for the collections a rebuild"
        in failed_keys(result)["tenant-a/copy.meta.json"]
    )
    check(fault_row, t, baseline)
    fault_row.passed = True


def test_a_metadata_mode_document_missing_a_chunk_is_repaired(
    s3: Any, bucket: str, tenants: Any, fault_row: Row
) -> None:
    t = tenants()
    baseline = b_synced(t)
    put(s3, bucket, {"tenant-a/long.txt": SECRET, "tenant-a/long.meta.json": meta_file("long", "tenant-a/long.txt")})
    code, result = t.cli("sync", "a", "--all")
    assert code == 0, result
    expected = {**baseline, **{(t.name("coll-a"), f"long-{n}"): line for n, line in enumerate(SECRET.splitlines(True))}}
    check(fault_row, t, expected)
    t.client().get_collection(t.name("coll-a")).delete(ids=["long-5"])
    code, result = t.cli("repair", "a")
    assert result["before"]["stale"] == ["tenant-a/long.meta.json"], result
    assert code == 0 and result["after"]["clean"], result
    check(fault_row, t, expected)
    fault_row.passed = True


def test_a_repair_never_empties_a_collection_the_source_may_write(tenants: Any, fault_row: Row) -> None:
    # The repair job's config is typed in the launchpad: naming the source's own collection as misplaced
    # must not delete its index.
    t = tenants()
    baseline = b_synced(t)
    with dg.DagsterInstance.get() as instance:
        job = build_definitions(t.config).get_job_def(repair_job_name("b"))
        run_config = repair_run_config("b", [], [], [t.name("coll-b")])
        assert job.execute_in_process(instance=instance, run_config=run_config).success
    check(fault_row, t, baseline)
    fault_row.passed = True
