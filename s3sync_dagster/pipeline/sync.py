"""One object, top to bottom: HEAD -> skip check -> bytes -> text -> chunks -> Chroma; and a loop over many keys."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from chromadb.api.models.Collection import Collection

from s3sync_dagster.pipeline import chunk, documents, events, extract, index, keys, objects
from s3sync_dagster.pipeline.embed import default_token_budget
from s3sync_dagster.pipeline.meta_links import InMemoryMetaLinks, MetaLinks
from s3sync_dagster.pipeline.objects import S3Client
from s3sync_dagster.pipeline.tokens import TokenBudget

# Bump when chunking or extraction changes what a given object produces: every object re-indexes once.
PIPELINE_VERSION = "3"  # 2: HTML and CSV are converted to markdown by docling; 3: chunks fit the model's window
PREVIEW_CHARS = 160

# waiting: a .meta.json names an object not in the bucket (yet); ignored: a document in metadata mode,
# indexed only through the .meta.json files naming it (reported in the run's log, not on a partition).
Status = Literal["indexed", "unchanged", "empty", "removed", "waiting", "ignored", "failed"]


@dataclass(frozen=True)
class SourceSpec:
    """What the engine needs to know of a source, as plain values."""

    name: str
    bucket_name: str
    collection_name: str
    path_prefix: str = ""
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    chunking_mode: Literal["tree_sitter", "lines"] = "tree_sitter"
    max_size_bytes: int = 4096
    max_lines: int = 10
    # No chunk costs the embedding model more tokens than this; the default is the bundled model's window.
    tokens: TokenBudget | None = field(default_factory=default_token_budget)
    max_object_bytes: int = objects.DEFAULT_MAX_OBJECT_BYTES
    document_options: documents.DocumentOptions = field(default_factory=documents.DocumentOptions)
    container_tag_regex: str | None = None
    # metadata: only .meta.json files index (each is its own document); a document's own sync only
    # brings the metadata files naming it up to date.
    auto_sync: Literal["none", "direct", "metadata"] = "none"
    # Tenancy: each collection another configured source writes (collection name, that source's name), never
    # this source's to write; and globs narrowing where its metadata files and invocations may send chunks.
    collection_owners: tuple[tuple[str, str], ...] = ()
    target_collections: tuple[str, ...] = ()

    @property
    def metadata_mode(self) -> bool:
        return self.auto_sync == "metadata"

    @property
    def other_sources(self) -> frozenset[str]:
        """The other sources of the config (each writes one collection)."""
        return frozenset(owner for _, owner in self.collection_owners) - {self.name}

    def check_target(self, collection_name: str, what: str) -> None:
        """A source writes to its own collection, and to others only if no other source owns them and
        they match its `target_collections` globs (when given); errors name the asker, the sources and the rule."""
        if collection_name == self.collection_name:
            return
        if collection_name.endswith(index.REBUILD_SUFFIX):  # the copy of a collection being rebuilt: its owner's
            raise ValueError(
                f"{what}: collection names ending in '{index.REBUILD_SUFFIX}' are reserved for the copy a rebuild "
                "makes of a collection; no source may write to one"
            )
        owner = dict(self.collection_owners).get(collection_name)
        if owner is not None and owner != self.name:
            raise ValueError(
                f"{what}: collection '{collection_name}' belongs to source '{owner}'; source '{self.name}' may "
                f"write only to its own collection '{self.collection_name}' and to collections no other source owns"
            )
        if self.target_collections and not any(
            fnmatch.fnmatchcase(collection_name, pattern) for pattern in self.target_collections
        ):
            raise ValueError(
                f"{what}: collection '{collection_name}' is not in source '{self.name}' target_collections "
                f"({', '.join(self.target_collections)}); besides its own collection, a source writes only there"
            )

    @property
    def chunking_signature(self) -> str:
        tokens = f":{self.tokens.signature}" if self.tokens is not None else ""
        return f"{self.chunking_mode}:{self.max_size_bytes}:{self.max_lines}{tokens}"


@dataclass
class KeyReport:
    """What happened to one object key, as reported on its materialisation."""

    object_key: str  # the partition's key: the object's, or its .meta.json file's
    status: Status
    collection_name: str
    document_key: str | None = None  # the object a .meta.json file pointed at
    size_bytes: int = 0
    etag: str = ""
    chunk_count: int = 0
    chunks_written: int = 0
    chunks_embedded: int = 0
    chunks_metadata_only: int = 0
    chunks_unchanged: int = 0
    chunks_deleted: int = 0
    chunker: str = ""
    language: str | None = None
    extractor: str = ""
    duration_s: float = 0.0
    preview: str = ""
    message: str = ""
    pages: int | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CollectionFor = Callable[[str], Collection]


class Collections:
    """The collections a sync writes to, opened once each; knows the others a removal must search.

    A `.meta.json` may route an object to any target collection, and once the object is deleted
    nothing says which: its chunks are then looked for in every collection this source wrote to.
    """

    def __init__(self, open_collection: CollectionFor, list_names: Callable[[], Iterable[str]] | None = None) -> None:
        self._open = open_collection
        self._list_names = list_names
        self._opened: dict[str, Collection] = {}

    def __call__(self, name: str) -> Collection:
        if name not in self._opened:
            self._opened[name] = self._open(name)
        return self._opened[name]

    def searchable(self, default: str) -> list[Collection]:
        found = [self(default)]
        for name in self._list_names() if self._list_names else []:
            if name != default:
                try:
                    found.append(self(name))
                except Exception:  # not ours (another embedding function): none of our chunks there
                    continue
        return found


def sync_signature(
    spec: SourceSpec,
    custom_id: str | None,
    user_metadata: Mapping[str, Any],
    meta_key: str | None = None,
    target_collection_name: str | None = None,
) -> str:
    """Everything besides the object's bytes that decides its chunks: a change re-indexes the object."""
    settings = {
        "pipeline": PIPELINE_VERSION,
        "chunking": spec.chunking_signature,
        "custom_id": custom_id,
        "metadata": user_metadata,
        "source": spec.name,
        "bucket": spec.bucket_name,
        "container_tag_regex": spec.container_tag_regex,
        "meta_key": meta_key,
        "target_collection": target_collection_name,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Invocation:
    """The Sync API's invocation parameters for one object key: they apply to the run that carries them.

    A later sync of the key without them (a poll, an event, a backfill) indexes it with the source's
    own settings, replacing the invocation's chunks in the source's collection.
    """

    custom_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    target_collection_name: str | None = None

    def validate(self, spec: SourceSpec, object_key: str) -> None:
        """The Sync API's checks, before anything runs; errors name the object and the rule."""
        check_key_in_source(spec, object_key)
        if events.is_meta_key(object_key) and self != Invocation():
            raise ValueError(
                f"object '{object_key}' is a .meta.json file: it carries its own custom id, metadata and target"
            )
        if self.custom_id is not None:
            try:
                keys.validate_custom_id(self.custom_id)
            except ValueError as error:
                raise ValueError(f"object '{object_key}': {error}") from None
        index.validate_user_metadata(self.metadata, f"object '{object_key}'")
        if self.target_collection_name is not None:
            keys.validate_collection_name(self.target_collection_name, f"object '{object_key}' target collection")
            spec.check_target(self.target_collection_name, f"object '{object_key}'")


def check_key_in_source(spec: SourceSpec, object_key: str) -> None:
    if not object_key.startswith(spec.path_prefix):
        raise ValueError(
            f"object key '{object_key}' does not start with source '{spec.name}' path_prefix '{spec.path_prefix}'"
        )


@dataclass
class _Fetched:
    """An object whose bytes were read because its chunks are not current: extraction comes next."""

    report: KeyReport
    info: objects.ObjectInfo
    data: bytes
    collection: Collection
    document_id: str
    signature: str
    metadata: index.Metadata
    custom_id: str | None
    had_chunks: bool
    started: float
    source: str  # the source syncing it: the only one whose chunks it may replace
    meta_key: str | None = None
    shared: bool = False  # written to a collection other than the source's own: its id is checked at the write


def _lap(report: KeyReport, step: str, since: float) -> float:
    now = time.perf_counter()
    report.timings[step] = report.timings.get(step, 0.0) + (now - since)
    return now


def fetch(
    s3: S3Client,
    spec: SourceSpec,
    collection_for: CollectionFor,
    object_key: str,
    *,
    custom_id: str | None = None,
    user_metadata: Mapping[str, Any] | None = None,
    target_collection_name: str | None = None,
    meta_key: str | None = None,
    links: MetaLinks | None = None,
    empty_etag: str | None = None,
) -> KeyReport | _Fetched:
    """Validate, HEAD, skip if current (a final report), else read the bytes for extraction.

    empty_etag: the ETag at which the object was just found empty (no chunks): at that ETag with no
    chunks stored it is current too (a settle check, which must not read it again).
    """
    if events.is_meta_key(object_key):
        return _fetch_by_meta_file(s3, spec, collection_for, object_key, links or InMemoryMetaLinks(), empty_etag)
    started = time.perf_counter()
    check_key_in_source(spec, object_key)
    if custom_id is not None:
        keys.validate_custom_id(custom_id)
    metadata = index.validate_user_metadata(user_metadata or {}, f"object '{object_key}'")
    collection_name = target_collection_name or spec.collection_name
    spec.check_target(collection_name, f"metadata file '{meta_key}'" if meta_key else f"object '{object_key}'")
    collection = collection_for(collection_name)
    report = KeyReport(object_key=object_key, status="indexed", collection_name=collection_name)

    mark = time.perf_counter()
    try:
        info = objects.head_object(s3, spec.bucket_name, object_key)
    except objects.ObjectMissing:
        if meta_key is not None:
            return _waiting(report, spec, collection_for, meta_key, started)
        return _removed(report, spec, collection_for, started)
    mark = _lap(report, "s3_head", mark)
    report.size_bytes, report.etag = info.size, info.etag
    objects.check_size(info, spec.max_object_bytes)

    document_id = custom_id or keys.object_id(object_key)
    signature = sync_signature(spec, custom_id, metadata, meta_key, target_collection_name)
    stored = _own_chunks(index.stored_chunks(collection, object_key, spec.name, with_text=False), meta_key)
    mark = _lap(report, "chroma_read", mark)
    if index.is_current(stored, document_id, info.etag, signature):
        report.status = "unchanged"
        report.chunk_count = report.chunks_unchanged = len(stored)
        report.chunker = str(next(iter(stored.values())).metadata.get("chunker", ""))
        report.message = "already indexed at this ETag with these settings: nothing read or written"
        report.duration_s = time.perf_counter() - started
        return report
    if not stored and empty_etag == info.etag:
        report.status = "unchanged"
        report.message = "empty at this ETag: nothing read or written"
        report.duration_s = time.perf_counter() - started
        return report
    shared = collection_name != spec.collection_name
    if shared:  # a collection other sources may write too: the id must be free (checked again at the write)
        check_id_free(
            collection, spec.name, document_id, f"metadata file '{meta_key}'" if meta_key else f"object '{object_key}'"
        )

    try:
        data = objects.read_object(s3, spec.bucket_name, info, spec.max_object_bytes)
    except objects.ObjectMissing:  # deleted between HEAD and GET
        if meta_key is not None:
            return _waiting(report, spec, collection_for, meta_key, started)
        return _removed(report, spec, collection_for, started)
    _lap(report, "s3_read", mark)
    return _Fetched(
        report, info, data, collection, document_id, signature, metadata, custom_id, bool(stored), started,
        spec.name, meta_key, shared,
    )  # fmt: skip


MAX_META_FILE_BYTES = 1024 * 1024


def _own_chunks(stored: dict[str, index.StoredChunk], meta_key: str | None) -> dict[str, index.StoredChunk]:
    """The object's chunks that this sync owns: each .meta.json naming the object is its own document,
    and the object's own (direct) chunks are those no metadata file wrote."""
    return {chunk_id: chunk for chunk_id, chunk in stored.items() if chunk.metadata.get("metadata_key") == meta_key}


def _fetch_by_meta_file(
    s3: S3Client,
    spec: SourceSpec,
    collection_for: CollectionFor,
    meta_key: str,
    links: MetaLinks,
    empty_etag: str | None = None,
) -> KeyReport | _Fetched:
    """A `.meta.json` partition: (re-)read the metadata file, then sync the document it names."""
    started = time.perf_counter()
    check_key_in_source(spec, meta_key)
    try:
        info = objects.head_object(s3, spec.bucket_name, meta_key)
        if info.size > MAX_META_FILE_BYTES:
            raise ValueError(
                f"metadata file '{meta_key}' is {info.size:,} bytes, over the limit of {MAX_META_FILE_BYTES:,} "
                "bytes for a .meta.json file"
            )
        data = objects.read_object(s3, spec.bucket_name, info, MAX_META_FILE_BYTES)
    except objects.ObjectMissing:
        # The metadata file is gone: so are the chunks it asked for, wherever it had sent them.
        report = KeyReport(object_key=meta_key, status="removed", collection_name=spec.collection_name)
        report.chunks_deleted = sum(
            index.delete_where(c, _asked_for_by(spec, meta_key))
            for c in _searchable(collection_for, spec.collection_name)
        )
        report.message = f"metadata file '{meta_key}' no longer exists; removed {report.chunks_deleted} chunk(s)"
        report.duration_s = time.perf_counter() - started
        return report
    meta = events.parse_meta_file(meta_key, data, spec.path_prefix)
    # A metadata file that now names another path or collection: what it asked for before goes.
    target = meta.target_collection_name or spec.collection_name
    # Every check comes before anything is deleted: a refused metadata file changes nothing.
    spec.check_target(target, f"metadata file '{meta_key}'")
    taken_over = _claim_document_id(s3, spec, collection_for(target), meta)
    for collection in _searchable(collection_for, target):
        conditions: list[dict[str, Any]] = [{"metadata_key": meta_key}, {"source": spec.name}]
        if collection.name == target:
            conditions.append({"object_key": {"$ne": meta.path}})
        index.delete_where(collection, {"$and": conditions})
    index.delete_ids(collection_for(target), taken_over)
    links.link(meta.path, meta_key)
    fetched = fetch(
        s3, spec, collection_for, meta.path,
        custom_id=meta.document_id, user_metadata=meta.metadata,
        target_collection_name=meta.target_collection_name, meta_key=meta_key, empty_etag=empty_etag,
    )  # fmt: skip
    report = fetched if isinstance(fetched, KeyReport) else fetched.report
    report.document_key, report.object_key = meta.path, meta_key
    return fetched


def _asked_for_by(spec: SourceSpec, meta_key: str) -> dict[str, Any]:
    return {"$and": [{"metadata_key": meta_key}, {"source": spec.name}]}


def check_id_free(collection: Collection, source: str, document_id: str, what: str) -> None:
    """A source never takes the id of another source's document: its chunks would replace theirs."""
    where: Any = {"$and": [{"document_id": document_id}, {"source": {"$ne": source}}]}
    found = collection.get(where=where, include=["metadatas"], limit=1)
    if found["ids"]:
        other = str(((found.get("metadatas") or [{}])[0] or {}).get("source", "?"))
        raise ValueError(
            f"{what}: id '{document_id}' in collection '{collection.name}' is the id of a document of source "
            f"'{other}'; source '{source}' replaces or deletes only its own chunks, so it may not take that id"
        )


def _claim_document_id(s3: S3Client, spec: SourceSpec, collection: Collection, meta: events.MetaFile) -> list[str]:
    """One id, one document: a metadata file may not take over the chunks of another document that still exists.
    Raises naming the other document; else returns the ids of the chunks it takes over (the caller deletes them).

    Whose chunks hold the id decides, wherever that document lives: another source's are never taken (in
    this source's own collection, where no other source may write, they are an intrusion and replaced);
    this source's are taken only when the document that wrote them is gone (its metadata file, or, for
    chunks an object's own sync wrote, the object) or when an invocation wrote them.
    """
    what = f"metadata file '{meta.meta_key}'"
    found = collection.get(where={"document_id": meta.document_id}, include=["metadatas"])
    stale: list[str] = []
    for chunk_id, metadata in zip(found["ids"], found.get("metadatas") or [], strict=True):
        metadata = metadata or {}
        other_meta = str(metadata.get("metadata_key") or "")
        if metadata.get("source") != spec.name:
            if collection.name != spec.collection_name:
                check_id_free(collection, spec.name, meta.document_id, what)
            stale.append(chunk_id)
            continue
        if other_meta == meta.meta_key:
            continue
        # An object's own chunks, in metadata mode, are leftovers: that mode indexes documents only through
        # their metadata files (the object's next sync removes them anyway).
        direct = not metadata.get("custom_id") and not spec.metadata_mode
        claimer = other_meta or (str(metadata.get("object_key") or "") if direct else None)
        if claimer:
            try:
                objects.head_object(s3, str(metadata.get("bucket_name") or spec.bucket_name), claimer)
            except objects.ObjectMissing:
                stale.append(chunk_id)
                continue
            kind = f"metadata file '{claimer}'" if other_meta else f"object '{claimer}'"
            raise ValueError(
                f"{what}: id '{meta.document_id}' is already the id of the document of {kind} in collection "
                f"'{collection.name}'; each metadata file is its own document and needs its own id"
            )
        stale.append(chunk_id)
    return stale


def extract_in_process(object_key: str, data: bytes, spec: SourceSpec) -> extract.Extracted:
    if documents.is_converted(object_key):
        return documents.convert_document(object_key, data, spec.document_options).to_extracted()
    return extract.extract_text(object_key, data)


@dataclass
class _Prepared:
    """An object chunked into the records it should have in Chroma: writing them comes next."""

    fetched: _Fetched
    records: list[index.ChunkRecord]
    empty_message: str


def prepare(fetched: _Fetched, extracted: extract.Extracted, spec: SourceSpec) -> _Prepared:
    """Chunk the extracted text into the records (ids, text, metadata) the object should have."""
    report, info = fetched.report, fetched.info
    object_key = report.document_key or report.object_key
    mark = time.perf_counter()
    pieces, chunked = _chunk_by_page(extracted, object_key, spec)
    # Whitespace alone is nothing anyone can find: an object of only blanks is empty, not one blank chunk.
    pieces = [(piece, page) for piece, page in pieces if piece.text.strip()]
    _lap(report, "chunk", mark)
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
    for position, (piece, page) in enumerate(pieces):
        chunk_metadata: index.Metadata = dict(fetched.metadata)
        chunk_metadata.update(
            {
                "object_key": object_key,
                "bucket_name": spec.bucket_name,
                "source": spec.name,
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
        if page is not None:
            chunk_metadata["page"] = page
            if extracted.page_label != "page":
                chunk_metadata[extracted.page_label] = page
        records.append(index.ChunkRecord(keys.chunk_id(fetched.document_id, position), piece.text, chunk_metadata))
    empty_message = (
        "; ".join(extracted.warnings) or f"object '{object_key}' has no text ({info.size} bytes): nothing indexed"
    )
    return _Prepared(fetched, records, empty_message)


def _completed(prepared: _Prepared, stats: index.WriteStats, write_seconds: float) -> KeyReport:
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


def write(prepared: _Prepared, embed: index.Embedder) -> KeyReport:
    """Make the collection hold exactly the prepared records for this object, touching only what differs."""
    fetched = prepared.fetched
    mark = time.perf_counter()
    object_key = fetched.report.document_key or fetched.report.object_key
    if fetched.shared and prepared.records:
        # Again, just before the write: another source may have taken the id since the fetch (no lock spans
        # two sources' runs on a Chroma server). What remains is the window of one upsert.
        what = f"metadata file '{fetched.meta_key}'" if fetched.meta_key else f"object '{object_key}'"
        check_id_free(fetched.collection, fetched.source, fetched.document_id, what)
    full_stored = (
        _own_chunks(
            index.stored_chunks(fetched.collection, object_key, fetched.source, with_text=True), fetched.meta_key
        )
        if fetched.had_chunks
        else {}
    )
    stats = index.replace_chunks(fetched.collection, prepared.records, full_stored, embed)
    return _completed(prepared, stats, time.perf_counter() - mark)


def finish(fetched: _Fetched, extracted: extract.Extracted, spec: SourceSpec, embed: index.Embedder) -> KeyReport:
    """Chunk the extracted text and make the collection hold exactly those chunks for the object."""
    return write(prepare(fetched, extracted, spec), embed)


# Two writers of one key (a sensor run and a backfill, two hosts on one Chroma server) take no lock
# together, and can interleave: one reads version 1, the other writes version 2, then the first writes
# version 1's chunks over them and deletes from a snapshot taken before. So a sync that wrote or removed
# an object's chunks ends with the skip check (HEAD again, read the stored chunks' ids and ETags) and
# syncs again while they are not exactly the current version's. A writer's writes all come before its
# own last check, so the check that passes last sees every write: it leaves the newest version's exact
# chunk set, whatever the order of the others. Bounded, so a key rewritten without pause fails, named.
MAX_RESYNCS = 3
_WRITES: frozenset[Status] = frozenset({"indexed", "empty", "removed", "waiting"})

# The skip check of an object key, as the sync that produced a report ran it (same invocation).
Check = Callable[[KeyReport], "KeyReport | _Fetched"]
# Object key, bytes -> text: in this process, or in the run's document pool (its timeout, its isolation).
Extract = Callable[[str, bytes], extract.Extracted]


def settle(
    report: KeyReport, check: Check, extract_text: Extract, spec: SourceSpec, embed: index.Embedder
) -> KeyReport:
    """Check a sync's outcome against the bucket's current version; sync again until they agree."""
    if report.status not in _WRITES:
        return report  # nothing written: nothing another writer could have raced
    first, started = report, time.perf_counter()
    resyncs = 0
    try:
        while True:
            checked = check(report)
            if isinstance(checked, KeyReport) and (
                checked.status == "unchanged" or (checked.status == report.status and not checked.chunks_deleted)
            ):
                break  # the chunks are the current version's (or the object is still gone, and so are they)
            if resyncs == MAX_RESYNCS:
                seen = checked.etag if isinstance(checked, KeyReport) else checked.info.etag
                raise ValueError(
                    f"object '{report.object_key}' or its chunks changed under {MAX_RESYNCS + 1} syncs in a row "
                    f"(last stored at ETag '{report.etag or 'none'}', now '{seen or 'none'}'): another writer keeps "
                    "replacing it; a sync ends only when the stored chunks are the current version's, and the "
                    "next sync of the key tries again"
                )
            resyncs += 1
            if isinstance(checked, KeyReport):
                report = checked  # removed (or waiting) meanwhile: that removal is checked in turn
            else:
                mark = time.perf_counter()
                extracted = extract_text(checked.report.document_key or checked.report.object_key, checked.data)
                _lap(checked.report, "extract", mark)
                report = finish(checked, extracted, spec, embed)
    except Exception as error:
        return KeyReport(
            object_key=first.object_key,
            status="failed",
            collection_name=first.collection_name,
            document_key=first.document_key,
            message=failure_message(first.object_key, error),
            duration_s=first.duration_s + time.perf_counter() - started,
        )
    # The check's own cost (a HEAD and a read of the stored chunks' metadata), resyncs included.
    report.timings["settle"] = time.perf_counter() - started
    report.duration_s = first.duration_s + report.timings["settle"]
    if resyncs:
        report.message = (report.message + "; " if report.message else "") + (
            f"synced {resyncs} more time(s): another writer changed the object or its chunks meanwhile"
        )
    return report


# New objects (no chunks stored yet) are written together, up to this many chunks: one embedding call
# and one upsert for many small objects instead of one each (a Chroma upsert costs ~37 ms whatever its
# size up to a few hundred records: 1,000 per-object upserts were 20% of a bulk sync; benchmarks/).
BATCH_CHUNKS = 256
BATCH_OBJECTS = 64


def batch_is_full(chunks: int, objects: int) -> bool:
    """When new objects waiting for a shared embedding call and upsert are written."""
    return chunks >= BATCH_CHUNKS or objects >= BATCH_OBJECTS


class _NewObjects:
    """Prepared new objects waiting to be embedded and written in one go; reported only once written."""

    def __init__(
        self, embed: index.Embedder, done: Callable[[KeyReport], None], failed: Callable[[_Fetched, Exception], None]
    ) -> None:
        self._embed, self._done, self._failed = embed, done, failed
        self._waiting: list[_Prepared] = []
        self._chunks = 0

    def takes(self, prepared: _Prepared) -> bool:
        fetched = prepared.fetched
        return (
            not fetched.had_chunks
            and not fetched.shared  # written alone, its id checked just before (write)
            and 0 < len(prepared.records) < BATCH_CHUNKS
            and all(p.fetched.document_id != fetched.document_id for p in self._waiting)
        )

    def holds(self, object_key: str) -> bool:
        """Whether syncing object_key now could read or replace chunks still waiting here."""
        if events.is_meta_key(object_key):
            return bool(self._waiting)
        return any(object_key in (p.fetched.report.object_key, p.fetched.report.document_key) for p in self._waiting)

    def add(self, prepared: _Prepared) -> None:
        self._waiting.append(prepared)
        self._chunks += len(prepared.records)
        if batch_is_full(self._chunks, len(self._waiting)):
            self.flush()

    def flush(self) -> None:
        waiting, self._waiting, self._chunks = self._waiting, [], 0
        by_collection: dict[str, list[_Prepared]] = {}
        for prepared in waiting:
            by_collection.setdefault(prepared.fetched.collection.name, []).append(prepared)
        for group in by_collection.values():
            self._write_group(group)

    def _write_group(self, group: list[_Prepared]) -> None:
        records = [record for prepared in group for record in prepared.records]
        started = time.perf_counter()
        try:
            stats = index.replace_chunks(group[0].fetched.collection, records, {}, self._embed)
        except Exception:  # one object's records spoil the batch: write each alone, so only it fails
            for prepared in group:
                try:
                    self._done(write(prepared, self._embed))
                except Exception as error:
                    self._failed(prepared.fetched, error)
            return
        elapsed = time.perf_counter() - started
        seen: set[str] = set()
        for prepared in group:
            # The batch's time is shared out by chunk count; each distinct text counts where it first appears.
            share = len(prepared.records) / len(records)
            fresh = {record.text for record in prepared.records} - seen
            seen |= fresh
            own = index.WriteStats(
                written=len(prepared.records), embedded=len(fresh), embed_seconds=stats.embed_seconds * share
            )
            self._done(_completed(prepared, own, elapsed * share))


def _chunk_by_page(
    extracted: extract.Extracted, object_key: str, spec: SourceSpec
) -> tuple[list[tuple[chunk.Chunk, int | None]], chunk.ChunkResult]:
    """Chunks with their page (slide, sheet): each page is chunked on its own, so no chunk spans two."""

    def chunk_part(text: str) -> chunk.ChunkResult:
        return chunk.chunk_text(
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
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])  # as _join_pages counts
    bounds = [start for start, _ in extracted.page_starts[1:]] + [len(lines) + 1]
    pieces: list[tuple[chunk.Chunk, int | None]] = []
    result = chunk.ChunkResult([], "", None)
    previous_end = 1
    for (start, page), end in zip(extracted.page_starts, bounds, strict=True):
        # Text before the first page mark (none, as documents.py joins pages) stays with that page.
        first = min(start, previous_end)
        result = chunk_part("".join(lines[first - 1 : end - 1]))
        offset = first - 1
        pieces.extend(
            (chunk.Chunk(piece.text, piece.start_line + offset, piece.end_line + offset), page)
            for piece in result.chunks
        )
        previous_end = end
    return pieces, result


def sync_object(
    s3: S3Client,
    spec: SourceSpec,
    collection_for: CollectionFor,
    embed: index.Embedder,
    object_key: str,
    *,
    custom_id: str | None = None,
    user_metadata: Mapping[str, Any] | None = None,
    target_collection_name: str | None = None,
) -> KeyReport:
    """Bring one object's chunks in Chroma up to date. Raises on bad input, naming the object and the rule."""

    def check(report: KeyReport | None = None) -> KeyReport | _Fetched:
        return fetch(
            s3, spec, collection_for, object_key,
            custom_id=custom_id, user_metadata=user_metadata, target_collection_name=target_collection_name,
            empty_etag=report.etag if report is not None and report.status == "empty" else None,
        )  # fmt: skip

    def extract_text(key: str, data: bytes) -> extract.Extracted:
        return extract_in_process(key, data, spec)

    fetched = check()
    if isinstance(fetched, KeyReport):
        return settle(fetched, check, extract_text, spec, embed)
    mark = time.perf_counter()
    extracted = extract_text(fetched.report.document_key or object_key, fetched.data)
    _lap(fetched.report, "extract", mark)
    return settle(finish(fetched, extracted, spec, embed), check, extract_text, spec, embed)


def _searchable(collection_for: CollectionFor, default: str) -> list[Collection]:
    if isinstance(collection_for, Collections):
        return collection_for.searchable(default)
    return [collection_for(default)]


def _waiting(
    report: KeyReport, spec: SourceSpec, collection_for: CollectionFor, meta_key: str, started: float
) -> KeyReport:
    """A metadata file names an object that is not in the bucket (yet): nothing of it stays indexed."""
    searched = _searchable(collection_for, report.collection_name)
    report.chunks_deleted = sum(
        index.delete_where(collection, _asked_for_by(spec, meta_key)) for collection in searched
    )
    report.status = "waiting"
    report.message = (
        f"metadata file '{meta_key}' names '{report.object_key}', which is not in the bucket: waiting for it "
        "(it is indexed when it arrives)"
        + (f"; removed {report.chunks_deleted} chunk(s) of its earlier version" if report.chunks_deleted else "")
    )
    report.duration_s = time.perf_counter() - started
    return report


def _document_in_metadata_mode(
    spec: SourceSpec, collection_for: CollectionFor, object_key: str, linked: list[str]
) -> tuple[KeyReport, list[str]]:
    """In metadata mode a document is indexed only through the metadata files naming it, which are synced
    next: the linked ones and any whose chunks hold it. Chunks it has of its own (indexed directly) go."""
    started = time.perf_counter()
    report = KeyReport(object_key=object_key, status="ignored", collection_name=spec.collection_name)
    meta_keys = list(linked)
    for collection in _searchable(collection_for, spec.collection_name):
        found = collection.get(
            where={"$and": [{"object_key": object_key}, {"source": spec.name}]}, include=["metadatas"]
        )
        own = []
        for chunk_id, metadata in zip(found["ids"], found.get("metadatas") or [], strict=True):
            meta_key = (metadata or {}).get("metadata_key")
            if not meta_key:
                own.append(chunk_id)
            elif meta_key not in meta_keys:
                meta_keys.append(str(meta_key))
        if own:
            collection.delete(ids=own)
            report.chunks_deleted += len(own)
    report.message = (
        f"'{object_key}' is indexed through its metadata file(s) {', '.join(meta_keys)}"
        if meta_keys
        else f"'{object_key}' is named by no .meta.json file: in metadata mode only named documents are indexed"
    ) + (f"; removed {report.chunks_deleted} chunk(s) it had of its own" if report.chunks_deleted else "")
    report.duration_s = time.perf_counter() - started
    return report, meta_keys


def _removed(report: KeyReport, spec: SourceSpec, collection_for: CollectionFor, started: float) -> KeyReport:
    """The object is gone from the bucket: its chunks go too, so the collection mirrors the bucket."""
    where = {"$and": [{"object_key": report.object_key}, {"source": spec.name}]}
    searched = _searchable(collection_for, report.collection_name)
    report.chunks_deleted = sum(index.delete_where(collection, where) for collection in searched)
    report.status = "removed"
    report.message = f"object '{report.object_key}' no longer exists; removed {report.chunks_deleted} chunk(s)"
    report.duration_s = time.perf_counter() - started
    return report


def failure_message(object_key: str, error: Exception) -> str:
    """Our own errors already name the object and rule; anything else gets the object named for it, and
    an error with no text is named by its type: never an empty message."""
    text = str(error).strip()
    if isinstance(error, (objects.ObjectError, extract.ExtractionError, ValueError)) and object_key in text:
        return text
    if isinstance(error, (index.EmbeddingError, ValueError)) and text:
        return f"object '{object_key}': {text}"
    return f"object '{object_key}': {type(error).__name__}" + (f": {text}" if text else " (the error gave no reason)")


def sync_keys(
    s3: S3Client,
    spec: SourceSpec,
    collection_for: CollectionFor,
    embed: index.Embedder,
    object_keys: Iterable[str],
    on_report: Callable[[KeyReport], None] | None = None,
    pool: documents.DocumentPool | None = None,
    invocations: Mapping[str, Invocation] | None = None,
    links: MetaLinks | None = None,
) -> list[KeyReport]:
    """Sync many keys; a key that fails is reported as failed and never stops the others.

    With a pool, documents are converted in its worker processes while this thread reads, chunks,
    embeds and writes the others; a few conversions are kept in flight so every core stays busy.
    A document's sync also syncs the metadata files that name it (links), after it; in metadata mode
    only they index it.
    """
    links = links if links is not None else InMemoryMetaLinks()
    worklist = deque(dict.fromkeys(object_keys))
    queued = set(worklist)
    naming = links.naming(key for key in worklist if not events.is_meta_key(key))
    named_document = {meta_key: document for document, metas in naming.items() for meta_key in metas}
    reports: list[KeyReport] = []
    in_flight: deque[tuple[_Fetched, Future[documents.Converted]]] = deque()
    window = 2 * pool.workers if pool is not None else 0

    def then_sync(document_key: str, meta_keys: list[str]) -> None:
        """The metadata files naming a document are synced after it, in this run."""
        for meta_key in meta_keys:
            named_document.setdefault(meta_key, document_key)
            if meta_key not in queued:
                worklist.append(meta_key)
                queued.add(meta_key)

    def check(report: KeyReport) -> KeyReport | _Fetched:
        invocation = (invocations or {}).get(report.object_key, Invocation())
        return fetch(
            s3, spec, collection_for, report.object_key,
            custom_id=invocation.custom_id, user_metadata=invocation.metadata,
            target_collection_name=invocation.target_collection_name, links=links,
            empty_etag=report.etag if report.status == "empty" else None,
        )  # fmt: skip

    def extract_text(key: str, data: bytes) -> extract.Extracted:
        if pool is not None and documents.is_converted(key):
            return documents.result_of(key, pool.submit(key, data, spec.document_options), spec.document_options)
        return extract_in_process(key, data, spec)

    def done(report: KeyReport) -> None:
        report = settle(report, check, extract_text, spec, embed)
        document = named_document.get(report.object_key)
        if document is not None and report.status != "failed" and report.document_key != document:
            links.unlink(document, report.object_key)  # the metadata file is gone or names another object now
        reports.append(report)
        if on_report is not None:
            on_report(report)

    def failed(object_key: str, error: Exception, started: float) -> None:
        done(
            KeyReport(
                object_key=object_key,
                status="failed",
                collection_name=spec.collection_name,
                message=failure_message(object_key, error),
                duration_s=time.perf_counter() - started,
            )
        )

    new_objects = _NewObjects(
        embed, done, lambda fetched, error: failed(fetched.report.object_key, error, fetched.started)
    )

    def deliver(fetched: _Fetched, extracted: extract.Extracted) -> None:
        prepared = prepare(fetched, extracted, spec)
        if new_objects.takes(prepared):
            new_objects.add(prepared)
        else:
            done(write(prepared, embed))

    def drain_one() -> None:
        fetched, future = in_flight.popleft()
        try:
            mark = time.perf_counter()
            extracted = documents.result_of(
                fetched.report.document_key or fetched.report.object_key, future, spec.document_options
            )
            _lap(fetched.report, "extract", mark)
            deliver(fetched, extracted)
        except Exception as error:  # one bad object fails its own key, never the others
            failed(fetched.report.object_key, error, fetched.started)

    while worklist:
        object_key = worklist.popleft()
        started = time.perf_counter()
        try:
            invocation = (invocations or {}).get(object_key, Invocation())
            invocation.validate(spec, object_key)
            if not events.is_meta_key(object_key):
                meta_keys = naming.get(object_key, [])
                if spec.auto_sync == "metadata" and invocation == Invocation():
                    report, meta_keys = _document_in_metadata_mode(spec, collection_for, object_key, meta_keys)
                    then_sync(object_key, meta_keys)
                    done(report)
                    continue
                then_sync(object_key, meta_keys)
            if new_objects.holds(object_key):
                # Its chunks (or those its .meta.json names) must be in Chroma before it is looked at again.
                new_objects.flush()
            fetched = fetch(
                s3, spec, collection_for, object_key,
                custom_id=invocation.custom_id, user_metadata=invocation.metadata,
                target_collection_name=invocation.target_collection_name,
                links=links,
            )  # fmt: skip
            if isinstance(fetched, KeyReport):
                done(fetched)
            elif pool is not None and documents.is_converted(fetched.report.document_key or object_key):
                document_key = fetched.report.document_key or object_key
                in_flight.append((fetched, pool.submit(document_key, fetched.data, spec.document_options)))
                fetched.data = b""  # the worker has its copy; do not hold every document in memory
                while len(in_flight) >= window:
                    drain_one()
            else:
                mark = time.perf_counter()
                extracted = extract_in_process(fetched.report.document_key or object_key, fetched.data, spec)
                _lap(fetched.report, "extract", mark)
                deliver(fetched, extracted)
        except Exception as error:  # one bad object fails its own key, never the others
            failed(object_key, error, started)
    while in_flight:
        drain_one()
    new_objects.flush()
    return reports
