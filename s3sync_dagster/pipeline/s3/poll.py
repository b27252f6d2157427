"""Prefix polling state: what the last complete listing saw, so a pass finds new, changed and vanished keys.

A pass over a large bucket spans many sensor ticks (ListObjectsV2 pages, resumed by continuation
token), so the state outlives a tick. It lives in a key-value store of the caller's choice (the
Dagster instance's, beside the sensors' cursors, so the daemon, the webserver and runs on other
hosts share it; a dict in engine tests), as:

- `progress`: the pass number, its continuation token, how many of its pages are stored, how many
  pages the previous complete pass has, and how many passes completed (JSON);
- `page/<pass % 2>/<i>`: the i-th page listed in a pass, {object_key: etag} (JSON). Two generations:
  the pass under way and the previous complete one, which a pass's keys are compared against.

The store has no delete: pages past a generation's count (left by an older, longer pass) are never
read. Nothing is written until `commit`, which the sensor calls once its result is built; pages are
written before `progress`, so a commit cut in half leaves only pages past the count.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

from s3sync_dagster.pipeline.s3.archive import listed_as_archived
from s3sync_dagster.pipeline.s3.objects import ObjectInfo

PROGRESS_ENTRY = "progress"
# Entries read per store call: far below SQLite's bound on an IN list's parameters.
READ_BATCH = 500
# Keys per page when a legacy file's keys become the previous pass (ListObjectsV2's own page size).
LEGACY_PAGE_SIZE = 1000
# A restore leaves an archived object's ETag as it was, so no pass sees it change: every this many passes, the
# unchanged keys a listing shows in an archive class (pipeline/s3/archive.py) are requested again, to be indexed once
# restored. Cost: one HEAD and one read of its stored chunks' metadata per such key (unchanged ones write nothing).
ARCHIVE_RECHECK_PASSES = 10


class KeyValueStore(Protocol):
    def get_many(self, names: Collection[str]) -> Mapping[str, str]:
        """The stored values of those names (absent names are left out)."""

    def set_many(self, values: Mapping[str, str]) -> None:
        """Store every value (new names and existing ones alike)."""


class InMemoryStore:
    """A key-value store as a plain dict: for engine tests and benchmarks."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get_many(self, names: Collection[str]) -> Mapping[str, str]:
        return {name: self.values[name] for name in names if name in self.values}

    def set_many(self, values: Mapping[str, str]) -> None:
        self.values.update(values)


@dataclass(frozen=True)
class Progress:
    pass_number: int = 1
    token: str | None = None
    pages: int = 0  # pages of this pass stored so far
    previous_pages: int = 0  # pages of the previous complete pass
    completed: int = 0

    @classmethod
    def parse(cls, value: str | None) -> Progress:
        """An absent or empty entry is a fresh state (remove-source writes an empty one)."""
        return cls(**json.loads(value)) if value else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def page_entry(pass_number: int, index: int) -> str:
    return f"page/{pass_number % 2}/{index}"


def has_state(store: KeyValueStore) -> bool:
    return bool(store.get_many([PROGRESS_ENTRY]).get(PROGRESS_ENTRY))


def clear(store: KeyValueStore) -> None:
    """Forget every pass: the pages left behind are past the counts of a fresh progress entry."""
    store.set_many({PROGRESS_ENTRY: ""})


