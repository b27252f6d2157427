"""The lexical index of an embedded Chroma store: each chunk's words, in SQLite FTS5, beside the store.

Chroma's own full-text filter reads every chunk of the collection for each word (`$regex`, `$contains`: 25 to
60 ms a word at 21,000 chunks, 17 ms for a word no chunk has at 100,000), so a query of twelve words cost
hundreds of milliseconds. This index answers the lexical side of a query (each term's document frequency,
the chunks holding its rarer terms, BM25 for any chunk) in a few milliseconds at 100,000 chunks.

It is derived, and exact as the chunks are:
- **Written in the same step.** Every write of chunk texts goes through pipeline/chroma/replace.py, which marks the
  ids pending here, writes Chroma, then refreshes them here from what Chroma then holds (read back by id,
  so an `add` that left another writer's chunk as it was is mirrored as it is). A crash between the two
  leaves the ids pending: a search then uses Chroma's full-text filter until a refresh or a rebuild.
- **Covered everywhere a chunk changes:** replace, delete, remove-source, repair (all through index.py), a
  rebuild of the collection under a new embedding function (the copy gets an index of its own).
- **Checked:** a search trusts it only when it is complete, of this version, has nothing pending and holds
  as many chunks as the collection (`state`); the drift audit compares every chunk's text with it
  (`verify`), and `s3sync rebuild-lexicon` (or a repair) builds it again from the collection alone.
- **Reachable from every host that reaches the store:** an embedded store is one folder on one host (a
  PersistentClient is not process-safe), and the index is a file in that folder. A `chroma run` server's is
  in PostgreSQL where its config names one (pipeline/lexicon/postgres.py), else the lexical side asks the
  server's full-text filter; Chroma Cloud answers with its own BM25 index.

Tokens: every term of what is embedded for a chunk (its context line and its text, `context.embedding_input`:
a chunk under a heading "Server Memory" is found by "memory" though its text lacks the word) as search.py reads
them (`terms.index_terms`: folded, each word by its English stem, so "milliseconds" finds "millisecond"; words
joined by . and - also whole, so `os.path.join` is found whole and by "join"), each hashed to an ASCII token, so FTS5's `ascii`
tokenizer takes it whole whatever its letters. BM25 is FTS5's (k1 1.2, b 0.75, over every term of every chunk in
the collection).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from s3sync_dagster.pipeline.chunking import embedding_input
from s3sync_dagster.pipeline.lexicon.terms import index_terms

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

FILE = "s3sync-lexicon.sqlite3"
# Of the tokens (the term rule, the folding, the stems, the hash): an index of another version is not read (a
# search asks Chroma's filter, the drift audit names it) until `s3sync rebuild-lexicon` or a repair builds it
# again. The context line did not change it; the stems did (2: words by their English stem, `index_terms`).
VERSION = 2
READ_PAGE = 2000  # chunks read from Chroma at a time when building or verifying
BUSY_MS = 60_000
# The most document frequencies a thread keeps between writes (`Lexicon.document_frequency`): about 2 MB,
# kept as long as the thread's connection (`Lexicon._connection`).
MAX_KEPT_FREQUENCIES = 20_000


def token(term: str) -> str:
    """A folded term as the index holds it: 't' and 16 hex digits of its BLAKE2b hash."""
    return "t" + hashlib.blake2b(term.encode("utf-8"), digest_size=8).hexdigest()


def tokens(text: str) -> str:
    """Every term the index holds of a chunk's text (`terms.index_terms`), in order, as tokens joined by spaces."""
    return " ".join(token(term) for term in index_terms(text))


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def _tables(collection_id: uuid.UUID | str) -> tuple[str, str, str]:
    """The FTS5 table, the chunk map and the pending ids of one collection (by its id: a collection deleted
    and made again under its name starts a new index)."""
    suffix = uuid.UUID(str(collection_id)).hex
    return f"fts_{suffix}", f"chunks_{suffix}", f"pending_{suffix}"


