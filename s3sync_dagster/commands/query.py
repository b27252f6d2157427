"""`s3sync query` and its Python form: search a source's collection by meaning, by exact words, or both."""

from __future__ import annotations

from chromadb.errors import NotFoundError

from s3sync_dagster.commands.runner import UsageError
from s3sync_dagster.config import AppConfig
from s3sync_dagster.definitions import load_app_config
from s3sync_dagster.defs.resources import chroma_resource, embedding_resource
from s3sync_dagster.pipeline.search import FUSION, Fusion, Hit, Mode, search


def search_source(
    source_name: str,
    text: str,
    *,
    mode: Mode = "hybrid",
    n: int = 5,
    config: AppConfig | None = None,
    fusion: Fusion = FUSION,
    every_writer: bool = False,
) -> list[Hit]:
    """The n chunks of a configured source that best answer `text`, found as `s3sync query` finds them.

    config: the app's config (default: $S3SYNC_CONFIG, else ./s3sync.yaml). Chroma and the embedding
    function are opened as the source's syncs open them, so the query is embedded by the same model.

    Only the source's own chunks are searched (pipeline/owners.py): a chunk another writer put into its
    collection is not an answer of this source's documents. every_writer=True searches the whole collection;
    each hit's metadata says whose it is (`source`, `project`).
    """
    config = config or load_app_config()
    source = config.source(source_name)
    chroma = chroma_resource(config.chroma).process_config_and_initialize()
    try:
        collection = chroma.collection(source.collection_name, embedding_resource(config.embedding), create=False)
    except NotFoundError:
        raise UsageError(
            f"source '{source.name}' has not been synced yet: collection '{source.collection_name}' does not exist"
        ) from None
    if every_writer:
        return search(collection, text, mode=mode, n=n, fusion=fusion)
    owner = source.spec(config.embedding.spec()).owner
    return [
        hit
        for hit in search(collection, text, mode=mode, n=n, fusion=fusion, where=owner.where())
        if owner.owns(hit.metadata)  # the prefix, which Chroma's filter cannot test
    ]
