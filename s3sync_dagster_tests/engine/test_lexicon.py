"""The lexical index of an embedded store (pipeline/lexicon/embedded.py) and of a `chroma run` server's collections, in
PostgreSQL (pipeline/lexicon/postgres.py): written with the chunks through real syncs (moto over HTTP, embedded
Chroma, a `chroma run` server, Debian's PostgreSQL), answering as Chroma's own full-text filter does, refused
while it may be wrong, found by the audit and built again by `s3sync repair` and `s3sync rebuild-lexicon`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest

from benchmarks.servers import postgres_server
from s3sync_dagster.commands import cli
from s3sync_dagster.commands.runs.runner import sync
from s3sync_dagster.commands.subcommand import EXIT_OK
from s3sync_dagster.config import load_config
from s3sync_dagster.pipeline.audit import drift as audit
from s3sync_dagster.pipeline.chroma import lifecycle
from s3sync_dagster.pipeline.chunking.context import embedding_input
from s3sync_dagster.pipeline.lexicon import embedded as lexicon
from s3sync_dagster.pipeline.lexicon import terms
from s3sync_dagster.pipeline.lexicon.postgres import PostgresLexicon
from s3sync_dagster.pipeline.search import dense, lexical
from s3sync_dagster.pipeline.search import lexical as search_lexical
from s3sync_dagster.pipeline.search import query as search
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.store import Store, embedded_client
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster_tests.conftest import ConfigFactory, CountingEmbedder, put

FILES = {
    "notes/a.md": "# Parcels\n\nThe parcel QX-7741-B left the warehouse in İstanbul on Monday.\n",
    "notes/b.md": "# Invoices\n\nInvoice RB-1020-A was paid by the Straße office after the audit.\n",
    "notes/c.py": "def ship(parcel):\n    return os.path.join('warehouse', parcel)\n",
    "notes/d.txt": "The warehouse ships every parcel on time; the customer signs for it.\n",
}
PARCEL_THE = terms.indexed_forms(["parcel", "the"])  # the index's terms for them: their stems
QUERIES = ["QX-7741-B", "istanbul warehouse", "strasse audit invoice", "os.path.join", "parcel customer", "nothing"]


@pytest.fixture
def spec(bucket: str) -> SourceSpec:
    return SourceSpec(name="docs", bucket_name=bucket, collection_name=f"lexicon-{bucket}"[:60])


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    with postgres_server.running(db_name="lexicon") as server:
        yield f"postgresql://{server.user}@{server.host}:{server.port}/{server.db_name}"


@pytest.fixture
def lexicon_database(postgres_database: str, chroma_server: int) -> Iterator[str]:
    """A PostgreSQL database for servers' lexical indexes: its connection URL (loopback, trusted). The session's
    `chroma run` server is shared: its collections are opened without one again after the test."""
    yield postgres_database
    lexicon.forget_server("127.0.0.1", chroma_server)


@pytest.fixture(params=["embedded", "server"])
def collection(request: pytest.FixtureRequest, spec: SourceSpec, embedding_function: Any) -> Any:
    """The source's collection, new: in an embedded store, or on a `chroma run` server whose lexical index is
    in PostgreSQL."""
    if request.param == "embedded":
        client = request.getfixturevalue("chroma_client")
    else:
        port, dsn = request.getfixturevalue("chroma_server"), request.getfixturevalue("lexicon_database")
        store = Store(host="127.0.0.1", port=port, lexicon_dsn=dsn)
        client = store.client()
    return lifecycle.open_collection(
        client, spec.collection_name, embedding_function, metadata={"created_by": "s3sync-dagster"}
    )


def synced(s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder, files: dict[str, str]) -> None:
    put(s3, spec.bucket_name, files)
    reports = sync_keys(s3, spec, lambda _: collection, embedder, list(files))
    assert all(report.status in ("indexed", "unchanged", "removed") for report in reports), reports


def keys_found(collection: Any, text: str) -> list[str]:
    return [str(hit.metadata["object_key"]) for hit in search.search(collection, text, mode="lexical", n=10)]


def test_the_index_follows_every_sync_and_answers_as_chromas_filter_does(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    index_of = lexicon.of(collection)
    assert index_of is not None and index_of.state(collection) is None  # a new collection: empty and complete
    synced(s3, spec, collection, embedder, FILES)
    assert lexical.indexed(collection) is index_of and index_of.verify(collection) == []
    assert_answers_as_chroma(index_of, collection, QUERIES)
    assert keys_found(collection, "QX-7741-B") == ["notes/a.md"]
    assert keys_found(collection, "strasse") == ["notes/b.md"]  # folded as the query is

    # A changed object is found by its new words only, a deleted one not at all: the index is rewritten with
    # the chunks, in the same sync.
    synced(s3, spec, collection, embedder, {"notes/a.md": "# Parcels\n\nParcel ZP-3388-E waits in Ankara.\n"})
    s3.delete_object(Bucket=spec.bucket_name, Key="notes/b.md")
    synced(s3, spec, collection, embedder, {})
    assert sync_keys(s3, spec, lambda _: collection, embedder, ["notes/b.md"])[0].status == "removed"
    assert index_of.state(collection) is None and index_of.verify(collection) == []
    assert_answers_as_chroma(index_of, collection, [*QUERIES, "ZP-3388-E ankara parcel"])  # frequencies kept
    assert keys_found(collection, "ZP-3388-E") == ["notes/a.md"]
    assert keys_found(collection, "QX-7741-B") == [] and keys_found(collection, "RB-1020-A") == []
    assert keys_found(collection, "ankara") == ["notes/a.md"]


def assert_answers_as_chroma(index_of: Any, collection: Any, queries: list[str]) -> None:
    """The index answers as Chroma's filter does, word forms aside: it looks up the same words, each by its stem
    (an identifier also whole), each term's idf is that of the chunks whose text and context line hold it as
    the chunks themselves say, and it offers every chunk Chroma's filter offers."""
    got = collection.get(include=["documents", "metadatas"])
    held = [
        set(terms.index_terms(embedding_input(document or "", metadata)))
        for document, metadata in zip(got["documents"], got["metadatas"], strict=True)
    ]
    for query in queries:
        from_index = lexical.lexicon_side(index_of, collection, query, 50)
        from_chroma = lexical.lexical_side(collection, query, 50)
        assert from_index.key_terms == tuple(terms.indexed_forms(from_chroma.terms)), query
        assert from_index.idf == pytest.approx(
            {
                term: search_lexical.bm25_idf(len(held), sum(term in counts for counts in held))
                for term in from_index.terms
            }
        ), query
        assert set(from_chroma.candidate_ids) <= set(from_index.candidate_ids), query


