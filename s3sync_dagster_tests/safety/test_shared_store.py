"""Two projects, one Chroma store: neither counts, searches, repairs, removes or overwrites the other's chunks.

Each project is a config file in a folder of its own, with its own Dagster home beside it (as two teams'
deployments are), and both name their source `docs`. Everything goes through the `s3sync` command on a moto
server over HTTP and Chroma, embedded and a `chroma run` server; each case ends with the exact chunk set of
every collection it uses, in the reliability table's `shared stores` family.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo.local_s3 import LOOPBACK
from s3sync_dagster.config import load_config
from s3sync_dagster.defs.resources import chroma_outside_runs, embedding_resource
from s3sync_dagster_tests.conftest import Chunks, Row, put

pytestmark = pytest.mark.reliability("shared stores")

FILES = {
    1: {"docs/otters.txt": "otters are fed at nine\notters sleep in the reeds\n"},
    2: {"docs/herons.txt": "herons are fed smelt at noon\nherons nest in the alders\nheron ledger HX-42\n"},
}


def sha_id(object_key: str) -> str:
    return hashlib.sha256(object_key.encode()).hexdigest()


@dataclass
class Project:
    """One team's deployment: its config, its bucket, its Dagster home; the `s3sync` command run in it."""

    number: int
    path: Path
    bucket: str
    collection: str
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch
    err: str = ""

    def cli(self, *argv: str) -> tuple[int, Any]:
        self.monkeypatch.delenv("DAGSTER_HOME", raising=False)  # each project's home is beside its config
        code = main([*argv, "--config", str(self.path), "--json"])
        captured = self.capsys.readouterr()
        self.err = captured.err
        return code, json.loads(captured.out) if captured.out.strip() else None

    def opened(self) -> Any:
        """Its collection, as its syncs open it (to write a stranger's chunk into)."""
        config = load_config(self.path)
        chroma = chroma_outside_runs(config.chroma)
        return chroma.collection(self.collection, embedding_resource(config.embedding))

    def expected(self) -> Chunks:
        """Its documents' chunks (one a line) in its collection."""
        return {
            (self.collection, f"{sha_id(key)}-{n}"): line
            for key, text in FILES[self.number].items()
            for n, line in enumerate(text.splitlines(keepends=True))
        }


ProjectFactory = Callable[..., Project]


