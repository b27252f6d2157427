"""What the `s3sync` command reports in one line (cli.main): kept apart from the modules that import Dagster,
so that a command that needs none of it (`s3sync query`) does not import it to catch them."""

from __future__ import annotations

from typing import Any


class UsageError(ValueError):
    """The request itself is wrong (a key outside the source's prefix, ...): nothing was run."""


class RunError(RuntimeError):
    """A run failed as a whole (the store cannot be reached, ...), not key by key: the next runs are not tried.

    `result`: what the sync did before (`sync` sets it: a runner.SyncResult, which imports Dagster): the keys
    the runs before it synced or failed, and those not tried.
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class InvocationError(ValueError):
    """The invocation breaks a rule (prefix, custom id, metadata, target, a missing object): nothing ran."""
