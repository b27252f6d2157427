"""Drift between a source's bucket and its chunks in Chroma: keys missing, indexed at an old ETag, or gone.

The bucket listing and the chunks' metadata are paged into two small pandas frames (one row per
object, one row per distinct (key, ETag) of the chunks) and joined; nothing else is read, so memory
grows with the number of objects, not with their size or their chunks.

Which chunks count:
- A chunk belongs to the partition that indexed it: its `.meta.json` file (`metadata_key`) if one
  named the document, else its own `object_key`.
- A listed key is *missing* when no chunk of the source (in any collection) belongs to it, unless
  its last sync found no text at this very ETag (`empty`: such objects legitimately have no chunks).
- A listed `.meta.json` without chunks whose document is not in the bucket (yet) is *waiting*, not
  missing: a sync of it indexes nothing and says so; the document's upload completes it. It is read
  to learn which document it names (one GET per such file, so the cost follows the drift). Waiting
  files are counted apart and leave the audit clean.
- A key is *stale* when a chunk of its document carries another ETag than the listing, or when its
  document lacks some of its chunks (each chunk records its document's `chunk_count`; the chunks under
  one id in one collection must be exactly that many: `incomplete`). Chunks an
  invocation wrote to another collection (no `metadata_key`, not in the source's collection) are
  left out: a sync writes to the source's collection, so it could never bring them up to date.
- A chunk is *orphaned* when its object (or the `.meta.json` that named it) is no longer in the
  bucket, or no longer selected by the source's prefix and include/exclude globs (`unselected`:
  a sync would index such an object again, so those chunks are deleted instead of re-synced).
- A key that looks missing or stale but is *archived* (listed in an archive storage class, or Intelligent-Tiering,
  and HEAD says it is not restored: pipeline/s3/archive.py) is counted apart, not drift: no sync can read it until it
  is restored, and its earlier chunks, if any, stay. One HEAD per such key, so the cost follows the drift.

What the chunks hold, beyond the ETag (pipeline/audit/chunks.py), in the collections the source may write:
- A chunk is *misembedded* when its recorded `text_hash` is not its stored context line's and text's (another
  hand changed its text or hash, or planted it): a repair deletes it and syncs its partition (`misembedded_keys`),
  so it is written again from what S3 holds, never embedded again from its own text.
- A partition is *relabel* when its chunks' labels (pipeline/chroma/labels.py: user metadata, tags, readers) are not
  what S3 gives its object now; a sync of it brings them back to S3's. n/a for a source without labels.

Tenancy (pipeline/records/owners.py): every chunk in this source's own collection that is not the source's
(another configured source's, another project's, a writer that recorded no source: none may write
there) is *foreign*; this source's chunks in a collection it may not write (another source's, or one
outside its `target_collections`) are *misplaced*. Both make the audit unclean; a repair deletes them.

Metadata-mode sources (`auto_sync: metadata`) are audited for orphans and incomplete documents only:
which documents their `.meta.json` files should have indexed is their sensor's business, so missing is
reported as not applicable, and stale holds only the metadata files whose documents lack chunks.
There a document need not match the globs, only lie under the prefix.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import s3sync_dagster.pipeline.audit.chunks as chunk_drift
from s3sync_dagster.pipeline.chroma import pages
from s3sync_dagster.pipeline.lexicon import of
from s3sync_dagster.pipeline.records import describe
from s3sync_dagster.pipeline.s3 import (
    ObjectError,
    ObjectInfo,
    S3Client,
    head_object,
    is_meta_key,
    key_selected,
    list_objects,
    may_be_archived,
    parse_meta_file,
    read_object,
)
from s3sync_dagster.pipeline.sync import MAX_META_FILE_BYTES

if TYPE_CHECKING:  # pandas loads when an audit runs, not with the definitions every run process imports
    import pandas as pd
    from chromadb.api.models.Collection import Collection

    from s3sync_dagster.pipeline.spec import SourceSpec

# Given the keys that look missing, each one's ETag at its last sync if that sync found no text.
EmptyLookup = Callable[[Sequence[str]], Mapping[str, str]]
# Given metadata files that look missing, the document each names (a file that cannot be read is left out).
NamedLookup = Callable[[Sequence[str]], Mapping[str, str]]
# Given keys that look missing or stale and are listed in a class that may be archived, those not restored -> why.
ArchivedLookup = Callable[[Sequence[str]], Mapping[str, str]]
# Given partitions with their document's key and the label sets their chunks carry, those whose labels S3 changed,
# each with None or why S3's labels cannot be read (chunk_drift.label_drift).
LabelLookup = Callable[[chunk_drift.Carried], Mapping[str, str | None]]


@dataclass
class Drift:
    """The drift of one source; key lists are sorted, `None` when not applicable (metadata mode)."""

    source: str
    metadata_mode: bool
    listed: int  # objects of the source in the bucket
    chunks: int  # chunks of the source in Chroma, over every collection read
    indexed: int  # listed objects with chunks
    missing: list[str] | None
    stale: list[str] | None
    orphaned: list[str]  # partition keys whose chunks must go: their object is gone or no longer selected
    unselected: list[str] = field(default_factory=list)  # the orphans whose object exists but is not selected
    empty: int = 0  # listed objects without chunks because their last sync found no text at this ETag
    collections: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # list, chroma, join
    # Chunks other sources wrote into this source's own collection, by writing source (a repair removes them).
    foreign: dict[str, int] = field(default_factory=dict)
    # This source's chunks in collections it may not write, by collection (a repair removes them).
    misplaced: dict[str, int] = field(default_factory=dict)
    # Collections the source writes, in an embedded store, whose lexical index (pipeline/lexicon/embedded.py) does not
    # hold their chunks as they are, with why (a repair builds it again from the collection).
    lexicon: dict[str, str] = field(default_factory=dict)
    incomplete: int = 0  # of the stale documents, those missing some of their chunks (or holding extra ones)
    # Metadata files without chunks naming a document not in the bucket yet -> that document (not drift).
    waiting: dict[str, str] = field(default_factory=dict)
    # Chunks of the source whose recorded text hash is not their text's, by collection (index.misembedded):
    # neither their texts nor their vectors can be trusted to be their objects'; a repair deletes them and syncs
    # `misembedded_keys`, so they are written again from what S3 holds.
    misembedded: dict[str, int] = field(default_factory=dict)
    misembedded_keys: list[str] = field(default_factory=list)  # the partitions a sync writes them again for
    # Partitions whose chunks' labels (metadata, tags, readers) are not S3's now; None: the source has no labels.
    relabel: list[str] | None = None
    unreadable: dict[str, str] = field(default_factory=dict)  # of relabel, those whose labels S3 would not give: why
    # Keys in an archive storage class and not restored -> why (not drift: no sync can read them yet).
    archived: dict[str, str] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return (
            not (self.missing or self.stale or self.orphaned or self.foreign or self.misplaced or self.lexicon)
            and not self.misembedded
            and not self.relabel
        )

    def counts(self) -> dict[str, int | None]:
        return {
            "missing": None if self.missing is None else len(self.missing),
            "stale": None if self.stale is None else len(self.stale),
            "orphaned": len(self.orphaned),
            "foreign": sum(self.foreign.values()),
            "misplaced": sum(self.misplaced.values()),
            "lexicon": len(self.lexicon),
            "misembedded": sum(self.misembedded.values()),
            # Only for a source with labels: a source without has nothing of the kind to count.
            **({} if self.relabel is None else {"relabel": len(self.relabel)}),
        }

    def to_sync(self) -> list[str]:
        """The keys a sync repairs: missing and stale ones are indexed, gone ones lose their chunks, those whose
        misembedded chunks a repair deletes are written again from S3, relabelled ones get S3's labels."""
        unselected = set(self.unselected)
        gone = [key for key in self.orphaned if key not in unselected]
        rewritten = [key for key in [*self.misembedded_keys, *(self.relabel or [])] if key not in unselected]
        return sorted({*(self.missing or []), *(self.stale or []), *gone, *rewritten})

    def summary(self) -> str:
        counts = self.counts()
        shown = ", ".join(f"{'n/a' if n is None else n} {kind}" for kind, n in counts.items())
        waiting = f"; {len(self.waiting)} metadata file(s) waiting for their document" if self.waiting else ""
        waiting += f"; {len(self.archived)} archived (not restored)" if self.archived else ""
        return (
            f"source '{self.source}': {self.listed} object(s) listed, {self.chunks} chunk(s); drift: {shown}{waiting}"
        )


