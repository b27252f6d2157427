"""Collections and their lifecycle: opened (the client's batch limit and lexical index known), created, rebuilt
under another function, and the copy a re-embedding fills beside one while writes go on."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from s3sync_dagster.pipeline import lexicon, records
from s3sync_dagster.pipeline.lexicon import attach, attach_index, of

if TYPE_CHECKING:
    from chromadb import Schema
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Documents, EmbeddingFunction

Embedder = Callable[[list[str]], Sequence[Any]]

# How many records one request may carry is the client's to say (5,461 embedded here; a server or
# Chroma Cloud answers with its own), and a Collection keeps its client to itself: the limit is
# recorded by collection id when a collection is opened here (open_collection, get_collection). A
# collection opened elsewhere gets the fallback, below every limit seen.
FALLBACK_MAX_BATCH = 1000
_max_batch: dict[UUID, int] = {}


def _opened(client: ClientAPI, collection: Collection) -> Collection:
    _max_batch[collection.id] = int(client.get_max_batch_size())
    settings = client.get_settings()
    if settings.is_persistent:  # an embedded store: its lexical index lies in its folder (pipeline/lexicon/embedded.py)
        attach(collection, settings.persist_directory)
    elif (served := lexicon.served(settings.chroma_server_host, settings.chroma_server_http_port)) is not None:
        attach_index(collection, served)  # a server's, in PostgreSQL (pipeline/lexicon/postgres.py)
    return collection


def opened(client: ClientAPI, collection: Collection) -> Collection:
    """A collection got from `client` elsewhere, made known here as open_collection's are (batch limit, index)."""
    return _opened(client, collection)


def max_batch_size(collection: Collection) -> int:
    return _max_batch.get(collection.id, FALLBACK_MAX_BATCH)


# A collection being re-embedded under another function (pipeline/reembed/swap.py): its copy, and the function of
# each side where it is not the writer's, by collection id. Every write here lands in both, each side embedded
# by its own function, so the copy stays exact while it is filled.
_copies: dict[UUID, Collection] = {}
_functions: dict[UUID, Embedder] = {}


def attach_copy(collection: Collection, copy: Collection, function: Embedder) -> None:
    """From now on, writes to `collection` land in `copy` too, embedded by `function`."""
    _copies[collection.id] = copy
    _functions[copy.id] = function


def detach_copy(collection: Collection) -> None:
    _copies.pop(collection.id, None)


def embed_with(collection: Collection, function: Embedder) -> None:
    """Writes to `collection` embed with `function` (the function it records), whatever the writer's is."""
    _functions[collection.id] = function


def copy_of(collection: Collection) -> Collection | None:
    """The re-embedding's copy every write to `collection` lands in too (attach_copy), if one is attached."""
    return _copies.get(collection.id)


def function_of(collection: Collection, embed: Embedder) -> Embedder:
    """The function writes to `collection` embed with: its own (embed_with, attach_copy), else the writer's."""
    return _functions.get(collection.id, embed)


@contextlib.contextmanager
def copy_gone(collection: Collection) -> Iterator[None]:
    """A write to a re-embedding's copy that is no longer there (abandoned, or swapped in and so the collection
    retired) is no longer needed: the copy is let go and the write to the collection goes on (a swap's own
    checks, and sync.sync_keys_following_swaps, bring what the collection took into the swapped-in one)."""
    from chromadb.errors import NotFoundError

    try:
        yield
    except NotFoundError:
        detach_copy(collection)


# While a collection is rebuilt under a new configuration, the copy has this name; it takes the
# collection's name only once complete, and a copy left by a crash is finished or dropped on next open.
REBUILD_SUFFIX = records.REBUILD_SUFFIX
# On a copy this project made (a rebuild's, a re-embedding's): the name of the collection it copies. A collection
# of a reserved name without it is not this project's (another tool's, another release's) and is never renamed
# or dropped here.
COPY_OF_KEY = "s3sync_copy_of"
# On a re-embedding's copy (and the collection once swapped): the function record it was re-embedded from
# (pipeline/reembed/swap.py).
FROM_KEY = "s3sync_reembedded_from"
RETIRED_SUFFIX = records.RETIRED_SUFFIX
# On a collection renamed `<name>-s3sync-retired` by a swap: `<name>`. A collection of that name without it is not
# a swap's (another tool's, or a user's from before the name was reserved): never renamed or dropped here.
RETIRED_KEY = "s3sync_retired_from"


