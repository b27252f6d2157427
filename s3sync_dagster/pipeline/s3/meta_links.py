"""Which `.meta.json` files name which document: how a document's upload or deletion finds its metadata files.

Each metadata file is its own document in Chroma (its `id`, its metadata, its target collection), and
it may arrive before the object it names: its sync then indexes nothing and says it is waiting. A
document's later upload (or change, or deletion) must complete, refresh or empty what its metadata
files asked for, so every sync of a metadata file records the document it names here, and a sync of a
document looks itself up. A link left by a metadata file that changed or vanished is harmless: syncing
that file again finds it no longer names the document and drops the link.

Where the links live is the caller's choice (the Dagster instance's key-value store in runs and
sensors, a dict in engine tests); the engine needs only these three operations.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class MetaLinks(Protocol):
    def naming(self, document_keys: Iterable[str]) -> dict[str, list[str]]:
        """For each document key, the metadata files that named it (keys with none are absent)."""

    def link(self, document_key: str, meta_key: str) -> None: ...

    def unlink(self, document_key: str, meta_key: str) -> None: ...


class InMemoryMetaLinks:
    """The links as a plain dict: for engine tests and syncs with no instance."""

    def __init__(self) -> None:
        self.by_document: dict[str, list[str]] = {}

    def naming(self, document_keys: Iterable[str]) -> dict[str, list[str]]:
        return {key: list(self.by_document[key]) for key in document_keys if self.by_document.get(key)}

    def link(self, document_key: str, meta_key: str) -> None:
        metas = self.by_document.setdefault(document_key, [])
        if meta_key not in metas:
            metas.append(meta_key)

    def unlink(self, document_key: str, meta_key: str) -> None:
        metas = self.by_document.get(document_key, [])
        if meta_key in metas:
            metas.remove(meta_key)
        if not metas:
            self.by_document.pop(document_key, None)
