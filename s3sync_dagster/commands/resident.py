"""The resident query process: `s3sync query` answered by a process that keeps the store, the lexical index and
the model open, instead of importing chromadb and loading them again for each query (2-3 s here).

- The `s3sync` command starts in commands/launcher.py. A `query` is sent over a Unix socket to the resident process when one is
  running, and its answer printed: the same output and exit code as a query answered in its own process.
  Nothing else is imported on that path: this module's client half is the standard library only.
- With none running, the query is answered in its own process, which then starts the resident process in the
  background (its own session, no terminal), warmed with that query: the next query finds it.
- One resident process for each user, Python, version of this package and environment: the socket's name is
  a digest of them, so a changed install or environment (S3SYNC_CONFIG, a credential, ...) is never answered
  with another's settings. The socket lives in a folder only the user can open ($XDG_RUNTIME_DIR, else the
  temporary folder: `s3sync-<uid>/`).
- It reads the config again for each query (a changed file is seen), opens an embedded store again when
  another process wrote to it (commands/query.OpenSearchers), and exits after S3SYNC_QUERY_IDLE_SECONDS
  (default 600) without a query, or when its socket file is removed.
- S3SYNC_QUERY_SERVER=0 turns it off: every query is answered in its own process. `s3sync query-server
  start|status|stop` starts one ahead of the first query, says whether one is running, or stops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SERVER_ENV = "S3SYNC_QUERY_SERVER"
IDLE_ENV = "S3SYNC_QUERY_IDLE_SECONDS"
DEFAULT_IDLE_SECONDS = 600.0
START_WAIT_SECONDS = 120.0  # how long `s3sync query-server start` waits for the first answer
# Variables a shell changes between two commands without changing what a query means: not in the digest.
VOLATILE = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "COLUMNS", "LINES", "PYTEST_CURRENT_TEST", SERVER_ENV})
PACKAGE = Path(__file__).resolve().parent.parent
# A Unix socket's path may hold 107 bytes on Linux, 103 on macOS: past that, bind() fails and queries are answered
# in their own process.
MAX_SOCKET_PATH = 103


def enabled() -> bool:
    return os.environ.get(SERVER_ENV, "1").strip().lower() not in {"0", "off", "false", "no"}


def folder() -> Path:
    return Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"s3sync-{os.getuid()}"


def address() -> Path:
    """The socket of the resident process that answers this process: its user, Python, code and environment."""
    digest = hashlib.sha256()
    digest.update(sys.executable.encode())
    for root, _, names in sorted(os.walk(PACKAGE)):
        for name in sorted(names):
            if name.endswith(".py"):
                stat = os.stat(os.path.join(root, name))
                digest.update(f"{root}/{name}:{stat.st_mtime_ns}:{stat.st_size}\0".encode())
    for name, value in sorted(os.environ.items()):
        if name not in VOLATILE:
            digest.update(f"{name}={value}\0".encode("utf-8", "surrogateescape"))
    return folder() / f"{digest.hexdigest()[:20]}.sock"


def _private_folder() -> Path | None:
    """The socket folder, made if missing; None unless it is the user's own and closed to everyone else."""
    path = folder()
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=False)
    stat = path.lstat()
    if stat.st_uid != os.getuid() or stat.st_mode & 0o077 or not path.is_dir() or path.is_symlink():
        return None
    return path


def ask(request: dict[str, Any], where: Path | None = None, timeout: float = 300.0) -> dict[str, Any] | None:
    """The resident process's answer to `request`, or None when none is running (or it failed to answer)."""
    where = where or address()
    if not where.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(str(where))
            connection.sendall(json.dumps(request).encode() + b"\n")
            connection.shutdown(socket.SHUT_WR)
            answer = connection.makefile("rb").read()
        result = json.loads(answer)
        return result if isinstance(result, dict) else None
    except (OSError, ValueError):
        return None


def start(where: Path, environment: dict[str, str], warm: Sequence[str] | None = None) -> bool:
    """Start the resident process of socket `where` in the background, in `environment` (the one `where` is the
    digest of), warmed with the query `warm` if given; False when it cannot be (a socket folder that is not
    the user's alone, a socket path too long to bind)."""
    if _private_folder() is None or len(os.fsencode(where)) > MAX_SOCKET_PATH:
        return False
    log = open(where.with_suffix(".log"), "ab")  # noqa: SIM115 -- handed to the child, closed here after
    try:
        command = [
            sys.executable,
            "-m",
            "s3sync_dagster.commands.resident_server",
            str(where),
            json.dumps(list(warm or [])),
        ]
        subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=environment, start_new_session=True,
            close_fds=True,
        )  # fmt: skip
    finally:
        log.close()
    return True


_launched: tuple[dict[str, str], Path] | None = None  # the environment `s3sync` started in, and its socket


def launched(environment: dict[str, str], where: Path) -> tuple[dict[str, str], Path]:
    """Note the environment the `s3sync` command started in, and its socket, before the command runs: importing
    it, and running it, may set variables (S3SYNC_CONFIG, the model runtime's OMP_WAIT_POLICY)."""
    global _launched
    _launched = environment, where
    return _launched


def control(action: str) -> dict[str, Any]:
    """`s3sync query-server start|status|stop`: what the resident process for this environment says."""
    if not enabled():
        return {"running": False, "why": f"{SERVER_ENV} turns it off"}
    environment, where = _launched or (dict(os.environ), address())
    if action == "start" and ask({"control": "status"}, where) is None:
        if not start(where, environment):
            if len(os.fsencode(where)) > MAX_SOCKET_PATH:
                why = f"the socket path {where} is longer than {MAX_SOCKET_PATH} bytes: set XDG_RUNTIME_DIR shorter"
            else:
                why = f"{folder()} is not this user's alone"
            return {"running": False, "why": why}
        deadline = time.monotonic() + START_WAIT_SECONDS
        while ask({"control": "status"}, where) is None and time.monotonic() < deadline:
            time.sleep(0.1)
    status = ask({"control": "stop" if action == "stop" else "status"}, where)
    if status is None:
        return {"running": False, "socket": str(where)}
    return {"running": action != "stop", **status}
