"""The benchmarks: `python -m benchmarks.run` (add `--smoke` for the tiny version the suite runs) writes
RESULTS.md; `common` is what every area shares (a moto server, a filled bucket, a config, the machine). By area:

    servers     the processes a benchmark starts: dagster dev, PostgreSQL, Celery workers, a counting S3 proxy
    sync        bulk sync speed: throughput, incremental, in-run embedding, writers, FLOPs, before/after
    latency     upload -> queryable, with the SQS sensor and daemon
    retrieval   whether a search finds the answer, and what it costs
    scale       many keys, a million keys, the audit and plan at scale, across hosts, the reliability table
"""
