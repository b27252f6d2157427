"""A run's keys in the order they are synced: each once, and the metadata files naming a document queued after it."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from s3sync_dagster.pipeline.s3 import MetaLinks, is_meta_key


class Worklist:
    """The keys still to sync, in order, each once; a document's metadata files (as the links name them, or as
    its sync found them) are queued after it, and each remembers the document it named when the run began."""

    def __init__(self, object_keys: Iterable[str], links: MetaLinks) -> None:
        self._keys = deque(dict.fromkeys(object_keys))
        self._queued = set(self._keys)
        # The metadata files naming each document of the run (not .meta.json keys themselves), as the links say.
        self.naming = links.naming(key for key in self._keys if not is_meta_key(key))
        self._named_document = {meta_key: document for document, metas in self.naming.items() for meta_key in metas}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def popleft(self) -> str:
        return self._keys.popleft()

    def then_sync(self, document_key: str, meta_keys: list[str]) -> None:
        """The metadata files naming a document are synced after it, in this run."""
        for meta_key in meta_keys:
            self._named_document.setdefault(meta_key, document_key)
            if meta_key not in self._queued:
                self._keys.append(meta_key)
                self._queued.add(meta_key)

    def named_document(self, meta_key: str) -> str | None:
        """The document a metadata file of the run was known to name (None for any other key)."""
        return self._named_document.get(meta_key)
