"""Where the vectors go: an embedded Chroma store, a Chroma server or Chroma Cloud, and how a run opens it."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from s3sync_dagster.config.secret_rules import (
    SECRET_NAME,
    EnvRef,
    StrictModel,
    no_credentials_in_url,
    secret_must_be_env_ref,
)
from s3sync_dagster.pipeline import extras
from s3sync_dagster.pipeline.store import DEFAULT_TIMEOUT_S, Store

DEFAULT_CHROMA_PATH = ".s3sync/chroma"


class ChromaCloudConfig(StrictModel):
    tenant: str
    database: str
    api_key: Annotated[EnvRef, Field()]

    _literal = field_validator("api_key", mode="before")(secret_must_be_env_ref)


class ChromaConfig(StrictModel):
    """Where the vectors go: embedded (`path`), a Chroma server (`host`), or Chroma Cloud (`cloud`)."""

    path: str | None = None
    host: str | None = None
    port: int = 8000
    ssl: bool = False
    headers: dict[str, str | EnvRef] = Field(default_factory=dict)
    cloud: ChromaCloudConfig | None = None
    # A server's lexical index (pipeline/lexicon/postgres.py): a PostgreSQL connection URL, in a variable
    # (postgresql://user:password@host:port/database), that every host writing or searching the server reaches.
    lexicon_postgres: EnvRef | None = None
    # A server's (or Chroma Cloud's) answer to each request, in seconds. Past it the request's key fails naming
    # this setting, the run's later requests fail at once for as long again (no key waits out a silent server),
    # and the next sync or retry writes what was not written. Chroma's own client would wait for ever. Above the
    # longest write a busy server takes (a batch of new objects' chunks); ignored by an embedded store.
    timeout_seconds: float = Field(default=DEFAULT_TIMEOUT_S, gt=0)

    _host = field_validator("host")(no_credentials_in_url)
    _lexicon_postgres = field_validator("lexicon_postgres", mode="before")(secret_must_be_env_ref)

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
            if isinstance(value, str) and re.search(SECRET_NAME, header):
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
            timeout_s=self.timeout_seconds,
        )
