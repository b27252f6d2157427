"""The re-embed job's run: a source's collection re-embedded under the configured function and swapped in
(pipeline/reembed/swap.py), or, under the function it records, its chunks written before context lines given them in
place (pipeline/reembed/context_backfill.py); its progress in the run's log line by line, its figures on the run's output."""

import time
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs import failpoints
from s3sync_dagster.defs.resources import ChromaResource, EmbeddingResource
from s3sync_dagster.defs.run_config import ReembedConfig
from s3sync_dagster.pipeline.chroma import OWNER_KEY, may_reembed
from s3sync_dagster.pipeline.embedding import EmbeddingSpec, same_function
from s3sync_dagster.pipeline.records import RESERVED_SUFFIXES, Owner
from s3sync_dagster.pipeline.reembed import Progress, abandon, add_missing, recover, run
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.store import Store

# The first words of every progress line the run logs (what `s3sync reembed` shows as it goes).
PROGRESS_PREFIX = "reembed: "


def reembed_source(
    context: dg.OpExecutionContext,
    source: SourceConfig,
    config: ReembedConfig,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
) -> dg.Output[None]:
    """Re-embed with the configured function, and swap in, what the source owns: its own collection, then each
    collection holding only its chunks (the targets its metadata files name; index.may_reembed). With `abandon`
    (or when the config embeds with a collection's own function again), drop the copy of a re-embedding underway;
    under the function a collection records, its chunks of this source written before context lines get them
    (embedded again in place, no S3 read). Nothing of another source or project is copied or swapped."""
    from chromadb.errors import NotFoundError

    spec = embedding.spec()
    store = chroma.store()
    name = source.collection_name
    started = time.perf_counter()
    figures: dict[str, Any] = {"status": "current", "collection": name, "chunks": 0, "texts_embedded": 0}
    # An embedded store is one process's at a time: syncs wait for the re-embedding (queries do not).
    with store.write_lock():
        try:
            store.collection(name, spec, create=False)
        except NotFoundError:
            raise dg.Failure(
                f"source '{source.name}' has not been synced yet: collection '{name}' does not exist"
            ) from None
        source_spec = source.spec(spec)
        owner = source_spec.owner
        for target in _owned(store, name, spec, owner):
            status, progress = _reembed_one(context, store, target, spec, config, source_spec)
            if target == name or status != "current":
                figures["status"] = status if target == name else figures["status"]
                figures.setdefault("collections", []).append(f"{target}: {status}")
            if progress is not None:
                figures["chunks"] += progress.done
                figures["texts_embedded"] += progress.embedded
                figures["reconciled"] = figures.get("reconciled", 0) + progress.reconciled
    if figures["status"] == "swapped":
        figures["embedding"] = spec.describe()
    figures["seconds"] = round(time.perf_counter() - started, 1)
    return dg.Output(None, metadata=figures)


def _owned(store: Store, name: str, spec: EmbeddingSpec, owner: Owner) -> list[str]:
    """The source's own collection, then the other collections a model change of it re-embeds."""
    from chromadb.errors import NotFoundError

    others = []
    for listed in store.client().list_collections():
        if listed.name == name or listed.name.endswith(RESERVED_SUFFIXES):
            continue
        try:
            collection = store.collection(listed.name, spec, create=False)
        except (NotFoundError, ValueError):  # gone meanwhile, or a function this machine cannot run: not ours
            continue
        unbound = (collection.metadata or {}).get(OWNER_KEY) is None
        if unbound and collection.count() and may_reembed(collection, owner):
            others.append(listed.name)
    return [name, *sorted(others)]


def _reembed_one(
    context: dg.OpExecutionContext,
    store: Store,
    name: str,
    spec: EmbeddingSpec,
    config: ReembedConfig,
    source: SourceSpec,
) -> tuple[str, Progress | None]:
    """Re-embed one collection and swap it in (or abandon its copy; or, under its own function, give its chunks
    written before context lines theirs); its status and progress."""
    client = store.client()
    recover(client, name)  # a swap a kill cut short: finished (its retired collection dropped) first
    collection = store.collection(name, spec, create=False)  # opened in the function it records
    recorded = (collection.configuration_json or {}).get("embedding_function")
    if config.abandon or same_function(recorded, spec):
        dropped = abandon(client, collection, sticks=config.abandon)
        status = "abandoned" if dropped else ("nothing underway" if config.abandon else "current")
        context.log.info(
            f"{PROGRESS_PREFIX}collection '{name}': "
            + (
                "its re-embedding copy dropped, the collection as it was"
                if dropped
                else f"{status}: it holds {spec.describe() if status == 'current' else 'its own'} vectors"
            )
        )
        if config.abandon:
            return status, None
        return _add_contexts(context, collection, spec, source, status)
    context.log.info(f"{PROGRESS_PREFIX}collection '{name}': re-embedding with {spec.describe()}")
    _, progress = run(
        client,
        collection,
        spec.build(),
        report=lambda progress: context.log.info(PROGRESS_PREFIX + progress.line()),
        step=_at_step,
        page_size=config.batch_size,
        contexts=source.tokens,
    )
    return "swapped", progress


def _at_step(name: str) -> None:
    """A test's fault at a step of the re-embedding: kill -9 of the process (`reembed:copied`), or its run failing
    there once, as a store gone would fail it (`reembed:copied:lost`)."""
    failpoints.reached(name)
    failpoints.fails_once(f"{name}:lost")


def _add_contexts(
    context: dg.OpExecutionContext, collection: Any, spec: EmbeddingSpec, source: SourceSpec, status: str
) -> tuple[str, Progress | None]:
    """Under the function the collection records: its chunks of `source` written before context lines given theirs
    from their objects' stored chunks, embedded again in place (docs/search.md, "What is embedded")."""

    def report(chunks: int, objects: int) -> None:
        context.log.info(
            f"{PROGRESS_PREFIX}collection '{collection.name}': context lines: {chunks:,} chunks of {objects:,} objects"
        )

    chunks, objects = add_missing(collection, spec.build(), source.tokens, source.owner, report)
    if not chunks:
        return status, None
    context.log.info(
        f"{PROGRESS_PREFIX}collection '{collection.name}': context lines added to {chunks:,} chunks of {objects:,} objects"
    )
    return "contexts added", Progress(total=chunks, done=chunks, embedded=chunks, phase="contexts added")
