"""s3sync-dagster: keep Chroma collections in sync with S3. `S3ChromaSync` is the Dagster component (`dg` finds it
through the `dagster_dg_cli.registry_modules` entry point); `read_index` says what a source's collection holds, for
an asset of yours downstream of the source's. Each is imported only when asked for, so the `s3sync` command and the
engine do not pay for Dagster's component machinery."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Each public name, and the module that holds it.
_HOMES = {
    "S3ChromaSync": "s3sync_dagster.definitions",
    "read_index": "s3sync_dagster.definitions",
    "IndexSummary": "s3sync_dagster.defs.index_view",
    "IndexedDocument": "s3sync_dagster.defs.index_view",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 's3sync_dagster' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
