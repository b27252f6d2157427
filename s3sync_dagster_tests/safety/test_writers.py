"""Two writers of one key at once (a sensor run and a backfill, two hosts on one Chroma server): the newest
object version wins, with no duplicate or stale chunk, whatever the interleaving (issue 17, part 3).

Interleavings are driven by gates, not sleeps: a writer's S3 client (or its collection) is wrapped so
that it stops at one point (after its GET, after its HEAD, before its first upsert) until the test has
let another writer finish. Everything else is real: the moto server over HTTP, embedded Chroma and a
`chroma run` server, the engine's own `sync_keys`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from botocore.response import StreamingBody
from chromadb.errors import InternalError

from s3sync_dagster.commands.demo.local_s3 import LOOPBACK
from s3sync_dagster.pipeline.chroma import lifecycle
from s3sync_dagster.pipeline.extraction.documents import DocumentPool
from s3sync_dagster.pipeline.lexicon import terms
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync.reports import KeyReport
from s3sync_dagster.pipeline.sync.settle import MAX_RESYNCS
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster_tests.conftest import CountingEmbedder, Row, put

HANG = 120  # seconds: only against a hang; no assertion depends on time
KEY = "docs/notes.txt"
Rows = dict[str, tuple[str, dict[str, Any]]]


def version(name: str, lines: int) -> str:
    """An object version of `lines` lines: 10 lines a chunk (max_lines), every text its version's own."""
    return "".join(f"{name} line {n} of the shared notes\n" for n in range(lines))


