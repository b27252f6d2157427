"""The embedding function, as Chroma names it, and its config as chromadb records it (secrets as variable names)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from s3sync_dagster.config.secret_rules import ENV_VAR_NAME, SECRET_CONFIG_KEY, EnvRef, StrictModel
from s3sync_dagster.pipeline.embedding import EmbeddingSpec, Precision, Runtime


def _function_config(value: dict[str, Any], where: str) -> dict[str, Any]:
    """An embedding function's config as chromadb records it: `KEY: {env: VAR}` becomes `KEY_env_var: VAR`
    (chromadb reads the variable when it embeds), and a literal under a key that names a secret, at any
    depth, is refused, as is a `*_env_var` that is no variable name: the record is readable by anyone."""
    config: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{where}.{key}"
        if isinstance(item, dict) and set(item) == {"env"}:
            if where != "config":
                raise ValueError(f"{name}: chromadb reads secrets only from the config's top-level *_env_var keys")
            config[key if str(key).endswith("_env_var") else f"{key}_env_var"] = EnvRef.model_validate(item).env
        elif isinstance(item, dict):
            config[key] = _function_config(item, name)
        elif str(key).endswith("_env_var"):
            if not isinstance(item, str) or not ENV_VAR_NAME.match(item):
                raise ValueError(f"{name}: must be an environment variable's name (the value is not shown)")
            config[key] = item
        elif isinstance(item, str) and re.search(SECRET_CONFIG_KEY, str(key)):
            raise ValueError(f"{name}: a literal secret is refused: write it as {{env: VAR_NAME}}")
        else:
            config[key] = item
    return config


class EmbeddingConfig(StrictModel):
    """The embedding function, as Chroma names it; the default is Chroma's own (all-MiniLM-L6-v2, bundled).

    `default`: Chroma's default function; collections record it with no path, so any chromadb client
    queries them as they are. `sentence_transformer`: `model` is a model name already in the Hugging
    Face cache or a local directory (`model_name`: the name recorded for a directory, else its folder
    name). Any other name chromadb registers (`openai`, `cohere`, `chroma-cloud-qwen`, ...) takes its
    `config` as chromadb records it, secrets as `{env: VAR}` (`api_key: {env: OPENAI_API_KEY}` becomes
    chromadb's `api_key_env_var: OPENAI_API_KEY`).
    """

    function: str = "default"
    model: str | None = None
    model_name: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    # The most tokens the model reads of one text, for a function whose window is not known here; it
    # may also lower a known one.
    max_tokens: int | None = Field(default=None, ge=4)
    device: str = "cpu"
    batch_size: int = Field(default=64, ge=1)
    # auto: bfloat16 matrix products where the CPU has them in hardware (about 2x faster, vectors within
    # 1e-4 in cosine of float32), float32 elsewhere; float32 or bfloat16 to choose. Local models only.
    # int8: the default function's model quantised (about 2x the texts a second on a CPU; other vectors, within
    # 0.01 of float32's recall): explicit, and recorded on the collection, which then takes no other precision.
    precision: Precision = "auto"
    # How `default` computes: auto (ONNX Runtime, which loads in under a second; torch in bfloat16 once a
    # process has embedded 2,000 texts on a CPU with native bfloat16), onnx or torch.
    runtime: Runtime = "auto"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"function": value}
        if isinstance(value, dict) and "type" in value and "function" not in value:
            raise ValueError(
                "embedding.type is now embedding.function: `default` (Chroma's own all-MiniLM-L6-v2, bundled), "
                "`sentence_transformer` with `model`, or a function chromadb registers"
            )
        return value

    @field_validator("config", mode="before")
    @classmethod
    def _env_refs(cls, value: Any) -> Any:
        return _function_config(value, "config") if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _known_function(self) -> EmbeddingConfig:
        from s3sync_dagster.pipeline.embedding import DEFAULT_FUNCTION, INT8, SENTENCE_TRANSFORMER, registered_names

        if self.precision == INT8 and (
            self.function != DEFAULT_FUNCTION or self.device != "cpu" or self.runtime == "torch"
        ):
            raise ValueError(
                "precision int8 is the bundled model quantised for ONNX Runtime on the CPU: function default, "
                f"device cpu, runtime auto or onnx (got function {self.function}, device {self.device}, "
                f"runtime {self.runtime})"
            )
        if self.function in (DEFAULT_FUNCTION, SENTENCE_TRANSFORMER):
            if self.config:
                raise ValueError(f"config is for registered functions; {self.function} takes model and device")
            if self.function == DEFAULT_FUNCTION and (self.model or self.model_name):
                raise ValueError(
                    "the default function is all-MiniLM-L6-v2: for another model write function: sentence_transformer"
                )
            return self
        if self.function not in registered_names().split(", "):
            raise ValueError(
                f"'{self.function}' is not an embedding function chromadb knows (known: {registered_names()})"
            )
        if self.model or self.model_name:
            raise ValueError(f"{self.function} takes its model in config (as chromadb records it), not model")
        return self

    def spec(self) -> EmbeddingSpec:
        from s3sync_dagster.pipeline.embedding import EmbeddingSpec

        return EmbeddingSpec(
            function=self.function,
            model=self.model,
            model_name=self.model_name,
            config=dict(self.config),
            max_tokens=self.max_tokens,
            device=self.device,
            batch_size=self.batch_size,
            precision=self.precision,
            runtime=self.runtime,
        )
