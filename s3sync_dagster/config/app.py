"""The whole settings (AppConfig): the sources and what they share, and the rules that join them: distinct
names, asset keys and collections, prefixes apart, token budgets the model reads, Chroma Cloud's quotas."""

from __future__ import annotations

from pydantic import Field, model_validator

from s3sync_dagster.config.chroma import ChromaConfig
from s3sync_dagster.config.deployment import (
    DocumentsConfig,
    ExecutorConfig,
    ResourceKeysConfig,
    WebserverConfig,
)
from s3sync_dagster.config.embedding import EmbeddingConfig
from s3sync_dagster.config.errors import ConfigError
from s3sync_dagster.config.secret_rules import StrictModel
from s3sync_dagster.config.source import SourceConfig
from s3sync_dagster.pipeline.chroma import check_database, check_source


class AppConfig(StrictModel):
    # The deployment these sources belong to, recorded on every chunk they write: two projects sharing one
    # Chroma store (or server) whose sources read the same bucket tell their chunks apart by it. Absent,
    # sources are told apart by name, bucket and prefix (pipeline/records/owners.py). Not a secret: it is in metadata.
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
        # Chroma Cloud's quotas (pipeline/chroma/limits.py): a setting that would break one is refused at load,
        # naming the source and the setting; what only an object can break is checked before its write.
        cloud = self.chroma.cloud
        if cloud is not None:
            check_database(cloud.database)
            for source in self.sources:
                check_source(source.name, source.chunking.max_size_bytes, source.collection_name)
        for source in self.sources:
            source.set_cloud_limits(cloud is not None)
        return self

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"no source named '{name}' (configured: {known})")