def listing_frame(s3: S3Client, target: SourceSpec) -> pd.DataFrame:
    """Every object under the prefix: object_key, etag, and whether the source selects it."""
    return frame_of(list_objects(s3, target.bucket_name, target.path_prefix), target)


def frame_of(listing: Iterable[ObjectInfo], target: SourceSpec) -> pd.DataFrame:
    """A listing as the join reads it: object_key, etag, whether the source selects it, and each object's size
    and storage class (which the plan reads: pipeline/audit/plan.py)."""
    import pandas as pd

    object_keys: list[str] = []
    etags: list[str] = []
    selected: list[bool] = []
    sizes: list[int] = []
    storage_classes: list[str] = []
    for info in listing:
        object_keys.append(info.object_key)
        etags.append(info.etag)
        selected.append(key_selected(info.object_key, target.path_prefix, target.include, target.exclude))
        sizes.append(info.size)
        storage_classes.append(info.storage_class)
    # Typed, so an empty prefix is an empty frame of the same columns, not one pandas cannot join.
    return pd.DataFrame(
        {
            "object_key": pd.Series(object_keys, dtype="object"),
            "etag": pd.Series(etags, dtype="object"),
            "selected": pd.Series(selected, dtype="bool"),
            "size": pd.Series(sizes, dtype="int64"),
            "storage_class": pd.Series(storage_classes, dtype="object"),
        }
    )


