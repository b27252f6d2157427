"""The processes the command starts and leaves running: `s3sync query-server` (the resident query process) and
`s3sync demo` (a local S3 endpoint, and with --ui the Dagster UI)."""

from __future__ import annotations

import argparse

from s3sync_dagster.commands.subcommand import EXIT_OK, EXIT_USAGE, Subcommands, emit


def cmd_query_server(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands import resident

    status = resident.control(args.action)
    if status.get("running"):
        text = f"query server running (pid {status['pid']}, {status['served']} queries answered): {status['socket']}"
    elif args.action == "stop" and "pid" in status:
        text = f"query server stopped (pid {status['pid']})"
    else:
        text = f"no query server running{': ' + status['why'] if 'why' in status else ''}"
    emit(args, status, text)
    return EXIT_OK if status.get("running") or args.action != "start" else EXIT_USAGE


def add_query_server(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync query-server {start,status,stop}`."""
    parser = commands.add_parser(
        "query-server",
        parents=[common],
        help="the resident process that answers queries with the store and model kept open: start, status, stop",
    )
    parser.add_argument("action", choices=["start", "status", "stop"])
    parser.set_defaults(run=cmd_query_server)


def cmd_demo(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.demo import run_demo

    return run_demo(workdir=args.workdir, ui=args.ui, as_json=args.json)


def add_demo(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync demo [--workdir DIR] [--ui]`."""
    parser = commands.add_parser("demo", parents=[common], help="sync a bundled sample through a local S3 endpoint")
    parser.add_argument("--workdir", default=".s3sync/demo", help="where the demo keeps its config and data")
    parser.add_argument("--ui", action="store_true", help="afterwards, keep S3 up and start the Dagster UI")
    parser.set_defaults(run=cmd_demo)
