"""The `s3sync` command: list sources, discover keys, sync through Dagster, query, and run the demo.

Its parser is put together here from each subcommand's piece, which sits beside the subcommand's handler in the
module of its idea: syncing (sync_commands.py), source administration (source_commands.py), the Sync API's
invocations (invocation_commands.py), the plan before a sync (plan_commands.py), query (query_commands.py), and the processes it starts (server_commands.py);
what they share is subcommand.py's."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from botocore.exceptions import BotoCoreError, ClientError

from s3sync_dagster.commands.errors import InvocationError, RunError, UsageError
from s3sync_dagster.commands.subcommand import EXIT_USAGE, common_options
from s3sync_dagster.commands.subcommands import (
    add_cancel,
    add_demo,
    add_discover,
    add_invocations,
    add_invoke,
    add_plan,
    add_query,
    add_query_server,
    add_rebuild_lexicon,
    add_reembed,
    add_remove_source,
    add_repair,
    add_sources,
    add_sync,
)
from s3sync_dagster.config import ConfigError
from s3sync_dagster.pipeline.extras import MissingExtra
from s3sync_dagster.pipeline.s3 import ObjectError

# Each subcommand's piece, in the order `s3sync --help` lists them. Dagster, and the modules that import it, are
# imported by the handlers that use them: `s3sync query` needs none of it (test_cli asserts it), and importing
# Dagster takes longer than answering a search.
SUBCOMMANDS = (
    add_sources,
    add_discover,
    add_sync,
    add_plan,
    add_query,
    add_query_server,
    add_invoke,
    add_invocations,
    add_cancel,
    add_remove_source,
    add_repair,
    add_rebuild_lexicon,
    add_reembed,
    add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    """The `s3sync` parser: each subcommand's arguments added by its own piece, --config and --json to every one."""
    parser = argparse.ArgumentParser(
        prog="s3sync", description="Keep Chroma collections in sync with S3, through Dagster."
    )
    common = common_options()
    commands = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(commands, common)
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
    for option in ("batch_size", "limit", "per_object", "n"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            flag = "-n" if option == "n" else f"--{option.replace('_', '-')}"
            print(f"s3sync: {flag} must be at least 1", file=sys.stderr)
            return EXIT_USAGE
    for option in ("offset", "context"):
        value = getattr(args, option, 0)
        if isinstance(value, int) and value < 0:  # --context may be 'section'
            print(f"s3sync: --{option} must be at least 0", file=sys.stderr)
            return EXIT_USAGE
    try:
        return int(args.run(args))
    except (
        ConfigError,
        UsageError,
        InvocationError,
        ObjectError,
        MissingExtra,
        BotoCoreError,
        ClientError,
        RunError,
    ) as error:
        # Nothing (more) was synced: the request, the config or the store is wrong. Said in one line;
        # a run's traceback is in its log on the instance (the UI, or `dagster run` commands).
        print(f"s3sync: {error}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"error": str(error)}))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
