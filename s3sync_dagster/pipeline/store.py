"""The Chroma store a config names, opened without Dagster: its client, its collections and its locks.

`defs.resources.ChromaResource` is this for Dagster's runs, sensors and checks; `s3sync query` and the
Python search API (commands/query.py) open the same store the same way, without importing Dagster.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from s3sync_dagster.pipeline.chroma import (
    ChromaTimeout,
    attach_copy,
    bounded_client,
    causes,
    could_not_ask,
    embed_with,
    get_collection,
    may_reembed,
    open_collection,
    rebuild_collection,
)
from s3sync_dagster.pipeline.embedding import (
    DEFAULT_FUNCTION,
    EmbeddingSpec,
    function_of_record,
    is_old_bundled_record,
    same_function,
)
from s3sync_dagster.pipeline.lexicon import serve
from s3sync_dagster.pipeline.reembed import Abandoned, InTheWay, begin, underway, wait_for_swap
from s3sync_dagster.pipeline.search import hybrid_schema

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Documents, EmbeddingFunction

    from s3sync_dagster.pipeline.records import Owner

DEFAULT_EMBEDDED_PATH = ".s3sync/chroma"  # an embedded store's folder when the config names none
# chroma.timeout_seconds: a server's (or Chroma Cloud's) answer to one request; Chroma's own client waits for ever.
DEFAULT_TIMEOUT_S = 60.0
# Lock files in an embedded store's folder. Two, not one: a run holds the write lock for all its writes
# (minutes), and opening the store (a status command, a check, another run's first look) must not wait that long.
WRITE_LOCK_FILE = ".s3sync-write.lock"
OPEN_LOCK_FILE = ".s3sync-open.lock"


@dataclass(frozen=True)
class Store:
    """The Chroma store: embedded (`path`), a server (`host`), or Chroma Cloud (`cloud_*`). Header values and
    the Cloud API key are the secrets themselves, read from the environment by whoever made this."""

    path: str | None = None
    host: str | None = None
    port: int = 8000
    ssl: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    cloud_tenant: str | None = None
    cloud_database: str | None = None
    cloud_api_key: str | None = None
    # A server's lexical index in PostgreSQL (pipeline/lexicon/postgres.py): its connection URL, a secret.
    lexicon_dsn: str | None = field(default=None, repr=False)
    # How long a server or Chroma Cloud may take to answer one request (pipeline/chroma/bounded.py).
    timeout_s: float = DEFAULT_TIMEOUT_S

    def describe(self) -> str:
        if self.cloud_tenant:
            return f"Chroma Cloud (tenant {self.cloud_tenant}, database {self.cloud_database})"
        if self.host:
            return f"Chroma server {'https' if self.ssl else 'http'}://{self.host}:{self.port}"
        return f"embedded Chroma at {self.path}"

    def failure(self, error: BaseException) -> str:
        """One line naming the store, what went wrong and the setting to correct, e.g. 'Chroma server
        http://127.0.0.1:8000 cannot be reached: Connection refused: check chroma.host and chroma.port, ...'
        (the full chain stays in the run's log)."""
        if isinstance(error, ChromaTimeout):
            return str(error)  # names the store and the setting already
        reason = self.unreachable(error)
        if reason is not None:
            if self.is_embedded:
                return (
                    f"{self.describe()} cannot be opened: {reason}: set chroma.path to a folder this user can "
                    "create and write"
                )
            return f"{self.describe()} cannot be reached: {reason}: {self._fix()}"
        text = str(error).strip() or type(error).__name__
        return f"{self.describe()}: {text}"

    @staticmethod
    def unreachable(error: BaseException) -> str | None:
        """Why the store itself could not be opened or reached (an OS or network error anywhere in the chain,
        its last cause's words), or None when the error is about something else (a model mismatch, ...)."""
        if not could_not_ask(error):
            return None
        last = causes(error)[-1]
        return re.sub(r"^\[Errno -?\d+\]\s*", "", str(last).strip()) or type(last).__name__

    def _fix(self) -> str:
        if self.cloud_tenant:
            return "check chroma.cloud (tenant, database) and that this machine reaches Chroma Cloud"
        return f"check chroma.host and chroma.port, and that a Chroma server runs there (chroma run --port {self.port})"

    def check(self) -> None:
        """Fail before any run starts, as opening would fail in each: an embedded store's folder (or its nearest
        existing parent) is a folder this user can write, without creating it; a server answers its heartbeat.
        Raises what opening would raise: `failure` says it."""
        if not self.is_embedded:
            self.client().heartbeat()
            return
        folder = Path(self.path or DEFAULT_EMBEDDED_PATH).absolute()
        while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(folder))
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))

    @property
    def is_embedded(self) -> bool:
        return not self.host and not self.cloud_tenant

    def client(self) -> ClientAPI:
        client = _client(
            self.path, self.host, self.port, self.ssl, tuple(sorted(self.headers)),
            self.cloud_tenant, self.cloud_database, self.cloud_api_key, self.describe(), self.timeout_s,
        )  # fmt: skip
        if self.host and self.lexicon_dsn:
            # The server's collections, as pipeline/chroma/lifecycle.py opens them, keep their lexical index there.
            serve(self.host, self.port, self.lexicon_dsn)
        return client

    def collection(
        self, name: str, spec: EmbeddingSpec, create: bool = True, *, queries: bool = False, owner: Owner | None = None
    ) -> Collection:
        """The collection, created with the embedding function recorded in its configuration if missing.

        A collection an earlier version recorded as `sentence_transformer` over this machine's copy of
        the bundled model is rebuilt (same vectors) to record Chroma's `default` when that is the
        configured function. With create=False a missing collection raises chromadb's NotFoundError.
        A collection recording another function than the config's (a model change) is opened with its own
        (embed.function_of_record): it answers queries, and takes writes, in the model its vectors are of. A
        write by `owner` begins its re-embedding into a copy under the config's function, which every write then
        keeps exact (pipeline/reembed/swap.py; `s3sync reembed` fills it and swaps it in), where the collection is the
        owner's to re-embed (claims.may_reembed: its own, or a target holding only its chunks); anyone else's
        collection goes on in its own function and is never copied. queries=True: for searches, which begin nothing.
        """
        function = spec.build()
        client = self.client()
        try:
            if create:
                # On Chroma Cloud a collection gets Chroma's BM25 sparse index beside the dense one, for search.
                schema = hybrid_schema() if self.cloud_tenant else None
                collection = open_collection(
                    client, name, function, metadata={"created_by": "s3sync-dagster"}, schema=schema
                )
            else:
                collection = self._existing(client, name, function)
        except ValueError as error:
            if "conflict" not in str(error):
                raise
            # chromadb refuses a function named otherwise than the recorded one, but any named `default` (and
            # builds none itself, which for a local model would load it): opened so, its record says which it is.
            from s3sync_dagster.pipeline.embedding import ChromaDefaultFunction

            collection = get_collection(client, name, ChromaDefaultFunction())
        recorded = (collection.configuration_json or {}).get("embedding_function")
        if is_old_bundled_record(recorded) and spec.function == DEFAULT_FUNCTION:
            if create:
                # One rebuild at a time: a second run must not delete the first one's copy mid-way.
                with self.write_lock():
                    collection = open_collection(client, name, function, metadata={})  # rebuilt meanwhile?
                    if is_old_bundled_record((collection.configuration_json or {}).get("embedding_function")):
                        collection = rebuild_collection(client, collection, function)
            return collection
        if same_function(recorded, spec):
            return collection
        # Another function than the config's: the collection keeps answering (and taking writes) in its own until
        # a re-embedding swaps in the copy under the config's (pipeline/reembed/swap.py), which a write begins.
        try:
            own = function_of_record(recorded, spec)
        except ValueError as error:
            raise ValueError(
                f"collection '{name}' holds the vectors of another embedding function than {spec.describe()}, "
                f"and that function cannot run here ({error}): until `s3sync reembed` has swapped in the new "
                "model's copy, its writes and queries need the recorded one"
            ) from None
        collection = get_collection(client, name, own)
        embed_with(collection, own)
        if create and not queries and owner is not None and may_reembed(collection, owner):
            # A collection of the copy's name that is not one (another tool's) is never taken: writes go on in the
            # recorded function, and `s3sync reembed` says what is in the way.
            with contextlib.suppress(InTheWay, Abandoned):
                begin(client, collection, function)
        else:
            copy = underway(client, collection)
            if copy is not None:  # an open for reading (an audit, a repair) still keeps the copy exact
                attach_copy(collection, copy, function)
        return collection

    @staticmethod
    def _existing(client: ClientAPI, name: str, function: EmbeddingFunction[Documents]) -> Collection:
        """The collection (NotFoundError if none); found missing in the middle of a re-embedding's swap, once the
        swap's second rename is done (pipeline/reembed/swap.py)."""
        from chromadb.errors import NotFoundError

        try:
            return get_collection(client, name, function)
        except NotFoundError:
            if not wait_for_swap(client, name):
                raise
        return get_collection(client, name, function)

    def disk_state(self) -> tuple[tuple[str, int, int], ...] | None:
        """An embedded store's SQLite files (Chroma's, the lexical index's) by name, modification time and size;
        None for a server or Chroma Cloud. Every write to the store, from any process, changes it; a query
        does not. A process that keeps a store open compares it to see another process's writes, which its
        client does not (it keeps its HNSW index in memory: chroma-core/chroma#3792)."""
        if not self.is_embedded:
            return None
        try:
            with os.scandir(self.path or DEFAULT_EMBEDDED_PATH) as entries:
                files = [entry for entry in entries if entry.name.endswith((".sqlite3", ".sqlite3-wal"))]
                return tuple(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files))
        except FileNotFoundError:
            return ()

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """An embedded store is one process's at a time: runs that write to it take turns.

        It guards the store, not the keys: a PersistentClient is not process-safe (each process keeps
        its own HNSW index in memory; chroma-core/chroma#3792), so it cannot be narrowed to single
        writes. Two writers of one key are reconciled by the engine (pipeline/sync/settle.py).

        Re-entrant within a thread (a run holding it may open, and so rebuild, another collection).
        """
        if not self.is_embedded or not self.path:
            yield
            return
        with _store_lock(self.path, WRITE_LOCK_FILE):
            yield


