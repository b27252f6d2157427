"""`s3sync demo`: a local S3 endpoint, a bundled sample, a sync into embedded Chroma, and one query."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from importlib import resources as package_files
from pathlib import Path
from typing import Any

import yaml

from s3sync_dagster.commands.errors import UsageError
from s3sync_dagster.pipeline import extras

DEMO_BUCKET = "s3sync-demo"
DEMO_PREFIX = "samples/"
DEMO_SOURCE = "demo"
DEMO_COLLECTION = "s3sync-demo"
DEMO_QUERY = "what happens to the chunks of an object that changed?"
# moto accepts any credentials; they are handed over through the environment like real ones.
DEMO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "s3sync-demo", "AWS_SECRET_ACCESS_KEY": "s3sync-demo-secret"}


def sample_files() -> dict[str, bytes]:
    """The bundled sample, as object key -> bytes."""
    root = package_files.files("s3sync_dagster.commands") / "demo_data"
    found: dict[str, bytes] = {}

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                # Not bytecode: pip compiles the sample's Python file when it installs the package (and set-up does
                # here), into a __pycache__ beside it.
                if child.name != "__pycache__":
                    walk(child, f"{prefix}{child.name}/")
            elif not child.name.startswith("."):
                found[f"{DEMO_PREFIX}{prefix}{child.name}"] = child.read_bytes()

    walk(root, "")
    return dict(sorted(found.items()))


def write_config(workdir: Path, endpoint_url: str) -> Path:
    config = {
        "chroma": {"path": "chroma"},
        "sources": [
            {
                "name": DEMO_SOURCE,
                "bucket_name": DEMO_BUCKET,
                "region": "us-east-1",
                "collection_name": DEMO_COLLECTION,
                "endpoint_url": endpoint_url,
                "aws_access_key_id": {"env": "AWS_ACCESS_KEY_ID"},
                "aws_secret_access_key": {"env": "AWS_SECRET_ACCESS_KEY"},
                "path_prefix": DEMO_PREFIX,
            }
        ],
    }
    path = workdir / "s3sync.yaml"
    path.write_text("# Written by `s3sync demo`.\n" + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def upload_sample(endpoint_url: str) -> int:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    if DEMO_BUCKET not in existing:
        s3.create_bucket(Bucket=DEMO_BUCKET)
    files = sample_files()
    for object_key, body in files.items():
        s3.put_object(Bucket=DEMO_BUCKET, Key=object_key, Body=body)
    return len(files)


def run_demo(workdir: str, ui: bool = False, as_json: bool = False) -> int:
    # Its local S3 endpoint (moto's server) and the UI it can start are the [demo] extra, not the runtime's.
    extras.require("demo", "s3sync demo", UsageError)
    import dagster as dg

    import s3sync_dagster.commands.demo.local_s3 as local_s3
    from s3sync_dagster.commands.runs import discover, sync
    from s3sync_dagster.config import load_config, require_instance_extras

    def say(message: str) -> None:
        if not as_json:
            print(message, flush=True)

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for name, value in DEMO_CREDENTIALS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("DAGSTER_HOME", str(work / "dagster"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    require_instance_extras()  # before the endpoint starts: an extra the instance needs, with its pip command

    server = local_s3.start()
    try:
        say(f"local S3 endpoint (moto server) on {server.endpoint_url}")
        uploaded = upload_sample(server.endpoint_url)
        say(f"uploaded {uploaded} sample objects to s3://{DEMO_BUCKET}/{DEMO_PREFIX}")
        config_file = write_config(work, server.endpoint_url)
        config = load_config(config_file)
        with dg.DagsterInstance.get() as instance:
            found = discover(config, DEMO_SOURCE, instance)
            say(f"discovered {found.listed} objects, {found.new} new partitions")
            result = sync(config, DEMO_SOURCE, instance)
        counts: dict[str, int] = {}
        for report in result.reports:
            counts[report["status"]] = counts.get(report["status"], 0) + 1
        say(
            f"synced {len(result.reports)} keys in {len(result.runs)} Dagster run(s), {result.duration_s:.1f} s: "
            + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        )
        answer = _query(config_file)
        say(f"\nquery: {DEMO_QUERY!r}")
        for rank, hit in enumerate(answer["results"], 1):  # each hit's passage: what of it answers
            say(f"{rank}. {hit['object_key']} lines {hit['start_line']}-{hit['end_line']}")
            for line in str(hit["passage"]).splitlines():
                say(f"   {line}")
        if as_json:
            print(json.dumps({"sync": counts, "runs": len(result.runs), "query": answer}, indent=2, default=str))
        if result.failed:
            return 1
        if ui:
            _serve_ui(config_file)
        else:
            say(
                "\nThe runs and the indexed keys are in the Dagster instance at "
                f"{os.environ['DAGSTER_HOME']}.\nTo open the Dagster UI over the same data "
                "(S3 stays up while it runs): ./scripts/demo --ui   then browse http://127.0.0.1:3000"
            )
        return 0
    finally:
        server.stop()
        say("stopped the local S3 endpoint")


def _query(config_file: Path) -> dict[str, Any]:
    """The demo's question, asked as `s3sync query` asks it (hybrid: by meaning and by its words)."""
    from s3sync_dagster.commands.query import search_source
    from s3sync_dagster.config import load_config

    hits = search_source(DEMO_SOURCE, DEMO_QUERY, n=3, config=load_config(config_file))
    return {
        "query": DEMO_QUERY,
        "mode": "hybrid",
        "results": [
            {
                "object_key": hit.metadata.get("object_key"),
                "start_line": hit.metadata.get("start_line"),
                "end_line": hit.metadata.get("end_line"),
                "document": hit.document,
                "passage": hit.passage,
            }
            for hit in hits
        ],
    }


def _serve_ui(config_file: Path) -> None:
    env = dict(os.environ, S3SYNC_CONFIG=str(config_file))
    command = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-m",
        "s3sync_dagster.definitions",
        "-h",
        "127.0.0.1",
        "-p",
        "3000",
    ]
    print("starting the Dagster UI on http://127.0.0.1:3000 (Ctrl-C stops it and the local S3 endpoint)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        subprocess.run(command, env=env, check=False)
