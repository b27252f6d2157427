"""The Sync API's invocations from the command line: `s3sync invoke` queues a sync of one object key (or runs
it here with --wait), `s3sync invocations` lists them as the API lists jobs, `s3sync cancel` cancels one."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from s3sync_dagster.commands.errors import UsageError
from s3sync_dagster.commands.subcommand import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    Subcommands,
    dagster_instance,
    emit,
    load_config,
)
from s3sync_dagster.pipeline.records import to_partition_key

# Dagster, and the modules that import it, are imported by the commands that use them (commands/cli.py).
if TYPE_CHECKING:
    from s3sync_dagster.commands.runs import RunsProgress


def _parse_metadata(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--metadata is not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise UsageError(f"--metadata must be a JSON object, got {type(metadata).__name__}")
    return metadata


def _status_text(status: Any) -> str:
    if isinstance(status, str):
        return status
    if "complete" in status:
        return f"complete in {status['complete']['duration_ms']} ms (finished {status['complete']['finished_at']})"
    return f"failed: {status['failed']['error']}"


@contextlib.contextmanager
def _invocation_progress(args: argparse.Namespace, instance: Any, invocation_id: str) -> Iterator[RunsProgress | None]:
    """invoke --wait on a terminal: its one key's progress, from the events of the run carrying its id."""
    from s3sync_dagster.commands.runs import runs_progress, shown
    from s3sync_dagster.defs.tags import INVOCATION_TAG

    with runs_progress(
        instance, (INVOCATION_TAG, invocation_id), f"invocation {invocation_id}", shown(args.json)
    ) as progress:
        if progress is not None:
            progress.begin(1)
        yield progress


def cmd_invoke(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.runs import (
        check_indexable,
        check_object_exists,
        daemon_running,
        execute_partition_run,
        list_invocations_by_id,
        register_keys,
        s3_client,
        validate_invocation,
        wait_for,
        wait_for_run,
    )
    from s3sync_dagster.defs.sensors import invocation_tags, new_invocation_id, record_request
    from s3sync_dagster.pipeline.spec import Invocation

    config = load_config(args)
    source = config.source(args.source)
    invocation = Invocation(args.custom_id, _parse_metadata(args.metadata), args.target_collection)
    validate_invocation(source, args.object_key, invocation, config.embedding)
    check_object_exists(s3_client(source), source, args.object_key)
    with dagster_instance(args) as instance:
        check_indexable(instance, source, args.object_key, invocation)
        register_keys(instance, source, [args.object_key])
        partition_key = to_partition_key(args.object_key)
        daemon = daemon_running(instance)
        if args.wait and not daemon:
            # Nobody would make its run: run it here, now, recorded on the instance as the sensor's run would be.
            invocation_id = new_invocation_id()
            with _invocation_progress(args, instance, invocation_id):
                execute_partition_run(
                    instance,
                    config,
                    source.name,
                    partition_key,
                    invocation,
                    invocation_tags(source.name, invocation_id),
                )
        else:
            invocation_id = record_request(instance, source, partition_key, invocation).invocation_id
            if not daemon:
                print(
                    "s3sync: no dagster-daemon is serving this instance: the invocation waits until "
                    "`dagster dev` or `dagster-daemon run` starts and its sensor makes the run "
                    "(or use --wait to run it here)",
                    file=sys.stderr,
                )
            if args.wait:
                deadline = time.monotonic() + args.timeout
                with _invocation_progress(args, instance, invocation_id) as progress:
                    run_id = wait_for_run(instance, invocation_id, args.timeout)
                    if run_id is not None:
                        wait_for(
                            instance,
                            run_id,
                            max(0.0, deadline - time.monotonic()),
                            on_status=None
                            if args.json or progress is not None
                            else lambda status: print(f"invocation {invocation_id}: {status}", file=sys.stderr),
                        )
        row = list_invocations_by_id(instance, config, invocation_id)
    emit(args, row, f"invocation {row['id']}: {_status_text(row['status'])}")
    if not args.wait:
        return EXIT_OK
    return EXIT_OK if "complete" in row["status"] else EXIT_SOME_FAILED


def add_invoke(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync invoke SOURCE OBJECT_KEY`."""
    parser = commands.add_parser(
        "invoke", parents=[common], help="queue a sync of one object key (the Sync API's invocation)"
    )
    parser.add_argument("source")
    parser.add_argument("object_key", help="full key from the bucket root; must start with the source's path_prefix")
    parser.add_argument("--custom-id", help="document id for the chunks (at most 120 bytes): ids become ID-N")
    parser.add_argument("--metadata", help='JSON object merged into every chunk\'s metadata, e.g. \'{"team": "a"}\'')
    parser.add_argument("--target-collection", help="write to this collection instead of the source's")
    parser.add_argument("--wait", action="store_true", help="follow the run until it finishes")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="with --wait: stop following after this many seconds"
    )
    parser.set_defaults(run=cmd_invoke)


def cmd_invocations(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.runs import list_invocations

    config = load_config(args)
    with dagster_instance(args) as instance:
        rows = list_invocations(instance, config, args.source, args.status, args.limit, args.offset)
    lines = [
        f"{row['id']}  {row['created_at']}  {row['source']}  "
        f"{row['metadata']['s3']['object_key'] or (str(row['keys']) + ' keys' if row['keys'] else 'many keys')}  "
        f"[{row['trigger']}]  {_status_text(row['status'])}"
        for row in rows
    ]
    emit(args, rows, "\n".join(lines) or "no invocations")
    return EXIT_OK


def add_invocations(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync invocations [SOURCE]`."""
    parser = commands.add_parser("invocations", parents=[common], help="list runs as the Sync API lists jobs")
    parser.add_argument("source", nargs="?")
    parser.add_argument("--status", choices=["pending", "processing", "complete", "failed", "cancelled"])
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--offset", type=int, default=0)
    parser.set_defaults(run=cmd_invocations)


def cmd_cancel(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.runs import cancel

    config = load_config(args)
    with dagster_instance(args) as instance:
        status = cancel(instance, args.job_id, config)
    emit(args, {"id": args.job_id, "status": status}, f"{args.job_id}: {status}")
    return EXIT_OK


def add_cancel(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync cancel ID`."""
    parser = commands.add_parser("cancel", parents=[common], help="cancel a queued (or running) run")
    parser.add_argument("job_id", metavar="ID", help="the id `invoke` returned, or a run's id")
    parser.set_defaults(run=cmd_cancel)
