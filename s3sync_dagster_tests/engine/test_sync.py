"""The engine without Dagster: moto server over HTTP -> chunks -> embedded Chroma; replace and skip semantics."""

import hashlib
import re
import time
from typing import Any

import pytest

from s3sync_dagster.pipeline.chroma import lifecycle, stored, vectors
from s3sync_dagster.pipeline.chroma import replace as index
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster.pipeline.s3.objects import ObjectMissing, head_object, list_objects, read_object
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync import stages as sync
from s3sync_dagster.pipeline.sync import write
from s3sync_dagster.pipeline.sync.stages import STAGE_AHEAD, sync_keys, sync_object
from s3sync_dagster_tests.conftest import CountingEmbedder, put


def numbered_lines(count: int, tag: str = "line") -> str:
    return "".join(f"{tag} number {n} of the shrinking file\n" for n in range(count))


@pytest.fixture
def spec(bucket: str) -> SourceSpec:
    return SourceSpec(
        name="docs", bucket_name=bucket, collection_name="engine-test", chunking_mode="lines", max_lines=10
    )


@pytest.fixture
def collection(chroma_client: Any, embedding_function: Any) -> Any:
    return chroma_client.get_or_create_collection("engine-test", embedding_function=embedding_function)


def all_rows(collection: Any, object_key: str) -> dict[str, tuple[str, dict]]:
    found = collection.get(where={"object_key": object_key}, include=["documents", "metadatas"])
    return {i: (d, m) for i, d, m in zip(found["ids"], found["documents"], found["metadatas"], strict=True)}


