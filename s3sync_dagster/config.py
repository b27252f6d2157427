"""The user's YAML file: pydantic models of Chroma, embedding and S3 sources, and how to find and load it."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from s3sync_dagster.pipeline import cloud_limits, extras, keys
from s3sync_dagster.pipeline.conversion import DEFAULT_MAX_PAGES, DocumentOptions
from s3sync_dagster.pipeline.embed import EmbeddingSpec, Precision, Runtime
from s3sync_dagster.pipeline.objects import DEFAULT_MAX_OBJECT_BYTES
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.store import Store

DEFAULT_CONFIG_FILE = "s3sync.yaml"
CONFIG_ENV_VAR = "S3SYNC_CONFIG"
DEFAULT_CHROMA_PATH = ".s3sync/chroma"
# Chroma Sync's own limit per file; configurable per source.

SOURCE_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
# The rules on secrets are patterns, each written once: the model's validators, literal_secrets() (what `s3sync`
# and the component's load refuse first) and the JSON schema `dg check yaml` is given all use these strings.
_ENV_VAR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ENV_VAR_NAME = re.compile(_ENV_VAR_NAME_PATTERN)
_ENV_VAR_NAME_SCHEMA = {"type": "string", "pattern": _ENV_VAR_NAME_PATTERN}
# Shapes of real credentials: refused wherever they appear as a literal in the file.
_CREDENTIAL_SHAPE = "|".join(
    (
        r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
        r"\bck-[A-Za-z0-9]{20,}\b",  # Chroma Cloud API keys
        r"\bsk-[A-Za-z0-9_-]{20,}",  # OpenAI API keys (embedding functions)
    )
)
_SECRET_HEADER_WORDS = ("auth", "token", "key", "secret", "password", "cookie")
# A key that names a secret (a header's, an embedding function's config's), in any case: written without inline
# flags, which JSON schema's patterns (ECMA 262) lack.
_SECRET_NAME = "|".join("".join(f"[{c.upper()}{c}]" for c in word) for word in _SECRET_HEADER_WORDS)
# chromadb's own way to name a variable in a function's config: `api_key_env_var: OPENAI_API_KEY`.
_ENV_VAR_KEY = r"_env_var$"
_SECRET_CONFIG_KEY = rf"^(?!.*_env_var$).*({_SECRET_NAME})"
# `user:password@` in a URL (`scheme://user:password@host`) or a host (`user:password@host`).
_URL_CREDENTIALS = r"^[^:/?#]+://[^/?#]*@|^(?!.*://).*@"


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
            if not isinstance(item, str) or not _ENV_VAR_NAME.match(item):
                raise ValueError(f"{name}: must be an environment variable's name (the value is not shown)")
            config[key] = item
        elif isinstance(item, str) and re.search(_SECRET_CONFIG_KEY, str(key)):
            raise ValueError(f"{name}: a literal secret is refused: write it as {{env: VAR_NAME}}")
        else:
            config[key] = item
    return config


class ConfigError(ValueError):
    """The configuration file is missing or breaks a rule; the message names the field and source."""


def _no_credentials_in_url(value: str | None) -> str | None:
    """A URL or host with `user:password@` would carry a secret into logs, run config and `sources`."""
    if value is not None and re.search(_URL_CREDENTIALS, value):
        raise ValueError(
            "carries credentials (user:password@...), which are refused and not shown: give S3 credentials as "
            "aws_access_key_id / aws_secret_access_key {env: VAR}, Chroma's as headers {env: VAR}"
        )
    return value


class _Model(BaseModel):
    # Errors never echo what was written: a value in the wrong field is most often a secret.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class EnvRef(_Model):
    """A secret written as `{env: VAR_NAME}`: the file holds the variable's name, never its value."""

    env: str

    @field_validator("env")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _ENV_VAR_NAME.match(value):
            # Not echoed: what stands here by mistake is most often the secret itself.
            raise ValueError("is not an environment variable name (letters, digits, _; the value is not shown)")
        return value

    def resolve(self, what: str) -> str:
        value = os.environ.get(self.env)
        if value is None:
            raise ConfigError(
                f"{what}: environment variable {self.env} is not set: set it where s3sync and Dagster run (the "
                "shell, the project's .env, the deployment's environment), or name another variable"
            )
        return value


