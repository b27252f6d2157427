"""A collection re-embedded under another function without downtime: the copy filled, reconciled, swapped in and
caught up; context lines for chunks written before them; what earlier re-embeddings left.

May import: audit, chroma, chunking, lexicon, records, spec.
"""