@pytest.fixture(params=["embedded", "server"])
def chroma_target(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "embedded":
        return {"path": str(tmp_path / "shared-chroma")}
    return {"host": LOOPBACK, "port": request.getfixturevalue("chroma_server")}


@pytest.fixture
def make_project(
    s3: Any,
    bucket: str,
    moto_endpoint: str,
    tmp_path: Path,
    chroma_target: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> ProjectFactory:
    def make(number: int, collection: str | None = None, same_bucket: bool = False, **top: Any) -> Project:
        project_bucket = bucket if same_bucket else f"{bucket}-p{number}"
        if not same_bucket:
            s3.create_bucket(Bucket=project_bucket)
        put(s3, project_bucket, FILES[number])
        collection = collection or f"p{number}-{bucket}"
        source = {
            "name": "docs",
            "bucket_name": project_bucket,
            "region": "us-east-1",
            "collection_name": collection,
            "endpoint_url": moto_endpoint,
            "path_prefix": "docs/",
            "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"},
            "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
            "chunking": {"type": "lines", "max_lines": 1},
        }
        folder = tmp_path / f"project{number}"
        folder.mkdir()
        path = folder / "s3sync.yaml"
        path.write_text(yaml.safe_dump({**top, "chroma": chroma_target, "sources": [source]}), encoding="utf-8")
        return Project(number, path, project_bucket, collection, capsys, monkeypatch)

    return make


def store(project: Project) -> list[tuple[str, str, str]]:
    """(collection, id, text) of every chunk in the two projects' collections."""
    config = load_config(project.path)
    client = chroma_outside_runs(config.chroma).client()
    found: list[tuple[str, str, str]] = []
    for collection in client.list_collections():
        if collection.name.endswith(project.bucket.rsplit("-p", 1)[0]):
            rows = collection.get(include=["documents"])
            found += [(collection.name, i, t) for i, t in zip(rows["ids"], rows["documents"], strict=True)]
    return found


def check(row: Row, project: Project, expected: Chunks) -> None:
    found = store(project)
    row.observe(expected, found)
    assert {(c, i): text for c, i, text in found} == expected
    assert len(found) == len(expected)


def synced(project: Project) -> None:
    code, result = project.cli("sync", "docs", "--all")
    assert code == 0 and result["counts"] == {"indexed": len(FILES[project.number])}, result


def test_a_second_project_writing_the_first_ones_collection_is_told_so_at_its_first_sync(
    make_project: ProjectFactory, bucket: str, fault_row: Row
) -> None:
    first = make_project(1, collection=f"docs-{bucket}")
    second = make_project(2, collection=f"docs-{bucket}")
    synced(first)
    code, result = second.cli("sync", "docs", "--all")
    assert code != 0, result
    said = json.dumps(result) + second.err
    assert f"collection 'docs-{bucket}' is the own collection of source 'docs' (bucket '{first.bucket}'" in said
    assert f"(bucket '{second.bucket}', prefix 'docs/') may not write it" in said and "project:" in said, said
    check(fault_row, first, first.expected())
    # Its own project name tells it apart no better: the collection is the first project's.
    code, result = first.cli("sync", "docs", "--all")
    assert code == 0 and result["counts"] == {"unchanged": 1}, result
    check(fault_row, first, first.expected())
    fault_row.passed = True


def test_a_query_answers_from_the_sources_own_chunks_and_says_whose_each_hit_is(
    make_project: ProjectFactory, fault_row: Row
) -> None:
    from s3sync_dagster.commands.query import search_source

    first = make_project(1)
    synced(first)
    config = load_config(first.path)
    collection = first.opened()
    # Another writer (no source of this config: another tool, or another project) puts a chunk into it.
    intruder = {"source": "docs", "bucket_name": "someone-elses", "object_key": "docs/otters.txt"}
    collection.upsert(ids=["intruder-0"], documents=["otters are fed at nine by the intruder"], metadatas=[intruder])
    for mode in ("dense", "lexical", "hybrid"):
        hits = search_source("docs", "when are otters fed", mode=mode, config=config)
        assert hits and all(hit.chunk_id != "intruder-0" for hit in hits), mode
        assert {hit.metadata.get("source") for hit in hits} == {"docs"}
        everything = search_source("docs", "otters fed intruder", mode=mode, config=config, every_writer=True)
        assert "intruder-0" in {hit.chunk_id for hit in everything}, mode
    collection.delete(ids=["intruder-0"])
    check(fault_row, first, first.expected())
    fault_row.passed = True


def test_two_projects_never_repair_remove_or_count_each_others_chunks(
    make_project: ProjectFactory, fault_row: Row
) -> None:
    first, second = make_project(1), make_project(2)
    synced(first)
    synced(second)
    both = {**first.expected(), **second.expected()}
    check(fault_row, first, both)
    for project in (first, second):
        code, result = project.cli("repair", "docs")
        assert code == 0 and result["before"]["clean"] and result["run_id"] is None, result
        check(fault_row, first, both)
        code, listed = project.cli("sources")
        (row,) = listed["sources"]
        assert row["chunks_by_collection"] == {project.collection: len(project.expected())}, row
    code, removed = first.cli("remove-source", "docs", "--yes")
    assert code == 0 and removed["chunks_deleted"] == {first.collection: len(first.expected())}, removed
    check(fault_row, first, second.expected())
    code, result = second.cli("repair", "docs")
    assert code == 0 and result["before"]["clean"], result
    check(fault_row, first, second.expected())
    fault_row.passed = True


def test_two_projects_reading_one_bucket_are_told_apart_by_their_project(
    make_project: ProjectFactory, fault_row: Row
) -> None:
    # The same source (name, bucket, prefix) in two projects, into two collections: without `project:` the
    # second is refused at its first sync; with it, each keeps to its own chunks.
    first = make_project(1)
    synced(first)
    twin = make_project(2)
    raw = yaml.safe_load(twin.path.read_text())
    raw["sources"][0]["bucket_name"] = twin.bucket = first.bucket
    twin.path.write_text(yaml.safe_dump(raw))
    code, result = twin.cli("sync", "docs", "--all")
    assert code != 0 and "already writes collection" in json.dumps(result) + twin.err, (result, twin.err)
    check(fault_row, first, first.expected())
    raw["project"] = "handbook-staging"
    twin.path.write_text(yaml.safe_dump(raw))
    code, result = twin.cli("sync", "docs", "--all")
    assert code == 0 and result["counts"] == {"indexed": 1}, result
    mirrored = {(twin.collection, i): text for (_, i), text in first.expected().items()}
    check(fault_row, first, {**first.expected(), **mirrored})
    for project in (first, twin):
        code, result = project.cli("repair", "docs")
        assert code == 0 and result["before"]["clean"] and result["run_id"] is None, result
    check(fault_row, first, {**first.expected(), **mirrored})
    code, removed = twin.cli("remove-source", "docs", "--yes")
    assert code == 0 and removed["chunks_deleted"] == {twin.collection: len(mirrored)}, removed
    check(fault_row, first, first.expected())
    fault_row.passed = True


def test_a_chunk_of_an_unknown_writer_in_a_sources_collection_is_foreign_and_repair_removes_it(
    make_project: ProjectFactory, fault_row: Row
) -> None:
    first = make_project(1)
    synced(first)
    collection = first.opened()
    collection.upsert(ids=["stray-0"], documents=["otters are fed at nine, says a stranger"], metadatas=[{"x": 1}])
    code, found = first.cli("query", "docs", "when are otters fed")
    assert code == 0 and "stray-0" not in {hit["id"] for hit in found["results"]}, found
    assert {hit["source"] for hit in found["results"]} == {"docs"}, found
    code, found = first.cli("query", "docs", "otters fed stranger", "--every-writer")
    assert code == 0 and "stray-0" in {hit["id"] for hit in found["results"]}, found
    code, result = first.cli("repair", "docs")
    assert code == 0 and result["before"]["counts"]["foreign"] == 1 and result["after"]["clean"], result
    check(fault_row, first, first.expected())
    fault_row.passed = True


def test_naming_a_project_later_upgrades_the_chunks_without_a_sync(
    make_project: ProjectFactory, fault_row: Row
) -> None:
    first = make_project(1)
    synced(first)
    raw = yaml.safe_load(first.path.read_text())
    raw["project"] = "handbook"
    first.path.write_text(yaml.safe_dump(raw))
    code, result = first.cli("sync", "docs", "--all")
    assert code == 0 and result["counts"] == {"unchanged": 1}, result  # nothing read again, nothing embedded
    config = load_config(first.path)
    client = chroma_outside_runs(config.chroma).client()
    stored = client.get_collection(first.collection).get(include=["metadatas"])
    assert {m["project"] for m in stored["metadatas"]} == {"handbook"}
    code, result = first.cli("repair", "docs")
    assert code == 0 and result["before"]["clean"], result
    check(fault_row, first, first.expected())
    fault_row.passed = True
