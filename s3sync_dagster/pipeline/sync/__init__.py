"""A run's keys synced, as named stages joined in `stages.sync_keys`: the worklist (each key once, metadata files
after their document), fetch, the read stage run ahead (staging), extract and chunk (extracting), write, settle
(synced again until the stored chunks are the bucket's), and each key's report.

May import: chroma, chunking, extraction, records, s3, spec.
"""
