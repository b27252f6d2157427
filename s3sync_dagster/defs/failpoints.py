"""Fault injection for the reliability tests: a named point in the code kills its process group when asked to.

`S3SYNC_FAILPOINTS=sqs:received,...` in a process's environment makes each named point it reaches
behave like `kill -9` of the whole process group there (a daemon, its code server and run workers
share one), so a test can stop a sync at a chosen instant. Unset, a point costs one lookup.
A point reached through `fails_once` raises instead, the first time in a process: a run that fails as a
whole (its worker lost) while the process that started it lives on. A point reached through `holds` waits
instead, each time the test has armed it (S3SYNC_FAILPOINT_HOLDS: a folder), while a file it writes is there:
the test acts meanwhile (cuts the process's network link, say) and removes the file to let it go on.
"""

import os
import signal
import time
from pathlib import Path

FAILPOINTS_ENV = "S3SYNC_FAILPOINTS"
# The folder of the armed points (a file each, named as the point with ':' as '-') and of the held ones.
HOLDS_ENV = "S3SYNC_FAILPOINT_HOLDS"
HOLD_S = 300  # a held point goes on by itself after this, whatever the test does


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


def holds(name: str) -> None:
    """Where armed (the file `<folder>/<name>` there, made by the test): the file is taken, `<name>-<pid>` written
    in its place, and the process waits until that is removed (or HOLD_S has passed)."""
    folder = os.environ.get(HOLDS_ENV)
    if not folder or not _wanted(name):
        return
    armed = Path(folder) / name.replace(":", "-")
    try:
        armed.unlink()
    except FileNotFoundError:
        return
    marker = Path(folder) / f"{armed.name}-{os.getpid()}"
    marker.write_text(f"failpoint {name} holds process {os.getpid()} until this file is removed\n")
    deadline = time.monotonic() + HOLD_S
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
