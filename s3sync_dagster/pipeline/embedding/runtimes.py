"""Our own embedding functions and how they compute: Chroma's `default` (all-MiniLM-L6-v2, bundled) on ONNX
Runtime or torch, and `sentence_transformer`, each loading its model on first use, never when built."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions.sentence_transformer_embedding_function import (
    SentenceTransformerEmbeddingFunction,
)

from s3sync_dagster.pipeline import extras
from s3sync_dagster.pipeline.embedding.default_model import bundled_model_path, ensure_default_model, ensure_int8_model

# Chroma's Rust client keeps threads of its own; OpenMP workers that spin while they wait then
# starve the two cores: one 256-token chunk took 0.97 s instead of 0.075 s. OpenMP reads this when
# torch loads, so it is set when this module is imported, before any torch import in our processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# auto, float32 and bfloat16 give the same vectors (cosine >= 0.9999 to one another; bfloat16 only changes how
# torch multiplies). int8 is the bundled model quantised (pipeline/embedding/default_model.py): other vectors (cosine 0.99
# to float32's), so a collection records it and is never written in both (check_collection_model).
Precision = Literal["auto", "float32", "bfloat16", "int8"]
INT8: Literal["int8"] = "int8"
# How our `default` function computes: ONNX Runtime (loads in <1 s) or torch (5-8 s to load; where the
# CPU multiplies bfloat16 natively, ~1.3x faster per text). auto: ONNX, and torch in bfloat16 once a
# process has embedded TORCH_AFTER_TEXTS texts on such a CPU (a bulk sync), where its load pays off.
Runtime = Literal["auto", "onnx", "torch"]
TORCH_AFTER_TEXTS = 2000

DEFAULT_FUNCTION = "default"
SENTENCE_TRANSFORMER = "sentence_transformer"
DEFAULT_MODEL = "all-MiniLM-L6-v2"
# What Chroma's default function (ONNX Runtime) reads: it truncates every text at 256 tokens, [CLS] and
# [SEP] included, as does the model's own sentence-transformers configuration.
DEFAULT_MODEL_MAX_TOKENS = 256

_load_lock = threading.Lock()
_models: dict[tuple[str, str], Any] = {}  # (model directory or name, device) -> SentenceTransformer, one per process


@functools.cache
def _torch_installed() -> bool:
    return extras.installed("torch")


@functools.cache
def _this_cpu_has_native_bf16() -> bool:
    try:  # read once per process: Chroma rebuilds the function each time it opens a collection
        return cpu_has_native_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this x86 CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), from /proc/cpuinfo's flags.

    Elsewhere bfloat16 is emulated and slower than float32, so `auto` keeps float32 there.
    """
    if cpuinfo is None:
        return _this_cpu_has_native_bf16()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: Precision, device: str) -> Literal["float32", "bfloat16", "int8"]:
    if precision == "auto":
        return "bfloat16" if device == "cpu" and cpu_has_native_bf16() else "float32"
    return precision


def load_model(model_path: str, device: str) -> Any:
    with _load_lock:
        model = _models.get((model_path, device))
        if model is None:
            # A collection recorded with the sentence_transformer function, opened where the [torch] extra is not.
            extras.require("torch", f"embedding with sentence-transformers (model {Path(model_path).name})")
            # Never reach for the hub: the model is a local directory or already cached (offline is the rule).
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
            model = SentenceTransformer(model_name_or_path=model_path, device=device)
            _models[(model_path, device)] = model
        return model


def _encode(
    model_path: str, device: str, texts: Documents, batch_size: int, precision: str, normalize: bool
) -> Embeddings:
    if not texts:
        return []
    import numpy as np
    import torch

    model = load_model(model_path, device)
    # bfloat16 autocast: the weights stay float32 and matrix products run in bfloat16 with float32
    # accumulation, which halves the model's time on CPUs with native bfloat16 (benchmarks/RESULTS.md).
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else contextlib.nullcontext()
    with autocast:
        vectors = model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=normalize,
            show_progress_bar=False,
        )
    return [np.asarray(vector, dtype=np.float32) for vector in vectors]


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
        return _encode(bundled_model_path(), self.device, input, self.batch_size, self.precision, normalize=True)

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
        return _encode(self.model_path, self.device, input, self.batch_size, self.precision, self.normalize_embeddings)


def is_bundled_name(model: str) -> bool:
    """Whether `model` is the hub's name for the model this project ships: loaded from the wheel, never downloaded."""
    return model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")


def recorded_precision(config: Mapping[str, Any]) -> str:
    """Which vectors a `default` collection holds, from its function's recorded config: `int8` or `float32`."""
    return INT8 if config.get("precision") == INT8 else "float32"
