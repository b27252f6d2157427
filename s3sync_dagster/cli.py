"""The `s3sync` command: list sources, discover keys, sync through Dagster, query, and run the demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from s3sync_dagster.config import AppConfig, ConfigError, load_config
from s3sync_dagster.pipeline.objects import ObjectError
from s3sync_dagster.runner import UsageError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)


def _config(args: argparse.Namespace) -> AppConfig:
    return load_config(args.config)


def cmd_sources(args: argparse.Namespace) -> int:
    config = _config(args)
    rows = [
        {
            "name": s.name,
            "bucket_name": s.bucket_name,
            "region": s.region,
            "path_prefix": s.path_prefix,
            "collection_name": s.collection_name,
            "endpoint_url": s.endpoint_url,
            "chunking": s.chunking.model_dump(),
            "credentials": "environment" if s.aws_access_key_id else "default AWS credential chain",
        }
        for s in config.sources
    ]
    lines = [f"{r['name']}: s3://{r['bucket_name']}/{r['path_prefix']} -> {r['collection_name']}" for r in rows]
    _emit(args, {"sources": rows}, "\n".join(lines) or "no sources configured")
    return EXIT_OK


def _instance(args: argparse.Namespace) -> Any:
    import dagster as dg

    from s3sync_dagster.runner import ensure_dagster_home

    ensure_dagster_home(args.config)
    return dg.DagsterInstance.get()


def cmd_discover(args: argparse.Namespace) -> int:
    from s3sync_dagster.runner import discover

    config = _config(args)
    config.source(args.source)
    with _instance(args) as instance:
        result = discover(config, args.source, instance)
    payload = asdict(result)
    payload["new_keys_truncated"] = len(result.new_keys) > 1000
    payload["new_keys"] = payload["new_keys"][:1000]
    _emit(
        args,
        payload,
        f"source '{result.source}': {result.listed} object(s) listed, {result.new} new partition(s) registered, "
        f"{result.registered} registered in all, {result.missing} registered but no longer in the bucket",
    )
    return EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    from s3sync_dagster.runner import discover, sync

    config = _config(args)
    config.source(args.source)
    if args.all == bool(args.key):
        raise UsageError("give --key KEY (repeatable) or --all, not both")
    with _instance(args) as instance:
        if args.all:
            discover(config, args.source, instance)
        result = sync(config, args.source, instance, None if args.all else args.key, batch_size=args.batch_size)
    counts: dict[str, int] = {}
    for report in result.reports:
        counts[report["status"]] = counts.get(report["status"], 0) + 1
    payload = {
        "source": result.source,
        "runs": [asdict(run) for run in result.runs],
        "counts": counts,
        "failed": result.failed,
        "duration_s": round(result.duration_s, 3),
        "keys": result.reports,
    }
    lines = [
        f"source '{result.source}': {len(result.reports)} key(s) in {len(result.runs)} run(s), "
        f"{result.duration_s:.1f} s: "
        + (", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to do")
    ]
    lines += [f"  run {run.run_id}: {run.keys} key(s), {'ok' if run.success else 'FAILED'}" for run in result.runs]
    lines += [f"  failed: {report['object_key']}: {report['message']}" for report in result.failed]
    _emit(args, payload, "\n".join(lines))
    return EXIT_SOME_FAILED if result.failed else EXIT_OK


def cmd_query(args: argparse.Namespace) -> int:
    from s3sync_dagster.resources import chroma_resource, embedding_resource

    config = _config(args)
    source = config.source(args.source)
    from chromadb.errors import NotFoundError

    chroma = chroma_resource(config.chroma).process_config_and_initialize()
    try:
        collection = chroma.collection(source.collection_name, embedding_resource(config.embedding), create=False)
    except NotFoundError:
        raise UsageError(
            f"source '{source.name}' has not been synced yet: collection '{source.collection_name}' does not exist"
        ) from None
    found = collection.query(query_texts=[args.text], n_results=args.n, include=["documents", "metadatas", "distances"])
    hits = [
        {
            "id": chunk_id,
            "distance": distance,
            "object_key": (metadata or {}).get("object_key"),
            "start_line": (metadata or {}).get("start_line"),
            "end_line": (metadata or {}).get("end_line"),
            "document": document,
        }
        for chunk_id, document, metadata, distance in zip(
            found["ids"][0],
            (found["documents"] or [[]])[0],
            (found["metadatas"] or [[]])[0],
            (found["distances"] or [[]])[0],
            strict=True,
        )
    ]
    lines = []
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(str(hit["document"]).split())[:160]
        lines.append(
            f"{rank}. {hit['object_key']} lines {hit['start_line']}-{hit['end_line']} (distance {hit['distance']:.3f})\n   {snippet}"
        )
    _emit(
        args,
        {"query": args.text, "collection": source.collection_name, "results": hits},
        "\n".join(lines) or "no results",
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from s3sync_dagster.demo import run_demo

    return run_demo(workdir=args.workdir, ui=args.ui, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3sync", description="Keep Chroma collections in sync with S3, through Dagster."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config file (default: $S3SYNC_CONFIG, else ./s3sync.yaml)")
    common.add_argument("--json", action="store_true", help="print JSON")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("sources", parents=[common], help="list the configured sources").set_defaults(run=cmd_sources)

    discover = commands.add_parser("discover", parents=[common], help="register a source's object keys as partitions")
    discover.add_argument("source")
    discover.set_defaults(run=cmd_discover)

    sync = commands.add_parser("sync", parents=[common], help="index keys through Dagster runs (shown in the UI)")
    sync.add_argument("source")
    sync.add_argument("--key", action="append", default=[], metavar="KEY", help="an object key (repeatable)")
    sync.add_argument("--all", action="store_true", help="discover, then sync every key of the source")
    sync.add_argument("--batch-size", type=int, default=100, help="keys per run (default 100)")
    sync.set_defaults(run=cmd_sync)

    query = commands.add_parser("query", parents=[common], help="search a source's collection")
    query.add_argument("source")
    query.add_argument("text")
    query.add_argument("-n", type=int, default=5, help="number of results (default 5)")
    query.set_defaults(run=cmd_query)

    demo = commands.add_parser("demo", parents=[common], help="sync a bundled sample through a local S3 endpoint")
    demo.add_argument("--workdir", default=".s3sync/demo", help="where the demo keeps its config and data")
    demo.add_argument("--ui", action="store_true", help="afterwards, keep S3 up and start the Dagster UI")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    # Dagster marks some parameters beta (backfill_policy); users of the command can do nothing about it.
    warnings.filterwarnings("ignore", message=r".*(beta|preview)", category=Warning)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and EXIT_USAGE
    if getattr(args, "batch_size", 1) < 1:
        print("s3sync: --batch-size must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args))
    except (ConfigError, UsageError, ObjectError, BotoCoreError, ClientError) as error:
        # Nothing was synced: the request, the config or the store is wrong. Said in one line.
        print(f"s3sync: {error}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"error": str(error)}))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
