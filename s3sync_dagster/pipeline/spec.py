"""What the engine knows of a source, as plain values, and of the Sync API's request for one object key."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from s3sync_dagster.pipeline.chunking import TokenBudget
from s3sync_dagster.pipeline.embedding import default_token_budget
from s3sync_dagster.pipeline.extraction import DocumentOptions
from s3sync_dagster.pipeline.records import (
    Owner,
    check_not_reserved,
    validate_collection_name,
    validate_custom_id,
    validate_user_metadata,
)
from s3sync_dagster.pipeline.s3 import DEFAULT_MAX_OBJECT_BYTES, is_meta_key

# Bump when chunking or extraction changes what a given object produces: every object re-indexes once.
PIPELINE_VERSION = "3"  # 2: HTML and CSV are converted to markdown by docling; 3: chunks fit the model's window


@dataclass(frozen=True)
class SourceSpec:
    """What the engine needs to know of a source, as plain values."""

    name: str
    bucket_name: str
    collection_name: str
    path_prefix: str = ""
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    chunking_mode: Literal["tree_sitter", "lines"] = "tree_sitter"
    max_size_bytes: int = 4096
    max_lines: int = 10
    # No chunk costs the embedding model more tokens than this; the default is the bundled model's window.
    tokens: TokenBudget | None = field(default_factory=default_token_budget)
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    document_options: DocumentOptions = field(default_factory=DocumentOptions)
    container_tag_regex: str | None = None
    # metadata: only .meta.json files index (each is its own document); a document's own sync only
    # brings the metadata files naming it up to date.
    auto_sync: Literal["none", "direct", "metadata"] = "none"
    # Tenancy: each collection another configured source writes (collection name, that source's name), never
    # this source's to write; and globs narrowing where its metadata files and invocations may send chunks.
    collection_owners: tuple[tuple[str, str], ...] = ()
    target_collections: tuple[str, ...] = ()
    # The deployment the source belongs to (`project` in the config; "" when it names none): recorded on
    # every chunk, so two projects sharing a store never count, replace or delete each other's chunks.
    project: str = ""
    # The store is Chroma Cloud: its quotas per record are rules (pipeline/chroma/limits.py), checked before a write.
    cloud_limits: bool = False
    # Issue 52: user metadata names and tag keys carried into the chunks (`meta_<name>`, `tag_<name>`); the tag
    # listing an object's readers and the readers of an object without it; requester pays.
    object_metadata: tuple[str, ...] = ()
    object_tags: tuple[str, ...] = ()
    readers_tag: str | None = None
    default_readers: tuple[str, ...] = ()
    request_payer: str | None = None

    @property
    def owner(self) -> Owner:
        """Whose chunks this source may read as its own, replace and delete (pipeline/records/owners.py)."""
        return Owner(self.name, self.bucket_name, self.path_prefix, self.project)

    @property
    def metadata_mode(self) -> bool:
        return self.auto_sync == "metadata"

    @property
    def other_sources(self) -> frozenset[str]:
        """The other sources of the config (each writes one collection)."""
        return frozenset(owner for _, owner in self.collection_owners) - {self.name}

    def check_target(self, collection_name: str, what: str) -> None:
        """A source writes to its own collection, and to others only if no other source owns them and
        they match its `target_collections` globs (when given); errors name the asker, the sources and the rule."""
        if collection_name == self.collection_name:
            return
        check_not_reserved(collection_name, what)  # a copy or a retired collection: its owner's swap's
        owner = dict(self.collection_owners).get(collection_name)
        if owner is not None and owner != self.name:
            raise ValueError(
                f"{what}: collection '{collection_name}' belongs to source '{owner}'; source '{self.name}' may "
                f"write only to its own collection '{self.collection_name}' and to collections no other source owns"
            )
        if self.target_collections and not any(
            fnmatch.fnmatchcase(collection_name, pattern) for pattern in self.target_collections
        ):
            raise ValueError(
                f"{what}: collection '{collection_name}' is not in source '{self.name}' target_collections "
                f"({', '.join(self.target_collections)}); besides its own collection, a source writes only there"
            )

    @property
    def chunking_signature(self) -> str:
        tokens = f":{self.tokens.signature}" if self.tokens is not None else ""
        return f"{self.chunking_mode}:{self.max_size_bytes}:{self.max_lines}{tokens}"


def sync_signature(
    spec: SourceSpec,
    custom_id: str | None,
    user_metadata: Mapping[str, Any],
    meta_key: str | None = None,
    target_collection_name: str | None = None,
) -> str:
    """Everything besides the object's bytes that decides its chunks: a change re-indexes the object."""
    settings = {
        "pipeline": PIPELINE_VERSION,
        "chunking": spec.chunking_signature,
        "custom_id": custom_id,
        "metadata": user_metadata,
        "source": spec.name,
        "bucket": spec.bucket_name,
        "container_tag_regex": spec.container_tag_regex,
        "meta_key": meta_key,
        "target_collection": target_collection_name,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Invocation:
    """The Sync API's invocation parameters for one object key: they apply to the run that carries them.

    A later sync of the key without them (a poll, an event, a backfill) indexes it with the source's
    own settings, replacing the invocation's chunks in the source's collection.
    """

    custom_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    target_collection_name: str | None = None

    def validate(self, spec: SourceSpec, object_key: str) -> None:
        """The Sync API's checks, before anything runs; errors name the object and the rule."""
        check_key_in_source(spec, object_key)
        if is_meta_key(object_key) and self != Invocation():
            raise ValueError(
                f"object '{object_key}' is a .meta.json file: it carries its own custom id, metadata and target"
            )
        if self.custom_id is not None:
            try:
                validate_custom_id(self.custom_id)
            except ValueError as error:
                raise ValueError(f"object '{object_key}': {error}") from None
        validate_user_metadata(self.metadata, f"object '{object_key}'")
        if self.target_collection_name is not None:
            validate_collection_name(self.target_collection_name, f"object '{object_key}' target collection")
            spec.check_target(self.target_collection_name, f"object '{object_key}'")


def check_key_in_source(spec: SourceSpec, object_key: str) -> None:
    if not object_key.startswith(spec.path_prefix):
        raise ValueError(
            f"object key '{object_key}' does not start with source '{spec.name}' path_prefix '{spec.path_prefix}'"
        )
