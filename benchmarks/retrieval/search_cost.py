"""What hybrid search costs (section 7, with hybrid.py): query latency per mode, on a synced collection and
on a large synthetic one, and what Chroma's full-text index (the lexical side's) costs the writes."""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from s3sync_dagster.pipeline.search import FUSION, Fusion, Mode, search, with_passages

LARGE_CHUNKS = 100_000
WRITE_BATCH = 5000
OBJECT_CHUNKS, SECTION_CHUNKS = 20, 5  # the synthetic objects: chunks each, and chunks a section
FTS_CHUNKS = 10_000  # chunks written with the full-text index on and off
FTS_ROUNDS = 3
# The synthetic chunks' readers (issue 52): each synthetic object (20 chunks) is read by one of READER_GROUPS
# readers, in turn, so a search as READER may read one chunk in READER_GROUPS, the rest unread.
READER_GROUPS = 10
READER = "reader-0"


# --- latency --------------------------------------------------------------------------------------


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def latency(
    collection: Any,
    queries: Sequence[str],
    fusions: dict[str, Fusion],
    n: int = 5,
    embedding_function: Any = None,
    where: dict[str, Any] | None = None,
    shown: bool = False,
) -> dict[str, Any]:
    """Milliseconds of `search.search` (top n) per mode, the modes taking turns query by query after a
    warm-up; hybrid once per fusion given (by label). embedding_function: the collection's, held by the
    caller as `SourceSearch` holds it (the query embedded once, a lexical candidate's distance computed).
    where: every search under this filter (`readers_filter()`: a principal's view). shown: hybrid (the first
    fusion) also as `s3sync query` shows it, each hit with its passage (`search.with_passages`), with
    `--per-object 1` (one hit an object, read down the same ranking), and ranking sections (`--sections`)."""

    def searched(mode: Mode, fusion: Fusion, **options: Any) -> Callable[[str], Any]:
        return lambda query: search(
            collection, query, mode=mode, n=n, fusion=fusion, embedding_function=embedding_function, where=where,
            **options,
        )  # fmt: skip

    modes: dict[str, Callable[[str], Any]] = {
        "dense": searched("dense", FUSION),
        "lexical": searched("lexical", FUSION),
    }
    modes |= {f"hybrid ({label})": searched("hybrid", fusion) for label, fusion in fusions.items()}
    if shown:
        first = searched("hybrid", next(iter(fusions.values())))
        modes["hybrid, with passages"] = lambda query: with_passages(collection, first(query), query)
        modes["hybrid, --per-object 1"] = searched("hybrid", next(iter(fusions.values())), per_object=1)
        modes["hybrid, --sections"] = searched("hybrid", next(iter(fusions.values())), sections=True)
    for query in queries[:3]:
        for run in modes.values():
            run(query)
    timings: dict[str, list[float]] = {label: [] for label in modes}
    for query in queries:
        for label, run in modes.items():
            started = time.perf_counter()
            run(query)
            timings[label].append((time.perf_counter() - started) * 1000)
    return {
        label: {
            "queries": len(values),
            "p50_ms": statistics.median(values),
            "p95_ms": _percentile(values, 0.95),
            "max_ms": max(values),
        }
        for label, values in timings.items()
    }


def readers_filter() -> dict[str, Any]:
    """The filter a search as READER applies (pipeline/search/filters.py): one chunk in READER_GROUPS."""
    from s3sync_dagster.pipeline.search import readable_by

    return readable_by([READER])


def readers_latency(
    collection: Any, queries: Sequence[str], n: int = 5, embedding_function: Any = None
) -> dict[str, Any]:
    """Hybrid, lexical and dense latency of a search as READER (None where the collection's chunks list no
    readers: one an earlier run made)."""
    from s3sync_dagster.pipeline.chroma import READERS_KEY

    first = collection.get(limit=1, include=["metadatas"])["metadatas"] or [{}]
    if READERS_KEY not in (first[0] or {}):
        return {"readers": None}
    modes = latency(collection, queries, {"default": FUSION}, n, embedding_function, where=readers_filter())
    return {"readers": {"principal": READER, "share": 1 / READER_GROUPS, "modes": modes}}


