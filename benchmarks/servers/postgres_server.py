"""A throw-away PostgreSQL on a loopback port (Debian's binaries), for deploy/dagster.yaml in tests and benchmarks.

PostgreSQL refuses to run as root: when we are root, the server runs as the `postgres` system user that
Debian's package makes, with its data directory in a temporary directory that user owns. Loopback
connections are trusted (a test server: no password to keep).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from s3sync_dagster.commands.demo import LOOPBACK, free_port

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # the newest version first
SYSTEM_USER = "postgres"
DB_USER = "dagster"


@dataclass(frozen=True)
class LocalPostgres:
    host: str
    port: int
    user: str
    db_name: str

    @contextmanager
    def exported(self) -> Iterator[None]:
        """deploy/dagster.yaml's variables in this process's environment (Dagster reads them when an
        instance is made from the file), restored on the way out."""
        with mock.patch.dict(os.environ, self.env()):
            yield

    def env(self) -> dict[str, str]:
        """deploy/dagster.yaml's variables. The password is ignored under trust auth but must be set."""
        return {
            "S3SYNC_POSTGRES_HOST": self.host,
            "S3SYNC_POSTGRES_PORT": str(self.port),
            "S3SYNC_POSTGRES_USER": self.user,
            "S3SYNC_POSTGRES_PASSWORD": "unused-under-trust-auth",
            "S3SYNC_POSTGRES_DB": self.db_name,
        }


def _binary(name: str) -> str:
    for directory in BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"PostgreSQL's {name} is neither in /usr/lib/postgresql/*/bin nor on PATH")
    return found


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def running(db_name: str = "dagster", timeout_s: float = 60.0, host: str = LOOPBACK) -> Iterator[LocalPostgres]:
    """initdb, start, create the database; stopped (immediate shutdown) and removed on the way out.

    On `host` (loopback by default); on another address, hosts of its subnets connect too (trusted)."""
    base = Path(tempfile.mkdtemp(prefix="s3sync-postgres-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SYSTEM_USER)
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, log = base / "data", base / "server.log"
    port = free_port()
    server = LocalPostgres(host, port, DB_USER, db_name)

    def run(argv: list[str]) -> None:
        done = subprocess.run(_as_server_user(argv), capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr[-2000:]}")

    started = False
    try:
        run([_binary("initdb"), "-D", str(data), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
        if host != LOOPBACK:  # initdb trusts loopback only; `samenet`: the subnets the server's addresses are on
            with open(data / "pg_hba.conf", "a") as rules:
                rules.write("host all all samenet trust\n")
        # -k: the Unix socket in our directory, not /var/run/postgresql; fsync off: a test server.
        options = f"-h {host} -p {port} -k {base} -c fsync=off -c full_page_writes=off"
        run(
            [
                _binary("pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout_s)),
                "start",
            ]
        )
        started = True
        run([_binary("createdb"), "-h", host, "-p", str(port), "-U", DB_USER, db_name])
        yield server
    finally:
        if started:
            subprocess.run(
                _as_server_user([_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=timeout_s,
            )
        shutil.rmtree(base, ignore_errors=True)
