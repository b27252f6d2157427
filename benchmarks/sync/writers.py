"""What the two-writers check costs: a 100-key sync through the moto server and embedded Chroma, with and
without the settle check (pipeline/sync/settle.py `settle`: a HEAD and a read of the stored chunks' metadata per
key that wrote), in one run.

`python -m benchmarks.sync.writers [--keys 100] [--rounds 3]`. The two arms alternate in each round (which goes
first flips every round) on the same bucket, each into its own collection. Vectors come from a hash, not
the model: the check costs the same whatever the model, and the model's time would only add noise.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import common
from s3sync_dagster.commands.demo import running
from s3sync_dagster.pipeline.chroma import open_collection
from s3sync_dagster.pipeline.embedding import ChromaDefaultFunction
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync import KeyReport, settle, sync_keys

DIMENSIONS = 384


def hash_vectors(texts: list[str]) -> list[list[float]]:
    """A fixed vector per text: cheap and deterministic (what is measured here is not the model)."""
    vectors = []
    for text in texts:
        digest = hashlib.sha256(text.encode()).digest()
        vectors.append([digest[n % len(digest)] / 255.0 for n in range(DIMENSIONS)])
    return vectors


def objects(count: int, version: str) -> dict[str, bytes]:
    """Small text objects of three chunks each (lines mode, 10 lines a chunk)."""
    return {
        f"w/{n:04}.txt": "".join(f"{version} object {n} line {line}\n" for line in range(25)).encode()
        for n in range(count)
    }


def upload(s3: Any, bucket: str, bodies: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket=bucket, Key=item[0], Body=item[1]), bodies.items()))


def timed_sync(
    s3: Any, spec: SourceSpec, collection: Any, object_keys: list[str], checked: bool
) -> tuple[float, list[KeyReport]]:
    """Seconds for one sync of the keys; without the check when `checked` is False (the code before it)."""
    real_settle = settle.settle
    if not checked:
        settle.settle = lambda report, *_: report  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        reports = sync_keys(s3, spec, lambda _: collection, hash_vectors, object_keys)
        return time.perf_counter() - started, reports
    finally:
        settle.settle = real_settle  # type: ignore[assignment]


def measure(keys: int = 100, rounds: int = 3) -> dict[str, Any]:
    with running() as server, tempfile.TemporaryDirectory() as workdir:
        from s3sync_dagster.pipeline.store import embedded_client

        s3 = common.s3_client(server.endpoint_url)
        store = embedded_client(Path(workdir) / "chroma")
        function = ChromaDefaultFunction()
        bucket = "writers-bench"
        s3.create_bucket(Bucket=bucket)
        spec = SourceSpec(
            name="bench", bucket_name=bucket, collection_name="unused", chunking_mode="lines", tokens=None
        )
        object_keys = sorted(objects(keys, "v"))
        # phase -> arm -> seconds per key, one figure per round
        per_key: dict[str, dict[str, list[float]]] = {}
        settle_ms: dict[str, list[float]] = {}

        def run(phase: str, collections: dict[str, Any], order: list[str]) -> None:
            for arm in order:
                seconds, reports = timed_sync(s3, spec, collections[arm], object_keys, checked=arm == "checked")
                statuses = {report.status for report in reports}
                assert statuses == {"unchanged" if phase == "unchanged" else "indexed"}, statuses
                per_key.setdefault(phase, {}).setdefault(arm, []).append(seconds / keys)
                if arm == "checked":
                    settled = [report.timings.get("settle", 0.0) for report in reports]
                    settle_ms.setdefault(phase, []).append(1000 * statistics.mean(settled))

        for round_number in range(rounds):
            order = ["checked", "bare"] if round_number % 2 == 0 else ["bare", "checked"]
            collections = {
                arm: open_collection(store, f"r{round_number}-{arm}", function, {"created_by": "benchmark"})
                for arm in order
            }
            upload(s3, bucket, objects(keys, f"round {round_number} first"))
            run("new", collections, order)
            upload(s3, bucket, objects(keys, f"round {round_number} second"))
            run("changed", collections, order)
            run("unchanged", collections, order)
    return {"keys": keys, "rounds": rounds, "per_key_s": per_key, "settle_ms": settle_ms}


def report(results: dict[str, Any], out: Callable[[str], None] = print) -> None:
    out(f"{results['keys']} keys, {results['rounds']} rounds (median per key; moto server, embedded Chroma)")
    out("| sync | without check (ms/key) | with check (ms/key) | difference (ms/key) | ratio | settle timer (ms/key) |")
    out("| --- | --- | --- | --- | --- | --- |")
    for phase, arms in results["per_key_s"].items():
        bare = 1000 * statistics.median(arms["bare"])
        checked = 1000 * statistics.median(arms["checked"])
        settle = statistics.median(results["settle_ms"][phase]) if phase in results["settle_ms"] else 0.0
        out(f"| {phase} | {bare:.1f} | {checked:.1f} | {checked - bare:+.1f} | {checked / bare:.2f} | {settle:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    report(measure(arguments.keys, arguments.rounds))


if __name__ == "__main__":
    main()