def embedded_client(path: str | os.PathLike[str]) -> ClientAPI:
    """The client of the embedded Chroma store at ``path`` (made if missing): the project's one way to make a
    `chromadb.PersistentClient`, so that only one process (or thread) at a time opens a store, as
    runner.home_lock does for the Dagster home. The lock file is ``path``/.s3sync-open.lock.

    A process's first client of a store starts chromadb's engine for it (kept per path for the rest of the
    process: chromadb's SharedSystemClient), which applies the store's SQLite migrations (the Rust SqliteDb
    behind RustBindingsAPI.start): it lists the applied ones, then applies the rest in a deferred transaction,
    so two processes opening a fresh store at once both run `CREATE TABLE collections` ("table collections
    already exists"), or one finds the database locked. Creating a collection needs no lock of ours: chromadb
    looks for it and inserts it in one immediate transaction.
    """
    import chromadb
    from chromadb.config import Settings

    with _store_lock(path, OPEN_LOCK_FILE):
        return chromadb.PersistentClient(path=os.fspath(path), settings=Settings(anonymized_telemetry=False))


@contextlib.contextmanager
def _store_lock(path: str | os.PathLike[str], lock_name: str) -> Iterator[None]:
    """An exclusive lock on the file ``lock_name`` in the store's folder, against other processes and other
    threads (flock locks an open file, and each taker opens its own); a thread holding it passes through."""
    lock_file = str(Path(path).resolve() / lock_name)
    held = _held_locks.__dict__.setdefault("paths", set())
    if lock_file in held:
        yield
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    # Opened to append, never truncated: taking the lock changes no file (a plan, an audit writes nothing).
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        held.add(lock_file)
        try:
            yield
        finally:
            held.discard(lock_file)
            fcntl.flock(handle, fcntl.LOCK_UN)


