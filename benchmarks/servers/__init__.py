"""The processes a benchmark (and a test) starts and stops: `dagster dev` or webserver and daemon apart,
a throw-away PostgreSQL, Celery workers on hosts of their own, a counting proxy in front of the moto server.

May import: common.
"""
