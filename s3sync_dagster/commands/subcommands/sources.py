"""Administering a source from the command line: `s3sync sources` lists them, `s3sync remove-source` deletes
what one wrote, `s3sync rebuild-lexicon` and `s3sync reembed` build its collections' indexes again."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from s3sync_dagster.commands.errors import RunError, UsageError
from s3sync_dagster.commands.subcommand import EXIT_OK, EXIT_USAGE, Subcommands, dagster_instance, emit, load_config
from s3sync_dagster.config import config_file, is_component


def cmd_sources(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.runs import describe_source, home_in_words

    config = load_config(args)
    chosen = "DAGSTER_HOME" in os.environ  # the shell's, or a component project's .env (read by _config)
    with dagster_instance(args) as instance:
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
    emit(
        args,
        {"sources": rows, "dagster_home": dagster_home},
        "\n".join([*(lines or ["no sources configured"]), said_home]),
    )
    return EXIT_OK


def add_sources(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync sources`."""
    commands.add_parser("sources", parents=[common], help="list the configured sources").set_defaults(run=cmd_sources)


def cmd_remove_source(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.runs import chunk_counts, remove_source, source_runs_in_flight

    config = load_config(args)
    source = config.source(args.source)
    with dagster_instance(args) as instance:
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
    emit(args, asdict(result), text)
    return EXIT_OK


def add_remove_source(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync remove-source SOURCE [--yes]`."""
    parser = commands.add_parser(
        "remove-source", parents=[common], help="delete every chunk a source wrote, and its registered keys"
    )
    parser.add_argument("source")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(run=cmd_remove_source)


def cmd_rebuild_lexicon(args: argparse.Namespace) -> int:
    from chromadb.errors import NotFoundError

    from s3sync_dagster.pipeline.lexicon import rebuild_all

    config = load_config(args)
    source = config.source(args.source)
    store = config.chroma.store()
    if not store.is_embedded and not (store.host and store.lexicon_dsn):
        emit(
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
        built = rebuild_all(written())
    seconds = time.perf_counter() - started
    text = f"source '{source.name}': lexical index built again in {seconds:.1f} s" + "".join(
        f"\n  {name}: {count} chunk(s)" for name, count in built.items()
    )
    emit(
        args,
        {"source": source.name, "collections": built, "seconds": seconds},
        text if built else text + "; no collection yet",
    )
    return EXIT_OK


def add_rebuild_lexicon(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync rebuild-lexicon SOURCE`."""
    parser = commands.add_parser(
        "rebuild-lexicon",
        parents=[common],
        help="build the lexical index of a source's collections again from their chunks (an embedded store)",
    )
    parser.add_argument("source")
    parser.set_defaults(run=cmd_rebuild_lexicon)


def _deliberate(instance: Any, run_id: str) -> bool:
    """Whether the run failed on a refusal of the op's own (a `dg.Failure`: the source not synced yet, say), which
    another run would meet again, rather than on what happened to it (the store gone, a link cut)."""
    import dagster as dg

    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        error = event.step_failure_data.error if event is not None else None
        if error is not None and error.cls_name == "Failure":
            return True
    return False


def _reembed_run(args: argparse.Namespace, job: Any, instance: Any, run_config: Any) -> tuple[Any, list[str]]:
    """One run of the reembed job, executed here; its progress lines, shown as the op logs them."""
    import threading

    from s3sync_dagster.defs.runs import PROGRESS_PREFIX
    from s3sync_dagster.defs.sensors import in_process_tags

    run_id = str(uuid.uuid4())
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
            instance=instance, run_id=run_id, tags=in_process_tags(), run_config=run_config, raise_on_error=False
        )
    finally:
        done.set()
        follower.join(timeout=30)
    return execution, shown_lines


def cmd_reembed(args: argparse.Namespace) -> int:
    """A run of the source's reembed job on the instance (the UI shows it, with its progress in its log),
    executed here; its progress lines shown as they are logged. A run that fails on what happened to it (the
    store gone, a link cut) is run again, resuming from the step the last one recorded, as the daemon retries the
    UI's runs: up to the instance's run_retries.max_retries times when its run retries are on."""
    from s3sync_dagster.commands.runs import run_failure
    from s3sync_dagster.definitions import build_definitions
    from s3sync_dagster.defs.names import reembed_job_name, reembed_op_name
    from s3sync_dagster.defs.run_config import reembed_run_config
    from s3sync_dagster.defs.sensors import fail_dead

    config = load_config(args)
    source = config.source(args.source)
    job = build_definitions(config).get_job_def(reembed_job_name(source.name))
    run_config = reembed_run_config(source.name, args.abandon, args.batch_size)
    runs: list[dict[str, Any]] = []
    with dagster_instance(args) as instance:
        fail_dead(instance)  # an earlier re-embedding killed with its process: failed, as the run monitor would
        bound = instance.run_retries_max_retries if instance.run_retries_enabled else 0
        while True:
            execution, shown_lines = _reembed_run(args, job, instance, run_config)
            run_id = execution.run_id
            error = "" if execution.success else run_failure(instance, run_id)
            runs.append({"run_id": run_id, "success": execution.success, "error": error, "retry": len(runs)})
            if execution.success or len(runs) > bound or _deliberate(instance, run_id):
                break
            if not args.json:
                print(
                    f"source '{source.name}': the re-embedding's run {run_id} failed: {error}; running it again "
                    f"from the step it recorded (retry {len(runs)} of {bound})",
                    file=sys.stderr,
                    flush=True,
                )
        if not execution.success:
            earlier = "".join(f"; run {run['run_id']} before it: {run['error']}" for run in runs[:-1])
            raise RunError(f"source '{source.name}': the re-embedding failed (run {run_id}): {error}{earlier}")
    figures: dict[str, Any] = {}
    for event in execution.events_for_node(reembed_op_name(source.name)):
        if event.is_successful_output and event.step_output_data.metadata:
            figures = {key: value.value for key, value in event.step_output_data.metadata.items()}
    payload = {"source": source.name, "run_id": run_id, **figures, "runs": runs}
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
    emit(args, payload, text)
    return EXIT_OK


def add_reembed(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync reembed SOURCE [--abandon]`."""
    parser = commands.add_parser(
        "reembed",
        parents=[common],
        help="re-embed a source's collection with the configured embedding function, then swap it in (no downtime)",
    )
    parser.add_argument("source")
    parser.add_argument(
        "--abandon", action="store_true", help="drop a re-embedding underway instead (the collection is untouched)"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="chunks read, embedded and written at a time")
    parser.set_defaults(run=cmd_reembed)
