"""`s3sync plan SOURCE`: what a sync of the source would do now (pipeline/audit/plan.py), writing nothing."""

from __future__ import annotations

import argparse

from s3sync_dagster.commands.subcommand import EXIT_OK, Subcommands, dagster_instance, emit, load_config


def add_plan(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync plan SOURCE [--no-embedding-sample]`."""
    parser = commands.add_parser(
        "plan",
        parents=[common],
        help="what a sync of a source would do now, writing nothing: new, changed, deleted, unchanged, archived and "
        "refused objects, bytes by kind, estimated chunks and embedding time, and Chroma Sync's price for the same",
    )
    parser.add_argument("source")
    parser.add_argument(
        "--no-embedding-sample",
        dest="embedding_sample",
        action="store_false",
        help="do not time the embedding function on a sample (no embedding time is estimated)",
    )
    parser.set_defaults(run=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.runs import s3_client
    from s3sync_dagster.defs.resources import chroma_outside_runs, embedding_resource
    from s3sync_dagster.defs.runs import plan_of

    config = load_config(args)
    source = config.source(args.source)
    s3 = s3_client(source)
    with dagster_instance(args) as instance:
        result = plan_of(
            source,
            instance,
            s3,
            chroma_outside_runs(config.chroma),
            embedding_resource(config.embedding),
            measure=args.embedding_sample,
        )
    emit(args, result.payload(), result.table())
    return EXIT_OK
