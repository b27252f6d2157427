"""Syncing a source from the command line: `s3sync discover` registers its keys, `s3sync sync` indexes them
through Dagster runs, `s3sync repair` syncs exactly the keys that drifted from the bucket."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from s3sync_dagster.commands.errors import RunError, UsageError
from s3sync_dagster.commands.subcommand import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    Subcommands,
    dagster_instance,
    emit,
    load_config,
)
from s3sync_dagster.config import AppConfig

# Dagster, and the modules that import it, are imported by the commands that use them (commands/cli.py).
if TYPE_CHECKING:
    from s3sync_dagster.commands.runs import DiscoverResult, RunSummary, SyncResult


def _discover(args: argparse.Namespace, config: AppConfig, source_name: str, instance: Any) -> DiscoverResult:
    """discover, with the objects listed so far counted on a terminal."""
    from s3sync_dagster.commands.runs import counting, discover, shown

    with counting(f"discover {source_name}: listing", shown(args.json)) as listed:
        return discover(config, source_name, instance, on_listed=listed.advance if listed is not None else None)


def cmd_discover(args: argparse.Namespace) -> int:
    config = load_config(args)
    config.source(args.source)
    with dagster_instance(args) as instance:
        result = _discover(args, config, args.source, instance)
    payload = asdict(result)
    payload["new_keys_truncated"] = len(result.new_keys) > 1000
    payload["new_keys"] = payload["new_keys"][:1000]
    emit(
        args,
        payload,
        f"source '{result.source}': {result.listed} object(s) listed, {result.new} new partition(s) registered, "
        f"{result.registered} registered in all, {result.missing} registered but no longer in the bucket"
        + (
            " (a sync of them, `s3sync sync --all` or the poll sensor's, removes their chunks and their partitions)"
            if result.missing
            else ""
        ),
    )
    return EXIT_OK


def add_discover(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync discover SOURCE`."""
    parser = commands.add_parser("discover", parents=[common], help="register a source's object keys as partitions")
    parser.add_argument("source")
    parser.set_defaults(run=cmd_discover)


