"""The resident query process: `s3sync query` answered by a process that keeps the store, the lexical index and
the model open, instead of importing chromadb and loading them again for each query (2-3 s here).

- The `s3sync` command starts in commands/launcher.py. A `query` is sent over a Unix socket to the resident process when one is
  running, and its answer printed: the same output and exit code as a query answered in its own process.
  Nothing else is imported on that path: this module's client half is the standard library only.
- With none running, the query is answered in its own process, which then starts the resident process in the
  background (its own session, no terminal), warmed with that query: the next query finds it. The warm query
  and the socket's path reach it on its standard input, never its command line (`ps` shows any user that).
- One resident process for each user, Python, version of this package and environment: the socket's name is
  a digest of them, so a changed install or environment (S3SYNC_CONFIG, a credential, ...) is never answered
  with another's settings. The digest leaves out what only a shell or terminal reads (`COSMETIC`, `PREFIXES`):
  a prompt, an activated virtual environment's markers and PATH do not change an answer. The socket lives in
  a folder only the user can open ($XDG_RUNTIME_DIR, else the temporary folder: `s3sync-<uid>/`).
- A client asks only a socket the user's own resident process made: the path must be a socket (not a symlink,
  a folder or a file) owned by the user, the process at the other end the user's (SO_PEERCRED), and it must
  say it serves that very path. Anything else is refused (the query answered here) and replaced by the
  resident process started next.
- It never hangs a client: the resident process acknowledges a request at once and, while it works, sends a
  space every HEARTBEAT_S from a thread of its own; a client that hears nothing for ANSWER_WAIT_S (a process
  stopped or frozen) gives up, answers in its own process and says so on one line.
- It reads the config again for each query (a changed file is seen), opens an embedded store again when
  another process wrote to it (commands/query.OpenSearchers), and exits after S3SYNC_QUERY_IDLE_SECONDS
  (default 600) without a query, or when its socket file is removed or replaced.
- S3SYNC_QUERY_SERVER=0 turns it off: every query is answered in its own process. `s3sync query-server
  start|status|stop` starts one ahead of the first query, says whether one is running, or stops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import struct
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
# A client gives up on a resident process it hears nothing from for this long: it acknowledges a request at once
# and then sends a space every HEARTBEAT_S while it works, from a thread of its own, so a silence this long is a
# process stopped or frozen, not a slow query. Seconds, not one: on two busy cores (load 12-18) a thread may wait
# a second or more for one, and giving up by mistake costs a cold query (3 s).
ANSWER_WAIT_S = 5.0
HEARTBEAT_S = 0.5
ANSWER_LIMIT_S = 300.0  # the longest a client waits for one answer, however alive the process says it is
# Variables a shell changes between two commands without changing what a query means: not in the digest.
VOLATILE = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "COLUMNS", "LINES", "PYTEST_CURRENT_TEST", SERVER_ENV})
# The digest's rule: every variable is in it (a config may read any, `{env: VAR}`; chromadb, boto3, the model's
# runtime read theirs) except those only a shell, a terminal or a login session reads, which no query does:
# prompts, terminal and display, history, pagers and editors, SSH's session. An activated virtual environment
# changes PATH, VIRTUAL_ENV and the prompt, none of which an answer reads: the Python and the installed code are
# in the digest as sys.executable and the package's files, and answering a query runs no program found on PATH.
COSMETIC = frozenset(
    {
        "PS1", "PS2", "PS3", "PS4", "PROMPT", "RPROMPT", "RPS1", "PROMPT_COMMAND", "PROMPT_DIRTRIM", "PATH",
        "VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT", "CONDA_PROMPT_MODIFIER", "TERM", "COLORTERM", "COLORFGBG",
        "CLICOLOR", "CLICOLOR_FORCE", "LS_COLORS", "LSCOLORS", "GREP_COLORS", "DISPLAY", "WAYLAND_DISPLAY",
        "XAUTHORITY", "WINDOWID", "WINDOW", "STY", "VTE_VERSION", "EDITOR", "VISUAL", "PAGER", "MANPAGER",
        "MANPATH", "MAIL", "MAILCHECK", "SSH_TTY", "SSH_CLIENT", "SSH_CONNECTION", "SSH_AUTH_SOCK", "SSH_AGENT_PID",
        "GPG_TTY", "DBUS_SESSION_BUS_ADDRESS", "XDG_SESSION_ID", "XDG_SESSION_TYPE", "XDG_SESSION_CLASS",
        "XDG_SESSION_DESKTOP", "XDG_CURRENT_DESKTOP", "XDG_SEAT", "XDG_VTNR", "DESKTOP_SESSION", "INSIDE_EMACS",
    }
)  # fmt: skip
COSMETIC_PREFIXES = ("HIST", "LESS", "TERM_", "TMUX", "ITERM", "KONSOLE_", "GNOME_TERMINAL_", "VSCODE_", "WT_")
PACKAGE = Path(__file__).resolve().parents[1]
# A Unix socket's path may hold 107 bytes on Linux, 103 on macOS: past that, bind() fails and queries are answered
# in their own process.
MAX_SOCKET_PATH = 103


def enabled() -> bool:
    return os.environ.get(SERVER_ENV, "1").strip().lower() not in {"0", "off", "false", "no"}


def folder() -> Path:
    return Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"s3sync-{os.getuid()}"


def changes_answers(name: str) -> bool:
    """Whether the variable `name` is in the digest: all but the volatile and the cosmetic (`COSMETIC`)."""
    return name not in VOLATILE and name not in COSMETIC and not name.startswith(COSMETIC_PREFIXES)


def address() -> Path:
    """The socket of the resident process that answers this process: its user, Python, code and environment."""
    digest = hashlib.sha256()
    digest.update(sys.executable.encode())
    for root, _, names in sorted(os.walk(PACKAGE)):
        for name in sorted(names):
            if name.endswith(".py"):
                stat_ = os.stat(os.path.join(root, name))
                digest.update(f"{root}/{name}:{stat_.st_mtime_ns}:{stat_.st_size}\0".encode())
    for name, value in sorted(os.environ.items()):
        if changes_answers(name):
            digest.update(f"{name}={value}\0".encode("utf-8", "surrogateescape"))
    return folder() / f"{digest.hexdigest()[:20]}.sock"


def _private_folder() -> Path | None:
    """The socket folder, made if missing; None unless it is the user's own and closed to everyone else."""
    path = folder()
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=False)
    stat_ = path.lstat()
    if stat_.st_uid != os.getuid() or stat_.st_mode & 0o077 or not path.is_dir() or path.is_symlink():
        return None
    return path


