"""Section 3, four SQS sources: upload -> queryable for each of four SQS sources of one code location, beside one
source alone, in one run, on this repo's dagster.yaml (two run slots) and default source settings.

`.venv/bin/python -m benchmarks.latency.queues WORKDIR` measures both (a code server, `dagster-daemon` and a moto server of
their own each; embedded Chroma by default), prints the subsection and writes it into section 3 of
benchmarks/RESULTS.md (`--out`), replacing an earlier one; raw figures in WORKDIR/queues.json. Each round uploads one
object to every source of the location back to back, `--spacing` seconds after the last round; each upload is timed
from PutObject's return until a read of its collection finds its chunk. The first upload to each source (the
warm-up: no run reading yet, the daemon just started) is reported apart. Nothing here asserts a duration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks import common
from benchmarks.latency import upload as latency
from s3sync_dagster.commands.demo import LOOPBACK, running

WAIT_S = 300
HEADING = "### Four SQS sources, each fresh"
LOCATIONS = ("s3sync_dagster.definitions",)


class Location:
    """The sources of one code location (each its bucket, queue and collection) under a daemon of its own."""

    def __init__(self, endpoint_url: str, workdir: Path, names: list[str], chroma: dict[str, Any]) -> None:
        self.endpoint_url, self.workdir, self.names = endpoint_url, workdir, names
        self.s3 = common.s3_client(endpoint_url)
        self.buckets = {name: f"{workdir.name}-{name}".replace("_", "-") for name in names}
        workdir.mkdir(parents=True, exist_ok=True)
        entries = []
        for name, bucket in self.buckets.items():
            self.s3.create_bucket(Bucket=bucket)
            entries.append(
                {
                    "name": name,
                    "bucket_name": bucket,
                    "region": "us-east-1",
                    "collection_name": f"{name}-chunks",
                    "endpoint_url": endpoint_url,
                    "aws_access_key_id": {"env": common.KEY_ID_VAR},
                    "aws_secret_access_key": {"env": common.SECRET_VAR},
                    "auto_sync": "direct",
                    "sqs_queue_url": latency.notifying_queue(endpoint_url, bucket),
                }
            )
        self.config = workdir / "s3sync.yaml"
        self.config.write_text(yaml.safe_dump({"chroma": chroma, "sources": entries}))
        self.home = common.dagster_home(workdir / "home")
        self.put_at: dict[str, float] = {}  # object key -> epoch seconds PutObject returned
        self.queryable_at: dict[str, float] = {}

    def upload(self, name: str, object_key: str) -> None:
        self.s3.put_object(Bucket=self.buckets[name], Key=object_key, Body=f"{object_key} reached the index\n".encode())
        self.put_at[object_key] = time.time()

    def watch(self, client: Any, object_keys: list[str], deadline_s: float) -> None:
        """Poll Chroma until every key has a chunk, noting when each first did."""
        deadline = time.monotonic() + deadline_s
        while not set(object_keys) <= self.queryable_at.keys():
            if time.monotonic() > deadline:
                missing = sorted(set(object_keys) - self.queryable_at.keys())
                raise TimeoutError(f"{len(missing)} upload(s) not queryable, {missing[:3]}... (see {self.workdir})")
            for name in self.names:
                try:
                    found = client().get_collection(f"{name}-chunks").get(include=["metadatas"])["metadatas"]
                except Exception:  # the collection (an embedded store: the store) comes with the first write
                    found = []
                now = time.time()
                for metadata in found or []:
                    self.queryable_at.setdefault(str(metadata["object_key"]), now)
            time.sleep(0.1)

    def latency_of(self, object_keys: list[str]) -> list[float]:
        return [self.queryable_at[key] - self.put_at[key] for key in object_keys]


def _runs(home: Path) -> list[dict[str, Any]]:
    """Each run of the instance: its source, the queues it was tagged to read, seconds from made to started."""
    import dagster as dg

    from s3sync_dagster.defs.tags import READS_QUEUES_TAG, SOURCE_TAG

    runs = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for record in instance.get_run_records(dg.RunsFilter()):
            started = record.start_time
            runs.append(
                {
                    "source": record.dagster_run.tags.get(SOURCE_TAG),
                    "reads_queues_of": record.dagster_run.tags.get(READS_QUEUES_TAG, ""),
                    "status": record.dagster_run.status.value,
                    "made_to_started_s": round(started - record.create_timestamp.timestamp(), 2) if started else None,
                }
            )
    return runs


def measure_location(
    endpoint_url: str, workdir: Path, names: list[str], uploads: int, spacing_s: float, chroma: str
) -> dict[str, Any]:
    """Warm-up uploads to every source at once, then `uploads` rounds of one upload to each, `spacing_s` apart."""
    import chromadb

    with contextlib.ExitStack() as stack:
        if chroma == "server":
            port = stack.enter_context(latency.chroma_server(workdir / "chroma-server"))
            target: dict[str, Any] = {"host": LOOPBACK, "port": port}
            opened: Any = chromadb.HttpClient(host=LOOPBACK, port=port)
        else:
            target, opened = {"path": str(workdir / "chroma")}, None
        location = Location(endpoint_url, workdir, names, target)

        def client() -> Any:
            nonlocal opened
            if opened is None:
                opened = chromadb.PersistentClient(path=str(workdir / "chroma"))
            return opened

        env = dict(os.environ, DAGSTER_HOME=str(location.home), S3SYNC_CONFIG=str(location.config))
        servers = stack.enter_context(latency.code_servers(LOCATIONS, env, workdir))
        workspace = workdir / "workspace.yaml"
        load_from = [
            {"grpc_server": {"host": LOOPBACK, "port": port, "location_name": module}}
            for module, (port, _) in servers.items()
        ]
        workspace.write_text(yaml.safe_dump({"load_from": load_from}))
        daemon = subprocess.Popen(
            [str(common.BIN / "dagster-daemon"), "run", "-w", str(workspace)],
            cwd=common.REPO,
            env=env,
            stdout=(workdir / "daemon.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            warmups = {name: f"warmup/{name}.txt" for name in names}
            for name, object_key in warmups.items():
                location.upload(name, object_key)
            location.watch(client, list(warmups.values()), WAIT_S)
            # Once the warm-up's runs have ended (a quiet sqs_linger_seconds): one upload to every source at once, no
            # run reading any queue, the sensors' runs to make (what four runs on two slots made slow).
            latency.runs_ended(location.home, WAIT_S)
            quiet = {name: f"quiet/{name}.txt" for name in names}
            for name, object_key in quiet.items():
                location.upload(name, object_key)
            location.watch(client, list(quiet.values()), WAIT_S)
            singles = {name: [f"single/{name}-{number:03d}.txt" for number in range(uploads)] for name in names}
            every = [key for keys in singles.values() for key in keys]
            watcher = threading.Thread(
                target=location.watch, args=(client, every, WAIT_S + uploads * spacing_s), daemon=True
            )
            watcher.start()
            load = []
            for number in range(uploads):
                for name in names:
                    location.upload(name, singles[name][number])
                load.append(os.getloadavg()[0])
                time.sleep(spacing_s)
            watcher.join()
            if not set(every) <= location.queryable_at.keys():
                raise TimeoutError(f"uploads not queryable (see {workdir})")
        finally:
            common.stop_group(daemon)
    return {
        "sources": {name: latency.summary(location.latency_of(singles[name])) for name in names},
        "first_s": {name: round(location.latency_of([warmups[name]])[0], 2) for name in names},
        "quiet_s": {name: round(location.latency_of([quiet[name]])[0], 2) for name in names},
        "load_1min": {"min": round(min(load), 2), "median": round(common.median(load), 2), "max": round(max(load), 2)},
        "runs": _runs(location.home),
    }


def section_markdown(result: dict[str, Any]) -> str:
    """The subsection of section 3: one source against each of four, and how many runs each location made."""
    machine = result["machine"]
    lines = [
        f"{HEADING} (issue 49, item 8; measured {machine['date']}, commit {machine['commit']})",
        "",
        f"`{result['command']}`: {result['chroma']} Chroma, this repo's `dagster.yaml` (two run slots), default source "
        "settings (`sqs_linger_seconds: 60`), `dagster-daemon` and the code server apart. A code location of one SQS "
        "source, then one of four; in each, a warm-up upload to every source at once (the daemon just started), "
        "then, once its runs had ended, one upload to every source at once (after a quiet minute: no run reading a "
        f"queue, a new run to start), then {result['uploads']} rounds of one upload to each source back to back, "
        f"{result['spacing_s']:g} s apart; p50, p95 and max are the rounds'. "
        "The first run a sensor makes reads the queues of every SQS source of the location (defs/sensors/queues.py; "
        "docs/auto-sync.md).",
        "",
        "| location | source | p50 s | p95 s | max s | after a quiet minute s | warm-up s | load (1 min) during |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, location in (("one source", result["one"]), ("four sources", result["four"])):
        load = location["load_1min"]
        for name, figures in location["sources"].items():
            lines.append(
                f"| {label} | {name} | {figures['median_s']:.2f} | {figures['p95_s']:.2f} | {figures['max_s']:.2f} | "
                f"{location['quiet_s'][name]:.2f} | {location['first_s'][name]:.2f} | {load['min']:.1f}-{load['max']:.1f} |"
            )
    four, one = result["four"], result["one"]
    worst = max([*(figures["max_s"] for figures in four["sources"].values()), *four["quiet_s"].values()])
    worst_p50 = max(figures["median_s"] for figures in four["sources"].values())
    alone = next(iter(one["sources"].values()))
    one_worst = max(alone["max_s"], *one["quiet_s"].values())
    lines += [
        "",
        f"Four sources against one: the slowest source's p50 {worst_p50:.2f} s against {alone['median_s']:.2f} s; the "
        f"worst upload, the quiet minute's included, {worst:.2f} s against {one_worst:.2f} s (the warm-ups aside: the "
        "daemon's start).",
        "",
        *[_runs_line(label, result[key]["runs"]) for label, key in (("One source", "one"), ("Four sources", "four"))],
        "",
        *[
            f"All ({label}, {name}): {figures['all_s']}"
            for label, key in (("one source", "one"), ("four sources", "four"))
            for name, figures in result[key]["sources"].items()
        ],
    ]
    return "\n".join(lines)


def _runs_line(label: str, runs: list[dict[str, Any]]) -> str:
    readers = [run for run in runs if run["reads_queues_of"]]
    waits = [run["made_to_started_s"] for run in runs if run["made_to_started_s"] is not None]
    return (
        f"{label}: {len(runs)} run(s) in all, {len(readers)} of them reading other sources' queues too; "
        f"made to started: at most {max(waits, default=0.0):.2f} s."
    )


def earlier(out: Path) -> str:
    """The subsection as `out` has it ("" if none), for benchmarks.run to keep when it measures section 3 again."""
    if not out.is_file():
        return ""
    found = re.search(rf"\n({re.escape(HEADING)}.*?)(?=\n## |\Z)", out.read_text(), re.S)
    return "\n\n" + found.group(1).rstrip("\n") if found else ""


def write_section(out: Path, subsection: str) -> None:
    """Put the subsection at the end of section 3 of `out`, in place of an earlier one."""
    text = out.read_text()
    start = text.index("\n## 3. ")
    end = text.index("\n## ", start + 1)
    section = text[start:end]
    section = re.split(rf"\n{re.escape(HEADING)}", section, maxsplit=1)[0].rstrip("\n")
    out.write_text(text[:start] + section + "\n\n" + subsection + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency.queues", description=__doc__)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--uploads", type=int, default=30, help="rounds of one upload to each source")
    parser.add_argument("--spacing", type=float, default=5.0, help="seconds between rounds")
    parser.add_argument("--chroma", choices=("embedded", "server"), default="embedded")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "RESULTS.md")
    args = parser.parse_args(argv)
    common.credentials()
    result: dict[str, Any] = {
        "machine": common.machine(),
        "command": "python -m benchmarks.latency.queues " + " ".join(argv if argv is not None else sys.argv[1:]),
        "chroma": args.chroma,
        "uploads": args.uploads,
        "spacing_s": args.spacing,
    }
    with running() as server:
        for key, names in (("one", ["alone"]), ("four", ["one", "two", "three", "four"])):
            result[key] = measure_location(
                server.endpoint_url, args.workdir / key, names, args.uploads, args.spacing, args.chroma
            )
            print(json.dumps({key: result[key]["sources"]}, indent=1), flush=True)
    (args.workdir / "queues.json").write_text(json.dumps(result, indent=2))
    subsection = section_markdown(result)
    print(subsection)
    if args.out.is_file():
        write_section(args.out, subsection)
    return 0


if __name__ == "__main__":
    sys.exit(main())