def is_copy_of(collection: Collection, name: str) -> bool:
    """Whether `collection` is the copy this project made of collection `name` (COPY_OF_KEY; a re-embedding's
    copy of an earlier release records FROM_KEY instead)."""
    metadata = collection.metadata or {}
    return collection.name == name + REBUILD_SUFFIX and (
        metadata.get(COPY_OF_KEY) == name or (COPY_OF_KEY not in metadata and FROM_KEY in metadata)
    )


def open_collection(
    client: ClientAPI,
    name: str,
    function: EmbeddingFunction[Documents],
    metadata: Mapping[str, Any],
    schema: Schema | None = None,
) -> Collection:
    """Get or create a collection recording ``function`` (and, new, ``schema``'s indexes); finishes a rebuild
    a crash interrupted."""
    from chromadb.errors import NotFoundError

    try:
        return get_collection(client, name, function)
    except NotFoundError:
        pass
    try:
        # The copy is complete once the original is gone (it is deleted only after the last page). A collection of
        # that name this project did not make as the copy of this one is not taken: a new collection is.
        copy = client.get_collection(name=name + REBUILD_SUFFIX, embedding_function=function)  # type: ignore[arg-type]
        if not is_copy_of(copy, name):
            raise NotFoundError(f"collection '{copy.name}' is not a copy of '{name}'")
    except NotFoundError:
        created = client.get_or_create_collection(
            name=name,
            embedding_function=function,  # type: ignore[arg-type]
            metadata=dict(metadata) or None,  # Chroma refuses an empty metadata
            schema=schema,
        )
        opened = _opened(client, created)
        index = of(opened)
        if index is not None:
            index.create_if_empty(opened)
        return opened
    copy.modify(name=name)
    return get_collection(client, name, function)


def get_collection(client: ClientAPI, name: str, function: EmbeddingFunction[Documents]) -> Collection:
    """An existing collection (chromadb's NotFoundError if there is none), with its client's batch limit known."""
    return _opened(client, client.get_collection(name=name, embedding_function=function))  # type: ignore[arg-type]


def rebuild_collection(client: ClientAPI, collection: Collection, function: EmbeddingFunction[Documents]) -> Collection:
    """Copy every record (ids, vectors, texts, metadata) into a new collection that records ``function``,
    then give it the old one's name: Chroma refuses to change a collection's embedding function in place.

    Only for a function whose vectors are the same as the recorded one's (the same model).
    """
    from chromadb.errors import NotFoundError

    name = collection.name
    copy_name = name + REBUILD_SUFFIX
    with contextlib.suppress(NotFoundError, ValueError):
        left = client.get_collection(copy_name)
        if not is_copy_of(left, name):
            raise RuntimeError(
                f"collection '{copy_name}' is in the way of the rebuild of collection '{name}' and is not a copy "
                "s3sync-dagster made: it is left as it is; rename or remove it, then sync again"
            )
        client.delete_collection(copy_name)  # a copy a crash left before the original was deleted
    hnsw = (collection.configuration or {}).get("hnsw")
    copy = client.create_collection(
        name=copy_name,
        # The same index settings: the old record's "cosine" space must not become the new function's "l2".
        configuration={"hnsw": dict(hnsw)} if hnsw else None,  # type: ignore[arg-type,typeddict-item]
        embedding_function=function,  # type: ignore[arg-type]
        metadata={**dict(collection.metadata or {}), COPY_OF_KEY: name},
    )
    page = int(client.get_max_batch_size())
    offset = 0
    while True:
        found = collection.get(limit=page, offset=offset, include=["embeddings", "documents", "metadatas"])  # type: ignore[list-item]
        if not found["ids"]:
            break
        copy.add(
            ids=found["ids"],
            embeddings=found["embeddings"],  # type: ignore[arg-type]
            documents=found["documents"],
            metadatas=found["metadatas"],  # type: ignore[arg-type]
        )
        offset += len(found["ids"])
    client.delete_collection(name)
    copy.modify(name=name)
    rebuilt = get_collection(client, name, function)
    # The marker stays on the collection the copy became: it names that very collection, so it never reads as
    # the copy of another (is_copy_of also asks for the copy's name).
    index = of(rebuilt)
    if index is not None:  # the copy is a new collection: its lexical index is built anew, the old one's dropped
        index.rebuild(rebuilt)
        index.drop(collection.id)
    return rebuilt


def drop_collection(client: ClientAPI, collection: Collection) -> None:
    """Delete a collection of this project's making, and its lexical index where the store keeps one."""
    detach_copy(collection)
    index_of = of(opened(client, collection))
    client.delete_collection(collection.name)
    if index_of is not None:
        index_of.drop(collection.id)