def refusal(where: Path) -> str | None:
    """Why the path `where` is not a socket this user's resident process made (None: it may be; "" when
    nothing is there): a socket, not a symlink to one, owned by the user."""
    try:
        found = where.lstat()
    except FileNotFoundError:
        return ""
    except OSError as error:
        return f"{where} cannot be read ({error.strerror})"
    if stat.S_ISLNK(found.st_mode):
        return f"{where} is a symlink, not the resident query process's socket"
    if not stat.S_ISSOCK(found.st_mode):
        kind = "a folder" if stat.S_ISDIR(found.st_mode) else "not a socket"
        return f"{where} is {kind}, not the resident query process's socket"
    if found.st_uid != os.getuid():
        return f"{where} belongs to user {found.st_uid}, not to this one"
    return None


def peer_uid(connection: socket.socket) -> int | None:
    """The user id of the process at the other end of a Unix socket (Linux's SO_PEERCRED); None elsewhere."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    _, uid, _ = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    return int(uid)


class Unanswered(Exception):
    """The resident process did not answer; the message says why (empty: none is running, nothing to say)."""


def consult(request: dict[str, Any], where: Path) -> dict[str, Any]:
    """The resident process's answer to `request` over the socket `where`; Unanswered when the path is not its
    socket, nothing answers there, or what does falls silent for ANSWER_WAIT_S."""
    refused = refusal(where)
    if refused is not None:
        raise Unanswered(refused)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(ANSWER_WAIT_S)
            connection.connect(str(where))
            uid = peer_uid(connection)
            if uid is not None and uid != os.getuid():
                raise Unanswered(f"the process at {where} is user {uid}'s, not this one's")
            connection.sendall(json.dumps({**request, "socket": str(where)}).encode() + b"\n")
            connection.shutdown(socket.SHUT_WR)
            answer = _read_answer(connection)
    except (FileNotFoundError, ConnectionRefusedError):
        raise Unanswered("") from None  # a socket left by a process that is gone: one is started again
    except TimeoutError:
        raise Unanswered(f"the resident query process did not answer within {ANSWER_WAIT_S:g} s") from None
    except OSError as error:
        raise Unanswered(f"the resident query process could not be asked ({error.strerror or error})") from None
    try:
        result = json.loads(answer)
    except ValueError:
        raise Unanswered("the resident query process's answer was cut short") from None
    if not isinstance(result, dict):
        raise Unanswered("the resident query process answered something else")
    if "refused" in result:
        raise Unanswered(str(result["refused"]))
    return result


def _read_answer(connection: socket.socket) -> bytes:
    """The bytes until the other end closes, the spaces of its heartbeat among them; TimeoutError after a
    silence of ANSWER_WAIT_S, or ANSWER_LIMIT_S in all."""
    deadline = time.monotonic() + ANSWER_LIMIT_S
    parts = []
    while part := connection.recv(65536):
        parts.append(part)
        if time.monotonic() > deadline:
            raise TimeoutError
    return b"".join(parts)


def ask(request: dict[str, Any], where: Path | None = None) -> dict[str, Any] | None:
    """The resident process's answer to `request`, or None when none is running (or it failed to answer)."""
    try:
        return consult(request, where or address())
    except Unanswered:
        return None


