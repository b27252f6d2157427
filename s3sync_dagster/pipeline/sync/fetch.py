"""Fetching one object key: validate, HEAD, skip when its chunks are current, else read its bytes; a
`.meta.json` key is read first and claims its document's id; a gone object or metadata file removes its chunks."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline import chroma
from s3sync_dagster.pipeline.chroma import (
    StoredChunk,
    changed,
    check_id_free,
    check_user_keys,
    chunks_of,
    claim_document_id,
    close,
    closed,
    delete_ids,
    delete_of,
    is_current,
    own_chunks,
    refused_as_archived,
    stored_chunks,
    update_labels,
)
from s3sync_dagster.pipeline.records import Metadata, Owner, object_id, validate_custom_id, validate_user_metadata
from s3sync_dagster.pipeline.s3 import (
    InMemoryMetaLinks,
    MetaLinks,
    ObjectError,
    ObjectInfo,
    ObjectMissing,
    S3Client,
    archived_message,
    check_size,
    head_object,
    is_meta_key,
    parse_meta_file,
    read_object,
)
from s3sync_dagster.pipeline.spec import SourceSpec, check_key_in_source, sync_signature
from s3sync_dagster.pipeline.sync.reports import KeyReport, lap
from s3sync_dagster.pipeline.sync.targets import CollectionFor, searchable

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection


@dataclass
class Fetched:
    """An object whose bytes were read because its chunks are not current: extraction comes next."""

    report: KeyReport
    info: ObjectInfo
    data: bytes
    collection: Collection
    document_id: str
    signature: str
    metadata: Metadata
    custom_id: str | None
    had_chunks: bool
    started: float
    owner: Owner  # the source syncing it: the only one whose chunks it may replace
    meta_key: str | None = None
    shared: bool = False  # written to a collection other than the source's own: its id is checked at the write


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
    stored: Mapping[str, StoredChunk] | None = None,
) -> KeyReport | Fetched:
    """Validate, HEAD, skip if current (a final report), else read the bytes for extraction.

    stored: the object's chunks of this source in its target collection, read for many keys at once
    (stored.chunks_of_keys) after any write of it by this sync; else they are read here.

    empty_etag: the ETag at which the object was just found empty (no chunks): at that ETag with no
    chunks stored it is current too (a settle check, which must not read it again).
    """
    if is_meta_key(object_key):
        return _fetch_by_meta_file(s3, spec, collection_for, object_key, links or InMemoryMetaLinks(), empty_etag)
    started = time.perf_counter()
    check_key_in_source(spec, object_key)
    if custom_id is not None:
        validate_custom_id(custom_id)
    metadata = validate_user_metadata(user_metadata or {}, f"object '{object_key}'")
    check_user_keys(spec, metadata, f"metadata file '{meta_key}'" if meta_key else f"object '{object_key}'")
    collection_name = target_collection_name or spec.collection_name
    spec.check_target(collection_name, f"metadata file '{meta_key}'" if meta_key else f"object '{object_key}'")
    collection = collection_for(collection_name)
    report = KeyReport(object_key=object_key, status="indexed", collection_name=collection_name)

    mark = time.perf_counter()
    try:
        info = head_object(s3, spec.bucket_name, object_key)
    except ObjectMissing:
        return _gone(report, spec, collection_for, meta_key, started)
    if info.archived is None:  # too large: refused on its HEAD, before anything stored is read
        check_size(info, spec.max_object_bytes)
    mark = lap(report, "s3_head", mark)
    report.size_bytes, report.etag = info.size, info.etag
    if stored is None:
        stored = stored_chunks(collection, object_key, spec.owner, with_text=False)
    stored = own_chunks(dict(stored), meta_key)
    mark = lap(report, "chroma_read", mark)
    if info.archived is not None and not (stored and chroma.wanted(spec)):
        # S3 refuses its GET until restored: its HEAD alone (nothing of it indexed, or no labels to keep current).
        return _archived(report, info, stored, started)
    try:
        object_labels = chroma.object_labels(s3, spec, info, metadata)  # {} (no request) without label fields
    except ObjectMissing:
        return _gone(report, spec, collection_for, meta_key, started)
    except (ValueError, ObjectError) as error:
        # Who may read it is unknown now: its chunks, wherever they are, are closed to every reader before it fails.
        if spec.readers_tag:
            _close_elsewhere(spec, collection_for, collection, object_key)
        failure = closed(collection, stored, spec, error)
        if info.archived is not None and refused_as_archived(error):
            report.warnings.append(str(failure))
            return _archived(report, info, stored, started)
        raise failure from None
    mark = lap(report, "s3_head", mark)
    relabel = changed(spec, stored, object_labels) if stored else {}
    if relabel:  # the object's chunks in other collections (an invocation's, a metadata file's) follow its labels
        _relabel_elsewhere(spec, collection_for, collection, object_key, object_labels)
    if info.archived is not None:  # indexed before it was archived: who may read it stays as S3 says now
        if relabel:
            report.chunks_metadata_only = update_labels(collection, list(stored), relabel)
        return _archived(report, info, stored, started)

    document_id = custom_id or object_id(object_key)
    signature = sync_signature(spec, custom_id, metadata, meta_key, target_collection_name)
    if is_current(stored, document_id, info.etag, signature):
        # The tags or user metadata alone changed: the chunks' metadata, no GET, no embedding. Written here, on the
        # thread that reads the key (a staging thread too): the key's own chunks only, as its skip check reads them.
        if relabel:
            report.status = "indexed"
            report.chunk_count = report.chunks_metadata_only = update_labels(collection, list(stored), relabel)
            report.message = f"labels updated: {report.chunk_count} chunk(s), nothing re-embedded"
            report.duration_s = time.perf_counter() - started
            return report
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
            collection, spec.owner, document_id, f"metadata file '{meta_key}'" if meta_key else f"object '{object_key}'"
        )

    try:
        data = read_object(s3, spec.bucket_name, info, spec.max_object_bytes)
    except ObjectMissing:  # deleted between HEAD and GET
        return _gone(report, spec, collection_for, meta_key, started)
    lap(report, "s3_read", mark)
    return Fetched(
        report, info, data, collection, document_id, signature, {**metadata, **object_labels}, custom_id, bool(stored), started,
        spec.owner, meta_key, shared,
    )  # fmt: skip


MAX_META_FILE_BYTES = 1024 * 1024


def _fetch_by_meta_file(
    s3: S3Client,
    spec: SourceSpec,
    collection_for: CollectionFor,
    meta_key: str,
    links: MetaLinks,
    empty_etag: str | None = None,
) -> KeyReport | Fetched:
    """A `.meta.json` partition: (re-)read the metadata file, then sync the document it names."""
    started = time.perf_counter()
    check_key_in_source(spec, meta_key)
    try:
        info = head_object(s3, spec.bucket_name, meta_key)
        if info.size > MAX_META_FILE_BYTES:
            raise ValueError(
                f"metadata file '{meta_key}' is {info.size:,} bytes, over the limit of {MAX_META_FILE_BYTES:,} "
                "bytes for a .meta.json file"
            )
        data = read_object(s3, spec.bucket_name, info, MAX_META_FILE_BYTES)
    except ObjectMissing:
        # The metadata file is gone: so are the chunks it asked for, wherever it had sent them.
        report = KeyReport(object_key=meta_key, status="removed", collection_name=spec.collection_name)
        report.chunks_deleted = sum(
            delete_of(c, "metadata_key", meta_key, spec.owner) for c in searchable(collection_for, spec.collection_name)
        )
        report.message = f"metadata file '{meta_key}' no longer exists; removed {report.chunks_deleted} chunk(s)"
        report.duration_s = time.perf_counter() - started
        return report
    meta = parse_meta_file(meta_key, data, spec.path_prefix)
    # A metadata file that now names another path or collection: what it asked for before goes.
    target = meta.target_collection_name or spec.collection_name
    # Every check comes before anything is deleted: a refused metadata file changes nothing.
    spec.check_target(target, f"metadata file '{meta_key}'")
    taken_over = claim_document_id(
        s3, collection_for(target), spec.owner,
        own_collection=spec.collection_name, bucket_name=spec.bucket_name, metadata_mode=spec.metadata_mode,
        meta_key=meta.meta_key, document_id=meta.document_id,
    )  # fmt: skip
    for collection in searchable(collection_for, target):
        asked = chunks_of(collection, "metadata_key", meta_key, spec.owner)
        delete_ids(
            collection,
            sorted(
                chunk_id
                for chunk_id, chunk in asked.items()
                if collection.name != target or chunk.metadata.get("object_key") != meta.path
            ),
        )
    delete_ids(collection_for(target), taken_over)
    links.link(meta.path, meta_key)
    fetched = fetch(
        s3, spec, collection_for, meta.path,
        custom_id=meta.document_id, user_metadata=meta.metadata,
        target_collection_name=meta.target_collection_name, meta_key=meta_key, empty_etag=empty_etag,
    )  # fmt: skip
    report = fetched if isinstance(fetched, KeyReport) else fetched.report
    report.document_key, report.object_key = meta.path, meta_key
    return fetched


def _gone(
    report: KeyReport, spec: SourceSpec, collection_for: CollectionFor, meta_key: str | None, started: float
) -> KeyReport:
    """The object is not in the bucket: a metadata file naming it waits for it, an object's chunks go."""
    if meta_key is not None:
        return _waiting(report, spec, collection_for, meta_key, started)
    return _removed(report, spec, collection_for, started)


