"""A collection re-embedded under another function without downtime: the copy filled, reconciled, swapped in and
caught up; context lines for chunks written before them; what earlier re-embeddings left.

May import: audit, chroma, chunking, lexicon, records, spec.
"""

from __future__ import annotations

from s3sync_dagster.pipeline.reembed.context_backfill import add_missing
from s3sync_dagster.pipeline.reembed.leftovers import drop_leftovers
from s3sync_dagster.pipeline.reembed.swap import (
    Abandoned,
    InTheWay,
    Progress,
    abandon,
    abandoned,
    begin,
    recover,
    run,
    underway,
    wait_for_swap,
)

__all__ = [
    "Abandoned",
    "InTheWay",
    "Progress",
    "abandon",
    "abandoned",
    "add_missing",
    "begin",
    "drop_leftovers",
    "recover",
    "run",
    "underway",
    "wait_for_swap",
]