class PollState:
    def __init__(self, store: KeyValueStore) -> None:
        self._store = store
        self._committed = Progress.parse(store.get_many([PROGRESS_ENTRY]).get(PROGRESS_ENTRY))
        self._progress = self._committed
        self._staged: dict[str, str] = {}  # page entries observed since the last commit
        self._previous: dict[str, str] | None = None  # the previous complete pass, read when first needed

    @property
    def pass_number(self) -> int:
        return self._progress.pass_number

    @property
    def continuation_token(self) -> str | None:
        return self._progress.token

    @property
    def completed_passes(self) -> int:
        return self._progress.completed

    def _read_pages(self, pass_number: int, count: int) -> dict[str, str]:
        """The {object_key: etag} of a pass's first `count` pages, staged ones included."""
        names = [page_entry(pass_number, index) for index in range(count)]
        stored: dict[str, str] = {}
        unstaged = [name for name in names if name not in self._staged]
        for start in range(0, len(unstaged), READ_BATCH):
            stored.update(self._store.get_many(unstaged[start : start + READ_BATCH]))
        etags: dict[str, str] = {}
        for name in names:
            value = self._staged.get(name, stored.get(name))
            if value is None:
                raise ValueError(f"poll state: page entry '{name}' is missing (the progress entry counts {count})")
            etags.update(json.loads(value))
        return etags

    def _previous_pass(self) -> dict[str, str]:
        if self._previous is None:
            self._previous = self._read_pages(self.pass_number - 1, self._progress.previous_pages)
        return self._previous

    def observe(self, listed: Iterable[ObjectInfo], *, last_modified: bool = False) -> list[str]:
        """Record one page of the listing; returns the keys that are new or whose ETag changed, and on every
        ARCHIVE_RECHECK_PASSES-th pass the unchanged ones in an archive class (their restore changes no ETag).

        last_modified: the LastModified too (stored as `etag@time`), for a source whose chunks carry the objects'
        user metadata: a copy in place with new metadata keeps the ETag but not the time (pipeline/chroma/labels.py).
        """
        previous = self._previous_pass()
        infos = list(listed)
        page = {info.object_key: f"{info.etag}@{info.last_modified}" if last_modified else info.etag for info in infos}
        recheck = self.pass_number % ARCHIVE_RECHECK_PASSES == 0
        archived = {info.object_key for info in infos if recheck and listed_as_archived(info.storage_class)}
        self._staged[page_entry(self.pass_number, self._progress.pages)] = json.dumps(page, separators=(",", ":"))
        self._progress = replace(self._progress, pages=self._progress.pages + 1)
        return [
            object_key
            for object_key, etag in page.items()
            if previous.get(object_key) != etag or object_key in archived
        ]

    def next_page(self, token: str | None) -> None:
        self._progress = replace(self._progress, token=token)

    def finish_pass(self) -> list[str]:
        """The listing reached its end: keys of the previous pass not listed in this one have vanished."""
        previous = self._previous_pass()
        current = self._read_pages(self.pass_number, self._progress.pages)
        vanished = [object_key for object_key in previous if object_key not in current]
        self._progress = Progress(
            pass_number=self.pass_number + 1,
            token=None,
            pages=0,
            previous_pages=self._progress.pages,
            completed=self._progress.completed + 1,
        )
        self._previous = current
        return vanished

    def commit(self) -> None:
        if self._staged:
            self._store.set_many(self._staged)
        if self._progress != self._committed:
            self._store.set_many({PROGRESS_ENTRY: self._progress.dump()})
        self._staged = {}
        self._committed = self._progress

    def close(self) -> None:
        """Drop what was not committed: it was not covered by a sensor result."""
        self._staged = {}
        self._progress = self._committed
        self._previous = None


def migrate_legacy_file(store: KeyValueStore, path: Path) -> bool:
    """Move a poll-state SQLite file (the state's home before it moved to a key-value store) into `store`, once.

    Its objects are what the last complete pass saw plus what the unfinished one saw so far: they all
    become the previous complete pass, and the pass restarts from the first page, so nothing is
    reported new or vanished that was not. The file is renamed `<name>.migrated`. Does nothing (and
    returns False) when the store already holds state or there is no file.
    """
    if not path.is_file() or store.get_many([PROGRESS_ENTRY]).get(PROGRESS_ENTRY) is not None:
        return False
    with sqlite3.connect(str(path)) as db:
        etags = dict(db.execute("SELECT object_key, etag FROM objects ORDER BY object_key").fetchall())
        progress = dict(db.execute("SELECT name, value FROM progress").fetchall())
    db.close()
    pass_number = int(progress.get("pass") or 1)
    object_keys = list(etags)
    pages = {
        page_entry(pass_number - 1, index): json.dumps(
            {key: etags[key] for key in object_keys[start : start + LEGACY_PAGE_SIZE]}, separators=(",", ":")
        )
        for index, start in enumerate(range(0, len(object_keys), LEGACY_PAGE_SIZE))
    }
    migrated = Progress(
        pass_number=pass_number,
        previous_pages=len(pages),
        completed=int(progress.get("completed") or 0),
    )
    if pages:
        store.set_many(pages)
    store.set_many({PROGRESS_ENTRY: migrated.dump()})
    with contextlib.suppress(FileNotFoundError):  # another process migrated it at once, to the same state
        path.rename(path.with_name(path.name + ".migrated"))
    return True
