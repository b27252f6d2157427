"""Our embedding functions as chromadb's classes: Chroma's `default` (all-MiniLM-L6-v2, bundled) and
`sentence_transformer`, each loading its model on first use, never when built (how they compute: runtimes.py).

Apart from runtimes.py, which the config and the definitions read, so that loading those does not import chromadb
(about 1 CPU second of every `s3sync` command, code server and `dg` command that never opens a collection)."""

from __future__ import annotations

import functools
from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions.sentence_transformer_embedding_function import (
    SentenceTransformerEmbeddingFunction,
)

from s3sync_dagster.pipeline import extras
from s3sync_dagster.pipeline.embedding.default_model import bundled_model_path, ensure_default_model, ensure_int8_model
from s3sync_dagster.pipeline.embedding.runtimes import (
    DEFAULT_FUNCTION,
    DEFAULT_MODEL,
    DEFAULT_MODEL_MAX_TOKENS,
    INT8,
    TORCH_AFTER_TEXTS,
    Precision,
    Runtime,
    encode_with_model,
    is_bundled_name,
    recorded_precision,
    resolve_precision,
)


@functools.cache
def _torch_installed() -> bool:
    return extras.installed("torch")


_texts_embedded = [0]  # by this process's default functions: when `auto` turns to torch


class ChromaDefaultFunction(EmbeddingFunction[Documents]):
    """Chroma's `default` function (all-MiniLM-L6-v2), computed from the bundled weights.

    The collection records `{"name": "default"}` with no machine path, so any `chromadb` client opens it
    with no arguments and embeds queries into the same space (its ONNX Runtime copy of the same weights).
    We compute with that same ONNX model, padded per batch instead of to 256 tokens (pipeline/embedding/onnx_minilm.py),
    or with torch, which runs bfloat16 matrix products where the CPU has them: both agree with chromadb's
    function to cosine >= 0.9999 (tested). See Runtime for which one runs.

    precision int8 runs the quantised copy of the model on ONNX Runtime (about 2x the texts a second on a
    CPU; benchmarks/RESULTS.md, section 11). Its vectors are not float32's, so the collection records
    `{"precision": "int8"}` in its function's config: our reads embed queries with it, and chromadb's own
    `default` function, which ignores the config, still queries it (cosine 0.99 to the int8 vectors).
    """

    def __init__(
        self, batch_size: int = 64, precision: Precision = "auto", device: str = "cpu", runtime: Runtime = "auto"
    ) -> None:
        self.batch_size = batch_size
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.runtime = runtime
        if precision == INT8:
            if device != "cpu" or runtime == "torch":
                raise ValueError("embedding.precision int8 runs the bundled model on ONNX Runtime, on the CPU only")
            self.runtime = "onnx"
        elif runtime == "auto" and (device != "cpu" or precision == "bfloat16"):
            self.runtime = "torch"  # a GPU, or bfloat16 asked for by name: only torch has them

    def uses_onnx(self) -> bool:
        if self.precision == INT8:
            return True
        if self.runtime != "auto":
            return self.runtime == "onnx"
        # Without the [torch] extra, auto stays on ONNX Runtime: same vectors, only no bfloat16 speed-up.
        return self.precision == "float32" or _texts_embedded[0] < TORCH_AFTER_TEXTS or not _torch_installed()

    def __call__(self, input: Documents) -> Embeddings:
        if not input:
            return []
        onnx = self.uses_onnx()
        _texts_embedded[0] += len(input)
        if onnx:
            import s3sync_dagster.pipeline.embedding.onnx_minilm as onnx_minilm

            # The model files setup made (made now, offline, if they are missing).
            if self.precision == INT8:
                # Each text alone: ONNX Runtime quantises a product's activations with one scale for the whole
                # batch, so in a batch a text's vector would depend on the texts beside it (cosine 0.992 to its
                # own, measured); alone it is the same whatever call it comes in, as the reuse of vectors needs.
                return onnx_minilm.encode_each(ensure_int8_model(), list(input))
            return onnx_minilm.encode(ensure_default_model(), list(input))
        return encode_with_model(
            bundled_model_path(), self.device, input, self.batch_size, self.precision, normalize=True
        )

    @staticmethod
    def name() -> str:
        return DEFAULT_FUNCTION

    def get_config(self) -> dict[str, Any]:
        # float32's record stays empty, as chromadb's own function and every collection before int8 record it.
        return {"precision": INT8} if self.precision == INT8 else {}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> ChromaDefaultFunction:
        return ChromaDefaultFunction(precision=INT8 if recorded_precision(config) == INT8 else "auto")

    def default_space(self) -> Space:
        return "l2"  # as chromadb's DefaultEmbeddingFunction, so our collections are configured like its own

    def max_tokens(self) -> int:
        return DEFAULT_MODEL_MAX_TOKENS


class LazySentenceTransformer(SentenceTransformerEmbeddingFunction):
    """Chroma's `sentence_transformer` function, but torch loads on the first embedding, not on construction.

    The collection records `model_name` (a portable name, never a directory of this machine), so a
    client elsewhere rebuilds the stock function from that record; here the model loads from
    `model_path` when one is given.
    """

    def __init__(
        self,
        model_name: str = "all-MiniLM-L6-v2",
        device: str = "cpu",
        normalize_embeddings: bool = True,
        batch_size: int = 64,
        precision: Precision = "auto",
        model_path: str | None = None,
    ) -> None:
        # Deliberately not calling super().__init__: it loads the model at once.
        self.model_name = model_name
        self.model_path = model_path or (bundled_model_path() if is_bundled_name(model_name) else model_name)
        self.device = device
        self.normalize_embeddings = normalize_embeddings
        self.kwargs: dict[str, Any] = {}
        self.batch_size = batch_size
        # Not part of get_config(): a stock float32 client querying the collection gets the same vectors
        # to within 1e-4 in cosine (checked in test_model.py).
        self.precision = resolve_precision(precision, device)

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> LazySentenceTransformer:
        # Chroma calls this while creating or opening a collection (`is_legacy`); the stock
        # version loads the model there, which would put torch on every run's path.
        return LazySentenceTransformer(
            model_name=config.get("model_name") or DEFAULT_MODEL,
            device=config.get("device") or "cpu",
            normalize_embeddings=bool(config.get("normalize_embeddings", True)),
        )

    def __call__(self, input: Documents) -> Embeddings:
        return encode_with_model(
            self.model_path, self.device, input, self.batch_size, self.precision, self.normalize_embeddings
        )
