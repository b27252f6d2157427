"""The bucket against the index: the drift audit (keys missing, stale, gone; chunks misembedded or mislabelled),
and the plan before a sync (what it would do, with its estimated cost), writing nothing.

May import: chroma, chunking, extraction, lexicon, records, s3, spec, sync.
"""