def command_wall(config: Path, source: str, queries: Sequence[str], rounds: int = 5) -> dict[str, Any]:
    """Seconds of wall time of `s3sync query` answered in its own process (imports, config, store, model,
    search), of `s3sync query` answered by the resident query process (started and asked once before the
    rounds), and, taking turns with them, of a process that only imports chromadb (the floor a query answered
    in its own process cannot go under)."""
    import os
    import subprocess
    import sys
    import tempfile

    from benchmarks.common import BIN

    s3sync = str(BIN / "s3sync")
    timings: dict[str, list[float]] = {"s3sync query": [], "s3sync query, resident": [], "import chromadb": []}
    with tempfile.TemporaryDirectory() as run_dir:
        own = dict(os.environ, S3SYNC_QUERY_SERVER="0")
        resident = dict(os.environ, S3SYNC_QUERY_SERVER="1", XDG_RUNTIME_DIR=run_dir)
        asked = [s3sync, "query", source, queries[0], "--config", str(config), "--json"]
        subprocess.run([s3sync, "query-server", "start"], env=resident, check=True, capture_output=True)
        subprocess.run(asked, env=resident, check=True, capture_output=True)  # the store and the model opened
        try:
            for round_number in range(rounds):
                query = [s3sync, "query", source, queries[round_number % len(queries)], "--config", str(config)]
                for label, command, env in (
                    ("s3sync query", [*query, "--json"], own),
                    ("s3sync query, resident", [*query, "--json"], resident),
                    ("import chromadb", [sys.executable, "-c", "import chromadb"], own),
                ):
                    started = time.perf_counter()
                    subprocess.run(command, check=True, capture_output=True, env=env)
                    timings[label].append(time.perf_counter() - started)
        finally:
            subprocess.run([s3sync, "query-server", "stop"], env=resident, capture_output=True)
    return {
        label: {"runs": len(values), "p50_s": statistics.median(values), "max_s": max(values)}
        for label, values in timings.items()
    }


