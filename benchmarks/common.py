"""What every benchmark shares: a moto server, a bucket filled in parallel, a config file, the machine."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import yaml

REPO = Path(__file__).resolve().parent.parent
# The production instance (docs/deployment.md, "Production instance").
DEPLOY_SETTINGS = REPO / "deploy" / "dagster.yaml"
BIN = Path(sys.executable).parent
KEY_ID_VAR, SECRET_VAR = "S3SYNC_BENCH_KEY_ID", "S3SYNC_BENCH_SECRET"


def log(message: str) -> None:
    """A benchmark's progress line, stamped with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def credentials() -> None:
    """Moto takes any credentials; they reach the code through variables, as a user's would."""
    os.environ.setdefault(KEY_ID_VAR, "bench-key-id")
    os.environ.setdefault(SECRET_VAR, "bench-secret")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", os.environ[KEY_ID_VAR])
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", os.environ[SECRET_VAR])
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def s3_client(endpoint_url: str) -> Any:
    credentials()
    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")


def fill_bucket(s3: Any, bucket: str, objects: Mapping[str, bytes], threads: int = 16) -> None:
    s3.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket=bucket, Key=item[0], Body=item[1]), objects.items()))


def write_config(
    path: Path,
    endpoint_url: str,
    bucket: str,
    chroma_path: Path,
    source: str = "bench",
    prefix: str = "",
    **settings: Any,
) -> Path:
    entry: dict[str, Any] = {
        "name": source,
        "bucket_name": bucket,
        "region": "us-east-1",
        "collection_name": f"{source}-chunks",
        "endpoint_url": endpoint_url,
        "path_prefix": prefix,
        "aws_access_key_id": {"env": KEY_ID_VAR},
        "aws_secret_access_key": {"env": SECRET_VAR},
    }
    entry.update(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"chroma": {"path": str(chroma_path)}, "sources": [entry]}))
    return path


def dagster_home(path: Path, settings: Path = REPO / "dagster.yaml") -> Path:
    """An instance with the project's settings (run queue, retries), as scripts/setup makes one; or with
    `settings=DEPLOY_SETTINGS`, the production instance's (PostgreSQL storage, deploy/dagster.yaml)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text(settings.read_text())
    return path


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def spread(values: list[float]) -> str:
    """How noisy repeated figures were: (max - min) / median."""
    if len(values) < 2:
        return "one run"
    return f"{(max(values) - min(values)) / statistics.median(values) * 100:.0f}% spread over {len(values)} runs"


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.0f} GB"
    except (OSError, ValueError, IndexError):
        pass
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": memory,
        "python": platform.python_version(),
        "os": platform.platform(),
        "commit": git.strip() or "unknown",
    }


def snapshot(revision: str, into: Path) -> Path:
    """The repository's files at ``revision`` (an earlier commit), to run its engine as "before"."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def sensor_tick(sensor: Any, context: Any) -> Any:
    """One tick of a sensor as the daemon evaluates it (SensorDefinition.evaluate_tick: its resources taken from
    the context by key), as a dagster SensorResult. Calling the sensor directly would pass each required resource
    as a keyword argument, which our sensors, asking for theirs by configured key, do not take."""
    import dagster as dg

    data = sensor.evaluate_tick(context)
    return dg.SensorResult(
        run_requests=list(data.run_requests or []),
        cursor=data.cursor,
        dynamic_partitions_requests=list(data.dynamic_partitions_requests or []),
        skip_reason=None if data.run_requests else data.skip_message,
    )


def stop_group(process: subprocess.Popen[Any], grace_s: float = 30.0) -> None:
    """Stop a process started in a session of its own (a daemon and the code servers and runs under it): SIGTERM to
    its group, then SIGKILL after `grace_s`."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
