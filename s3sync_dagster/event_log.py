"""Dagster's SQLite event log with its database connections kept open (named in dagster.yaml)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster._config import StringSource
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine

# Engines kept per process besides the index shard's: a run writes its own shard for its whole
# life, and the webserver reads a few runs at a time. An evicted engine is closed (and checkpointed).
MAX_OPEN_RUN_SHARDS = 8


def _tune(dbapi_connection: Any, _record: Any) -> None:
    # WAL with synchronous=NORMAL: a power cut may lose the last commits, never corrupt the file.
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's `SqliteEventLogStorage` (same files, same schema: a stock instance reads them), but it
    keeps one engine per shard instead of opening and closing a database for every event.

    Stock, each asset event is two open/commit/close cycles (the run's shard, then the asset index),
    and closing the last connection to a WAL database checkpoints it: 28-37 ms per event on the
    benchmark machine, where a run of 100 keys writes ~200 asset events (one planned and one
    materialisation per partition). Kept open, about 3x less (benchmarks/RESULTS.md, section 6).

    A run shard is still checkpointed after each use, so its `.db` file changes on every write as
    before: the webserver's live run view watches that file.
    """

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.Lock()
        self._deferred_inst_data = inst_data
        if base_dir is not None:
            super().__init__(base_dir, inst_data)
        # else: the instance's own directory, which dagster.yaml cannot name; known at register_instance.

    def register_instance(self, instance: dg.DagsterInstance) -> None:
        if not hasattr(self, "_base_dir"):
            # Where a stock instance keeps its event logs: <instance root>/history/runs.
            super().__init__(os.path.join(instance.root_directory, "history", "runs"), self._deferred_inst_data)
        super().register_instance(instance)

    @classmethod
    def config_type(cls) -> Mapping[str, Any]:
        return {"base_dir": dg.Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            engine = self._engines.get(shard)
            if engine is not None:
                self._engines.move_to_end(shard)
                return engine
            engine = create_engine(
                self.conn_string_for_shard(shard), connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
            )
            event.listen(engine, "connect", _tune)
            self._engines[shard] = engine
            run_shards = [name for name in self._engines if name != INDEX_SHARD_NAME]
            for evicted in run_shards[:-MAX_OPEN_RUN_SHARDS]:
                self._engines.pop(evicted).dispose()
            return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn
                if shard != INDEX_SHARD_NAME:
                    # Copies the commit into the .db file (the webserver's watchdog fires on it).
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _dispose_engines(self) -> None:
        with self._engines_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:
        self._dispose_engines()  # wipe unlinks the run shards: no connection may outlive its file
        super().wipe()

    def dispose(self) -> None:
        self._dispose_engines()
        super().dispose()
