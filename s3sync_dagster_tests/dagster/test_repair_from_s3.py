"""Repair restores what S3 holds (issue 62, item 2): a chunk whose text, hash or vector another tool changed in place
is read again from S3 and written anew, never embedded again from its own text; labels (user metadata, tags,
readers) changed in S3 after a sync are drift, and `repair` brings them back to S3's. A second repair finds
nothing. Moto over HTTP, embedded Chroma, the real `s3sync` command on a real Dagster instance."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.query import SourceSearch
from s3sync_dagster.config import AppConfig
from s3sync_dagster.pipeline import store
from s3sync_dagster.pipeline.audit import drift as audit
from s3sync_dagster.pipeline.chroma import vectors
from s3sync_dagster.pipeline.chunking.context import embedding_input
from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import ConfigFactory, Row, store_chunks

pytestmark = pytest.mark.reliability("fail closed")

SENTENCE = "The quarterly audit of the warehouse stock is done by the night shift.\n"
OTHER = "Penguins huddle together to keep warm through the antarctic winter.\n"
OTTER = "The otters are fed herring twice a day by the keepers.\n"
ZEBRA = "The zebra grazes by the northern fence at dawn.\n"


@pytest.fixture
def requests(s3: Any) -> Iterator[Counter[str]]:
    """The S3 operations the test's client sends (botocore's own event hook on the real client), by name."""
    sent: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        sent[model.name] += 1

    s3.meta.events.register("before-call.s3", count, unique_id="test-repair-count")
    yield sent
    s3.meta.events.unregister("before-call.s3", unique_id="test-repair-count")


def command(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """`s3sync ARGS --config PATH --json`: its exit code and its answer."""
    capsys.readouterr()
    code = main([*args, "--config", str(path), "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def collection_of(config: AppConfig) -> Any:
    store.close_clients()  # each command ran in-process on its own clients: read the store afresh
    return config.chroma.store().collection(config.sources[0].collection_name, config.embedding.spec())


def chunks_in(config: AppConfig) -> list[tuple[str, str, str]]:
    store.close_clients()
    return store_chunks(config.chroma.store().client())


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_repair_writes_chunks_edited_in_place_again_from_s3(
    s3: Any,
    bucket: str,
    make_config: ConfigFactory,
    dagster_home: Path,
    fault_row: Row,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another tool edits chunks in place, S3 unchanged: a text edited (vector and hash left), a text edited with
    its own vector (the hash left), a hash and vector changed (the text left). Each is written again from S3."""
    config, path = make_config(bucket, path_prefix="docs/", chunking={"type": "lines", "max_lines": 1})
    s3.put_object(Bucket=bucket, Key="docs/a.txt", Body=(SENTENCE + OTHER).encode())
    s3.put_object(Bucket=bucket, Key="docs/b.txt", Body=(OTTER + ZEBRA).encode())
    code, synced = command(path, capsys, "sync", "docs", "--all")
    assert code == 0, synced
    collection = collection_of(config)
    truth = {(collection.name, chunk_id): text for _, chunk_id, text in chunks_in(config)}
    assert len(truth) == 4

    model = ChromaDefaultFunction()
    a0, a1 = (keys.chunk_id(keys.object_id("docs/a.txt"), n) for n in (0, 1))
    b0 = keys.chunk_id(keys.object_id("docs/b.txt"), 0)
    collection.update(ids=[a0], documents=["EDITED: the stock is never audited."])
    collection.update(ids=[a1], documents=["EDITED: no penguins here."], embeddings=[model(["EDITED"])[0]])
    collection.update(ids=[b0], embeddings=[model([OTHER])[0]], metadatas=[{"text_hash": "0" * 32}])

    code, repaired = command(path, capsys, "repair", "docs")
    assert code == 0, repaired
    assert repaired["before"]["counts"]["misembedded"] == 3, repaired["before"]
    assert repaired["after"]["clean"], repaired["after"]

    collection = collection_of(config)
    found = collection.get(include=["documents", "embeddings", "metadatas"])
    texts = {(collection.name, chunk_id): text for chunk_id, text in zip(found["ids"], found["documents"], strict=True)}
    assert texts == truth  # S3's texts, not the edits
    function = vectors.function_record(collection)
    for text, vector, metadata in zip(found["documents"], found["embeddings"], found["metadatas"], strict=True):
        embedded = embedding_input(text, metadata)
        assert metadata["text_hash"] == vectors.text_hash(embedded, function), text
        assert cosine(vector, model([embedded])[0]) > 0.99, text  # the vector is its text's, not the tool's
    assert repaired["before"]["misembedded_keys"] == ["docs/a.txt", "docs/b.txt"]

    code, again = command(path, capsys, "repair", "docs")
    assert code == 0 and again["before"]["clean"] and again["run_id"] is None, again["before"]
    fault_row.observe(truth, chunks_in(config))
    fault_row.passed = True


