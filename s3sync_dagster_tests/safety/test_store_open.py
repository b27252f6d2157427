"""Many processes open one fresh embedded Chroma store at once, beside busy processes, and all succeed.

Each gets the store, its collection and its record, because the project opens a store under the store's
open lock (resources.embedded_client). Without the lock, chromadb's first-open migrations race: "table
collections already exists", or "database is locked" (`python -m s3sync_dagster_tests.safety.test_store_open
--unlocked` runs the same rounds with chromadb.PersistentClient and counts the failures).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COLLECTION = "store-open"
ROUNDS = 12
OPENERS = 4  # processes opening each round's fresh store together
BUSY = 2  # CPU-bound processes beside them: enough to keep two cores busy

# One opener. It answers each line on stdin ("STORE GATE ID") with "ready", waits at the gate (a shared
# lock on a file the test holds exclusively, so all openers wake at once), opens the store, creates or gets
# the collection, adds one record under the write lock, and answers "ok" or "failed STEP: ERROR".
# Started once for all rounds: a round's race is the first open of a fresh store, not the imports.
OPENER = r"""
import fcntl, sys
import chromadb
from chromadb.config import Settings
from s3sync_dagster.pipeline.chroma import lifecycle
from s3sync_dagster.defs.resources import ChromaResource, EmbeddingResource

locked, collection_name = sys.argv[1] == "locked", sys.argv[2]
embedding = EmbeddingResource()
print("up", flush=True)
for line in sys.stdin:
    store, gate, record_id = line.split()
    print("ready", flush=True)
    with open(gate) as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
    resource = ChromaResource(path=store)
    step = "open"
    try:
        if locked:  # the project's way
            resource.client()
            step = "collection"
            collection = resource.collection(collection_name, embedding)
        else:  # the same calls without the open lock
            client = chromadb.PersistentClient(path=store, settings=Settings(anonymized_telemetry=False))
            step = "collection"
            function = embedding.spec().build()
            metadata = {"created_by": "s3sync-dagster"}
            collection = lifecycle.open_collection(client, collection_name, function, metadata=metadata)
        step = "add"
        with resource.write_lock():
            collection.add(ids=[record_id], embeddings=[[float(record_id)] * 384], documents=[f"record {record_id}"])
    except Exception as error:
        print(f"failed {step}: {type(error).__name__}: {error}".replace("\n", " "), flush=True)
    else:
        print("ok", flush=True)
"""

# Opens each round's store after the openers are done, in a process that never opened it, and says what it
# holds. Alone by then, so a plain client (and no Dagster to import).
CHECKER = r"""
import json, sys
import chromadb
from chromadb.config import Settings

print("up", flush=True)
for line in sys.stdin:
    try:
        client = chromadb.PersistentClient(path=line.strip(), settings=Settings(anonymized_telemetry=False))
        collections = sorted(collection.name for collection in client.list_collections())
        records = {}
        for name in collections:
            found = client.get_collection(name).get(include=["documents"])
            records[name] = sorted(zip(found["ids"], found["documents"] or []))
        print(json.dumps({"collections": collections, "records": records}), flush=True)
    except Exception as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
"""


@dataclass
class Round:
    store: Path
    answers: list[str]  # each opener's "ok" or "failed STEP: ERROR"
    contents: dict[str, object]  # what a fresh process then finds in the store

    @property
    def failures(self) -> list[str]:
        return [answer for answer in self.answers if answer != "ok"]


class Worker:
    """A Python process reading one request a line on stdin and answering a line on stdout."""

    def __init__(self, code: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
        )

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def answer(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.process.wait()} before answering")
        return line.strip()

    def stop(self) -> None:
        # Killed, not asked to exit: an opener's exit drops one chromadb engine per store it opened, which
        # takes seconds, and is not what is tested.
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """Processes that only spin, so the openers are preempted as on a loaded machine."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def open_together(workdir: Path, rounds: int, openers: int, busy: int, locked: bool = True) -> list[Round]:
    """`rounds` times, `openers` processes open one fresh store at the same instant, with `busy` spinners beside."""
    workers = [Worker(OPENER, "locked" if locked else "unlocked", COLLECTION) for _ in range(openers)]
    checker = Worker(CHECKER)
    try:
        for worker in [*workers, checker]:  # imports done before the spinners start: only the opens race
            assert worker.answer() == "up"
        results: list[Round] = []
        with busy_processes(busy):
            for number in range(rounds):
                store = workdir / f"round-{number}" / "chroma"
                gate = workdir / f"round-{number}" / "gate"
                gate.parent.mkdir(parents=True)
                with open(gate, "w") as held_gate:
                    fcntl.flock(held_gate, fcntl.LOCK_EX)
                    for record_id, worker in enumerate(workers):
                        worker.send(f"{store} {gate} {record_id}")
                    for worker in workers:
                        assert worker.answer() == "ready"
                # The gate is open: every opener goes at once.
                answers = [worker.answer() for worker in workers]
                checker.send(str(store))
                results.append(Round(store, answers, json.loads(checker.answer())))
        return results
    finally:
        for worker in [*workers, checker]:
            worker.stop()


@pytest.mark.timeout(300)
def test_processes_opening_a_fresh_store_together_under_load_all_succeed(tmp_path: Path) -> None:
    results = open_together(tmp_path, ROUNDS, OPENERS, BUSY)

    failures = {str(result.store): result.failures for result in results if result.failures}
    assert failures == {}
    expected = {
        "collections": [COLLECTION],
        "records": {COLLECTION: [[str(record_id), f"record {record_id}"] for record_id in range(OPENERS)]},
    }
    for result in results:
        assert result.contents == expected, result.store


def main() -> None:
    """Run the rounds outside pytest and print how many failed, with the open lock or (--unlocked) without it."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--unlocked", action="store_true", help="open with chromadb.PersistentClient directly")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--openers", type=int, default=OPENERS)
    parser.add_argument("--busy", type=int, default=BUSY)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="store-open-") as workdir:
        results = open_together(Path(workdir), options.rounds, options.openers, options.busy, not options.unlocked)
    failed = [result for result in results if result.failures]
    print(
        f"{'unlocked' if options.unlocked else 'locked'}: {len(failed)} of {len(results)} rounds failed, "
        f"{sum(len(result.failures) for result in results)} of {len(results) * options.openers} opens"
    )
    for result in failed:
        for failure in result.failures:
            print(f"  {result.store.parent.name}: {failure[:160]}")


if __name__ == "__main__":
    main()
