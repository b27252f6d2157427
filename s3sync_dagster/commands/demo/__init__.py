"""The demo: a local S3 (and SQS) endpoint on a loopback port (a moto server, also the tests'), and `s3sync demo`
itself (the bundled sample in `commands/demo_data/`, a sync into embedded Chroma, one query).

May import: errors, query, runs.
"""

from __future__ import annotations

from s3sync_dagster.commands.demo.local_s3 import LOOPBACK, free_port, running, start
from s3sync_dagster.commands.demo.run import run_demo

__all__ = ["LOOPBACK", "free_port", "run_demo", "running", "start"]
