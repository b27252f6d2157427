"""The lexical index of a `chroma run` server's collections, in PostgreSQL: reachable from every host that
writes or searches the server (the production deployment's hosts all reach its Dagster database).

The same index as an embedded store's (pipeline/lexicon/embedded.py), kept by the same protocol (`lexicon.mirrored`:
pending, Chroma's write, refresh) and trusted on the same terms (`state`), with what several hosts writing
at once need:
- **Pending is counted**, not set: two writers of one chunk each add one and take one away, so the index
  does not answer for the chunk until both have mirrored their write.
- **A refresh reads back what Chroma holds**, under a lock of the collection (a transaction-scoped advisory
  lock): the last refresh to take it reads after every write that ended before it, and a write that ends
  later has a refresh of its own. A text the writer holds (an upsert's) may no longer be Chroma's by then.
- **Totals kept**, changed in the same transaction as the chunks' rows: a collection's chunks and tokens in
  one row (BM25's average length), each token's document frequency in another (a query's terms are looked
  up, not counted: a common word is in tens of thousands of chunks).

A search's reads are bounded (READ_TIMEOUT_S: connecting, and each read's transaction): a database that does
not answer, stopped or cut off, fails the read then, and the search asks Chroma's filter instead.

Tables (made at the first use, shared by every collection): s3sync_lexicon_collections, _chunks (digest and
length of each chunk's text), _postings (a token's count in a chunk), _terms (a token's document frequency)
and _pending.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline import extras
from s3sync_dagster.pipeline.lexicon.embedded import (
    VERSION,
    LexicalIndex,
    differing,
    digest,
    pages,
    read_texts,
    register_server,
    token,
)
from s3sync_dagster.pipeline.lexicon.terms import index_terms

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

BM25_K1, BM25_B = 1.2, 0.75  # FTS5's, as the embedded index ranks
CONNECT_TIMEOUT_S = 10
# A search's reads (the index's state, document frequencies, the best chunks: milliseconds each at 100,000 chunks)
# give up after this long: on the server (statement_timeout), and here, where a database that is stopped (or a
# host gone) never answers at all, by closing the connection's socket under the waiting read.
READ_TIMEOUT_S = 5.0
TABLES = ("chunks", "postings", "terms", "pending", "collections")

SCHEMA = """
CREATE TABLE IF NOT EXISTS s3sync_lexicon_collections (
    collection_id TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL, complete BOOLEAN NOT NULL,
    chunks BIGINT NOT NULL DEFAULT 0, tokens BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS s3sync_lexicon_chunks (
    collection_id TEXT NOT NULL, chunk_id TEXT NOT NULL, digest TEXT NOT NULL, length INTEGER NOT NULL,
    PRIMARY KEY (collection_id, chunk_id));
CREATE TABLE IF NOT EXISTS s3sync_lexicon_postings (
    collection_id TEXT NOT NULL, token TEXT NOT NULL, chunk_id TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (collection_id, token, chunk_id));
CREATE INDEX IF NOT EXISTS s3sync_lexicon_postings_chunk ON s3sync_lexicon_postings (collection_id, chunk_id);
CREATE TABLE IF NOT EXISTS s3sync_lexicon_terms (
    collection_id TEXT NOT NULL, token TEXT NOT NULL, chunks INTEGER NOT NULL,
    PRIMARY KEY (collection_id, token));
CREATE TABLE IF NOT EXISTS s3sync_lexicon_pending (
    collection_id TEXT NOT NULL, chunk_id TEXT NOT NULL, writers INTEGER NOT NULL,
    PRIMARY KEY (collection_id, chunk_id));
"""


class PostgresLexicon:
    """The lexical index of a Chroma server's collections, in the PostgreSQL database at `dsn`."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.dsn_digest = digest(dsn)  # which database, without keeping its password where it is shown
        self._lock = threading.Lock()
        self._open: dict[tuple[int, int], Any] = {}  # by process and thread, as the embedded index's
        self._made = False

    def __repr__(self) -> str:
        return "PostgresLexicon(<dsn>)"  # the connection string holds a password

    @contextlib.contextmanager
    def _transaction(self, bound: float | None = None) -> Iterator[Any]:
        """One transaction on this thread's connection; with `bound`, connecting and the whole transaction
        take at most that many seconds (psycopg2.OperationalError after)."""
        import psycopg2

        thread = (os.getpid(), threading.get_ident())
        with self._lock:
            db = self._open.get(thread)
        if db is None or db.closed:
            # libpq's connect_timeout covers the whole handshake (a stopped server accepts the TCP connection).
            wait = CONNECT_TIMEOUT_S if bound is None else max(2, math.ceil(bound))
            db = psycopg2.connect(self._dsn, connect_timeout=wait)
            with self._lock:
                self._open[thread] = db
        watchdog = _Watchdog(db, bound) if bound is not None else None
        try:
            with db, db.cursor() as cursor:  # one transaction: committed, or rolled back on an error
                if bound is not None:
                    cursor.execute("SET LOCAL statement_timeout = %s", (int(bound * 1000),))
                if not self._made:
                    cursor.execute("SELECT pg_advisory_xact_lock(hashtext('s3sync_lexicon_schema'))")
                    cursor.execute(SCHEMA)
                    self._made = True
                yield cursor
        except psycopg2.Error as error:
            fired = watchdog is not None and watchdog.stop()
            if fired or isinstance(error, psycopg2.InterfaceError):
                self._forget(thread, db)
            if fired:
                raise psycopg2.OperationalError(f"PostgreSQL did not answer within {bound:g} s") from None
            raise
        finally:
            if watchdog is not None and watchdog.stop():  # it fired, if only as the transaction ended
                self._forget(thread, db)

    def _forget(self, thread: tuple[int, int], db: Any) -> None:
        with self._lock:
            self._open.pop(thread, None)
        db.close()

    def close(self) -> None:
        with self._lock:
            opened, self._open = self._open, {}
        for (pid, _), db in opened.items():
            if pid == os.getpid():
                db.close()

    # --- writing ----------------------------------------------------------------------------------

    @staticmethod
    def _create(cursor: Any, collection: Collection, complete: bool) -> None:
        collection_id = str(collection.id)
        for table in TABLES:
            cursor.execute(f"DELETE FROM s3sync_lexicon_{table} WHERE collection_id = %s", (collection_id,))
        cursor.execute(
            "INSERT INTO s3sync_lexicon_collections (collection_id, name, version, complete) VALUES (%s, %s, %s, %s)",
            (collection_id, collection.name, VERSION, complete),
        )

    def create_if_empty(self, collection: Collection) -> None:
        with self._transaction() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (str(collection.id),))
            cursor.execute("SELECT 1 FROM s3sync_lexicon_collections WHERE collection_id = %s", (str(collection.id),))
            if cursor.fetchone() is None and collection.count() == 0:
                self._create(cursor, collection, complete=True)

    def pending(self, collection: Collection, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._transaction() as cursor:
            if self._known(cursor, collection):
                cursor.executemany(
                    "INSERT INTO s3sync_lexicon_pending VALUES (%s, %s, 1) ON CONFLICT (collection_id, chunk_id) "
                    "DO UPDATE SET writers = s3sync_lexicon_pending.writers + 1",
                    [(str(collection.id), chunk_id) for chunk_id in sorted(set(ids))],
                )

    def refresh(self, collection: Collection, ids: Sequence[str], held: Mapping[str, str] | None = None) -> None:
        """Make the index hold, for these ids, what Chroma now holds, read back under the collection's lock
        (`held`, what this writer wrote, may be another host's by now)."""
        if not ids:
            return
        unique = sorted(set(ids))
        with self._transaction() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (str(collection.id),))
            if not self._known(cursor, collection):
                return
            self._write(cursor, collection, unique, read_texts(collection, unique))
            cursor.executemany(
                "UPDATE s3sync_lexicon_pending SET writers = writers - 1 WHERE collection_id = %s AND chunk_id = %s",
                [(str(collection.id), chunk_id) for chunk_id in unique],
            )
            cursor.execute(
                "DELETE FROM s3sync_lexicon_pending WHERE collection_id = %s AND writers <= 0", (str(collection.id),)
            )

    @staticmethod
    def _write(
        cursor: Any, collection: Collection, ids: Sequence[str], held: Mapping[str, str], terms: bool = True
    ) -> None:
        """Replace these chunks' rows with `held`'s texts (an id not in it is gone); terms: keep each token's
        document frequency too (a rebuild counts them once at its end)."""
        from psycopg2.extras import execute_values

        collection_id = str(collection.id)
        cursor.execute(
            "DELETE FROM s3sync_lexicon_chunks WHERE collection_id = %s AND chunk_id = ANY(%s) RETURNING length",
            (collection_id, list(ids)),
        )
        gone = cursor.fetchall()
        cursor.execute(
            "DELETE FROM s3sync_lexicon_postings WHERE collection_id = %s AND chunk_id = ANY(%s) RETURNING token",
            (collection_id, list(ids)),
        )
        change: collections.Counter[str] = collections.Counter()
        change.subtract(name for (name,) in cursor.fetchall())  # one chunk fewer holds each token it held
        chunks, postings = [], []
        for chunk_id in ids:
            if chunk_id not in held:
                continue
            counts = collections.Counter(token(term) for term in index_terms(held[chunk_id]))
            chunks.append((collection_id, chunk_id, digest(held[chunk_id]), sum(counts.values())))
            postings += [(collection_id, name, chunk_id, count) for name, count in counts.items()]
            change.update(counts.keys())
        if chunks:
            execute_values(cursor, "INSERT INTO s3sync_lexicon_chunks VALUES %s", chunks, page_size=1000)
        if postings:
            execute_values(cursor, "INSERT INTO s3sync_lexicon_postings VALUES %s", postings, page_size=5000)
        cursor.execute(
            "UPDATE s3sync_lexicon_collections SET chunks = chunks + %s, tokens = tokens + %s WHERE collection_id = %s",
            (len(chunks) - len(gone), sum(row[3] for row in chunks) - sum(row[0] for row in gone), collection_id),
        )
        changed = sorted((name, delta) for name, delta in change.items() if delta)
        if terms and changed:
            execute_values(
                cursor,
                "INSERT INTO s3sync_lexicon_terms AS t (collection_id, token, chunks) VALUES %s "
                "ON CONFLICT (collection_id, token) DO UPDATE SET chunks = t.chunks + EXCLUDED.chunks",
                [(collection_id, name, delta) for name, delta in changed],
                page_size=5000,
            )
            cursor.execute(
                "DELETE FROM s3sync_lexicon_terms WHERE collection_id = %s AND token = ANY(%s) AND chunks <= 0",
                (collection_id, [name for name, delta in changed if delta < 0]),
            )

    def rebuild(self, collection: Collection) -> int:
        """Build the collection's index again from its chunks alone; returns how many it holds."""
        with self._transaction() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (str(collection.id),))
            self._create(cursor, collection, complete=False)
            held = 0
            for texts in pages(collection):
                self._write(cursor, collection, list(texts), texts, terms=False)
                held += len(texts)
            cursor.execute(
                "INSERT INTO s3sync_lexicon_terms SELECT collection_id, token, count(*) FROM s3sync_lexicon_postings "
                "WHERE collection_id = %s GROUP BY collection_id, token",
                (str(collection.id),),
            )
            cursor.execute(
                "UPDATE s3sync_lexicon_collections SET complete = TRUE WHERE collection_id = %s", (str(collection.id),)
            )
        with self._transaction() as cursor:
            cursor.execute("ANALYZE s3sync_lexicon_postings")  # plans for the new numbers of rows
        return held

    def drop(self, collection_id: uuid.UUID | str) -> None:
        with self._transaction() as cursor:
            for table in TABLES:
                cursor.execute(f"DELETE FROM s3sync_lexicon_{table} WHERE collection_id = %s", (str(collection_id),))

    # --- reading ----------------------------------------------------------------------------------

    @staticmethod
    def _known(cursor: Any, collection: Collection) -> bool:
        cursor.execute("SELECT version FROM s3sync_lexicon_collections WHERE collection_id = %s", (str(collection.id),))
        row = cursor.fetchone()
        return row is not None and row[0] == VERSION

    def state(self, collection: Collection) -> str | None:
        """Why the index cannot answer for the collection now (None: it can), as the embedded index says; a
        database that cannot be reached is one more reason (a search then asks Chroma's filter)."""
        import psycopg2

        try:
            with self._transaction(READ_TIMEOUT_S) as cursor:
                cursor.execute(
                    "SELECT version, complete, chunks, EXISTS (SELECT 1 FROM s3sync_lexicon_pending p "
                    "WHERE p.collection_id = c.collection_id) FROM s3sync_lexicon_collections c "
                    "WHERE collection_id = %s",
                    (str(collection.id),),
                )
                row = cursor.fetchone()
        except psycopg2.Error as error:
            return f"its lexical index cannot be read: {type(error).__name__}: {str(error).strip()}"
        if row is None:
            return "no lexical index was built for it"
        version, complete, held, pending = row
        if version != VERSION:
            return f"its lexical index is of version {version}, not {VERSION}"
        if not complete:
            return "its lexical index was not finished"
        if pending:
            return "writes to it are not yet in its lexical index"
        count = collection.count()
        if held != count:
            return f"its lexical index holds {held} chunk(s), the collection {count}"
        return None

    def verify(self, collection: Collection) -> list[str]:
        with self._transaction() as cursor:
            cursor.execute(
                "SELECT chunk_id, digest FROM s3sync_lexicon_chunks WHERE collection_id = %s", (str(collection.id),)
            )
            indexed = dict(cursor.fetchall())
        return differing(collection, indexed)

    def document_frequency(self, collection: Collection, terms: Sequence[str]) -> tuple[dict[str, int], int]:
        tokens = {token(term): term for term in terms}
        with self._transaction(READ_TIMEOUT_S) as cursor:
            cursor.execute(
                "SELECT token, chunks FROM s3sync_lexicon_terms WHERE collection_id = %s AND token = ANY(%s)",
                (str(collection.id), list(tokens)),
            )
            counted = dict(cursor.fetchall())
            cursor.execute(
                "SELECT chunks FROM s3sync_lexicon_collections WHERE collection_id = %s", (str(collection.id),)
            )
            row = cursor.fetchone()
        return {term: int(counted.get(name, 0)) for name, term in tokens.items()}, int(row[0]) if row else 0

    def best(self, collection: Collection, terms: Sequence[str], limit: int) -> list[tuple[str, float]]:
        """(chunk id, BM25) of the `limit` chunks scoring best on any of the terms, best first (FTS5's BM25:
        k1 1.2, b 0.75, idf log((N - n + 0.5) / (n + 0.5)))."""
        if not terms:
            return []
        with self._transaction(READ_TIMEOUT_S) as cursor:
            cursor.execute(
                """
                WITH totals AS (
                    SELECT greatest(chunks, 1) AS n, greatest(tokens::float8 / greatest(chunks, 1), 1) AS average
                    FROM s3sync_lexicon_collections WHERE collection_id = %(id)s),
                asked AS (
                    SELECT token, chunks AS df FROM s3sync_lexicon_terms
                    WHERE collection_id = %(id)s AND token = ANY(%(tokens)s)),
                weighted AS (
                    SELECT a.token, greatest(ln((t.n - a.df + 0.5) / (a.df + 0.5)), 1e-6) AS idf
                    FROM asked a, totals t)
                SELECT p.chunk_id, sum(w.idf * p.count * (%(k1)s + 1)
                                       / (p.count + %(k1)s * (1 - %(b)s + %(b)s * c.length / t.average))) AS score
                FROM s3sync_lexicon_postings p
                JOIN weighted w ON w.token = p.token
                JOIN s3sync_lexicon_chunks c ON c.collection_id = p.collection_id AND c.chunk_id = p.chunk_id
                CROSS JOIN totals t
                WHERE p.collection_id = %(id)s AND p.token = ANY(%(tokens)s)
                GROUP BY p.chunk_id ORDER BY score DESC, p.chunk_id LIMIT %(limit)s
                """,
                {"id": str(collection.id), "tokens": [token(term) for term in terms], "limit": limit}
                | {"k1": BM25_K1, "b": BM25_B},
            )
            rows = cursor.fetchall()
        return [(str(chunk_id), float(score)) for chunk_id, score in rows]


