"""A key's sync stage by stage (pipeline/sync/stages.py joins them): read ahead, extract, chunk, embed and write, settle,
report, and the worklist that orders them; moto S3 over HTTP and embedded Chroma, no Dagster."""

import threading
from typing import Any

import pytest

from s3sync_dagster.pipeline.extraction import documents
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster.pipeline.s3.meta_links import InMemoryMetaLinks
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync.extracting import Conversions, chunked_in_process, extract_with
from s3sync_dagster.pipeline.sync.fetch import Fetched, fetch
from s3sync_dagster.pipeline.sync.reports import KeyReport
from s3sync_dagster.pipeline.sync.settle import Reporter, RunChecks, ToldBesideSwap
from s3sync_dagster.pipeline.sync.staging import Held, ReadAhead, Stager, stage, stages_ahead
from s3sync_dagster.pipeline.sync.targets import Collections
from s3sync_dagster.pipeline.sync.worklist import Worklist
from s3sync_dagster.pipeline.sync.write import NewObjects, Prepared, write
from s3sync_dagster_tests.conftest import CountingEmbedder, put


def lines(count: int, tag: str) -> str:
    return "".join(f"{tag} line {n}\n" for n in range(count))


@pytest.fixture
def spec(bucket: str) -> SourceSpec:
    return SourceSpec(name="docs", bucket_name=bucket, collection_name="stages", chunking_mode="lines", max_lines=10)


@pytest.fixture
def collection(chroma_client: Any, embedding_function: Any) -> Any:
    return chroma_client.get_or_create_collection("stages", embedding_function=embedding_function)


def fetched(s3: Any, spec: SourceSpec, collection: Any, object_key: str) -> Fetched:
    result = fetch(s3, spec, lambda _: collection, object_key)
    assert isinstance(result, Fetched), result
    return result


def stored_texts(collection: Any, object_key: str) -> list[str]:
    found = collection.get(where={"object_key": object_key}, include=["documents", "metadatas"])
    rows = sorted(zip(found["metadatas"], found["documents"], strict=True), key=lambda row: row[0]["chunk_index"])
    return [text for _, text in rows]


class Recorder:
    """The report stage's two entries (done, failed) as lists, for the stages that hand keys on to it."""

    def __init__(self) -> None:
        self.done: list[KeyReport] = []
        self.failed: list[tuple[str, str]] = []

    def on_done(self, report: KeyReport) -> None:
        self.done.append(report)

    def on_failed(self, object_key: str, error: Exception, started: float) -> None:
        self.failed.append((object_key, str(error)))


# --- the worklist ---------------------------------------------------------------------------------------------


def test_worklist_syncs_each_key_once_and_a_documents_metadata_files_after_it() -> None:
    links = InMemoryMetaLinks()
    links.link("docs/a.txt", "docs/a.meta.json")
    worklist = Worklist(["docs/a.txt", "docs/b.txt", "docs/a.txt"], links)
    assert list(worklist) == ["docs/a.txt", "docs/b.txt"] and worklist.naming == {"docs/a.txt": ["docs/a.meta.json"]}
    assert worklist.popleft() == "docs/a.txt"
    worklist.then_sync("docs/a.txt", ["docs/a.meta.json", "docs/other.meta.json"])
    worklist.then_sync("docs/b.txt", ["docs/other.meta.json", "docs/b.txt"])  # queued once, b is queued already
    assert list(worklist) == ["docs/b.txt", "docs/a.meta.json", "docs/other.meta.json"]
    assert worklist.named_document("docs/a.meta.json") == "docs/a.txt"
    assert worklist.named_document("docs/other.meta.json") == "docs/a.txt"  # the first document to name it
    assert worklist.named_document("docs/b.txt") == "docs/b.txt" and worklist.named_document("x.txt") is None


# --- read, ahead of the write -----------------------------------------------------------------------------------


