"""The resident query process (commands/resident.py): started in the background by `s3sync query`, it answers
the queries sent to its socket with the store and the model kept open, one at a time, until idle.

Its command line is `python -m s3sync_dagster.commands.resident_server` and nothing more: the socket's path and
the warm query come on its standard input. The main thread answers queries, one at a time; a thread accepts
connections and one a connection checks the caller (the user's own, asking for this very socket), answers a
status or a stop at once, and sends a space every HEARTBEAT_S while its query waits or runs, so that a client
can tell a process at work from one that is frozen (resident.ANSWER_WAIT_S)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import queue
import shutil
import socket
import stat
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3sync_dagster.commands import cli
from s3sync_dagster.commands.resident import DEFAULT_IDLE_SECONDS, HEARTBEAT_S, IDLE_ENV, peer_uid
from s3sync_dagster.commands.subcommands import keep_searchers_open

LOCK_WAIT_S = 10.0  # a process whose socket was replaced leaves within a second: its successor waits this long
REQUEST_WAIT_S = 10.0  # for a client to send its request once connected
REPLY_WAIT_S = 5.0  # for the replies being sent when the process leaves (a stop's own) to reach their clients


@dataclass
class Pending:
    """A query handed from its connection's thread to the main thread, and its reply."""

    request: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] = field(default_factory=dict)
    abandoned: bool = False  # its client went away before it was answered


class Server:
    """The resident process: answers one query at a time on its socket until idle."""

    def __init__(self, where: Path, idle: float) -> None:
        self.where = where
        self.idle = idle
        self.started = time.time()
        self.served = 0
        self.last = time.monotonic()
        self.stopping = False
        self.inode = -1
        self.queries: queue.Queue[Pending | None] = queue.Queue()
        self.conversations: list[threading.Thread] = []  # each client's thread: their replies are sent before exit

    def run(self, warm: dict[str, Any] | None) -> None:
        # One process a socket: the lock is held for the process's life, so a second one started at the same
        # moment leaves, and a socket file left by a process that died is replaced.
        with open(self.where.with_suffix(".lock"), "w") as lock:
            if not _locked(lock, LOCK_WAIT_S):
                return
            keep_searchers_open()
            if warm:
                self.answer(warm)
            _clear(self.where)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
                listener.bind(str(self.where))
                self.inode = self.where.lstat().st_ino
                listener.listen(16)
                threading.Thread(target=self.accept, args=(listener,), daemon=True).start()
                try:
                    self.work()
                finally:
                    self.stopping = True
                    if self._same_socket():
                        self.where.unlink()
                    self.release()
                    self.finish_conversations()

    def work(self) -> None:
        """Answer the queries the connections hand over, one at a time, until stopped, idle or replaced."""
        while not self.stopping and self._same_socket() and time.monotonic() - self.last < self.idle:
            try:
                pending = self.queries.get(timeout=1.0)
            except queue.Empty:
                continue
            if pending is not None and not pending.abandoned:
                pending.reply = self.answer(pending.request)
            if pending is not None:
                pending.done.set()
            self.last = time.monotonic()

    def finish_conversations(self) -> None:
        """Let the replies being sent (a `stop`'s own, those release() gave) reach their clients before the
        process leaves: its threads are daemons, cut off at exit. Bounded: a client that reads nothing is not
        waited for past REPLY_WAIT_S."""
        deadline = time.monotonic() + REPLY_WAIT_S
        for thread in list(self.conversations):
            while thread.ident is None and time.monotonic() < deadline:  # listed, about to start
                time.sleep(0.01)
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def release(self) -> None:
        """Tell the clients still waiting that their query will not be answered here (they answer it)."""
        while True:
            try:
                pending = self.queries.get_nowait()
            except queue.Empty:
                return
            if pending is not None:
                pending.reply = {"refused": "the resident query process stopped before answering"}
                pending.done.set()

    def accept(self, listener: socket.socket) -> None:
        while not self.stopping:
            try:
                connection, _ = listener.accept()
            except OSError:  # the listener closed: the process is leaving
                return
            self.last = time.monotonic()
            conversation = threading.Thread(target=self.converse, args=(connection,), daemon=True)
            # Listed before it starts: a stop it answers ends the main thread, which must find it to wait for.
            self.conversations = [thread for thread in self.conversations if thread.is_alive()] + [conversation]
            conversation.start()

    def converse(self, connection: socket.socket) -> None:
        """One client: checked, answered (a query by the main thread, with a heartbeat meanwhile)."""
        with connection:
            try:
                connection.settimeout(REQUEST_WAIT_S)
                request = json.loads(connection.makefile("rb").readline())
                why = self.refusal(connection, request)
                if why:
                    reply = {"refused": why}
                elif "control" in request:
                    reply = self.control(request["control"])
                else:
                    reply = self.wait_for(connection, Pending(request))
                connection.sendall(json.dumps(reply).encode())
            except (OSError, ValueError, AttributeError) as error:
                print(f"s3sync query-server: a request failed: {type(error).__name__}", file=sys.__stderr__)

    def refusal(self, connection: socket.socket, request: Any) -> str | None:
        """Why this client is not answered: another user's process, or a request for another socket (a link to
        this one from another environment's path)."""
        uid = peer_uid(connection)
        if uid is not None and uid != os.getuid():
            return f"the resident query process answers user {os.getuid()} only"
        if not isinstance(request, dict) or request.get("socket") != str(self.where):
            return "the resident query process answers its own socket only, not a link to it"
        return None

    def wait_for(self, connection: socket.socket, pending: Pending) -> dict[str, Any]:
        """Hand the query to the main thread: a space to the client at once (received; and a client that has
        gone is not answered) and every HEARTBEAT_S until it is answered."""
        connection.sendall(b" ")
        self.queries.put(pending)
        while not pending.done.wait(HEARTBEAT_S):
            try:
                connection.sendall(b" ")
            except OSError:
                pending.abandoned = True
                raise
        return pending.reply

    def control(self, action: Any) -> dict[str, Any]:
        status = {"pid": os.getpid(), "socket": str(self.where), "served": self.served, "since": self.started}
        if action == "stop":
            self.stopping = True
            if self._same_socket():  # gone before the caller hears it stopped: the next client starts anew
                self.where.unlink()
            self.queries.put(None)
        return status

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        self.served += 1
        return run_command(request["argv"], request["cwd"])

    def _same_socket(self) -> bool:
        try:
            return self.where.lstat().st_ino == self.inode
        except FileNotFoundError:
            return False


