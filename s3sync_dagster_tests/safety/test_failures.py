"""Every failure we know of says what failed and why: the object (or the run) and the rule, never an empty reason.

One case per path, each met as a user meets it: through the `s3sync` command in this process (`--json`;
runs on a real Dagster instance, a moto server over HTTP, embedded Chroma), or, for a run whose process
died, through the runner's functions over that very run. Every sync's result accounts for each key asked:
its outcome, or not tried.

Then a sync cut short: keys fail in its first runs, then a `chroma run` server dies and a later run fails
as a whole; the result still lists every failed key with its reason, and its counts add up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo.local_s3 import LOOPBACK
from s3sync_dagster.commands.runs.dagster_home import home_lock
from s3sync_dagster.config import load_config
from s3sync_dagster.defs.failpoints import FAILPOINTS_ENV
from s3sync_dagster_tests import document_fixtures as fx
from s3sync_dagster_tests.conftest import ConfigFactory, put, start_chroma_server

REPO = Path(__file__).resolve().parents[2]
# Metadata mode needs a queue in the config; nothing here reads it (no sensor runs).
METADATA_MODE = {"auto_sync": "metadata", "sqs_queue_url": "http://127.0.0.1:1/123/q"}
RUN = r"run [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # a message naming a run by its id


@dataclass
class World:
    """One case's bucket and config file, on the Dagster home the test set ($DAGSTER_HOME)."""

    s3: Any
    bucket: str
    config_path: Path
    capsys: pytest.CaptureFixture[str]

    def cli(self, *argv: str) -> tuple[int, Any]:
        code = main([*argv, "--config", str(self.config_path), "--json"])
        out = self.capsys.readouterr().out
        return code, json.loads(out) if out.strip() else None


@dataclass(frozen=True)
class Said:
    """How a failure came back: the command's exit code (None: no command), the key's status, its message."""

    exit_code: int | None
    status: str
    message: str


Driver = Callable[[World, str], Said]


def check_accounted(out: dict[str, Any]) -> None:
    """A sync's result accounts for every key asked, and every failed key says what failed."""
    assert "asked" in out, f"the result does not say how many keys were asked: {out}"
    assert sum(out["counts"].values()) == out["asked"], out["counts"]
    assert len(out["keys"]) + len(out["not_tried"]) == out["asked"]
    assert {report["object_key"] for report in out["keys"]}.isdisjoint(out["not_tried"])
    for report in out["failed"]:
        assert f"'{report['object_key']}'" in report["message"], report


def sync(*argv: str) -> Driver:
    def drive(world: World, object_key: str) -> Said:
        code, out = world.cli("sync", "docs", *argv)
        if code == 2 and set(out) == {"error"}:  # refused before any run: the request or the config is wrong
            return Said(code, "refused", out["error"])
        check_accounted(out)
        if "error" in out:  # a run failed as a whole
            return Said(code, "run failed", out["error"])
        report = next(r for r in [*out["keys"], *out["also_synced"]] if r["object_key"] == object_key)
        return Said(code, report["status"], report["message"])

    return drive


def invoke(*argv: str) -> Driver:
    def drive(world: World, object_key: str) -> Said:
        code, out = world.cli("invoke", "docs", object_key, *argv)
        if code == 2:
            with dg.DagsterInstance.get() as instance:  # refused: nothing registered, recorded or run
                assert instance.get_dynamic_partitions("docs_objects") == []
                assert instance.get_run_records() == []
            return Said(code, "refused", out["error"])
        status = out["status"]
        return Said(code, "failed", status["failed"]["error"]) if "failed" in status else Said(code, str(status), "")

    return drive


def repair(world: World, object_key: str) -> Said:
    code, out = world.cli("repair", "docs")
    report = next(r for r in out["reports"] if r["object_key"] == object_key)
    return Said(code, report["status"], report["message"])


