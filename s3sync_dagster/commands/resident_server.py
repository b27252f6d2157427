"""The resident query process (commands/resident.py): started in the background by `s3sync query`, it answers
the queries sent to its socket with the store and the model kept open, one at a time, until idle."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s3sync_dagster.commands import cli
from s3sync_dagster.commands.resident import DEFAULT_IDLE_SECONDS, IDLE_ENV


class Server:
    """The resident process: answers one request at a time on its socket until idle."""

    def __init__(self, where: Path, idle: float) -> None:
        self.where = where
        self.idle = idle
        self.started = time.time()
        self.served = 0
        self.last = time.monotonic()
        self.stopping = False

    def run(self, warm: Sequence[str]) -> None:
        # One process a socket: the lock is held for the process's life, so a second one started at the same
        # moment leaves, and a socket file left by a process that died is replaced.
        with open(self.where.with_suffix(".lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            cli.keep_searchers_open()
            if warm:
                self.answer({"argv": list(warm), "cwd": os.getcwd()})
            with contextlib.suppress(FileNotFoundError):
                self.where.unlink()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
                listener.bind(str(self.where))
                inode = self.where.stat().st_ino
                listener.listen(16)
                listener.settimeout(1.0)
                try:
                    self.serve(listener, inode)
                finally:
                    if self._same_socket(inode):
                        self.where.unlink()

    def serve(self, listener: socket.socket, inode: int) -> None:
        while not self.stopping and self._same_socket(inode) and time.monotonic() - self.last < self.idle:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(60)
                try:
                    request = json.loads(connection.makefile("rb").readline())
                    reply = self.answer(request)
                    connection.sendall(json.dumps(reply).encode())
                except (OSError, ValueError) as error:
                    print(f"s3sync query-server: a request failed: {type(error).__name__}", file=sys.stderr)
            self.last = time.monotonic()

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request.get("control")
        if action is not None:
            self.stopping = action == "stop"
            return {"pid": os.getpid(), "socket": str(self.where), "served": self.served, "since": self.started}
        self.served += 1
        return run_command(request["argv"], request["cwd"])

    def _same_socket(self, inode: int) -> bool:
        try:
            return self.where.stat().st_ino == inode
        except FileNotFoundError:
            return False


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


if __name__ == "__main__":
    where, warm = Path(sys.argv[1]), json.loads(sys.argv[2])
    Server(where, float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_SECONDS))).run(warm)
