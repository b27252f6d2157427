"""The lexical index: how text becomes terms, and the index of each chunk's words (SQLite FTS5 beside an
embedded store, PostgreSQL for a `chroma run` server) that lexical search reads.

May import: chunking, extras.
"""
