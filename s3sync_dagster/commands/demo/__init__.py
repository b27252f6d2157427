"""The demo: a local S3 (and SQS) endpoint on a loopback port (a moto server, also the tests'), and `s3sync demo`
itself (the bundled sample in `commands/demo_data/`, a sync into embedded Chroma, one query).

May import: errors, query, runs.
"""