def _locked(lock: Any, patience: float) -> bool:
    """Take the socket's lock, waiting up to `patience` seconds for a process that is leaving."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def _clear(where: Path) -> None:
    """Remove whatever is at the socket's path (the lock is ours: no live process of ours serves it): a socket
    left by a process that died, or what is not ours to answer, a folder or a symlink to another socket."""
    try:
        found = where.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(found.st_mode):
        print(f"s3sync query-server: {where} was a folder, not a socket: replaced", file=sys.stderr)
        shutil.rmtree(where)
    else:
        if not stat.S_ISSOCK(found.st_mode):
            print(f"s3sync query-server: {where} was not a socket: replaced", file=sys.stderr)
        where.unlink()


def run_command(argv: Sequence[str], cwd: str) -> dict[str, Any]:
    """`s3sync argv` as run in `cwd`, its output captured: the working directory and the environment (which
    the command may set, e.g. S3SYNC_CONFIG) are as they were afterwards."""
    environment, here = dict(os.environ), os.getcwd()
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.main(list(argv))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:  # the caller's failure, told as Python tells it there; not the resident process's
                traceback.print_exc()
                code = 1
    except OSError as error:
        return {"code": 2, "stdout": "", "stderr": f"s3sync: {error}\n"}
    finally:
        os.environ.clear()
        os.environ.update(environment)
        os.chdir(here)
    return {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def handed_over() -> tuple[Path, dict[str, Any] | None]:
    """The socket's path and the warm query, read from standard input (then closed: /dev/null in its place)."""
    handover = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return Path(handover["socket"]), handover.get("warm")


if __name__ == "__main__":
    where, warm = handed_over()
    Server(where, float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_SECONDS))).run(warm)
