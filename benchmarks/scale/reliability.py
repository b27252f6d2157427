"""The reliability table: runs the hostile-input and fault suites and writes RELIABILITY.md at the repository's root.

`python -m benchmarks.scale.reliability` (pytest arguments may follow `--`, say `-- -k meta_file`). Each test
marked `reliability` (s3sync_dagster_tests/safety/test_reliability.py, and the fault-injection tests of
test_daemon, test_faults and test_sensors) records a row (family, case, passed, chunks expected and
found, lost, duplicated, stray) into the JSON file S3SYNC_RELIABILITY_REPORT names; this script runs
the suite with that variable set and renders the rows: a summary per family with totals, then every
case. A case marked xfail (a bug found and not fixed yet) counts as not passed and names its bug.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common

REPORT_ENV = "S3SYNC_RELIABILITY_REPORT"
# The hostile-input suite and the fault-injection tests: every test marked `reliability`.
SUITE = "-m reliability"
COMMAND = "python -m benchmarks.scale.reliability"
TARGET = common.REPO / "RELIABILITY.md"
COUNTS = ("chunks_expected", "chunks_found", "lost", "duplicated", "stray")


def run_suite(rows_file: Path, pytest_args: Sequence[str]) -> tuple[int, float]:
    """(pytest's exit code, seconds) of one run of the suite writing its rows to rows_file."""
    env = {**os.environ, REPORT_ENV: str(rows_file)}
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", *SUITE.split(), "-q", "-p", "no:cacheprovider", *pytest_args],
        cwd=common.REPO,
        env=env,
        check=False,
    )
    return completed.returncode, time.monotonic() - started


def _families(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    families: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        families.setdefault(str(row["family"]), []).append(row)
    return families


def _summary_line(name: str, rows: Sequence[dict[str, Any]]) -> str:
    passed = sum(1 for row in rows if row["passed"])
    bugs = sum(1 for row in rows if row["known_bug"])
    totals = [sum(int(row[count]) for row in rows) for count in COUNTS]
    return f"| {name} | {len(rows)} | {passed} | {bugs} | " + " | ".join(str(total) for total in totals) + " |"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: Sequence[dict[str, Any]], exit_code: int, seconds: float, machine: dict[str, str]) -> str:
    families = _families(rows)
    header = "| cases | passed | known bugs (xfail) | chunks expected | chunks found | lost | duplicated | stray |"
    lines = [
        "# Reliability: hostile inputs and faults against the exact chunk set",
        "",
        f"Made by `{COMMAND}` (it runs `pytest {SUITE}` with {REPORT_ENV} set) on {machine['date']}, "
        f"commit {machine['commit']}, {machine['cpu']}: {len(rows)} cases in {seconds:.0f} s, pytest exit code "
        f"{exit_code}.",
        "",
        "Each case syncs a hostile input (through the engine, the SQS sensor on a real Dagster instance, or "
        "the config loader), compares every chunk in Chroma (ids and texts, all collections) with the exact "
        "set expected, syncs again and compares again, and checks each key's status and message and that "
        "the fixtures' secret appears nowhere. *Lost*: expected chunks missing or holding another text; "
        "*duplicated*: ids or texts present more often than expected; *stray*: chunks that should not be "
        "there at all; the worst of the two syncs is counted. A known bug is a case marked "
        "`xfail(strict=True)`: it fails today for the reason given and is not counted as passed.",
        "",
        "The *faults* cases inject faults into real processes and servers: `kill -9` of the daemon's process "
        "group (daemon, code server, run workers) before its tick's runs are stored, between two SQS delete "
        "calls and right after them, and while a run is in progress; a tick whose result never reached the "
        "instance; redelivered and foreign SQS messages; an S3 endpoint that accepts connections and never "
        "answers; a Chroma server that is down; two `s3sync sync` processes started together on a fresh "
        "Dagster home. Each ends with the exact chunk set of its uploads. The *metadata mode* cases: a "
        "`.meta.json` that arrives before its document, and two naming one object. The *tenancy* cases "
        "(test_tenancy.py, each against embedded Chroma and a `chroma run` server): two tenants on one bucket "
        "and one store, one of them hostile: a metadata file or an invocation aimed at another source's "
        "collection or document id (from the same bucket or another), ids in a collection no source owns, a "
        "same-named key in another bucket, `target_collections` globs, a document missing a chunk, another "
        "source's chunk in a source's collection, a source's chunk where it may not write, and repair on an "
        "empty prefix and after every object is gone; each ends with the exact chunk set of every collection. "
        "The *shared stores* cases (issue 35): two sources racing for one document id in a shared collection "
        "on a `chroma run` server, 20 rounds from two processes (test_claims.py); two projects (configs with "
        "their own Dagster homes) on one store, embedded and server: a second project's source writing the "
        "first's collection, repair, `remove-source` and `sources` of each, two projects reading one bucket "
        "told apart by `project:`, an unknown writer's chunk in a source's collection (search, audit, "
        "repair), a project named later (test_shared_store.py); `sync --all` while `repair`, `remove-source` "
        "or a partition removed as Dagster checks a run's range, and a waiting metadata file "
        "(test_concurrent_commands.py); lexical search across case and Unicode forms (test_search.py); globs "
        "that backtracked and hand-registered keys in a selection (test_selections.py). The *newest features* "
        "cases (issue 49, embedded and server where a store is involved): collections of the names a re-embedding "
        "gives its copy and its retired collection made by another tool, refused as settings and never renamed "
        "or dropped; a stored vector offered for a text it is not (a chunk edited in place), and repair of such "
        "chunks; a model change beside a shared target and another project's collection; a sync, a late write, "
        "`--abandon` and a second re-embedding racing a swap, each at a chosen point; a killed re-embedding's "
        "run; a renamed collection (test_neighbours.py); the resident query process seen by another user, "
        "frozen, its socket replaced by a folder or a link, its digest, a frozen PostgreSQL (test_resident.py); "
        "Chroma Cloud's quotas (test_cloud_limits.py); several SQS sources on the default run slots. The *fail "
        "closed* cases (issue 62, a hostile neighbour's ring of the last round's features): principals given as a "
        "string, refused naming the parameter; a readers tag changed to a value that does not read, through a "
        "sync of a changed object, the metadata-only update, a `.meta.json` file's document and the SQS sensor's "
        "tagging event, the removed reader seeing nothing at once (test_fail_closed.py); an archived object read "
        "by its HEAD alone, an S3 error said by its code; repair of chunks edited in place, from S3, and of labels "
        "changed after a sync (test_repair_from_s3.py); the plan against the next sync case by case (a chunking "
        "change, tag- and metadata-only changes, empty and archived objects) and the files it leaves as they "
        "were (test_plan_dry_run.py); a re-embedding beside another tool's retired collection, and a lean install "
        "configured for PostgreSQL storage or Celery (test_named_blocks.py).",
        "",
        "| family " + header,
        "| --- " + "| ---: " * 8 + "|",
        *(_summary_line(name, family) for name, family in families.items()),
        _summary_line("**total**", rows),
    ]
    bugs = [row for row in rows if row["known_bug"]]
    if bugs:
        lines += ["", "## Known bugs", ""]
        lines += [f"- {row['family']} / `{row['case']}`: {_cell(str(row['known_bug']))}" for row in bugs]
    for name, family in families.items():
        lines += ["", f"## {name}", "", "| case | passed | expected | found | lost | duplicated | stray |"]
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for row in family:
            verdict = "yes" if row["passed"] else ("known bug" if row["known_bug"] else "**no**")
            counts = " | ".join(str(row[count]) for count in COUNTS)
            lines.append(f"| `{_cell(str(row['case']))}` | {verdict} | {counts} |")
    return "\n".join(lines) + "\n"