def test_repair_brings_labels_changed_after_a_sync_back_to_s3s(
    s3: Any,
    bucket: str,
    make_config: ConfigFactory,
    dagster_home: Path,
    fault_row: Row,
    requests: Counter[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reader removed by a new tag value, another tag changed: the audit counts both objects as `relabel`, the
    repair writes S3's labels on their chunks (the removed reader sees nothing of the object at once), and a
    second repair finds nothing. One HEAD and one GetObjectTagging an indexed object; none without labels."""
    labelled = {"object_tags": ["cls"], "readers_tag": "readers", "object_metadata": ["team"]}
    config, path = make_config(bucket, path_prefix="docs/", chunking={"type": "lines", "max_lines": 1}, **labelled)
    for object_key, text, tags in [
        ("docs/a.txt", SENTENCE + OTHER, {"readers": "alice+bob", "cls": "secret"}),
        ("docs/b.txt", OTTER, {"readers": "alice", "cls": "public"}),
        ("docs/c.txt", ZEBRA, {"readers": "carol", "cls": "public"}),
    ]:
        tagging = "&".join(f"{key}={quote(value)}" for key, value in tags.items())
        s3.put_object(Bucket=bucket, Key=object_key, Body=text.encode(), Tagging=tagging, Metadata={"team": "ops"})
    code, synced = command(path, capsys, "sync", "docs", "--all")
    assert code == 0, synced
    truth = {(c, chunk_id): text for c, chunk_id, text in chunks_in(config)}
    assert len(truth) == 4

    def retag(object_key: str, **tags: str) -> None:
        tag_set = [{"Key": key, "Value": value} for key, value in tags.items()]
        s3.put_object_tagging(Bucket=bucket, Key=object_key, Tagging={"TagSet": tag_set})

    retag("docs/a.txt", readers="alice", cls="secret")  # bob removed
    retag("docs/b.txt", readers="alice", cls="internal")

    code, repaired = command(path, capsys, "repair", "docs")
    assert code == 0, repaired
    assert repaired["before"]["counts"].get("relabel") == 2, repaired["before"]["counts"]
    assert repaired["before"]["relabel"] == ["docs/a.txt", "docs/b.txt"]
    assert repaired["after"]["clean"] and repaired["after"]["relabel"] == [], repaired["after"]

    collection = collection_of(config)
    labels = {
        (metadata["object_key"], metadata.get("readers") and tuple(metadata["readers"]), metadata.get("tag_cls"))
        for metadata in collection.get(include=["metadatas"])["metadatas"]
    }
    assert labels == {
        ("docs/a.txt", ("alice",), "secret"),
        ("docs/b.txt", ("alice",), "internal"),
        ("docs/c.txt", ("carol",), "public"),
    }
    store.close_clients()
    searcher = SourceSearch("docs", config)
    assert "docs/a.txt" not in {hit.object_key for hit in searcher.search(SENTENCE, principals=["bob"])}
    assert "docs/a.txt" in {hit.object_key for hit in searcher.search(SENTENCE, principals=["alice"])}

    code, again = command(path, capsys, "repair", "docs")
    assert code == 0 and again["before"]["clean"] and again["run_id"] is None, again["before"]
    assert again["before"]["counts"]["relabel"] == 0

    # The cost: one HEAD and one GetObjectTagging an indexed object, read on the test's own client.
    store.close_clients()
    spec = config.sources[0].spec(config.embedding.spec())
    requests.clear()
    assert audit.audit(s3, spec, [collection_of(config)]).clean
    assert (requests["HeadObject"], requests["GetObjectTagging"]) == (3, 3), requests
    unlabelled, _ = make_config(bucket, path_prefix="docs/", chunking={"type": "lines", "max_lines": 1})
    requests.clear()
    drift = audit.audit(s3, unlabelled.sources[0].spec(unlabelled.embedding.spec()), [collection_of(config)])
    assert "relabel" not in drift.counts() and drift.relabel is None
    assert (requests["HeadObject"], requests["GetObjectTagging"]) == (0, 0), requests
    # A readers tag that cannot be read is that object's label drift (its sync fails it closed), not the audit's end.
    retag("docs/c.txt", readers="bob+eve smith", cls="public")
    assert audit.audit(s3, spec, [collection_of(config)]).relabel == ["docs/c.txt"]

    fault_row.observe(truth, chunks_in(config))
    fault_row.passed = True
