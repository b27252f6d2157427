"""A collection's chunks in Chroma: collections opened, created and rebuilt (lifecycle), chunks as stored and read
back by owner, vectors by text hash, who may write where (claims), the collections a source writes and searches,
labels (metadata, tags, readers), Chroma Cloud's limits, and the write that replaces an object's chunks exactly.

May import: chunking, lexicon, records, s3, spec.
"""
