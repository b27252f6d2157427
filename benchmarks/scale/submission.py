"""Submitting a million keys: how fast Dagster's backfill daemon turns a backfill of every key into runs, on the
production instance (PostgreSQL, deploy/dagster.yaml), for each run size asked (a source's `keys_per_run`).

N keys (default 1,000,000) are registered directly as the source's partitions (10,000 a call, as `discover` does);
then, for each run size, dagster-webserver, dagster-daemon and the code server start apart as deployed
(benchmarks/servers/dagster_server.py) and a backfill of all the asset's partitions is launched as the UI's
"Materialize all" does (GraphQL `launchPartitionBackfill`, `allPartitions`). The run queue is held
(`max_concurrent_runs: 0` in this home's copy of deploy/dagster.yaml): what is measured is the submission alone,
not this machine executing the runs it makes. For `--watch` seconds the runs the backfill has made are counted
every 5 s; then PostgreSQL's live rows per table and the daemon's peak RSS (its process and its children's).

A backfill feeds W workers when it submits at least W times the keys a worker indexes a second: workers at about
2 to 4 keys a second each (RESULTS.md section 10) need 16 to 34 keys a second for 8 of them.

Section 10's subsection: `python -m benchmarks.scale.cluster submission --json benchmarks/results-cluster.json
--workdir W [--keys N]` measures it into the JSON's `submission` part and rewrites the section.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg2
import yaml

from benchmarks import common
from benchmarks.scale.million import CANCEL, Sampler
from benchmarks.servers import dagster_server, postgres_server
from s3sync_dagster.commands.demo import LOOPBACK
from s3sync_dagster.defs.names import documents_asset_key, partitions_name
from s3sync_dagster.defs.tags import BACKFILL_TAG
from s3sync_dagster.pipeline.records import to_partition_key

SOURCE = "scale"
NOWHERE = f"http://{LOOPBACK}:9"  # the runs never start (the queue is held); their S3 endpoint would refuse anyway
REGISTER_BATCH = 10_000
SAMPLE_S = 5.0
WORKERS = 8
WORKER_KEYS_PER_S = (2.0, 4.0)  # one worker's rate, low and high (RESULTS.md section 10)


def held_home(path: Path) -> Path:
    """deploy/dagster.yaml's instance with its run queue held: runs are made and queued, never started."""
    home = common.dagster_home(path, settings=common.DEPLOY_SETTINGS)
    settings = yaml.safe_load((home / "dagster.yaml").read_text())
    settings["concurrency"]["runs"]["max_concurrent_runs"] = 0
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))
    return home


def register(home: Path, count: int) -> float:
    """Seconds to register `count` keys as the source's partitions, 10,000 a call."""
    partition_keys = [to_partition_key(f"docs/file-{n:07d}.txt") for n in range(count)]
    started = time.perf_counter()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for start in range(0, count, REGISTER_BATCH):
            instance.add_dynamic_partitions(partitions_name(SOURCE), partition_keys[start : start + REGISTER_BATCH])
    return time.perf_counter() - started


def table_rows(postgres: postgres_server.LocalPostgres) -> dict[str, int]:
    """PostgreSQL's live rows per table of the instance (its statistics, refreshed by ANALYZE first)."""
    with psycopg2.connect(host=postgres.host, port=postgres.port, user=postgres.user, dbname=postgres.db_name) as db:
        db.autocommit = True
        with db.cursor() as cursor:
            cursor.execute("ANALYZE")
            cursor.execute("SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE n_live_tup > 0 ORDER BY 1")
            return {name: int(rows) for name, rows in cursor.fetchall()}


