"""One S3 source's settings: its bucket and prefix, its collection, its chunking, its S3 endpoint and how it
follows changes; SourceConfig.spec() is the engine's view of it."""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, field_validator, model_validator

from s3sync_dagster.config.asset import AssetAttributes
from s3sync_dagster.config.embedding import EmbeddingConfig
from s3sync_dagster.config.secret_rules import EnvRef, StrictModel, no_credentials_in_url, secret_must_be_env_ref
from s3sync_dagster.pipeline import chroma
from s3sync_dagster.pipeline.embedding import EmbeddingSpec
from s3sync_dagster.pipeline.extraction import DEFAULT_MAX_PAGES, DocumentOptions
from s3sync_dagster.pipeline.records import check_not_reserved, validate_collection_name
from s3sync_dagster.pipeline.s3 import DEFAULT_MAX_OBJECT_BYTES
from s3sync_dagster.pipeline.spec import SourceSpec

SOURCE_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"


class TreeSitterChunking(StrictModel):
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


class LinesChunking(StrictModel):
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


# S3 user metadata names (x-amz-meta-<name>, which S3 returns lowercased) and tag keys (S3's tag characters).
METADATA_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,127}$"
TAG_KEY_PATTERN = r"^[\w.:/=+@ -]+$"  # at most 128 characters (max_length)
# One reader in a readers tag's value (`alice+group:finance`: `+` separates them).
PRINCIPAL_PATTERN = chroma.PRINCIPAL_PATTERN  # at most 256 characters (max_length); pipeline/chroma/labels.py owns it


# An IAM role's ARN, in any AWS partition (aws, aws-cn, aws-us-gov): arn:aws:iam::123456789012:role/path/name.
ROLE_ARN_PATTERN = r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$"


class TimeoutsConfig(StrictModel):
    """How long a source's S3 (and SQS) endpoint may take, and how often a request is tried.

    A request that times out or cannot connect is tried again after an exponential backoff with
    jitter (botocore's standard retry mode); when the last attempt fails, so does that key alone.
    """

    connect_seconds: float = Field(default=10.0, gt=0)
    read_seconds: float = Field(default=60.0, gt=0)  # between two reads of an answer, not for the whole body
    max_attempts: int = Field(default=3, ge=1)  # the first request counts


class SourceConfig(StrictModel):
    """One S3 source: a bucket (and prefix) synced into one Chroma collection."""

    name: str = Field(pattern=SOURCE_NAME_PATTERN)
    bucket_name: str = Field(min_length=3, max_length=63)
    region: str
    collection_name: str = Field(min_length=3, max_length=512)
    endpoint_url: str | None = None
    aws_access_key_id: EnvRef | None = None
    aws_secret_access_key: EnvRef | None = None
    aws_session_token: EnvRef | None = None
    # A role to assume through STS (another account's, as a company's buckets are reached), from the credentials
    # above or the default chain; refreshed before it expires. STS is asked at endpoint_url when one is set (MinIO
    # and moto serve it there), else at AWS's regional endpoint.
    role_arn: str | None = Field(default=None, pattern=ROLE_ARN_PATTERN, max_length=2048)
    external_id: EnvRef | None = None  # the role's trust policy's sts:ExternalId: a secret, as {env: VAR}
    role_session_name: str = Field(default="s3sync-dagster", pattern=r"^[\w+=,.@-]{2,64}$")
    role_duration_seconds: int = Field(default=3600, ge=900, le=43200)  # STS's range; the role's maximum applies
    # What of an object besides its text reaches its chunks (issue 52): user metadata `x-amz-meta-<name>` as
    # `meta_<name>`, S3 tags as `tag_<name>`; a change of them alone updates the chunks without re-embedding.
    object_metadata: list[Annotated[str, Field(pattern=METADATA_NAME_PATTERN)]] = Field(default_factory=list)
    object_tags: list[Annotated[str, Field(pattern=TAG_KEY_PATTERN, max_length=128)]] = Field(default_factory=list)
    # A tag whose value lists who may read the object (`alice+group:finance`); its chunks carry the list as
    # `readers` and a search names its principals. An object without the tag: `default_readers` (none: operators).
    readers_tag: str | None = Field(default=None, pattern=TAG_KEY_PATTERN, max_length=128)
    default_readers: list[Annotated[str, Field(pattern=PRINCIPAL_PATTERN, max_length=256)]] = Field(
        default_factory=list
    )
    # Requester-pays buckets: sent on every request that reads the bucket, as S3 asks.
    request_payer: Literal["requester"] | None = None
    # Objects encrypted with a customer-provided key (SSE-C): the base64 of the 256-bit AES key, a secret as
    # {env: VAR}; sent (with its MD5) on every HEAD and GET, never logged or shown.
    sse_customer_key: EnvRef | None = None
    path_prefix: str = ""
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    chunking: ChunkingConfig = Field(default_factory=TreeSitterChunking)
    # Chroma Sync's own limit per file; configurable per source.
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

    _literal = field_validator(
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "external_id",
        "sse_customer_key",
        mode="before",
    )(secret_must_be_env_ref)
    _urls = field_validator("endpoint_url", "sqs_queue_url")(no_credentials_in_url)

    @field_validator("collection_name")
    @classmethod
    def _chroma_collection_name(cls, value: str) -> str:
        # Chroma's own rule, checked here so the error names the source instead of failing mid-run.
        validate_collection_name(value, "collection_name")
        # Another source's swap or first open would take such a collection for its own copy and rename it.
        return check_not_reserved(value, "collection_name")

    @field_validator("target_collections")
    @classmethod
    def _targets_not_reserved(cls, value: list[str]) -> list[str]:
        # A glob may match a reserved name (the write refuses it); a name that is one is refused here.
        for pattern in value:
            check_not_reserved(pattern, "target_collections")
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
        if self.role_arn is not None:
            through = " and ".join(named) if named else "the default AWS credential chain"
            return f"the role {self.role_arn}, assumed through STS with {through}"
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
            object_metadata=tuple(self.object_metadata),
            object_tags=tuple(self.object_tags),
            readers_tag=self.readers_tag,
            default_readers=tuple(self.default_readers),
            request_payer=self.request_payer,
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
    def _external_id_with_a_role(self) -> SourceConfig:
        if self.external_id is not None and self.role_arn is None:
            raise ValueError("external_id is sent when assuming role_arn: give role_arn too")
        return self

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> SourceConfig:
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError(
                "give aws_access_key_id and aws_secret_access_key together, "
                "or neither to use the default AWS credential chain"
            )
        return self
