"""Two sources racing for one document id in a collection both may write: exactly one wins, every time.

Each source has a `.meta.json` file giving its own document the same id in a collection neither owns. Two
worker processes (one per source, as two projects' or two hosts' runs are) sync them against one `chroma run`
server, round after round. The moment of the race is made certain, not left to a clock: each worker waits
at a barrier on its way into the write (after both id checks of the fetch and the write passed, and after
the embedding), so both write together. Before claims were atomic both said "indexed" and the later upsert
silently replaced the other's chunks; now the first claim wins and the other fails naming both sources.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest

from s3sync_dagster.commands.demo.local_s3 import LOOPBACK
from s3sync_dagster_tests.conftest import Chunks, Row, put, store_chunks

ROUNDS = 20
SOURCES = ("a", "b")


def document(source: str, round_number: int) -> str:
    """Each source's document, one chunk a line; the longer one alternates, so the loser sometimes got ids
    the winner's document does not have, which it must take back."""
    lines = 3 + 2 * ((round_number + SOURCES.index(source)) % 2)
    return "".join(f"line {n} of source {source}'s document {round_number}\n" for n in range(lines))


def shared_id(round_number: int) -> str:
    return f"shared-{round_number}"


def worker(
    source: str,
    bucket: str,
    endpoint: str,
    port: int,
    barrier: Any,
    results: Any,
) -> None:
    """Sync this source's metadata file of each round, waiting for the other worker at the write."""
    import boto3
    import chromadb

    from s3sync_dagster.pipeline.chroma import lifecycle
    from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction
    from s3sync_dagster.pipeline.spec import SourceSpec
    from s3sync_dagster.pipeline.sync import write as sync_write
    from s3sync_dagster.pipeline.sync.stages import sync_keys
    from s3sync_dagster.pipeline.sync.targets import Collections

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client = chromadb.HttpClient(host=LOOPBACK, port=port)
    function = ChromaDefaultFunction()
    owners = tuple((f"own-{name}-{bucket}", name) for name in SOURCES)
    spec = SourceSpec(
        name=source, bucket_name=bucket, collection_name=f"own-{source}-{bucket}", path_prefix=f"{source}/",
        chunking_mode="lines", max_lines=1, collection_owners=owners,
    )  # fmt: skip
    collections = Collections(
        lambda name: lifecycle.open_collection(client, name, function, {"created_by": "s3sync-dagster"})
    )
    write = sync_write.replace_chunks  # the write as the sync's write stage calls it

    def replace_together(*args: Any, **kwargs: Any) -> Any:
        barrier.wait(timeout=120)  # the other worker is at the same point: both write now
        return write(*args, **kwargs)

    sync_write.replace_chunks = replace_together  # type: ignore[assignment]
    for round_number in range(ROUNDS):
        (report,) = sync_keys(s3, spec, collections, function, [f"{source}/{round_number}.meta.json"])
        results.put((round_number, source, report.status, report.message))


@pytest.fixture
def racing_bucket(s3: Any, bucket: str) -> Iterator[str]:
    shared = f"shared-{bucket}"
    for source in SOURCES:
        for round_number in range(ROUNDS):
            meta = {"version": "chroma-v1", "id": shared_id(round_number), "path": f"{source}/{round_number}.txt"}
            put(
                s3,
                bucket,
                {
                    f"{source}/{round_number}.txt": document(source, round_number),
                    f"{source}/{round_number}.meta.json": json.dumps({**meta, "target_collection_name": shared}),
                },
            )
    yield bucket


@pytest.mark.reliability("shared stores")
def test_two_sources_racing_for_one_id_on_a_server_end_with_exactly_one_winner(
    racing_bucket: str, moto_endpoint: str, chroma_server: int, fault_row: Row
) -> None:
    import chromadb

    shared = f"shared-{racing_bucket}"
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(SOURCES)), context.Queue()
    workers = [
        context.Process(target=worker, args=(source, racing_bucket, moto_endpoint, chroma_server, barrier, results))
        for source in SOURCES
    ]
    for process in workers:
        process.start()
    outcomes: dict[int, dict[str, tuple[str, str]]] = {}
    for _ in range(ROUNDS * len(SOURCES)):
        round_number, source, status, message = results.get(timeout=300)
        outcomes.setdefault(round_number, {})[source] = (status, message)
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0

    expected: Chunks = {}
    for round_number in range(ROUNDS):
        statuses = {source: status for source, (status, _) in outcomes[round_number].items()}
        assert sorted(statuses.values()) == ["failed", "indexed"], json.dumps(outcomes, indent=1)
        (winner,) = (source for source, status in statuses.items() if status == "indexed")
        (loser,) = set(SOURCES) - {winner}
        message = outcomes[round_number][loser][1]
        assert message.startswith(f"metadata file '{loser}/{round_number}.meta.json'"), message
        assert f"source '{loser}'" in message and f"source '{winner}'" in message, message
        assert f"collection '{shared}'" in message and "replaces or deletes only its own chunks" in message, message
        lines = document(winner, round_number).splitlines(keepends=True)
        expected.update({(shared, f"{shared_id(round_number)}-{n}"): line for n, line in enumerate(lines)})
    client = chromadb.HttpClient(host=LOOPBACK, port=chroma_server)
    found = [chunk for chunk in store_chunks(client) if chunk[0] == shared]
    fault_row.observe(expected, found)
    assert {(c, i): text for c, i, text in found} == expected
    fault_row.passed = True
