"""Dagster resources, connections only: each source's S3 and SQS endpoint (S3Resource's settings, with timeouts),
the Chroma store, the embedding model, document extraction. What a source is lives in config.SourceConfig."""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from s3sync_dagster.config import (
    AppConfig,
    ChromaConfig,
    EmbeddingConfig,
    EnvRef,
    ResourceKeysConfig,
    SourceConfig,
    TimeoutsConfig,
)
from s3sync_dagster.defs.webserver import DagsterWebserver
from s3sync_dagster.pipeline.embedding import DEFAULT_FUNCTION, EmbeddingSpec, Precision, Runtime
from s3sync_dagster.pipeline.extraction import DocumentOptions
from s3sync_dagster.pipeline.s3 import (
    RequestSettings,
    Role,
    assumed_role_credentials,
    customer_key,
    refuse_non_s3_answers,
    send_request_settings,
    session_with,
    skip_while_silent,
)
from s3sync_dagster.pipeline.store import DEFAULT_TIMEOUT_S, Store

if TYPE_CHECKING:
    from botocore.config import Config
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Documents, EmbeddingFunction

    from s3sync_dagster.pipeline.records import Owner


_TIMEOUTS = TimeoutsConfig()  # the defaults, for resources made without a config file
# SQS's longest long poll: a receive may rightly wait this long before its answer starts.
SQS_MAX_WAIT_SECONDS = 20


_making = threading.Lock()


@functools.lru_cache(maxsize=64)
def boto_client(
    service: str,
    *,
    connect_timeout_seconds: float,
    read_timeout_seconds: float,
    max_attempts: int,
    region_name: str | None,
    endpoint_url: str | None,
    aws_access_key_id: str | None,
    aws_secret_access_key: str | None,
    aws_session_token: str | None,
    profile_name: str | None = None,
    unsigned: bool = False,
    role: Role | None = None,
    request_settings: RequestSettings | None = None,
    **client_options: Any,
) -> Any:
    """An S3 or SQS client that gives up on a silent endpoint: connect and read timeouts, and retries
    with exponential backoff (botocore's standard mode) for timeouts, refused connections and throttling.

    dagster-aws's S3Resource makes its client with botocore's 60 s connect and read timeouts, and its
    max_attempts=5 is botocore's retry count: one HEAD to a frozen endpoint took 362 s (6 attempts) before an
    error.

    One client per process for each set of arguments (boto3's clients are thread-safe): making one loads the
    service's model, ~0.2 s of CPU, which a sensor ticking every 5 s would otherwise pay at every tick.
    """
    import boto3

    config = _client_config(connect_timeout_seconds, read_timeout_seconds, max_attempts, unsigned)
    with _making:  # a boto3 Session is not thread-safe; its clients are
        keys = {
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
        }
        if role is None:
            session, signing = boto3.session.Session(profile_name=profile_name), keys
        else:  # the source's own credentials (or the chain's) ask STS for the role's; STS where S3 is, if set
            base = boto3.session.Session(profile_name=profile_name, **keys)
            sts = {"endpoint_url": endpoint_url, "region_name": region_name, "config": config}
            session = session_with(assumed_role_credentials(base, role, sts), profile_name)
            signing = {}
        client = session.client(
            service, region_name=region_name, endpoint_url=endpoint_url, config=config, **signing, **client_options
        )
    if service != "s3":
        return client
    # Requester pays and an SSE-C key on every request that needs them; a refusal names the setting to look at.
    send_request_settings(client, request_settings or RequestSettings())
    # A web app where the endpoint should be answers 200 to everything: its page is refused, not read as no keys.
    # An endpoint gone silent costs the next requests a moment each, not their timeouts and attempts.
    return skip_while_silent(refuse_non_s3_answers(client))


def _client_config(
    connect_timeout_seconds: float, read_timeout_seconds: float, max_attempts: int, unsigned: bool
) -> Config:
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout_seconds,
        read_timeout=read_timeout_seconds,
        # botocore's `max_attempts` counts retries only; S3Resource's and ours count the first request too.
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
    )
    return config.merge(Config(signature_version=UNSIGNED)) if unsigned else config


