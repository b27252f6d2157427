"""The Dagster home the `s3sync` command runs in: where it is, which one and why said in words, one process at a
time setting it up, and a warning once for the instance settings the sources rely on."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from s3sync_dagster.config import config_file, require_instance_extras, state_dir


def ensure_dagster_home(explicit_config: str | None = None) -> Path:
    """`$DAGSTER_HOME`, else `.s3sync/dagster` beside the config file (a component's: in the project's root), so
    runs land where the UI looks."""
    home = os.environ.get("DAGSTER_HOME")
    config = Path(explicit_config) if explicit_config else config_file()
    path = Path(home) if home else state_dir(config) / ".s3sync" / "dagster"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def home_in_words(home: Path, from_variable: bool, component: bool) -> str:
    """Which Dagster home the command read, why, and how the UI shares it: its keys, runs and partitions are that
    home's, and `dg dev` (or `dagster dev`) without DAGSTER_HOME uses a temporary one of its own."""
    if from_variable:
        return f"Dagster home: {home} (DAGSTER_HOME)"
    where = "in the shell, or in the Dagster project's .env (dg and s3sync both read it)"
    where = where if component else "in the shell where both run"
    return (
        f"Dagster home: {home} (DAGSTER_HOME is not set: s3sync's default, .s3sync/dagster beside the "
        f"{'Dagster project' if component else 'config file'}). `dg dev` and `dagster dev` without DAGSTER_HOME "
        "use a temporary home of their own, removed when they stop, so the UI and s3sync see different keys, runs "
        f"and partitions: to share this one, set DAGSTER_HOME={home} {where}"
    )


@contextlib.contextmanager
def home_lock(home: str | os.PathLike[str]) -> Iterator[None]:
    """One s3sync process at a time sets up a Dagster home's databases or registers partitions in it.

    Neither is atomic across processes on SQLite: two `s3sync sync` started together on a fresh home
    both create and stamp its databases (IntegrityError on alembic_version, "table secondary_indexes
    already exists"), and both read the registered keys, then insert the same new ones
    (IntegrityError on the partitions' unique index).
    """
    Path(home).mkdir(parents=True, exist_ok=True)
    with open(Path(home) / ".s3sync-setup.lock", "a") as handle:  # appended to, never truncated: no write
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_instance(explicit_config: str | None = None) -> dg.DagsterInstance:
    """The instance in `ensure_dagster_home()`, its databases created by one process at a time; an extra its
    dagster.yaml needs and this install lacks (`storage: postgres`) named with its pip command first."""
    home = ensure_dagster_home(explicit_config)
    require_instance_extras(home)
    with home_lock(home):
        instance = dg.DagsterInstance.get()
        warn_of_missing_settings(instance, home)
        return instance


# The instance settings the sources rely on (this repository's dagster.yaml; docs/install.md, step 4), each
# with the snippet that gives it.
RELIED_ON = {
    "run_retries": "run_retries: {enabled: true, max_retries: 2, retry_on_asset_or_op_failure: false}",
    "run_monitoring": "run_monitoring: {enabled: true, start_timeout_seconds: 180, poll_interval_seconds: 30}",
    "run_queue.dequeue_interval_seconds": "run_queue: {dequeue_use_threads: true, dequeue_interval_seconds: 1}",
}
WARNED_FILE = ".s3sync-settings-warned"


def missing_settings(instance: dg.DagsterInstance) -> list[str]:
    """The settings of RELIED_ON the instance lacks: a run whose process died would not be retried, one whose
    worker never came up would stay STARTING, a queued run would wait up to 5 s to start."""
    missing = []
    if not instance.run_retries_enabled:
        missing.append("run_retries")
    if not instance.run_monitoring_enabled:
        missing.append("run_monitoring")
    dequeue = getattr(instance.run_coordinator, "dequeue_interval_seconds", None)
    if dequeue is not None and dequeue > 1:
        missing.append("run_queue.dequeue_interval_seconds")
    return missing


def warn_of_missing_settings(instance: dg.DagsterInstance, home: Path) -> None:
    """Once per home and set of missing settings (a file in the home remembers it): which, and what to copy."""
    missing = missing_settings(instance)
    marker = home / WARNED_FILE
    said = ",".join(missing)
    if not missing or (marker.is_file() and marker.read_text(encoding="utf-8") == said):
        return
    lines = [f"s3sync: warning: the Dagster instance in {home} lacks {', '.join(missing)}; add to {home}/dagster.yaml:"]
    lines += [f"  {RELIED_ON[name]}" for name in missing]
    lines.append("  (docs/install.md, step 4; this warning is shown once)")
    print("\n".join(lines), file=sys.stderr)
    with contextlib.suppress(OSError):
        marker.write_text(said, encoding="utf-8")
