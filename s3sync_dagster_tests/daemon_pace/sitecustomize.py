"""The tests' Dagster daemons look for backfill work every few seconds, not every 30.

Dagster's backfill daemon sleeps a constant 30 s between looks (`DEFAULT_DAEMON_INTERVAL_SECONDS`, no instance
setting reaches it), so a backfill of two keys took a minute to be submitted and another to be marked done: 14
backfills waited for in the suite, ~14 minutes of its workers' time spent asleep. The suite's conftest puts this
folder on PYTHONPATH and sets S3SYNC_TEST_DAEMON_INTERVAL_S; a Python process started under it (`dagster dev`'s
`python -m dagster._daemon`, `dagster-daemon`, `dg dev`'s) then sets the constant when Dagster's daemon module is
first imported. Nothing else changes: the same daemon and backfill code run, at a shorter pace. Any other process
only gains a finder that answers None. Should a Dagster release move the constant, the daemons run at Dagster's
own pace and the tests are slower, not wrong. Benchmarks and users' deployments never load this file.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any

INTERVAL_ENV = "S3SYNC_TEST_DAEMON_INTERVAL_S"
MODULE = "dagster._daemon.controller"
CONSTANT = "DEFAULT_DAEMON_INTERVAL_SECONDS"


class Paced(importlib.abc.MetaPathFinder):
    """Finds Dagster's daemon controller as the other finders do, and sets its interval once it has run."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        run_module = loader.exec_module
        seconds = self.seconds

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            if isinstance(getattr(module, CONSTANT, None), int):
                setattr(module, CONSTANT, seconds)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if (os.environ.get(INTERVAL_ENV) or "").isdigit():
    sys.meta_path.insert(0, Paced(int(os.environ[INTERVAL_ENV])))