def test_shrinking_object_leaves_no_stale_chunk(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    put(s3, spec.bucket_name, {"notes/big.txt": numbered_lines(95)})
    first = sync_object(s3, spec, lambda _: collection, embedder, "notes/big.txt")
    assert first.status == "indexed" and first.chunk_count == 10
    put(s3, spec.bucket_name, {"notes/big.txt": numbered_lines(15)})
    second = sync_object(s3, spec, lambda _: collection, embedder, "notes/big.txt")
    rows = all_rows(collection, "notes/big.txt")
    document_id = keys.object_id("notes/big.txt")
    assert sorted(rows) == sorted([f"{document_id}-0", f"{document_id}-1"])
    assert second.chunks_deleted == 8
    assert "".join(rows[f"{document_id}-{n}"][0] for n in range(2)) == numbered_lines(15)
    assert all(meta["chunk_count"] == 2 and meta["etag"] == second.etag for _, meta in rows.values())
    assert collection.count() == 2


def test_unchanged_object_writes_nothing(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    put(s3, spec.bucket_name, {"a.md": "# Title\n\nSome text.\n"})
    sync_object(s3, spec, lambda _: collection, embedder, "a.md")
    before = all_rows(collection, "a.md")
    embedded_before = len(embedder.texts)
    again = sync_object(s3, spec, lambda _: collection, embedder, "a.md")
    assert again.status == "unchanged"
    assert again.chunks_written == again.chunks_deleted == again.chunks_metadata_only == 0
    assert "s3_read" not in again.timings  # the object was not even downloaded
    assert len(embedder.texts) == embedded_before
    assert all_rows(collection, "a.md") == before


def test_unchanged_chunk_text_is_not_embedded_again(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    text = numbered_lines(30)
    put(s3, spec.bucket_name, {"log.txt": text})
    sync_object(s3, spec, lambda _: collection, embedder, "log.txt")
    embedder.texts.clear()
    changed = text.replace("line number 25 ", "LINE NUMBER 25 (edited) ")
    put(s3, spec.bucket_name, {"log.txt": changed})
    report = sync_object(s3, spec, lambda _: collection, embedder, "log.txt")
    assert report.status == "indexed"
    assert report.chunks_written == 1 and report.chunks_metadata_only == 2
    assert len(embedder.texts) == 1 and "(edited)" in embedder.texts[0]
    rows = all_rows(collection, "log.txt")
    assert "".join(rows[f"{keys.object_id('log.txt')}-{n}"][0] for n in range(3)) == changed


def test_shifted_chunks_reuse_stored_vectors(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    text = numbered_lines(30)
    put(s3, spec.bucket_name, {"shift.txt": text})
    sync_object(s3, spec, lambda _: collection, embedder, "shift.txt")
    embedder.texts.clear()
    # Ten new lines in front: every chunk moves to a new id, but only the new text needs the model.
    put(s3, spec.bucket_name, {"shift.txt": numbered_lines(10, "fresh") + text})
    report = sync_object(s3, spec, lambda _: collection, embedder, "shift.txt")
    assert report.chunk_count == 4 and report.chunks_written == 4
    assert report.chunks_embedded == 1 and len(embedder.texts) == 1


LICENCE = "".join(f"Apache License clause {n}.\n" for n in range(10))


def test_a_vector_is_reused_only_for_the_same_context_and_text(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    # What is embedded for a chunk is its context line and its text (pipeline/chunking/context.py), and its hash is of both:
    # a copy under another key stands elsewhere (its line names its key), so its chunks are embedded for it.
    original = LICENCE + numbered_lines(10, "alpha")
    put(s3, spec.bucket_name, {"a.txt": original, "copy/a.txt": original})
    first = sync_object(s3, spec, lambda _: collection, embedder, "a.txt")
    assert first.chunks_embedded == 2 and embedder.texts == [
        f"a.txt\n\n{LICENCE}",
        f"a.txt\n\n{original[len(LICENCE) :]}",
    ]
    embedder.texts.clear()
    copied = sync_object(s3, spec, lambda _: collection, embedder, "copy/a.txt")
    assert copied.chunks_embedded == 2 and embedder.texts[0] == f"copy/a.txt\n\n{LICENCE}"

    def rows(key: str) -> dict[str, Any]:
        found = collection.get(where={"object_key": key}, include=["documents", "embeddings", "metadatas"])
        return {
            text: (vector, meta)
            for text, vector, meta in zip(found["documents"], found["embeddings"], found["metadatas"], strict=True)
        }

    a, copy = rows("a.txt"), rows("copy/a.txt")
    assert set(a) == set(copy) and not (a[LICENCE][0] == copy[LICENCE][0]).all()
    # The hash is of what was embedded and of the function the collection records.
    function = vectors.function_record(collection)
    assert '"name": "default"' in function
    assert a[LICENCE][1]["text_hash"] == vectors.text_hash(f"a.txt\n\n{LICENCE}", function)
    assert copy[LICENCE][1]["text_hash"] == vectors.text_hash(f"copy/a.txt\n\n{LICENCE}", function)
    assert vectors.text_hash(LICENCE, function) != vectors.text_hash(
        LICENCE, function.replace("{}", '{"precision": "int8"}')
    )
    # Another object's chunk of the very same context line and text (written as such) takes the stored vector.
    embedder.texts.clear()
    donor = collection.get(where={"object_key": "a.txt"}, include=["metadatas"])
    line = next(m["chunk_context"] for m in donor["metadatas"] if m["chunk_index"] == 0)
    twin = stored.ChunkRecord("twin-0", LICENCE, {"source": "docs", "bucket_name": spec.bucket_name, "object_key": "t",
                                                  "chunk_index": 0, "chunk_context": line})  # fmt: skip
    stats = index.replace_chunks(collection, [twin], {}, embedder)
    assert stats.written == 1 and stats.embedded == 0 and embedder.texts == []
    (vector,) = collection.get(ids=["twin-0"], include=["embeddings"])["embeddings"]
    assert (vector == a[LICENCE][0]).all()


def test_a_vector_is_never_taken_from_another_writers_chunk(collection: Any, embedder: CountingEmbedder) -> None:
    # Another source's chunk with the same text (and a planted hash): its vector is not this source's to trust.
    text = "the same sentence in two sources"
    planted = {
        "source": "other",
        "object_key": "x.txt",
        "text_hash": vectors.text_hash(text, vectors.function_record(collection)),
    }
    collection.add(ids=["other-0"], documents=[text], embeddings=[[0.0] * 383 + [1.0]], metadatas=[planted])
    record = stored.ChunkRecord("mine-0", text, {"source": "docs", "object_key": "y.txt", "chunk_index": 0})
    stats = index.replace_chunks(collection, [record], {}, embedder)
    assert stats.embedded == 1 and embedder.texts == [text]
    mine = collection.get(ids=["mine-0"], include=["embeddings"])["embeddings"][0]
    assert abs(mine[-1] - 1.0) > 0.1  # the model's vector, not the planted one


def test_chunk_metadata_and_custom_id(s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder) -> None:
    put(s3, spec.bucket_name, {"src/app.py": "def main():\n    return 1\n"})
    report = sync_object(
        s3, spec, lambda _: collection, embedder, "src/app.py",
        custom_id="app-main", user_metadata={"team": "core", "tags": ["a", "b"], "dropped": None},
    )  # fmt: skip
    rows = all_rows(collection, "src/app.py")
    assert list(rows) == ["app-main-0"]
    meta = rows["app-main-0"][1]
    for key in (
        "object_key",
        "bucket_name",
        "source",
        "etag",
        "last_modified",
        "chunk_index",
        "chunk_count",
        "start_line",
        "end_line",
    ):
        assert key in meta
    assert meta["custom_id"] == "app-main" and meta["team"] == "core" and meta["tags"] == ["a", "b"]
    assert "dropped" not in meta
    assert meta["start_line"] == 1 and meta["end_line"] == 2
    assert report.chunker == "lines"  # this spec chunks by lines
    # Switching back to the default id scheme replaces the custom-id chunks.
    sync_object(s3, spec, lambda _: collection, embedder, "src/app.py")
    assert list(all_rows(collection, "src/app.py")) == [f"{keys.object_id('src/app.py')}-0"]


def test_code_gets_language_with_tree_sitter(s3: Any, bucket: str, collection: Any, embedder: CountingEmbedder) -> None:
    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name="engine-test")
    put(s3, bucket, {"svc/main.go": "package main\n\nfunc main() {\n\tprintln(1)\n}\n"})
    report = sync_object(s3, spec, lambda _: collection, embedder, "svc/main.go")
    assert report.language == "go" and report.chunker.startswith("tree_sitter")
    assert all_rows(collection, "svc/main.go")[f"{keys.object_id('svc/main.go')}-0"][1]["language"] == "go"


@pytest.mark.parametrize(
    ("metadata", "rule"),
    [
        ({"etag": "x"}, "metadata key 'etag' is reserved"),
        ({"mixed": [1, "a"]}, "array of one scalar type"),
        ({"empty": []}, "empty array"),
        ({"nested": {"a": 1}}, "got dict"),
    ],
)
def test_bad_user_metadata_is_refused(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder, metadata: dict, rule: str
) -> None:
    put(s3, spec.bucket_name, {"m.txt": "x\n"})
    with pytest.raises(ValueError, match=rule) as caught:
        sync_object(s3, spec, lambda _: collection, embedder, "m.txt", user_metadata=metadata)
    assert "object 'm.txt'" in str(caught.value)


def test_bad_input_fails_only_its_own_key(s3: Any, bucket: str, collection: Any, embedder: CountingEmbedder) -> None:
    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name="engine-test", max_object_bytes=1000)
    put(
        s3,
        bucket,
        {
            "ok/first.txt": "fine\n",
            "ok/latin1.txt": "na\xefve".encode("latin-1"),
            "ok/huge.txt": "x" * 1001,
            "ok/empty.txt": b"",
            "ok/report.pdf": b"%PDF-1.4 not really",
            "ok/last.txt": "also fine\n",
        },
    )
    object_keys = [info.object_key for info in list_objects(s3, bucket, "ok/")]
    reports = {
        r.object_key: r for r in sync_keys(s3, spec, lambda _: collection, embedder, [*object_keys, "ok/missing.txt"])
    }
    assert reports["ok/first.txt"].status == reports["ok/last.txt"].status == "indexed"
    assert reports["ok/latin1.txt"].status == "failed"
    assert reports["ok/latin1.txt"].message == (
        "object 'ok/latin1.txt' is not UTF-8 text (byte 0xef at offset 2: invalid continuation byte)"
    )
    assert reports["ok/huge.txt"].message == (
        "object 'ok/huge.txt' is 1,001 bytes, over the limit of 1,000 bytes per object (max_object_bytes)"
    )
    assert "s3_read" not in reports["ok/huge.txt"].timings
    assert reports["ok/report.pdf"].status == "failed"
    assert reports["ok/report.pdf"].message.startswith("object 'ok/report.pdf' is not a readable PDF")
    assert reports["ok/empty.txt"].status == "empty" and reports["ok/empty.txt"].chunk_count == 0
    assert "nothing indexed" in reports["ok/empty.txt"].message
    assert reports["ok/missing.txt"].status == "removed"


def test_new_objects_are_embedded_and_written_together(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    # 70 new objects of 2 chunks: one embedding call per 64 objects (BATCH_OBJECTS), not one per object.
    contents = {f"many/{n:02d}.txt": numbered_lines(12, tag=f"object {n}") for n in range(70)}
    put(s3, spec.bucket_name, contents)
    reports = sync_keys(s3, spec, lambda _: collection, embedder, sorted(contents))
    assert embedder.calls == 2
    assert sorted(r.object_key for r in reports) == sorted(contents)
    for report in reports:
        assert (report.status, report.chunk_count, report.chunks_written, report.chunks_embedded) == (
            "indexed",
            2,
            2,
            2,
        )
        assert report.timings["embed"] > 0 and report.timings["chroma_write"] >= 0
        rows = all_rows(collection, report.object_key)
        document_id = keys.object_id(report.object_key)
        assert sorted(rows) == [f"{document_id}-0", f"{document_id}-1"]
        assert (
            "".join(text for text, _ in sorted(rows.values(), key=lambda r: r[1]["chunk_index"]))
            == contents[report.object_key]
        )
    # Nothing changed: the next pass reads metadata only and writes nothing.
    again = sync_keys(s3, spec, lambda _: collection, embedder, sorted(contents))
    assert {r.status for r in again} == {"unchanged"} and embedder.calls == 2


class WatchingEmbedder(CountingEmbedder):
    """The real model, made slower than S3, noting which objects S3 served while each call ran; in the first
    call it rewrites the first object read meanwhile (one another writer changes after this sync read it)."""

    def __init__(
        self,
        inner: Any,
        s3: Any,
        bucket_name: str,
        rewrite: bool = True,
        linger: float = 0.0,
        read_wait_s: float = 60,
        reads_by_first_end: int | None = None,
    ) -> None:
        super().__init__(inner)
        self.s3, self.bucket_name, self.rewrite, self.linger = s3, bucket_name, rewrite, linger
        self.read_wait_s = read_wait_s  # how long the first call waits for the staging thread's next read (ends at it)
        # Or, where given, for this many reads in all (one made before the call began counts), then linger: a read
        # that never comes is not waited for read_wait_s.
        self.reads_by_first_end = reads_by_first_end
        self.read: list[str] = []  # object keys in the order their GETs were made
        self.read_during: list[list[str]] = []
        self.rewritten: str | None = None
        self.read_by_end: list[list[str]] = []  # the objects read by the end of each call

    def noted(self, params: dict[str, Any], **_: Any) -> None:
        self.read.append(params["Key"])

    def __call__(self, texts: list[str]) -> Any:
        before = len(self.read)
        vectors = super().__call__(texts)
        # The first call is the one the tests look into; a later one waits a moment at most.
        if not self.read_during:
            wait_s = self.read_wait_s
        else:  # a later call waits a moment at most, none where only the first call's reads are looked into
            wait_s = 0.0 if self.reads_by_first_end is not None else min(3.0, self.read_wait_s)
        deadline = time.monotonic() + wait_s
        enough = before + 1 if self.read_during or self.reads_by_first_end is None else self.reads_by_first_end
        while len(self.read) < enough and time.monotonic() < deadline:
            time.sleep(0.05)  # the staging thread, if any, reads on meanwhile
        during = self.read[before:]
        if self.rewrite and during and not self.read_during:
            self.rewritten = during[0]
            self.s3.put_object(Bucket=self.bucket_name, Key=self.rewritten, Body=b"rewritten meanwhile\n")
        self.read_during.append(during)
        time.sleep(self.linger)  # time for the staging thread to read on, if it may
        self.read_by_end.append(list(self.read))
        return vectors


@pytest.mark.parametrize("ahead", [STAGE_AHEAD, 0])
def test_the_next_keys_are_read_and_chunked_while_the_model_embeds(
    s3: Any, spec: SourceSpec, collection: Any, embedding_function: Any, ahead: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 70 new objects: the first 64 are embedded in one call, and meanwhile the staging thread reads (and chunks)
    # the last 6. One of those is rewritten after it was read: the write is of the version read, and the settle
    # check syncs it again, so the collection ends with the new version's text. The batch waits for its 64 keys
    # however slowly a busy machine reads them (no early write after PATIENCE_S, which another test covers).
    monkeypatch.setattr(write, "PATIENCE_S", 600.0)
    contents = {f"many/{n:02d}.txt": numbered_lines(12, tag=f"object {n}") for n in range(70)}
    put(s3, spec.bucket_name, contents)
    # Staged, a call ends at the staging thread's next read, however busy the machine; unstaged, 3 s show that
    # nothing is read while the model works.
    embedder = WatchingEmbedder(embedding_function, s3, spec.bucket_name, read_wait_s=60 if ahead else 3)
    s3.meta.events.register("provide-client-params.s3.GetObject", embedder.noted)
    try:
        reports = sync_keys(s3, spec, lambda _: collection, embedder, sorted(contents), ahead=ahead)
    finally:
        s3.meta.events.unregister("provide-client-params.s3.GetObject", embedder.noted)
    assert [r.object_key for r in reports] == sorted(contents) and {r.status for r in reports} == {"indexed"}
    if not ahead:  # one key at a time: nothing is read while the model works
        assert embedder.read_during == [[], []] and embedder.rewritten is None
        return
    during = embedder.read_during[0]
    assert during and during == [f"many/{n:02d}.txt" for n in range(70 - len(during), 70)]
    rewritten = embedder.rewritten
    assert rewritten is not None
    assert [text for text, _ in all_rows(collection, rewritten).values()] == ["rewritten meanwhile\n"]
    assert "synced 1 more time(s)" in next(r.message for r in reports if r.object_key == rewritten)
    for report in reports:
        if report.object_key != rewritten:
            rows = sorted(all_rows(collection, report.object_key).values(), key=lambda row: row[1]["chunk_index"])
            assert "".join(text for text, _ in rows) == contents[report.object_key]


def test_keys_prepared_before_a_slow_one_are_reported_while_it_is_read(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    # Ten new objects, the sixth slow to read (its GET held 4 s, as a large object or a slow endpoint is): the five
    # before it are written and reported about a second into the wait (write.PATIENCE_S), not with the last
    # batch; a run's progress counts them then. Without a wait, the batch stays whole: one embedding call.
    contents = {f"slow/{n:02d}.txt": numbered_lines(3, tag=f"object {n}") for n in range(10)}
    put(s3, spec.bucket_name, contents)
    released: list[float] = []

    def hold(params: dict[str, Any], **_: Any) -> None:
        if params["Key"] == "slow/05.txt":
            time.sleep(4)
            released.append(time.monotonic())

    reported: dict[str, float] = {}
    s3.meta.events.register("provide-client-params.s3.GetObject", hold)
    try:
        reports = sync_keys(
            s3, spec, lambda _: collection, embedder, sorted(contents),
            on_report=lambda report: reported.setdefault(report.object_key, time.monotonic()),
        )  # fmt: skip
    finally:
        s3.meta.events.unregister("provide-client-params.s3.GetObject", hold)
    assert [r.object_key for r in reports] == sorted(contents) and {r.status for r in reports} == {"indexed"}
    early = [key for key in sorted(contents) if reported[key] < released[0] - 2]
    assert early == [f"slow/{n:02d}.txt" for n in range(5)], (reported, released)
    assert embedder.calls == 2  # the five before, then the five from the slow one on
    again = sync_keys(s3, spec, lambda _: collection, embedder, sorted(contents))
    assert {r.status for r in again} == {"unchanged"}


def stand_in_model(texts: list[str]) -> list[list[float]]:
    """384 numbers per text from its hash: what the staging test needs of a model (its calls, not its meaning)
    in milliseconds, where the real one takes a minute over 771 chunks."""
    return [[b / 255 for b in hashlib.sha384(text.encode()).digest()] * 8 for text in texts]


def test_staging_holds_at_most_one_large_object_besides_the_one_written(
    s3: Any, spec: SourceSpec, collection: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Objects of 257 chunks are written one by one (past write.BATCH_CHUNKS); each is over STAGE_BYTES here, as
    # objects near max_object_bytes are over the real limit: while the first is embedded, the staging thread
    # has read the second and waits, and reads the third only once the second is taken.
    monkeypatch.setattr(sync, "STAGE_BYTES", 1000)
    contents = {f"big/{n}.txt": numbered_lines(2570, tag=f"o{n}") for n in range(3)}
    put(s3, spec.bucket_name, contents)
    # The first call waits for the second object's read (however slow the machine), then a second for a third.
    embedder = WatchingEmbedder(stand_in_model, s3, spec.bucket_name, rewrite=False, linger=1.0, reads_by_first_end=2)
    s3.meta.events.register("provide-client-params.s3.GetObject", embedder.noted)
    try:
        reports = sync_keys(s3, spec, lambda _: collection, embedder, sorted(contents))
    finally:
        s3.meta.events.unregister("provide-client-params.s3.GetObject", embedder.noted)
    assert [(r.status, r.chunk_count) for r in reports] == [("indexed", 257)] * 3
    assert embedder.read_by_end[0] == ["big/0.txt", "big/1.txt"]
    assert embedder.read == sorted(contents)


class ReadCountingCollection:
    """The real collection, counting the reads (`get`) made of it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gets = 0

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self.gets += 1
        return self.inner.get(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize(("ahead", "reads"), [(STAGE_AHEAD, 6), (0, 74)])
def test_a_bulk_sync_reads_stored_chunks_for_many_keys_at_once(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder, ahead: int, reads: int
) -> None:
    # Embedded Chroma scans the collection for any metadata filter, so 70 new objects cost 6 reads staged (the
    # skip checks of 64 keys, then of the last 6; for each written batch, of 64 and then of 6, its texts' stored
    # vectors by text hash and its settle checks), not 2 per key. Unstaged (ahead=0), each skip check reads for
    # itself: 70, and the batches' reads still 4.
    contents = {f"many/{n:02d}.txt": numbered_lines(12, tag=f"object {n}") for n in range(70)}
    put(s3, spec.bucket_name, contents)
    counted = ReadCountingCollection(collection)
    reports = sync_keys(s3, spec, lambda _: counted, embedder, sorted(contents), ahead=ahead)
    assert {r.status for r in reports} == {"indexed"} and counted.gets == reads
    assert all("synced" not in r.message for r in reports)  # every settle check found exactly its chunks
    assert all(r.timings["chroma_read"] > 0 and r.timings["settle"] > 0 for r in reports)
    # Read for many keys or for one, the next pass finds every object current.
    counted.gets = 0
    again = sync_keys(s3, spec, lambda _: counted, embedder, sorted(contents), ahead=ahead)
    assert {r.status for r in again} == {"unchanged"} and counted.gets == (2 if ahead else 70)


class RefusingEmbedder(CountingEmbedder):
    """The real model, except that it fails on any batch holding a text with the given marker."""

    def __init__(self, inner: Any, marker: str) -> None:
        super().__init__(inner)
        self.marker = marker

    def __call__(self, texts: list[str]) -> Any:
        if any(self.marker in text for text in texts):
            raise RuntimeError("the model refused this text")
        return super().__call__(texts)


def test_object_that_spoils_a_shared_write_fails_alone(
    s3: Any, spec: SourceSpec, collection: Any, embedding_function: Any
) -> None:
    put(s3, spec.bucket_name, {"mix/a.txt": "alpha\n", "mix/b.txt": "POISON\n", "mix/c.txt": "gamma\n"})
    embedder = RefusingEmbedder(embedding_function, "POISON")
    reports = {
        r.object_key: r
        for r in sync_keys(s3, spec, lambda _: collection, embedder, ["mix/a.txt", "mix/b.txt", "mix/c.txt"])
    }
    assert reports["mix/a.txt"].status == reports["mix/c.txt"].status == "indexed"
    assert reports["mix/b.txt"].status == "failed"
    assert reports["mix/b.txt"].message == (
        "object 'mix/b.txt': the embedding function failed on 1 chunk(s): RuntimeError: the model refused this text"
    )
    assert all_rows(collection, "mix/b.txt") == {}
    assert [text for text, _ in all_rows(collection, "mix/c.txt").values()] == ["gamma\n"]


def test_deleted_object_loses_its_chunks(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    put(s3, spec.bucket_name, {"gone.txt": numbered_lines(25)})
    sync_object(s3, spec, lambda _: collection, embedder, "gone.txt")
    assert len(all_rows(collection, "gone.txt")) == 3
    s3.delete_object(Bucket=spec.bucket_name, Key="gone.txt")
    report = sync_object(s3, spec, lambda _: collection, embedder, "gone.txt")
    assert report.status == "removed" and report.chunks_deleted == 3
    assert all_rows(collection, "gone.txt") == {}


def test_object_deleted_between_head_and_get_is_removed(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    put(s3, spec.bucket_name, {"race.txt": numbered_lines(5)})
    sync_object(s3, spec, lambda _: collection, embedder, "race.txt")
    info = head_object(s3, spec.bucket_name, "race.txt")
    s3.delete_object(Bucket=spec.bucket_name, Key="race.txt")
    with pytest.raises(ObjectMissing, match=re.escape("'race.txt' was deleted while it was being read")):
        read_object(s3, spec.bucket_name, info, 1000)


def test_key_outside_prefix_is_refused(s3: Any, bucket: str, collection: Any, embedder: CountingEmbedder) -> None:
    spec = SourceSpec(name="tenant_a", bucket_name=bucket, collection_name="engine-test", path_prefix="tenant-a/")
    with pytest.raises(ValueError, match="does not start with source 'tenant_a' path_prefix 'tenant-a/'"):
        sync_object(s3, spec, lambda _: collection, embedder, "tenant-b/secret.txt")


def test_listing_applies_prefix_and_globs(s3: Any, bucket: str) -> None:
    put(s3, bucket, {k: "x" for k in ["p/a.md", "p/sub/b.md", "p/c.py", "p/skip/d.md", "q/e.md", "p/dir/"]})
    listed = [
        i.object_key for i in list_objects(s3, bucket, "p/", include=["*.md"], exclude=["p/skip/**"], page_size=2)
    ]
    assert listed == ["p/a.md", "p/sub/b.md"]


def test_writes_respect_the_client_batch_limit(
    s3: Any, bucket: str, collection: Any, embedder: CountingEmbedder
) -> None:
    # 6,000 one-line chunks: more than one client batch (5,461 here), yet only one distinct text to embed.
    spec = SourceSpec(
        name="docs", bucket_name=bucket, collection_name="engine-test", chunking_mode="lines", max_lines=1
    )
    put(s3, bucket, {"many.txt": "same line\n" * 6000})
    report = sync_object(s3, spec, lambda _: collection, embedder, "many.txt")
    assert lifecycle.max_batch_size(collection) == lifecycle.FALLBACK_MAX_BATCH  # opened by chromadb directly
    assert report.chunk_count == report.chunks_written == 6000 and report.chunks_embedded == 1
    assert collection.count() == 6000


def test_a_collection_opened_here_knows_its_clients_batch_limit(
    s3: Any, bucket: str, chroma_client: Any, embedding_function: Any, embedder: CountingEmbedder
) -> None:
    # Chroma's Collection does not say how large a batch its client takes: open_collection records it.
    collection = lifecycle.open_collection(chroma_client, "engine-batches", embedding_function, metadata={"by": "test"})
    assert lifecycle.max_batch_size(collection) == chroma_client.get_max_batch_size() < 6000
    spec = SourceSpec(
        name="docs", bucket_name=bucket, collection_name="engine-batches", chunking_mode="lines", max_lines=1
    )
    put(s3, bucket, {"many.txt": "same line\n" * 6000})
    report = sync_object(s3, spec, lambda _: collection, embedder, "many.txt")
    assert report.chunk_count == report.chunks_written == 6000 and report.chunks_embedded == 1
    assert collection.count() == 6000


def test_dropped_user_metadata_leaves_no_stale_key(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    put(s3, spec.bucket_name, {"meta.txt": "first version\n"})
    sync_object(s3, spec, lambda _: collection, embedder, "meta.txt", user_metadata={"team": "core", "year": 2024})
    # Same text, fewer keys: a metadata-only update must remove the key, not merge around it.
    report = sync_object(s3, spec, lambda _: collection, embedder, "meta.txt", user_metadata={"year": 2025})
    assert report.chunks_metadata_only == 1 and report.chunks_embedded == 0
    (meta,) = [m for _, m in all_rows(collection, "meta.txt").values()]
    assert meta["year"] == 2025 and "team" not in meta
    # New text and fewer keys: the rewrite (upsert) must remove the key too.
    put(s3, spec.bucket_name, {"meta.txt": "second version\n"})
    sync_object(s3, spec, lambda _: collection, embedder, "meta.txt")
    ((text, meta),) = all_rows(collection, "meta.txt").values()
    assert text == "second version\n" and "year" not in meta


def test_container_tag_from_the_key(s3: Any, bucket: str, collection: Any, embedder: CountingEmbedder) -> None:
    spec = SourceSpec(
        name="docs",
        bucket_name=bucket,
        collection_name="engine-test",
        container_tag_regex=r"^users/(?P<container_tag>[^/]+)/",
    )
    put(s3, bucket, {"users/ana/notes.txt": "ana's notes\n", "shared/readme.txt": "for everyone\n"})
    sync_keys(s3, spec, lambda _: collection, embedder, ["users/ana/notes.txt", "shared/readme.txt"])
    assert [m["container_tag"] for _, m in all_rows(collection, "users/ana/notes.txt").values()] == ["ana"]
    assert all("container_tag" not in m for _, m in all_rows(collection, "shared/readme.txt").values())


def test_every_word_of_a_long_document_reaches_the_embedding(
    s3: Any, bucket: str, collection: Any, embedder: CountingEmbedder
) -> None:
    # Paragraphs of ~90 words under one heading: 4096-byte chunks would hold ~800 tokens, and the model
    # reads 256. With the default budget (128, what the model was trained on) every chunk fits, and a
    # sentence from the end of a long section is found.
    from s3sync_dagster.pipeline.embedding.functions import EmbeddingSpec

    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name="engine-test")
    topics = ["glaciers", "bread", "compilers", "tides", "violins", "taxes", "bees", "volcanoes"]
    paragraphs = [
        " ".join(f"Paragraph {p} about {topic}: fact {n} of this paragraph is written here." for n in range(9))
        for p, topic in enumerate(topics * 3)
    ]
    needle = "The lighthouse keeper repaints the iron railing every spring with red lead paint."
    paragraphs[-1] += " " + needle
    text = "# Field notes\n\n" + "\n\n".join(paragraphs) + "\n"
    put(s3, bucket, {"notes/field.md": text})
    report = sync_object(s3, spec, lambda _: collection, embedder, "notes/field.md")
    rows = all_rows(collection, "notes/field.md")
    counter = EmbeddingSpec().token_budget().counter()
    assert counter is not None
    counts = counter.count([document for document, _meta in rows.values()])
    assert report.chunk_count == len(rows) > 16 and max(counts) <= 128
    assert "".join(rows[f"{keys.object_id('notes/field.md')}-{n}"][0] for n in range(len(rows))) == text
    found = collection.query(query_texts=["who repaints the railing of the lighthouse"], n_results=1)
    assert needle in found["documents"][0][0]
    # Re-syncing the same bytes is unchanged; the signature records the budget, so a new budget re-chunks.
    assert sync_object(s3, spec, lambda _: collection, embedder, "notes/field.md").status == "unchanged"
    smaller = SourceSpec(**{**spec.__dict__, "tokens": EmbeddingSpec().token_budget(64)})
    again = sync_object(s3, smaller, lambda _: collection, embedder, "notes/field.md")
    assert again.status == "indexed" and again.chunk_count > report.chunk_count
    assert max(counter.count([d for d, _m in all_rows(collection, "notes/field.md").values()])) <= 64