class _Watchdog:
    """Closes a connection's socket under a read that has waited `bound` seconds: libpq then fails the read (a
    server-side statement_timeout cannot end a wait on a server that is stopped)."""

    def __init__(self, db: Any, bound: float) -> None:
        self.fired = False
        self._db = db
        self._timer = threading.Timer(bound, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        import psycopg2

        self.fired = True
        with contextlib.suppress(OSError, psycopg2.Error), socket.socket(fileno=os.dup(self._db.fileno())) as shut:
            shut.shutdown(socket.SHUT_RDWR)

    def stop(self) -> bool:
        """Stop the timer; whether it fired (the connection is then unusable)."""
        self._timer.cancel()
        self._timer.join()
        return self.fired


def serve(host: str, port: int | str, dsn: str) -> LexicalIndex:
    """The lexical index, in the PostgreSQL database at `dsn`, of the Chroma server at host:port's collections
    as they are opened from now on; the one already kept if it is of the same database."""
    # psycopg2 comes with dagster-postgres, the [postgres] extra: refused here, before any collection is opened.
    extras.require("postgres", "chroma.lexicon_postgres")

    def made(known: LexicalIndex | None) -> LexicalIndex:
        if isinstance(known, PostgresLexicon) and known.dsn_digest == digest(dsn):
            return known
        return PostgresLexicon(dsn)

    return register_server(host, port, made)