def test_staging_reads_extracts_and_chunks_a_key_and_counts_its_bytes_held(
    s3: Any, spec: SourceSpec, collection: Any
) -> None:
    put(s3, spec.bucket_name, {"a.txt": lines(25, "a"), "b.txt": lines(3, "b")})
    held, reads = Held(1), ReadAhead()
    first = stage(s3, spec, lambda _: collection, "a.txt", False, held, reads)
    assert first.error is None and isinstance(first.result, Prepared)
    assert first.held == len(lines(25, "a"))
    assert "".join(record.text for record in first.result.records) == lines(25, "a")
    assert len(first.result.records) == 3 and first.result.fetched.data == b""  # the text is what the write needs
    # Its bytes are held until the writing thread takes it: the next key waits for room, then is read.
    second: list[Any] = []
    reader = threading.Thread(
        target=lambda: second.append(stage(s3, spec, lambda _: collection, "b.txt", False, held, reads))
    )
    reader.start()
    reader.join(timeout=0.5)
    assert reader.is_alive() and not second
    held.release(first.held)
    reader.join(timeout=60)
    assert len(second) == 1 and isinstance(second[0].result, Prepared)
    # Once the sync closes, a key waiting for room is not read: it fails as not read, naming the object.
    held.close()
    stopped = stage(s3, spec, lambda _: collection, "a.txt", False, held, reads)
    assert stopped.result is None and str(stopped.error) == "object 'a.txt': the sync stopped before it was read"


def test_staging_keeps_a_keys_failure_and_a_documents_bytes_for_the_pool(
    s3: Any, spec: SourceSpec, collection: Any
) -> None:
    put(s3, spec.bucket_name, {"latin1.txt": "na\xefve".encode("latin-1"), "report.pdf": b"%PDF-1.4 not really"})
    held, reads = Held(10**9), ReadAhead()
    bad = stage(s3, spec, lambda _: collection, "latin1.txt", False, held, reads)
    assert bad.result is None and "is not UTF-8 text" in str(bad.error)
    document = stage(s3, spec, lambda _: collection, "report.pdf", True, held, reads)
    assert isinstance(document.result, Fetched) and document.result.data == b"%PDF-1.4 not really"


