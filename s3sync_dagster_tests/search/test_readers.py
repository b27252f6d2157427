"""Who may read what a search returns (issue 52, items 2 and 3, the search side): `where` filters over chunk
metadata and a source's readers rule (pipeline/search/filters.py), through the Python API and `s3sync query`, exact
on both sides of search: the n best of the chunks the filter admits, however many others outrank them.

The objects are put in moto over HTTP with their readers as an S3 tag and their team as `x-amz-meta-team`, and
synced by the engine (pipeline/chroma/labels.py writes `readers` and `meta_team` on each chunk) into embedded Chroma, a
`chroma run` server (whose lexical side is Chroma's full-text filter) and one whose lexical index is in PostgreSQL.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.query import SourceSearch, search_source
from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.pipeline.chroma.labels import READERS_KEY
from s3sync_dagster.pipeline.lexicon import embedded as lexicon
from s3sync_dagster.pipeline.search.dense import FILTERED_WIDEN, distances, nearest
from s3sync_dagster.pipeline.search.lexical import indexed
from s3sync_dagster.pipeline.search.where_match import matches
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster_tests.conftest import ResidentCommands

BIN = Path(sys.executable).parent

# One line a chunk. Bob's herd: 18 chunks that say "zebra" three times each, so every one of them outranks
# alice's single zebra line on the word, and 32 of his about hay; a finance note alice and group:finance may
# read; an untagged object (no readers: operators only).
HERD = {
    f"herd/pen{pen}.txt": "".join(f"Pen {pen} animal {animal}: zebra zebra zebra grazing by the fence.\n" for animal in range(6))
    for pen in range(3)
}  # fmt: skip
BARN = {
    f"herd/barn{barn}.txt": "".join(f"Barn {barn} stall {stall}: fresh hay and water for the horses.\n" for stall in range(8))
    for barn in range(4)
}  # fmt: skip
NOTES = (
    "Quarterly ledger reconciled for the finance team.\n"
    "The zebra crossing near the office entrance is closed while the pavement is repaired this week.\n"
    "Invoices from the supplier are due on the fifth.\n"
    "Expense reports go to the controller before Friday.\n"
)
FILES: dict[str, bytes | str] = {
    **HERD,
    **BARN,
    "finance/notes.txt": NOTES,
    "misc/untagged.txt": "An untagged memo about a zebra painting.\n",
}
READERS = {"herd/": ["bob"], "finance/": ["alice", "group:finance"]}
TEAMS = {"herd/": "ops", "finance/": "finance", "misc/": "ops"}


def _prefix(object_key: str) -> str:
    return object_key.split("/")[0] + "/"


@pytest.fixture(scope="session")
def readers_lexicon() -> Iterator[str]:
    """A PostgreSQL database for a server's lexical index (pipeline/lexicon/postgres.py): its URL."""
    from benchmarks.servers import postgres_server

    with postgres_server.running(db_name="readers") as server:
        yield f"postgresql://{server.user}@{server.host}:{server.port}/{server.db_name}"


@pytest.fixture(params=["embedded", "server", "server+postgres"])
def readers_source(
    request: pytest.FixtureRequest, s3: Any, bucket: str, tmp_path: Path, moto_endpoint: str
) -> Iterator[tuple[AppConfig, Path]]:
    """A source with readers_tag over FILES, synced, each chunk given its object's readers and team: in an
    embedded store (its lexical index in SQLite), on a `chroma run` server (Chroma's full-text filter), and on
    one whose lexical index is in PostgreSQL."""
    chroma: dict[str, Any] = {"path": "chroma"}
    if request.param.startswith("server"):
        chroma = {"host": "127.0.0.1", "port": request.getfixturevalue("chroma_server")}
    if request.param == "server+postgres":
        lexicon_url = request.getfixturevalue("readers_lexicon")
        request.getfixturevalue("monkeypatch").setenv("S3SYNC_TEST_READERS_LEXICON", lexicon_url)
        chroma["lexicon_postgres"] = {"env": "S3SYNC_TEST_READERS_LEXICON"}
    source = {
        "name": "zoo", "bucket_name": bucket, "region": "us-east-1", "collection_name": f"r-{bucket}"[:60],
        "endpoint_url": moto_endpoint, "chunking": {"type": "lines", "max_lines": 1}, "readers_tag": "readers",
        "object_metadata": ["team"],
        "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"}, "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
    }  # fmt: skip
    plain = {
        **source,
        "name": "plain",
        "readers_tag": None,
        "object_metadata": [],
        "bucket_name": f"{bucket}-plain",
        "collection_name": f"p-{bucket}"[:60],
    }
    path = tmp_path / "s3sync.yaml"
    path.write_text(yaml.safe_dump({"chroma": chroma, "sources": [source, plain]}), encoding="utf-8")
    config = load_config(path)
    for object_key, body in FILES.items():  # readers as the tag lists them ('+' between), the team as metadata
        prefix = _prefix(object_key)
        tagging = f"readers={quote('+'.join(READERS[prefix]))}" if prefix in READERS else ""
        s3.put_object(
            Bucket=bucket, Key=object_key, Body=str(body).encode(), Metadata={"team": TEAMS[prefix]}, Tagging=tagging
        )
    spec = config.source("zoo").spec(config.embedding.spec())
    collection = config.chroma.store().collection(spec.collection_name, config.embedding.spec())
    config.chroma.store().collection(config.source("plain").collection_name, config.embedding.spec())
    reports = sync_keys(s3, spec, lambda _: collection, config.embedding.spec().build(), sorted(FILES))
    assert [report.status for report in reports] == ["indexed"] * len(FILES), reports
    for metadata in collection.get(include=["metadatas"])["metadatas"] or []:  # as ingestion wrote them
        prefix = _prefix(str(metadata["object_key"]))
        assert metadata["meta_team"] == TEAMS[prefix]
        assert metadata.get(READERS_KEY) == (sorted(READERS[prefix]) if prefix in READERS else None)
    yield config, path
    config.chroma.store().client().delete_collection(spec.collection_name)
    config.chroma.store().client().delete_collection(config.source("plain").collection_name)
    if request.param == "server+postgres":  # the session's server is shared: later tests open it without one
        lexicon.forget_server("127.0.0.1", chroma["port"])


