"""Search: finding chunks by their meaning and by their exact words. The entry (`query`: `search()` and its
modes), the dense and lexical sides, Chroma Cloud's sparse index, their fusion, the filter a search applies, hits per
object with the passage that answers.

May import: chroma, chunking, lexicon, records.
"""

from __future__ import annotations

from s3sync_dagster.pipeline.search.filters import all_of, checked_where, readable_by, search_filter
from s3sync_dagster.pipeline.search.fusion import (
    FUSION,
    Candidate,
    Candidates,
    Fusion,
    fuse,
    fuse_scored,
    scored_candidates,
)
from s3sync_dagster.pipeline.search.hits import Context, Hit, with_context, with_passages
from s3sync_dagster.pipeline.search.passages import marked
from s3sync_dagster.pipeline.search.query import MODES, Mode, search
from s3sync_dagster.pipeline.search.sparse import hybrid_schema

__all__ = [
    "FUSION",
    "MODES",
    "Candidate",
    "Candidates",
    "Context",
    "Fusion",
    "Hit",
    "Mode",
    "all_of",
    "checked_where",
    "fuse",
    "fuse_scored",
    "hybrid_schema",
    "marked",
    "readable_by",
    "scored_candidates",
    "search",
    "search_filter",
    "with_context",
    "with_passages",
]