_CHUNK_COLUMNS = ["collection", "object_key", "metadata_key", "document_id", "etag", "chunk_count"]


def chunk_frame(
    collections: Iterable[Collection],
    target: SourceSpec,
    foreign: dict[str, int] | None = None,
    first_chunks: bool = False,
    label_keys: Sequence[str] = (),
    signatures: bool = False,
) -> pd.DataFrame:
    """The source's chunks as distinct (collection, object_key, metadata_key, document_id, etag, chunk_count)
    rows with how many chunks each has.

    Paged at the client's batch size and folded page by page, so a frame never holds a row per chunk.
    foreign: given, the source's own collection is read whole in the same pass, and every chunk in it that
    is not the source's (pipeline/records/owners.py) is counted there by who wrote it.
    first_chunks: read each document's first chunk only and count the chunks it records (`chunk_count`): a read
    that follows the documents, not their chunks (the plan's, pipeline/audit/plan.py); a document missing some of its
    chunks then looks whole, so the audit itself never asks for it.
    label_keys: given (labels.label_keys), each row also holds the values its chunks carry for them (`labels`, as
    JSON), so one object's chunks fold into one row while they agree.
    signatures: each row also holds its chunks' `sync_signature` (the settings they were written under: the plan's).
    """
    import pandas as pd

    columns = [*_CHUNK_COLUMNS, "labels"] if label_keys else _CHUNK_COLUMNS
    columns = [*columns, "sync_signature"] if signatures else columns
    owner = target.owner
    folded: list[pd.DataFrame] = []
    for collection in collections:
        home = foreign is not None and collection.name == target.collection_name
        where = {"chunk_index": 0} if first_chunks else None if home else owner.where()
        for page in pages(collection, where):
            metadatas: list[Mapping[str, Any]] = []
            for _, metadata in page:
                if owner.owns(metadata):
                    metadatas.append(metadata)
                elif home and foreign is not None:
                    writer = writer_of(metadata, target)
                    foreign[writer] = foreign.get(writer, 0) + 1
            if metadatas:
                rows = pd.DataFrame(
                    {
                        "collection": collection.name,
                        "object_key": [str(m.get("object_key", "")) for m in metadatas],
                        "metadata_key": [str(m.get("metadata_key") or "") for m in metadatas],
                        "document_id": [str(m.get("document_id", "")) for m in metadatas],
                        "etag": [str(m.get("etag", "")) for m in metadatas],
                        "chunk_count": [_count(m.get("chunk_count")) for m in metadatas],
                    }
                )
                if label_keys:
                    rows["labels"] = [chunk_drift.label_set(m, label_keys) for m in metadatas]
                if signatures:
                    rows["sync_signature"] = [str(m.get("sync_signature") or "") for m in metadatas]
                if first_chunks:
                    rows = rows.assign(chunks=rows["chunk_count"].clip(lower=1))
                    folded.append(rows.groupby(columns, sort=False)["chunks"].sum().reset_index())
                else:
                    folded.append(rows.groupby(columns, sort=False).size().rename("chunks").reset_index())
    if not folded:
        return _empty_chunk_frame(bool(label_keys), signatures)
    frame = pd.concat(folded, ignore_index=True)
    return frame.groupby(columns, sort=False)["chunks"].sum().reset_index()


