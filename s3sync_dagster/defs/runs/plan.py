"""A source's plan before a sync (pipeline/audit/plan.py) from Dagster's side: its registered partitions and the empty
objects its materialisations recorded, its collection opened for reading only; the `<source>_plan` job's output."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.names import documents_asset_key, partitions_name
from s3sync_dagster.defs.resources import ChromaResource, EmbeddingResource
from s3sync_dagster.defs.runs.checks import empty_at
from s3sync_dagster.pipeline.audit import EmbeddingRate, Plan, index_frame, measure_rate, plan_source
from s3sync_dagster.pipeline.s3 import ObjectInfo


def plan_of(
    source: SourceConfig,
    instance: dg.DagsterInstance,
    s3: Any,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
    *,
    measure: bool = True,
    listing: Iterable[ObjectInfo] | None = None,
) -> Plan:
    """The source's plan: nothing is written to Chroma or the instance (the collection is opened for queries,
    which begins nothing; a missing one holds no chunks). measure: time the embedding function on a sample."""
    from chromadb.errors import NotFoundError

    spec = source.spec(embedding.spec())

    def read_index() -> Any:
        try:
            collection = chroma.store().collection(source.collection_name, embedding.spec(), create=False, queries=True)
        except NotFoundError:
            return index_frame(None, spec)
        # As the drift audit reads: between the writes of runs, never halfway through a document's.
        with chroma.write_lock():
            return index_frame(collection, spec)

    def rate() -> EmbeddingRate:
        return measure_rate(embedding.embedding_function(), embedding.spec().describe())

    asset_key = documents_asset_key(source)
    return plan_source(
        s3,
        spec,
        read_index,
        measure=rate if measure else None,
        known_empty=lambda object_keys: empty_at(instance, asset_key, object_keys),
        registered=lambda: set(instance.get_dynamic_partitions(partitions_name(source.name))),
        listing=listing,
    )


def plan_metadata(result: Plan) -> dict[str, Any]:
    """The plan as a run's output metadata: the table in markdown, the counts and estimates as numbers."""
    cost = result.chroma_sync
    metadata: dict[str, Any] = {"plan": dg.MetadataValue.md(result.table())}
    metadata.update({name: dg.MetadataValue.int(n) for name, n in result.counts().items()})
    metadata.update(
        {
            "listed": dg.MetadataValue.int(result.listed),
            "unselected": dg.MetadataValue.int(len(result.unselected)),
            "work_bytes": dg.MetadataValue.int(sum(t["bytes"] for t in result.by_kind.values())),
            "chunks_estimate": dg.MetadataValue.int(result.chunk_total),
            "chroma_sync_usd": dg.MetadataValue.float(float(cost.get("total_usd", 0.0))),
            "plan_json": dg.MetadataValue.json(result.payload(shown=50)),
        }
    )
    if result.embedding_seconds is not None:
        metadata["embedding_seconds_estimate"] = dg.MetadataValue.float(result.embedding_seconds)
    return metadata


def plan_output(
    context: dg.OpExecutionContext, source: SourceConfig, s3: Any, chroma: ChromaResource, embedding: EmbeddingResource
) -> dg.Output[None]:
    """The `<source>_plan` job's op: the plan as its output's metadata, its table in the run's log."""
    result = plan_of(source, context.instance, s3.client(source.name), chroma, embedding)
    context.log.info(result.table())
    return dg.Output(None, metadata=plan_metadata(result))
