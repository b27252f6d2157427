"""The re-embed job's run: a source's collection re-embedded under the configured function and swapped in
(pipeline/reembed.py), its progress in the run's log line by line, its figures on the run's output."""

import time

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs import failpoints
from s3sync_dagster.defs.resources import ChromaResource, EmbeddingResource
from s3sync_dagster.defs.run_config import ReembedConfig
from s3sync_dagster.pipeline import reembed
from s3sync_dagster.pipeline.embed import same_function

# The first words of every progress line the run logs (what `s3sync reembed` shows as it goes).
PROGRESS_PREFIX = "reembed: "


def reembed_source(
    context: dg.OpExecutionContext,
    source: SourceConfig,
    config: ReembedConfig,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
) -> dg.Output[None]:
    """Re-embed the source's collection with the configured function and swap it in; with `abandon` (or when
    the config embeds with the collection's own function again), drop the copy of a re-embedding underway."""
    from chromadb.errors import NotFoundError

    spec = embedding.spec()
    store = chroma.store()
    name = source.collection_name
    started = time.perf_counter()
    # An embedded store is one process's at a time: syncs wait for the re-embedding (queries do not).
    with store.write_lock():
        try:
            collection = store.collection(name, spec, create=False)  # opened in the function it records
        except NotFoundError:
            raise dg.Failure(
                f"source '{source.name}' has not been synced yet: collection '{name}' does not exist"
            ) from None
        client = store.client()
        recorded = (collection.configuration_json or {}).get("embedding_function")
        if config.abandon or same_function(recorded, spec):
            dropped = reembed.abandon(client, collection)
            status = "abandoned" if dropped else ("nothing underway" if config.abandon else "current")
            context.log.info(
                f"{PROGRESS_PREFIX}collection '{name}': "
                + (
                    "its re-embedding copy dropped, the collection as it was"
                    if dropped
                    else f"{status}: it holds {spec.describe() if status == 'current' else 'its own'} vectors"
                )
            )
            return dg.Output(None, metadata={"status": status, "collection": name})
        context.log.info(f"{PROGRESS_PREFIX}collection '{name}': re-embedding with {spec.describe()}")
        _, progress = reembed.run(
            client,
            collection,
            spec.build(),
            report=lambda progress: context.log.info(PROGRESS_PREFIX + progress.line()),
            step=failpoints.reached,
            page_size=config.batch_size,
        )
    seconds = time.perf_counter() - started
    return dg.Output(
        None,
        metadata={
            "status": "swapped",
            "collection": name,
            "embedding": spec.describe(),
            "chunks": progress.done,
            "texts_embedded": progress.embedded,
            "reconciled": progress.reconciled,
            "seconds": round(seconds, 1),
        },
    )