class S3Connection(dg.ConfigurableResource):  # type: ignore[type-arg]
    """How one source reaches its bucket and queue: endpoint, region, credentials, timeouts. What the source holds
    and how it is indexed is its SourceConfig's business, not the connection's.

    The fields of dagster-aws's S3Resource (0.29), with its names, types, descriptions and defaults (but
    max_attempts', which is the source's `timeouts.max_attempts`), so run config and the UI read as a Dagster
    user knows them; plus connect and read timeouts and the credentials' variables. Not a subclass: that made
    dagster-aws, whose every release requires one Dagster patch exactly, a requirement of this package.
    Credentials are the names of environment variables (shown by name, never by value, in the UI), or absent,
    in which case boto3's default credential chain (environment, profile, instance role) applies.
    """

    use_unsigned_session: bool = Field(default=False, description="Specifies whether to use an unsigned S3 session.")
    region_name: str | None = Field(default=None, description="Specifies a custom region for the S3 session.")
    endpoint_url: str | None = Field(default=None, description="Specifies a custom endpoint for the S3 session.")
    # S3Resource's default is 5; ours is the source's `timeouts.max_attempts`.
    max_attempts: int = Field(
        default=_TIMEOUTS.max_attempts,
        description=(
            "This provides Boto3's retry handler with a value of maximum retry attempts, where the"
            " initial call counts toward the max_attempts value that you provide."
        ),
    )
    profile_name: str | None = Field(default=None, description="Specifies a profile to connect that session.")
    use_ssl: bool = Field(default=True, description="Whether or not to use SSL. By default, SSL is used.")
    verify: bool | None = Field(
        default=None,
        description="Whether or not to verify SSL certificates. By default SSL certificates are verified.",
    )
    aws_access_key_id: str | None = Field(
        default=None, description="AWS access key ID to use when creating the boto3 session."
    )
    aws_secret_access_key: str | None = Field(
        default=None, description="AWS secret access key to use when creating the boto3 session."
    )
    aws_session_token: str | None = Field(
        default=None, description="AWS session token to use when creating the boto3 session."
    )
    source_name: str
    connect_timeout_seconds: float = _TIMEOUTS.connect_seconds
    read_timeout_seconds: float = _TIMEOUTS.read_seconds
    # The source's credentials as the names of their variables, read when a client is made (the fields above,
    # as dg.EnvVar, would be read when the resource starts: one unset variable would then fail every source's
    # runs with Dagster's message, naming neither the source nor the field).
    aws_access_key_id_env: str | None = None
    aws_secret_access_key_env: str | None = None
    aws_session_token_env: str | None = None
    # The role the source assumes through STS (config's role_arn), its external id's variable, its session.
    role_arn: str | None = None
    external_id_env: str | None = None
    role_session_name: str = "s3sync-dagster"
    role_duration_seconds: int = 3600
    # Sent on every request that reads the bucket (config's request_payer), and the SSE-C key's variable.
    request_payer: str | None = None
    sse_customer_key_env: str | None = None

    def get_client(self) -> Any:
        """An S3 client as S3Resource's get_client makes one, with this source's timeouts (it sets only
        max_attempts)."""
        settings = RequestSettings(self.request_payer, self._sse_customer_key())
        return self._boto(
            "s3", self.read_timeout_seconds, use_ssl=self.use_ssl, verify=self.verify, request_settings=settings
        )

    def _sse_customer_key(self) -> bytes | None:
        if self.sse_customer_key_env is None:
            return None
        what = f"source '{self.source_name}' sse_customer_key"
        return customer_key(EnvRef(env=self.sse_customer_key_env).resolve(what), what)

    def get_sqs_client(self) -> Any:
        """The source's event queue is reached as its bucket is (same endpoint, region and credentials)."""
        # A long poll is silent until a message arrives or its wait ends: not a frozen endpoint.
        return self._boto("sqs", self.read_timeout_seconds + SQS_MAX_WAIT_SECONDS)

    def _boto(self, service: str, read_timeout_seconds: float, **client_options: Any) -> Any:
        return boto_client(
            service,
            connect_timeout_seconds=self.connect_timeout_seconds,
            read_timeout_seconds=read_timeout_seconds,
            max_attempts=self.max_attempts,
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self._credential("aws_access_key_id"),
            aws_secret_access_key=self._credential("aws_secret_access_key"),
            aws_session_token=self._credential("aws_session_token"),
            profile_name=self.profile_name,
            unsigned=self.use_unsigned_session,
            role=self._role(),
            **client_options,
        )

    def _role(self) -> Role | None:
        if self.role_arn is None:
            return None
        external_id = None
        if self.external_id_env is not None:
            external_id = EnvRef(env=self.external_id_env).resolve(f"source '{self.source_name}' external_id")
        return Role(self.role_arn, self.source_name, external_id, self.role_session_name, self.role_duration_seconds)

    def _credential(self, field_name: str) -> str | None:
        variable = getattr(self, f"{field_name}_env")
        if variable is None:
            return getattr(self, field_name)  # type: ignore[no-any-return]
        return EnvRef(env=variable).resolve(f"source '{self.source_name}' {field_name}")