def _archived(report: KeyReport, info: ObjectInfo, stored: Mapping[str, StoredChunk], started: float) -> KeyReport:
    """Archived (S3 refuses its GET until restored): not a failure, and nothing of it removed."""
    report.status, report.chunk_count = "archived", len(stored)
    report.message = archived_message(info.object_key, str(info.archived), len(stored))
    if report.chunks_metadata_only:
        report.message += f"; its labels updated on {report.chunks_metadata_only} chunk(s)"
    report.message += "".join(f"; {warning}" for warning in report.warnings)
    report.duration_s = time.perf_counter() - started
    return report


def _elsewhere(
    spec: SourceSpec, collection_for: CollectionFor, home: Collection, object_key: str
) -> Iterator[tuple[Collection, dict[str, StoredChunk]]]:
    """The object's chunks of this source in each collection besides `home` that it wrote (an invocation's target,
    a metadata file's): a label change reaches every copy of its object, not only the one synced. Read only when
    the labels changed or cannot be read, never on every sync."""
    for collection in searchable(collection_for, home.name):
        if collection.name != home.name:
            there = chunks_of(collection, "object_key", object_key, spec.owner)
            if there:
                yield collection, there


def _relabel_elsewhere(
    spec: SourceSpec, collection_for: CollectionFor, home: Collection, object_key: str, wanted: Metadata
) -> None:
    for collection, there in _elsewhere(spec, collection_for, home, object_key):
        update = changed(spec, there, wanted)
        if update:
            update_labels(collection, list(there), update)


