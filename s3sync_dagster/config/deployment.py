"""What the sources share around them: document extraction, the executor (Celery workers), the Dagster
webserver their backfills call, and the resource keys they take in the code location."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from s3sync_dagster.config.secret_rules import (
    URL_CREDENTIALS,
    EnvRef,
    StrictModel,
    no_credentials_in_url,
    secret_must_be_env_ref,
)
from s3sync_dagster.pipeline import extras


class DocumentsConfig(StrictModel):
    """Document extraction (PDF, Office, OpenDocument, HTML, EPUB, images), shared by all sources."""

    # docling's model weights for the full PDF layout pipeline; absent: the Hugging Face cache, and
    # the model-free native pipeline (with a warning) when they are not there either.
    artifacts_path: str | None = None
    timeout_seconds: float = Field(default=300.0, gt=0)  # per file; an overrun fails that key only
    workers: int = Field(default=2, ge=1)  # worker processes converting documents in parallel
    ocr: bool = True  # Tesseract for images and PDF pages without a text layer, when installed


class CeleryConfig(StrictModel):
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
        if isinstance(value, str) and re.search(URL_CREDENTIALS, value):
            raise ValueError(
                "carries credentials (user:password@...), which are refused and not shown: "
                "give the whole URL as {env: VAR_NAME}"
            )
        return value


class ExecutorConfig(StrictModel):
    """Where a run's step executes: in the run's own process (default), or on Celery workers."""

    celery: CeleryConfig | None = None

    @field_validator("celery")
    @classmethod
    def _celery_installed(cls, celery: CeleryConfig | None) -> CeleryConfig | None:
        # At load, as chroma.lexicon_postgres: every door (each `s3sync` command, the code location, a worker)
        # refuses a config this install cannot run, naming the pip command, where the definitions alone did.
        if celery is not None:
            extras.require("celery", "executor.celery")
        return celery


class WebserverConfig(StrictModel):
    """Where the Dagster webserver answers: each source's backfill job starts Dagster's own partition backfills
    through its GraphQL API (the call the UI's own Materialize dialog makes), the only public way to start one."""

    # In a deployment, the webserver's service. Unset: found on this machine (`dagster dev`/`dg dev` on any port,
    # defs/webserver.py), else http://localhost:3000.
    url: str | None = None
    # Dagster+ (or a proxy in front of the webserver): the API token, sent as `Dagster-Cloud-Api-Token`.
    api_token: EnvRef | None = None

    _url = field_validator("url")(no_credentials_in_url)
    _literal = field_validator("api_token", mode="before")(secret_must_be_env_ref)


_RESOURCE_KEY = r"^[A-Za-z_][A-Za-z0-9_]*$"  # a Python identifier: Dagster's rule for resource keys


class ResourceKeysConfig(StrictModel):
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
