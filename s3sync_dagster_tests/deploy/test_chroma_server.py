"""The network path: a `chroma run` server on loopback, reached through the Chroma resource's HttpClient."""

from typing import Any

from s3sync_dagster.commands.demo.local_s3 import LOOPBACK
from s3sync_dagster.defs.resources import ChromaResource, EmbeddingResource
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync.stages import sync_object
from s3sync_dagster_tests.conftest import CountingEmbedder, put


def test_sync_through_a_chroma_server(s3: Any, bucket: str, chroma_server: int, embedder: CountingEmbedder) -> None:
    chroma = ChromaResource(host=LOOPBACK, port=chroma_server)
    collection = chroma.collection("server-test", EmbeddingResource())
    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name="server-test", chunking_mode="lines")
    text = "".join(f"row {n}\n" for n in range(25))
    put(s3, bucket, {"net/rows.txt": text})
    report = sync_object(s3, spec, lambda _: collection, embedder, "net/rows.txt")
    assert report.status == "indexed" and report.chunk_count == 3
    again = sync_object(s3, spec, lambda _: collection, embedder, "net/rows.txt")
    assert again.status == "unchanged"

    # A separate, plain client over HTTP sees exactly the chunks, and can query with the recorded function.
    import chromadb

    plain = chromadb.HttpClient(host=LOOPBACK, port=chroma_server).get_collection("server-test")
    found = plain.get(where={"object_key": "net/rows.txt"})
    assert sorted(found["ids"]) == [f"{keys.object_id('net/rows.txt')}-{n}" for n in range(3)]
    assert plain.query(query_texts=["row 13"], n_results=1)["metadatas"][0][0]["object_key"] == "net/rows.txt"