def _render_written(rows_file: Path, exit_code: int, seconds: float) -> int:
    """Write RELIABILITY.md from the rows of a suite run made elsewhere (say the whole suite under xdist)."""
    files = [rows_file] if rows_file.exists() else sorted(rows_file.parent.glob(rows_file.name + ".gw*"))
    if not files:
        print(f"no rows at {rows_file} (nor {rows_file}.gw*)", file=sys.stderr)
        return 1
    rows = [row for file in files for row in json.loads(file.read_text(encoding="utf-8"))]
    TARGET.write_text(render(rows, exit_code, seconds, common.machine()), encoding="utf-8")
    print(f"{sum(1 for row in rows if row['passed'])}/{len(rows)} cases passed; wrote {TARGET}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    parser.add_argument(
        "--rows",
        type=Path,
        help="render the rows a suite run already wrote (its S3SYNC_RELIABILITY_REPORT, and with xdist that path "
        "plus .gw0, .gw1, ...) instead of running the suite; --exit-code and --seconds describe that run",
    )
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.rows is not None:
        return _render_written(args.rows, args.exit_code, args.seconds)
    with tempfile.TemporaryDirectory() as folder:
        rows_file = Path(folder) / "rows.json"
        exit_code, seconds = run_suite(rows_file, args.pytest_args)
        if not rows_file.exists():
            print(f"the suite wrote no rows (pytest exit code {exit_code})", file=sys.stderr)
            return exit_code or 1
        rows = json.loads(rows_file.read_text(encoding="utf-8"))
    TARGET.write_text(render(rows, exit_code, seconds, common.machine()), encoding="utf-8")
    passed = sum(1 for row in rows if row["passed"])
    print(f"{passed}/{len(rows)} cases passed; wrote {TARGET}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