def writer_of(metadata: Mapping[str, Any], target: SourceSpec) -> str:
    """Who wrote a chunk that is not the source's: another source of the config by its name, anyone else
    described (a same-named source of another project or bucket, a writer that recorded no source)."""
    writer = metadata.get("source")
    if writer in target.other_sources and str(metadata.get("project") or "") == target.project:
        return str(writer)
    return describe(metadata) if writer else "a writer that recorded no source"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _empty_chunk_frame(labelled: bool = False, signatures: bool = False) -> pd.DataFrame:
    import pandas as pd

    named = [*_CHUNK_COLUMNS, *(["labels"] if labelled else []), *(["sync_signature"] if signatures else [])]
    columns = {column: pd.Series(dtype="object") for column in named}
    return pd.DataFrame({**columns, "chunk_count": pd.Series(dtype="int64"), "chunks": pd.Series(dtype="int64")})


def named_documents(s3: S3Client, target: SourceSpec, meta_keys: Sequence[str]) -> dict[str, str]:
    """The document each metadata file names. One that cannot be read or is not valid is left out: it stays
    missing, and a sync of it says what is wrong."""
    named: dict[str, str] = {}
    for meta_key in meta_keys:
        try:
            info = head_object(s3, target.bucket_name, meta_key)
            data = read_object(s3, target.bucket_name, info, MAX_META_FILE_BYTES)
            named[meta_key] = parse_meta_file(meta_key, data, target.path_prefix).path
        except (ObjectError, ValueError):
            continue
    return named


def may_write(target: SourceSpec, collection_name: str) -> bool:
    """Whether the source may write to the collection (its own, or one its tenancy rules allow)."""
    try:
        target.check_target(collection_name, f"source '{target.name}'")
    except ValueError:
        return False
    return True