class Gate:
    """Stops a writer once, at the point it guards, until the test opens it."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()
        self._used = False

    def hold(self) -> None:
        if self._used:
            return  # once only: the writer's later calls (its settle check) pass
        self._used = True
        self.reached.set()
        assert self.opened.wait(HANG), "the test never opened the gate"

    def wait_reached(self) -> None:
        assert self.reached.wait(HANG), "the writer never reached the gate"


class HeldS3:
    """A boto3 S3 client that stops at a gate after one GET (body read) or after one HEAD (even a 404)."""

    def __init__(
        self, client: Any, after_get: Gate | None = None, after_head: Gate | None = None, key: str = KEY
    ) -> None:
        self._client, self._after_get, self._after_head, self._key = client, after_get, after_head, key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def head_object(self, **kwargs: Any) -> Any:
        try:
            return self._client.head_object(**kwargs)
        finally:
            if self._after_head is not None and kwargs["Key"] == self._key:
                self._after_head.hold()

    def get_object(self, **kwargs: Any) -> Any:
        response = self._client.get_object(**kwargs)
        body = response["Body"].read()  # this version's bytes, whatever the bucket holds by the time it goes on
        response["Body"] = StreamingBody(io.BytesIO(body), len(body))
        if self._after_get is not None and kwargs["Key"] == self._key:
            self._after_get.hold()
        return response


class HeldCollection:
    """A Chroma collection that stops at a gate before its first upsert: after the writer read its snapshot."""

    def __init__(self, collection: Any, before_upsert: Gate) -> None:
        self._collection, self._gate = collection, before_upsert

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    def upsert(self, **kwargs: Any) -> Any:
        self._gate.hold()
        return self._collection.upsert(**kwargs)


class Writer(threading.Thread):
    """One writer (a run) syncing keys in its own thread."""

    def __init__(self, run: Callable[[], list[KeyReport]]) -> None:
        super().__init__(daemon=True)
        self._run = run
        self.reports: list[KeyReport] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.reports = self._run()
        except BaseException as error:  # handed to the test thread by result()
            self.error = error

    def result(self) -> list[KeyReport]:
        self.join(HANG)
        assert not self.is_alive(), "the writer hung"
        if self.error is not None:
            raise self.error
        return self.reports


@pytest.fixture(params=["embedded", "server"])
def store(request: pytest.FixtureRequest, chroma_client: Any) -> Any:
    """The Chroma store both writers share: embedded (one process), or a `chroma run` server."""
    if request.param == "embedded":
        return chroma_client
    import chromadb

    port = request.getfixturevalue("chroma_server")
    return chromadb.HttpClient(host=LOOPBACK, port=port)


@pytest.fixture
def spec(bucket: str) -> SourceSpec:
    return SourceSpec(name="docs", bucket_name=bucket, collection_name=f"{bucket}-w", chunking_mode="lines")


@pytest.fixture
def collection(store: Any, spec: SourceSpec, embedding_function: Any) -> Any:
    return lifecycle.open_collection(store, spec.collection_name, embedding_function, {"created_by": "test_writers"})


def rows_of(collection: Any, object_keys: list[str]) -> Rows:
    found = collection.get(where={"object_key": {"$in": object_keys}}, include=["documents", "metadatas"])
    return {i: (d, m) for i, d, m in zip(found["ids"], found["documents"], found["metadatas"], strict=True)}


def fresh_sync(
    s3: Any,
    spec: SourceSpec,
    store: Any,
    function: Any,
    embed: Any,
    object_keys: list[str],
    documents: list[str] | None = None,
) -> Rows:
    """What one sync of the bucket as it is now produces, into an empty collection: the expected chunks."""
    fresh_spec = dataclasses.replace(spec, collection_name=spec.collection_name + "-fresh")
    fresh = lifecycle.open_collection(store, fresh_spec.collection_name, function, {"created_by": "test_writers"})
    fresh_reports = sync_keys(s3, fresh_spec, lambda _: fresh, embed, object_keys)
    assert all(r.status != "failed" for r in fresh_reports), fresh_reports
    return rows_of(fresh, documents or object_keys)


def assert_newest_wins(
    s3: Any,
    spec: SourceSpec,
    store: Any,
    function: Any,
    embed: Any,
    collection: Any,
    row: Row,
    keys: list[str],
    documents: list[str] | None = None,
) -> None:
    """The collection holds exactly the chunks a fresh sync of the bucket's current objects writes.

    documents: the objects whose chunks the keys write, when they are .meta.json files naming them.
    """
    expected = fresh_sync(s3, spec, store, function, embed, keys, documents)
    found = rows_of(collection, documents or keys)
    row.observe(
        {(spec.collection_name, i): text for i, (text, _) in expected.items()},
        [(spec.collection_name, i, text) for i, (text, _) in found.items()],
    )
    assert sorted(found) == sorted(expected)  # no stale id left, none missing
    assert {i: text for i, (text, _) in found.items()} == {i: text for i, (text, _) in expected.items()}
    assert found == expected  # metadata too: the etag, chunk_count, last_modified of the newest version
    # The lexical side reads Chroma's full-text index of the same chunks: each chunk's words find exactly the
    # newest version's chunks there, no stale one (a stale chunk holds the same words).
    fresh = store.get_collection(spec.collection_name + "-fresh", embedding_function=function)
    for written in (collection, fresh):
        found_by_words: dict[str, str] = {}
        for text, _ in expected.values():
            found = written.get(
                where={"object_key": {"$in": documents or keys}},
                where_document={"$regex": terms.term_pattern(terms.query_terms(text)[0])},
                include=["documents"],
            )
            found_by_words.update(zip(found["ids"], found["documents"], strict=True))
        assert found_by_words == {i: text for i, (text, _) in expected.items()}
    row.passed = True


def sync_one(s3: Any, spec: SourceSpec, collection: Any, embed: Any, keys: list[str] | None = None) -> Writer:
    """A writer to start in its own thread."""
    return Writer(lambda: sync_keys(s3, spec, lambda _: collection, embed, keys or [KEY]))


def sync_now(s3: Any, spec: SourceSpec, collection: Any, embed: Any, keys: list[str] | None = None) -> list[str]:
    """Sync in this thread; the statuses."""
    return [report.status for report in sync_keys(s3, spec, lambda _: collection, embed, keys or [KEY])]


# (1), (2) Upload v1, upload v2: the writer that read v1 writes last.


@pytest.mark.reliability("writers")
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("before", "v1_lines", "v2_lines"),
    [
        pytest.param(0, 25, 25, id="same-size-new-object"),
        pytest.param(0, 35, 12, id="v1-bigger-new-object"),
        pytest.param(0, 12, 35, id="v2-bigger-new-object"),
        pytest.param(45, 35, 12, id="v1-bigger-over-v0"),
        pytest.param(45, 12, 35, id="v2-bigger-over-v0"),
    ],
)
def test_a_writer_that_read_an_older_version_does_not_win(
    s3: Any,
    spec: SourceSpec,
    store: Any,
    collection: Any,
    embedding_function: Any,
    embedder: CountingEmbedder,
    fault_row: Row,
    before: int,
    v1_lines: int,
    v2_lines: int,
) -> None:
    if before:
        put(s3, spec.bucket_name, {KEY: version("v0", before)})
        assert sync_now(s3, spec, collection, embedder) == ["indexed"]
    put(s3, spec.bucket_name, {KEY: version("v1", v1_lines)})
    gate = Gate()
    stale = sync_one(HeldS3(s3, after_get=gate), spec, collection, embedder)
    stale.start()
    gate.wait_reached()  # A holds v1's bytes
    put(s3, spec.bucket_name, {KEY: version("v2", v2_lines)})
    assert sync_now(s3, spec, collection, embedder) == ["indexed"]  # B syncs v2 completely
    gate.opened.set()
    (report,) = stale.result()
    assert_newest_wins(s3, spec, store, embedding_function, embedder, collection, fault_row, [KEY])
    newest_etag = s3.head_object(Bucket=spec.bucket_name, Key=KEY)["ETag"].strip('"')
    assert (report.status, report.etag) == ("indexed", newest_etag)
    assert "synced 1 more time(s)" in report.message


@pytest.mark.reliability("writers")
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("v1_lines", "v2_lines"), [(35, 12), (12, 35)], ids=["v1-bigger", "v2-bigger"])
def test_a_writer_deleting_from_an_old_snapshot_leaves_no_stale_chunk(
    s3: Any,
    spec: SourceSpec,
    store: Any,
    collection: Any,
    embedding_function: Any,
    embedder: CountingEmbedder,
    fault_row: Row,
    v1_lines: int,
    v2_lines: int,
) -> None:
    """A read the stored chunks (v0's) for its replace, then B wrote v2, then A upserts v1 and deletes
    only what its old snapshot listed: v2's extra ids would stay beside v1's."""
    put(s3, spec.bucket_name, {KEY: version("v0", 22)})
    assert sync_now(s3, spec, collection, embedder) == ["indexed"]
    put(s3, spec.bucket_name, {KEY: version("v1", v1_lines)})
    gate = Gate()
    stale = sync_one(s3, spec, HeldCollection(collection, before_upsert=gate), embedder)
    stale.start()
    gate.wait_reached()
    put(s3, spec.bucket_name, {KEY: version("v2", v2_lines)})
    assert sync_now(s3, spec, collection, embedder) == ["indexed"]
    gate.opened.set()
    reports = stale.result()
    assert_newest_wins(s3, spec, store, embedding_function, embedder, collection, fault_row, [KEY])
    assert [r.status for r in reports] == ["indexed"]


# (3) A deletion racing an upload.


@pytest.mark.reliability("writers")
@pytest.mark.timeout(300)
def test_an_object_deleted_after_a_writers_read_keeps_no_chunk(
    s3: Any,
    spec: SourceSpec,
    store: Any,
    collection: Any,
    embedding_function: Any,
    embedder: CountingEmbedder,
    fault_row: Row,
) -> None:
    put(s3, spec.bucket_name, {KEY: version("v1", 25)})
    gate = Gate()
    upload_sync = sync_one(HeldS3(s3, after_get=gate), spec, collection, embedder)
    upload_sync.start()
    gate.wait_reached()
    s3.delete_object(Bucket=spec.bucket_name, Key=KEY)
    assert sync_now(s3, spec, collection, embedder) == ["removed"]
    gate.opened.set()
    (report,) = upload_sync.result()
    assert_newest_wins(s3, spec, store, embedding_function, embedder, collection, fault_row, [KEY])
    assert rows_of(collection, [KEY]) == {}
    assert report.status == "removed", report


@pytest.mark.reliability("writers")
@pytest.mark.timeout(300)
def test_an_object_uploaded_again_after_a_delete_syncs_head_is_indexed(
    s3: Any,
    spec: SourceSpec,
    store: Any,
    collection: Any,
    embedding_function: Any,
    embedder: CountingEmbedder,
    fault_row: Row,
) -> None:
    put(s3, spec.bucket_name, {KEY: version("v1", 25)})
    assert sync_now(s3, spec, collection, embedder) == ["indexed"]
    s3.delete_object(Bucket=spec.bucket_name, Key=KEY)
    gate = Gate()
    delete_sync = sync_one(HeldS3(s3, after_head=gate), spec, collection, embedder)
    delete_sync.start()
    gate.wait_reached()  # its HEAD said 404: it is about to delete the object's chunks
    put(s3, spec.bucket_name, {KEY: version("v2", 31)})
    assert sync_now(s3, spec, collection, embedder) == ["indexed"]
    gate.opened.set()
    (report,) = delete_sync.result()
    assert_newest_wins(s3, spec, store, embedding_function, embedder, collection, fault_row, [KEY])
    assert len(rows_of(collection, [KEY])) == 4
    assert report.status == "indexed", report


def meta_file(team: str) -> str:
    return json.dumps({"version": "chroma-v1", "id": "notes-doc", "path": KEY, "metadata": {"team": team}})


@pytest.mark.reliability("writers")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("change", ["document", "metadata"])
def test_two_syncs_of_a_metadata_file_leave_the_newest_document_and_metadata(
    s3: Any,
    spec: SourceSpec,
    store: Any,
    collection: Any,
    embedding_function: Any,
    embedder: CountingEmbedder,
    fault_row: Row,
    change: str,
) -> None:
    """A .meta.json sync read the document (and the metadata file's first version); the document or the
    metadata file changes and another sync writes that; then the first writes what it read."""
    meta_key = "docs/notes.meta.json"
    put(s3, spec.bucket_name, {KEY: version("v1", 25), meta_key: meta_file("first")})
    gate = Gate()
    stale = sync_one(HeldS3(s3, after_get=gate), spec, collection, embedder, [meta_key])
    stale.start()
    gate.wait_reached()  # it holds the document's bytes
    put(s3, spec.bucket_name, {KEY: version("v2", 12)} if change == "document" else {meta_key: meta_file("second")})
    assert sync_now(s3, spec, collection, embedder, [meta_key]) == ["indexed"]
    gate.opened.set()
    (report,) = stale.result()
    assert_newest_wins(
        s3, spec, store, embedding_function, embedder, collection, fault_row, [meta_key], documents=[KEY]
    )
    assert report.status == "indexed" and "synced 1 more time(s)" in report.message


# (4) A sensor run's sync and a backfill's sync of the same key, at once, on a Chroma server.


@pytest.mark.reliability("writers")
@pytest.mark.timeout(300)
def test_a_sensor_sync_and_a_backfill_of_the_same_key_at_once(
    s3: Any,
    bucket: str,
    chroma_server: int,
    embedding_function: Any,
    embedder: CountingEmbedder,
    fault_row: Row,
) -> None:
    import chromadb

    store = chromadb.HttpClient(host=LOOPBACK, port=chroma_server)
    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name=f"{bucket}-w", chunking_mode="lines")
    collection = lifecycle.open_collection(store, spec.collection_name, embedding_function, {"created_by": "test"})
    backfill_keys = [f"docs/{n:02}.txt" for n in range(6)] + [KEY]
    put(s3, bucket, {key: version(f"first {key}", 15) for key in backfill_keys})
    gate = Gate()
    backfill = sync_one(HeldS3(s3, after_get=gate), spec, collection, embedder, backfill_keys)
    backfill.start()
    gate.wait_reached()  # the backfill read the key's first version; the others are in its batch or done
    put(s3, bucket, {KEY: version("uploaded during the backfill", 28)})
    assert sync_now(s3, spec, collection, embedder) == ["indexed"]  # the sensor's run for the upload event
    gate.opened.set()
    reports = {report.object_key: report for report in backfill.result()}
    assert sorted(reports) == sorted(backfill_keys)
    # First, so that a key that failed is named with its error, not found later as chunks missing.
    assert all(report.status == "indexed" for report in reports.values()), reports
    assert_newest_wins(s3, spec, store, embedding_function, embedder, collection, fault_row, backfill_keys)


class VectorsNotReadableYet:
    """A collection whose first reads asking for embeddings fail as a `chroma run` server's (1.5) do while another
    writer's first write to the new collection is under way, even when no row matches the read."""

    def __init__(self, collection: Any, failures: int) -> None:
        self._collection, self.failures = collection, failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    def get(self, **kwargs: Any) -> Any:
        if "embeddings" in (kwargs.get("include") or []) and self.failures:
            self.failures -= 1
            raise InternalError(
                "Error executing plan: Internal error: Error creating hnsw segment reader: Nothing found on disk"
            )
        return self._collection.get(**kwargs)


def test_a_store_that_cannot_read_vectors_yet_costs_embeddings_not_keys(
    s3: Any, spec: SourceSpec, collection: Any, embedding_function: Any, embedder: CountingEmbedder, store: Any
) -> None:
    """Found under load in (4): the sensor's first write to a new collection on a `chroma run` server under way, the
    backfill's read of stored vectors to reuse failed, and so did its first key, the write and then the key alone
    (its chunks never written). The read only saves the model's time: every key is indexed."""
    object_keys = [f"docs/{n:02}.txt" for n in range(6)]
    put(s3, spec.bucket_name, {key: version(f"first {key}", 15) for key in object_keys})
    # Two: the write of the batch, and then of its first key alone (as the window lasted under load).
    window = VectorsNotReadableYet(collection, failures=2)
    reports = sync_keys(s3, spec, lambda _: window, embedder, object_keys)
    assert window.failures < 2  # the read was tried, and failed
    assert {report.object_key: report.status for report in reports} == dict.fromkeys(object_keys, "indexed"), reports
    assert rows_of(collection, object_keys) == fresh_sync(s3, spec, store, embedding_function, embedder, object_keys)


# The bound: a key rewritten under every sync fails, naming the object and the rule.


class RewritingS3(HeldS3):
    """Another writer uploads a new version of the key right after each of this writer's GETs."""

    def __init__(self, client: Any, bucket_name: str) -> None:
        super().__init__(client)
        self._bucket_name, self.uploads = bucket_name, 0

    def get_object(self, **kwargs: Any) -> Any:
        response = super().get_object(**kwargs)
        self.uploads += 1
        put(self._client, self._bucket_name, {KEY: version(f"rewrite {self.uploads}", 12)})
        return response


@pytest.mark.timeout(300)
def test_a_key_rewritten_under_every_sync_fails_naming_it(
    s3: Any, spec: SourceSpec, collection: Any, embedding_function: Any, embedder: CountingEmbedder, store: Any
) -> None:
    put(s3, spec.bucket_name, {KEY: version("v1", 12)})
    rewriting = RewritingS3(s3, spec.bucket_name)
    (report,) = sync_keys(rewriting, spec, lambda _: collection, embedder, [KEY])
    assert report.status == "failed"
    assert rewriting.uploads == MAX_RESYNCS + 2  # a sync, its resyncs, and the last check, which read the next version
    assert report.message.startswith(f"object '{KEY}' or its chunks changed under {MAX_RESYNCS + 1} syncs in a row")
    assert "the next sync of the key tries again" in report.message
    # ... and the next sync does: the newest version's exact chunks.
    assert [r.status for r in sync_keys(s3, spec, lambda _: collection, embedder, [KEY])] == ["indexed"]
    assert rows_of(collection, [KEY]) == fresh_sync(s3, spec, store, embedding_function, embedder, [KEY])


def test_a_sync_that_wrote_nothing_checks_nothing_again(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    """`unchanged` costs no settle check: one HEAD, as before."""
    put(s3, spec.bucket_name, {KEY: version("v1", 12)})
    sync_keys(s3, spec, lambda _: collection, embedder, [KEY])
    heads = CountingS3(s3)
    assert [r.status for r in sync_keys(heads, spec, lambda _: collection, embedder, [KEY])] == ["unchanged"]
    assert heads.calls == ["head_object"]
    heads.calls.clear()
    put(s3, spec.bucket_name, {KEY: version("v2", 12)})
    assert [r.status for r in sync_keys(heads, spec, lambda _: collection, embedder, [KEY])] == ["indexed"]
    assert heads.calls == ["head_object", "get_object", "head_object"]  # the write, then its one check


class CountingS3:
    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def head_object(self, **kwargs: Any) -> Any:
        self.calls.append("head_object")
        return self._client.head_object(**kwargs)

    def get_object(self, **kwargs: Any) -> Any:
        self.calls.append("get_object")
        return self._client.get_object(**kwargs)


class CountingPool:
    """The run's document pool, noting each conversion it is handed."""

    def __init__(self, pool: DocumentPool) -> None:
        self._pool, self.workers = pool, pool.workers
        self.submitted: list[str] = []

    def submit(self, object_key: str, data: bytes, options: Any) -> Any:
        self.submitted.append(object_key)
        return self._pool.submit(object_key, data, options)


@pytest.mark.reliability("writers")
@pytest.mark.timeout(300)
def test_a_document_synced_again_is_converted_in_the_runs_pool(
    s3: Any, spec: SourceSpec, chroma_client: Any, embedding_function: Any, embedder: CountingEmbedder, fault_row: Row
) -> None:
    """The resync of a converted document goes through the pool too: its timeout, its isolation."""
    table = "docs/table.csv"
    collection = lifecycle.open_collection(chroma_client, spec.collection_name, embedding_function, {"created_by": "t"})
    put(s3, spec.bucket_name, {table: "name,colour\n" + "".join(f"first {n},red\n" for n in range(30))})
    gate = Gate()
    pool = DocumentPool(1)
    try:
        counting = CountingPool(pool)
        stale = Writer(
            lambda: sync_keys(
                HeldS3(s3, after_get=gate, key=table),
                spec,
                lambda _: collection,
                embedder,
                [table],
                pool=counting,  # type: ignore[arg-type]
            )
        )
        stale.start()
        gate.wait_reached()
        put(s3, spec.bucket_name, {table: "name,colour\n" + "".join(f"second {n},blue\n" for n in range(12))})
        assert sync_now(s3, spec, collection, embedder, [table]) == ["indexed"]
        gate.opened.set()
        (report,) = stale.result()
    finally:
        pool.close()
    assert_newest_wins(s3, spec, chroma_client, embedding_function, embedder, collection, fault_row, [table])
    assert report.status == "indexed" and counting.submitted == [table, table]