def cmd_sync(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.runs import COMMAND_TAG, runs_progress, shown, sync

    config = load_config(args)
    config.source(args.source)
    if args.all == bool(args.key):
        raise UsageError("give --key KEY (repeatable) or --all, not both")
    failure: RunError | None = None
    command_id = uuid.uuid4().hex
    with dagster_instance(args) as instance:
        if args.all:
            _discover(args, config, args.source, instance)
        try:
            with runs_progress(
                instance, (COMMAND_TAG, command_id), f"sync {args.source}", shown(args.json)
            ) as progress:
                result = sync(
                    config, args.source, instance, None if args.all else args.key, batch_size=args.batch_size,
                    tags={COMMAND_TAG: command_id}, on_start=progress.begin if progress is not None else None,
                )  # fmt: skip
        except RunError as error:
            if error.result is None:
                raise
            # A run failed as a whole: what the runs before it did is said all the same, then the failure.
            result, failure = error.result, error
    counts = result.counts()
    payload = {
        "source": result.source,
        "asked": result.asked,
        "runs": [asdict(run) for run in result.runs],
        "counts": counts,  # they add up to `asked`
        "failed": result.failed,
        "not_tried": result.not_tried,
        "removed_elsewhere": result.removed_elsewhere,
        "duration_s": round(result.duration_s, 3),
        "keys": result.reports,
        "also_synced": result.also_synced,
    }
    if failure is not None:
        payload["error"] = str(failure)
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    elif failure is None or result.reports or result.also_synced:
        print("\n".join(_sync_lines(result, counts)))
    if failure is not None:
        print(f"s3sync: {failure}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_SOME_FAILED if result.failed else EXIT_OK


def _count_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in sorted(counts.items()))


def _sync_lines(result: SyncResult, counts: dict[str, int]) -> list[str]:
    lines = [
        f"source '{result.source}': {result.asked} key(s) asked, {len(result.runs)} run(s), "
        f"{result.duration_s:.1f} s: {_count_text(counts) or 'nothing to do'}"
    ]
    lines += [_run_line(run) for run in result.runs]
    if result.also_synced:
        also = Counter(str(report["status"]) for report in result.also_synced)
        lines.append(
            f"  also synced with them: {len(result.also_synced)} metadata file(s) naming their documents: "
            + _count_text(dict(also))
        )
    lines += [f"  failed: {report['object_key']}: {report['message']}" for report in result.failed]
    if result.removed_elsewhere:
        lines.append(
            f"  removed by another command while this sync ran (objects gone, partitions and chunks removed): "
            f"{_some(result.removed_elsewhere)}"
        )
    if result.not_tried:
        lines.append(f"  not tried: {_some(result.not_tried)}")
    # Run logs stay off the terminal (runner.QUIET_RUN_CONFIG): their warnings are said here.
    lines += [
        f"  warning: {line}"
        for report in [*result.reports, *result.also_synced]
        for line in str(report.get("warnings") or "").splitlines()
    ]
    return lines


def _run_line(run: RunSummary) -> str:
    """A run's line: its keys, ok or FAILED with why, and whether its keys were those of a failed run, tried again."""
    retry = f" (retry {run.retry} of the keys a failed run left)" if run.retry else ""
    return f"  run {run.run_id}: {run.keys} key(s){retry}, " + ("ok" if run.success else f"FAILED: {run.error}")


def _some(object_keys: Sequence[str], shown: int = 10) -> str:
    more = f" and {len(object_keys) - shown} more" if len(object_keys) > shown else ""
    return ", ".join(object_keys[:shown]) + more


def add_sync(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync sync SOURCE (--key KEY ... | --all)`."""
    parser = commands.add_parser("sync", parents=[common], help="index keys through Dagster runs (shown in the UI)")
    parser.add_argument("source")
    parser.add_argument("--key", action="append", default=[], metavar="KEY", help="an object key (repeatable)")
    parser.add_argument("--all", action="store_true", help="discover, then sync every key of the source")
    parser.add_argument("--batch-size", type=int, help="keys per run (default: the source's keys_per_run, 100)")
    parser.set_defaults(run=cmd_sync)


def cmd_repair(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.runs import COMMAND_TAG, repair, runs_progress, shown

    config = load_config(args)
    config.source(args.source)
    command_id = uuid.uuid4().hex
    with (
        dagster_instance(args) as instance,
        runs_progress(instance, (COMMAND_TAG, command_id), f"repair {args.source}", shown(args.json)) as progress,
    ):
        result = repair(
            config, args.source, instance, tags={COMMAND_TAG: command_id},
            on_start=progress.begin if progress is not None else None,
        )  # fmt: skip

    def drift_text(drift: dict[str, Any]) -> str:
        said = ", ".join(f"{'n/a' if n is None else n} {kind}" for kind, n in drift["counts"].items())
        # Not drift: metadata files whose document is not in the bucket yet (its upload completes them).
        waiting = drift.get("waiting") or {}
        archived = drift.get("archived") or {}  # not drift either: no sync can read them until restored
        return (
            said
            + (f"; {len(waiting)} waiting for their document" if waiting else "")
            + (f"; {len(archived)} archived (not restored)" if archived else "")
        )

    lines = [f"source '{result.source}': before: {drift_text(result.before)}"]
    lines += [  # copies earlier releases' re-embeddings left
        f"  {'dropped' if left['dropped'] else 'kept'} collection '{left['collection']}': {left['why']}"
        for left in result.leftovers
    ]
    if result.run_id is None:
        lines.append("  no drift: nothing to repair")
    else:
        # A run that failed as a whole before its keys, then the run that tried them again (audited_repair.py).
        lines += [
            f"  run {run['run_id']}: {run['keys']} key(s), FAILED: {run['error']}; the keys it did not reach tried again"
            for run in result.runs[:-1]
        ]
        failed_as_a_whole = f": {result.runs[-1]['error']}" if result.runs and not result.success else ""
        lines.append(
            f"  run {result.run_id}: {result.synced} key(s) synced, {'ok' if result.success else 'FAILED'}"
            f"{failed_as_a_whole}; after: {drift_text(result.after)}"
        )
    lines += [f"  failed: {report['object_key']}: {report['message']}" for report in result.failed]
    payload = {**asdict(result), "failed": result.failed}
    emit(args, payload, "\n".join(lines))
    return EXIT_OK if result.success and not result.failed and result.after["clean"] else EXIT_SOME_FAILED


def add_repair(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync repair SOURCE`."""
    parser = commands.add_parser(
        "repair", parents=[common], help="audit a source's drift from its bucket and sync exactly the drifted keys"
    )
    parser.add_argument("source")
    parser.set_defaults(run=cmd_repair)
