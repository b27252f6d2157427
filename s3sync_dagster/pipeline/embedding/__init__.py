"""Embedding: the functions a collection records (Chroma's `default`, `sentence_transformer`, any registered
name), how ours compute (ONNX Runtime or torch, precision), and the bundled model built offline from its weights.

May import: chunking, extras.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline.embedding.default_model import bundled_model_path, ensure_default_model
from s3sync_dagster.pipeline.embedding.functions import (
    DEFAULT_MODEL_CHUNK_TOKENS,
    EmbeddingSpec,
    default_token_budget,
    function_of_record,
    is_old_bundled_record,
    registered_names,
    same_function,
)
from s3sync_dagster.pipeline.embedding.onnx_minilm import (
    BATCH_SIZE,
    MAX_TOKENS,
    batch_feeds,
    batches,
    encode,
    load_session,
)
from s3sync_dagster.pipeline.embedding.runtimes import (
    DEFAULT_FUNCTION,
    INT8,
    SENTENCE_TRANSFORMER,
    TORCH_AFTER_TEXTS,
    Precision,
    Runtime,
    cpu_has_native_bf16,
    load_model,
    resolve_precision,
)

if TYPE_CHECKING:
    from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction, LazySentenceTransformer

# chromadb's classes, imported when first asked for: loading the config or the definitions reads this face, and
# chromadb's import is about a CPU second of every process that never opens a collection.
LAZY = {"ChromaDefaultFunction", "LazySentenceTransformer"}


def __getattr__(name: str) -> Any:
    if name in LAZY:
        return getattr(import_module("s3sync_dagster.pipeline.embedding.chroma_functions"), name)
    raise AttributeError(f"module 's3sync_dagster.pipeline.embedding' has no attribute '{name}'")


__all__ = [
    "BATCH_SIZE",
    "DEFAULT_FUNCTION",
    "DEFAULT_MODEL_CHUNK_TOKENS",
    "INT8",
    "MAX_TOKENS",
    "SENTENCE_TRANSFORMER",
    "TORCH_AFTER_TEXTS",
    "ChromaDefaultFunction",
    "EmbeddingSpec",
    "LazySentenceTransformer",
    "Precision",
    "Runtime",
    "batch_feeds",
    "batches",
    "bundled_model_path",
    "cpu_has_native_bf16",
    "default_token_budget",
    "encode",
    "ensure_default_model",
    "function_of_record",
    "is_old_bundled_record",
    "load_model",
    "load_session",
    "registered_names",
    "resolve_precision",
    "same_function",
]