class LexicalIndex(Protocol):
    """What a lexical index answers and keeps (this module's `Lexicon` of an embedded store; a server's in
    PostgreSQL, pipeline/lexicon/postgres.py)."""

    def create_if_empty(self, collection: Collection) -> None: ...
    def pending(self, collection: Collection, ids: Sequence[str]) -> None: ...
    def refresh(self, collection: Collection, ids: Sequence[str], held: Mapping[str, str] | None = None) -> None: ...
    def rebuild(self, collection: Collection) -> int: ...
    def drop(self, collection_id: uuid.UUID | str) -> None: ...
    def state(self, collection: Collection) -> str | None: ...
    def verify(self, collection: Collection) -> list[str]: ...
    def document_frequency(self, collection: Collection, terms: Sequence[str]) -> tuple[dict[str, int], int]: ...
    def best(self, collection: Collection, terms: Sequence[str], limit: int) -> list[tuple[str, float]]: ...


class Lexicon:
    """The lexical index of the embedded store in `folder`: one FTS5 table per collection."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / FILE
        self._lock = threading.Lock()
        # By process and thread: a connection is one thread's at a time, and a forked child (a Celery worker's
        # pool) must not use its parent's.
        self._open: dict[tuple[int, int], sqlite3.Connection] = {}
        # Each thread's document frequencies read (`document_frequency`), kept while no connection has written
        # the file since: SQLite's data_version (another connection's commit) and this object's own writes.
        self._writes = 0
        self._frequencies: dict[tuple[int, int], tuple[tuple[int, int], dict[tuple[str, str], int]]] = {}

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, opened at its first use and kept (closing the last connection of a WAL
        database checkpoints it: 1.8 ms, twice per write)."""
        thread = (os.getpid(), threading.get_ident())
        with self._lock:
            db = self._open.get(thread)
        if db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
            # A commit is not flushed to the disk (WAL's NORMAL): a crash of the process loses nothing, a power
            # loss at most the last commits, and the index is derived (the audit sees it, a rebuild mends it).
            db.execute("PRAGMA synchronous = NORMAL")
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")  # readers go on while a writer writes (kept in the file)
            db.execute(
                "CREATE TABLE IF NOT EXISTS collections (collection_id TEXT PRIMARY KEY, name TEXT, "
                "version INTEGER NOT NULL, complete INTEGER NOT NULL)"
            )
            with self._lock:
                self._open[thread] = db
        yield db

    def close(self) -> None:
        """Close every thread's connection (a later use opens one again)."""
        with self._lock:
            opened, self._open = self._open, {}
            self._frequencies = {}
        for (pid, _), db in opened.items():
            if pid == os.getpid():
                db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                with self._lock:
                    self._writes += 1
            db.execute("COMMIT")

    # --- writing ----------------------------------------------------------------------------------

    def _create(self, db: sqlite3.Connection, collection: Collection, complete: bool) -> None:
        fts, chunks, pending = _tables(collection.id)
        for table in (fts, chunks, pending):
            db.execute(f"DROP TABLE IF EXISTS {table}")
        # detail=column: BM25 needs each term's count in a chunk, not its positions.
        db.execute(f"CREATE VIRTUAL TABLE {fts} USING fts5(tokens, tokenize='ascii', detail='column')")
        db.execute(f"CREATE TABLE {chunks} (rowid INTEGER PRIMARY KEY, chunk_id TEXT UNIQUE NOT NULL, digest TEXT)")
        db.execute(f"CREATE TABLE {pending} (chunk_id TEXT PRIMARY KEY)")
        db.execute(
            "INSERT OR REPLACE INTO collections VALUES (?, ?, ?, ?)",
            (str(collection.id), collection.name, VERSION, int(complete)),
        )

    def create_if_empty(self, collection: Collection) -> None:
        """An empty, complete index for a collection just made, unless it has one or already holds chunks
        (one an earlier release filled: its index is built by `rebuild`)."""
        with self._transaction() as db:
            known = db.execute("SELECT 1 FROM collections WHERE collection_id = ?", (str(collection.id),)).fetchone()
            if known is None and collection.count() == 0:
                self._create(db, collection, complete=True)

    def pending(self, collection: Collection, ids: Sequence[str]) -> None:
        """Mark ids about to be written in Chroma: until `refresh`, the index does not answer for them."""
        if not ids:
            return
        _, _, pending = _tables(collection.id)
        with self._transaction() as db:
            if self._known(db, collection):
                db.executemany(f"INSERT OR IGNORE INTO {pending} VALUES (?)", [(chunk_id,) for chunk_id in ids])

    def refresh(self, collection: Collection, ids: Sequence[str], held: Mapping[str, str] | None = None) -> None:
        """Make the index hold, for these ids, what Chroma now holds: `held` (id -> context line and text; an id
        not in it is gone) where the caller knows it (an upsert's, a delete's nothing), else read back from
        Chroma by id (`read_texts`)."""
        if not ids:
            return
        if held is None:
            held = read_texts(collection, ids)
        with self._transaction() as db:
            if not self._known(db, collection):
                return
            self._write(db, collection, ids, held)
            _, _, pending = _tables(collection.id)
            db.executemany(f"DELETE FROM {pending} WHERE chunk_id = ?", [(chunk_id,) for chunk_id in ids])

    def _write(
        self, db: sqlite3.Connection, collection: Collection, ids: Sequence[str], held: Mapping[str, str]
    ) -> None:
        fts, chunks, _ = _tables(collection.id)
        for chunk_id in ids:
            row = db.execute(f"SELECT rowid FROM {chunks} WHERE chunk_id = ?", (chunk_id,)).fetchone()
            if row is not None:
                db.execute(f"DELETE FROM {fts} WHERE rowid = ?", row)
                db.execute(f"DELETE FROM {chunks} WHERE rowid = ?", row)
            if chunk_id in held:
                rowid = db.execute(
                    f"INSERT INTO {chunks} (chunk_id, digest) VALUES (?, ?)", (chunk_id, digest(held[chunk_id]))
                ).lastrowid
                db.execute(f"INSERT INTO {fts} (rowid, tokens) VALUES (?, ?)", (rowid, tokens(held[chunk_id])))

    def rebuild(self, collection: Collection) -> int:
        """Build the collection's index again from its chunks alone; returns how many it holds. The caller
        holds the store's write lock, so no chunk changes meanwhile."""
        with self._transaction() as db:
            self._create(db, collection, complete=False)
            held = 0
            for texts in pages(collection):
                self._write(db, collection, list(texts), texts)
                held += len(texts)
            db.execute("UPDATE collections SET complete = 1 WHERE collection_id = ?", (str(collection.id),))
        return held

    def drop(self, collection_id: uuid.UUID | str) -> None:
        with self._transaction() as db:
            for table in _tables(collection_id):
                db.execute(f"DROP TABLE IF EXISTS {table}")
            db.execute("DELETE FROM collections WHERE collection_id = ?", (str(collection_id),))

    # --- reading ----------------------------------------------------------------------------------

    @staticmethod
    def _known(db: sqlite3.Connection, collection: Collection) -> bool:
        """Whether the collection has an index of this version (complete or being built) to keep current."""
        row = db.execute("SELECT version FROM collections WHERE collection_id = ?", (str(collection.id),)).fetchone()
        return row is not None and row[0] == VERSION

    def state(self, collection: Collection) -> str | None:
        """Why the index cannot answer for the collection now (None: it can): none built, an older version,
        a build not finished, writes not yet mirrored, or another count of chunks than Chroma's (a writer that
        is not s3sync added or removed chunks; 21 ms at 100,000 chunks). A text another writer changed in
        place is found by `verify` (the drift audit), which reads every chunk."""
        _, chunks, pending = _tables(collection.id)
        with self._connection() as db:
            row = db.execute(
                "SELECT version, complete FROM collections WHERE collection_id = ?", (str(collection.id),)
            ).fetchone()
            if row is None:
                return "no lexical index was built for it"
            if row[0] != VERSION:
                return f"its lexical index is of version {row[0]}, not {VERSION}"
            if not row[1]:
                return "its lexical index was not finished"
            if db.execute(f"SELECT 1 FROM {pending} LIMIT 1").fetchone() is not None:
                return "writes to it are not yet in its lexical index"
            held = db.execute(f"SELECT count(*) FROM {chunks}").fetchone()[0]
        count = collection.count()
        if held != count:
            return f"its lexical index holds {held} chunk(s), the collection {count}"
        return None

    def verify(self, collection: Collection) -> list[str]:
        """The chunk ids whose context line and text the index does not hold as Chroma does (missing, extra or
        changed)."""
        with self._connection() as db:
            _, chunks, _ = _tables(collection.id)
            try:
                indexed = dict(db.execute(f"SELECT chunk_id, digest FROM {chunks}").fetchall())
            except sqlite3.OperationalError:  # no index at all
                indexed = {}
        return differing(collection, indexed)

    def document_frequency(self, collection: Collection, terms: Sequence[str]) -> tuple[dict[str, int], int]:
        """How many chunks hold each term, and how many chunks there are.

        fts5vocab counts a term's chunks by reading its whole list: 2 ms for a word in most of 100,000 chunks
        ("the"), which a query scoring every word (search_lexical.lexicon_side) asks again and again. Each
        thread keeps what it read until the file is written (`_frequencies`)."""
        fts, chunks, _ = _tables(collection.id)
        thread = (os.getpid(), threading.get_ident())
        with self._connection() as db:
            with self._lock:
                generation = (int(db.execute("PRAGMA data_version").fetchone()[0]), self._writes)
                kept = self._frequencies.get(thread)
                if kept is None or kept[0] != generation or len(kept[1]) > MAX_KEPT_FREQUENCIES:
                    kept = self._frequencies[thread] = (generation, {})
            known = kept[1]
            db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab_{fts} USING fts5vocab(main, {fts}, 'row')")
            found = {}
            for term in terms:  # one lookup a term: fts5vocab seeks an equal term, but scans for IN
                key = (fts, term)
                if key not in known:
                    row = db.execute(f"SELECT doc FROM temp.vocab_{fts} WHERE term = ?", (token(term),)).fetchone()
                    known[key] = int(row[0]) if row else 0
                found[term] = known[key]
            if (fts, "") not in known:
                known[(fts, "")] = int(db.execute(f"SELECT count(*) FROM {chunks}").fetchone()[0])
        return found, known[(fts, "")]

    def best(self, collection: Collection, terms: Sequence[str], limit: int) -> list[tuple[str, float]]:
        """(chunk id, BM25) of the `limit` chunks scoring best on any of the terms, best first."""
        if not terms:
            return []
        fts, chunks, _ = _tables(collection.id)
        with self._connection() as db:
            rows = db.execute(
                f"SELECT c.chunk_id, -bm25({fts}) AS score FROM {fts} JOIN {chunks} c ON c.rowid = {fts}.rowid "
                f"WHERE {fts} MATCH ? ORDER BY bm25({fts}), c.chunk_id LIMIT ?",
                (_any_of(terms), limit),
            ).fetchall()
        return [(str(chunk_id), float(score)) for chunk_id, score in rows]


