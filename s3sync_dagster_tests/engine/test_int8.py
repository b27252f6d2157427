"""`embedding.precision: int8`: the bundled model quantised offline, recorded on the collection it writes, its
vectors close to float32's but not the same space, so a collection never holds both and queries embed with
the collection's own precision."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from s3sync_dagster.commands.query import SourceSearch
from s3sync_dagster.config import load_config
from s3sync_dagster.pipeline.chunking.context import embedding_input
from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction
from s3sync_dagster.pipeline.embedding.default_model import (
    ONNX_FILES,
    ensure_default_model,
    ensure_int8_model,
    int8_target,
)
from s3sync_dagster.pipeline.embedding.functions import EmbeddingSpec
from s3sync_dagster.pipeline.reembed import swap as reembed
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster_tests.conftest import put
from s3sync_dagster_tests.engine.test_model import plain_client_query

TEXTS = [
    "The deploy runbook: drain the node, roll the release, then watch the error rate for ten minutes.",
    "A soup recipe with leeks, potatoes and a little cream, simmered for half an hour.",
    "Quarterly tax filings are due on the fifteenth day after the quarter closes.",
    "def replace_chunks(collection, records):\n    return collection.upsert(ids=[r.id for r in records])\n",
    "Swifts spend most of their lives in the air and can stay aloft for months at a time.",
    "x",
]


def test_the_int8_model_is_made_offline_beside_the_float32_one_with_quantised_products(tmp_path: Path) -> None:
    import onnx

    handlers = list(logging.getLogger().handlers)
    source = ensure_default_model()
    target = tmp_path / "onnx-int8"
    assert ensure_int8_model(target, source=source) == target
    assert sorted(os.listdir(target)) == sorted(ONNX_FILES)
    assert sorted(os.listdir(tmp_path)) == [".onnx-int8.lock", "onnx-int8"]  # no staging folder left
    # The quantiser's advice goes nowhere: no handler left on the root logger, which Dagster's runs log through.
    assert logging.getLogger().handlers == handlers
    operators = {node.op_type for node in onnx.load(str(target / "model.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in operators and "MatMulInteger" in operators, operators
    # The products' weights a quarter of their size; the word embeddings (47 MB, a lookup, not a product) as they were.
    assert (target / "model.onnx").stat().st_size < (source / "model.onnx").stat().st_size * 0.7
    assert int8_target() == ensure_int8_model()  # setup's folder, beside chromadb's own


def test_int8_vectors_are_close_to_float32_but_not_the_same() -> None:
    exact = np.array(ChromaDefaultFunction(precision="float32")(TEXTS))
    fast = np.array(ChromaDefaultFunction(precision="int8")(TEXTS))
    cosines = (exact * fast).sum(axis=1)
    assert cosines.min() > 0.97, cosines
    assert cosines.min() < 0.9999, "the int8 path returned float32's vectors"
    assert list((fast @ exact.T).argmax(axis=1)) == list(range(len(TEXTS)))
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    # A text's vector is its own, whatever it is embedded beside (a batch shares one activation scale per
    # product: each text runs alone), so a stored vector can be reused for the same text anywhere.
    alone = np.array([ChromaDefaultFunction(precision="int8")([text])[0] for text in TEXTS])
    assert np.allclose(alone, fast, atol=1e-6)


def test_int8_is_the_bundled_models_on_the_cpu_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int8 is the bundled model's"):
        EmbeddingSpec(function="sentence_transformer", precision="int8")
    config = tmp_path / "s3sync.yaml"
    source = {"name": "docs", "bucket_name": "b", "collection_name": "docs"}
    for embedding in (
        {"function": "sentence_transformer", "precision": "int8"},
        {"precision": "int8", "device": "cuda"},
        {"precision": "int8", "runtime": "torch"},
    ):
        config.write_text(yaml.safe_dump({"embedding": embedding, "sources": [source]}), encoding="utf-8")
        with pytest.raises(ValueError, match="precision int8 is the bundled model quantised"):
            load_config(config)


@pytest.mark.parametrize("store", ["embedded", "server"])
def test_an_int8_collection_records_it_and_is_queried_in_int8_whatever_the_config_says(
    request: pytest.FixtureRequest, store: str, s3: Any, bucket: str, tmp_path: Path, moto_endpoint: str
) -> None:
    chroma: dict[str, Any] = {"path": "chroma"}
    if store == "server":
        chroma = {"host": "127.0.0.1", "port": request.getfixturevalue("chroma_server")}
    source = {
        "name": "notes", "bucket_name": bucket, "region": "us-east-1", "collection_name": f"i8-{bucket}"[:60],
        "endpoint_url": moto_endpoint, "chunking": {"type": "lines", "max_lines": 1},
        "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"}, "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
    }  # fmt: skip
    path = tmp_path / "s3sync.yaml"

    def configured(precision: str) -> Any:
        embedding = {"precision": precision}
        path.write_text(yaml.safe_dump({"chroma": chroma, "embedding": embedding, "sources": [source]}), "utf-8")
        return load_config(path)

    files = {f"notes/{n}.txt": text for n, text in enumerate(TEXTS[:5])}
    put(s3, bucket, files)
    int8 = configured("int8")
    spec = int8.embedding.spec()
    collection = int8.chroma.store().collection(source["collection_name"], spec)
    reports = sync_keys(s3, int8.sources[0].spec(spec), lambda _: collection, spec.build(), sorted(files))
    assert [report.status for report in reports] == ["indexed"] * len(files), reports
    try:
        recorded = collection.configuration_json["embedding_function"]
        assert (recorded["name"], recorded["config"]) == ("default", {"precision": "int8"})
        stored = collection.get(ids=collection.get(limit=1)["ids"], include=["embeddings", "documents", "metadatas"])
        embedded = [embedding_input(stored["documents"][0], stored["metadatas"][0])]  # context line and text
        assert np.allclose(stored["embeddings"][0], ChromaDefaultFunction(precision="int8")(embedded)[0])

        # The config turned back to float32: the collection still takes writes in int8, and a write begins its
        # re-embedding into a float32 copy (test_reembed.py), never a mix of the two in one collection.
        float32 = configured("float32")
        reopened = float32.chroma.store().collection(
            source["collection_name"],
            float32.embedding.spec(),
            owner=float32.sources[0].spec(float32.embedding.spec()).owner,  # a write of the source, as a run's
        )
        assert reopened.configuration_json["embedding_function"]["config"] == {"precision": "int8"}
        client = float32.chroma.store().client()
        copy = reembed.underway(client, reopened)
        assert copy is not None and copy.configuration_json["embedding_function"]["config"] == {}
        # A search still embeds its query as the collection holds it.
        searcher = SourceSearch("notes", float32)
        assert isinstance(searcher.embedding_function, ChromaDefaultFunction)
        assert searcher.embedding_function.precision == "int8"
        assert searcher.search("when are taxes due", mode="dense", n=1)[0].object_key == "notes/2.txt"
        assert reembed.abandon(client, reopened) and reembed.underway(client, reopened) is None
        if store == "embedded":  # chromadb alone, in a fresh process, queries it with its own float32 function
            soup = collection.get(where={"object_key": "notes/1.txt"})["ids"]
            assert (
                plain_client_query(tmp_path / "chroma", source["collection_name"], ["leek and potato soup"])[0][0]
                in soup
            )
    finally:
        if store == "server":
            int8.chroma.store().client().delete_collection(source["collection_name"])
