"""The resident query process (commands/resident.py) under attack: it shows nothing of its queries, a client never
hangs on one that is frozen, a socket path it did not make is refused and replaced, its digest leaves out what only
a shell reads, and a PostgreSQL lexical index that does not answer fails a search's lexical side within its bound.

Real processes throughout: the `s3sync` command in fresh processes, the resident process it starts, a Unix socket,
SIGSTOP for a frozen process; moto over HTTP and an embedded Chroma (test_query.py's `searched`); Debian's
PostgreSQL and a `chroma run` server for the lexical index."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from benchmarks.servers import postgres_server
from s3sync_dagster.commands import resident
from s3sync_dagster.config import AppConfig
from s3sync_dagster.pipeline.chroma import lifecycle
from s3sync_dagster.pipeline.lexicon import embedded as lexicon
from s3sync_dagster.pipeline.lexicon.postgres import READ_TIMEOUT_S, PostgresLexicon
from s3sync_dagster.pipeline.search import lexical
from s3sync_dagster.pipeline.search import query as search
from s3sync_dagster.pipeline.store import Store
from s3sync_dagster_tests.conftest import TEST_KEY_ID, TEST_SECRET, Row
from s3sync_dagster_tests.search.test_query import BIN, searched  # noqa: F401 -- the fixture, used by name

pytestmark = pytest.mark.reliability("newest features")

SECRET_QUERY = "SALARY OF JOHN DOE 1234"
GAVE_UP = f"s3sync: the resident query process did not answer within {resident.ANSWER_WAIT_S:g} s; answered here"
START_WAIT_S = 120.0  # a fail-safe only: a resident process is warmed with a cold query first


@dataclass
class Shell:
    """`s3sync` run in fresh processes in one environment, its resident processes in a short folder of their own
    (a socket's path may hold 107 bytes: tmp_path under pytest-xdist is longer)."""

    config: Path
    run_dir: Path
    extra: dict[str, str] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)  # resident processes seen: continued and ended at the end

    @property
    def env(self) -> dict[str, str]:
        return dict(
            os.environ, S3SYNC_QUERY_SERVER="1", XDG_RUNTIME_DIR=str(self.run_dir), S3SYNC_QUERY_IDLE_SECONDS="120",
            S3SYNC_TEST_KEY_ID=TEST_KEY_ID, S3SYNC_TEST_SECRET=TEST_SECRET,
        ) | self.extra  # fmt: skip

    def s3sync(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "s3sync"), *args], capture_output=True, text=True, env=self.env, timeout=300)

    def query(self, text: str) -> subprocess.CompletedProcess[str]:
        argv = ["query", "manuals", text, "--config", str(self.config), "--mode", "lexical", "-n", "1", "--json"]
        done = self.s3sync(*argv)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    @staticmethod
    def found(done: subprocess.CompletedProcess[str]) -> list[str]:
        return [hit["object_key"] for hit in json.loads(done.stdout)["results"]]

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(self.s3sync("query-server", "status", "--json").stdout)
        if status.get("pid"):
            self.pids.add(int(status["pid"]))
        return status

    def running(self) -> dict[str, Any]:
        """The status of the resident process, once one answers."""
        deadline = time.monotonic() + START_WAIT_S
        while not (status := self.status())["running"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status["running"], [(p.name, p.read_text()[-2000:]) for p in self.run_dir.glob("*/*.log")]
        return status

    def address(self) -> Path:
        code = "from s3sync_dagster.commands.resident import address; print(address())"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=60)
        return Path(done.stdout.strip())

    def end(self) -> None:
        for pid in self.pids:
            for signal_ in (signal.SIGCONT, signal.SIGTERM):
                try:
                    os.kill(pid, signal_)
                except ProcessLookupError:
                    break


@pytest.fixture
def shells(searched: tuple[AppConfig, Path]) -> Iterator[list[Shell]]:  # noqa: F811 -- the fixture imported
    """Two environments over the same synced config (they differ in one variable, so each has its own resident
    process), their resident processes ended at the end."""
    _, path = searched
    run_dir = Path(tempfile.mkdtemp(prefix="s3r-"))
    made = [Shell(path, run_dir, {"S3SYNC_TEST_SHELL": name}) for name in ("a", "b")]
    try:
        yield made
    finally:
        for shell in made:
            shell.end()
        shutil.rmtree(run_dir, ignore_errors=True)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]


