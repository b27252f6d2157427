"""A run's keys synced, as named stages joined in `stages.sync_keys`: the worklist (each key once, metadata files
after their document), fetch, the read stage run ahead (staging), extract and chunk (extracting), write, settle
(synced again until the stored chunks are the bucket's), each key's report, and the collections a run writes to
(targets).

May import: chroma, chunking, extraction, records, s3, spec.
"""

from __future__ import annotations

from s3sync_dagster.pipeline.sync.fetch import MAX_META_FILE_BYTES
from s3sync_dagster.pipeline.sync.reports import KeyReport
from s3sync_dagster.pipeline.sync.stages import sync_keys, sync_keys_following_swaps
from s3sync_dagster.pipeline.sync.targets import CollectionFor, Collections
from s3sync_dagster.pipeline.sync.write import BATCH_CHUNKS, BATCH_OBJECTS, batch_is_full

__all__ = [
    "BATCH_CHUNKS",
    "BATCH_OBJECTS",
    "MAX_META_FILE_BYTES",
    "CollectionFor",
    "Collections",
    "KeyReport",
    "batch_is_full",
    "sync_keys",
    "sync_keys_following_swaps",
]
