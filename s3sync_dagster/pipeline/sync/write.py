"""Writing one fetched object: chunk its text into records (page by page), make the collection hold exactly
those, and write many new objects in one embedding call and one upsert."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

from s3sync_dagster.pipeline.chroma import (
    ChunkRecord,
    ClaimLost,
    Embedder,
    WriteStats,
    check_id_free,
    check_records,
    own_chunks,
    replace_chunks,
    stored_chunks,
)
from s3sync_dagster.pipeline.chunking import CONTEXT_KEY, Chunk, ChunkResult, chunk_text, context_lines, embedding_input
from s3sync_dagster.pipeline.extraction import Extracted
from s3sync_dagster.pipeline.records import Metadata, chunk_id
from s3sync_dagster.pipeline.s3 import is_meta_key
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync.fetch import Fetched
from s3sync_dagster.pipeline.sync.reports import KeyReport, lap

PREVIEW_CHARS = 160


@dataclass
class Prepared:
    """An object chunked into the records it should have in Chroma: writing them comes next."""

    fetched: Fetched
    records: list[ChunkRecord]
    empty_message: str


def prepare(fetched: Fetched, extracted: Extracted, spec: SourceSpec) -> Prepared:
    """Chunk the extracted text into the records (ids, text, metadata) the object should have."""
    report, info = fetched.report, fetched.info
    object_key = report.document_key or report.object_key
    mark = time.perf_counter()
    pieces, chunked = _chunk_by_page(extracted, object_key, spec)
    # Whitespace alone is nothing anyone can find: an object of only blanks is empty, not one blank chunk.
    pieces = [(piece, page) for piece, page in pieces if piece.text.strip()]
    # Over the whole object, not page by page: a heading on one page is in effect on the next.
    texts = [piece.text for piece, _ in pieces]
    contexts = context_lines(object_key, chunked.language, texts, spec.tokens, chunked=True)
    lap(report, "chunk", mark)
    report.chunker, report.language, report.extractor = chunked.chunker, chunked.language, extracted.extractor
    report.chunk_count = len(pieces)
    report.preview = extracted.text[:PREVIEW_CHARS]
    report.warnings = list(extracted.warnings)
    if extracted.page_starts:
        report.pages = len(extracted.page_starts)

    count = len(pieces)
    match = re.search(spec.container_tag_regex, object_key) if spec.container_tag_regex else None
    container_tag = match.group("container_tag") if match and match.group("container_tag") else None
    records = []
    for position, ((piece, page), context_line) in enumerate(zip(pieces, contexts, strict=True)):
        chunk_metadata: Metadata = dict(fetched.metadata)
        chunk_metadata.update(
            {
                "object_key": object_key,
                "bucket_name": spec.bucket_name,
                **spec.owner.stamp(),
                "etag": info.etag,
                "last_modified": info.last_modified,
                "size_bytes": info.size,
                "chunk_index": position,
                "chunk_count": count,
                "start_line": piece.start_line,
                "end_line": piece.end_line,
                "chunker": chunked.chunker,
                "extractor": extracted.extractor,
                "document_id": fetched.document_id,
                "sync_signature": fetched.signature,
                CONTEXT_KEY: context_line,
            }
        )
        if chunked.language is not None:
            chunk_metadata["language"] = chunked.language
        if fetched.custom_id is not None:
            chunk_metadata["custom_id"] = fetched.custom_id
        if fetched.meta_key is not None:
            chunk_metadata["metadata_key"] = fetched.meta_key
        if container_tag is not None:
            chunk_metadata["container_tag"] = container_tag
        if info.version_id is not None:  # a versioned bucket's: the version the text was read from (GET by it)
            chunk_metadata["version_id"] = info.version_id
        if page is not None:
            chunk_metadata["page"] = page
            if extracted.page_label != "page":
                chunk_metadata[extracted.page_label] = page
        records.append(ChunkRecord(chunk_id(fetched.document_id, position), piece.text, chunk_metadata))
    if spec.cloud_limits:  # before anything of the object is written: a quota broken fails its key alone
        what = f"metadata file '{fetched.meta_key}'" if fetched.meta_key else f"object '{object_key}'"
        check_records(records, what)
    empty_message = (
        "; ".join(extracted.warnings) or f"object '{object_key}' has no text ({info.size} bytes): nothing indexed"
    )
    return Prepared(fetched, records, empty_message)


def _chunk_by_page(
    extracted: Extracted, object_key: str, spec: SourceSpec
) -> tuple[list[tuple[Chunk, int | None]], ChunkResult]:
    """Chunks with their page (slide, sheet): each page is chunked on its own, so no chunk spans two."""

    def chunk_part(text: str) -> ChunkResult:
        return chunk_text(
            text,
            object_key,
            mode=spec.chunking_mode,
            max_size_bytes=spec.max_size_bytes,
            max_lines=spec.max_lines,
            markdown=extracted.markdown,
            tokens=spec.tokens,
        )

    if not extracted.page_starts:
        whole = chunk_part(extracted.text)
        return [(piece, None) for piece in whole.chunks], whole
    lines = extracted.text.split("\n")
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])  # as conversion.join_pages counts
    bounds = [start for start, _ in extracted.page_starts[1:]] + [len(lines) + 1]
    pieces: list[tuple[Chunk, int | None]] = []
    result = ChunkResult([], "", None)
    previous_end = 1
    for (start, page), end in zip(extracted.page_starts, bounds, strict=True):
        # Text before the first page mark (none, as conversion.join_pages joins them) stays with that page.
        first = min(start, previous_end)
        result = chunk_part("".join(lines[first - 1 : end - 1]))
        offset = first - 1
        pieces.extend(
            (Chunk(piece.text, piece.start_line + offset, piece.end_line + offset), page) for piece in result.chunks
        )
        previous_end = end
    return pieces, result


def completed(prepared: Prepared, stats: WriteStats, write_seconds: float) -> KeyReport:
    """The report of a prepared object once its records are in Chroma (write_seconds includes the model)."""
    report = prepared.fetched.report
    report.timings["chroma_write"] = report.timings.get("chroma_write", 0.0) + write_seconds - stats.embed_seconds
    # The model's share of the write, apart: the two have different floors.
    report.timings["embed"] = stats.embed_seconds
    report.chunks_written = stats.written
    report.chunks_embedded = stats.embedded
    report.chunks_metadata_only = stats.metadata_only
    report.chunks_unchanged = stats.unchanged
    report.chunks_deleted = stats.deleted
    if not prepared.records:
        report.status = "empty"
        report.message = prepared.empty_message
    report.duration_s = time.perf_counter() - prepared.fetched.started
    return report


def write(prepared: Prepared, embed: Embedder) -> KeyReport:
    """Make the collection hold exactly the prepared records for this object, touching only what differs."""
    fetched = prepared.fetched
    mark = time.perf_counter()
    object_key = fetched.report.document_key or fetched.report.object_key
    if fetched.shared and prepared.records:
        # Again, just before the write: another source may have taken the id since the fetch (no lock spans
        # two sources' runs on a Chroma server). A source taking it from now on loses the claim (replace_chunks).
        what = f"metadata file '{fetched.meta_key}'" if fetched.meta_key else f"object '{object_key}'"
        check_id_free(fetched.collection, fetched.owner, fetched.document_id, what)
    full_stored = (
        own_chunks(stored_chunks(fetched.collection, object_key, fetched.owner, with_text=True), fetched.meta_key)
        if fetched.had_chunks
        else {}
    )
    try:
        stats = replace_chunks(
            fetched.collection,
            prepared.records,
            full_stored,
            embed,
            claim_for=fetched.owner if fetched.shared else None,
        )
    except ClaimLost as lost:
        what = f"metadata file '{fetched.meta_key}'" if fetched.meta_key else f"object '{object_key}'"
        raise ValueError(f"{what} ({fetched.owner.describe()}): {lost}") from None
    return completed(prepared, stats, time.perf_counter() - mark)


def finish(fetched: Fetched, extracted: Extracted, spec: SourceSpec, embed: Embedder) -> KeyReport:
    """Chunk the extracted text and make the collection hold exactly those chunks for the object."""
    return write(prepare(fetched, extracted, spec), embed)


# New objects (no chunks stored yet) are written together, up to this many chunks: one embedding call
# and one upsert for many small objects instead of one each (a Chroma upsert costs ~37 ms whatever its
# size up to a few hundred records: 1,000 per-object upserts were 20% of a bulk sync; benchmarks/).
BATCH_CHUNKS = 256
BATCH_OBJECTS = 64
# ... unless the sync has to wait on something else (a document's conversion, a key read ahead) while they have
# waited this long: then they are written, and their keys reported, instead of waiting on with it. A slow PDF
# does not hold back the keys prepared before it (nor a run's progress); a sync that never waits keeps full batches.
PATIENCE_S = 1.0


def batch_is_full(chunks: int, objects: int) -> bool:
    """When new objects waiting for a shared embedding call and upsert are written."""
    return chunks >= BATCH_CHUNKS or objects >= BATCH_OBJECTS


class NewObjects:
    """Prepared new objects waiting to be embedded and written in one go; reported only once written."""

    def __init__(
        self,
        embed: Embedder,
        done: Callable[[KeyReport], None],
        failed: Callable[[Fetched, Exception], None],
        written: Callable[[list[Prepared]], None] | None = None,
    ) -> None:
        """written: called with a batch once it is in Chroma, before its objects are reported (done)."""
        self._embed, self._done, self._failed, self._written = embed, done, failed, written
        self._waiting: list[Prepared] = []
        self._chunks = 0
        self._since = 0.0  # when the first of the waiting objects came

    def takes(self, prepared: Prepared) -> bool:
        fetched = prepared.fetched
        return (
            not fetched.had_chunks
            and not fetched.shared  # written alone, its id checked just before (write)
            and 0 < len(prepared.records) < BATCH_CHUNKS
            and all(p.fetched.document_id != fetched.document_id for p in self._waiting)
        )

    def holds(self, object_key: str) -> bool:
        """Whether syncing object_key now could read or replace chunks still waiting here."""
        if is_meta_key(object_key):
            return bool(self._waiting)
        return any(object_key in (p.fetched.report.object_key, p.fetched.report.document_key) for p in self._waiting)

    def deliver(self, prepared: Prepared) -> None:
        """The write stage of a prepared object: it waits here for the shared write if it can (takes), else it is
        embedded and written alone now and reported (done)."""
        if self.takes(prepared):
            self.add(prepared)
        else:
            self._done(write(prepared, self._embed))

    def wait_for(self, future: Future[Any]) -> None:
        """Before the caller waits on `future`: if it is not done and objects wait here, wait for it until they
        have waited PATIENCE_S, then write them and wait on; the keys already prepared are reported while a slow
        one is still read or converted. With nothing waiting here, returns at once (the caller waits)."""
        if not self._waiting or future.done():
            return
        wait([future], timeout=max(0.0, PATIENCE_S - (time.perf_counter() - self._since)))
        if not future.done():
            self.flush()
        wait([future])

    def add(self, prepared: Prepared) -> None:
        if not self._waiting:
            self._since = time.perf_counter()
        self._waiting.append(prepared)
        self._chunks += len(prepared.records)
        if batch_is_full(self._chunks, len(self._waiting)):
            self.flush()

    def flush(self) -> None:
        waiting, self._waiting, self._chunks = self._waiting, [], 0
        by_collection: dict[str, list[Prepared]] = {}
        for prepared in waiting:
            by_collection.setdefault(prepared.fetched.collection.name, []).append(prepared)
        for group in by_collection.values():
            self._write_group(group)

    def _write_group(self, group: list[Prepared]) -> None:
        records = [record for prepared in group for record in prepared.records]
        started = time.perf_counter()
        try:
            stats = replace_chunks(group[0].fetched.collection, records, {}, self._embed)
        except Exception:  # one object's records spoil the batch: write each alone, so only it fails
            for prepared in group:
                try:
                    self._done(write(prepared, self._embed))
                except Exception as error:
                    self._failed(prepared.fetched, error)
            return
        elapsed = time.perf_counter() - started
        if self._written is not None:
            self._written(group)
        seen: set[str] = set()
        for prepared in group:
            # The batch's time is shared out by chunk count; each input the model embedded counts where it first
            # appears (one whose vector was stored already, in this object or another, counts nowhere).
            share = len(prepared.records) / len(records)
            inputs = {embedding_input(record.text, record.metadata) for record in prepared.records}
            fresh = (inputs & stats.embedded_texts) - seen
            seen |= fresh
            own = WriteStats(
                written=len(prepared.records), embedded=len(fresh), embed_seconds=stats.embed_seconds * share
            )
            self._done(completed(prepared, own, elapsed * share))