def test_stager_hands_staged_keys_over_in_order_and_stages_only_plain_runs(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    contents = {f"k/{n}.txt": lines(2, f"k{n}") for n in range(5)}
    put(s3, spec.bucket_name, contents)
    links = InMemoryMetaLinks()
    worklist = Worklist(sorted(contents), links)
    assert stages_ahead(worklist, spec, 4, named=False)
    assert not stages_ahead(worklist, spec, 0, named=False) and not stages_ahead(worklist, spec, 4, named=True)
    assert not stages_ahead(Worklist(["k/0.txt", "k/0.meta.json"], links), spec, 4, named=False)
    assert not stages_ahead(Worklist(["k/0.txt"], links), spec, 4, named=False)
    recorder = Recorder()
    new_objects = NewObjects(embedder, recorder.on_done, lambda f, e: recorder.on_failed(f.report.object_key, e, 0))
    stager = Stager(s3, spec, lambda _: collection, False, 4, 10**9, None)
    taken = []
    try:
        while worklist:
            stager.top_up(worklist)
            object_key = worklist.popleft()
            assert stager.has(object_key)
            staged = stager.take(object_key, new_objects)
            assert isinstance(staged.result, Prepared) and staged.result.fetched.report.object_key == object_key
            taken.append(object_key)
    finally:
        stager.close()
    assert taken == sorted(contents)


# --- extract and chunk ------------------------------------------------------------------------------------------


def test_extract_and_chunk_in_process(s3: Any, spec: SourceSpec, collection: Any) -> None:
    put(s3, spec.bucket_name, {"notes.txt": lines(15, "n")})
    assert extract_with(None, spec)("notes.txt", lines(15, "n").encode()).text == lines(15, "n")
    prepared = chunked_in_process(fetched(s3, spec, collection, "notes.txt"), spec)
    assert prepared.fetched.data == b"" and "extract" in prepared.fetched.report.timings
    assert [record.text for record in prepared.records] == [
        lines(15, "n")[: len(lines(10, "n"))],
        lines(15, "n")[len(lines(10, "n")) :],
    ]
    document_id = keys.object_id("notes.txt")
    assert [record.chunk_id for record in prepared.records] == [f"{document_id}-0", f"{document_id}-1"]
    assert [(r.metadata["start_line"], r.metadata["chunk_count"]) for r in prepared.records] == [(1, 2), (11, 2)]


def test_a_conversion_that_fails_fails_its_key_alone(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    put(s3, spec.bucket_name, {"bad.pdf": b"not a PDF at all", "good.txt": lines(3, "g")})
    recorder = Recorder()
    new_objects = NewObjects(embedder, recorder.on_done, lambda f, e: recorder.on_failed(f.report.object_key, e, 0))
    assert not Conversions(None, spec, new_objects, recorder.on_failed).takes("bad.pdf")
    pool = documents.DocumentPool(1)  # real worker processes: the content check refuses the file before docling
    try:
        conversions = Conversions(pool, spec, new_objects, recorder.on_failed)
        assert conversions.takes("bad.pdf") and not conversions.takes("good.txt")
        document = fetched(s3, spec, collection, "bad.pdf")
        conversions.submit(document)  # a window of 2 per worker: it stays in flight
        assert document.data == b"" and not recorder.failed
        new_objects.deliver(chunked_in_process(fetched(s3, spec, collection, "good.txt"), spec))
        conversions.drain(lambda: False)
        new_objects.flush()
    finally:
        pool.close()
    assert recorder.failed == [("bad.pdf", "object 'bad.pdf' is not a .pdf file: its content is not in that format")]
    assert [report.object_key for report in recorder.done] == ["good.txt"]


# --- embed and write --------------------------------------------------------------------------------------------


def test_new_objects_wait_for_a_shared_write_and_a_changed_one_is_written_alone(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    put(s3, spec.bucket_name, {"old.txt": lines(3, "old"), "new1.txt": lines(3, "one"), "new2.txt": lines(3, "two")})
    write(chunked_in_process(fetched(s3, spec, collection, "old.txt"), spec), embedder)
    put(s3, spec.bucket_name, {"old.txt": lines(4, "changed")})
    recorder, batches = Recorder(), []
    new_objects = NewObjects(
        embedder, recorder.on_done, lambda f, e: recorder.on_failed(f.report.object_key, e, 0), batches.append
    )
    calls = embedder.calls
    for object_key in ("new1.txt", "new2.txt"):
        new_objects.deliver(chunked_in_process(fetched(s3, spec, collection, object_key), spec))
    assert not recorder.done and new_objects.holds("new1.txt") and stored_texts(collection, "new1.txt") == []
    new_objects.deliver(chunked_in_process(fetched(s3, spec, collection, "old.txt"), spec))  # had chunks: alone
    assert [r.object_key for r in recorder.done] == ["old.txt"] and stored_texts(collection, "old.txt") == [
        lines(4, "changed")
    ]
    new_objects.flush()
    assert [r.object_key for r in recorder.done] == ["old.txt", "new1.txt", "new2.txt"]
    assert embedder.calls == calls + 2  # one for the changed object, one for the two new ones together
    assert [[p.fetched.report.object_key for p in batch] for batch in batches] == [["new1.txt", "new2.txt"]]
    assert stored_texts(collection, "new2.txt") == [lines(3, "two")] and not new_objects.holds("new1.txt")


# --- settle -----------------------------------------------------------------------------------------------------


def test_run_checks_settle_a_batch_against_the_bucket_read_in_one_go(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    put(s3, spec.bucket_name, {"s/a.txt": lines(3, "a"), "s/b.txt": lines(3, "b")})
    checks = RunChecks(s3, spec, lambda _: collection, embedder, extract_with(None, spec), None, InMemoryMetaLinks())
    recorder = Recorder()
    new_objects = NewObjects(
        embedder, recorder.on_done, lambda f, e: recorder.on_failed(f.report.object_key, e, 0), checks.read_written
    )
    for object_key in ("s/a.txt", "s/b.txt"):
        new_objects.deliver(chunked_in_process(fetched(s3, spec, collection, object_key), spec))
    new_objects.flush()  # written, and both keys' stored chunks read for their checks
    put(s3, spec.bucket_name, {"s/b.txt": lines(2, "b rewritten")})  # another writer, after this sync read it
    settled = [checks.settled(report) for report in recorder.done]
    assert [report.status for report in settled] == ["indexed", "indexed"]
    assert "synced" not in settled[0].message and "settle" in settled[0].timings
    assert settled[1].message.endswith(
        "synced 1 more time(s): another writer changed the object or its chunks meanwhile"
    )
    assert stored_texts(collection, "s/b.txt") == [lines(2, "b rewritten")]
    # A report that wrote nothing is not checked: nothing another writer could have raced.
    unchanged = KeyReport(object_key="s/a.txt", status="unchanged", collection_name="stages")
    assert checks.settled(unchanged) is unchanged and "settle" not in unchanged.timings


# --- report -----------------------------------------------------------------------------------------------------


def test_reporter_keeps_tells_and_drops_a_link_no_longer_true(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    links = InMemoryMetaLinks()
    links.link("d/doc.txt", "d/doc.meta.json")
    links.link("d/kept.txt", "d/kept.meta.json")
    links.link("d/failing.txt", "d/failing.meta.json")
    worklist = Worklist(["d/doc.txt", "d/kept.txt", "d/failing.txt"], links)
    checks = RunChecks(s3, spec, lambda _: collection, embedder, extract_with(None, spec), None, links)
    told: list[str] = []
    reporter = Reporter(spec, checks, worklist, links, lambda report: told.append(report.object_key))
    # Statuses that write nothing, so the settle check has nothing to do: the report stage alone is at work.
    reporter.done(KeyReport(object_key="d/doc.meta.json", status="ignored", collection_name="stages"))
    reporter.done(
        KeyReport(
            object_key="d/kept.meta.json", status="unchanged", collection_name="stages", document_key="d/kept.txt"
        )
    )
    reporter.failed("d/x.txt", ValueError("no such rule"), 0.0)
    reporter.failed("d/failing.meta.json", ValueError("unreadable"), 0.0)  # a failure says nothing of its link
    told_in_order = ["d/doc.meta.json", "d/kept.meta.json", "d/x.txt", "d/failing.meta.json"]
    assert told == told_in_order == [r.object_key for r in reporter.reports]
    # doc.meta.json names d/doc.txt no more: its link goes; the others stay.
    assert links.by_document == {"d/kept.txt": ["d/kept.meta.json"], "d/failing.txt": ["d/failing.meta.json"]}
    failed = reporter.reports[2]
    assert (failed.status, failed.message, failed.collection_name) == (
        "failed",
        "object 'd/x.txt': no such rule",
        "stages",
    )


def test_beside_a_swap_a_failure_is_held_once_the_collection_was_swapped_and_named_on_the_second_pass(
    chroma_client: Any, embedding_function: Any
) -> None:
    """ToldBesideSwap (sync_keys_following_swaps' telling): before a swap every report is told; once the name holds
    another collection (a re-embedding's swap put its copy there) a failure is held, to be synced again there, and
    the rest are told; on that second pass a failure says which collections were swapped."""

    def open_collection(name: str) -> Any:
        return chroma_client.get_or_create_collection(name, embedding_function=embedding_function)

    collections = Collections(open_collection)
    collections("stages")
    told: list[KeyReport] = []
    first = ToldBesideSwap(collections, told.append)

    def report(key: str, status: Any) -> KeyReport:
        return KeyReport(object_key=key, status=status, collection_name="stages", message=f"{key} said so")

    first(report("s/early.txt", "failed"))  # no swap yet: a failure like any other, told
    chroma_client.delete_collection("stages")
    open_collection("stages")  # the name now holds another collection, as after a swap's renames
    assert collections.swapped() == ["stages"]
    first(report("s/late.txt", "failed"))
    first(report("s/written.txt", "indexed"))
    assert [r.object_key for r in told] == ["s/early.txt", "s/written.txt"]
    assert first.held == {"s/late.txt"}

    told.clear()
    again = ToldBesideSwap(collections, told.append, ["stages"])
    again(report("s/late.txt", "failed"))
    again(report("s/other.txt", "indexed"))
    assert [r.object_key for r in told] == ["s/late.txt", "s/other.txt"] and not again.held
    assert told[0].message == (
        "collection(s) 'stages' were swapped for their re-embedded copy while this key was written, and syncing it "
        "again there failed: s/late.txt said so"
    )
    assert told[1].message == "s/other.txt said so"

    held_without_caller = ToldBesideSwap(collections, None)
    held_without_caller(report("s/late.txt", "failed"))  # no on_report: nothing to tell, the hold is still kept
    assert held_without_caller.held == {"s/late.txt"}
