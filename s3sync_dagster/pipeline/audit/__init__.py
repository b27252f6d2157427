"""The bucket against the index: the drift audit (keys missing, stale, gone; chunks misembedded or mislabelled),
and the plan before a sync (what it would do, with its estimated cost), writing nothing.

May import: chroma, chunking, extraction, lexicon, records, s3, spec, sync.
"""

from __future__ import annotations

from s3sync_dagster.pipeline.audit.chunks import misembedded_partitions, rewritten
from s3sync_dagster.pipeline.audit.drift import Drift, audit, may_write, writer_of
from s3sync_dagster.pipeline.audit.estimates import EmbeddingRate, measure_rate
from s3sync_dagster.pipeline.audit.plan import Plan, index_frame, plan_source

__all__ = [
    "Drift",
    "EmbeddingRate",
    "Plan",
    "audit",
    "index_frame",
    "may_write",
    "measure_rate",
    "misembedded_partitions",
    "plan_source",
    "rewritten",
    "writer_of",
]