def _indexed(found: Mapping[str, Any]) -> dict[str, str]:
    """id -> what the index holds for a chunk of a Chroma read: its context line and text (its `documents` and
    `metadatas`)."""
    ids = found["ids"]
    documents = found.get("documents") or [""] * len(ids)
    metadatas = found.get("metadatas") or [None] * len(ids)
    return {
        chunk_id: embedding_input(document or "", metadata)
        for chunk_id, document, metadata in zip(ids, documents, metadatas, strict=True)
    }


def read_texts(collection: Collection, ids: Sequence[str]) -> dict[str, str]:
    """What the index should hold for these ids (context line and text), as Chroma holds them, read by id (an id
    it does not hold is absent)."""
    read: dict[str, str] = {}
    for start in range(0, len(ids), READ_PAGE):
        read.update(
            _indexed(collection.get(ids=list(ids[start : start + READ_PAGE]), include=["documents", "metadatas"]))
        )
    return read


def pages(collection: Collection) -> Iterator[dict[str, str]]:
    """What the index should hold for every chunk (context line and text), READ_PAGE chunks at a time."""
    offset = 0
    while True:
        found = collection.get(limit=READ_PAGE, offset=offset, include=["documents", "metadatas"])
        if not found["ids"]:
            return
        yield _indexed(found)
        offset += len(found["ids"])


