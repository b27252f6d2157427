"""Searching a source: `SourceSearch` / `search_source` for applications (importing no Dagster), and the
resident query process that keeps the store, the lexical index and the model open between `s3sync query` calls.

May import: errors.
"""