def _keys(hits: Any) -> list[str]:
    return [hit.object_key for hit in hits]


def test_a_principal_reads_only_what_it_may(readers_source: tuple[AppConfig, Path]) -> None:
    config, _ = readers_source
    searcher = SourceSearch("zoo", config)
    for mode in ("dense", "lexical", "hybrid"):
        # Forty herd chunks outrank alice's one zebra line on the word: hers is still her best answer.
        alice = searcher.search("zebra", mode=mode, n=3, principals=["alice"])
        assert alice and set(_keys(alice)) == {"finance/notes.txt"}, mode
        assert "zebra crossing" in alice[0].document, (mode, alice[0].document)
        bob = searcher.search("zebra", mode=mode, n=5, principals=["bob"])
        assert len(bob) == 5 and set(_keys(bob)) <= {*HERD, *BARN}, mode
        # A principal of a group, and one of several named.
        assert set(_keys(searcher.search("ledger", mode=mode, n=2, principals=["group:finance"]))) == {
            "finance/notes.txt"
        }, mode
        assert not searcher.search("zebra", mode=mode, n=5, principals=["mallory"]), mode  # may read nothing
        assert not searcher.search("zebra", mode=mode, n=5, principals=["alic"]), mode  # an element, not a prefix
        # None named: nothing. An operator's view: everything, the untagged memo too.
        assert searcher.search("zebra", mode=mode, n=5) == [], mode
        every = searcher.search("untagged memo zebra painting", mode=mode, n=60, all_readers=True)
        assert {*HERD, "finance/notes.txt", "misc/untagged.txt"} <= set(_keys(every)), mode
        named = searcher.search("zebra", mode=mode, n=60, principals=["alice", "bob"])
        assert {*HERD, "finance/notes.txt"} <= set(_keys(named)) <= {*HERD, *BARN, "finance/notes.txt"}, mode


def test_a_filtered_search_ranks_among_the_admitted_chunks(readers_source: tuple[AppConfig, Path]) -> None:
    """The dense side's n best readable chunks are the n nearest by brute force over the readable ones; the
    lexical side's are every readable chunk holding the word, though 40 unreadable ones score higher."""
    config, _ = readers_source
    searcher = SourceSearch("zoo", config)
    collection = searcher.collection
    everything: Any = collection.get(include=["metadatas", "documents", "embeddings"])  # type: ignore[list-item]
    readable = [
        index
        for index, metadata in enumerate(everything["metadatas"] or [])
        if "alice" in (metadata or {}).get(READERS_KEY, [])
    ]
    assert len(readable) == 4 and len(everything["ids"]) == 18 + 32 + 4 + 1
    query = "closed pavement near the office"
    far = distances(
        collection, searcher.embedding_function([query])[0], [everything["embeddings"][i] for i in readable]
    )
    nearest = [everything["ids"][i] for _, i in sorted(zip(far, readable, strict=True))][:3]
    dense = searcher.search(query, mode="dense", n=3, principals=["alice"])
    assert [hit.chunk_id for hit in dense] == nearest
    holding = {everything["ids"][i] for i in readable if "zebra" in (everything["documents"] or [])[i]}
    lexical = searcher.search("zebra", mode="lexical", n=5, principals=["alice"])
    assert {hit.chunk_id for hit in lexical} == holding
    hybrid = searcher.search("zebra", mode="hybrid", n=2, principals=["alice"])
    assert hybrid[0].chunk_id in holding and all(
        hit.chunk_id in {everything["ids"][i] for i in readable} for hit in hybrid
    )


