"""The collections a sync writes to and searches, each opened once (by the store: pipeline/store.py), and whether a
re-embedding's swap replaced one meanwhile (whether a source may take a document id there is chroma/claims.py's to
say: `check_id_free`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from s3sync_dagster.pipeline.chroma import could_not_ask

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

CollectionFor = Callable[[str], "Collection"]


class Collections:
    """The collections a sync writes to, opened once each; knows the others a removal must search.

    A `.meta.json` may route an object to any target collection, and once the object is deleted
    nothing says which: its chunks are then looked for in every collection this source wrote to.
    """

    def __init__(self, open_collection: CollectionFor, list_names: Callable[[], Iterable[str]] | None = None) -> None:
        self._open = open_collection
        self._list_names = list_names
        self._opened: dict[str, Collection] = {}
        self._lock = threading.Lock()  # a sync's staging thread opens collections too

    def __call__(self, name: str) -> Collection:
        with self._lock:
            if name not in self._opened:
                self._opened[name] = self._open(name)
            return self._opened[name]

    def swapped(self) -> list[str]:
        """The collections opened here that the name no longer holds: a re-embedding's swap put its copy there
        (pipeline/reembed/swap.py), and writes to the old one would fail or be dropped with it."""
        with self._lock:
            opened = dict(self._opened)
        changed = []
        for name, collection in opened.items():
            try:
                if self._open(name).id != collection.id:
                    changed.append(name)
            except Exception as error:
                if could_not_ask(error):
                    # The store did not answer (gone, cut off): no swap is known. The keys it failed said so; the
                    # ones written stand, and a swap done meanwhile is followed by the next sync's skip check.
                    continue
                changed.append(name)  # gone: the retry says what is wrong
        return changed

    def refresh(self, names: Iterable[str]) -> None:
        """Open these collections again at their next use (the swapped-in ones)."""
        with self._lock:
            for name in names:
                self._opened.pop(name, None)

    def searchable(self, default: str) -> list[Collection]:
        found = [self(default)]
        for name in self._list_names() if self._list_names else []:
            if name != default:
                try:
                    found.append(self(name))
                except Exception:  # not ours (another embedding function): none of our chunks there
                    continue
        return found


def searchable(collection_for: CollectionFor, default: str) -> list[Collection]:
    if isinstance(collection_for, Collections):
        return collection_for.searchable(default)
    return [collection_for(default)]