def died_run(world: World, object_key: str) -> Said:
    """`s3sync sync` killed (SIGKILL, with its document workers) right after its run stored the outcome of a first
    key, before the second (a .docx): the failpoint `run:reported` kills the process group at that instant, so no
    clock decides whether the kill comes before the sync ends. Then the run is marked failed as the run monitor
    marks a run whose worker died (defs/sensors/monitor.py, or Dagster's run monitoring). The runner reads each key's
    outcome in that run back from the instance."""
    from s3sync_dagster.commands.runs.reports import (  # how the command reads a run
        key_outcomes,
        reports_of,
        run_failure,
    )

    argv = ["sync", "docs", "--key", "d/gone.txt", "--key", object_key, "--config", str(world.config_path)]
    process = subprocess.Popen(
        [sys.executable, "-m", "s3sync_dagster.commands.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ, FAILPOINTS_ENV: "run:reported"},
        start_new_session=True,  # its own process group: killed with its workers, not with this test
    )
    try:
        assert process.wait(timeout=180) == -signal.SIGKILL, "the sync was not killed at its first key's outcome"
        with dg.DagsterInstance.get() as instance:
            records = instance.get_run_records()
            assert len(records) == 1 and reports_of(instance, records[0].dagster_run.run_id)
            run = instance.get_run_by_id(records[0].dagster_run.run_id)
            assert run is not None and run.status == dg.DagsterRunStatus.STARTED  # nobody said it ended
            instance.report_run_failed(
                run, f"run worker process {process.pid} is gone (killed or crashed) while the run was in progress"
            )
            source = load_config(world.config_path).source("docs")
            failure = run_failure(instance, run.run_id)
            reports, also_synced = key_outcomes(instance, source, run.run_id, ["d/gone.txt", object_key], failure)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert also_synced == [] and reports[0]["status"] == "removed"
    # The jobs list says why the run failed too.
    code, rows = world.cli("invocations", "docs")
    assert code == 0 and "process" in rows[0]["status"]["failed"]["error"]
    return Said(None, reports[1]["status"], reports[1]["message"])


def registered(partition_key: str) -> Callable[[World], None]:
    """A partition typed by hand in the UI (Add partition), not one `discover` made."""

    def before(world: World) -> None:
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions("docs_objects", [partition_key])

    return before


def invoked(*argv: str, deleted: bool = False) -> Callable[[World], None]:
    """An invocation with parameters of d/doc.txt (it registers the key as a partition; with --wait it indexes the
    object by itself, at once); then, if `deleted`, the object is deleted."""

    def before(world: World) -> None:
        code, _ = world.cli("invoke", "docs", "d/doc.txt", *argv)
        assert code == 0
        if deleted:
            world.s3.delete_object(Bucket=world.bucket, Key="d/doc.txt")

    return before


def synced(*argv: str) -> Callable[[World], None]:
    def before(world: World) -> None:
        world.cli("sync", "docs", *argv)

    return before


def in_turn(*befores: Callable[[World], None]) -> Callable[[World], None]:
    def before(world: World) -> None:
        for step in befores:
            step(world)

    return before


def meta(path: str, version: str = "chroma-v1", document_id: str = "doc-1") -> str:
    return json.dumps({"version": version, "id": document_id, "path": path})


@dataclass(frozen=True)
class Case:
    objects: Mapping[str, bytes | str]
    drive: Driver
    names: str  # the object the message must name, quoted; or RUN: a run, by its id
    rule: str  # a regular expression: what the message must say happened
    said: tuple[int | None, str]  # the exit code and the key's status
    source: Mapping[str, Any] = field(default_factory=dict)
    before: Callable[[World], None] | None = None


CASES = {
    "key outside the prefix": Case(
        {"elsewhere/a.txt": "a\n"},
        sync("--key", "elsewhere/a.txt"),
        "elsewhere/a.txt",
        r"does not start with source 'docs' path_prefix 'd/'",
        (2, "refused"),
    ),
    "object over max_object_bytes": Case(
        {"d/big.txt": "x" * 2000, "d/ok.txt": "ok\n"},
        sync("--all"),
        "d/big.txt",
        r"is 2,000 bytes, over the limit of 1,000 bytes per object \(max_object_bytes\)",
        (1, "failed"),
        source={"max_object_bytes": 1000},
    ),
    "metadata file that is not JSON": Case(
        {"d/doc.txt": "text\n", "d/doc.meta.json": "{nope"},
        sync("--all"),
        "d/doc.meta.json",
        r"metadata file 'd/doc\.meta\.json' is not valid UTF-8 JSON",
        (1, "failed"),
    ),
    "metadata file of another version": Case(
        {"d/doc.txt": "text\n", "d/doc.meta.json": meta("d/doc.txt", version="2")},
        sync("--all"),
        "d/doc.meta.json",
        r'version must be "chroma-v1" \(got "2"\)',
        (1, "failed"),
    ),
    "metadata file naming a path outside the prefix": Case(
        {"d/doc.meta.json": meta("elsewhere/doc.txt")},
        sync("--all"),
        "d/doc.meta.json",
        r"path 'elsewhere/doc\.txt' is outside this source's path_prefix 'd/'",
        (1, "failed"),
    ),
    "metadata file over 1 MiB": Case(
        {"d/huge.meta.json": "{" + " " * (1024 * 1024) + "}"},
        sync("--all"),
        "d/huge.meta.json",
        r"over the limit of 1,048,576 bytes for a \.meta\.json file",
        (1, "failed"),
    ),
    "metadata file taking the id of another": Case(
        {
            "d/a.txt": "a\n",
            "d/b.txt": "b\n",
            "d/a.meta.json": meta("d/a.txt"),
            "d/b.meta.json": meta("d/b.txt"),
        },
        sync("--all"),
        "d/b.meta.json",
        r"id 'doc-1' is already the id of the document of metadata file 'd/a\.meta\.json'",
        (1, "failed"),
    ),
    "PDF that is not readable": Case(
        {"d/garbage.pdf": b"%PDF-1.7\n" + b"\x00garbage" * 50},
        sync("--all"),
        "d/garbage.pdf",
        r"not a readable PDF",
        (1, "failed"),
    ),
    "truncated docx": Case(
        {"d/truncated.docx": fx.docx_bytes()[:600]},
        sync("--all"),
        "d/truncated.docx",
        r"could not be read as a \.docx document",
        (1, "failed"),
    ),
    "object that is not text": Case(
        {"d/bad.txt": b"ok\n\xc3\x28", "d/ok.txt": "ok\n"},
        sync("--all"),
        "d/bad.txt",
        r"is not UTF-8 text \(byte 0xc3 at offset 3",
        (1, "failed"),
    ),
    "partition typed by hand in the UI": Case(
        {"d/ok.txt": "ok\n"},
        sync("--all"),
        "d/a%41.txt",
        r"partition key 'd/a%41\.txt' is not in canonical form: the partition for object key 'd/aA\.txt' is",
        (1, "failed"),
        before=registered("d/a%41.txt"),
    ),
    "run whose process died": Case(
        {"d/report.docx": fx.docx_bytes()},
        died_run,
        "d/report.docx",
        rf"{RUN} failed before it reported object 'd/report\.docx': run worker process \d+ is gone",
        (None, "failed"),
    ),
    "invocation that fails, followed with --wait": Case(
        {"d/bad.txt": b"\x80"},
        invoke("--wait"),
        "d/bad.txt",
        r"is not UTF-8 text",
        (1, "failed"),
    ),
    # Each repair case first indexes an object of its own: an audit of a bucket or a store with nothing in it
    # fails (pipeline/audit/drift.py reads columns of an empty frame).
    "repair of an object that fails": Case(
        {"d/bad.txt": b"\x80", "d/ok.txt": "ok\n"},
        repair,
        "d/bad.txt",
        r"is not UTF-8 text",
        (1, "failed"),
        before=synced("--key", "d/ok.txt"),
    ),
    "metadata mode: invocation with no metadata file naming the object": Case(
        {"d/doc.txt": "text\n"},
        invoke(),
        "d/doc.txt",
        r"syncs in metadata mode: object 'd/doc\.txt' is indexed only through a \.meta\.json file naming it, "
        r"and no metadata file synced so far names it: invoke the metadata file, or give the invocation",
        (2, "refused"),
        source=METADATA_MODE,
    ),
    "metadata mode: document synced by key with no metadata file naming it": Case(
        {"d/doc.txt": "text\n"},
        sync("--key", "d/doc.txt"),
        "d/doc.txt",
        r"syncs in metadata mode: object 'd/doc\.txt' is indexed only through a \.meta\.json file naming it",
        (2, "refused"),
        source=METADATA_MODE,
    ),
    # The document's partition exists (an invocation with parameters made it): a sync of every key reaches it,
    # and its run ignores it by rule. It used to come back failed with an empty reason.
    "metadata mode: document partition in a sync of every key": Case(
        {"d/doc.txt": "text\n", "d/named.txt": "named\n", "d/named.meta.json": meta("d/named.txt")},
        sync("--all"),
        "d/doc.txt",
        r"named by no \.meta\.json file: in metadata mode only named documents are indexed",
        (0, "ignored"),
        source=METADATA_MODE,
        before=invoked("--custom-id", "doc-by-itself"),
    ),
    # An invocation indexed the document by itself; it is deleted; the repair's run removes its chunks and
    # ignores it by rule. It used to come back failed, "run ... failed", with no reason.
    "metadata mode: repair of a deleted document's own chunks": Case(
        {"d/doc.txt": "text\n", "d/named.txt": "named\n", "d/named.meta.json": meta("d/named.txt")},
        repair,
        "d/doc.txt",
        r"named by no \.meta\.json file: in metadata mode only named documents are indexed; "
        r"removed 1 chunk\(s\) it had of its own",
        (0, "ignored"),
        source=METADATA_MODE,
        before=in_turn(synced("--all"), invoked("--custom-id", "doc-by-itself", "--wait", deleted=True)),
    ),
}


@pytest.mark.reliability("faults")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_every_failure_names_the_object_and_the_rule(
    case: Case,
    s3: Any,
    bucket: str,
    make_config: ConfigFactory,
    dagster_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    put(s3, bucket, dict(case.objects))
    _, path = make_config(bucket, path_prefix="d/", **case.source)
    world = World(s3, bucket, path, capsys)
    if case.before is not None:
        case.before(world)
    said = case.drive(world, case.names)
    assert said.message.strip(), said
    assert re.search(case.names if case.names == RUN else re.escape(f"'{case.names}'"), said.message), said
    assert re.search(case.rule, said.message), said
    assert (said.exit_code, said.status) == case.said, said


# A sync cut short: keys fail in its first runs, then the store dies and a later run fails as a whole.


@pytest.fixture
def doomed_chroma(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A `chroma run` server of this test's own, for it to kill."""
    port, process = start_chroma_server(tmp_path / "chroma-server")
    yield port, process
    process.kill()
    process.wait(timeout=20)


OBJECT_KEYS = [f"d/k-{n:02d}.txt" for n in range(12)]
BAD = {"d/k-01.txt", "d/k-04.txt"}  # not text: they fail in the first and second runs


@pytest.mark.reliability("faults")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("output", ["text", "json"])
def test_a_sync_cut_short_by_a_run_that_failed_as_a_whole_lists_every_failed_key_and_adds_up(
    output: str,
    s3: Any,
    bucket: str,
    make_config: ConfigFactory,
    tmp_path: Path,
    doomed_chroma: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, server = doomed_chroma
    put(s3, bucket, {key: b"\xff\xfe bad" if key in BAD else f"file {key}\n" for key in OBJECT_KEYS})
    _, path = make_config(bucket, path_prefix="d/")
    raw = yaml.safe_load(path.read_text())
    raw["chroma"] = {"host": LOOPBACK, "port": port}
    path.write_text(yaml.safe_dump(raw))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    argv = ["sync", "docs", "--all", "--batch-size", "3", "--config", str(path)] + (["--json"] * (output == "json"))
    sync_process = subprocess.Popen(
        [sys.executable, "-m", "s3sync_dagster.commands.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "DAGSTER_HOME": str(home)},
    )
    # The store dies once the first of the four runs has ended: the runs after it cannot open it.
    ended = dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE])
    with home_lock(home):  # the sync may be setting up the fresh home's databases
        instance = dg.DagsterInstance.from_config(str(home))
    with instance:
        deadline = time.monotonic() + 240
        while not instance.get_run_records(ended):
            if sync_process.poll() is not None or time.monotonic() > deadline:
                sync_process.kill()
                pytest.fail(f"the sync's first run never ended: {sync_process.communicate()}")
            time.sleep(0.02)
    server.kill()
    stdout, stderr = sync_process.communicate(timeout=240)
    assert sync_process.returncode == 2, (stdout, stderr)

    # One line on stderr: the run that failed as a whole, and what the runs before it did.
    line = re.fullmatch(
        rf"s3sync: ({RUN}) failed: Chroma server http://{LOOPBACK}:{port} cannot be reached: Connection refused: "
        rf"check chroma\.host and chroma\.port, and that a Chroma server runs there \(chroma run --port {port}\); "
        r"of the 12 key\(s\) asked, the runs before it synced (\d+) and failed (\d+) \(each listed with its "
        r"reason\); (\d+) were not tried\n",
        stderr,
    )
    assert line, stderr
    synced, failed, not_tried = (int(line.group(n)) for n in (2, 3, 4))
    assert synced + failed + not_tried == 12 and not_tried >= 3  # at least the last run's keys

    if output == "json":
        out = json.loads(stdout)
        assert out["error"] == stderr.removeprefix("s3sync: ").rstrip("\n")
        check_accounted(out)
        reasons = {report["object_key"]: report["message"] for report in out["failed"]}
        statuses = out["counts"]
        assert len(out["not_tried"]) == not_tried
        assert sorted([report["object_key"] for report in out["keys"]] + out["not_tried"]) == OBJECT_KEYS
    else:
        summary, *rest = stdout.splitlines()
        head = re.fullmatch(r"source 'docs': 12 key\(s\) asked, (\d+) run\(s\), [\d.]+ s: (.+)", summary)
        assert head, summary
        statuses = {
            status.replace(" ", "_"): int(n) for n, status in (part.split(" ", 1) for part in head.group(2).split(", "))
        }
        failed_lines = [re.fullmatch(r"  failed: (\S+): (.+)", entry) for entry in rest]
        reasons = {match.group(1): match.group(2) for match in failed_lines if match is not None}
        [listed] = [entry for entry in rest if entry.startswith("  not tried: ")]
        assert len(listed.removeprefix("  not tried: ").split(", ")) == not_tried
    assert sum(statuses.values()) == 12
    assert statuses.get("failed", 0) == failed == len(reasons)
    assert statuses.get("not_tried", 0) == not_tried
    assert statuses.get("indexed", 0) == synced  # every key the runs before it did not fail was indexed
    assert "d/k-01.txt" in reasons and "is not UTF-8 text" in reasons["d/k-01.txt"]
    for object_key, reason in reasons.items():
        assert f"'{object_key}'" in reason, reason