def differing(collection: Collection, indexed: dict[str, str]) -> list[str]:
    """The chunk ids whose text an index holding `indexed` (id -> digest; emptied) does not hold as Chroma does:
    missing, extra or changed."""
    wrong = [
        chunk_id
        for texts in pages(collection)
        for chunk_id, text in texts.items()
        if indexed.pop(chunk_id, None) != digest(text)
    ]
    return sorted([*wrong, *indexed])


def _any_of(terms: Sequence[str]) -> str:
    return " OR ".join(token(term) for term in terms)


def rebuild_all(opened: Iterator[Collection]) -> dict[str, int]:
    """Build each collection's lexical index again from its chunks (those of an embedded store); returns how
    many chunks each holds. The caller holds the store's write lock."""
    built = {}
    for collection in opened:
        index = of(collection)
        if index is not None:
            built[collection.name] = index.rebuild(collection)
    return built


# The lexicon of each embedded store, by folder, and of each Collection object opened here (pipeline/chroma/replace.py
# opens every collection the engine reads or writes): by the object itself, not by the collection's id, which
# a copy of a store's folder (a backup, a server started on it) shares.
_by_folder: collections.OrderedDict[str, Lexicon] = collections.OrderedDict()
OPEN_FOLDERS = 8  # lexicons kept with their connections open; the least recently attached is closed
_by_object: dict[int, tuple[weakref.ref[Any], LexicalIndex]] = {}
# The lexical index of each Chroma server that has one (host, port), as its config names it (Store.client).
_by_server: dict[tuple[str, str], LexicalIndex] = {}
_registry_lock = threading.Lock()


