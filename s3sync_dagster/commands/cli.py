"""The `s3sync` command: list sources, discover keys, sync through Dagster, query, and run the demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from s3sync_dagster.commands.errors import InvocationError, RunError, UsageError
from s3sync_dagster.config import CONFIG_ENV_VAR, AppConfig, ConfigError, config_file, is_component, load_project_env
from s3sync_dagster.pipeline import keys
from s3sync_dagster.pipeline.extras import MissingExtra
from s3sync_dagster.pipeline.objects import ObjectError

# Dagster, and the modules that import it, are imported by the commands that use them: `s3sync query` needs
# none of it (test_cli asserts it), and importing Dagster takes longer than answering a search.
if TYPE_CHECKING:
    from s3sync_dagster.commands.progress import RunsProgress
    from s3sync_dagster.commands.query import OpenSearchers
    from s3sync_dagster.commands.runner import DiscoverResult, SyncResult

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)


def _config(args: argparse.Namespace) -> AppConfig:
    """The sources, from --config (an s3sync.yaml or a component's defs.yaml), $S3SYNC_CONFIG, ./s3sync.yaml, or
    the S3ChromaSync component of the Dagster project around the working directory."""
    path = Path(args.config) if args.config else config_file()
    component = is_component(path)
    if component:
        load_project_env(path)
    if args.config or component:
        # Runs on Celery workers rebuild their job from the config by this variable, in this process too
        # (definitions.documents_job): it must name the file found here.
        os.environ[CONFIG_ENV_VAR] = str(path.resolve())
    from s3sync_dagster.commands.query import load_sources

    return load_sources(path)


def cmd_sources(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.runner import home_in_words
    from s3sync_dagster.commands.source_admin import describe_source

    config = _config(args)
    chosen = "DAGSTER_HOME" in os.environ  # the shell's, or a component project's .env (read by _config)
    with _instance(args) as instance:
        rows = [describe_source(config, source, instance) for source in config.sources]
        home = Path(instance.root_directory)
    lines = []
    for row in rows:
        s3 = row["payload"]["s3"]
        lines.append(
            f"{row['name']} ({row['source_id']}): s3://{s3['bucket_name']}/{s3['path_prefix'] or ''} -> "
            f"{s3['collection_name']}; trigger_mode {s3['trigger_mode']}; credentials from {row['credentials']['from']}; "
            f"{row['registered_keys']} registered key(s), "
            + (f"{row['indexed_chunks']} indexed chunk(s)" if "counts_error" not in row else row["counts_error"])
        )
    # The counts are this home's: `dg dev` without DAGSTER_HOME keeps its own, so say which and how to share it.
    said_home = home_in_words(home, chosen, is_component(Path(args.config) if args.config else config_file()))
    dagster_home = {"path": str(home), "from": "DAGSTER_HOME" if chosen else "default"}
    _emit(
        args,
        {"sources": rows, "dagster_home": dagster_home},
        "\n".join([*(lines or ["no sources configured"]), said_home]),
    )
    return EXIT_OK


def _instance(args: argparse.Namespace) -> Any:
    from s3sync_dagster.commands.runner import open_instance

    return open_instance(args.config)


def _discover(args: argparse.Namespace, config: AppConfig, source_name: str, instance: Any) -> DiscoverResult:
    """discover, with the objects listed so far counted on a terminal."""
    from s3sync_dagster.commands.progress import counting, shown
    from s3sync_dagster.commands.runner import discover

    with counting(f"discover {source_name}: listing", shown(args.json)) as listed:
        return discover(config, source_name, instance, on_listed=listed.advance if listed is not None else None)


def cmd_discover(args: argparse.Namespace) -> int:
    config = _config(args)
    config.source(args.source)
    with _instance(args) as instance:
        result = _discover(args, config, args.source, instance)
    payload = asdict(result)
    payload["new_keys_truncated"] = len(result.new_keys) > 1000
    payload["new_keys"] = payload["new_keys"][:1000]
    _emit(
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


def cmd_sync(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.progress import COMMAND_TAG, runs_progress, shown
    from s3sync_dagster.commands.runner import sync

    config = _config(args)
    config.source(args.source)
    if args.all == bool(args.key):
        raise UsageError("give --key KEY (repeatable) or --all, not both")
    failure: RunError | None = None
    command_id = uuid.uuid4().hex
    with _instance(args) as instance:
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
    lines += [f"  run {run.run_id}: {run.keys} key(s), {'ok' if run.success else 'FAILED'}" for run in result.runs]
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


def _some(object_keys: Sequence[str], shown: int = 10) -> str:
    more = f" and {len(object_keys) - shown} more" if len(object_keys) > shown else ""
    return ", ".join(object_keys[:shown]) + more


def cmd_query(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.query import search_source
    from s3sync_dagster.pipeline.owners import describe

    config = _config(args)
    source = config.source(args.source)
    try:
        found = (_searchers.search if _searchers is not None else search_source)(
            args.source, args.text, mode=args.mode, n=args.n, config=config, every_writer=args.every_writer,
            context=args.context, per_object=args.per_object,
        )  # fmt: skip
    except ValueError as error:
        raise UsageError(str(error)) from None
    hits = [
        {
            "id": hit.chunk_id,
            "score": hit.score,
            "distance": hit.distance,
            "dense_rank": hit.dense_rank,
            "lexical_rank": hit.lexical_rank,
            "object_key": hit.metadata.get("object_key"),
            "source": hit.metadata.get("source"),  # whose chunk it is
            "project": hit.metadata.get("project"),
            "chunk_index": hit.metadata.get("chunk_index"),
            "start_line": hit.metadata.get("start_line"),
            "end_line": hit.metadata.get("end_line"),
            "document": hit.document,
            **(
                {
                    "context": [
                        {"id": p.chunk_id, "chunk_index": p.chunk_index, "document": p.document} for p in hit.context
                    ]
                }
                if args.context
                else {}
            ),
        }
        for hit in found
    ]
    lines = []
    for rank, hit in enumerate(found, 1):
        sides = ", ".join(
            f"{side} #{place}" for side, place in (("dense", hit.dense_rank), ("lexical", hit.lexical_rank)) if place
        )
        lines.append(
            f"{rank}. {hit.metadata.get('object_key')} lines {hit.metadata.get('start_line')}-"
            f"{hit.metadata.get('end_line')} ({sides}{'; ' + describe(hit.metadata) if args.every_writer else ''})"
        )
        if hit.context:
            # The hit and its neighbours, in the object's order; the hit's own chunk marked.
            lines += [
                f"   {'>' if passage.chunk_id == hit.chunk_id else ' '} {' '.join(passage.document.split())[:160]}"
                for passage in hit.context
            ]
        else:
            lines.append(f"   {' '.join(hit.document.split())[:160]}")
    _emit(
        args,
        {"query": args.text, "mode": args.mode, "collection": source.collection_name, "results": hits},
        "\n".join(lines) or "no results",
    )
    return EXIT_OK


def cmd_query_server(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands import resident

    status = resident.control(args.action)
    if status.get("running"):
        text = f"query server running (pid {status['pid']}, {status['served']} queries answered): {status['socket']}"
    elif args.action == "stop" and "pid" in status:
        text = f"query server stopped (pid {status['pid']})"
    else:
        text = f"no query server running{': ' + status['why'] if 'why' in status else ''}"
    _emit(args, status, text)
    return EXIT_OK if status.get("running") or args.action != "start" else EXIT_USAGE


# The sources' searchers, kept open across the queries of a process that answers many (commands/resident.py);
# a process that answers one opens its store for it.
_searchers: OpenSearchers | None = None


def keep_searchers_open() -> None:
    """From now on `s3sync query`s in this process keep their store and model open for the next."""
    global _searchers
    from s3sync_dagster.commands.query import OpenSearchers

    _searchers = _searchers or OpenSearchers()


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


def cmd_invoke(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands import invocations
    from s3sync_dagster.commands.runner import register_keys, s3_client
    from s3sync_dagster.defs.invocation_sensor import invocation_tags, new_invocation_id, record_request
    from s3sync_dagster.pipeline.spec import Invocation

    config = _config(args)
    source = config.source(args.source)
    invocation = Invocation(args.custom_id, _parse_metadata(args.metadata), args.target_collection)
    invocations.validate_invocation(source, args.object_key, invocation, config.embedding)
    invocations.check_object_exists(s3_client(source), source, args.object_key)
    with _instance(args) as instance:
        invocations.check_indexable(instance, source, args.object_key, invocation)
        register_keys(instance, source, [args.object_key])
        partition_key = keys.to_partition_key(args.object_key)
        daemon = invocations.daemon_running(instance)
        if args.wait and not daemon:
            # Nobody would make its run: run it here, now, recorded on the instance as the sensor's run would be.
            invocation_id = new_invocation_id()
            with _invocation_progress(args, instance, invocation_id):
                invocations.execute_partition_run(
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
                    run_id = invocations.wait_for_run(instance, invocation_id, args.timeout)
                    if run_id is not None:
                        invocations.wait_for(
                            instance,
                            run_id,
                            max(0.0, deadline - time.monotonic()),
                            on_status=None
                            if args.json or progress is not None
                            else lambda status: print(f"invocation {invocation_id}: {status}", file=sys.stderr),
                        )
        row = invocations.list_invocations_by_id(instance, config, invocation_id)
    _emit(args, row, f"invocation {row['id']}: {_status_text(row['status'])}")
    if not args.wait:
        return EXIT_OK
    return EXIT_OK if "complete" in row["status"] else EXIT_SOME_FAILED


@contextlib.contextmanager
def _invocation_progress(args: argparse.Namespace, instance: Any, invocation_id: str) -> Iterator[RunsProgress | None]:
    """invoke --wait on a terminal: its one key's progress, from the events of the run carrying its id."""
    from s3sync_dagster.commands.progress import runs_progress, shown
    from s3sync_dagster.defs.tags import INVOCATION_TAG

    with runs_progress(
        instance, (INVOCATION_TAG, invocation_id), f"invocation {invocation_id}", shown(args.json)
    ) as progress:
        if progress is not None:
            progress.begin(1)
        yield progress


def cmd_invocations(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.invocations import list_invocations

    config = _config(args)
    with _instance(args) as instance:
        rows = list_invocations(instance, config, args.source, args.status, args.limit, args.offset)
    lines = [
        f"{row['id']}  {row['created_at']}  {row['source']}  "
        f"{row['metadata']['s3']['object_key'] or (str(row['keys']) + ' keys' if row['keys'] else 'many keys')}  "
        f"[{row['trigger']}]  {_status_text(row['status'])}"
        for row in rows
    ]
    _emit(args, rows, "\n".join(lines) or "no invocations")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.invocations import cancel

    config = _config(args)
    with _instance(args) as instance:
        status = cancel(instance, args.job_id, config)
    _emit(args, {"id": args.job_id, "status": status}, f"{args.job_id}: {status}")
    return EXIT_OK


def cmd_remove_source(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.invocations import source_runs_in_flight
    from s3sync_dagster.commands.source_admin import chunk_counts, remove_source

    config = _config(args)
    source = config.source(args.source)
    with _instance(args) as instance:
        busy = source_runs_in_flight(instance, config, source.name)
        if busy:
            raise UsageError(
                f"source '{source.name}' has {len(busy)} run(s) queued or in progress ({', '.join(busy[:5])}): "
                "wait for them or cancel them (s3sync cancel RUN_ID) first"
            )
        if not args.yes:
            counts = chunk_counts(config, source.name)
            if not sys.stdin.isatty():
                raise UsageError("remove-source deletes chunks: confirm with --yes when not at a terminal")
            answer = input(
                f"Delete {sum(counts.values())} chunk(s) of source '{source.name}' from "
                f"{', '.join(counts) or 'no collection'}, and its registered keys? Type the source name to confirm: "
            )
            if answer.strip() != source.name:
                print("s3sync: not confirmed; nothing deleted", file=sys.stderr)
                return EXIT_USAGE
        result = remove_source(config, source.name, instance)
    text = (
        f"source '{source.name}': deleted {sum(result.chunks_deleted.values())} chunk(s)"
        + "".join(f"\n  {name}: {count}" for name, count in result.chunks_deleted.items())
        + f"\n  {result.partitions_deleted} registered key(s) forgotten"
        + (
            f"\nThe source is still in the config with auto-sync on: its sensors will index it again; "
            f"remove it from {(args.config or config_file())} to stop that."
            if source.auto_sync != "none" or source.poll_interval_seconds is not None
            else ""
        )
    )
    _emit(args, asdict(result), text)
    return EXIT_OK


def cmd_repair(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.progress import COMMAND_TAG, runs_progress, shown
    from s3sync_dagster.commands.repair import repair

    config = _config(args)
    config.source(args.source)
    command_id = uuid.uuid4().hex
    with (
        _instance(args) as instance,
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
        return said + (f"; {len(waiting)} waiting for their document" if waiting else "")

    lines = [f"source '{result.source}': before: {drift_text(result.before)}"]
    lines += [  # copies earlier releases' re-embeddings left
        f"  {'dropped' if left['dropped'] else 'kept'} collection '{left['collection']}': {left['why']}"
        for left in result.leftovers
    ]
    if result.run_id is None:
        lines.append("  no drift: nothing to repair")
    else:
        lines.append(
            f"  run {result.run_id}: {result.synced} key(s) synced, {'ok' if result.success else 'FAILED'}; "
            f"after: {drift_text(result.after)}"
        )
    lines += [f"  failed: {report['object_key']}: {report['message']}" for report in result.failed]
    payload = {**asdict(result), "failed": result.failed}
    _emit(args, payload, "\n".join(lines))
    return EXIT_OK if result.success and not result.failed and result.after["clean"] else EXIT_SOME_FAILED


def cmd_rebuild_lexicon(args: argparse.Namespace) -> int:
    from chromadb.errors import NotFoundError

    from s3sync_dagster.pipeline import lexicon

    config = _config(args)
    source = config.source(args.source)
    store = config.chroma.store()
    if not store.is_embedded and not (store.host and store.lexicon_dsn):
        _emit(
            args,
            {"source": source.name, "collections": {}},
            f"source '{source.name}': {store.describe()} keeps no lexical index of ours (it answers the lexical "
            "side itself; a server's goes in PostgreSQL with chroma.lexicon_postgres): nothing to build",
        )
        return EXIT_OK
    spec = config.embedding.spec()
    target = source.spec(spec)

    def written() -> Iterator[Any]:
        for name in dict.fromkeys([target.collection_name, *target.target_collections]):
            with contextlib.suppress(NotFoundError):  # not made yet: nothing to index
                yield store.collection(name, spec, create=False)

    started = time.perf_counter()
    with store.write_lock():  # no sync writes meanwhile
        built = lexicon.rebuild_all(written())
    seconds = time.perf_counter() - started
    text = f"source '{source.name}': lexical index built again in {seconds:.1f} s" + "".join(
        f"\n  {name}: {count} chunk(s)" for name, count in built.items()
    )
    _emit(
        args,
        {"source": source.name, "collections": built, "seconds": seconds},
        text if built else text + "; no collection yet",
    )
    return EXIT_OK


def cmd_reembed(args: argparse.Namespace) -> int:
    """A run of the source's reembed job on the instance (the UI shows it, with its progress in its log),
    executed here; its progress lines shown as they are logged."""
    import threading

    from s3sync_dagster.commands.runner import run_failure
    from s3sync_dagster.definitions import build_definitions
    from s3sync_dagster.defs.monitor import fail_dead, in_process_tags
    from s3sync_dagster.defs.names import reembed_job_name, reembed_op_name
    from s3sync_dagster.defs.reembed import PROGRESS_PREFIX
    from s3sync_dagster.defs.run_config import reembed_run_config

    config = _config(args)
    source = config.source(args.source)
    job = build_definitions(config).get_job_def(reembed_job_name(source.name))
    run_id = str(uuid.uuid4())
    with _instance(args) as instance:
        fail_dead(instance)  # an earlier re-embedding killed with its process: failed, as the run monitor would
        done = threading.Event()
        shown_lines: list[str] = []

        def follow() -> None:  # the run's progress lines, as the op logs them
            seen = 0
            while True:
                finished = done.is_set()
                records = instance.all_logs(run_id)
                for record in records[seen:]:
                    if record.dagster_event is None and record.user_message.startswith(PROGRESS_PREFIX):
                        shown_lines.append(record.user_message[len(PROGRESS_PREFIX) :])
                        if not args.json:
                            print(f"  {shown_lines[-1]}", file=sys.stderr, flush=True)
                seen = len(records)
                if finished:
                    return
                done.wait(0.5)

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        try:
            execution = job.execute_in_process(
                instance=instance,
                run_id=run_id,
                tags=in_process_tags(),
                run_config=reembed_run_config(source.name, args.abandon, args.batch_size),
                raise_on_error=False,
            )
        finally:
            done.set()
            follower.join(timeout=30)
        if not execution.success:
            raise RunError(
                f"source '{source.name}': the re-embedding failed (run {run_id}): {run_failure(instance, run_id)}"
            )
    figures: dict[str, Any] = {}
    for event in execution.events_for_node(reembed_op_name(source.name)):
        if event.is_successful_output and event.step_output_data.metadata:
            figures = {key: value.value for key, value in event.step_output_data.metadata.items()}
    payload = {"source": source.name, "run_id": run_id, **figures}
    if figures.get("status") == "swapped":
        text = (
            f"source '{source.name}': collection '{figures['collection']}' now holds {figures['embedding']}'s vectors: "
            f"{figures['chunks']:,} chunk(s), {figures['texts_embedded']:,} text(s) embedded in {figures['seconds']} s, "
            f"queries answered throughout (run {run_id})"
        )
        also = [line for line in figures.get("collections") or [] if not line.startswith(f"{figures['collection']}:")]
        text += "; also " + ", ".join(also) if also else ""
    else:
        text = f"source '{source.name}': " + (shown_lines[-1] if shown_lines else str(figures.get("status")))
    _emit(args, payload, text)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.demo import run_demo

    return run_demo(workdir=args.workdir, ui=args.ui, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3sync", description="Keep Chroma collections in sync with S3, through Dagster."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        help="config file: an s3sync.yaml, or the defs.yaml of an S3ChromaSync component (default: $S3SYNC_CONFIG, "
        "else ./s3sync.yaml, else the component of the Dagster project around the working directory)",
    )
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
    sync.add_argument("--batch-size", type=int, help="keys per run (default: the source's keys_per_run, 100)")
    sync.set_defaults(run=cmd_sync)

    query = commands.add_parser("query", parents=[common], help="search a source's collection")
    query.add_argument("source")
    query.add_argument("text")
    query.add_argument("-n", type=int, default=5, help="number of results (default 5)")
    query.add_argument(
        "--mode",
        choices=["dense", "lexical", "hybrid"],
        default="hybrid",
        help="by meaning (dense), by exact words (lexical), or both fused (hybrid, the default)",
    )
    query.add_argument(
        "--context",
        type=int,
        default=0,
        metavar="N",
        help="show each hit with the N chunks before and after it in its object (default 0)",
    )
    query.add_argument(
        "--per-object", type=int, metavar="K", help="keep at most K hits of one object (1: one hit per object)"
    )
    query.add_argument(
        "--every-writer",
        action="store_true",
        help="search every chunk of the collection, not only the source's own (each hit says whose it is)",
    )
    query.set_defaults(run=cmd_query)

    server = commands.add_parser(
        "query-server",
        parents=[common],
        help="the resident process that answers queries with the store and model kept open: start, status, stop",
    )
    server.add_argument("action", choices=["start", "status", "stop"])
    server.set_defaults(run=cmd_query_server)

    invoke = commands.add_parser(
        "invoke", parents=[common], help="queue a sync of one object key (the Sync API's invocation)"
    )
    invoke.add_argument("source")
    invoke.add_argument("object_key", help="full key from the bucket root; must start with the source's path_prefix")
    invoke.add_argument("--custom-id", help="document id for the chunks (at most 120 bytes): ids become ID-N")
    invoke.add_argument("--metadata", help='JSON object merged into every chunk\'s metadata, e.g. \'{"team": "a"}\'')
    invoke.add_argument("--target-collection", help="write to this collection instead of the source's")
    invoke.add_argument("--wait", action="store_true", help="follow the run until it finishes")
    invoke.add_argument(
        "--timeout", type=float, default=3600.0, help="with --wait: stop following after this many seconds"
    )
    invoke.set_defaults(run=cmd_invoke)

    listing = commands.add_parser("invocations", parents=[common], help="list runs as the Sync API lists jobs")
    listing.add_argument("source", nargs="?")
    listing.add_argument("--status", choices=["pending", "processing", "complete", "failed", "cancelled"])
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--offset", type=int, default=0)
    listing.set_defaults(run=cmd_invocations)

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a queued (or running) run")
    cancel.add_argument("job_id", metavar="ID", help="the id `invoke` returned, or a run's id")
    cancel.set_defaults(run=cmd_cancel)

    remove = commands.add_parser(
        "remove-source", parents=[common], help="delete every chunk a source wrote, and its registered keys"
    )
    remove.add_argument("source")
    remove.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    remove.set_defaults(run=cmd_remove_source)

    repair = commands.add_parser(
        "repair", parents=[common], help="audit a source's drift from its bucket and sync exactly the drifted keys"
    )
    repair.add_argument("source")
    repair.set_defaults(run=cmd_repair)

    lexicon = commands.add_parser(
        "rebuild-lexicon",
        parents=[common],
        help="build the lexical index of a source's collections again from their chunks (an embedded store)",
    )
    lexicon.add_argument("source")
    lexicon.set_defaults(run=cmd_rebuild_lexicon)

    reembed = commands.add_parser(
        "reembed",
        parents=[common],
        help="re-embed a source's collection with the configured embedding function, then swap it in (no downtime)",
    )
    reembed.add_argument("source")
    reembed.add_argument(
        "--abandon", action="store_true", help="drop a re-embedding underway instead (the collection is untouched)"
    )
    reembed.add_argument("--batch-size", type=int, default=500, help="chunks read, embedded and written at a time")
    reembed.set_defaults(run=cmd_reembed)

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
    for option in ("batch_size", "limit", "per_object", "n"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            flag = "-n" if option == "n" else f"--{option.replace('_', '-')}"
            print(f"s3sync: {flag} must be at least 1", file=sys.stderr)
            return EXIT_USAGE
    for option in ("offset", "context"):
        if getattr(args, option, 0) < 0:
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
