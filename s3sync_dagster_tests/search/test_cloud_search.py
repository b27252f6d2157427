"""Hybrid search on Chroma Cloud: Chroma's own BM25 sparse index and its Search API.

Chroma Cloud cannot run here, and local Chroma refuses both ("Sparse vector indexing is not enabled in
local", "Search is not implemented for Local Chroma"). So chromadb's real CloudClient talks HTTP to a
stand-in for Cloud's API in this process, which records the requests and answers a search with fixed
rows: what is tested is what we ask Cloud for (the collection's schema, the two rankings in one search
request, the texts' and the query's BM25 vectors) and what we make of its answer.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import chromadb
import pytest

from s3sync_dagster.pipeline.chroma import lifecycle
from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction
from s3sync_dagster.pipeline.search import fusion
from s3sync_dagster.pipeline.search import query as search
from s3sync_dagster.pipeline.search import sparse as sparse_index
from s3sync_dagster.pipeline.search.rows import SPARSE_KEY

# What the stand-in answers to a search request of two searches: the dense ranking, then the BM25 one.
DENSE_ROWS = [("c-near", 0.20), ("c-both", 0.30), ("c-far", 0.90)]
SPARSE_ROWS = [("c-code", -7.5), ("c-both", -3.0)]
VECTOR = {"#type": "sparse_vector", "indices": [1], "values": [1.0]}


class FakeCloud(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, str, Any]]] = []
    collections: ClassVar[dict[str, dict[str, Any]]] = {}

    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.handle_request("GET", None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.handle_request("POST", json.loads(self.rfile.read(length) or b"null"))

    def handle_request(self, method: str, body: Any) -> None:
        path = self.path.split("?")[0].removeprefix("/api/v2")
        self.requests.append((method, path, body))
        parts = path.strip("/").split("/")
        if path == "/auth/identity":
            return self._answer({"user_id": "u", "tenant": "t", "databases": ["d"]})
        if path == "/pre-flight-checks":
            return self._answer({"max_batch_size": 100, "supports_base64_encoding": False})
        if parts[:1] == ["tenants"] and len(parts) == 2:
            return self._answer({"name": parts[1]})
        if parts[:1] == ["tenants"] and len(parts) == 4:
            return self._answer({"id": str(uuid.uuid4()), "name": parts[3], "tenant": parts[1]})
        if path.endswith("/collections") and method == "POST":
            collection = {
                "id": str(uuid.uuid4()), "name": body["name"], "configuration_json": body.get("configuration") or {},
                "schema": body.get("schema"), "metadata": body.get("metadata"), "dimension": None,
                "tenant": "t", "database": "d", "version": 0, "log_position": 0,
            }  # fmt: skip
            self.collections[body["name"]] = collection
            return self._answer(collection)
        if path.endswith("/search"):
            answers = [DENSE_ROWS, SPARSE_ROWS]
            rows = [answers[position] for position in range(len(body["searches"]))]
            return self._answer(
                {
                    "ids": [[chunk_id for chunk_id, _ in ranking] for ranking in rows],
                    "documents": [[f"text of {chunk_id}" for chunk_id, _ in ranking] for ranking in rows],
                    "embeddings": None,
                    "metadatas": [
                        [{"object_key": chunk_id, SPARSE_KEY: VECTOR} for chunk_id, _ in ranking] for ranking in rows
                    ],
                    "scores": [[score for _, score in ranking] for ranking in rows],
                    "select": [["#document", "#metadata", "#score"] for _ in rows],
                }
            )
        if parts[-2:-1] == ["collections"] and method == "GET":
            if parts[-1] in self.collections:
                return self._answer(self.collections[parts[-1]])
            return self._answer({"error": "NotFoundError", "message": f"Collection [{parts[-1]}] does not exist"}, 404)
        if path.endswith(("/add", "/upsert")):
            return self._answer(True)
        return self._answer({"error": "NotFoundError", "message": f"no route {method} {path}"}, 404)


@pytest.fixture
def cloud() -> Iterator[tuple[Any, type[FakeCloud]]]:
    FakeCloud.requests, FakeCloud.collections = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCloud)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = chromadb.CloudClient(
            tenant="t", database="d", api_key="ck-test", cloud_host="127.0.0.1", cloud_port=server.server_port,
            enable_ssl=False,
        )  # fmt: skip
        yield client, FakeCloud
    finally:
        server.shutdown()


def test_a_cloud_collection_is_created_with_chromas_bm25_index_and_its_texts_get_their_vectors(
    cloud: tuple[Any, type[FakeCloud]],
) -> None:
    client, server = cloud
    collection = lifecycle.open_collection(
        client, "docs", ChromaDefaultFunction(), {}, schema=sparse_index.hybrid_schema()
    )
    created = next(body for method, path, body in server.requests if method == "POST" and path.endswith("/collections"))
    sparse = created["schema"]["keys"][SPARSE_KEY]["sparse_vector"]["sparse_vector_index"]
    assert sparse["enabled"] and sparse["config"]["source_key"] == "#document" and sparse["config"]["bm25"]
    assert sparse["config"]["embedding_function"]["name"] == "chroma_bm25"
    assert sparse_index.has_sparse_index(collection)
    collection.upsert(ids=["c-1"], documents=["the XK-42 flag parser"], embeddings=[[0.0] * 384])
    sent = next(body for method, path, body in server.requests if path.endswith("/upsert"))
    vector = sent["metadatas"][0][SPARSE_KEY]
    assert vector["#type"] == "sparse_vector" and len(vector["indices"]) == len(vector["values"]) >= 3


def test_hybrid_search_on_cloud_asks_both_rankings_in_one_request_and_fuses_them(
    cloud: tuple[Any, type[FakeCloud]],
) -> None:
    client, server = cloud
    collection = lifecycle.open_collection(
        client, "docs", ChromaDefaultFunction(), {}, schema=sparse_index.hybrid_schema()
    )
    hits = search.search(collection, "XK-42 flag", n=3, where={"source": "docs"})
    [(_, _, body)] = [request for request in server.requests if request[1].endswith("/search")]
    dense, sparse = body["searches"]
    assert dense["rank"]["$knn"]["key"] == "#embedding" and len(dense["rank"]["$knn"]["query"]) == 384
    assert sparse["rank"]["$knn"]["key"] == SPARSE_KEY and sparse["rank"]["$knn"]["query"]["#type"] == "sparse_vector"
    pool = fusion.FUSION.pool(3)
    assert dense["limit"]["limit"] == sparse["limit"]["limit"] == pool
    assert dense["filter"] == sparse["filter"] == {"source": {"$eq": "docs"}}
    # Relative-score fusion of the answer: each side scaled 0-1 (distances turned round), lexical weighted 0.6.
    assert [(hit.chunk_id, hit.dense_rank, hit.lexical_rank) for hit in hits] == [
        ("c-code", None, 1),
        ("c-near", 1, None),
        ("c-both", 2, 2),
    ]
    assert [round(hit.score, 3) for hit in hits] == [0.6, 0.4, round(0.4 * (0.9 - 0.3) / (0.9 - 0.2), 3)]
    assert all(SPARSE_KEY not in hit.metadata for hit in hits)  # the vector is Chroma's, not the caller's
    lexical = search.search(collection, "XK-42 flag", mode="lexical", n=5)
    assert [hit.chunk_id for hit in lexical] == ["c-code", "c-both"] and lexical[0].score == 7.5


def test_a_collection_without_the_sparse_index_is_searched_the_portable_way(tmp_path: Any) -> None:
    collection = chromadb.PersistentClient(path=str(tmp_path)).create_collection("plain")
    assert not sparse_index.has_sparse_index(collection)
    collection.add(ids=["a", "b"], documents=["the XK-42 flag", "other words"], embeddings=[[1.0, 0.0], [0.0, 1.0]])
    assert [hit.chunk_id for hit in search.search(collection, "xk-42", mode="lexical")] == ["a"]