def test_the_lexical_index_answers_under_the_filter(readers_source: tuple[AppConfig, Path]) -> None:
    config, _ = readers_source
    if not config.chroma.is_embedded and config.chroma.lexicon_postgres is None:
        pytest.skip("a server without PostgreSQL has no lexical index: Chroma's full-text filter answers")
    searcher = SourceSearch("zoo", config)
    assert indexed(searcher.collection) is not None  # the index (not Chroma's full-text filter) ranks
    (hit,) = searcher.search("zebra", mode="lexical", n=1, principals=["alice"], where={"meta_team": "finance"})
    assert hit.object_key == "finance/notes.txt"


def test_where_filters_by_metadata(readers_source: tuple[AppConfig, Path]) -> None:
    config, _ = readers_source
    for mode in ("dense", "lexical", "hybrid"):
        found = search_source(
            "zoo", "zebra", mode=mode, n=50, config=config, all_readers=True, where={"meta_team": "ops"}
        )
        assert set(_keys(found)) >= {*HERD, "misc/untagged.txt"}, mode
        assert set(_keys(found)) <= {*HERD, *BARN, "misc/untagged.txt"}, mode
        both = search_source(
            "zoo", "zebra", mode=mode, n=50, config=config, principals=["bob", "alice"],
            where={"meta_team": {"$in": ["finance"]}},
        )  # fmt: skip
        assert set(_keys(both)) == {"finance/notes.txt"}, mode
    with pytest.raises(ValueError, match="not a Chroma where clause"):
        search_source("zoo", "zebra", config=config, all_readers=True, where={"meta_team": {"$like": "f%"}})
    # A source without readers_tag has no readers to name.
    with pytest.raises(ValueError, match="source 'plain' has no readers_tag"):
        search_source("plain", "zebra", config=config, principals=["alice"])


