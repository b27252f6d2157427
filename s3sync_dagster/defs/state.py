"""State the sources keep in the Dagster instance's key-value store, beside the sensors' cursors.

There the daemon, the webserver and runs on other hosts share it (the instance root is one host's
disk). Each kind of state gets its own name prefix per source: `s3sync/<source>/poll/` for the poll
sensor's listing state (pipeline/s3/poll.py), `s3sync/<source>/meta-links/` for the metadata links.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import dagster as dg

from s3sync_dagster.pipeline.s3 import PollState, clear, has_state, migrate_legacy_file


class InstanceKeyValues:
    """A name prefix in the instance's key-value store (`run_storage.get_cursor_values` / `set_cursor_values`)."""

    def __init__(self, instance: dg.DagsterInstance, prefix: str) -> None:
        self._storage = instance.run_storage
        self._prefix = prefix

    def get_many(self, names: Collection[str]) -> Mapping[str, str]:
        if not names:
            return {}
        stored = self._storage.get_cursor_values({self._prefix + name for name in names})
        return {entry.removeprefix(self._prefix): value for entry, value in stored.items()}

    def set_many(self, values: Mapping[str, str]) -> None:
        entries = {self._prefix + name: value for name, value in values.items()}
        if len(entries) <= 1:
            self._storage.set_cursor_values(entries)
            return
        # The SQL stores insert all the pairs, and on a duplicate key update the existing rows only:
        # the new names of a mixed batch would be dropped without a word. New ones and existing ones
        # therefore go in separate calls.
        existing = set(self._storage.get_cursor_values(set(entries)))
        new = {entry: value for entry, value in entries.items() if entry not in existing}
        if new:
            self._storage.set_cursor_values(new)
        if existing:
            self._storage.set_cursor_values({entry: entries[entry] for entry in existing})


def poll_store(instance: dg.DagsterInstance, source_name: str) -> InstanceKeyValues:
    return InstanceKeyValues(instance, f"s3sync/{source_name}/poll/")


def legacy_poll_file(instance: dg.DagsterInstance, source_name: str) -> Path:
    """Where the poll state lived before it moved into the key-value store (one host's disk)."""
    return Path(instance.root_directory) / "s3sync" / f"{source_name}-poll.sqlite"


def poll_state(instance: dg.DagsterInstance, source_name: str) -> PollState:
    """The source's poll state, after moving a legacy state file into the instance if there is one."""
    store = poll_store(instance, source_name)
    migrate_legacy_file(store, legacy_poll_file(instance, source_name))
    return PollState(store)


def clear_poll_state(instance: dg.DagsterInstance, source_name: str) -> bool:
    """Forget the source's listing state; True when there was some."""
    store = poll_store(instance, source_name)
    had_state = has_state(store)
    if had_state:
        clear(store)
    legacy = legacy_poll_file(instance, source_name)
    if legacy.is_file():  # never migrated: it must not come back if the source is added again
        legacy.unlink()
        had_state = True
    return had_state
