"""Drift between a source's bucket and its chunks in Chroma: keys missing, indexed at an old ETag, or gone.

The bucket listing and the chunks' metadata are paged into two small pandas frames (one row per
object, one row per distinct (key, ETag) of the chunks) and joined; nothing else is read, so memory
grows with the number of objects, not with their size or their chunks.

Which chunks count:
- A chunk belongs to the partition that indexed it: its `.meta.json` file (`metadata_key`) if one
  named the document, else its own `object_key`.
- A listed key is *missing* when no chunk of the source (in any collection) belongs to it, unless
  its last sync found no text at this very ETag (`empty`: such objects legitimately have no chunks).
- A key is *stale* when a chunk of its document carries another ETag than the listing, or when its
  document lacks some of its chunks (each chunk records its document's `chunk_count`; the chunks under
  one id in one collection must be exactly that many: `incomplete`). Chunks an
  invocation wrote to another collection (no `metadata_key`, not in the source's collection) are
  left out: a sync writes to the source's collection, so it could never bring them up to date.
- A chunk is *orphaned* when its object (or the `.meta.json` that named it) is no longer in the
  bucket, or no longer selected by the source's prefix and include/exclude globs (`unselected`:
  a sync would index such an object again, so those chunks are deleted instead of re-synced).

Tenancy: chunks another configured source wrote into this source's own collection (where none may
write) are *foreign*; this source's chunks in a collection it may not write (another source's, or one
outside its `target_collections`) are *misplaced*. Both make the audit unclean; a repair deletes them.

Metadata-mode sources (`auto_sync: metadata`) are audited for orphans and incomplete documents only:
which documents their `.meta.json` files should have indexed is their sensor's business, so missing is
reported as not applicable, and stale holds only the metadata files whose documents lack chunks.
There a document need not match the globs, only lie under the prefix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chromadb.api.models.Collection import Collection

from s3sync_dagster.pipeline import events, index, objects
from s3sync_dagster.pipeline.objects import S3Client

if TYPE_CHECKING:  # pandas loads when an audit runs, not with the definitions every run process imports
    import pandas as pd

    from s3sync_dagster.pipeline.spec import SourceSpec

# Given the keys that look missing, each one's ETag at its last sync if that sync found no text.
EmptyLookup = Callable[[Sequence[str]], Mapping[str, str]]


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
    incomplete: int = 0  # of the stale documents, those missing some of their chunks (or holding extra ones)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.stale or self.orphaned or self.foreign or self.misplaced)

    def counts(self) -> dict[str, int | None]:
        return {
            "missing": None if self.missing is None else len(self.missing),
            "stale": None if self.stale is None else len(self.stale),
            "orphaned": len(self.orphaned),
            "foreign": sum(self.foreign.values()),
            "misplaced": sum(self.misplaced.values()),
        }

    def to_sync(self) -> list[str]:
        """The keys a sync repairs: missing and stale ones are indexed, gone ones lose their chunks."""
        unselected = set(self.unselected)
        gone = [key for key in self.orphaned if key not in unselected]
        return sorted({*(self.missing or []), *(self.stale or []), *gone})

    def summary(self) -> str:
        counts = self.counts()
        shown = ", ".join(f"{'n/a' if n is None else n} {kind}" for kind, n in counts.items())
        return f"source '{self.source}': {self.listed} object(s) listed, {self.chunks} chunk(s); drift: {shown}"


def listing_frame(s3: S3Client, target: SourceSpec) -> pd.DataFrame:
    """Every object under the prefix: object_key, etag, and whether the source selects it."""
    import pandas as pd

    object_keys: list[str] = []
    etags: list[str] = []
    selected: list[bool] = []
    for info in objects.list_objects(s3, target.bucket_name, target.path_prefix):
        object_keys.append(info.object_key)
        etags.append(info.etag)
        selected.append(objects.key_selected(info.object_key, target.path_prefix, target.include, target.exclude))
    # Typed, so an empty prefix is an empty frame of the same columns, not one pandas cannot join.
    return pd.DataFrame(
        {
            "object_key": pd.Series(object_keys, dtype="object"),
            "etag": pd.Series(etags, dtype="object"),
            "selected": pd.Series(selected, dtype="bool"),
        }
    )


_CHUNK_COLUMNS = ["collection", "object_key", "metadata_key", "document_id", "etag", "chunk_count"]


def chunk_frame(collections: Iterable[Collection], target: SourceSpec) -> pd.DataFrame:
    """The source's chunks as distinct (collection, object_key, metadata_key, document_id, etag, chunk_count)
    rows with how many chunks each has.

    Paged at the client's batch size and folded page by page, so a frame never holds a row per chunk.
    """
    import pandas as pd

    folded: list[pd.DataFrame] = []
    for collection in collections:
        page_size = index.max_batch_size(collection)
        offset = 0
        while True:
            page = collection.get(where={"source": target.name}, include=["metadatas"], limit=page_size, offset=offset)  # type: ignore[arg-type]
            metadatas: list[Mapping[str, Any]] = [m or {} for m in page["metadatas"] or []]
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
                folded.append(rows.groupby(_CHUNK_COLUMNS, sort=False).size().rename("chunks").reset_index())
            if len(page["ids"]) < page_size:
                break
            offset += page_size
    if not folded:
        return _empty_chunk_frame()
    frame = pd.concat(folded, ignore_index=True)
    return frame.groupby(_CHUNK_COLUMNS, sort=False)["chunks"].sum().reset_index()


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _empty_chunk_frame() -> pd.DataFrame:
    import pandas as pd

    columns = {column: pd.Series(dtype="object") for column in _CHUNK_COLUMNS}
    return pd.DataFrame({**columns, "chunk_count": pd.Series(dtype="int64"), "chunks": pd.Series(dtype="int64")})


def foreign_chunks(collection: Collection, target: SourceSpec) -> dict[str, int]:
    """Chunks another configured source wrote into this source's own collection (where none of them may
    write), counted by the source that wrote them. A writer the config does not know (another project on
    the same store) is not judged here."""
    others = target.other_sources
    found: dict[str, int] = {}
    page_size = index.max_batch_size(collection)
    offset = 0
    while True:
        where: Any = {"source": {"$ne": target.name}}
        page = collection.get(where=where, include=["metadatas"], limit=page_size, offset=offset)
        for metadata in page["metadatas"] or []:
            writer = (metadata or {}).get("source")
            if writer in others:
                found[writer] = found.get(writer, 0) + 1
        if len(page["ids"]) < page_size:
            break
        offset += page_size
    return found


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
) -> Drift:
    """Missing, stale and orphaned keys from the two frames (see the module's docstring for the rules)."""
    if chunks.empty:
        chunks = _empty_chunk_frame()
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
    chunks = chunks[placed]
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
    orphaned = sorted(set(with_both.loc[gone | unselected, "partition"]))
    unselected_keys = sorted(set(with_both.loc[unselected, "partition"]) - set(with_both.loc[gone, "partition"]))
    chunk_total = int(chunks["chunks"].sum()) + sum(misplaced.values())
    selected_listing = listing[listing["selected"]]
    indexed_partitions = set(chunks["partition"])
    indexed = int(selected_listing["object_key"].isin(indexed_partitions).sum())
    live = with_both[~gone & ~unselected]
    # In metadata mode a metadata file's document counts wherever it was sent.
    comparable = live if target.metadata_mode else live[live["home"] | (live["metadata_key"] != "")]
    stale_etag = set(comparable.loc[comparable["etag"] != comparable["listed_etag"], "partition"])
    # A document missing some of its chunks (or holding more than it says): each chunk records how many
    # its document has, so the chunks present in one collection under one id must be exactly that many.
    per_document = comparable.groupby(["collection", "document_id", "partition"], sort=False).agg(
        present=("chunks", "sum"), low=("chunk_count", "min"), high=("chunk_count", "max")
    )
    incomplete = per_document[
        (per_document["present"] != per_document["high"]) | (per_document["low"] != per_document["high"])
    ]
    incomplete_partitions = set(incomplete.index.get_level_values("partition"))
    if target.metadata_mode:
        return Drift(
            target.name, True, len(selected_listing), chunk_total, indexed, None, sorted(incomplete_partitions),
            orphaned, unselected_keys, incomplete=len(incomplete),
            foreign=dict(foreign or {}), misplaced=misplaced,
        )  # fmt: skip

    stale = sorted(stale_etag | incomplete_partitions)

    unindexed = selected_listing[~selected_listing["object_key"].isin(indexed_partitions)]
    empty_at = dict(known_empty(list(unindexed["object_key"]))) if known_empty is not None and len(unindexed) else {}
    excused = [
        object_key in empty_at and (empty_at[object_key] == etag or events.is_meta_key(object_key))
        for object_key, etag in zip(unindexed["object_key"], unindexed["etag"], strict=True)
    ]
    missing = sorted(unindexed.loc[[not e for e in excused], "object_key"]) if excused else []
    return Drift(
        target.name,
        False,
        len(selected_listing),
        chunk_total,
        indexed,
        missing,
        stale,
        orphaned,
        unselected_keys,
        empty=sum(excused),
        foreign=dict(foreign or {}),
        misplaced=misplaced,
        incomplete=len(incomplete),
    )


def audit(
    s3: S3Client,
    target: SourceSpec,
    collections: Iterable[Collection],
    known_empty: EmptyLookup | None = None,
) -> Drift:
    """List the bucket, read the source's chunk metadata from the collections, and join the two."""
    started = time.perf_counter()
    listing = listing_frame(s3, target)
    listed = time.perf_counter()
    read: list[str] = []

    def reading() -> Iterable[Collection]:
        for collection in collections:
            read.append(collection.name)
            yield collection

    collections = list(collections)
    chunks = chunk_frame(reading(), target)
    home = [collection for collection in collections if collection.name == target.collection_name]
    foreign = foreign_chunks(home[0], target) if home else {}
    chroma = time.perf_counter()
    drift = join(listing, chunks, target, known_empty, foreign)
    drift.collections = read
    drift.seconds = {
        "list": listed - started,
        "chroma": chroma - listed,
        "join": time.perf_counter() - chroma,
    }
    return drift