def large_collection(path: Path, documents: Sequence[str], size: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """An embedded collection of `size` synthetic chunks, made in a fresh store at `path`: each as many
    words as the real chunk it stands for, drawn at random from all the real chunks' words (so a term is
    about as common as in the real text), with a random unit vector of the model's dimension. Its
    embedding function is the engine's, so a dense query embeds its text as a real one does. Each object
    has OBJECT_CHUNKS chunks, ids and metadata as a sync writes them, under a context line naming one of its
    sections of SECTION_CHUNKS chunks (so a hit's passage reads its section as on a synced store)."""
    import numpy as np

    from s3sync_dagster.pipeline.chunking import CONTEXT_KEY
    from s3sync_dagster.pipeline.embedding import EmbeddingSpec
    from s3sync_dagster.pipeline.records import chunk_id, object_id
    from s3sync_dagster.pipeline.store import embedded_client

    shutil.rmtree(path, ignore_errors=True)
    function = EmbeddingSpec().build()
    dimension = len(function(["dimension"])[0])
    generator = np.random.default_rng(seed)
    words = np.array([word for document in documents for word in document.split()], dtype=object)
    lengths = [max(1, len(document.split())) for document in documents]
    client = embedded_client(path)
    collection = client.create_collection("large-chunks", embedding_function=function)  # type: ignore[arg-type]
    batch = min(WRITE_BATCH, client.get_max_batch_size())
    started = time.perf_counter()
    for start in range(0, size, batch):
        count = min(batch, size - start)
        texts = [
            " ".join(words[generator.integers(0, len(words), lengths[(start + i) % len(lengths)])])
            for i in range(count)
        ]
        vectors = generator.standard_normal((count, dimension), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        keys_of = [f"synthetic/{(start + i) // OBJECT_CHUNKS:05d}.txt" for i in range(count)]
        places = [(start + i) % OBJECT_CHUNKS for i in range(count)]
        collection.add(
            ids=[chunk_id(object_id(key), at) for key, at in zip(keys_of, places, strict=True)],
            documents=texts,
            embeddings=vectors,
            metadatas=[
                {
                    "object_key": key,
                    "document_id": object_id(key),
                    "chunk_index": at,
                    "chunk_count": OBJECT_CHUNKS,
                    # Sections of SECTION_CHUNKS chunks (a hit's passage is chosen from its section's).
                    CONTEXT_KEY: f"{key} > Section {at // SECTION_CHUNKS}",
                    "readers": [f"reader-{(start + i) // OBJECT_CHUNKS % READER_GROUPS}"],  # an object's share them
                }
                for i, (key, at) in enumerate(zip(keys_of, places, strict=True))
            ],
        )
    built_s = time.perf_counter() - started
    # Opened as the engine opens a collection, then its lexical index built from the chunks (written above
    # straight into Chroma, for speed), as `s3sync rebuild-lexicon` builds one.
    from s3sync_dagster.pipeline.chroma import get_collection
    from s3sync_dagster.pipeline.lexicon import FILE, of

    collection = get_collection(client, "large-chunks", function)  # type: ignore[arg-type]
    started = time.perf_counter()
    indexed = of(collection)
    assert indexed is not None
    indexed.rebuild(collection)
    return collection, {
        "chunks": collection.count(),
        "dimension": dimension,
        "build_s": built_s,
        "lexicon_build_s": time.perf_counter() - started,
        "lexicon_bytes": (path / FILE).stat().st_size,
    }


# --- the full-text index's cost -------------------------------------------------------------------


def _fts_schema() -> Any:
    from chromadb.api.types import FtsIndexConfig, Schema

    return Schema().delete_index(config=FtsIndexConfig(), key="#document")


def _fts_rows(store: Path) -> dict[str, int]:
    """Rows of Chroma's full-text table (the FTS5 `embedding_fulltext_search`) per collection name."""
    with sqlite3.connect(f"file:{store / 'chroma.sqlite3'}?mode=ro", uri=True) as db:
        return dict(
            db.execute(
                "SELECT c.name, COUNT(*) FROM embedding_fulltext_search f JOIN embeddings e ON e.id = f.rowid "
                "JOIN segments s ON s.id = e.segment_id JOIN collections c ON c.id = s.collection GROUP BY c.name"
            ).fetchall()
        )


def fts_bytes(store: Path) -> dict[str, int]:
    """Bytes of a store's SQLite file in all and in the full-text index's tables (SQLite's dbstat)."""
    with sqlite3.connect(f"file:{store / 'chroma.sqlite3'}?mode=ro", uri=True) as db:
        sizes = dict(db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
    return {
        "sqlite_bytes": sum(sizes.values()),
        "fts_bytes": sum(size for name, size in sizes.items() if name.startswith("embedding_fulltext_search")),
    }


def fts_cost(
    path: Path, source: Any, ids: list[str], chunks: int = FTS_CHUNKS, rounds: int = FTS_ROUNDS
) -> dict[str, Any]:
    """The first `chunks` chunks of `source` (texts, metadata and stored vectors) written into fresh
    collections of one store with Chroma's full-text index on (the default) and off, the two taking
    turns `rounds` times; then whether the index was off indeed, and a bare SQLite FTS5 trigram table
    (Chroma's local full-text index is one: `tokenize='trigram'`) built from the same texts."""
    from s3sync_dagster.pipeline.store import embedded_client

    chosen = sorted(ids)[:chunks]
    got = source.get(ids=chosen, include=["documents", "metadatas", "embeddings"])
    documents = [document or "" for document in got["documents"] or []]
    metadatas = got["metadatas"]
    vectors = got["embeddings"]
    shutil.rmtree(path, ignore_errors=True)
    client = embedded_client(path)
    batch = min(WRITE_BATCH, client.get_max_batch_size())
    seconds: dict[str, list[float]] = {"on": [], "off": []}
    for round_number in range(rounds):
        for state in ("on", "off") if round_number % 2 == 0 else ("off", "on"):
            name = f"fts-{state}-{round_number}"
            collection = (
                client.create_collection(name, embedding_function=None, schema=_fts_schema())
                if state == "off"
                else client.create_collection(name, embedding_function=None)
            )
            started = time.perf_counter()
            for start in range(0, len(chosen), batch):
                collection.add(
                    ids=list(got["ids"][start : start + batch]),
                    documents=documents[start : start + batch],
                    metadatas=metadatas[start : start + batch] if metadatas else None,
                    embeddings=vectors[start : start + batch] if vectors is not None else None,
                )
            seconds[state].append(time.perf_counter() - started)
    off = client.get_collection(f"fts-off-{rounds - 1}")
    try:
        off.get(where_document={"$contains": "the"}, limit=1)
        refused = ""
    except Exception as error:  # chromadb refuses a full-text filter on a collection without the index
        refused = str(error)
    rows = _fts_rows(path)
    bare = path / "bare-fts5.sqlite3"
    started = time.perf_counter()
    with sqlite3.connect(bare) as db:
        db.execute("CREATE VIRTUAL TABLE texts USING fts5(string_value, tokenize='trigram')")
        db.executemany("INSERT INTO texts (rowid, string_value) VALUES (?, ?)", enumerate(documents, 1))
    bare_s = time.perf_counter() - started
    on_s, off_s = statistics.median(seconds["on"]), statistics.median(seconds["off"])
    return {
        "chunks": len(chosen),
        "characters": sum(len(document) for document in documents),
        "rounds": rounds,
        "seconds": seconds,
        "on_s": on_s,
        "off_s": off_s,
        "on_chunks_s": len(chosen) / on_s,
        "off_chunks_s": len(chosen) / off_s,
        "off_over_on": on_s / off_s,  # write throughput with the index off, as a multiple of with it on
        "fts_rows": {state: rows.get(f"fts-{state}-0", 0) for state in ("on", "off")},
        "off_query_refused": refused,
        "bare_fts5_s": bare_s,
        "bare_fts5_bytes": bare.stat().st_size,
        "bare_share_of_on": bare_s / on_s,
    }


# --- part 3's figures on their own --------------------------------------------------------------------


def part3(
    workdir: Path, synced: Path, collection_name: str, chunks: int, queries_n: int, seed: int, reuse: bool = False
) -> dict[str, Any]:
    """Hybrid, lexical and dense latency at `chunks` synthetic chunks (made from the texts of the synced store
    at `synced`; reuse: those an earlier run made in `workdir`) in one run: embedded with the lexical index,
    the same collection as another tool opens it (Chroma's full-text filter: the path before the index), and
    through a `chroma run` server on a copy, first without a lexical index, then with one in PostgreSQL
    (pipeline/lexicon/postgres.py, built from the server's collection)."""
    import json
    import random

    import chromadb

    from benchmarks.latency.upload import chroma_server
    from benchmarks.servers import postgres_server
    from s3sync_dagster.commands.demo import LOOPBACK
    from s3sync_dagster.pipeline.chroma import get_collection
    from s3sync_dagster.pipeline.embedding import EmbeddingSpec
    from s3sync_dagster.pipeline.store import Store, embedded_client

    source = embedded_client(synced).get_collection(collection_name)
    got = source.get(include=["documents"])
    documents = [document or "" for document in got["documents"] or []]
    chooser = random.Random(seed)
    # Queries as people ask them: a sentence remembered from a chunk (known-item) and questions in their own
    # words (benchmarks/probes/paraphrase.json), two to one.
    remembered = [" ".join(document.split())[:160] for document in chooser.sample(documents, queries_n * 2 // 3)]
    probes = json.loads((Path(__file__).parents[1] / "probes" / "paraphrase.json").read_text(encoding="utf-8"))[
        "probes"
    ]
    queries = remembered + [probe["question"] for probe in chooser.sample(probes, queries_n - len(remembered))]
    fusions = {"default": FUSION}
    function = EmbeddingSpec().build()
    if reuse and (workdir / "large").exists():
        big = get_collection(embedded_client(workdir / "large"), "large-chunks", function)  # type: ignore[arg-type]
        built: dict[str, Any] = {"chunks": big.count(), "reused": str(workdir / "large")}
    else:
        big, built = large_collection(workdir / "large", documents, chunks, seed)
    result: dict[str, Any] = {"built": built, "queries": len(queries)}
    result["embedded"] = latency(big, queries, fusions, embedding_function=function)
    result["embedded_readers"] = readers_latency(big, queries, embedding_function=function)["readers"]
    from s3sync_dagster.pipeline.lexicon import attach_index, detach, of

    detached = detach(big)  # as another tool opens the store: Chroma's full-text filter answers
    result["embedded_chroma_filter"] = latency(big, queries, fusions, embedding_function=function)
    assert detached is not None
    attach_index(big, detached)
    copy = workdir / "server-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(workdir / "large", copy)
    with chroma_server(copy) as port, postgres_server.running(db_name="lexicon") as database:
        remote = get_collection(chromadb.HttpClient(host=LOOPBACK, port=port), "large-chunks", function)  # type: ignore[arg-type]
        result["server"] = latency(remote, queries, fusions, embedding_function=function)
        # The same server with its lexical index in PostgreSQL, as `chroma.lexicon_postgres` makes it.
        dsn = f"postgresql://{database.user}@{database.host}:{database.port}/{database.db_name}"
        served = Store(host=LOOPBACK, port=port, lexicon_dsn=dsn)
        remote = get_collection(served.client(), "large-chunks", function)  # type: ignore[arg-type]
        index_of = of(remote)
        assert index_of is not None
        started = time.perf_counter()
        result["server_index"] = {"chunks": index_of.rebuild(remote), "build_s": time.perf_counter() - started}
        assert index_of.state(remote) is None, index_of.state(remote)
        result["server_postgres"] = latency(remote, queries, fusions, embedding_function=function)
    return result


def lexicon_write_cost(
    path: Path, source: Any, chunks: int = FTS_CHUNKS, per_object: int = 20, rounds: int = FTS_ROUNDS
) -> dict[str, Any]:
    """What the lexical index costs a sync's writes: the first `chunks` chunks of `source` (texts and stored
    vectors, so no model runs) written object by object (`per_object` chunks each) through
    `index.replace_chunks`, as a sync writes, into a fresh collection with the index and one without, the two
    taking turns `rounds` times."""
    from s3sync_dagster.pipeline.chroma import ChunkRecord, open_collection, replace_chunks
    from s3sync_dagster.pipeline.lexicon import FILE, detach
    from s3sync_dagster.pipeline.store import embedded_client

    got = source.get(limit=chunks, include=["documents", "embeddings"])
    vector_of = {document: vector for document, vector in zip(got["documents"], got["embeddings"], strict=True)}
    records = [
        ChunkRecord(f"doc-{i // per_object:05d}-{i % per_object}", document or "", {"chunk_index": i % per_object})
        for i, document in enumerate(got["documents"] or [])
    ]
    shutil.rmtree(path, ignore_errors=True)
    client = embedded_client(path)
    seconds: dict[str, list[float]] = {"with": [], "without": []}
    for round_number in range(rounds):
        for state in ("with", "without") if round_number % 2 == 0 else ("without", "with"):
            name = f"writes-{state}-{round_number}"
            collection = open_collection(client, name, None, metadata={"round": round_number})  # type: ignore[arg-type]
            if state == "without":
                detach(collection)
            started = time.perf_counter()
            for start in range(0, len(records), per_object):
                part = records[start : start + per_object]
                replace_chunks(collection, part, {}, lambda texts: [vector_of[text] for text in texts])
            seconds[state].append(time.perf_counter() - started)
    with_s, without_s = statistics.median(seconds["with"]), statistics.median(seconds["without"])
    return {
        "chunks": len(records),
        "objects": len(records) // per_object,
        "rounds": rounds,
        "seconds": seconds,
        "with_chunks_s": len(records) / with_s,
        "without_chunks_s": len(records) / without_s,
        "with_over_without": with_s / without_s,  # write time with the index, as a multiple of without
        "lexicon_bytes": (path / FILE).stat().st_size,
    }


def main() -> None:
    import argparse
    import json
    import os

    parser = argparse.ArgumentParser(description=part3.__doc__)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--synced", type=Path, required=True, help="an embedded store synced by s3sync")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--chunks", type=int, default=LARGE_CHUNKS)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--config", type=Path, help="the synced store's config: s3sync query's wall time too")
    parser.add_argument("--source")
    parser.add_argument("--reuse", action="store_true", help="the synthetic collection an earlier run made here")
    parser.add_argument("--no-writes", action="store_true", help="skip what the index costs writes")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    result = part3(args.workdir, args.synced, args.collection, args.chunks, args.queries, args.seed, args.reuse)
    if args.config and args.source:
        result["command_wall"] = command_wall(
            args.config, args.source, ["how do I read a file line by line", "RB-1020-A"], 9
        )
    from s3sync_dagster.pipeline.store import embedded_client

    synced = embedded_client(args.synced).get_collection(args.collection)
    if not args.no_writes:
        result["writes"] = lexicon_write_cost(args.workdir / "writes", synced)
    result["load_average"] = [load_before, os.getloadavg()[0]]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