def test_a_word_is_found_in_any_english_form_an_identifier_whole_and_by_its_words(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    synced(s3, spec, collection, embedder, {
        "forms/timeout.md": "# Timeouts\n\nThe request gives up after 300 milliseconds of silence.\n",
        "forms/paths.py": "def joined(parts):\n    return os.path.join(*parts)\n",
        "forms/headers.py": "def parse_headers(lines):\n    return lines\n",
        "forms/other.txt": "Nothing about waiting here, only the weather report for Tuesday.\n",
    })  # fmt: skip
    assert lexical.indexed(collection) is not None  # the index answers, not Chroma's filter
    assert keys_found(collection, "millisecond timeout") == ["forms/timeout.md"]  # singular asked, plural stored
    assert keys_found(collection, "gave up timing out")[:1] == ["forms/timeout.md"]  # "gives", "timeouts"
    assert keys_found(collection, "os.path.join") == ["forms/paths.py"]  # whole
    assert keys_found(collection, "join") == ["forms/paths.py"]  # and by its words
    assert keys_found(collection, "parse_headers") == ["forms/headers.py"]
    assert keys_found(collection, "parse_header") == []  # an identifier is not an English word: its own form
    # Chroma's filter, where there is no index (a store another tool made), still matches words whole.
    index_of = lexicon.detach(collection)
    try:
        assert keys_found(collection, "millisecond") == []
        assert keys_found(collection, "milliseconds") == ["forms/timeout.md"]
    finally:
        if index_of is not None:
            lexicon.attach_index(collection, index_of)


def test_while_a_write_is_not_mirrored_chromas_filter_answers_and_a_rebuild_mends_it(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    synced(s3, spec, collection, embedder, FILES)
    index_of = lexicon.of(collection)
    assert index_of is not None
    [chunk_id] = [c for c, m in zip(*_ids_and_metadata(collection), strict=True) if m["object_key"] == "notes/d.txt"]
    # A crash between Chroma's write and the index's: the id is pending, the index holds the old text.
    index_of.pending(collection, [chunk_id])
    collection.update(ids=[chunk_id], documents=["The lighthouse keeper logs every storm."])
    assert index_of.state(collection) == "writes to it are not yet in its lexical index"
    assert lexical.indexed(collection) is None
    assert keys_found(collection, "lighthouse") == ["notes/d.txt"]  # Chroma's filter: exact as the chunks are
    assert audit.lexicon_drift([collection]) == {collection.name: "writes to it are not yet in its lexical index"}

    assert index_of.rebuild(collection) == collection.count()
    assert index_of.state(collection) is None and index_of.verify(collection) == []
    assert keys_found(collection, "lighthouse") == ["notes/d.txt"]
    # A writer that is not s3sync changes a text behind the index's back: the audit reads it and says so.
    collection.update(ids=[chunk_id], documents=["Only the harbour master signs."])
    assert index_of.verify(collection) == [chunk_id]
    assert audit.lexicon_drift([collection]) == {
        collection.name: f"1 chunk(s) differ between it and the collection, e.g. '{chunk_id}'"
    }


def _ids_and_metadata(collection: Any) -> tuple[list[str], list[dict[str, Any]]]:
    found = collection.get(include=["metadatas"])
    return found["ids"], found["metadatas"]


@pytest.mark.parametrize("space", ["l2", "cosine", "ip"])
def test_a_distance_computed_from_a_stored_vector_is_chromas(chroma_client: Any, space: str) -> None:
    collection = chroma_client.create_collection(f"space-{space}", configuration={"hnsw": {"space": space}})
    vectors = np.random.default_rng(3).standard_normal((20, 8)).astype(np.float32)
    if space == "ip":
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    collection.add(ids=[f"v{i}" for i in range(20)], embeddings=vectors, documents=[f"d{i}" for i in range(20)])
    query = vectors[0] + 0.1
    found = collection.query(query_embeddings=[query], n_results=20, include=["distances", "embeddings"])
    computed = dense.distances(collection, query, found["embeddings"][0])
    assert computed == pytest.approx(found["distances"][0], rel=1e-4, abs=1e-5)


def test_a_store_synced_before_the_index_is_searched_through_chroma_until_rebuild_lexicon(
    make_config: ConfigFactory,
    bucket: str,
    s3: Any,
    instance: dg.DagsterInstance,
    dagster_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, path = make_config(bucket)
    put(s3, bucket, FILES)
    assert not sync(config, "docs", instance, list(FILES)).failed
    collection = lifecycle.get_collection(embedded_client(path.parent / "chroma"), "docs-collection", None)  # type: ignore[arg-type]
    index_of = lexicon.of(collection)
    assert index_of is not None and index_of.state(collection) is None
    index_of.drop(collection.id)  # as an earlier release left the store: chunks, no index
    code = cli.main(["query", "docs", "QX-7741-B", "--mode", "lexical", "--config", str(path), "--json"])
    assert code == 0 and [hit["object_key"] for hit in json.loads(capsys.readouterr().out)["results"]] == ["notes/a.md"]

    # The audit says what is wrong, the repair builds it again, and the audit is clean.
    code = cli.main(["repair", "docs", "--config", str(path), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK, payload
    assert payload["before"]["lexicon"] == {"docs-collection": "no lexical index was built for it"}
    assert payload["after"]["clean"] and payload["after"]["lexicon"] == {}

    index_of.drop(collection.id)
    assert lexical.indexed(collection) is None
    code = cli.main(["rebuild-lexicon", "docs", "--config", str(path), "--json"])
    built = json.loads(capsys.readouterr().out)
    assert code == 0 and built["collections"] == {"docs-collection": 4}
    assert lexical.indexed(collection) is index_of and index_of.verify(collection) == []


def test_an_index_of_the_release_before_word_forms_is_not_read_until_rebuild_lexicon(
    make_config: ConfigFactory, bucket: str, s3: Any, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {**FILES, "notes/t.md": "# Timeouts\n\nThe request gives up after 300 milliseconds.\n"}
    config, path = make_config(bucket)
    put(s3, bucket, files)
    assert not sync(config, "docs", instance, list(files)).failed
    collection = lifecycle.get_collection(embedded_client(path.parent / "chroma"), "docs-collection", None)  # type: ignore[arg-type]
    index_of = lexicon.of(collection)
    assert isinstance(index_of, lexicon.Lexicon)
    # The store as the release before stems left it: every term whole, version 1.
    fts, chunks, _ = lexicon._tables(collection.id)
    texts = lexicon.read_texts(collection, collection.get(include=[])["ids"])
    with sqlite3.connect(index_of.path) as db:
        for chunk_id, rowid in db.execute(f"SELECT chunk_id, rowid FROM {chunks}").fetchall():
            whole = " ".join(lexicon.token(term) for term in terms.text_terms(texts[chunk_id]))
            db.execute(f"UPDATE {fts} SET tokens = ? WHERE rowid = ?", (whole, rowid))
        db.execute("UPDATE collections SET version = 1 WHERE collection_id = ?", (str(collection.id),))
    index_of.close()

    def found(word: str) -> list[str]:
        code = cli.main(["query", "docs", word, "--mode", "lexical", "--config", str(path), "--json"])
        assert code == 0
        return [hit["object_key"] for hit in json.loads(capsys.readouterr().out)["results"]]

    # Not read: Chroma's filter answers, whole words only, and the audit names why.
    assert index_of.state(collection) == f"its lexical index is of version 1, not {lexicon.VERSION}"
    assert lexical.indexed(collection) is None
    assert found("millisecond") == [] and found("milliseconds") == ["notes/t.md"]
    assert audit.lexicon_drift([collection]) == {"docs-collection": "its lexical index is of version 1, not 2"}
    # Built again from the collection alone: read, and a word is found in any form.
    assert cli.main(["rebuild-lexicon", "docs", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["collections"] == {"docs-collection": len(texts)}
    assert lexical.indexed(collection) is index_of and audit.lexicon_drift([collection]) == {}
    assert found("millisecond") == ["notes/t.md"] and found("timeout") == ["notes/t.md"]


def test_a_servers_index_in_postgres_answers_s3sync_query_counts_writers_and_is_built_again(
    s3: Any,
    bucket: str,
    tmp_path: Path,
    moto_endpoint: str,
    chroma_server: int,
    lexicon_database: str,
    embedder: CountingEmbedder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`chroma.lexicon_postgres` gives a `chroma run` server's collections their lexical index in PostgreSQL, which
    every host reaches: `s3sync query` answers from it, two writers of one chunk must both mirror their write
    before it answers again, and `s3sync rebuild-lexicon` builds it from the collection alone."""
    monkeypatch.setenv("S3SYNC_TEST_LEXICON", lexicon_database)
    source = {
        "name": "docs", "bucket_name": bucket, "region": "us-east-1", "collection_name": f"pg-{bucket}"[:60],
        "endpoint_url": moto_endpoint, "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"},
        "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
    }  # fmt: skip
    chroma = {"host": "127.0.0.1", "port": chroma_server, "lexicon_postgres": {"env": "S3SYNC_TEST_LEXICON"}}
    path = tmp_path / "s3sync.yaml"
    path.write_text(json.dumps({"chroma": chroma, "sources": [source]}), encoding="utf-8")
    config = load_config(path)
    spec = config.sources[0].spec(config.embedding.spec())
    collection = config.chroma.store().collection(spec.collection_name, config.embedding.spec())
    synced(s3, spec, collection, embedder, FILES)
    index_of = lexicon.of(collection)
    assert isinstance(index_of, PostgresLexicon) and lexical.indexed(collection) is index_of
    assert index_of.verify(collection) == []
    argv = ["query", "docs", "QX-7741-B", "--mode", "lexical", "--config", str(path), "--json"]
    assert cli.main(argv) == 0
    assert [hit["object_key"] for hit in json.loads(capsys.readouterr().out)["results"]] == ["notes/a.md"]

    # Two hosts write one chunk at once: the index answers again only once both have mirrored their write.
    chunk_id = collection.get(where={"object_key": "notes/d.txt"})["ids"][0]
    index_of.pending(collection, [chunk_id])
    index_of.pending(collection, [chunk_id])
    collection.update(ids=[chunk_id], documents=["The lighthouse keeper logs every storm."])
    index_of.refresh(collection, [chunk_id], {chunk_id: "a text this writer wrote, since replaced"})
    assert index_of.state(collection) == "writes to it are not yet in its lexical index"
    assert keys_found(collection, "lighthouse") == ["notes/d.txt"]  # Chroma's filter meanwhile
    index_of.refresh(collection, [chunk_id])
    assert index_of.state(collection) is None and index_of.verify(collection) == []  # what Chroma holds
    assert keys_found(collection, "lighthouse") == ["notes/d.txt"]

    index_of.drop(collection.id)
    assert lexical.indexed(collection) is None
    assert cli.main(["rebuild-lexicon", "docs", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["collections"] == {spec.collection_name: len(collection.get()["ids"])}
    assert lexical.indexed(collection) is index_of and index_of.verify(collection) == []


def test_document_frequencies_kept_between_queries_follow_every_write(
    chroma_client: Any, embedding_function: Any, tmp_path: Path
) -> None:
    collection = lifecycle.open_collection(chroma_client, "kept", embedding_function, metadata={"created_by": "t"})
    reader = lexicon.of(collection)
    assert isinstance(reader, lexicon.Lexicon)
    collection.add(ids=["a", "b"], documents=["the parcel left", "the van came"], metadatas=[{"k": 1}, {"k": 2}])
    assert reader.rebuild(collection) == 2
    assert reader.document_frequency(collection, PARCEL_THE) == ({"~parcel": 1, "~the": 2}, 2)
    # Another process's index of the same store (its own connection) writes: the reader's kept counts go.
    writer = lexicon.Lexicon(reader.path.parent)
    collection.add(ids=["c"], documents=["the parcel came back"], metadatas=[{"k": 3}])
    writer.refresh(collection, ["c"])
    assert reader.document_frequency(collection, PARCEL_THE) == ({"~parcel": 2, "~the": 3}, 3)
    # Its own writes too.
    collection.delete(ids=["a"])
    reader.refresh(collection, ["a"])
    assert reader.document_frequency(collection, PARCEL_THE) == ({"~parcel": 1, "~the": 2}, 2)
    writer.close()