def submit(workdir: Path, home: Path, keys_per_run: int, watch_s: float) -> dict[str, Any]:
    """A backfill of every key at this run size: the runs it made over time, and the daemon's peak RSS."""
    config = common.write_config(
        workdir / f"s3sync-{keys_per_run}.yaml", NOWHERE, "bench-bucket", workdir / "chroma", source=SOURCE,
        keys_per_run=keys_per_run,
    )  # fmt: skip
    log = workdir / f"servers-{keys_per_run}.log"
    with (
        dagster_server.webserver_and_daemon(home, config, log) as server,
        dg.DagsterInstance.from_config(str(home)) as instance,
        Sampler(server.others[0].pid) as daemon,  # the daemon process's own peak RSS (webserver_and_daemon: 2nd)
    ):
        started = time.perf_counter()
        backfill_id = server.backfill(list(documents_asset_key(SOURCE).path))
        launched_s = time.perf_counter() - started
        samples: list[tuple[float, int]] = []
        while time.perf_counter() - started < watch_s:
            runs = instance.get_runs_count(dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))
            samples.append((round(time.perf_counter() - started, 1), runs))
            time.sleep(SAMPLE_S)
        server.gql(CANCEL, backfillId=backfill_id)
    daemon_mb = daemon.peaks.get("daemon")
    made = [(at, runs) for at, runs in samples if runs]
    first_s: float | None = None
    runs_per_s = 0.0
    if made:
        first_s = made[0][0]
        # The rate once runs come: from the first sample with a run to the last sample.
        span_s = samples[-1][0] - first_s
        runs_per_s = (samples[-1][1] - made[0][1]) / span_s if span_s > 0 else 0.0
    runs_made = samples[-1][1] if samples else 0
    return {
        "keys_per_run": keys_per_run,
        "launch_request_s": round(launched_s, 1),
        "first_run_s": first_s,
        "runs_made": runs_made,
        "watched_s": samples[-1][0] if samples else 0.0,
        "runs_per_s": round(runs_per_s, 3),
        "keys_per_s": round(runs_per_s * keys_per_run, 1),
        "daemon_peak_rss_mb": round(daemon_mb, 0) if daemon_mb is not None else None,
        "samples": samples,
    }


def measure(workdir: Path, count: int, sizes: list[int], watch_s: float) -> dict[str, Any]:
    workdir = Path(workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    common.credentials()
    result: dict[str, Any] = {
        "keys": count,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": common.machine()["commit"],
        "load_before": os.getloadavg()[0],
        "sizes": [],
    }
    with postgres_server.running() as postgres, postgres.exported():
        home = held_home(workdir / "home")
        result["register_s"] = round(register(home, count), 1)
        common.log(f"registered {count:,} keys in {result['register_s']} s")
        for keys_per_run in sizes:
            result["sizes"].append(submit(workdir, home, keys_per_run, watch_s))
            common.log(json.dumps({k: v for k, v in result["sizes"][-1].items() if k != "samples"}))
        result["postgres_rows"] = table_rows(postgres)
    result["load_after"] = os.getloadavg()[0]
    (workdir / "submission.json").write_text(json.dumps(result, indent=1))
    return result


def section_markdown(result: dict[str, Any]) -> str:
    low, high = (WORKERS * rate for rate in WORKER_KEYS_PER_S)
    lines = [
        f"Measured {result['date']}, commit {result['commit']}, `python -m benchmarks.scale.cluster submission "
        f"--keys {result['keys']}`; load average {result['load_before']:.1f} before, {result['load_after']:.1f} after. "
        f"{result['keys']:,} keys registered directly in {result['register_s']} s; for each run size, a backfill of "
        'every key launched as the UI\'s "Materialize all" on the production instance with its run queue held.',
        "",
        "| keys a run | launch request s | first run s | runs made | in s | runs/s | keys/s submitted | feeds 8 workers "
        f"({low:.0f}-{high:.0f} keys/s) | daemon peak RSS |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for size in result["sizes"]:
        feeds = "yes" if size["keys_per_s"] >= high else ("at the low rate" if size["keys_per_s"] >= low else "no")
        lines.append(
            f"| {size['keys_per_run']:,} | {size['launch_request_s']} | {size['first_run_s']} | {size['runs_made']:,} "
            f"| {size['watched_s']} | {size['runs_per_s']} | {size['keys_per_s']:,} | {feeds} | "
            f"{size['daemon_peak_rss_mb']} MB |"
        )
    rows = ", ".join(f"{name} {count:,}" for name, count in result["postgres_rows"].items())
    lines += ["", f"PostgreSQL's live rows after all sizes: {rows}."]
    return "\n".join(lines)
