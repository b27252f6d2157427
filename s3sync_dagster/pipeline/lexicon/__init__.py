"""The lexical index: how text becomes terms, and the index of each chunk's words (SQLite FTS5 beside an
embedded store, PostgreSQL for a `chroma run` server) that lexical search reads.

May import: chunking, extras.
"""

from __future__ import annotations

from s3sync_dagster.pipeline.lexicon.embedded import (
    FILE,
    READ_PAGE,
    LexicalIndex,
    attach,
    attach_index,
    detach,
    mirrored,
    of,
    rebuild_all,
    served,
)
from s3sync_dagster.pipeline.lexicon.postgres import serve
from s3sync_dagster.pipeline.lexicon.terms import (
    STEM_MARK,
    fold,
    indexed_forms,
    query_terms,
    scoring_terms,
    stem,
    stopwords,
    term_counts,
    term_pattern,
    words,
)

__all__ = [
    "FILE",
    "READ_PAGE",
    "STEM_MARK",
    "LexicalIndex",
    "attach",
    "attach_index",
    "detach",
    "fold",
    "indexed_forms",
    "mirrored",
    "of",
    "query_terms",
    "rebuild_all",
    "scoring_terms",
    "serve",
    "served",
    "stem",
    "stopwords",
    "term_counts",
    "term_pattern",
    "words",
]
