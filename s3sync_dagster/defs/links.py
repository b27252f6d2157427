"""The `.meta.json` -> document links of a source (pipeline/s3/meta_links.py), kept in the Dagster instance.

They live in the instance's key-value store, beside the sensors' cursors, so the daemon, the
webserver and runs on other hosts share them; one entry per document: its key's hash -> the
metadata files naming it, as JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import dagster as dg

from s3sync_dagster.defs.state import InstanceKeyValues


class InstanceMetaLinks:
    def __init__(self, instance: dg.DagsterInstance, source_name: str) -> None:
        self._store = InstanceKeyValues(instance, f"s3sync/{source_name}/meta-links/")

    def _entry(self, document_key: str) -> str:
        return hashlib.sha256(document_key.encode()).hexdigest()[:40]

    def _read(self, document_keys: Iterable[str]) -> dict[str, list[str]]:
        by_entry = {self._entry(key): key for key in document_keys}
        if not by_entry:
            return {}
        stored = self._store.get_many(set(by_entry))
        found: dict[str, list[str]] = {}
        for entry, value in stored.items():
            document_key = by_entry.get(entry)
            meta_keys = json.loads(value) if value else []
            if document_key is not None and meta_keys:
                found[document_key] = list(meta_keys)
        return found

    def naming(self, document_keys: Iterable[str]) -> dict[str, list[str]]:
        return self._read(document_keys)

    def link(self, document_key: str, meta_key: str) -> None:
        meta_keys = self._read([document_key]).get(document_key, [])
        if meta_key not in meta_keys:
            self._store.set_many({self._entry(document_key): json.dumps([*meta_keys, meta_key])})

    def unlink(self, document_key: str, meta_key: str) -> None:
        meta_keys = self._read([document_key]).get(document_key, [])
        if meta_key in meta_keys:
            meta_keys.remove(meta_key)
            self._store.set_many({self._entry(document_key): json.dumps(meta_keys)})