class S3Connections(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Every source's connection, under one resource key (`s3`): ops and sensors take it as a typed
    parameter and pick their source's, as dagster-sling's SlingResource holds its connections."""

    connections: list[S3Connection]

    def for_source(self, source_name: str) -> S3Connection:
        for connection in self.connections:
            if connection.source_name == source_name:
                return connection
        raise KeyError(f"no S3 connection for source '{source_name}'")

    def client(self, source_name: str) -> Any:
        return self.for_source(source_name).get_client()

    def sqs_client(self, source_name: str) -> Any:
        return self.for_source(source_name).get_sqs_client()


def _env(ref: EnvRef | None) -> Any:
    return dg.EnvVar(ref.env) if ref is not None else None


def s3_connection(source: SourceConfig) -> S3Connection:
    """Where and as whom a source's S3 and SQS clients connect; credentials stay variable names."""
    return S3Connection(
        source_name=source.name,
        connect_timeout_seconds=source.timeouts.connect_seconds,
        read_timeout_seconds=source.timeouts.read_seconds,
        max_attempts=source.timeouts.max_attempts,
        region_name=source.region,
        endpoint_url=source.endpoint_url,
        aws_access_key_id_env=source.aws_access_key_id.env if source.aws_access_key_id else None,
        aws_secret_access_key_env=source.aws_secret_access_key.env if source.aws_secret_access_key else None,
        aws_session_token_env=source.aws_session_token.env if source.aws_session_token else None,
        role_arn=source.role_arn,
        external_id_env=source.external_id.env if source.external_id else None,
        role_session_name=source.role_session_name,
        role_duration_seconds=source.role_duration_seconds,
        request_payer=source.request_payer,
        sse_customer_key_env=source.sse_customer_key.env if source.sse_customer_key else None,
    )


class DocumentsResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """How documents are converted: docling model weights, time limit per file, worker processes, OCR."""

    artifacts_path: str | None = None
    timeout_seconds: float = 300.0
    workers: int = 2
    ocr: bool = True

    def options(self) -> DocumentOptions:
        """The extraction options every source shares; a source sets its own page limit (SourceConfig.spec)."""
        return DocumentOptions(timeout_s=self.timeout_seconds, artifacts_path=self.artifacts_path, ocr=self.ocr)


class EmbeddingResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The embedding function, as Chroma names it (see EmbeddingConfig); the default is Chroma's own."""

    function: str = DEFAULT_FUNCTION
    model: str | None = None
    model_name: str | None = None
    # A registered function's config as JSON, as chromadb records it: secrets are variable names only.
    config_json: str = "{}"
    max_tokens: int | None = None
    device: str = "cpu"
    batch_size: int = 64
    precision: Precision = "auto"
    runtime: Runtime = "auto"

    def spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(
            function=self.function,
            model=self.model,
            model_name=self.model_name,
            config=json.loads(self.config_json),
            max_tokens=self.max_tokens,
            device=self.device,
            batch_size=self.batch_size,
            precision=self.precision,
            runtime=self.runtime,
        )

    def embedding_function(self) -> EmbeddingFunction[Documents]:
        return self.spec().build()


class ChromaResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The Chroma store: embedded (`path`), a server (`host`), or Chroma Cloud (`cloud_*`)."""

    path: str | None = None
    host: str | None = None
    port: int = 8000
    ssl: bool = False
    headers: dict[str, str] = Field(default_factory=dict)
    # Header name -> environment variable holding its (secret) value, read when the client is made.
    header_env: dict[str, str] = Field(default_factory=dict)
    cloud_tenant: str | None = None
    cloud_database: str | None = None
    cloud_api_key: str | None = None
    # The environment variable holding the PostgreSQL URL of a server's lexical index, read when opened.
    lexicon_postgres_env: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_S  # a server's answer to each request (pipeline/chroma/bounded.py)

    def store(self) -> Store:
        """The store itself (pipeline/store.py), its secrets read now from their variables."""
        headers = dict(self.headers)
        for header, variable in self.header_env.items():
            headers[header] = EnvRef(env=variable).resolve(f"chroma header {header}")
        lexicon = self.lexicon_postgres_env
        return Store(
            self.path, self.host, self.port, self.ssl, tuple(sorted(headers.items())),
            self.cloud_tenant, self.cloud_database, self.cloud_api_key,
            EnvRef(env=lexicon).resolve("chroma lexicon_postgres") if lexicon else None, self.timeout_seconds,
        )  # fmt: skip

    def _named(self) -> Store:
        """The store without its secrets: enough to name it and to lock it."""
        return Store(self.path, self.host, self.port, self.ssl, (), self.cloud_tenant, self.cloud_database)

    def describe(self) -> str:
        return self._named().describe()

    def failure(self, error: BaseException) -> str:
        """One line naming the store and what went wrong (Store.failure)."""
        return self._named().failure(error)

    @property
    def is_embedded(self) -> bool:
        return self._named().is_embedded

    def client(self) -> ClientAPI:
        return self.store().client()

    def collection(
        self, name: str, embedding: EmbeddingResource, create: bool = True, owner: Owner | None = None
    ) -> Collection:
        """The collection, opened (or created) as Store.collection opens it, with this embedding function; a write
        by `owner` begins a model change's copy where the collection is the owner's to re-embed."""
        return self.store().collection(name, embedding.spec(), create=create, owner=owner)

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """An embedded store is one process's at a time: runs that write to it take turns (Store.write_lock)."""
        with self._named().write_lock():
            yield


def chroma_resource(chroma: ChromaConfig) -> ChromaResource:
    literal_headers = {name: value for name, value in chroma.headers.items() if isinstance(value, str)}
    env_headers = {name: value.env for name, value in chroma.headers.items() if isinstance(value, EnvRef)}
    cloud = chroma.cloud
    return ChromaResource(
        path=chroma.embedded_path if chroma.is_embedded else None,
        host=chroma.host,
        port=chroma.port,
        ssl=chroma.ssl,
        headers=literal_headers,
        header_env=env_headers,
        cloud_tenant=cloud.tenant if cloud else None,
        cloud_database=cloud.database if cloud else None,
        cloud_api_key=dg.EnvVar(cloud.api_key.env) if cloud else None,  # type: ignore[arg-type]
        lexicon_postgres_env=chroma.lexicon_postgres.env if chroma.lexicon_postgres else None,
        timeout_seconds=chroma.timeout_seconds,
    )


def chroma_outside_runs(chroma: ChromaConfig) -> ChromaResource:
    """The store's resource for a command or a check outside any run, its Cloud key read now.

    Not `process_config_and_initialize()`: the init context it makes enters an ephemeral instance that stays
    the process's current one once gone, and definitions built afterwards fail ('undefined DagsterInstance
    weakref')."""
    resource = chroma_resource(chroma)
    if chroma.cloud is None:
        return resource
    return resource.model_copy(update={"cloud_api_key": chroma.cloud.api_key.resolve("chroma.cloud api_key")})


def embedding_resource(embedding: EmbeddingConfig) -> EmbeddingResource:
    return EmbeddingResource(
        function=embedding.function,
        model=embedding.model,
        model_name=embedding.model_name,
        config_json=json.dumps(embedding.config, sort_keys=True),
        max_tokens=embedding.max_tokens,
        device=embedding.device,
        batch_size=embedding.batch_size,
        precision=embedding.precision,
        runtime=embedding.runtime,
    )


class NoValueIOManager(dg.ConfigurableIOManager):
    """Our asset and ops output no value (each key reports its own materialisation): nothing to store or load.
    Bound under our own key, so our runs never start the project's `io_manager`."""

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is not None:
            raise TypeError(f"{context.step_key}: an s3sync output has no value, got {type(obj).__name__}")

    def load_input(self, context: dg.InputContext) -> None:
        return None


def resources_for(config: AppConfig) -> dict[str, Any]:
    """Every resource the definitions need, under the keys config.resource_keys names (`s3sync_*`)."""
    keys = config.resource_keys
    resources: dict[str, Any] = {
        keys.chroma: chroma_resource(config.chroma),
        keys.embedding: embedding_resource(config.embedding),
        keys.documents: DocumentsResource(**config.documents.model_dump()),
        keys.webserver: DagsterWebserver(url=config.webserver.url, api_token=_env(config.webserver.api_token)),
        keys.io_manager: NoValueIOManager(),
    }
    if config.sources:
        resources[keys.s3] = S3Connections(connections=[s3_connection(source) for source in config.sources])
    return resources


def required(keys: ResourceKeysConfig, *roles: str) -> set[str]:
    """The resource keys a definition asks for, by role (`s3`, `chroma`, ...)."""
    return {getattr(keys, role) for role in roles}


def taken(resources: Any, keys: ResourceKeysConfig, role: str) -> Any:
    """One resource of a context's `resources`, by role."""
    return getattr(resources, getattr(keys, role))