def _secret_must_be_env_ref(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError("a literal secret is refused: write it as {env: VAR_NAME}")
    return value


class TreeSitterChunking(_Model):
    """Chroma Sync API `{type: tree_sitter, max_size_bytes}`: code, then markdown, then lines."""

    type: Literal["tree_sitter"] = "tree_sitter"
    max_size_bytes: int = Field(default=4096, ge=16)
    max_lines: int = Field(default=10, ge=1)
    # Tokens per chunk, special tokens included; absent: what the embedding model reads (its window).
    # It may lower the budget, never raise it past the model (refused when the sources are built).
    max_tokens: int | None = Field(default=None, ge=4)

    def signature(self) -> str:
        return f"tree_sitter:{self.max_size_bytes}:{self.max_lines}" + (
            f":{self.max_tokens}t" if self.max_tokens else ""
        )


class LinesChunking(_Model):
    """Chroma Sync API `{type: lines, max_lines, max_size_bytes}`: every file by lines."""

    type: Literal["lines"]
    max_size_bytes: int = Field(default=4096, ge=16)
    max_lines: int = Field(default=10, ge=1)
    max_tokens: int | None = Field(default=None, ge=4)

    def signature(self) -> str:
        return f"lines:{self.max_size_bytes}:{self.max_lines}" + (f":{self.max_tokens}t" if self.max_tokens else "")


def _default_chunking_type(value: Any) -> Any:
    # `type` may be left out, as the Sync API allows: tree_sitter is the default chunker.
    if isinstance(value, dict) and "type" not in value:
        return {"type": "tree_sitter", **value}
    return value


ChunkingConfig = Annotated[
    TreeSitterChunking | LinesChunking, Field(discriminator="type"), BeforeValidator(_default_chunking_type)
]


class ChromaCloudConfig(_Model):
    tenant: str
    database: str
    api_key: Annotated[EnvRef, Field()]

    _literal = field_validator("api_key", mode="before")(_secret_must_be_env_ref)


class ChromaConfig(_Model):
    """Where the vectors go: embedded (`path`), a Chroma server (`host`), or Chroma Cloud (`cloud`)."""

    path: str | None = None
    host: str | None = None
    port: int = 8000
    ssl: bool = False
    headers: dict[str, str | EnvRef] = Field(default_factory=dict)
    cloud: ChromaCloudConfig | None = None
    # A server's lexical index (pipeline/lexicon_postgres.py): a PostgreSQL connection URL, in a variable
    # (postgresql://user:password@host:port/database), that every host writing or searching the server reaches.
    lexicon_postgres: EnvRef | None = None

    _host = field_validator("host")(_no_credentials_in_url)
    _lexicon_postgres = field_validator("lexicon_postgres", mode="before")(_secret_must_be_env_ref)

    @model_validator(mode="after")
    def _one_target(self) -> ChromaConfig:
        targets = [name for name in ("path", "host", "cloud") if getattr(self, name) is not None]
        if len(targets) > 1:
            raise ValueError(f"give only one of path, host or cloud (got {', '.join(targets)})")
        if self.lexicon_postgres is not None and self.host is None:
            raise ValueError(
                "lexicon_postgres is for a Chroma server (host): an embedded store keeps its lexical index in its "
                "folder, Chroma Cloud its own BM25 index"
            )
        if self.lexicon_postgres is not None:  # at load, not at the first query: the pip command that adds it
            extras.require("postgres", "chroma.lexicon_postgres")
        for header, value in self.headers.items():
            if isinstance(value, str) and re.search(_SECRET_NAME, header):
                raise ValueError(f"headers.{header}: a literal secret is refused: write it as {{env: VAR_NAME}}")
        return self

    @property
    def embedded_path(self) -> str:
        return self.path or DEFAULT_CHROMA_PATH

    @property
    def is_embedded(self) -> bool:
        return self.host is None and self.cloud is None

    def store(self) -> Store:
        """The store, opened as a run opens it (defs.resources.ChromaResource), without Dagster: its secrets
        (header values, the Cloud API key) are read now from their environment variables."""
        headers = {
            name: value.resolve(f"chroma header {name}") if isinstance(value, EnvRef) else value
            for name, value in self.headers.items()
        }
        return Store(
            path=self.embedded_path if self.is_embedded else None,
            host=self.host,
            port=self.port,
            ssl=self.ssl,
            headers=tuple(sorted(headers.items())),
            cloud_tenant=self.cloud.tenant if self.cloud else None,
            cloud_database=self.cloud.database if self.cloud else None,
            cloud_api_key=self.cloud.api_key.resolve("chroma cloud api_key") if self.cloud else None,
            lexicon_dsn=self.lexicon_postgres.resolve("chroma lexicon_postgres") if self.lexicon_postgres else None,
        )


class EmbeddingConfig(_Model):
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
        from s3sync_dagster.pipeline.embed import DEFAULT_FUNCTION, INT8, SENTENCE_TRANSFORMER, registered_names

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
        from s3sync_dagster.pipeline.embed import EmbeddingSpec

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


class DocumentsConfig(_Model):
    """Document extraction (PDF, Office, OpenDocument, HTML, EPUB, images), shared by all sources."""

    # docling's model weights for the full PDF layout pipeline; absent: the Hugging Face cache, and
    # the model-free native pipeline (with a warning) when they are not there either.
    artifacts_path: str | None = None
    timeout_seconds: float = Field(default=300.0, gt=0)  # per file; an overrun fails that key only
    workers: int = Field(default=2, ge=1)  # worker processes converting documents in parallel
    ocr: bool = True  # Tesseract for images and PDF pages without a text layer, when installed


class TimeoutsConfig(_Model):
    """How long a source's S3 (and SQS) endpoint may take, and how often a request is tried.

    A request that times out or cannot connect is tried again after an exponential backoff with
    jitter (botocore's standard retry mode); when the last attempt fails, so does that key alone.
    """

    connect_seconds: float = Field(default=10.0, gt=0)
    read_seconds: float = Field(default=60.0, gt=0)  # between two reads of an answer, not for the whole body
    max_attempts: int = Field(default=3, ge=1)  # the first request counts


# An asset's tags, owners and kinds by Dagster's rules (strict tags: letters, digits, `_`, `-`, `.`), checked at load
# so that the error names the source and the field. Dagster allows an asset ten kinds: s3 and chroma are the source's.
_TAG_KEY = re.compile(r"^([A-Za-z0-9_.-]{1,63}/)?[A-Za-z0-9_.-]{1,63}$")
_TAG_VALUE = re.compile(r"^[A-Za-z0-9_.-]{0,63}$")
_OWNER_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,7}$")
_KIND = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
_TEMPLATE = re.compile(r"^\s*\{\{.*\}\}\s*$", re.DOTALL)
SOURCE_KINDS = ("s3", "chroma")
_CONDITION_SCHEMA = {"type": "string", "description": '"{{ dg.AutomationCondition.on_missing() }}": a Dagster template'}


class AssetAttributes(_Model):
    """`asset:` on a source: its asset's attributes as Dagster names them (dagster-sling's and dagster-dbt's
    translators set the same), beside the source's own `group_name` and `asset_key_prefix`. docs/component.md."""

    description: str | None = Field(default=None, min_length=1)  # instead of the asset's own
    tags: dict[str, str | int | float | bool] = Field(default_factory=dict)
    owners: list[str] = Field(default_factory=list)
    kinds: list[str] = Field(default_factory=list, max_length=10 - len(SOURCE_KINDS))  # beside s3 and chroma
    # A Dagster template that makes an AutomationCondition. A component's defs.yaml has it rendered by Dagster before
    # this model sees it (the object); s3sync.yaml keeps the text, rendered where the asset is made (defs/source.py).
    automation_condition: Annotated[Any, WithJsonSchema(_CONDITION_SCHEMA)] = None
    # Beside the asset's own (collection, bucket, path_prefix, chunking), which keep their values.
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _not_the_sources_own(cls, value: Any) -> Any:
        own = {"group_name": "group_name", "key_prefix": "asset_key_prefix", "asset_key_prefix": "asset_key_prefix"}
        for name in set(own) & set(value if isinstance(value, dict) else ()):
            raise ValueError(f"`{name}` is the source's own: write `{own[name]}:` beside `name:`, not under `asset:`")
        return value

    @field_validator("tags")
    @classmethod
    def _dagster_tags(cls, tags: dict[str, Any]) -> dict[str, Any]:
        for key, value in tags.items():
            if not _TAG_KEY.match(key) or key.startswith("dagster/"):
                raise ValueError(f"tag key '{key}': letters, digits, '_', '-', '.' (63 at most), one 'namespace/' "
                                 "before them at most, and not 'dagster/'")  # fmt: skip
            if not _TAG_VALUE.match(_tag_text(value)):
                raise ValueError(f"tag '{key}': its value must be letters, digits, '_', '-', '.' (63 at most)")
        return tags

    @field_validator("owners")
    @classmethod
    def _dagster_owners(cls, owners: list[str]) -> list[str]:
        for owner in owners:
            if not (owner.startswith("team:") and len(owner) > len("team:")) and not _OWNER_EMAIL.match(owner):
                raise ValueError(f"owner '{owner}': an email address, or a team written 'team:NAME'")
        return owners

    @field_validator("kinds")
    @classmethod
    def _dagster_kinds(cls, kinds: list[str]) -> list[str]:
        for kind in kinds:
            if not _KIND.match(kind):
                raise ValueError(f"kind '{kind}': letters, digits, '_', '-', '.' (63 at most)")
        return kinds

    @field_validator("automation_condition")
    @classmethod
    def _a_condition(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and _TEMPLATE.match(value)):
            return value
        if isinstance(value, str):
            raise ValueError(
                'write a Dagster template that makes the condition: "{{ dg.AutomationCondition.on_missing() }}" '
                "(or .eager(), .on_cron('0 3 * * *'), ...)"
            )
        from dagster import AutomationCondition  # rendered by Dagster: Dagster is loaded already

        if not isinstance(value, AutomationCondition):
            raise ValueError(f"the template made a {type(value).__name__}, not an AutomationCondition")
        return value

    def tag_values(self) -> dict[str, str]:
        """The tags as Dagster stores them: text (`true` for a flag)."""
        return {key: _tag_text(value) for key, value in self.tags.items()}


