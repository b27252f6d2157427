"""Section 10, beyond one machine: `python -m benchmarks.scale.cluster PART --json FILE` (parts: bulk, reads, workers,
latency, submission).

workers: one corpus synced four ways, one after the other in this one invocation: B (`s3sync sync --all`,
its runs in the sync's own process, the default instance, embedded Chroma), then through Celery workers
(benchmarks/servers/celery_cluster.py: Redis, a `chroma run` server, workers in network namespaces) with one
worker and with two on the production instance (PostgreSQL), and with two on SQLite instance files.

bulk: B of section 1 (`s3sync sync SOURCE --all` on the default instance, embedded Chroma) over the
section 1 corpus at 500 objects and at 10,000, one after the other in this one invocation, so the
ratio of their rates says what scale alone costs. About 100 minutes on 2 cores (benchmarks/README.md);
hence a part of its own, run when the machine is otherwise idle.

reads: what one key's skip check (and settle check) costs in Chroma at 500 objects' chunks and at
10,000's, the filter before issue 27 and now, in one process (a few minutes).

submission: how fast a backfill of a million registered keys becomes runs on the production instance, at each run
size (benchmarks/scale/submission.py; the run queue held, so the submission alone is measured).

Each part writes its figures into FILE under its own name, keeping the other part's (a part's "remarks",
added by hand, say what the figures cannot: what else ran beside them), and (re)writes
section 10 of benchmarks/RESULTS.md from FILE; `benchmarks.run` carries the section over as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import log
from benchmarks.scale import submission
from benchmarks.servers import celery_cluster
from benchmarks.sync import corpus, throughput
from s3sync_dagster.commands import demo

HERE = Path(__file__).resolve().parents[1]
SECTION = "## 10. Beyond one machine"
BULK_SIZES = (500, 10_000)
WORKERS_SIZE = 300
KEYS_PER_RUN = 10
CONCURRENT_RUNS = 4
# (label, workers, instance on PostgreSQL): the Celery ways the workers part syncs the corpus.
CELERY_WAYS = (("1 worker, PostgreSQL", 1, True), ("2 workers, PostgreSQL", 2, True), ("2 workers, SQLite", 2, False))


class LoadSampler:
    """The 1-minute load average every `every_s` while a measurement runs: says how busy the machine was."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {"median": common.median(self.samples), "max": max(self.samples), "samples": len(self.samples)}


def bulk(workdir: Path, sizes: tuple[int, ...] = BULK_SIZES) -> dict[str, Any]:
    """B at each size, in order, each in a fresh process on a fresh instance and store."""
    common.credentials()
    server = demo.start()
    results: list[dict[str, Any]] = []
    try:
        s3 = common.s3_client(server.endpoint_url)
        for size in sizes:
            data = corpus.generate(size)
            bucket = f"scale-{size}"
            started = time.perf_counter()
            common.fill_bucket(s3, bucket, data)
            log(f"{size} objects uploaded in {time.perf_counter() - started:.1f} s: {corpus.describe(data)}")
            base = workdir / f"bulk-{size}"
            config = common.write_config(base / "b.yaml", endpoint_url=server.endpoint_url, bucket=bucket,
                                         chroma_path=base / "chroma")  # fmt: skip
            with LoadSampler() as load:
                run = throughput.run_dagster(config, base / "home")
            run.update(throughput.rates(run))
            run.update(size=size, corpus=corpus.describe(data), load=load.summary())
            results.append(run)
            log(f"B {size}: {run['seconds']:.1f} s, {run['objects_s']:.2f} objects/s, load {run['load']}")
            del data
    finally:
        server.stop()
    return {"measured": common.machine(), "runs": results}


