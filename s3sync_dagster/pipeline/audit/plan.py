"""A plan before a sync: what a sync of a source would do now, read from its listing and its collection, writing
nothing: new, changed, deleted and unchanged objects, those it would refuse and why, bytes by kind, and estimates
of chunks, embedding time and the same work's price on Chroma Sync (pipeline/audit/estimates.py).

It is the sync's dry run: each selected object is counted as the sync's fetch (pipeline/sync/fetch.py) would decide it,
in the same order, and in one kind only. Which objects are new, changed or deleted is the drift audit's join
(pipeline/audit/drift.py: the listing's ETags against the chunks' `object_key`/`etag` in the source's collection):
- *archived*: in an archive storage class (GLACIER, DEEP_ARCHIVE by the listing's StorageClass): the sync's HEAD
  finds it unreadable and reads nothing more (a restore is not visible in a listing, and an INTELLIGENT_TIERING
  archive tier only in a HEAD);
- *refused*: what the sync fails: over `max_object_bytes` (checked on every object, as the sync does after its
  HEAD), or, of those it would read, of a format that is neither text nor a document
  (plan_estimates.UNSUPPORTED_SUFFIXES);
- *new*: selected and listed, without chunks (the audit's missing);
- *changed*: indexed at another ETag (stale; each document's first chunk is read, see `index_frame`), or at this
  ETag under other settings than the source's now (its chunks' `sync_signature`: chunking, the model's window,
  the pipeline's version, which decide the chunks), as the sync's `is_current` compares them;
- *relabel*: indexed and current, its labels (user metadata, tags, readers) changed in S3 alone: the sync writes
  them on the chunks, reading nothing else (one HEAD and one GetObjectTagging per indexed object, as the sync
  does; a source without labels asks nothing);
- *empty*: without chunks, and found empty at this ETag by its last materialisation: the sync reads it again
  (asked of the caller only for keys registered as partitions: no other has a materialisation);
- *deleted*: chunks whose object is gone from the bucket (orphaned); those whose object is still there but no
  longer selected are counted apart (`unselected`: a repair deletes them, a sync does not);
- *unchanged*: the rest of the selected objects (metadata files waiting for their document apart).

The collection's chunks are read while the bucket is listed (on a thread): after the listing, the plan is the
join, a few seconds at a million keys (benchmarks/scale/plan.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import s3sync_dagster.pipeline.audit.chunks as chunk_drift
import s3sync_dagster.pipeline.audit.drift as audit
import s3sync_dagster.pipeline.audit.estimates as estimates
from s3sync_dagster.pipeline.records import to_partition_key
from s3sync_dagster.pipeline.s3 import (
    ObjectError,
    ObjectInfo,
    S3Client,
    head_object,
    is_meta_key,
    list_objects,
    listed_as_archived,
    parse_meta_file,
    read_object,
)
from s3sync_dagster.pipeline.spec import sync_signature

if TYPE_CHECKING:
    import pandas as pd

    from s3sync_dagster.pipeline.spec import SourceSpec

COUNTED = ("new", "changed", "relabel", "deleted", "unchanged", "empty", "archived", "refused")
SHOWN = 1000  # keys listed per kind in a plan's JSON (every count is whole)
MEASURED = 100_000  # indexed objects at most that bytes per chunk are measured on


@dataclass(frozen=True)
class Refusal:
    object_key: str
    size: int
    reason: str


@dataclass
class Plan:
    """What a sync of one source would do now; key lists sorted."""

    source: str
    metadata_mode: bool
    listed: int  # objects the source selects in the bucket
    new: list[str]
    changed: list[str]
    deleted: list[str]
    unchanged: int
    archived: list[str]
    refused: list[Refusal]
    unselected: list[str] = field(default_factory=list)
    relabel: list[str] = field(default_factory=list)  # current, their labels alone changed in S3
    empty: list[str] = field(default_factory=list)  # without chunks, found empty at this ETag: read again
    waiting: int = 0  # metadata files naming a document not in the bucket yet (a sync indexes nothing)
    to_register: int | None = None  # selected keys not yet partitions of the source (None: not asked)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)  # the work (new + changed): objects, bytes
    chunks: dict[str, int] = field(default_factory=dict)  # estimated, by kind
    chunk_basis: dict[str, str] = field(default_factory=dict)  # bytes per chunk by kind, and whence
    embedding_seconds: float | None = None
    embedding_basis: str = "not measured"
    chroma_sync: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {
            "new": len(self.new),
            "changed": len(self.changed),
            "relabel": len(self.relabel),
            "deleted": len(self.deleted),
            "unchanged": self.unchanged,
            "empty": len(self.empty),
            "archived": len(self.archived),
            "refused": len(self.refused),
        }

    @property
    def chunk_total(self) -> int:
        return sum(self.chunks.values())

    def payload(self, shown: int = SHOWN) -> dict[str, Any]:
        """The plan as JSON: the counts at the top level, then the keys (the first `shown` of each kind)."""
        refusals = [{"object_key": r.object_key, "size": r.size, "reason": r.reason} for r in self.refused]
        return {
            "source": self.source,
            **self.counts(),
            "listed": self.listed,
            "unselected": len(self.unselected),
            "waiting": self.waiting,
            "to_register": self.to_register,
            "metadata_mode": self.metadata_mode,
            "bytes_by_kind": self.by_kind,
            "chunks": {"total": self.chunk_total, "by_kind": self.chunks, "bytes_per_chunk": self.chunk_basis},
            "embedding": {"seconds": self.embedding_seconds, "basis": self.embedding_basis},
            "chroma_sync": self.chroma_sync,
            "seconds": self.seconds,
            "keys": {
                "new": self.new[:shown],
                "changed": self.changed[:shown],
                "relabel": self.relabel[:shown],
                "deleted": self.deleted[:shown],
                "empty": self.empty[:shown],
                "unselected": self.unselected[:shown],
                "archived": self.archived[:shown],
                "refused": refusals[:shown],
            },
        }

    def table(self) -> str:
        """The plan as a short markdown table, then the estimates in words."""
        counts = self.counts()
        rows = ["| | objects | bytes |", "| --- | ---: | ---: |"]
        rows += [f"| {kind} | {n:,} | |" for kind, n in counts.items()]
        rows += [f"| work: {kind} | {t['objects']:,} | {t['bytes']:,} |" for kind, t in self.by_kind.items()]
        lines = [f"Plan for source '{self.source}': {self.listed:,} object(s) selected in the bucket.", "", *rows, ""]
        lines += [f"- refused: {r.object_key}: {r.reason}" for r in self.refused[:20]]
        if len(self.refused) > 20:
            lines.append(f"- ... and {len(self.refused) - 20:,} more refused")
        seconds = "n/a" if self.embedding_seconds is None else f"{self.embedding_seconds:,.1f} s"
        cost = self.chroma_sync
        lines += [
            f"- chunks (estimate): {self.chunk_total:,}; bytes per chunk: "
            + "; ".join(f"{kind} {basis}" for kind, basis in self.chunk_basis.items()),
            f"- embedding time (estimate): {seconds} ({self.embedding_basis})",
            f"- the same work on Chroma Sync: ${cost.get('total_usd', 0):,.2f} "
            f"({cost.get('gib', 0):.3f} GiB, {cost.get('pages', 0):,} page(s); {cost.get('terms', '')})",
        ]
        if self.metadata_mode:
            lines.append("- metadata mode: documents are indexed through their .meta.json files; none counted new")
        return "\n".join(lines)


def refusal(size: int, suffix: str, max_object_bytes: int) -> str | None:
    """Why a sync would fail an object it reads now (an archived one it does not read: counted apart), or None."""
    if size > max_object_bytes:
        return f"too large: {size:,} bytes is over max_object_bytes ({max_object_bytes:,})"
    if suffix in estimates.UNSUPPORTED_SUFFIXES:
        return f"unsupported: '{suffix}' is neither UTF-8 text nor a document format"
    return None


def make_plan(
    listing: pd.DataFrame,
    chunks: pd.DataFrame,
    target: SourceSpec,
    *,
    rate: estimates.EmbeddingRate | None = None,
    known_empty: audit.EmptyLookup | None = None,
    registered: Collection[str] | None = None,
    named: audit.NamedLookup | None = None,
    labelled: audit.LabelLookup | None = None,
    meta_signatures: MetaSignatures | None = None,
) -> Plan:
    """The plan from a listing (audit.frame_of) and the source's chunks (audit.chunk_frame), joined by the audit.

    registered: the source's partition keys (None: not known); known_empty is asked only for those of them.
    labelled: which indexed partitions' labels S3 changed (audit.LabelLookup; None: the source has no labels).
    meta_signatures: the signature a sync of each metadata file would write (`meta_signatures_of`; None: the
    documents of metadata files are left to their ETag).
    """
    found_empty: dict[str, str] = {}

    def empty_lookup(object_keys: Sequence[str]) -> Mapping[str, str]:
        if known_empty is None:
            return {}
        asked = [k for k in object_keys if registered is None or to_partition_key(k) in registered]
        found_empty.update(known_empty(asked))
        return found_empty

    drift = audit.join(listing, chunks, target, empty_lookup, None, named, None, labelled)
    selected = listing[listing["selected"]]
    listed = dict(zip(selected["object_key"], selected["etag"], strict=True))
    gone = set(drift.orphaned) - set(drift.unselected)
    # The sync's order: its HEAD finds the object archived (nothing more is read), then too large; then current?
    archived = {
        k for k, c in zip(selected["object_key"], selected["storage_class"], strict=True) if listed_as_archived(c)
    }
    refused = {
        key: refusal(size, "", target.max_object_bytes)
        for key, size in zip(selected["object_key"], selected["size"], strict=True)
        if key not in archived and size > target.max_object_bytes
    }
    for key, why in drift.unreadable.items():  # the sync reads labels before anything else it decides
        if key not in archived:
            refused.setdefault(key, f"labels cannot be read: {why}")
    missing = set(drift.missing or [])
    resettled = settings_changed(chunks, listed, target) | _meta_settings_changed(chunks, listed, meta_signatures)
    changed = (set(drift.stale or []) | resettled) - missing
    work = selected[selected["object_key"].isin((missing | changed) - archived - set(refused))]
    suffixes = estimates.suffixes_of(work["object_key"]) if len(work) else work["object_key"]
    for object_key, size, suffix in zip(work["object_key"], work["size"], suffixes, strict=True):
        reason = refusal(size, suffix, target.max_object_bytes)
        if reason is not None:
            refused[object_key] = reason
    settled = archived | set(refused)
    # As the audit excuses them: at this ETag, or a metadata file whose document was empty (its ETag is the document's).
    empty = {k for k, etag in found_empty.items() if listed.get(k) == etag or is_meta_key(k)}
    empty = empty - missing - changed - settled
    kinds = {
        "new": missing - settled,
        "changed": changed - settled,
        "relabel": set(drift.relabel or []) - missing - changed - settled - empty,
        "empty": empty,
    }
    counted = set().union(*kinds.values()) | settled | set(drift.waiting)
    sizes = dict(zip(selected["object_key"], selected["size"], strict=True))
    plan = Plan(
        source=target.name,
        metadata_mode=target.metadata_mode,
        listed=len(selected),
        new=sorted(kinds["new"]),
        changed=sorted(kinds["changed"]),
        deleted=sorted(gone),
        unchanged=len(set(listed) - counted),
        archived=sorted(archived),
        refused=sorted((Refusal(k, int(sizes[k]), str(r)) for k, r in refused.items()), key=lambda r: r.object_key),
        unselected=drift.unselected,
        relabel=sorted(kinds["relabel"]),
        empty=sorted(kinds["empty"]),
        waiting=len(drift.waiting),
    )
    if registered is not None:
        plan.to_register = sum(1 for k in selected["object_key"] if to_partition_key(k) not in registered)
    accepted = work[~work["object_key"].isin(set(refused))]
    _estimate(plan, accepted, _unchanged(selected, chunks, target, set(work["object_key"])), target, rate)
    return plan


def settings_changed(chunks: pd.DataFrame, listed: Mapping[str, str], target: SourceSpec) -> set[str]:
    """The objects indexed in the source's own collection at their listed ETag under other settings than a sync of
    them writes now: their chunks' `sync_signature` is not the source's (spec.sync_signature of a plain sync, as
    the sync's is_current compares it). A metadata file's document (its signature holds the file's own fields) and
    chunks that record none (`sync_signature` not read) are left to the ETag."""
    if "sync_signature" not in chunks or chunks.empty:
        return set()
    wanted = sync_signature(target, None, {})
    home = chunks[(chunks["collection"] == target.collection_name) & (chunks["metadata_key"] == "")]
    at_etag = home[home["object_key"].map(listed) == home["etag"]]
    return set(at_etag.loc[at_etag["sync_signature"] != wanted, "object_key"])


# Metadata file keys -> the sync signature a sync of each would write for its document (unreadable ones left out).
MetaSignatures = Callable[[Sequence[str]], Mapping[str, str]]


def _meta_settings_changed(
    chunks: pd.DataFrame, listed: Mapping[str, str], meta_signatures: MetaSignatures | None
) -> set[str]:
    """The metadata files whose document is indexed at its listed ETag under another signature than a sync of the
    file writes now (the source's settings changed, or the file's own fields: its id, metadata, target)."""
    if meta_signatures is None or "sync_signature" not in chunks or chunks.empty:
        return set()
    sent = chunks[chunks["metadata_key"] != ""]
    at_etag = sent[sent["object_key"].map(listed) == sent["etag"]]
    recorded = dict(zip(at_etag["metadata_key"], at_etag["sync_signature"], strict=True))
    wanted = meta_signatures(sorted(recorded))
    return {
        meta_key for meta_key, signature in recorded.items() if meta_key in wanted and wanted[meta_key] != signature
    }


def meta_signatures_of(s3: S3Client, target: SourceSpec, meta_keys: Sequence[str]) -> dict[str, str]:
    """The signature a sync of each metadata file writes for its document (fetch's `sync_signature` of the file's
    id, metadata and target): one HEAD and one GET of each, as the sync's, on a few threads. A file that cannot be
    read or is not valid is left out: a sync of it says what is wrong."""
    from s3sync_dagster.pipeline.records import validate_user_metadata

    def signature(meta_key: str) -> str | None:
        try:
            info = head_object(s3, target.bucket_name, meta_key)
            data = read_object(s3, target.bucket_name, info, audit.MAX_META_FILE_BYTES)
            meta = parse_meta_file(meta_key, data, target.path_prefix)
            metadata = validate_user_metadata(meta.metadata or {}, f"metadata file '{meta_key}'")
        except (ObjectError, ValueError):
            return None
        return sync_signature(target, meta.document_id, metadata, meta_key, meta.target_collection_name)

    if not meta_keys:
        return {}
    with ThreadPoolExecutor(min(chunk_drift.LABEL_THREADS, len(meta_keys)), thread_name_prefix="s3sync-plan") as pool:
        found = dict(zip(meta_keys, pool.map(signature, meta_keys), strict=True))
    return {meta_key: signature for meta_key, signature in found.items() if signature is not None}


def _unchanged(selected: pd.DataFrame, chunks: pd.DataFrame, target: SourceSpec, work: set[str]) -> pd.DataFrame:
    """Objects indexed at their listed ETag in the source's collection (kind, size, chunks), which bytes per chunk
    are measured on: MEASURED of them at most, evenly spread over the listing (a million keys' kinds cost seconds
    and tell no more)."""
    candidates = selected[~selected["object_key"].isin(work)]
    step = max(1, -(-len(candidates) // MEASURED))
    sample = candidates.iloc[::step][["object_key", "etag", "size"]]
    home = chunks.loc[chunks["collection"] == target.collection_name, ["object_key", "etag", "chunks"]]
    indexed = sample.merge(home, on=["object_key", "etag"], how="inner")
    indexed = indexed.groupby(["object_key", "etag"], sort=False).agg(size=("size", "first"), chunks=("chunks", "sum"))
    indexed = indexed.reset_index()
    return indexed.assign(kind=estimates.kinds(indexed["object_key"]) if len(indexed) else indexed["object_key"])


def _estimate(
    plan: Plan,
    accepted: pd.DataFrame,
    unchanged: pd.DataFrame,
    target: SourceSpec,
    rate: estimates.EmbeddingRate | None,
) -> None:
    """Bytes by kind, chunks, embedding time and the Chroma Sync price of the accepted work."""
    kinds = estimates.kinds(accepted["object_key"]) if len(accepted) else accepted["object_key"]
    accepted = accepted.assign(kind=kinds)
    totals = accepted.groupby("kind")["size"].agg(["count", "sum"])
    plan.by_kind = {
        str(kind): {"objects": int(row["count"]), "bytes": int(row["sum"])} for kind, row in totals.iterrows()
    }
    rates = estimates.chunk_rates(unchanged, target)
    plan.chunks = estimates.estimate_chunks(plan.by_kind, rates)
    plan.chunk_basis = {kind: f"{r.bytes_per_chunk:,.0f} ({r.basis})" for kind, r in rates.items()}
    if rate is not None:
        plan.embedding_seconds = round(plan.chunk_total / rate.chunks_per_second, 1)
        plan.embedding_basis = f"{rate.chunks_per_second:,.1f} chunks/s, {rate.basis}"
    documents = accepted[accepted["kind"] == "document"]
    plan.chroma_sync = estimates.chroma_sync_cost(int(accepted["size"].sum()), estimates.pages(documents))


def index_frame(collection: Any | None, target: SourceSpec) -> pd.DataFrame:
    """The source's documents in its own collection (None: not made yet) as the audit's join reads them: each one's
    first chunk only, with the chunks it records, sorted by owner here. The read follows the documents, not their
    chunks (a third of the time at 3 chunks a document), and Chroma answers this one-field filter as fast as none,
    where the owner's (source and bucket, an `$and`) read 100,000 chunks 4 times slower (benchmarks/scale/plan.py). A
    document missing some of its chunks (a write cut short) is the drift audit's to find: here it looks whole."""
    return audit.chunk_frame(
        [collection] if collection is not None else [], target, first_chunks=True,
        label_keys=chunk_drift.frame_label_keys(target), signatures=True,
    )  # fmt: skip


def plan_source(
    s3: S3Client,
    target: SourceSpec,
    read_index: Callable[[], pd.DataFrame],
    *,
    measure: Callable[[], estimates.EmbeddingRate] | None = None,
    known_empty: audit.EmptyLookup | None = None,
    registered: Callable[[], Collection[str]] | None = None,
    listing: Iterable[ObjectInfo] | None = None,
) -> Plan:
    """List the bucket while the index is read (and the embedding rate measured) on a thread, then plan.

    listing: the bucket's objects under the prefix as given (a benchmark's), instead of listing the bucket.
    """
    started = time.perf_counter()
    ahead_seconds: dict[str, float] = {}

    def ahead() -> tuple[pd.DataFrame, estimates.EmbeddingRate | None]:
        began = time.perf_counter()
        chunks = read_index()
        ahead_seconds["chroma"] = time.perf_counter() - began
        began = time.perf_counter()
        rate = measure() if measure is not None else None
        ahead_seconds["embedding_sample"] = time.perf_counter() - began
        return chunks, rate

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3sync-plan") as pool:
        reading = pool.submit(ahead)
        rows = listing if listing is not None else list_objects(s3, target.bucket_name, target.path_prefix)
        frame = audit.frame_of(rows, target)
        listed = time.perf_counter()
        chunks, rate = reading.result()
    partitions = registered() if registered is not None else None
    plan = make_plan(
        frame,
        chunks,
        target,
        rate=rate,
        known_empty=known_empty,
        registered=partitions,
        named=lambda meta_keys: audit.named_documents(s3, target, meta_keys),
        labelled=chunk_drift.lookup(s3, target),
        meta_signatures=lambda meta_keys: meta_signatures_of(s3, target, meta_keys),
    )
    finished = time.perf_counter()
    plan.seconds = {
        "list": round(listed - started, 3),
        **{name: round(seconds, 3) for name, seconds in ahead_seconds.items()},
        "after_listing": round(finished - listed, 3),
        "total": round(finished - started, 3),
    }
    return plan
