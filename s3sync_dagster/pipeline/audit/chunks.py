"""The drift audit's look at what chunks hold, beyond the ETag they were written at: a text whose recorded hash
is not its own (`misembedded`), and labels that are not the ones S3 gives the object now (`relabel`).

Both are repaired the same way, from S3, never from what the chunk holds: a sync of the partition reads the
object again and writes its chunks from what S3 holds (a misembedded chunk is deleted first, so the sync writes it
anew, its vector from the model or from a chunk whose hash is sound), or updates their labels alone when the ETag
is current (pipeline/sync/fetch.py). The audit reads no object's body, so what only the body could tell is not seen:
a text edited together with a hash made to match it, or a vector changed alone (see docs/reliability.md).

Labels cost one HEAD and, for a source that reads tags, one GetObjectTagging per indexed object, on a few
threads; a source without labels asks nothing. The rule for what a chunk should carry is pipeline/chroma/labels.py's
(`object_labels`, `changed`), never a copy of it, so the audit and the sync's label update agree on what differs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline import chroma
from s3sync_dagster.pipeline.chroma import StoredChunk, batches, changed, max_batch_size, misembedded, object_labels
from s3sync_dagster.pipeline.records import Owner
from s3sync_dagster.pipeline.s3 import ObjectMissing, S3Client, head_object, is_meta_key
from s3sync_dagster.pipeline.spec import SourceSpec

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

# Under botocore's default pool of 10 connections a client, so no request waits for a connection.
LABEL_THREADS = 8

# A partition -> (its document's object key, the distinct label sets its chunks carry: label key -> value).
Carried = Mapping[str, tuple[str, Sequence[Mapping[str, Any]]]]


def misembedded_partitions(collection: Collection, owner: Owner) -> dict[str, str]:
    """The owner's misembedded chunks in the collection (vectors.misembedded: their recorded text hash is not
    their stored text's), each with its partition (the `.meta.json` that sent it, else its object key)."""
    found: dict[str, str] = {}
    for part in batches(misembedded(collection, owner), max_batch_size(collection)):
        got = collection.get(ids=list(part), include=["metadatas"])
        for chunk_id, metadata in zip(got["ids"], got.get("metadatas") or [], strict=True):
            found[chunk_id] = str((metadata or {}).get("metadata_key") or (metadata or {}).get("object_key", ""))
    return found


def rewritten(spec: SourceSpec, collection_name: str, partition: str) -> bool:
    """Whether a sync of the partition writes its chunks in this collection: a metadata file's, wherever it sent
    them; an object's, in the source's own collection (in metadata mode documents are no partitions). An
    invocation's chunks in another collection are not: no sync of the source could write them again."""
    own = collection_name == spec.collection_name and not spec.metadata_mode
    return is_meta_key(partition) or own


def label_set(metadata: Mapping[str, Any], label_keys: Sequence[str]) -> str:
    """The labels a chunk carries, as JSON: a cell pandas can group by (`readers`, a list, survives the trip)."""
    return json.dumps({key: metadata[key] for key in label_keys if metadata.get(key) is not None}, sort_keys=True)


def carried(partitions: Iterable[str], object_keys: Iterable[str], label_sets: Iterable[str]) -> Carried:
    """Rows of the audit's chunk frame (partition, document key, label_set's JSON) as each partition's document
    and the distinct label sets its chunks carry."""
    found: dict[str, tuple[str, list[Mapping[str, Any]]]] = {}
    for partition, object_key, labels_json in zip(partitions, object_keys, label_sets, strict=True):
        found.setdefault(partition, (object_key, []))[1].append(json.loads(labels_json))
    return found


def frame_label_keys(spec: SourceSpec) -> list[str]:
    """The label keys the audit's chunk frame reads for a source (none for a source without labels)."""
    return sorted(chroma.label_keys(spec)) if chroma.wanted(spec) else []


def label_drift(s3: S3Client, spec: SourceSpec, carried: Carried) -> dict[str, str | None]:
    """The partitions whose chunks' labels are not what S3 gives their object now, each with None, or with why
    S3's labels cannot be read (a readers tag that breaks the rule for a principal, a refused GetObjectTagging):
    such chunks cannot be shown to carry S3's labels, and a sync of the key fails, closing them where labels.py
    says so. An object gone since the listing is not label drift (the next audit finds its chunks orphaned)."""
    if not carried or not chroma.wanted(spec):
        return {}
    partitions = sorted(carried)
    with ThreadPoolExecutor(min(LABEL_THREADS, len(partitions)), thread_name_prefix="s3sync-audit-labels") as pool:
        found = pool.map(lambda partition: _labels_differ(s3, spec, *carried[partition]), partitions)
        return {partition: why for partition, (differ, why) in zip(partitions, found, strict=True) if differ}


def lookup(s3: S3Client, spec: SourceSpec) -> Callable[[Carried], Mapping[str, str | None]] | None:
    """The audit's relabel lookup of a source (label_drift; None: it has no labels to compare)."""
    return (lambda carried: label_drift(s3, spec, carried)) if chroma.wanted(spec) else None


def _labels_differ(
    s3: S3Client, spec: SourceSpec, object_key: str, label_sets: Sequence[Mapping[str, Any]]
) -> tuple[bool, str | None]:
    """Whether chunks carrying these label sets differ from what S3 gives the object now (labels.changed), and
    why S3's cannot be read where they cannot. An archived object's labels are read as any other's: its chunks
    stay searchable, so who may read them follows its tags (pipeline/sync/fetch.py)."""
    try:
        info = head_object(s3, spec.bucket_name, object_key)
        wanted = object_labels(s3, spec, info, None)
    except ObjectMissing:
        return False, None
    except Exception as error:  # any failure to read one object's labels is that object's drift, never the audit's
        return True, str(error) or type(error).__name__
    stored = {str(n): StoredChunk(str(n), None, label_set) for n, label_set in enumerate(label_sets)}
    return bool(changed(spec, stored, wanted)), None