def join(
    listing: pd.DataFrame,
    chunks: pd.DataFrame,
    target: SourceSpec,
    known_empty: EmptyLookup | None = None,
    foreign: Mapping[str, int] | None = None,
    named: NamedLookup | None = None,
    archived: ArchivedLookup | None = None,
    labelled: LabelLookup | None = None,
) -> Drift:
    """Missing, stale, orphaned and waiting keys from the two frames (see the module's docstring for the rules).

    named: the documents metadata files name, asked for those that look missing (None: none is waiting).
    labelled: the partitions whose labels S3 changed, asked for every indexed one a sync would not read anyway
    (the chunk frame must hold `labels`: chunk_frame's label_keys); None: the source has no labels.
    """
    chunks, misplaced = _placed(chunks, target)
    placed = _against_listing(chunks, listing, target)
    chunk_total = int(chunks["chunks"].sum()) + sum(misplaced.values())
    selected_listing = listing[listing["selected"]]
    indexed_partitions = set(chunks["partition"])
    indexed = int(selected_listing["object_key"].isin(indexed_partitions).sum())
    stale_etag, incomplete = _stale(placed.live, target)
    incomplete_partitions = set(incomplete.index.get_level_values("partition"))
    relabel, unreadable = _relabel(placed.live, target, stale_etag | incomplete_partitions, labelled)
    if target.metadata_mode:
        return Drift(
            target.name, True, len(selected_listing), chunk_total, indexed, None, sorted(incomplete_partitions),
            placed.orphaned, placed.unselected, incomplete=len(incomplete),
            foreign=dict(foreign or {}), misplaced=misplaced, relabel=relabel, unreadable=unreadable,
        )  # fmt: skip

    stale = sorted(stale_etag | incomplete_partitions)
    unindexed = selected_listing[~selected_listing["object_key"].isin(indexed_partitions)]
    missing, empty, waiting = _missing(listing, unindexed, known_empty, named)
    not_restored = _archived(listing, {*missing, *stale}, archived)
    missing = [object_key for object_key in missing if object_key not in not_restored]
    stale = [object_key for object_key in stale if object_key not in not_restored]
    return Drift(
        target.name,
        False,
        len(selected_listing),
        chunk_total,
        indexed,
        missing,
        stale,
        placed.orphaned,
        placed.unselected,
        empty=empty,
        foreign=dict(foreign or {}),
        misplaced=misplaced,
        incomplete=len(incomplete),
        waiting=dict(sorted(waiting.items())),
        archived=dict(sorted(not_restored.items())),
        relabel=relabel,
        unreadable=unreadable,
    )


def _relabel(
    live: pd.DataFrame, target: SourceSpec, stale: set[str], labelled: LabelLookup | None
) -> tuple[list[str] | None, dict[str, str]]:
    """Of the partitions with chunks a sync could bring up to date, and not stale (read whole by their sync
    anyway), those whose chunks' labels are not what S3 gives their document now; and of them, those whose labels
    S3 would not give, with why."""
    if labelled is None:
        return None, {}
    comparable = _comparable(live, target)
    if "labels" not in comparable or comparable.empty:
        return [], {}
    rows = comparable[~comparable["partition"].isin(stale)]
    carried = chunk_drift.carried(rows["partition"], rows["object_key"], rows["labels"])
    found = labelled(carried) if carried else {}
    return sorted(found), {partition: why for partition, why in found.items() if why}


def _archived(listing: pd.DataFrame, drifted: set[str], archived: ArchivedLookup | None) -> dict[str, str]:
    """Of the keys that look missing or stale, those listed in a class that may be archived and not restored."""
    if archived is None or not drifted or "storage_class" not in listing:
        return {}
    may_be = listing["storage_class"].map(may_be_archived).astype(bool)
    candidates = sorted(set(listing.loc[may_be, "object_key"]) & drifted)
    return dict(archived(candidates)) if candidates else {}


def archived_keys(s3: S3Client, target: SourceSpec, object_keys: Sequence[str]) -> dict[str, str]:
    """HEAD each key: those not restored -> why (a key that cannot be read now is left to the sync to report)."""
    found = {}
    for object_key in object_keys:
        try:
            reason = head_object(s3, target.bucket_name, object_key).archived
        except ObjectError:
            continue
        if reason is not None:
            found[object_key] = reason
    return found