def attach(collection: Collection, folder: str | os.PathLike[str]) -> Lexicon:
    """Record that this collection object is of the embedded store at `folder`, whose lexicon it uses."""
    key = str(Path(folder).resolve())
    with _registry_lock:
        lexicon = _by_folder.setdefault(key, Lexicon(key))
        _by_folder.move_to_end(key)
        while len(_by_folder) > OPEN_FOLDERS:
            _, oldest = _by_folder.popitem(last=False)
            oldest.close()
    return attach_index(collection, lexicon)


def attach_index(collection: Collection, index: LexicalIndex) -> Any:
    """Record that this collection object keeps its lexical index in `index`; returns it."""
    with _registry_lock:
        _by_object[id(collection)] = (weakref.ref(collection), index)
    weakref.finalize(collection, _forget, id(collection))
    return index


def register_server(host: str, port: int | str, made: Callable[[LexicalIndex | None], LexicalIndex]) -> LexicalIndex:
    """Record the lexical index of the collections of the Chroma server at host:port, as they are opened from
    now on (pipeline/chroma/replace.py): `made(the one known)` returns the one to keep (pipeline/lexicon_postgres.serve)."""
    key = (host, str(port))
    with _registry_lock:
        _by_server[key] = made(_by_server.get(key))
        return _by_server[key]


def forget_server(host: str, port: int | str) -> None:
    """Collections of the server at host:port opened from now on have no lexical index of ours."""
    with _registry_lock:
        _by_server.pop((host, str(port)), None)


def served(host: str | None, port: int | str | None) -> LexicalIndex | None:
    """The lexical index of the Chroma server at host:port, if its config names one (`serve`)."""
    return _by_server.get((host or "", str(port)))


def _forget(object_id: int) -> None:
    with _registry_lock:
        entry = _by_object.get(object_id)
        if entry is not None and entry[0]() is None:
            del _by_object[object_id]


def detach(collection: Collection) -> LexicalIndex | None:
    """Forget, in this process, that the collection has a lexicon (a benchmark's comparison with Chroma's own
    full-text filter); returns the one it had."""
    with _registry_lock:
        entry = _by_object.pop(id(collection), None)
    return entry[1] if entry is not None and entry[0]() is collection else None


def of(collection: Collection) -> LexicalIndex | None:
    """The lexical index of the collection's store: None for a collection of Chroma Cloud, of a server whose
    config names none, or one not opened through pipeline/chroma/replace.py."""
    entry = _by_object.get(id(collection))
    return entry[1] if entry is not None and entry[0]() is collection else None


@contextlib.contextmanager
def mirrored(collection: Collection, ids: Sequence[str], written: Mapping[str, str] | None = None) -> Iterator[None]:
    """Around a write of these ids to Chroma: pending before, mirrored after. written: what the index holds for
    them once the write succeeded (an upsert's context lines and texts, `ChunkRecord.embedded`; {} for a
    delete), else (an `add`, which leaves an id
    another writer holds as it is) it is read back; a failed write's ids are read back too."""
    lexicon = of(collection)
    if lexicon is None:
        yield
        return
    lexicon.pending(collection, ids)
    try:
        yield
    except BaseException:
        # What the failed write may have left is mirrored if it can be; if not, the ids stay pending and
        # searches ask Chroma's filter until a write or a rebuild mirrors them. The write's error is the one told.
        with contextlib.suppress(Exception):
            lexicon.refresh(collection, ids)
        raise
    lexicon.refresh(collection, ids, written)
