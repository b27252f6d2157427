"""Fault injection for the reliability tests: a named point in the code kills its process group when asked to.

`S3SYNC_FAILPOINTS=sqs:received,...` in a process's environment makes each named point it reaches
behave like `kill -9` of the whole process group there (a daemon, its code server and run workers
share one), so a test can stop a sync at a chosen instant. Unset, a point costs one lookup.
A point reached through `fails_once` raises instead, the first time in a process: a run that fails as a
whole (its worker lost) while the process that started it lives on.
"""

import os
import signal

FAILPOINTS_ENV = "S3SYNC_FAILPOINTS"


class FailpointError(RuntimeError):
    """Raised where a test asked a point to fail (`fails_once`)."""


_failed: set[str] = set()


def _wanted(name: str) -> bool:
    wanted = os.environ.get(FAILPOINTS_ENV)
    return bool(wanted) and name in str(wanted).split(",")


def fails_once(name: str) -> None:
    if _wanted(name) and name not in _failed:
        _failed.add(name)
        raise FailpointError(f"failpoint {name}: this run fails here, as if its worker were lost (a test asked)")


def reached(name: str) -> None:
    if _wanted(name):
        os.killpg(os.getpgrp(), signal.SIGKILL)