def _placed(chunks: pd.DataFrame, target: SourceSpec) -> tuple[pd.DataFrame, dict[str, int]]:
    """The chunk rows with their partition (`.meta.json` or object key) and whether they are in the source's
    own collection (`home`), less those in a collection the source may not write: counted by collection."""
    if chunks.empty:
        chunks = _empty_chunk_frame("labels" in chunks)
    chunks = chunks.assign(
        partition=chunks["metadata_key"].where(chunks["metadata_key"] != "", chunks["object_key"]).astype("object"),
        home=chunks["collection"] == target.collection_name,
    )
    # Chunks in a collection the source may not write (another source's, or outside its target_collections)
    # are deleted, never synced: no sync of the source could bring them up to date there.
    allowed = {name: may_write(target, name) for name in set(chunks["collection"])}
    placed = chunks["collection"].map(allowed).astype(bool) if len(chunks) else chunks["home"]
    misplaced_rows = chunks[~placed]
    misplaced = {str(name): int(n) for name, n in misplaced_rows.groupby("collection")["chunks"].sum().items()}
    return chunks[placed], misplaced


@dataclass
class _Placed:
    """The chunk rows set against the listing: the partitions whose chunks must go, and the rows that stay."""

    orphaned: list[str]  # gone or unselected
    unselected: list[str]  # of those, the ones whose object exists but is not selected
    live: pd.DataFrame  # the rest, each with its document's listed ETag (`listed_etag`)


def _against_listing(chunks: pd.DataFrame, listing: pd.DataFrame, target: SourceSpec) -> _Placed:
    """Which chunk rows' document or partition is gone from the bucket, or not selected by the source."""
    # The document's listing entry (any object under the prefix) and the partition's (selected or not).
    present = listing[["object_key", "etag", "selected"]].astype({"object_key": "object", "etag": "object"})
    with_document = chunks.merge(
        present[["object_key", "etag"]].rename(columns={"etag": "listed_etag"}),
        on="object_key",
        how="left",
        indicator="document",
    )
    with_both = with_document.merge(
        present[["object_key", "selected"]].rename(
            columns={"object_key": "partition", "selected": "partition_selected"}
        ),
        on="partition",
        how="left",
        indicator="partition_listed",
    )
    document_gone = with_both["document"] == "left_only"
    partition_gone = with_both["partition_listed"] == "left_only"
    gone = document_gone | partition_gone
    outside = ~with_both["partition"].astype(str).str.startswith(target.path_prefix)
    if target.metadata_mode:
        unselected = ~gone & outside
    else:
        # The partition must be selected (a .meta.json's document need only lie under the prefix).
        partition_selected = with_both["partition_selected"].astype("boolean").fillna(False).astype(bool)
        unselected = ~gone & ~partition_selected
    # A key outside the prefix cannot be synced by the source: its chunks are deleted, never re-synced.
    unselected |= outside
    gone &= ~outside
    return _Placed(
        orphaned=sorted(set(with_both.loc[gone | unselected, "partition"])),
        unselected=sorted(set(with_both.loc[unselected, "partition"]) - set(with_both.loc[gone, "partition"])),
        live=with_both[~gone & ~unselected],
    )


def _comparable(live: pd.DataFrame, target: SourceSpec) -> pd.DataFrame:
    """The chunk rows a sync of their partition writes: in the source's collection, or sent by a metadata file
    (an invocation's chunks elsewhere are left out: a sync could never bring them up to date there)."""
    # In metadata mode a metadata file's document counts wherever it was sent.
    return live if target.metadata_mode else live[live["home"] | (live["metadata_key"] != "")]


def _stale(live: pd.DataFrame, target: SourceSpec) -> tuple[set[str], pd.DataFrame]:
    """The partitions whose chunks carry another ETag than the listing, and the documents (by collection,
    document_id, partition) missing some of their chunks or holding extra ones."""
    comparable = _comparable(live, target)
    stale_etag = set(comparable.loc[comparable["etag"] != comparable["listed_etag"], "partition"])
    # A document missing some of its chunks (or holding more than it says): each chunk records how many
    # its document has, so the chunks present in one collection under one id must be exactly that many.
    per_document = comparable.groupby(["collection", "document_id", "partition"], sort=False).agg(
        present=("chunks", "sum"), low=("chunk_count", "min"), high=("chunk_count", "max")
    )
    incomplete = per_document[
        (per_document["present"] != per_document["high"]) | (per_document["low"] != per_document["high"])
    ]
    return stale_etag, incomplete