def start(where: Path, environment: dict[str, str], warm: Sequence[str] | None = None) -> bool:
    """Start the resident process of socket `where` in the background, in `environment` (the one `where` is the
    digest of), warmed with the query `warm` if given; False when it cannot be (a socket folder that is not
    the user's alone, a socket path too long to bind). Its command line names nothing: the socket and the warm
    query go to it on its standard input."""
    if _private_folder() is None or len(os.fsencode(where)) > MAX_SOCKET_PATH:
        return False
    handover = {"socket": str(where), "warm": {"argv": list(warm), "cwd": os.getcwd()} if warm else None}
    log = open(where.with_suffix(".log"), "ab")  # noqa: SIM115 -- handed to the child, closed here after
    try:
        command = [sys.executable, "-m", "s3sync_dagster.commands.resident_server"]
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=log, stderr=log, env=environment, start_new_session=True,
            close_fds=True,
        )  # fmt: skip
    finally:
        log.close()
    assert child.stdin is not None
    with contextlib.suppress(BrokenPipeError), child.stdin:
        child.stdin.write(json.dumps(handover).encode())
    return True


_launched: tuple[dict[str, str], Path] | None = None  # the environment `s3sync` started in, and its socket


def launched(environment: dict[str, str], where: Path) -> tuple[dict[str, str], Path]:
    """Note the environment the `s3sync` command started in, and its socket, before the command runs: importing
    it, and running it, may set variables (S3SYNC_CONFIG, the model runtime's OMP_WAIT_POLICY)."""
    global _launched
    _launched = environment, where
    return _launched


def control(action: str) -> dict[str, Any]:
    """`s3sync query-server start|status|stop`: what the resident process for this environment says; never
    longer than ANSWER_WAIT_S for one that does not answer."""
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
    try:
        status = consult({"control": "stop" if action == "stop" else "status"}, where)
    except Unanswered as unanswered:
        return {"running": False, "socket": str(where), **({"why": str(unanswered)} if str(unanswered) else {})}
    return {"running": action != "stop", **status}