def _close_elsewhere(spec: SourceSpec, collection_for: CollectionFor, home: Collection, object_key: str) -> None:
    for collection, there in _elsewhere(spec, collection_for, home, object_key):
        close(collection, there)


def _waiting(
    report: KeyReport, spec: SourceSpec, collection_for: CollectionFor, meta_key: str, started: float
) -> KeyReport:
    """A metadata file names an object that is not in the bucket (yet): nothing of it stays indexed."""
    searched = searchable(collection_for, report.collection_name)
    report.chunks_deleted = sum(delete_of(collection, "metadata_key", meta_key, spec.owner) for collection in searched)
    report.status = "waiting"
    report.message = (
        f"metadata file '{meta_key}' names '{report.object_key}', which is not in the bucket: waiting for it "
        "(it is indexed when it arrives)"
        + (f"; removed {report.chunks_deleted} chunk(s) of its earlier version" if report.chunks_deleted else "")
    )
    report.duration_s = time.perf_counter() - started
    return report


def _removed(report: KeyReport, spec: SourceSpec, collection_for: CollectionFor, started: float) -> KeyReport:
    """The object is gone from the bucket: its chunks go too, so the collection mirrors the bucket."""
    searched = searchable(collection_for, report.collection_name)
    report.chunks_deleted = sum(
        delete_of(collection, "object_key", report.object_key, spec.owner) for collection in searched
    )
    report.status = "removed"
    report.message = f"object '{report.object_key}' no longer exists; removed {report.chunks_deleted} chunk(s)"
    report.duration_s = time.perf_counter() - started
    return report