def reads(
    workdir: Path, sizes: tuple[int, ...] = BULK_SIZES, chunks_per_object: int = 17, probes: int = 200
) -> dict[str, Any]:
    """What one key's skip check (and its settle check, the same read) costs in Chroma as the collection
    grows: a collection opened as a sync opens it, filled with `chunks_per_object` chunks per object (the
    bulk corpus averages 17) shaped as a sync writes them (random unit vectors: the model is not what this
    measures), grown to each size in turn; at each, `probes` objects' chunks read three ways."""
    import numpy as np

    from s3sync_dagster.config import load_config
    from s3sync_dagster.defs.resources import chroma_outside_runs, embedding_resource
    from s3sync_dagster.pipeline.chroma import stored_chunks
    from s3sync_dagster.pipeline.records import Owner, chunk_id, object_id

    common.credentials()
    config = load_config(common.write_config(workdir / "reads.yaml", "http://localhost:1", "reads", workdir / "chroma"))
    chroma = chroma_outside_runs(config.chroma)
    collection = chroma.collection(config.sources[0].collection_name, embedding_resource(config.embedding))
    source = config.sources[0].name
    rng = np.random.default_rng(7)
    object_key = "corpus/{:06d}.py".format

    def add(first: int, last: int) -> None:
        ids, texts, metadatas = [], [], []
        for number in range(first, last):
            document_id = object_id(object_key(number))
            for position in range(chunks_per_object):
                ids.append(chunk_id(document_id, position))
                texts.append(f"object {number} chunk {position}: def handler_{number}_{position}(event): return event")
                metadatas.append({
                    "object_key": object_key(number), "bucket_name": "reads", "source": source, "etag": "0" * 32,
                    "chunk_index": position, "chunk_count": chunks_per_object, "document_id": document_id,
                    "sync_signature": "1" * 16, "chunker": "tree-sitter", "extractor": "text",
                })  # fmt: skip
        for start in range(0, len(ids), 256):  # as the sync writes: one upsert per batch of new objects
            vectors = rng.standard_normal((len(ids[start : start + 256]), 384)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            collection.upsert(
                ids=ids[start : start + 256], documents=texts[start : start + 256],
                embeddings=vectors, metadatas=metadatas[start : start + 256],  # type: ignore[arg-type]
            )  # fmt: skip

    def timed(read: Any, numbers: list[int]) -> float:
        started = time.perf_counter()
        for number in numbers:
            read(number)
        return (time.perf_counter() - started) / len(numbers) * 1000

    ways = {
        "both fields in Chroma's filter (before)": lambda number: collection.get(
            where={"$and": [{"object_key": object_key(number)}, {"source": source}]}, include=["metadatas"]
        ),
        "object_key in Chroma, source tested here (now)": lambda number: stored_chunks(
            collection, object_key(number), Owner(source), with_text=False
        ),
        "by chunk ids (no filter: a floor)": lambda number: collection.get(
            ids=[chunk_id(object_id(object_key(number)), p) for p in range(chunks_per_object + 1)],
            include=["metadatas"],
        ),
    }
    results: list[dict[str, Any]] = []
    objects = 0
    for size in sizes:
        started = time.perf_counter()
        add(objects, size)
        objects = size
        written = time.perf_counter() - started
        numbers = [int(n) for n in rng.integers(0, size, probes)]
        for label, read in ways.items():  # warm, and check that each way finds the object's chunks
            found: Any = read(numbers[0])
            count = len(found) if isinstance(found, dict) and "ids" not in found else len(found["ids"])
            if count != chunks_per_object:
                raise RuntimeError(f"{label}: {count} chunks of object {numbers[0]}, not {chunks_per_object}")
        row: dict[str, Any] = {"objects": size, "chunks": collection.count(), "fill_s": written}
        row["ms"] = {label: timed(read, numbers) for label, read in ways.items()}
        results.append(row)
        log(f"reads at {size} objects ({row['chunks']:,} chunks): {row['ms']}")
    return {"measured": common.machine(), "probes": probes, "chunks_per_object": chunks_per_object, "runs": results}


def _celery_run(data: dict[str, bytes], workdir: Path, workers: int, postgres: bool) -> dict[str, Any]:
    with celery_cluster.hosts(workers) as where, celery_cluster.services(where, workdir / "services", postgres) as up:
        cluster = celery_cluster.Cluster(where, up, workdir / "cluster", data, batch=KEYS_PER_RUN,
                                         concurrent_runs=CONCURRENT_RUNS, visibility_timeout_s=600)  # fmt: skip
        try:
            cluster.start_workers([celery_cluster.SOLO] * workers)
            started = time.perf_counter()
            with LoadSampler() as load:
                cluster.start_sync()
                payload = cluster.sync_result()
            seconds = time.perf_counter() - started
        finally:
            cluster.stop()
        stored = len(cluster.stored_chunks())
    run = throughput.summarise(payload["keys"], float(payload["duration_s"]))
    run.update(seconds=seconds, runs=len(payload["runs"]), stored_chunks=stored, load=load.summary(),
               namespaces=where.namespaces)  # fmt: skip
    run.update(throughput.rates(run))
    return run


def workers(workdir: Path, size: int = WORKERS_SIZE) -> dict[str, Any]:
    """The corpus through B, then through Celery in each of CELERY_WAYS (workers already up, warm or not:
    each worker loads the model on its first step, inside the measured time)."""
    common.credentials()
    data = corpus.generate(size)
    runs: dict[str, dict[str, Any]] = {}
    server = demo.start()
    try:
        common.fill_bucket(common.s3_client(server.endpoint_url), "workers-b", data)
        base = workdir / "b"
        config = common.write_config(base / "b.yaml", endpoint_url=server.endpoint_url, bucket="workers-b",
                                     chroma_path=base / "chroma", keys_per_run=KEYS_PER_RUN)  # fmt: skip
        with LoadSampler() as load:
            run = throughput.run_dagster(config, base / "home")
        run.update(throughput.rates(run), load=load.summary())
        runs["B: runs in the sync's process, SQLite, embedded Chroma"] = run
        log(f"B {size}: {run['seconds']:.1f} s")
    finally:
        server.stop()
    for label, count, postgres in CELERY_WAYS:
        runs[f"Celery: {label}, Chroma server"] = run = _celery_run(data, workdir / label.replace(" ", "-"), count,
                                                                     postgres)  # fmt: skip
        log(f"{label}: {run['seconds']:.1f} s, {run['objects_s']:.2f} objects/s, load {run['load']}")
    return {
        "measured": common.machine(), "size": size, "corpus": corpus.describe(data), "keys_per_run": KEYS_PER_RUN,
        "concurrent_runs": CONCURRENT_RUNS, "runs": runs,
    }  # fmt: skip


def latency(workdir: Path, uploads: int = 30, spacing_s: float = 8.0) -> dict[str, Any]:
    """Section 3's path on this section's deployment, once: the instance on PostgreSQL (deploy/dagster.yaml),
    dagster-webserver and dagster-daemon apart, steps on a Celery worker on a host of its own, a `chroma run`
    server; the SQS sensor in direct mode, default settings. Single uploads `spacing_s` apart after a warm-up,
    each timed from PutObject's return until a read of the collection finds its chunk."""
    import boto3
    import chromadb
    import dagster as dg

    from benchmarks.latency.upload import summary
    from benchmarks.servers.dagster_server import webserver_and_daemon

    common.credentials()
    with celery_cluster.hosts(1) as where, celery_cluster.services(where, workdir / "services") as up:
        s3 = boto3.client("s3", endpoint_url=up.s3_endpoint, region_name="us-east-1")
        sqs = boto3.client("sqs", endpoint_url=up.s3_endpoint, region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName="latency-production-events")["QueueUrl"]
        cluster = celery_cluster.Cluster(where, up, workdir / "cluster", {}, batch=KEYS_PER_RUN,
                                         source_settings={"auto_sync": "direct", "sqs_queue_url": queue_url})  # fmt: skip
        bucket = cluster.bucket
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
            },
        )
        postgres = up.postgres
        assert postgres is not None
        client = chromadb.HttpClient(host=up.address, port=up.chroma_port)
        put_at: dict[str, float] = {}
        found_at: dict[str, float] = {}

        def upload_and_wait(object_key: str) -> None:
            s3.put_object(Bucket=bucket, Key=object_key, Body=f"{object_key} reached the index\n".encode())
            put_at[object_key] = time.time()
            deadline = time.monotonic() + 300
            while True:
                try:
                    ids = client.get_collection(cluster.collection_name).get(where={"object_key": object_key})["ids"]
                except Exception:  # the first run makes the collection
                    ids = []
                if ids:
                    found_at[object_key] = time.time()
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{object_key} not queryable after 300 s")
                time.sleep(0.1)

        try:
            cluster.start_workers([celery_cluster.SOLO])
            with (
                webserver_and_daemon(cluster.home, cluster.config_path, workdir / "dagster.log", cluster.served_env()),
                postgres.exported(),
            ):
                upload_and_wait("warmup/file.txt")
                singles = [f"single/file-{number:03d}.txt" for number in range(uploads)]
                for object_key in singles:
                    upload_and_wait(object_key)
                    time.sleep(max(0.0, spacing_s - (found_at[object_key] - put_at[object_key])))
                with dg.DagsterInstance.from_config(str(cluster.home)) as instance:
                    runs = instance.get_run_records()
                    own = len(
                        [
                            object_key
                            for record in runs
                            for op in dict(record.dagster_run.run_config.get("ops") or {}).values()  # type: ignore[call-overload]
                            for object_key in op.get("config", {}).get("object_keys", [])
                            if object_key in singles
                        ]
                    )
        finally:
            cluster.stop()
    latencies = [found_at[key] - put_at[key] for key in singles]
    return {
        "measured": common.machine(),
        "uploads": uploads,
        "spacing_s": spacing_s,
        **summary(latencies),
        "runs": len(runs),
        "taken_by_a_reading_run": uploads - own,
        "namespaces": where.namespaces,
    }


