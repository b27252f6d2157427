"""s3sync-dagster: keep Chroma collections in sync with S3. `S3ChromaSync` is the Dagster component (`dg` finds it
through the `dagster_dg_cli.registry_modules` entry point); it is imported only when asked for, so the `s3sync`
command and the engine do not pay for Dagster's component machinery."""

from __future__ import annotations

from typing import Any

__all__ = ["S3ChromaSync"]


def __getattr__(name: str) -> Any:
    if name == "S3ChromaSync":
        from s3sync_dagster.definitions import S3ChromaSync

        return S3ChromaSync
    raise AttributeError(f"module 's3sync_dagster' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