def _missing(
    listing: pd.DataFrame, unindexed: pd.DataFrame, known_empty: EmptyLookup | None, named: NamedLookup | None
) -> tuple[list[str], int, dict[str, str]]:
    """Of the selected keys without chunks: the missing ones, how many are excused as empty at their ETag, and the
    metadata files waiting for their document (metadata file -> document)."""
    empty_at = dict(known_empty(list(unindexed["object_key"]))) if known_empty is not None and len(unindexed) else {}
    excused = [
        object_key in empty_at and (empty_at[object_key] == etag or is_meta_key(object_key))
        for object_key, etag in zip(unindexed["object_key"], unindexed["etag"], strict=True)
    ]
    missing = sorted(unindexed.loc[[not e for e in excused], "object_key"]) if excused else []
    waiting: dict[str, str] = {}
    unnamed = [object_key for object_key in missing if is_meta_key(object_key)]
    if named is not None and unnamed:
        listed = set(listing["object_key"])
        waiting = {meta_key: document for meta_key, document in named(unnamed).items() if document not in listed}
        missing = [object_key for object_key in missing if object_key not in waiting]
    return missing, sum(excused), waiting


def lexicon_drift(collections: Iterable[Collection]) -> dict[str, str]:
    """Why each collection's lexical index cannot answer for it, or does not hold every chunk's text as Chroma
    does (read in full: a writer other than s3sync, or an index a crash left behind); collections of a server
    or Chroma Cloud have none."""
    found = {}
    for collection in collections:
        index_of = of(collection)
        if index_of is None:
            continue
        problem = index_of.state(collection)
        if problem is None:
            wrong = index_of.verify(collection)
            if wrong:
                problem = f"{len(wrong)} chunk(s) differ between it and the collection, e.g. '{wrong[0]}'"
        if problem is not None:
            found[collection.name] = problem
    return found


def audit(
    s3: S3Client,
    target: SourceSpec,
    collections: Iterable[Collection],
    known_empty: EmptyLookup | None = None,
    hold: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Drift:
    """List the bucket, read the source's chunk metadata from the collections, and join the two.

    hold: held while the store is read (a command's: the store's write lock, so no run is caught halfway through
    a document), and only then: S3's answers (metadata files, archives, each object's labels) are asked after."""
    started = time.perf_counter()
    listing = listing_frame(s3, target)
    listed = time.perf_counter()
    read: list[str] = []
    written: list[Collection] = []

    def reading() -> Iterable[Collection]:
        for collection in collections:
            read.append(collection.name)
            if may_write(target, collection.name):
                written.append(collection)
            yield collection

    foreign: dict[str, int] = {}
    with hold():
        chunks = chunk_frame(reading(), target, foreign, label_keys=chunk_drift.frame_label_keys(target))
        lexicon = lexicon_drift(written)
        misembedded = {
            collection.name: chunk_drift.misembedded_partitions(collection, target.owner) for collection in written
        }
    chroma = time.perf_counter()
    drift = join(
        listing, chunks, target, known_empty, foreign, lambda meta_keys: named_documents(s3, target, meta_keys),
        lambda object_keys: archived_keys(s3, target, object_keys), chunk_drift.lookup(s3, target),
    )  # fmt: skip
    drift.collections = read
    drift.lexicon = lexicon
    drift.misembedded = {name: len(found) for name, found in misembedded.items() if found}
    drift.misembedded_keys = sorted(
        {
            partition
            for name, found in misembedded.items()
            for partition in found.values()
            if chunk_drift.rewritten(target, name, partition)
        }
    )
    drift.seconds = {
        "list": listed - started,
        "chroma": chroma - listed,
        "join": time.perf_counter() - chroma,
    }
    return drift
