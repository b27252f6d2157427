"""The newest features against a hostile neighbour (issue 49): vectors reused only for the very same text, names
the project gives its collections reserved, a model change that touches only what the source owns, a renamed
collection said. Moto over HTTP -> the engine and `s3sync` -> real Chroma, embedded and a `chroma run` server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from s3sync_dagster.commands.cli import main
from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.pipeline import store
from s3sync_dagster.pipeline.chroma import claims, lifecycle, vectors
from s3sync_dagster.pipeline.chunking.context import embedding_input
from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster.pipeline.sync.stages import sync_keys, sync_object
from s3sync_dagster_tests.conftest import Row, put, store_chunks

pytestmark = pytest.mark.reliability("newest features")

SENTENCE = "The quarterly audit of the warehouse stock is done by the night shift.\n"
OTHER = "Penguins huddle together to keep warm through the antarctic winter.\n"
Configure = Callable[..., AppConfig]


@pytest.fixture(params=["embedded", "server"])
def neighbourhood(
    request: pytest.FixtureRequest, s3: Any, bucket: str, tmp_path: Path, moto_endpoint: str, dagster_home: Path
) -> Iterator[tuple[Path, Configure]]:
    """`configure(**sources)` writes the config of the named sources (each a dict of settings over a default on
    the bucket: lines chunking, one line a chunk) and loads it; the store is embedded or a `chroma run` server."""
    chroma: dict[str, Any] = {"path": "chroma"}
    if request.param == "server":
        chroma = {"host": "127.0.0.1", "port": request.getfixturevalue("chroma_server")}
    path = tmp_path / "s3sync.yaml"
    prefix = f"n{bucket}"[:40]
    made: set[str] = set()

    def configure(embedding: dict[str, Any] | None = None, **sources: dict[str, Any]) -> AppConfig:
        listed = []
        for name, settings in sources.items():
            source = {
                "name": name, "bucket_name": bucket, "region": "us-east-1", "endpoint_url": moto_endpoint,
                "collection_name": f"{prefix}-{name}", "path_prefix": f"{name}/",
                "chunking": {"type": "lines", "max_lines": 1},
                "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"}, "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
            }  # fmt: skip
            source.update(settings)
            made.add(str(source["collection_name"]).split("-s3sync")[0])
            listed.append(source)
        config = {"chroma": chroma, "embedding": embedding or {}, "sources": listed}
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return load_config(path)

    yield path, configure
    if request.param == "server":
        store.close_clients()
        client = configure().chroma.store().client()
        for collection in client.list_collections():
            if any(collection.name.startswith(name) for name in made):
                client.delete_collection(collection.name)


def sync(s3: Any, config: AppConfig, source_name: str, object_keys: list[str]) -> list[Any]:
    spec = config.embedding.spec()
    source = config.source(source_name)
    collection = config.chroma.store().collection(source.collection_name, spec)
    return sync_keys(s3, source.spec(spec), lambda _: collection, spec.build(), object_keys)


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_a_stored_vector_is_reused_only_for_the_very_same_text_and_repair_writes_misembedded_chunks_from_s3(
    neighbourhood: tuple[Path, Configure], s3: Any, bucket: str, fault_row: Row, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chunk another tool edited in place keeps the text hash of its old text: its vector is not that text's.
    A new chunk of the old text must not take it, and the drift audit finds it and `repair` writes it again from
    what S3 holds (issue 62: never embedded again from its own, edited, text)."""
    path, configure = neighbourhood
    config = configure(docs={})
    model = ChromaDefaultFunction()
    put(s3, bucket, {"docs/a.txt": SENTENCE + OTHER})
    assert [r.status for r in sync(s3, config, "docs", ["docs/a.txt"])] == ["indexed"]
    collection = config.chroma.store().collection(config.sources[0].collection_name, config.embedding.spec())
    edited = keys.chunk_id(keys.object_id("docs/a.txt"), 0)
    # Another tool edits chunk 0 in place: a new text with another text's vector; the metadata left as it was.
    collection.update(ids=[edited], documents=["An edited line."], embeddings=[model([OTHER])[0]])
    put(s3, bucket, {"docs/b.txt": "An edited line.\n" + SENTENCE})
    (report,) = sync(s3, config, "docs", ["docs/b.txt"])
    assert report.status == "indexed"
    found = collection.get(where={"object_key": "docs/b.txt"}, include=["documents", "embeddings", "metadatas"])
    for text, vector, metadata in zip(found["documents"], found["embeddings"], found["metadatas"], strict=True):
        embedded = embedding_input(text, metadata)  # its context line and its own text
        assert cosine(vector, model([embedded])[0]) > 0.99, text
    capsys.readouterr()
    assert main(["repair", "docs", "--config", str(path), "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["before"]["misembedded"] == {collection.name: 1}, done["before"]
    assert done["after"]["clean"], done["after"]
    store.close_clients()  # the repair ran in-process on its own clients: read the store afresh
    collection = config.chroma.store().collection(config.sources[0].collection_name, config.embedding.spec())
    got = collection.get(ids=[edited], include=["documents", "embeddings", "metadatas"])
    assert got["documents"] == [SENTENCE]  # S3's text again, not the edit
    embedded = embedding_input(SENTENCE, got["metadatas"][0])
    assert embedded == "docs/a.txt\n\n" + SENTENCE
    assert cosine(got["embeddings"][0], model([embedded])[0]) > 0.99
    assert got["metadatas"][0]["text_hash"] == vectors.text_hash(embedded, vectors.function_record(collection))
    expected = {
        (collection.name, keys.chunk_id(keys.object_id(key), n)): text
        for key, lines in {
            "docs/a.txt": [SENTENCE, OTHER],
            "docs/b.txt": ["An edited line.\n", SENTENCE],
        }.items()
        for n, text in enumerate(lines)
    }
    fault_row.observe(expected, [c for c in store_chunks(config.chroma.store().client()) if c[0] == collection.name])
    fault_row.passed = True


def test_a_reserved_collection_name_is_refused_at_load_and_at_write(make_config: Any) -> None:
    for field_name, value in [("collection_name", "docs-s3sync-retired"), ("target_collections", ["t-s3sync-rebuild"])]:
        with pytest.raises(ValueError, match=f"{field_name}.*ends in '-s3sync-"):
            make_config("a-bucket", **{field_name: value})
    config, _ = make_config("a-bucket")
    spec = config.sources[0].spec(config.embedding.spec())
    for name in ("docs-s3sync-retired", "docs-s3sync-rebuild", "a-s3sync-rebuild-s3sync-rebuild"):
        with pytest.raises(ValueError, match=r"metadata file 'x.meta.json': collection name .* reserves"):
            spec.check_target(name, "metadata file 'x.meta.json'")


def test_a_collection_of_a_reserved_name_a_source_did_not_make_is_never_renamed_or_dropped(
    neighbourhood: tuple[Path, Configure], s3: Any, bucket: str, fault_row: Row, capsys: pytest.CaptureFixture[str]
) -> None:
    """Collections named like a swap's retired collection and a rebuild's copy, made by another tool beside a
    source that owns the base name: the source's query, sync, repair and re-embedding leave them as they are."""
    path, configure = neighbourhood
    config = configure(docs={})
    base = config.sources[0].collection_name
    client = config.chroma.store().client()
    theirs = {}
    for suffix in ("-s3sync-retired", "-s3sync-rebuild"):
        made = client.create_collection(base + suffix, embedding_function=ChromaDefaultFunction())  # type: ignore[arg-type]
        made.add(ids=[f"theirs{suffix}"], documents=[f"another tool's chunk in {suffix}"])
        theirs[(made.name, f"theirs{suffix}")] = f"another tool's chunk in {suffix}"
    main(["query", "docs", "anything", "--config", str(path), "--json"])  # never synced: nothing to find
    put(s3, bucket, {"docs/a.txt": SENTENCE})
    assert [r.status for r in sync(s3, config, "docs", ["docs/a.txt"])] == ["indexed"]
    assert main(["query", "docs", "warehouse audit", "--config", str(path), "--json"]) == 0
    assert main(["repair", "docs", "--config", str(path), "--json"]) == 0
    int8 = configure(embedding={"precision": "int8"}, docs={})
    put(s3, bucket, {"docs/a.txt": SENTENCE + OTHER})
    assert [r.status for r in sync(s3, int8, "docs", ["docs/a.txt"])] == ["indexed"]  # writes go on, no copy
    put(s3, bucket, {"docs/a.txt": SENTENCE})
    assert [r.status for r in sync(s3, int8, "docs", ["docs/a.txt"])] == ["indexed"]
    capsys.readouterr()
    assert main(["reembed", "docs", "--config", str(path)]) != 0
    assert f"collection '{base}-s3sync-rebuild' is in the way" in capsys.readouterr().err
    store.close_clients()
    client = config.chroma.store().client()
    ours = {(base, keys.chunk_id(keys.object_id("docs/a.txt"), 0)): SENTENCE}
    found = [chunk for chunk in store_chunks(client) if chunk[0].startswith(base)]
    fault_row.observe({**theirs, **ours}, found)
    assert sorted((name, chunk_id) for name, chunk_id, _ in found) == sorted({**theirs, **ours})
    fault_row.passed = True


def test_a_model_change_copies_and_swaps_only_what_the_source_owns(
    neighbourhood: tuple[Path, Configure], s3: Any, bucket: str, fault_row: Row
) -> None:
    """A source's model change: its own collection and a target holding only its chunks are re-embedded and
    swapped by one `reembed`; a target it shares with another source and another project's collection it may
    write are never copied, and no copy of a copy is ever made."""
    path, configure = neighbourhood
    config = configure(docs={}, other={})
    base = config.sources[0].collection_name
    mine, shared, elsewhere = f"{base}-mine", f"{base}-shared", f"{base}-elsewhere"
    client = config.chroma.store().client()
    record = json.dumps({"source": "docs", "bucket_name": bucket, "path_prefix": "docs/", "project": "elsewhere"})
    client.create_collection(elsewhere, embedding_function=ChromaDefaultFunction(), metadata={claims.OWNER_KEY: record})  # type: ignore[arg-type]
    files = {
        "docs/a.txt": SENTENCE, "docs/m.txt": "Mine alone.\n", "docs/s.txt": "Shared by two.\n",
        "docs/e.txt": "Written elsewhere.\n", "other/s.txt": "The other source's shared line.\n",
    }  # fmt: skip
    put(s3, bucket, files)
    targets = {"docs/a.txt": None, "docs/m.txt": mine, "docs/s.txt": shared, "docs/e.txt": elsewhere}

    def sync_all(config: AppConfig) -> None:
        spec = config.embedding.spec()
        for name, object_keys in [("docs", targets), ("other", {"other/s.txt": shared})]:
            source = config.source(name).spec(spec)

            def collection_for(collection_name: str, owner: Any = source.owner) -> Any:
                return config.chroma.store().collection(collection_name, spec, owner=owner)

            for object_key, target in object_keys.items():
                report = sync_object(
                    s3, source, collection_for, spec.build(), object_key, target_collection_name=target
                )
                assert report.status in {"indexed", "unchanged"}, report

    sync_all(config)
    int8 = configure(embedding={"precision": "int8"}, docs={}, other={})
    sync_all(int8)  # unchanged objects: the copies of what docs owns are begun, nothing else
    store.close_clients()
    names = sorted(c.name for c in int8.chroma.store().client().list_collections() if c.name.startswith(base))
    assert names == sorted([base, mine, shared, elsewhere, base + "-s3sync-rebuild", mine + "-s3sync-rebuild"])
    assert main(["reembed", "docs", "--config", str(path)]) == 0
    store.close_clients()
    client = int8.chroma.store().client()
    precision = {
        c.name: (c.configuration_json["embedding_function"]["config"] or {}).get("precision", "float32")
        for c in client.list_collections()
        if c.name.startswith(base)
    }
    assert precision == {
        base: "int8",
        mine: "int8",
        shared: "float32",
        elsewhere: "float32",
    }, precision
    expected = {
        (targets[key] or base, keys.chunk_id(keys.object_id(key), n)): text
        for key, text in files.items()
        if key.startswith("docs/")
        for n in [0]
    }
    expected[(shared, keys.chunk_id(keys.object_id("other/s.txt"), 0))] = files["other/s.txt"]
    fault_row.observe(expected, [chunk for chunk in store_chunks(client) if chunk[0].startswith(base)])
    assert fault_row.lost == fault_row.duplicated == fault_row.stray == 0, fault_row
    fault_row.passed = True


def test_repair_drops_the_copies_earlier_releases_left_that_no_reembed_swaps_in(
    neighbourhood: tuple[Path, Configure], s3: Any, bucket: str, fault_row: Row, capsys: pytest.CaptureFixture[str]
) -> None:
    """An earlier release's model change copied every collection a source could write, `<name>-s3sync-rebuild`
    marked with `s3sync_reembedded_from` alone: a shared target, another project's collection, a copy of a copy.
    `repair` drops those, and their lexical index; it keeps the single copy of the source's own collection
    (`reembed` resumes it), a reserved name another tool made, and a copy whose base is missing (it may hold the
    only data an interrupted swap left). Every chunk of the base collections stays."""
    from s3sync_dagster.pipeline.lexicon import embedded as lexicon
    from s3sync_dagster.pipeline.reembed import swap as reembed

    path, configure = neighbourhood
    config = configure(docs={}, other={})
    base = config.sources[0].collection_name
    shared, elsewhere, gone = f"{base}-shared", f"{base}-elsewhere", f"{base}-gone"
    client = config.chroma.store().client()
    record = json.dumps({"source": "docs", "bucket_name": bucket, "path_prefix": "docs/", "project": "elsewhere"})
    client.create_collection(elsewhere, embedding_function=ChromaDefaultFunction(), metadata={claims.OWNER_KEY: record})  # type: ignore[arg-type]
    files = {
        "docs/a.txt": SENTENCE, "docs/s.txt": "Shared by two.\n", "docs/e.txt": "Written elsewhere.\n",
        "other/s.txt": "The other source's shared line.\n",
    }  # fmt: skip
    put(s3, bucket, files)
    targets = {"docs/a.txt": base, "docs/s.txt": shared, "docs/e.txt": elsewhere, "other/s.txt": shared}
    spec = config.embedding.spec()
    for object_key, target in targets.items():
        source = config.source(object_key.split("/")[0]).spec(spec)

        def collection_for(collection_name: str, owner: Any = source.owner) -> Any:
            return config.chroma.store().collection(collection_name, spec, owner=owner)

        report = sync_object(s3, source, collection_for, spec.build(), object_key, target_collection_name=target)
        assert report.status == "indexed", report
    store.close_clients()
    client = config.chroma.store().client()
    # What an earlier release left, made by hand as it made it: the original's metadata and chunks, FROM_KEY.
    earlier = json.dumps({"name": "default", "config": {}}, sort_keys=True)

    def copy_of(name: str, original: str, marked: bool = True) -> Any:
        held = client.get_collection(original).get(include=["documents", "metadatas", "embeddings"])
        metadata = {**(client.get_collection(original).metadata or {}), reembed.FROM_KEY: earlier}
        copy = client.create_collection(
            name,
            embedding_function=ChromaDefaultFunction(),  # type: ignore[arg-type]
            metadata=metadata if marked else {"made_by": "another tool"},
        )
        copy.add(
            ids=held["ids"], documents=held["documents"], metadatas=held["metadatas"], embeddings=held["embeddings"]
        )
        return copy

    own, chain = base + "-s3sync-rebuild", base + "-s3sync-rebuild-s3sync-rebuild"
    copy_of(own, base)
    chained = copy_of(chain, own)
    copy_of(shared + "-s3sync-rebuild", shared)
    copy_of(elsewhere + "-s3sync-rebuild", elsewhere)
    theirs = copy_of(shared + "-s3sync-rebuild-s3sync-rebuild", shared, marked=False)  # another tool's, same shape
    orphan = copy_of(gone + "-s3sync-rebuild-s3sync-rebuild", base)  # its base gone: never dropped
    orphan.modify(metadata={reembed.FROM_KEY: earlier})
    index_of = lexicon.of(lifecycle.opened(client, chained))
    if index_of is not None:  # an embedded store: the copy's lexical index goes with it
        index_of.rebuild(chained)
        assert index_of.state(chained) is None
    kept = {own, theirs.name, orphan.name}
    dropped = {chain, shared + "-s3sync-rebuild", elsewhere + "-s3sync-rebuild"}
    capsys.readouterr()
    assert main(["repair", "docs", "--config", str(path), "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    store.close_clients()
    client = config.chroma.store().client()
    names = {c.name for c in client.list_collections() if c.name.startswith(base)}
    assert names == {base, shared, elsewhere, *kept}, names
    said = {left["collection"]: left for left in done["leftovers"]}
    assert {name for name, left in said.items() if left["dropped"]} == dropped, said
    assert {name for name, left in said.items() if not left["dropped"]} == {own, orphan.name}, said
    assert "missing" in said[orphan.name]["why"] and "s3sync reembed" in said[own]["why"], said
    if index_of is not None:
        assert index_of.state(chained) == "no lexical index was built for it"
    # Every chunk of the base collections intact, and the kept copies as they were.
    expected = {(target, keys.chunk_id(keys.object_id(key), 0)): files[key] for key, target in targets.items()}
    expected |= {
        (name, chunk_id): text
        for (target, chunk_id), text in expected.items()
        if target == base
        for name in (own, orphan.name)
    }
    expected |= {(theirs.name, chunk_id): text for (target, chunk_id), text in expected.items() if target == shared}
    fault_row.observe(expected, [chunk for chunk in store_chunks(client) if chunk[0].startswith(base)])
    assert fault_row.lost == fault_row.stray == 0 and fault_row.chunks_found == len(expected), fault_row
    capsys.readouterr()
    assert main(["repair", "docs", "--config", str(path)]) == 0  # said in words too; nothing more to drop
    words = capsys.readouterr().out
    assert f"kept collection '{own}'" in words and f"kept collection '{orphan.name}'" in words, words
    assert "dropped collection" not in words, words
    fault_row.passed = True


def test_a_changed_collection_name_is_said_by_query_and_repair(
    neighbourhood: tuple[Path, Configure], s3: Any, bucket: str, fault_row: Row, capsys: pytest.CaptureFixture[str]
) -> None:
    """The chunks sit in the collection the source synced into; its config now names another: `query` and
    `repair` say where its chunks are and how to fix it, instead of "no results" and "no drift"."""
    path, configure = neighbourhood
    config = configure(docs={})
    old = config.sources[0].collection_name
    put(s3, bucket, {"docs/a.txt": SENTENCE + OTHER})
    assert main(["sync", "docs", "--all", "--config", str(path)]) == 0
    configure(docs={"collection_name": old + "-renamed"})
    capsys.readouterr()
    for command in (["query", "docs", "warehouse audit"], ["repair", "docs"]):
        assert main([*command, "--config", str(path)]) != 0, command
        said = capsys.readouterr().err
        assert f"collection '{old}' records it as its own" in said and f"Set it back to '{old}'" in said, said
    # Once its collection is there and holds none of its chunks (a sync began it), the same is said.
    store.close_clients()
    configure(docs={"collection_name": old + "-renamed"}).chroma.store().client().create_collection(old + "-renamed")
    assert main(["query", "docs", "warehouse audit", "--config", str(path)]) != 0
    assert f"Set it back to '{old}'" in capsys.readouterr().err
    store.close_clients()
    client = config.chroma.store().client()
    expected = {(old, keys.chunk_id(keys.object_id("docs/a.txt"), n)): text for n, text in enumerate([SENTENCE, OTHER])}
    fault_row.observe(expected, [chunk for chunk in store_chunks(client) if chunk[0].startswith(old)])
    assert fault_row.lost == fault_row.stray == 0
    fault_row.passed = True


# --- writers beside a re-embedding's swap (item 4): each race made certain by running the other side at a
# chosen point (a report of the sync, a step of the re-embedding), in this process.

LINES = {f"docs/{n}.txt": f"Line {n} of the docs, about topic number {n}.\n" for n in range(6)}


def int8_whole(config: AppConfig, name: str) -> dict[str, str]:
    """The collection's chunks (id -> text), after checking it records int8 and every vector is its context line's
    and text's."""
    collection = config.chroma.store().client().get_collection(name)
    assert collection.configuration_json["embedding_function"]["config"] == {"precision": "int8"}
    found = collection.get(include=["documents", "embeddings", "metadatas"])
    inputs = [embedding_input(d, m) for d, m in zip(found["documents"], found["metadatas"], strict=True)]
    exact = ChromaDefaultFunction(precision="int8")(inputs)
    assert np.allclose(np.array(found["embeddings"]), np.array(exact), atol=1e-5)
    return dict(zip(found["ids"], found["documents"], strict=True))


def expected_lines(name: str, files: dict[str, str]) -> dict[tuple[str, str], str]:
    return {(name, keys.chunk_id(keys.object_id(key), 0)): text for key, text in files.items()}


def test_a_sync_beside_a_swap_retries_its_keys_on_the_swapped_collection(
    neighbourhood: tuple[Path, Configure], s3: Any, bucket: str, fault_row: Row
) -> None:
    """A sync whose collection is swapped for its re-embedded copy after its first key (the re-embedding runs to
    the end inside that key's report): its later keys, written to the old collection's handle, are synced again
    on the swapped-in one; none fails, none stays stale."""
    from s3sync_dagster.pipeline.reembed import swap as reembed
    from s3sync_dagster.pipeline.sync.stages import sync_keys_following_swaps
    from s3sync_dagster.pipeline.sync.targets import Collections

    _, configure = neighbourhood
    float32 = configure(docs={})
    put(s3, bucket, dict(list(LINES.items())[:2]))
    sync(s3, float32, "docs", sorted(LINES)[:2])
    int8 = configure(embedding={"precision": "int8"}, docs={})
    put(s3, bucket, LINES)
    spec = int8.embedding.spec()
    source = int8.sources[0].spec(spec)
    store_ = int8.chroma.store()
    collections = Collections(lambda name: store_.collection(name, spec, owner=source.owner))
    swapped: list[str] = []

    def on_report(report: Any) -> None:
        if not swapped:  # the whole re-embedding, between this key and the next
            old = store_.collection(source.collection_name, spec, create=False)
            reembed.run(store_.client(), old, spec.build())
            swapped.append(old.name)

    reports = sync_keys_following_swaps(
        s3, source, collections, spec.build(), sorted(LINES), on_report=on_report, ahead=0
    )
    assert swapped and [r.status for r in reports if r.status == "failed"] == [], [r.message for r in reports]
    store.close_clients()
    fault_row.observe(expected_lines(source.collection_name, LINES), [
        (source.collection_name, i, t) for i, t in int8_whole(int8, source.collection_name).items()
    ])  # fmt: skip
    assert fault_row.lost == fault_row.duplicated == fault_row.stray == 0, fault_row
    fault_row.passed = True


def test_a_write_that_reached_the_old_collection_after_its_last_check_is_in_the_swapped_one(
    neighbourhood: tuple[Path, Configure], s3: Any, bucket: str, fault_row: Row
) -> None:
    """Another process's writer that opened the collection before the copy was begun writes it alone: a change it
    made after the last reconcile pass (and one after the first rename, before the drop) reaches the new one."""
    from s3sync_dagster.pipeline.reembed import swap as reembed

    _, configure = neighbourhood
    float32 = configure(docs={})
    put(s3, bucket, LINES)
    sync(s3, float32, "docs", sorted(LINES))
    int8 = configure(embedding={"precision": "int8"}, docs={})
    spec = int8.embedding.spec()
    name = int8.sources[0].collection_name
    ids = [keys.chunk_id(keys.object_id(key), 0) for key in sorted(LINES)]
    raw = int8.chroma.store().client()  # its raw writes go through no index function: they reach no copy
    late = {"reembed:copied": (ids[0], "Changed after the last check.\n"), "reembed:retired": (ids[1], None)}

    def step(point: str) -> None:
        if point in late:
            chunk_id, text = late[point]
            collection = raw.get_collection(name if point == "reembed:copied" else name + reembed.RETIRED_SUFFIX)
            if text is None:
                collection.delete(ids=[chunk_id])
            else:
                collection.update(ids=[chunk_id], documents=[text], embeddings=[ChromaDefaultFunction()([text])[0]])

    old = int8.chroma.store().collection(name, spec, create=False)
    reembed.run(int8.chroma.store().client(), old, spec.build(), step=step)
    store.close_clients()
    held = int8_whole(int8, name)
    files = dict(LINES)
    files[sorted(LINES)[0]] = "Changed after the last check.\n"
    del files[sorted(LINES)[1]]
    fault_row.observe(expected_lines(name, files), [(name, i, t) for i, t in held.items()])
    assert held == {i: t for (_, i), t in expected_lines(name, files).items()}
    fault_row.passed = True


def test_abandon_sticks_and_a_write_to_a_dropped_copy_fails_nothing(
    neighbourhood: tuple[Path, Configure], s3: Any, bucket: str, fault_row: Row, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--abandon` while a sync has the copy attached: the sync's next write goes on without it; a later sync
    under the same config begins no copy (`s3sync reembed` does, and says what it did)."""
    from s3sync_dagster.pipeline.reembed import swap as reembed

    path, configure = neighbourhood
    configure(docs={})
    put(s3, bucket, dict(list(LINES.items())[:3]))
    sync(s3, configure(docs={}), "docs", sorted(LINES)[:3])
    int8 = configure(embedding={"precision": "int8"}, docs={})
    name = int8.sources[0].collection_name
    spec = int8.embedding.spec()
    owner = int8.sources[0].spec(spec).owner
    writer = int8.chroma.store().collection(name, spec, owner=owner)  # the copy begun and attached here
    copy_name = reembed.copy_name(name)
    int8.chroma.store().client().get_collection(copy_name)
    assert main(["reembed", "docs", "--config", str(path), "--abandon"]) == 0  # another process's abandon
    store.close_clients()
    client = int8.chroma.store().client()
    assert copy_name not in [c.name for c in client.list_collections()]
    put(s3, bucket, {sorted(LINES)[0]: "Changed while the copy was dropped.\n"})
    spec_ = int8.sources[0].spec(spec)
    reports = sync_keys(s3, spec_, lambda _: writer, spec.build(), [sorted(LINES)[0]])
    assert [r.status for r in reports] == ["indexed"], [r.message for r in reports]
    # Under the same config, a write begins no copy again.
    sync(s3, int8, "docs", sorted(LINES)[:3])
    assert copy_name not in [c.name for c in int8.chroma.store().client().list_collections()]
    assert main(["reembed", "docs", "--config", str(path)]) == 0
    store.close_clients()
    held = int8_whole(int8, name)
    files = {**dict(list(LINES.items())[:3]), sorted(LINES)[0]: "Changed while the copy was dropped.\n"}
    fault_row.observe(expected_lines(name, files), [(name, i, t) for i, t in held.items()])
    assert held == {i: t for (_, i), t in expected_lines(name, files).items()}
    fault_row.passed = True


def test_two_reembeds_at_once_both_end_with_the_swapped_collection(
    neighbourhood: tuple[Path, Configure], s3: Any, bucket: str, fault_row: Row
) -> None:
    """A second re-embedding runs whole while the first stands between its last reconcile and its swap: the
    first finds the collection swapped and ends with it, instead of failing or swapping the new one away."""
    from s3sync_dagster.pipeline.reembed import swap as reembed

    _, configure = neighbourhood
    put(s3, bucket, LINES)
    sync(s3, configure(docs={}), "docs", sorted(LINES))
    int8 = configure(embedding={"precision": "int8"}, docs={})
    spec, name = int8.embedding.spec(), int8.sources[0].collection_name
    second: list[str] = []

    def step(point: str) -> None:
        if point == "reembed:copied" and not second:
            second.append("ran")
            client = int8.chroma.store().client()
            reembed.run(client, client.get_collection(name), spec.build())

    first = int8.chroma.store().collection(name, spec, create=False)
    swapped, progress = reembed.run(int8.chroma.store().client(), first, spec.build(), step=step)
    assert second and progress.phase == "swapped by another re-embedding" and swapped.name == name
    store.close_clients()
    held = int8_whole(int8, name)
    names = [c.name for c in int8.chroma.store().client().list_collections() if c.name.startswith(name)]
    assert names == [name], names
    fault_row.observe(expected_lines(name, LINES), [(name, i, t) for i, t in held.items()])
    assert held == {i: t for (_, i), t in expected_lines(name, LINES).items()}
    fault_row.passed = True


def test_a_killed_reembeds_run_is_failed_not_left_started(
    neighbourhood: tuple[Path, Configure], s3: Any, bucket: str, fault_row: Row
) -> None:
    """`s3sync reembed` killed mid-way leaves its run STARTED; the next reembed (and the run monitor) fail it."""
    import os
    import signal
    import subprocess
    import sys

    import dagster as dg

    path, configure = neighbourhood
    put(s3, bucket, LINES)
    sync(s3, configure(docs={}), "docs", sorted(LINES))
    int8 = configure(embedding={"precision": "int8"}, docs={})
    store.close_clients()
    killed = subprocess.run(
        [str(Path(sys.executable).parent / "s3sync"), "reembed", "docs", "--config", str(path), "--batch-size", "2"],
        env=dict(os.environ, S3SYNC_FAILPOINTS="reembed:page"), capture_output=True, text=True, timeout=300,
        start_new_session=True,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(dg.RunsFilter(job_name="docs_reembed"))
        assert run.status == dg.DagsterRunStatus.STARTED  # what the kill left
    assert main(["reembed", "docs", "--config", str(path)]) == 0
    with dg.DagsterInstance.get() as instance:
        statuses = sorted(r.status.value for r in instance.get_runs(dg.RunsFilter(job_name="docs_reembed")))
    assert statuses == ["FAILURE", "SUCCESS"], statuses
    store.close_clients()
    name = int8.sources[0].collection_name
    held = int8_whole(int8, name)
    fault_row.observe(expected_lines(name, LINES), [(name, i, t) for i, t in held.items()])
    fault_row.passed = True