_held_locks = threading.local()  # the store locks this thread holds, by lock file


def close_clients() -> None:
    """Close every client this process opened (chromadb keeps one engine a store path for the life of the
    process): the next client reads its store from disk again, with other processes' writes. Clients made
    directly with chromadb are closed too: an engine holds its store's files and its threads' descriptors."""
    if "chromadb" in sys.modules:  # nothing to close in a process that never imported it
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()  # every engine of the process
    _client.cache_clear()


@functools.lru_cache(maxsize=8)
def _client(
    path: str | None,
    host: str | None,
    port: int,
    ssl: bool,
    headers: tuple[tuple[str, str], ...],
    cloud_tenant: str | None,
    cloud_database: str | None,
    cloud_api_key: str | None,
    described: str,
    timeout_s: float,
) -> ClientAPI:
    """One client a store for the process: an embedded one as it is, a server's or Chroma Cloud's with each request
    bounded by timeout_s (pipeline/chroma/bounded.py), made itself within the bound (it asks the server at once)."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if cloud_tenant:
        make = functools.partial(
            chromadb.CloudClient, tenant=cloud_tenant, database=cloud_database, api_key=cloud_api_key, settings=settings
        )
    elif host:
        make = functools.partial(
            chromadb.HttpClient, host=host, port=port, ssl=ssl, headers=dict(headers), settings=settings
        )
    else:
        return embedded_client(path or DEFAULT_EMBEDDED_PATH)
    return cast("ClientAPI", bounded_client(make, described, timeout_s))