def _tag_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class SourceConfig(_Model):
    """One S3 source: a bucket (and prefix) synced into one Chroma collection."""

    name: str = Field(pattern=SOURCE_NAME_PATTERN)
    bucket_name: str = Field(min_length=3, max_length=63)
    region: str
    collection_name: str = Field(min_length=3, max_length=512)
    endpoint_url: str | None = None
    aws_access_key_id: EnvRef | None = None
    aws_secret_access_key: EnvRef | None = None
    aws_session_token: EnvRef | None = None
    path_prefix: str = ""
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    chunking: ChunkingConfig = Field(default_factory=TreeSitterChunking)
    max_object_bytes: int = Field(default=DEFAULT_MAX_OBJECT_BYTES, ge=1)
    max_document_pages: int = Field(default=DEFAULT_MAX_PAGES, ge=1)  # Chroma Sync's limit per document
    # Auto-sync, as Chroma Sync: S3 event notifications through an SQS queue, `direct` (every upload)
    # or `metadata` (only .meta.json uploads); deletes are followed too.
    auto_sync: Literal["none", "direct", "metadata"] = "none"
    sqs_queue_url: str | None = None
    # How long a received event stays hidden from other readers. Its message is deleted only once the
    # runs it asked for exist (a later tick); a tick that dies before has it delivered again after this.
    sqs_visibility_timeout_seconds: int = Field(default=300, ge=10, le=43200)
    # After its keys, the SQS sensor's run reads the queue itself this long since its last event, syncing each new
    # one at once (a fraction of a second) instead of leaving it to a new run (seconds to start); the sensor
    # leaves the queue to that run meanwhile. It gives its run slot up early when another run is queued. 0: off.
    sqs_linger_seconds: int = Field(default=60, ge=0, le=3600)
    # How long a tick of the SQS sensor waits on an empty queue (SQS's long poll, 20 s at most; a message ends it at
    # once). Dagster's daemon starts sensor ticks every 5 s at most and none while the sensor's last one runs: a
    # wait just under a multiple of 5 ends right before a loop, so the queue goes unread about 1 s in 5, 10, 15 or
    # 20 whatever the value, and an upload's event is seen the moment it lands most of the time. What the value
    # sets is the idle cost: a tick (a Dagster instance, the tick's records, an SQS request) every wait + 1 s.
    sqs_wait_seconds: int = Field(default=19, ge=1, le=20)
    poll_interval_seconds: int | None = Field(default=None, ge=1)  # prefix polling; absent: none
    # After its keys, the poll sensor's run passes over the prefix itself every poll_interval_seconds until its
    # passes have found no change this long: a change is then synced by a process already warm (a fraction of a
    # second after the pass that finds it) instead of by a new run (seconds to start); the sensor leaves the prefix
    # to that run meanwhile. Only where poll_interval_seconds is at most this (a run would wait for no pass). 0: off.
    poll_linger_seconds: int = Field(default=60, ge=0, le=3600)
    document_limit: int | None = Field(default=None, ge=1)  # at most this many keys are registered
    # Keys per run for backfills, `s3sync sync` and the sensors: one run start-up is shared by these.
    keys_per_run: int = Field(default=100, ge=1)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    # A regular expression with a named group `container_tag`, matched against each object key; the
    # group's text is stored as the chunks' `container_tag` metadata (Supermemory's dynamic tags).
    container_tag_regex: str | None = None
    # Where this source's .meta.json files and invocations may send chunks besides its own collection: globs
    # on collection names (absent: any collection no other configured source writes). A collection another
    # source writes is never allowed, whatever the globs say.
    target_collections: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # Two sources whose prefixes overlap in one bucket (`team1` and `team10/`, or `""` and anything) would each
    # index the other's keys: refused at load unless both sources set this (a deliberate second view of the
    # same objects, into its own collection).
    allow_prefix_overlap: bool = False
    group_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]+$")  # the UI's asset group; default: name
    # A key whose object is deleted leaves the source's partitions once its chunks are gone, so the UI lists only
    # what exists. Set false when assets of your own are partitioned by the source's partitions (`<name>_objects`)
    # with an automation condition: Dagster cannot show their Automation tab once a partition one of their
    # evaluations named is deleted (dagster #33910); the partition then stays, its last materialization `removed`.
    forget_deleted_keys: bool = True
    # The asset's key is this prefix, then `documents`: default [name] (the key `<name>/documents`, as before).
    asset_key_prefix: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]] | None = Field(default=None, min_length=1)
    # The asset's other attributes, as Dagster's (description, tags, owners, kinds, automation condition).
    asset: AssetAttributes = Field(default_factory=AssetAttributes)
    # The collections the other sources of the same config write, by name -> their source (set by AppConfig).
    _collection_owners: dict[str, str] = PrivateAttr(default_factory=dict)
    _project: str = PrivateAttr(default="")  # the config's project (set by AppConfig)
    _cloud_limits: bool = PrivateAttr(default=False)  # the store is Chroma Cloud (set by AppConfig)

    _literal = field_validator("aws_access_key_id", "aws_secret_access_key", "aws_session_token", mode="before")(
        _secret_must_be_env_ref
    )
    _urls = field_validator("endpoint_url", "sqs_queue_url")(_no_credentials_in_url)

    @field_validator("collection_name")
    @classmethod
    def _chroma_collection_name(cls, value: str) -> str:
        # Chroma's own rule, checked here so the error names the source instead of failing mid-run.
        keys.validate_collection_name(value, "collection_name")
        # Another source's swap or first open would take such a collection for its own copy and rename it.
        return keys.check_not_reserved(value, "collection_name")

    @field_validator("target_collections")
    @classmethod
    def _targets_not_reserved(cls, value: list[str]) -> list[str]:
        # A glob may match a reserved name (the write refuses it); a name that is one is refused here.
        for pattern in value:
            keys.check_not_reserved(pattern, "target_collections")
        return value

    @field_validator("container_tag_regex")
    @classmethod
    def _container_tag_group(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            pattern = re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression ({error})") from None
        if "container_tag" not in pattern.groupindex:
            raise ValueError("needs a named group: (?P<container_tag>...)")
        return value

    @model_validator(mode="after")
    def _auto_sync_needs_a_queue(self) -> SourceConfig:
        if self.auto_sync != "none" and not self.sqs_queue_url:
            raise ValueError(f"auto_sync: {self.auto_sync} needs sqs_queue_url")
        return self

    def credentials_in_words(self) -> str:
        """What this source authenticates with, for an error that says what to check: the fields and the
        names of their variables (never their values), or the default AWS credential chain."""
        named = [
            f"{field_name} (variable {ref.env})"
            for field_name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
            if (ref := getattr(self, field_name)) is not None
        ]
        if named:
            return " and ".join(named)
        return (
            "the default AWS credential chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance "
            "role), or give aws_access_key_id and aws_secret_access_key as {env: VAR}"
        )

    def spec(self, embedding: EmbeddingSpec | None = None, documents: DocumentOptions | None = None) -> SourceSpec:
        """The engine's view of this source: its settings as plain values, with the chunk token budget of
        the embedding model and the document options (extraction settings shared by every source)."""
        try:
            tokens = (embedding or EmbeddingConfig().spec()).token_budget(self.chunking.max_tokens)
        except ValueError as error:
            raise ValueError(f"source '{self.name}': {error}") from None
        return SourceSpec(
            name=self.name,
            bucket_name=self.bucket_name,
            collection_name=self.collection_name,
            path_prefix=self.path_prefix,
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            chunking_mode=self.chunking.type,
            max_size_bytes=self.chunking.max_size_bytes,
            max_lines=self.chunking.max_lines,
            tokens=tokens,
            max_object_bytes=self.max_object_bytes,
            document_options=dataclasses.replace(documents or DocumentOptions(), max_pages=self.max_document_pages),
            container_tag_regex=self.container_tag_regex,
            auto_sync=self.auto_sync,
            collection_owners=tuple(sorted(self._collection_owners.items())),
            target_collections=tuple(self.target_collections),
            project=self._project,
            cloud_limits=self._cloud_limits,
        )

    @property
    def other_sources(self) -> frozenset[str]:
        """The names of the config's other sources."""
        return frozenset(self._collection_owners.values())

    def set_collection_owners(self, owners: dict[str, str]) -> None:
        """Which source writes which collection, over the whole config: the others' are never this one's."""
        self._collection_owners = {name: owner for name, owner in owners.items() if owner != self.name}

    def set_cloud_limits(self, cloud: bool) -> None:
        """Whether the store is Chroma Cloud, whose quotas per record the sync checks before a write (set by
        AppConfig once the source's settings are known to fit them)."""
        self._cloud_limits = cloud

    def set_project(self, project: str) -> None:
        """The config's project, recorded on every chunk the source writes (set by AppConfig)."""
        self._project = project

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> SourceConfig:
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError(
                "give aws_access_key_id and aws_secret_access_key together, "
                "or neither to use the default AWS credential chain"
            )
        return self


class CeleryConfig(_Model):
    """Steps run on Celery workers (dagster-celery) that share this config file: where their broker is."""

    # redis://host:port/db. A URL with a password is a secret: give it as {env: VAR_NAME}.
    broker: str | EnvRef
    backend: str | EnvRef | None = None  # where step results wait for the run; default: the broker
    # A step taken by a worker that vanished (kill -9, a lost host) goes back to the queue after this
    # long: Redis cannot tell a dead worker from a slow one, so keep it above the longest run.
    visibility_timeout_s: int = Field(default=3600, ge=1)
    # Runs `s3sync sync` keeps in flight. About twice the workers: a run's orchestration (its creation, the
    # events, dagster-celery's one-second poll for the result) takes as long as a small step on a worker.
    concurrent_runs: int = Field(default=4, ge=1)

    @field_validator("broker", "backend")
    @classmethod
    def _no_password(cls, value: str | EnvRef | None) -> str | EnvRef | None:
        if isinstance(value, str) and re.search(_URL_CREDENTIALS, value):
            raise ValueError(
                "carries credentials (user:password@...), which are refused and not shown: "
                "give the whole URL as {env: VAR_NAME}"
            )
        return value


class ExecutorConfig(_Model):
    """Where a run's step executes: in the run's own process (default), or on Celery workers."""

    celery: CeleryConfig | None = None


class WebserverConfig(_Model):
    """Where the Dagster webserver answers: each source's backfill job starts Dagster's own partition backfills
    through its GraphQL API (the call the UI's own Materialize dialog makes), the only public way to start one."""

    url: str = "http://localhost:3000"  # `dagster dev`'s default; in a deployment, the webserver's service
    # Dagster+ (or a proxy in front of the webserver): the API token, sent as `Dagster-Cloud-Api-Token`.
    api_token: EnvRef | None = None

    _url = field_validator("url")(_no_credentials_in_url)
    _literal = field_validator("api_token", mode="before")(_secret_must_be_env_ref)


_RESOURCE_KEY = r"^[A-Za-z_][A-Za-z0-9_]*$"  # a Python identifier: Dagster's rule for resource keys


class ResourceKeysConfig(_Model):
    """The keys the sources' resources take in the code location. Namespaced, so a Dagster project's own `s3`,
    `chroma` or `io_manager` resources are left alone; change one if it still meets one of the project's."""

    s3: str = Field(default="s3sync_s3", pattern=_RESOURCE_KEY)
    chroma: str = Field(default="s3sync_chroma", pattern=_RESOURCE_KEY)
    embedding: str = Field(default="s3sync_embedding", pattern=_RESOURCE_KEY)
    documents: str = Field(default="s3sync_documents", pattern=_RESOURCE_KEY)
    webserver: str = Field(default="s3sync_webserver", pattern=_RESOURCE_KEY)
    # What the asset's and the jobs' outputs (none of them has a value) are handed to, instead of the project's
    # `io_manager`, which our runs then never start.
    io_manager: str = Field(default="s3sync_io_manager", pattern=_RESOURCE_KEY)

    @model_validator(mode="after")
    def _distinct(self) -> ResourceKeysConfig:
        seen: dict[str, str] = {}
        for role, key in self.model_dump().items():
            other = seen.setdefault(key, role)
            if other != role:
                raise ValueError(f"resource_keys.{other} and resource_keys.{role} are both '{key}': give each its own")
        return self


class AppConfig(_Model):
    # The deployment these sources belong to, recorded on every chunk they write: two projects sharing one
    # Chroma store (or server) whose sources read the same bucket tell their chunks apart by it. Absent,
    # sources are told apart by name, bucket and prefix (pipeline/owners.py). Not a secret: it is in metadata.
    project: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    chroma: ChromaConfig = Field(default_factory=ChromaConfig)
    webserver: WebserverConfig = Field(default_factory=WebserverConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    documents: DocumentsConfig = Field(default_factory=DocumentsConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    resource_keys: ResourceKeysConfig = Field(default_factory=ResourceKeysConfig)
    sources: list[SourceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> AppConfig:
        seen: set[str] = set()
        writers: dict[str, str] = {}
        keys_of: dict[tuple[str, ...], str] = {}
        for source in self.sources:
            if source.name in seen:
                raise ValueError(f"source name '{source.name}' is used twice")
            seen.add(source.name)
            key = (*(source.asset_key_prefix or [source.name]), "documents")
            if (other_key := keys_of.setdefault(key, source.name)) != source.name:
                raise ValueError(
                    f"sources '{other_key}' and '{source.name}' both have the asset key '{'/'.join(key)}': give one "
                    "another asset_key_prefix"
                )
            # Chunk ids are sha256(object_key): two sources in one collection would overwrite and
            # delete each other's chunks whenever their keys meet.
            other = writers.setdefault(source.collection_name, source.name)
            if other != source.name:
                raise ValueError(
                    f"sources '{other}' and '{source.name}' both write collection '{source.collection_name}'; "
                    "give each source its own collection"
                )
        for source in self.sources:
            source.set_collection_owners(writers)
            source.set_project(self.project or "")
        return self

    @model_validator(mode="after")
    def _prefixes_apart(self) -> AppConfig:
        # S3 prefixes are plain string prefixes: `team1` holds `team10/secret.txt`.
        for position, first in enumerate(self.sources):
            for second in self.sources[position + 1 :]:
                if (first.endpoint_url, first.bucket_name) != (second.endpoint_url, second.bucket_name):
                    continue
                inner, outer = sorted((first, second), key=lambda source: len(source.path_prefix), reverse=True)
                if not inner.path_prefix.startswith(outer.path_prefix):
                    continue
                if first.allow_prefix_overlap and second.allow_prefix_overlap:
                    continue
                raise ValueError(
                    f"sources '{first.name}' (path_prefix '{first.path_prefix}') and '{second.name}' (path_prefix "
                    f"'{second.path_prefix}') overlap in bucket '{first.bucket_name}': every key under "
                    f"'{inner.path_prefix}' belongs to both, so each would index the other's objects; give them "
                    "prefixes that do not start one another, or set allow_prefix_overlap: true on both"
                )
        return self

    @model_validator(mode="after")
    def _workers_reach_the_store(self) -> AppConfig:
        if self.executor.celery is not None and self.chroma.is_embedded:
            raise ValueError(
                "executor.celery runs steps on workers that may be other hosts: they cannot share an embedded "
                "Chroma store (chroma.path); give chroma.host (a Chroma server) or chroma.cloud"
            )
        return self

    @model_validator(mode="after")
    def _budgets_fit_the_model(self) -> AppConfig:
        # Checked here so the error names the source at load time, not in the middle of a run.
        spec = self.embedding.spec()
        for source in self.sources:
            try:
                spec.token_budget(source.chunking.max_tokens)
            except ValueError as error:
                raise ValueError(f"source '{source.name}': {error}") from None
        return self

    @model_validator(mode="after")
    def _settings_fit_chroma_cloud(self) -> AppConfig:
        # Chroma Cloud's quotas (pipeline/cloud_limits.py): a setting that would break one is refused at load,
        # naming the source and the setting; what only an object can break is checked before its write.
        cloud = self.chroma.cloud
        if cloud is not None:
            cloud_limits.check_database(cloud.database)
            for source in self.sources:
                cloud_limits.check_source(source.name, source.chunking.max_size_bytes, source.collection_name)
        for source in self.sources:
            source.set_cloud_limits(cloud is not None)
        return self

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"no source named '{name}' (configured: {known})")


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`--config PATH`, else `$S3SYNC_CONFIG`, else `./s3sync.yaml`."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV_VAR)
    return Path(from_env) if from_env else Path(DEFAULT_CONFIG_FILE)


# The S3ChromaSync component, as a Dagster project's defs.yaml names it (definitions.py builds it): found here
# without importing Dagster, so that `s3sync query` does not pay for it.
COMPONENT_TYPE = "s3sync_dagster.S3ChromaSync"
COMPONENT_FILES = ("defs.yaml", "defs.yml")


def component_file(path: Path) -> Path | None:
    """The defs.yaml that declares the S3ChromaSync component at `path` (the file, or its folder), if any."""
    candidates = [path / name for name in COMPONENT_FILES] if path.is_dir() else [path]
    for candidate in candidates:
        if candidate.name in COMPONENT_FILES and candidate.is_file():
            try:
                documents = list(yaml.safe_load_all(candidate.read_text(encoding="utf-8")))
            except (yaml.YAMLError, UnicodeDecodeError):
                return None
            if any(isinstance(doc, dict) and doc.get("type") == COMPONENT_TYPE for doc in documents):
                return candidate
    return None


def project_root(start: Path) -> Path | None:
    """The Dagster project holding `start`: the nearest folder with a dg.toml or a pyproject.toml with [tool.dg]."""
    for folder in [start, *start.parents]:
        if (folder / "dg.toml").is_file():
            return folder
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.dg" in pyproject.read_text(encoding="utf-8", errors="replace"):
            return folder
    return None


def load_project_env(component: Path) -> None:
    """The Dagster project's `.env`, as `dg dev` and `dg check` load it: variables already set keep their value."""
    root = project_root(component.resolve().parent)
    if root is not None and (root / ".env").is_file():
        from dotenv import load_dotenv

        load_dotenv(root / ".env", override=False)


def _skipped(folder: str) -> bool:
    """Folders no defs.yaml of the project's is in: virtual environments, caches, hidden folders."""
    return folder.startswith(".") or folder in ("node_modules", "__pycache__", "site-packages", "venv")


def find_component(start: Path, within: Path | None = None) -> Path | None:
    """The defs.yaml of the S3ChromaSync component in the Dagster project holding `start` (searched `within` its
    defs folder when known, else the whole project but its environments and caches), if there is one."""
    root = project_root(start.resolve())
    if root is None:
        return None
    found: list[Path] = []
    for folder, subfolders, files in os.walk(within or root):
        subfolders[:] = sorted(name for name in subfolders if not _skipped(name))
        found += [
            Path(folder) / name for name in COMPONENT_FILES if name in files and component_file(Path(folder) / name)
        ]
    if len(found) > 1:
        raise ConfigError(
            f"the Dagster project {root} declares {COMPONENT_TYPE} {len(found)} times "
            f"({', '.join(str(path.relative_to(root)) for path in sorted(found))}): one component holds all of a "
            "project's sources: list them all under one component's `sources`"
        )
    return found[0] if found else None


def config_file() -> Path:
    """The file that declares the sources: `$S3SYNC_CONFIG`, else ./s3sync.yaml, else the S3ChromaSync component's
    defs.yaml in the Dagster project around the working directory."""
    path = config_path()
    if os.environ.get(CONFIG_ENV_VAR) or path.exists():
        return path
    return find_component(Path.cwd()) or path


def is_component(path: Path) -> bool:
    return component_file(path) is not None


def state_dir(path: Path) -> Path:
    """Where `.s3sync/` goes for the sources declared at `path`: the Dagster project's root for a component,
    else the config file's folder."""
    if is_component(path):
        return project_root(path.resolve().parent if path.is_file() else path.resolve()) or path.resolve().parent
    return path.resolve().parent


_CHUNKERS = ("tree_sitter", "lines")  # the chunking union's tags


def _where(raw: Any, loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location, naming a source by its name: `sources[1] (source 'docs').region`."""
    parts: list[str] = []
    node = raw
    for step in loc:
        if parts and parts[-1] == "chunking" and step in _CHUNKERS:
            continue  # the discriminator tag pydantic adds to the location
        if isinstance(step, int):
            name = (
                node[step].get("name")
                if isinstance(node, list) and step < len(node) and isinstance(node[step], dict)
                else None
            )
            parts[-1] += f"[{step}]" + (f" (source '{name}')" if name else "")
        else:
            parts.append(step)
        node = node[step] if isinstance(node, (dict, list)) and _has(node, step) else None  # type: ignore[index]
    return ".".join(parts) or "(top level)"


def _has(node: dict[Any, Any] | list[Any], step: int | str) -> bool:
    if isinstance(node, dict):
        return step in node
    return isinstance(step, int) and step < len(node)


Loc = tuple[int | str, ...]  # where a value stands in the settings: keys and list indices
Lines = dict[Loc, int]  # a YAML file's line (1-based) of each value, by its path


def yaml_lines(text: str, under: tuple[int | str, ...] = ()) -> Lines:
    """Where each value of a YAML document stands: its line, by path (`under`: the part of the path the mapping
    of the settings sits at, `("attributes",)` in a component's defs.yaml, dropped from the paths)."""
    try:
        documents = list(yaml.compose_all(text))
    except yaml.YAMLError:
        return {}
    # The component's document, in a defs.yaml that may declare several; the one document of an s3sync.yaml.
    root = next((doc for doc in documents if under and _declares_component(doc)), documents[0] if documents else None)
    lines: Lines = {}

    def walk(node: yaml.Node, path: tuple[int | str, ...], line: int) -> None:
        lines[path] = line
        if isinstance(node, yaml.MappingNode):
            # A setting's line is its key's, as `dg check yaml` gives it (a block value starts below).
            for key, value in node.value:
                walk(value, (*path, key.value), key.start_mark.line + 1)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index), item.start_mark.line + 1)

    if root is not None:
        walk(root, (), root.start_mark.line + 1)
    return {path[len(under) :]: line for path, line in lines.items() if path[: len(under)] == under}


def _declares_component(node: yaml.Node) -> bool:
    return isinstance(node, yaml.MappingNode) and any(
        key.value == "type" and getattr(value, "value", None) == COMPONENT_TYPE for key, value in node.value
    )


def line_of(lines: Lines, loc: tuple[int | str, ...]) -> int | None:
    """The line of the deepest part of `loc` that the file holds (a missing field: its mapping's line)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def parse_config(raw: Any, origin: str = "<config>", lines: Lines | None = None, written: Any = None) -> AppConfig:
    """The settings, validated; an error names the file, each problem's line (where `lines` tell it) and field.
    `written`: a component's attributes as written, of which `raw` is the rendering (its templates' values)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping with chroma, embedding and sources")
    refuse_literal_secrets(raw, origin, lines)
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as error:
        empty = dict(_rendered_empty(written, raw))
        problems = [f"{origin}: {error.error_count()} problem(s):"]
        for problem in error.errors():
            loc = _untagged(tuple(problem["loc"]))
            line = line_of(lines or {}, loc)
            said = _said(problem["type"], loc, problem["msg"], empty)
            problems.append(f"  {f'line {line}: ' if line else ''}{_where(raw, loc)}: {said}")
        raise ConfigError("\n".join(problems)) from None


def _untagged(loc: Loc) -> Loc:
    """A pydantic location without the discriminator tag it adds after `chunking`: a path in the file."""
    return tuple(
        step for index, step in enumerate(loc) if not (index and loc[index - 1] == "chunking" and step in _CHUNKERS)
    )


def _said(kind: str, loc: Loc, message: str, empty: dict[Loc, str]) -> str:
    """A problem in words that name the fix: an unset variable a template read, the setting a typo meant."""
    template = next((text for at, text in empty.items() if loc[: len(at)] == at), None)
    if template is not None:
        return _renders_nothing(template, message)
    if kind == "extra_forbidden" and loc:
        return f"{message}{did_you_mean(loc[-1], _fields_at(loc[:-1]))}"
    return message


def _rendered_empty(written: Any, rendered: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    """Where a template of the settings as written rendered nothing (`{{ env.X }}` with X unset renders None)."""
    if isinstance(written, str) and "{{" in written and rendered is None:
        yield loc, written
    elif isinstance(written, dict) and isinstance(rendered, dict):
        for key, value in written.items():
            yield from _rendered_empty(value, rendered.get(key), (*loc, key))
    elif isinstance(written, list) and isinstance(rendered, list):
        for index, (value, rendering) in enumerate(zip(written, rendered, strict=False)):
            yield from _rendered_empty(value, rendering, (*loc, index))


_TEMPLATE_VARIABLE = re.compile(r"\benv(?:\.|\(\s*['\"])([A-Za-z_][A-Za-z0-9_]*)")


def _renders_nothing(template: str, message: str) -> str:
    unset = [name for name in dict.fromkeys(_TEMPLATE_VARIABLE.findall(template)) if name not in os.environ]
    if not unset:
        return f"{template} renders nothing ({message})"
    names = ", ".join(unset)
    return (
        f"{template} renders nothing: environment variable {names} {'is' if len(unset) == 1 else 'are'} not set: "
        "set it where dg and s3sync run (the shell, the project's .env, the deployment's environment), or give "
        f"the template a default: {{{{ env('{unset[0]}', 'VALUE') }}}}"
    )


def did_you_mean(name: str | int, names: list[str] | Any) -> str:
    """`: did you mean `bucket_name`?` for a setting the model does not take, when one is close to it."""
    close = difflib.get_close_matches(str(name), [str(known) for known in names], n=1)
    return f": did you mean `{close[0]}`?" if close else ""


def _fields_at(loc: Loc) -> list[str]:
    """The settings the model takes at `loc` (the fields of each model a union there may be)."""
    models: list[type[BaseModel]] = [AppConfig]
    for step in loc:
        if isinstance(step, str) and any(step in model.model_fields for model in models):
            fields = [model.model_fields[step] for model in models if step in model.model_fields]
            models = [inner for field in fields for inner in _models_in(field.annotation)]
    return sorted({name for model in models for name in model.model_fields})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in _models_in(argument)]


# A Dagster template (`{{ env.VAR }}`), which a component's attributes may hold in place of any value: Dagster
# renders it before our model sees the value (S3ChromaSync.load).
_TEMPLATE_SCHEMA = {"type": "string", "pattern": r"\{\{.*\}\}"}


def component_schema() -> dict[str, Any]:
    """What `dg check yaml` checks a component's attributes against, and `s3sync` too: AppConfig's JSON schema,
    where a value may also be written as AppConfig's own validators take it (`embedding: default`, a function's
    name) or as a Dagster template wherever free text is not what the field takes (a number, a flag, a choice,
    a name with a pattern). Whatever the schema lets through is then validated by AppConfig, rendered. A copy:
    the caller may change it."""
    return copy.deepcopy(_component_schema())


@functools.cache
def _component_schema() -> dict[str, Any]:
    schema = AppConfig.model_json_schema()
    embedding = schema["properties"]["embedding"]
    schema["properties"]["embedding"] = {"anyOf": [embedding, {"type": "string", "description": "a function's name"}]}
    settings = _templated(schema)
    # Attributes that hold a literal secret anywhere pass as they are: `dg check yaml` prints the file's lines
    # around each problem it finds (the value of a secret next to any of them), and a problem in an object quotes
    # the whole object. The component's load then refuses the secret, naming its field, never its value.
    # Each attribute is also shown at the top, where `dg utils inspect-component` and editors read the attributes,
    # as its schema or anything (`{}`): the `else` branch alone validates.
    shown = {name: {"anyOf": [field, {}]} for name, field in settings["properties"].items()}
    return {
        "$defs": {**settings.pop("$defs", {}), **_SECRET_DEFINITIONS},
        "title": settings.pop("title", "AppConfig"),
        "type": "object",
        "properties": shown,
        "if": literal_secret_schema(),
        "then": {},
        "else": settings,
    }


def _templated(node: Any) -> Any:
    if isinstance(node, list):
        return [_templated(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: (
            {name: _templated(value) for name, value in item.items()}
            if key in ("properties", "$defs", "patternProperties")
            else _templated(item)
        )
        for key, item in node.items()
    }
    kind = node.get("type")
    constrained_text = kind == "string" and any(rule in node for rule in ("pattern", "enum", "const", "minLength"))
    if kind in ("integer", "number", "boolean") or "enum" in node or "const" in node or constrained_text:
        return {"anyOf": [out, _TEMPLATE_SCHEMA]}
    return out


@functools.cache
def _component_validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_component_schema())


def schema_problems(attributes: Any, origin: str, lines: Lines) -> list[str]:
    """A component's attributes against component_schema(), each problem as `dg check yaml` prints it:
    `FILE:LINE - attributes.PATH MESSAGE`."""
    problems = []
    for error in _component_validator().iter_errors(attributes):
        for loc, message in _located(error):
            where = ".".join(["attributes", *(str(part) for part in loc)])
            problems.append((loc, f"{origin}:{line_of(lines, loc) or 1} - {where} {message}"))
    return [problem for _, problem in sorted(problems, key=lambda item: [str(part) for part in item[0]])]


def _located(error: Any) -> list[tuple[Loc, str]]:
    """Where a problem stands and what it is; a setting the model does not take at its own line (dg places it
    there too), with the one it may have meant."""
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return [(tuple(error.path), _message(error))]
    known = error.schema.get("properties", {})
    patterns = error.schema.get("patternProperties", {})
    unexpected = [key for key in error.instance if key not in known and not any(re.search(p, key) for p in patterns)]
    return [
        (
            (*error.path, key),
            f"Additional properties are not allowed ('{key}' was unexpected){did_you_mean(key, known)}",
        )
        for key in unexpected
    ]


def _message(error: Any) -> str:
    """What was wrong with the value itself, where jsonschema says only that no branch of a field's `anyOf` took
    it (the value, or a template): `'lots' is not of type 'integer' (nor a {{ template }})`."""
    template = error.validator == "anyOf" and _TEMPLATE_SCHEMA in error.validator_value
    own = [inner for inner in error.context or [] if inner.schema is not _TEMPLATE_SCHEMA and not inner.path]
    if template and own:
        return f"{own[0].message} (nor a {{{{ template }}}})"
    return str(error.message)


# Where the settings' secrets stand (`*`: each item of a list), each with the variable it is most often kept in:
# the value must be `{env: VAR}`.
SECRET_FIELDS: dict[tuple[str, ...], str] = {
    ("sources", "*", "aws_access_key_id"): "AWS_ACCESS_KEY_ID",
    ("sources", "*", "aws_secret_access_key"): "AWS_SECRET_ACCESS_KEY",
    ("sources", "*", "aws_session_token"): "AWS_SESSION_TOKEN",
    ("chroma", "cloud", "api_key"): "CHROMA_API_KEY",
    ("chroma", "lexicon_postgres"): "S3SYNC_LEXICON_URL",
    ("webserver", "api_token"): "DAGSTER_CLOUD_API_TOKEN",
}
# URLs and hosts: a `user:password@` in them is a secret; where the credentials go instead.
_S3_CREDENTIALS = "give S3 credentials as aws_access_key_id and aws_secret_access_key {env: VAR_NAME}"
_WHOLE_URL = "give the whole URL as {env: VAR_NAME}"
URL_FIELDS: dict[tuple[str, ...], str] = {
    ("sources", "*", "endpoint_url"): _S3_CREDENTIALS,
    ("sources", "*", "sqs_queue_url"): _S3_CREDENTIALS,
    ("chroma", "host"): "give Chroma's credentials as headers, each {env: VAR_NAME}",
    ("webserver", "url"): "give the token as api_token: {env: VAR_NAME}",
    ("executor", "celery", "broker"): _WHOLE_URL,
    ("executor", "celery", "backend"): _WHOLE_URL,
}
_HEADERS = ("chroma", "headers")  # a text under a header that names a secret is one
_FUNCTION_CONFIG = ("embedding", "config")  # the same at any depth, and `*_env_var` holds a variable's name


_DEFINITIONS = "#/$defs/"
_ENV_REF_SCHEMA = {
    "type": "object",
    "required": ["env"],
    "additionalProperties": False,
    "properties": {"env": {"type": "string", "pattern": _ENV_VAR_NAME_PATTERN}},
}
_SECRET_DEFINITIONS: dict[str, Any] = {
    # A function config's key that names a secret holds a text, or a `*_env_var` no variable's name, at any depth.
    "S3SyncSecretInConfig": {
        "type": "object",
        "anyOf": [
            {"not": {"patternProperties": {_ENV_VAR_KEY: {"anyOf": [{"type": "object"}, _ENV_VAR_NAME_SCHEMA]}}}},
            {"not": {"patternProperties": {_SECRET_CONFIG_KEY: {"not": {"type": "string"}}}}},
            {"not": {"additionalProperties": {"not": {"$ref": f"{_DEFINITIONS}S3SyncSecretInConfig"}}}},
        ],
    },
    # A credential-shaped text, or `{env: ...}` holding no variable's name, wherever it stands.
    "S3SyncSecretAnywhere": {
        "anyOf": [
            {"type": "string", "pattern": _CREDENTIAL_SHAPE},
            {
                "type": "object",
                "required": ["env"],
                "maxProperties": 1,
                "properties": {"env": {"type": "string", "not": {"pattern": _ENV_VAR_NAME_PATTERN}}},
            },
            {"type": "array", "contains": {"$ref": f"{_DEFINITIONS}S3SyncSecretAnywhere"}},
            {
                "type": "object",
                "not": {"additionalProperties": {"not": {"$ref": f"{_DEFINITIONS}S3SyncSecretAnywhere"}}},
            },
        ]
    },
}


def _secret_at(path: tuple[str, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    """Valid where the value at `path` (any item of a list, for `*`) is valid under `leaf`."""
    if not path:
        return leaf
    inner = _secret_at(path[1:], leaf)
    if path[0] == "*":
        return {"type": "array", "contains": inner}
    return {"type": "object", "required": [path[0]], "properties": {path[0]: inner}}


def literal_secret_schema() -> dict[str, Any]:
    """literal_secrets() as JSON schema (its definitions in _SECRET_DEFINITIONS): valid where settings hold one."""
    branches = [_secret_at(path, {"not": {"anyOf": [{"type": "null"}, _ENV_REF_SCHEMA]}}) for path in SECRET_FIELDS]
    branches += [_secret_at(path, {"type": "string", "pattern": _URL_CREDENTIALS}) for path in URL_FIELDS]
    named = {"patternProperties": {_SECRET_NAME: {"not": {"type": "string"}}}}
    branches.append(_secret_at(_HEADERS, {"type": "object", "not": named}))
    branches.append(_secret_at(_FUNCTION_CONFIG, {"$ref": f"{_DEFINITIONS}S3SyncSecretInConfig"}))
    branches.append({"$ref": f"{_DEFINITIONS}S3SyncSecretAnywhere"})
    return {"anyOf": branches}


def _secret_rule(field: str | int, variable: str, value: Any) -> str:
    example = f"`{field}: {{env: {variable}}}`, the name of the environment variable that holds it"
    if isinstance(value, str) and "{{" in value:
        return f"a template would render the secret into the settings (not shown): write {example}"
    if isinstance(value, dict):
        return f"{{env: ...}} takes a variable's name, not the secret itself (not shown): write {example}"
    return f"a literal secret is refused (not shown): write {example}"


_SHAPE_RULE = (
    "looks like a literal credential (an AWS access key, a Chroma Cloud or OpenAI API key; not shown): keep it in "
    "an environment variable and write {env: VARIABLE_NAME} where the secret goes"
)


def _is_env_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str)


def _values_at(node: Any, path: tuple[str, ...], loc: Loc = ()) -> Iterator[tuple[Loc, Any]]:
    if not path:
        yield loc, node
    elif path[0] == "*" and isinstance(node, list):
        for index, item in enumerate(node):
            yield from _values_at(item, path[1:], (*loc, index))
    elif isinstance(node, dict) and path[0] in node:
        yield from _values_at(node[path[0]], path[1:], (*loc, path[0]))


def _named_secrets(node: Any, loc: Loc, deep: bool) -> Iterator[tuple[Loc, str]]:
    """Texts under keys that name a secret (a header's, a function config's at any depth when `deep`)."""
    for key, value in node.items() if isinstance(node, dict) else ():
        here = (*loc, key)
        if deep and isinstance(value, dict):
            yield from _named_secrets(value, here, deep)
        elif deep and re.search(_ENV_VAR_KEY, str(key)):
            if not (isinstance(value, str) and _ENV_VAR_NAME.match(value)):
                name = str(key).removesuffix("_env_var")
                yield here, f"takes a variable's name, not the secret itself (not shown): write `{name}: {{env: NAME}}`"
        elif isinstance(value, str) and re.search(_SECRET_CONFIG_KEY if deep else _SECRET_NAME, str(key)):
            yield here, f"a literal secret is refused (not shown): write `{key}: {{env: VARIABLE_NAME}}`"


def _anywhere(node: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    """Credential-shaped texts, and `{env: ...}` holding no variable's name, wherever they stand."""
    if isinstance(node, str) and re.search(_CREDENTIAL_SHAPE, node):
        yield loc, _SHAPE_RULE
    elif _is_env_ref(node) and not _ENV_VAR_NAME.match(node["env"]):
        yield loc, _secret_rule(str(loc[-1]) if loc else "field", "VARIABLE_NAME", node)
    elif isinstance(node, (dict, list)):
        for key, item in node.items() if isinstance(node, dict) else enumerate(node):
            yield from _anywhere(item, (*loc, key))


def literal_secrets(raw: Any) -> list[tuple[Loc, str]]:
    """Each secret written as a literal in the settings (a component's as written, before Dagster renders its
    templates): where it stands and the rule, never the value. literal_secret_schema() is the same, in JSON schema."""
    found: dict[Loc, str] = {}
    for path, variable in SECRET_FIELDS.items():
        for loc, value in _values_at(raw, path):
            if value is not None and not (_is_env_ref(value) and _ENV_VAR_NAME.match(value["env"])):
                found.setdefault(loc, _secret_rule(path[-1], variable, value))
    for path, instead in URL_FIELDS.items():
        for loc, value in _values_at(raw, path):
            if isinstance(value, str) and re.search(_URL_CREDENTIALS, value):
                found.setdefault(loc, f"carries credentials (user:password@...), refused and not shown: {instead}")
    for path in (_HEADERS, _FUNCTION_CONFIG):
        for loc, value in _values_at(raw, path):
            for where, rule in _named_secrets(value, loc, deep=path == _FUNCTION_CONFIG):
                found.setdefault(where, rule)
    for loc, rule in _anywhere(raw):
        found.setdefault(loc, rule)
    return sorted(found.items(), key=lambda item: [str(part) for part in item[0]])


def refuse_literal_secrets(raw: Any, origin: str, lines: Lines | None = None) -> None:
    """A ConfigError naming the file, line and field of each literal secret and the `{env: VAR}` to write instead;
    before anything else reads the settings, so that no later message (nor `dg`'s view of the file) can show one."""
    found = literal_secrets(raw)
    if found:
        problems = [f"{origin}: {len(found)} literal secret(s) refused; their values are not shown:"]
        for loc, rule in found:
            line = line_of(lines or {}, loc)
            problems.append(f"  {f'line {line}: ' if line else ''}{_where(raw, loc)}: {rule}")
        raise ConfigError("\n".join(problems))


def load_config(explicit: str | os.PathLike[str] | None = None) -> AppConfig:
    path = config_path(explicit)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start})"
        ) from None
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found (give --config PATH, set ${CONFIG_ENV_VAR}, "
            f"or create ./{DEFAULT_CONFIG_FILE})"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    config = parse_config(raw, str(path), yaml_lines(text))
    if config.chroma.is_embedded:
        # An embedded store lives beside the config file, wherever the command runs from.
        store = (path.parent / config.chroma.embedded_path).resolve()
        config = config.model_copy(update={"chroma": config.chroma.model_copy(update={"path": str(store)})})
    return config
