"""Prefix polling state: what the last complete listing saw, so a pass finds new, changed and vanished keys.

A pass over a large bucket spans many sensor ticks (ListObjectsV2 pages, resumed by continuation
token), so the state lives in a small SQLite file rather than in the sensor's cursor. Nothing is
kept until `commit`, which the sensor calls once its result is built.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from s3sync_dagster.pipeline.objects import ObjectInfo


class PollState:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level="DEFERRED")
        self._db.execute("CREATE TABLE IF NOT EXISTS objects (object_key TEXT PRIMARY KEY, etag TEXT, pass INTEGER)")
        self._db.execute("CREATE TABLE IF NOT EXISTS progress (name TEXT PRIMARY KEY, value TEXT)")
        self._db.commit()

    def _get(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM progress WHERE name = ?", (name,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def _set(self, name: str, value: str | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO progress (name, value) VALUES (?, ?)", (name, value))

    @property
    def pass_number(self) -> int:
        return int(self._get("pass") or 1)

    @property
    def continuation_token(self) -> str | None:
        return self._get("token")

    @property
    def completed_passes(self) -> int:
        return int(self._get("completed") or 0)

    def observe(self, listed: Iterable[ObjectInfo]) -> list[str]:
        """Record one page of the listing; returns the keys that are new or whose ETag changed."""
        current = self.pass_number
        changed = []
        for info in listed:
            row = self._db.execute("SELECT etag FROM objects WHERE object_key = ?", (info.object_key,)).fetchone()
            if row is None or row[0] != info.etag:
                changed.append(info.object_key)
            self._db.execute(
                "INSERT OR REPLACE INTO objects (object_key, etag, pass) VALUES (?, ?, ?)",
                (info.object_key, info.etag, current),
            )
        return changed

    def next_page(self, token: str | None) -> None:
        self._set("token", token)

    def finish_pass(self) -> list[str]:
        """The listing reached its end: keys not seen in this pass have vanished from the bucket."""
        current = self.pass_number
        vanished = [row[0] for row in self._db.execute("SELECT object_key FROM objects WHERE pass < ?", (current,))]
        self._db.execute("DELETE FROM objects WHERE pass < ?", (current,))
        self._set("pass", str(current + 1))
        self._set("token", None)
        self._set("completed", str(self.completed_passes + 1))
        return vanished

    def commit(self) -> None:
        self._db.commit()

    def close(self) -> None:
        self._db.rollback()  # anything not committed was not covered by a sensor result
        self._db.close()