def test_s3sync_query_as_where_and_all_readers(
    readers_source: tuple[AppConfig, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = readers_source
    argv = ["query", "zoo", "zebra", "--config", str(path), "-n", "3", "--json"]

    def keys(*options: str) -> set[str]:
        assert main([*argv, *options]) == 0
        return {hit["object_key"] for hit in json.loads(capsys.readouterr().out)["results"]}

    assert keys("--as", "alice") == {"finance/notes.txt"}
    assert main([*argv, "--as", "group:finance"]) == 0  # each hit says who may read it
    assert {tuple(hit["readers"]) for hit in json.loads(capsys.readouterr().out)["results"]} == {
        ("alice", "group:finance")
    }
    assert keys("--as", "mallory", "--as", "alice") == {"finance/notes.txt"}
    assert keys("--all-readers", "-n", "60", "--where", '{"meta_team": "ops"}') >= {*HERD, "misc/untagged.txt"}
    assert keys("--all-readers", "-n", "60", "--where", '{"meta_team": "finance"}') == {"finance/notes.txt"}
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["results"] == []
    assert "source 'zoo' lists readers per object (readers_tag): name --as PRINCIPAL, or --all-readers" in captured.err
    for bad, rule in (
        (["--where", "{team"], "--where is not JSON"),
        (["--where", '{"meta_team": {"$like": "f"}}'], "--where: the where filter is not a Chroma where clause"),
        (["--where", "[1]"], "--where: the where filter must be an object"),
        (["--as", "alice", "--all-readers"], "not both"),
    ):
        assert main([*argv, *bad]) == 2, bad
        assert rule in capsys.readouterr().err, bad
    assert main(["query", "plain", "zebra", "--config", str(path), "--as", "alice"]) == 2
    assert "source 'plain' has no readers_tag" in capsys.readouterr().err


CLAUSES: list[dict[str, Any]] = [
    {"r": {"$contains": "bob"}}, {"r": {"$not_contains": "bob"}}, {"s": {"$contains": "hello"}},
    {"s": {"$not_contains": "hello"}}, {"i": {"$ne": 1}}, {"i": {"$nin": [1]}}, {"i": 1}, {"i": 1.0}, {"b": 1},
    {"b": True}, {"i": True}, {"f": {"$gt": 1}}, {"r": "bob"}, {"r": {"$in": ["bob"]}}, {"r": {"$contains": 1}},
    {"r": {"$contains": 1.0}}, {"i": {"$in": [1, 2]}}, {"r": {"$ne": "bob"}}, {"b": {"$gt": 0}}, {"i": {"$gte": 1}},
    {"f": {"$lt": 2}}, {"s": {"$in": ["hello", "x"]}}, {"s": {"$nin": ["hello"]}}, {"b": {"$ne": False}},
    {"$or": [{"i": 2}, {"r": {"$contains": "alice"}}]}, {"$and": [{"i": {"$gte": 1}}, {"s": {"$ne": "hello"}}]},
]  # fmt: skip


def test_a_where_clause_is_tested_as_chroma_tests_it(tmp_path: Path) -> None:
    """The lexical index's candidates are tested here (pipeline/search/where_match.py): clause by clause, the same
    chunks as Chroma's own filter admits."""
    import chromadb

    client = chromadb.PersistentClient(path=str(tmp_path / "c"))
    collection = client.create_collection("where-match", embedding_function=None)
    metadatas: list[dict[str, Any]] = [
        {"r": ["alice", "bob"], "s": "hello world", "i": 1, "f": 1.5, "b": True},
        {"r": ["bob"], "s": "hello", "i": 2, "b": False},
        {"i": 1.0},
        {"s": "x", "r": [1, 2]},
        {"z": 0},
    ]
    ids = [f"m{number}" for number in range(len(metadatas))]
    collection.add(ids=ids, embeddings=[[1.0, 0.0]] * len(ids), metadatas=metadatas)  # type: ignore[arg-type]
    stored = dict(zip(ids, collection.get(ids=ids, include=["metadatas"])["metadatas"] or [], strict=True))
    for clause in CLAUSES:
        chroma = set(collection.get(where=clause)["ids"])  # type: ignore[arg-type]
        assert {chunk_id for chunk_id in ids if matches(clause, stored[chunk_id] or {})} == chroma, clause


@pytest.mark.parametrize("readers_source", ["embedded"], indirect=True)
def test_the_resident_query_process_applies_the_same_filters(readers_source: tuple[AppConfig, Path]) -> None:
    """`s3sync query --as/--where/--all-readers` answered by the resident query process (commands/resident.py),
    which runs the same command: the options reach it, its stderr comes back."""
    _, path = readers_source
    s3sync = ResidentCommands()

    query = ["query", "zoo", "zebra", "--config", str(path), "-n", "3", "--json"]
    try:
        assert s3sync("query-server", "start").returncode == 0
        before = s3sync.wait_until_serving()
        assert before is not None
        alice = s3sync(*query, "--as", "alice", "--where", '{"meta_team": "finance"}')
        assert alice.returncode == 0, alice.stderr[-2000:]
        assert {hit["object_key"] for hit in json.loads(alice.stdout)["results"]} == {"finance/notes.txt"}
        nobody = s3sync(*query)
        assert json.loads(nobody.stdout)["results"] == [] and "name --as PRINCIPAL" in nobody.stderr
        every = s3sync(*query, "--all-readers", "--where", '{"meta_team": "ops"}', "--mode", "lexical")
        assert {hit["object_key"] for hit in json.loads(every.stdout)["results"]} <= {*HERD, "misc/untagged.txt"}
        bad = s3sync(*query, "--where", "{")
        assert bad.returncode == 2 and "--where is not JSON" in bad.stderr
        assert s3sync.served() == before + 4  # each answered there, not in its own process
    finally:
        s3sync.close()


def test_the_dense_side_tests_a_prefix_or_asks_chromas_filter(readers_source: tuple[AppConfig, Path]) -> None:
    """`search_dense.nearest` under a filter: the admitted among the unfiltered 16 x n nearest when n are there
    (a query like alice's note), Chroma's filtered query when not (a query like the herd, which fills the
    prefix); either way what Chroma's filtered query answers."""
    config, _ = readers_source
    searcher = SourceSearch("zoo", config)
    collection = searcher.collection
    alice = {READERS_KEY: {"$contains": "alice"}}
    for text, n in (("the zebra crossing near the office entrance is closed", 1), ("zebra grazing by the fence", 2)):
        asked = {"query_embeddings": [searcher.embedding_function([text])[0]]}
        chroma = collection.query(**asked, n_results=n, where=alice, include=[])["ids"][0]  # type: ignore[arg-type]
        assert [row[0] for row in nearest(collection, asked, n, alice)] == chroma, text
        prefix = collection.query(**asked, n_results=n * FILTERED_WIDEN, include=["metadatas"])  # type: ignore[arg-type]
        held = sum("alice" in (metadata or {}).get(READERS_KEY, []) for metadata in prefix["metadatas"][0])  # type: ignore[index, operator]
        assert (held >= n) == text.startswith("the zebra crossing"), (text, held)  # both paths taken
