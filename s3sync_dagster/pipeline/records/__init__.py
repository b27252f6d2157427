"""A chunk's record: object key <-> partition key and the chunk id scheme, the owner every read and write follows,
and the metadata keys we reserve and the rules for an object's own metadata.

May import: chunking.
"""
