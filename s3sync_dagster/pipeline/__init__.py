"""The engine: plain functions and classes, no Dagster import. One sub-package per stage of a key's way
into Chroma and of a query's way out, each importing only those below it (s3sync_dagster_tests/house/test_layers.py
reads each one's "May import" line and fails on any other import):

    chunking, extraction        text cut into chunks; documents turned into text         (nothing of the engine)
    extras                      an optional feature's missing extra, named               (a module)
    embedding, lexicon          vectors from text; words from text and their index
    records                     a chunk's ids, owner and metadata rules
    s3                          what S3 and SQS say: objects, listings, events, roles, archive
    spec                        what the engine knows of a source                        (a module)
    chroma                      a collection's chunks: lifecycle, stored, vectors, claims, labels, the write
    search, sync                a query answered; a run's keys synced, stage by stage
    audit                       the bucket against the index, and the plan before a sync
    reembed                     a collection re-embedded without downtime, and what it leaves
    store                       the Chroma store a config names: client, collections, locks  (a module)
"""
