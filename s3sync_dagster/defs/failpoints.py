"""Fault injection for the reliability tests: a named point in the code kills its process group when asked to.

`S3SYNC_FAILPOINTS=sqs:received,...` in a process's environment makes each named point it reaches
behave like `kill -9` of the whole process group there (a daemon, its code server and run workers
share one), so a test can stop a sync at a chosen instant. Unset, a point costs one lookup.
"""

import os
import signal

FAILPOINTS_ENV = "S3SYNC_FAILPOINTS"


def reached(name: str) -> None:
    wanted = os.environ.get(FAILPOINTS_ENV)
    if wanted and name in wanted.split(","):
        os.killpg(os.getpgrp(), signal.SIGKILL)