@pytest.mark.parametrize("searched", ["embedded"], indirect=True)
def test_the_resident_process_shows_no_query_config_or_socket_on_its_command_line(
    shells: list[Shell], fault_row: Row
) -> None:
    """`ps` shows any local user every process's command line: the warm query, the config's path and the
    socket go to the resident process on its standard input, so its command line names none of them."""
    shell = shells[0]
    assert shell.found(shell.query(SECRET_QUERY)) == []  # answered here; a resident process is started with it
    status = shell.running()
    assert status["served"] == 1  # the warm query, handed over on its standard input
    seen = " ".join(cmdline(status["pid"]))
    assert cmdline(status["pid"])[1:] == ["-m", "s3sync_dagster.commands.resident_server"], seen
    for secret in (SECRET_QUERY, "SALARY", str(shell.config), shell.config.name, str(shell.run_dir), ".sock"):
        assert secret not in seen
    done = shell.query("KT-2093 descale the element")
    assert shell.found(done) == ["manuals/kettle.txt"] and shell.status()["served"] == 2
    fault_row.passed = True


@pytest.mark.parametrize("searched", ["embedded"], indirect=True)
def test_a_frozen_resident_process_is_given_up_within_its_bound_and_the_query_answered_here(
    shells: list[Shell], fault_row: Row
) -> None:
    """A resident process that does not answer (stopped: SIGSTOP) is given up after resident.ANSWER_WAIT_S of
    silence: the query is answered in its own process, right, and says so once; `query-server status` says it
    does not answer instead of hanging. The subprocess timeouts (300 s) are a fail-safe, not the check."""
    shell = shells[0]
    assert shell.s3sync("query-server", "start", "--json").returncode == 0
    pid = int(shell.running()["pid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        done = shell.query("RT-7788 hold the reset pin")
        assert shell.found(done) == ["manuals/router.txt"]
        assert done.stderr.count(GAVE_UP) == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        status = shell.status()
        assert not status["running"] and "did not answer" in status["why"], status
    finally:
        os.kill(pid, signal.SIGCONT)
    # Continued, it answers again (the process started meanwhile left: the socket is the first one's).
    assert shell.running()["pid"] == pid
    assert shell.found(shell.query("KT-2093 descale the element")) == ["manuals/kettle.txt"]
    fault_row.passed = True


@pytest.mark.parametrize("searched", ["embedded"], indirect=True)
def test_a_folder_at_the_socket_path_is_refused_and_replaced(shells: list[Shell], fault_row: Row) -> None:
    """A folder where the socket goes made every later query run cold without a word: now the query says so
    once, and the resident process it starts replaces the folder with its socket and answers the next."""
    shell = shells[0]
    where = shell.address()
    where.parent.mkdir(mode=0o700)
    (where / "left").mkdir(parents=True)
    done = shell.query("BX-4410 bleed the radiator")
    assert shell.found(done) == ["manuals/boiler.txt"]
    said = f"s3sync: {where} is a folder, not the resident query process's socket; answered here"
    assert done.stderr.count(said) == 1, done.stderr
    served = shell.running()["served"]
    assert where.is_socket()
    done = shell.query("KT-2093 descale the element")
    assert shell.found(done) == ["manuals/kettle.txt"] and done.stderr == ""
    assert shell.status()["served"] == served + 1
    fault_row.passed = True


@pytest.mark.parametrize("searched", ["embedded"], indirect=True)
def test_a_link_to_another_environments_socket_is_refused_and_replaced(shells: list[Shell], fault_row: Row) -> None:
    """A symlink at one environment's socket path to another environment's socket was answered by the other's
    process (with its settings and documents): now it is refused, and so is a hard link (the other process
    answers its own socket's path only); each is replaced by the environment's own resident process."""
    other, shell = shells
    assert other.s3sync("query-server", "start", "--json").returncode == 0
    others = other.running()
    where = shell.address()
    assert where != Path(others["socket"])
    where.symlink_to(others["socket"])
    done = shell.query("BX-4410 bleed the radiator")
    assert shell.found(done) == ["manuals/boiler.txt"]
    assert f"s3sync: {where} is a symlink, not the resident query process's socket; answered here" in done.stderr
    own = shell.running()
    assert own["pid"] != others["pid"] and where.is_socket() and not where.is_symlink()
    assert shell.s3sync("query-server", "stop", "--json").returncode == 0
    # A hard link: a socket of this user's, whose process is this user's; it answers its own path only.
    os.link(others["socket"], where)
    done = shell.query("KT-2093 descale the element")
    assert shell.found(done) == ["manuals/kettle.txt"]
    assert "answers its own socket only, not a link to it; answered here" in done.stderr, done.stderr
    assert shell.running()["pid"] not in {others["pid"], own["pid"]}
    assert other.status()["served"] == others["served"]  # the other process answered none of these
    fault_row.passed = True


def test_the_digest_leaves_out_what_only_a_shell_reads(monkeypatch: pytest.MonkeyPatch, fault_row: Row) -> None:
    """An activated shell and a script (a prompt, PATH, VIRTUAL_ENV, a terminal) got two resident processes of
    365 MB each: only variables an answer may read pick one, and any variable a config may name is one."""
    for name in ("PS1", "PS2", "PROMPT_COMMAND", "VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT", "TERM", "HISTFILE"):
        monkeypatch.delenv(name, raising=False)
    script = resident.address()
    monkeypatch.setenv("PS1", "(.venv) \\u@\\h:\\w\\$ ")
    monkeypatch.setenv("PS2", "> ")
    monkeypatch.setenv("PROMPT_COMMAND", "history -a")
    monkeypatch.setenv("PATH", f"/work/project/.venv/bin:{os.environ.get('PATH', '')}")
    monkeypatch.setenv("VIRTUAL_ENV", "/work/project/.venv")
    monkeypatch.setenv("VIRTUAL_ENV_PROMPT", "(.venv) ")
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("TERM_PROGRAM", "vscode")
    monkeypatch.setenv("HISTFILE", "/root/.bash_history")
    monkeypatch.setenv("LESS", "-R")
    assert resident.address() == script
    for name, value in [
        ("S3SYNC_CONFIG", "/elsewhere/s3sync.yaml"),
        ("AWS_PROFILE", "other"),
        ("CHROMA_SERVER_AUTHN_CREDENTIALS", "token"),
        ("TEAM_CHROMA_TOKEN", "a variable a config names: {env: TEAM_CHROMA_TOKEN}"),
    ]:
        with monkeypatch.context() as changed:
            changed.setenv(name, value)
            assert resident.address() != script, name
    fault_row.passed = True


def postgres_processes(port: int) -> list[int]:
    """The PostgreSQL server listening on `port`: its postmaster and every process it started."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = ((entry / "stat").read_text(), (entry / "cmdline").read_bytes())
            except OSError:
                continue
    (postmaster,) = [
        pid for pid, (_, argv) in stats.items() if b"postgres" in argv and f"-p\0{port}\0".encode() in argv
    ]
    return [postmaster] + [
        pid for pid, (stat, _) in stats.items() if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster
    ]


def test_a_postgresql_lexical_index_that_does_not_answer_fails_the_lexical_side_within_its_bound(
    chroma_server: int, embedding_function: Any, fault_row: Row
) -> None:
    """A server's lexical index in a PostgreSQL that is stopped (SIGSTOP: connections accepted, nothing
    answered) held a query for minutes: its reads give up after READ_TIMEOUT_S, connecting too, and the
    search asks Chroma's filter instead, with the same answer."""
    with postgres_server.running(db_name="frozen") as server:
        dsn = f"postgresql://{server.user}@{server.host}:{server.port}/{server.db_name}"
        client = Store(host="127.0.0.1", port=chroma_server, lexicon_dsn=dsn).client()
        name = f"frozen-{os.getpid()}-{time.time_ns()}"[:60]
        collection = lifecycle.open_collection(
            client, name, embedding_function, metadata={"created_by": "s3sync-dagster"}
        )
        held = lexicon.of(collection)
        assert isinstance(held, PostgresLexicon)
        try:
            texts = {"a": "The parcel QX-7741-B left the warehouse.", "b": "Invoice RB-1020-A was paid."}
            collection.add(ids=list(texts), documents=list(texts.values()), metadatas=[{"k": i} for i in texts])
            assert held.rebuild(collection) == 2 and lexical.indexed(collection) is held
            assert [hit.chunk_id for hit in search.search(collection, "QX-7741-B", mode="lexical", n=1)] == ["a"]
            frozen = postgres_processes(server.port)
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            try:
                # The open connection: the read is cut off; a new one: the handshake is never answered.
                assert held.state(collection) == (
                    f"its lexical index cannot be read: OperationalError: PostgreSQL did not answer within "
                    f"{READ_TIMEOUT_S:g} s"
                )
                assert "timeout expired" in str(held.state(collection))
                hits = search.search(collection, "QX-7741-B", mode="lexical", n=1)  # through Chroma's filter
                assert [hit.chunk_id for hit in hits] == ["a"]
            finally:
                for pid in frozen:
                    os.kill(pid, signal.SIGCONT)
            assert lexical.indexed(collection) is held  # answering again
        finally:
            client.delete_collection(name)
            lexicon.forget_server("127.0.0.1", chroma_server)
            held.close()
    fault_row.passed = True


def test_a_stop_is_answered_before_the_process_leaves_however_its_threads_are_scheduled(
    monkeypatch: pytest.MonkeyPatch, fault_row: Row
) -> None:
    """The reply to `query-server stop` reaches the client before the process may leave, even when the thread
    answering it is slow to send and the thread accepting it slow to list it (a loaded machine): the process's
    threads are daemons, cut off at exit, so `run` must not return before the reply is sent."""
    from s3sync_dagster.commands import resident_server

    control, start = resident_server.Server.control, resident_server.threading.Thread.start

    def slow_control(self: resident_server.Server, action: Any) -> dict[str, Any]:
        status = control(self, action)
        time.sleep(0.5)  # decided to stop, not yet sent: the main thread leaves meanwhile
        return status

    def slow_start(thread: Any) -> None:
        start(thread)
        time.sleep(0.3)  # started, not yet listed by the accepting thread

    monkeypatch.setattr(resident_server.Server, "control", slow_control)
    monkeypatch.setattr(resident_server.threading.Thread, "start", slow_start)
    with tempfile.TemporaryDirectory(prefix="s3r-") as folder:
        where = Path(folder) / "s.sock"
        server = resident_server.Server(where, idle=60.0)
        serving = resident_server.threading.Thread(target=server.run, args=(None,), daemon=True)
        serving.start()
        deadline = time.monotonic() + 30
        while not where.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        answers: list[dict[str, Any]] = []
        client = resident_server.threading.Thread(
            target=lambda: answers.append(resident.consult({"control": "stop"}, where)), daemon=True
        )
        client.start()
        serving.join(30)
        assert not serving.is_alive()
        # `run` returned: the process would exit now. The reply was sent before; the client reads it at once.
        client.join(0.2)
        assert answers and answers[0]["pid"] == os.getpid(), answers
    fault_row.passed = True


@pytest.mark.parametrize("searched", ["embedded"], indirect=True)
@pytest.mark.parametrize("resident_on", ["1", "0"], ids=["resident", "answered here"])
def test_a_closed_pipe_ends_the_command_quietly(shells: list[Shell], resident_on: str) -> None:
    """`s3sync query ... --json | head`: what reads the output is gone before the answer is written. The command
    ends as a Unix tool killed by SIGPIPE does (status 141), with no traceback, whoever answered the query."""
    shell = shells[0]
    shell.extra["S3SYNC_QUERY_SERVER"] = resident_on
    if resident_on == "1":
        shell.query("KT-2093 descale the element")
        shell.running()
    argv = ["query", "manuals", "descale the kettle", "--config", str(shell.config), "-n", "5", "--json"]
    read_end, write_end = os.pipe()
    os.close(read_end)  # `head` has read its lines and left
    try:
        done = subprocess.run(
            [str(BIN / "s3sync"), *argv], stdout=write_end, stderr=subprocess.PIPE, text=True, env=shell.env,
            timeout=300,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr[-2000:]
    if resident_on == "1":
        assert shell.status()["served"] == 2  # the resident process answered it