def _update(json_file: Path, part: str, figures: dict[str, Any]) -> None:
    earlier = json.loads(json_file.read_text()) if json_file.is_file() else {}
    earlier[part] = figures
    json_file.write_text(json.dumps(earlier, indent=2, default=str))


def _load(load: dict[str, float]) -> str:
    return f"{load['median']:.1f} (max {load['max']:.1f})" if load else "not sampled"


def section_markdown(figures: dict[str, Any]) -> str:
    lines = [SECTION]
    bulk_figures = figures.get("bulk")
    if bulk_figures:
        measured, runs = bulk_figures["measured"], bulk_figures["runs"]
        lines += [
            "",
            f"### The 10,000-object bulk run (measured {measured['date']}, commit {measured['commit']})",
            "",
            "B of section 1 (`s3sync sync SOURCE --all`: the default instance, embedded Chroma, the real model) "
            "over the section 1 corpus at each size, one after the other in one invocation "
            "(`python -m benchmarks.scale.cluster bulk`). Load is the 1-minute load average sampled every 30 s "
            "during the run (2 cores: above 2, something else was running too).",
            "",
            "| objects | MB | seconds | objects/s | chunks/s | chunks | statuses | load |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for run in runs:
            statuses = ", ".join(f"{name} {count:,}" for name, count in sorted(run["statuses"].items()))
            lines.append(
                f"| {run['size']:,} | {run['bytes'] / 1e6:.1f} | {run['seconds']:.1f} | {run['objects_s']:.2f} | "
                f"{run['chunks_s']:.1f} | {run['chunks']:,} | {statuses} | {_load(run['load'])} |"
            )
        if len(runs) >= 2:
            small, large = runs[0], runs[-1]
            lines += [
                "",
                f"{large['size']:,} objects against {small['size']:,}: {large['chunks_s'] / small['chunks_s']:.2f}x "
                f"the chunks/s and {large['objects_s'] / small['objects_s']:.2f}x the objects/s.",
            ]
        if bulk_figures.get("remarks"):
            lines += ["", bulk_figures["remarks"]]
        lines += [
            "",
            "Where each run's key time went (the per-key timers; embedding is the model, Chroma reads, writes and "
            "the settle re-check grow with the collection):",
            "",
        ]
        for run in runs:
            total = sum(run["timings"].values()) or 1.0
            shares = ", ".join(f"{step} {value / total * 100:.0f}%" for step, value in run["timings"].items() if value)
            lines.append(f"- {run['size']:,} objects: {shares}.")
    reads_figures = figures.get("reads")
    if reads_figures:
        measured, runs = reads_figures["measured"], reads_figures["runs"]
        labels = list(runs[0]["ms"])
        lines += [
            "",
            f"### Chroma's reads against the collection's size (measured {measured['date']}, commit "
            f"{measured['commit']})",
            "",
            "What one key's skip check costs in embedded Chroma (a settle check after a write reads the same), "
            "ms per read, the mean of "
            f"{reads_figures['probes']} random objects' chunks (`python -m benchmarks.scale.cluster reads`): one "
            f"collection opened as a sync opens it, {reads_figures['chunks_per_object']} chunks per object "
            "shaped as a sync writes them (random vectors), grown to each size in turn, every way at each.",
            "",
            "| objects | chunks | " + " | ".join(labels) + " |",
            "| ---: | ---: | " + " | ".join("---:" for _ in labels) + " |",
        ]
        for run in runs:
            lines.append(
                f"| {run['objects']:,} | {run['chunks']:,} | "
                + " | ".join(f"{run['ms'][label]:.1f}" for label in labels)
                + " |"
            )
        if len(runs) >= 2:
            small, large = runs[0], runs[-1]
            lines += [
                "",
                "From the smallest to the largest collection: "
                + "; ".join(f"{label} {large['ms'][label] / small['ms'][label]:.1f}x" for label in labels)
                + ".",
            ]
    workers_figures = figures.get("workers")
    if workers_figures:
        measured, runs = workers_figures["measured"], workers_figures["runs"]
        namespaces = any(run.get("namespaces") for run in runs.values())
        hosts = "each in a network namespace of its own" if namespaces else "on this host"
        lines += [
            "",
            f"### Parallel workers and the instance's storage (measured {measured['date']}, commit "
            f"{measured['commit']})",
            "",
            f"The section 1 corpus at {workers_figures['size']:,} objects, in runs of "
            f"{workers_figures['keys_per_run']} keys, synced four ways one after the other in one invocation "
            "(`python -m benchmarks.scale.cluster workers`): B, its runs executed one after another in the `s3sync sync` "
            "process on the default instance into embedded Chroma; then `s3sync sync --all` with `executor.celery` "
            f"({workers_figures['concurrent_runs']} runs in flight), steps on Celery workers ({hosts}, started "
            "before the sync; each loads the model on its first step) writing to a `chroma run` server, the "
            "instance on PostgreSQL (deploy/dagster.yaml) or on SQLite files (the repo's dagster.yaml).",
            "",
            "| way | seconds | objects/s | chunks/s | chunks | load |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for label, run in runs.items():
            lines.append(
                f"| {label} | {run['seconds']:.1f} | {run['objects_s']:.2f} | {run['chunks_s']:.1f} | "
                f"{run['chunks']:,} | {_load(run['load'])} |"
            )
        by = {label.split(": ", 1)[1].split(", Chroma")[0]: run for label, run in runs.items()}
        one, two, sqlite = (by.get(label) for label, _, _ in CELERY_WAYS)
        b_run = next(iter(runs.values()))
        ratios = []
        if one and two:
            ratios.append(f"two workers against one: {one['seconds'] / two['seconds']:.2f}x the throughput")
        if two and sqlite:
            per_key = (two["seconds"] - sqlite["seconds"]) / two["objects"] * 1000
            ratios.append(
                f"PostgreSQL against SQLite with two workers: {sqlite['seconds'] / two['seconds']:.2f}x the "
                f"throughput ({per_key:+.0f} ms per key)"
            )
        if two:
            ratios.append(f"two workers on PostgreSQL against B: {b_run['seconds'] / two['seconds']:.2f}x")
        lines += ["", "; ".join(ratios) + "."]
        if workers_figures.get("remarks"):
            lines += ["", workers_figures["remarks"]]
    latency_figures = figures.get("latency")
    if latency_figures:
        measured = latency_figures["measured"]
        lines += [
            "",
            f"### Upload to queryable on this deployment (measured {measured['date']}, commit {measured['commit']})",
            "",
            "Section 3's path, once, on the deployment above (`python -m benchmarks.scale.cluster latency`): the instance "
            "on PostgreSQL (deploy/dagster.yaml), dagster-webserver, dagster-daemon and the code server apart "
            "(deploy/workspace.yaml), steps on one Celery "
            "worker on a host of its own, a `chroma run` server; the SQS sensor in direct mode, default settings "
            f"(the sensor's run reads the queue after its keys). {latency_figures['uploads']} single uploads "
            f"{latency_figures['spacing_s']:g} s apart after a warm-up, each timed from PutObject's return until a "
            "read of the collection finds its chunk.",
            "",
            "| uploads | p50 s | p95 s | max s | min s | taken by a run reading the queue | runs |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {latency_figures['uploads']} | {latency_figures['median_s']:.2f} | {latency_figures['p95_s']:.2f} | "
            f"{latency_figures['max_s']:.2f} | {latency_figures['min_s']:.2f} | "
            f"{latency_figures['taken_by_a_reading_run']} | {latency_figures['runs']} |",
            "",
            f"All: {latency_figures['all_s']}",
        ]
    submission_figures = figures.get("submission")
    if submission_figures:
        lines += ["", "### Submitting a million keys to the workers (issue 66, item 5)", ""]
        lines.append(submission.section_markdown(submission_figures))
        if submission_figures.get("remarks"):
            lines += ["", submission_figures["remarks"]]
    return "\n".join(lines)


def write_section(out: Path, figures: dict[str, Any]) -> None:
    """Section 10 of `out` replaced where it stands (or added after the others) by what `figures` hold."""
    text = out.read_text() if out.is_file() else "# Benchmark results\n"
    parts = [part.rstrip("\n") for part in re.split(r"\n(?=## \d+\. )", text.rstrip("\n"))]
    ours = [index for index, part in enumerate(parts) if part.startswith(SECTION[:7])]
    kept = [part for part in parts if not part.startswith(SECTION[:7])]
    kept.insert(ours[0] if ours else len(kept), section_markdown(figures))
    out.write_text("\n\n".join(kept) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale.cluster", description=__doc__)
    parser.add_argument(
        "part",
        choices=["bulk", "reads", "workers", "latency", "submission", "section"],
        help="section: only rewrite section 10",
    )
    parser.add_argument("--json", required=True, help="where the figures go (other parts' figures are kept)")
    parser.add_argument("--workdir", help="buckets' stores and instances (kept; required to measure)")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--sizes", default=",".join(str(size) for size in BULK_SIZES), help="bulk: corpus sizes")
    parser.add_argument("--size", type=int, default=WORKERS_SIZE, help="workers: corpus size")
    parser.add_argument("--keys", type=int, default=1_000_000, help="submission: keys registered")
    parser.add_argument("--run-sizes", default="100,1000", help="submission: keys a run, comma-separated")
    parser.add_argument("--watch", type=float, default=180.0, help="submission: seconds each backfill is watched")
    args = parser.parse_args(argv)
    if args.part != "section":
        if not args.workdir:
            parser.error("--workdir is required to measure")
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.part == "bulk":
            figures = bulk(workdir, tuple(int(size) for size in args.sizes.split(",")))
        elif args.part == "reads":
            figures = reads(workdir, tuple(int(size) for size in args.sizes.split(",")))
        elif args.part == "latency":
            figures = latency(workdir)
        elif args.part == "submission":
            sizes = [int(size) for size in args.run_sizes.split(",")]
            figures = submission.measure(workdir / "submission", args.keys, sizes, args.watch)
        else:
            figures = workers(workdir, args.size)
        _update(Path(args.json), args.part, figures)
    write_section(Path(args.out), json.loads(Path(args.json).read_text()))
    log(f"wrote {args.json} and section 10 of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
