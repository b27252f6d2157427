"""Searching a source from the command line: `s3sync query`, its hits in words or JSON, and the searchers a
process that answers many queries keeps open between them (commands/resident.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from s3sync_dagster.commands.errors import UsageError
from s3sync_dagster.commands.subcommand import EXIT_OK, Subcommands, emit, load_config

if TYPE_CHECKING:
    from s3sync_dagster.commands.query import OpenSearchers


# The sources' searchers, kept open across the queries of a process that answers many (commands/resident.py);
# a process that answers one opens its store for it.
_searchers: OpenSearchers | None = None


def cmd_query(args: argparse.Namespace) -> int:
    from s3sync_dagster.commands.query import search_source
    from s3sync_dagster.pipeline.chroma import READERS_KEY
    from s3sync_dagster.pipeline.records import describe
    from s3sync_dagster.pipeline.search import search_filter

    config = load_config(args)
    source = config.source(args.source)
    where = where_option(args.where)
    principals = args.principals or []
    try:
        closed = search_filter(
            source.name, source.readers_tag, where=where, principals=principals, all_readers=args.all_readers
        ).closed
        if closed is not None:
            print(f"s3sync query: {closed}", file=sys.stderr)
        found = (_searchers.search if _searchers is not None else search_source)(
            args.source, args.text, mode=args.mode, n=args.n, config=config, every_writer=args.every_writer,
            context=args.context, per_object=args.per_object, where=where, principals=principals,
            all_readers=args.all_readers, sections=args.sections,
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
            "passage": hit.passage,  # what the terminal shows of the hit
            **({"readers": hit.metadata.get(READERS_KEY, [])} if source.readers_tag else {}),  # who may read it
            # A versioned bucket's: the object version the chunk's text was read from.
            **({"version_id": hit.metadata["version_id"]} if hit.metadata.get("version_id") else {}),
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
    from s3sync_dagster.pipeline.search import marked

    word_form = "\033[1m{}\033[0m" if not args.json and (args.bold or sys.stdout.isatty()) else "{}"  # bold or plain

    lines = []
    for rank, hit in enumerate(found, 1):
        sides = ", ".join(
            f"{side} #{place}" for side, place in (("dense", hit.dense_rank), ("lexical", hit.lexical_rank)) if place
        )
        lines.append(
            f"{rank}. {hit.metadata.get('object_key')}"
            + (f" (version {hit.metadata['version_id']})" if hit.metadata.get("version_id") else "")
            + f" lines {hit.metadata.get('start_line')}-"
            f"{hit.metadata.get('end_line')} ({sides}{'; ' + describe(hit.metadata) if args.every_writer else ''})"
        )
        # The part of its section that answers the question, the question's words in bold on a terminal.
        shown = marked(hit.passage, args.text, word_form) if hit.passage else " ".join(hit.document.split())[:160]
        lines += [f"   {line}" for line in shown.splitlines()]
        if hit.context:
            # The hit and its neighbours, in the object's order; the hit's own chunk marked.
            lines += [
                f"   {'>' if passage.chunk_id == hit.chunk_id else ' '} {' '.join(passage.document.split())[:160]}"
                for passage in hit.context
            ]
    emit(
        args,
        {"query": args.text, "mode": args.mode, "collection": source.collection_name, "results": hits},
        "\n".join(lines) or "no results",
    )
    return EXIT_OK


def context_option(text: str) -> int | str:
    """--context's value: a number of chunks (0 or more), or 'section'."""
    if text == "section":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a number of chunks or 'section', not {text!r}") from None


def where_option(text: str | None) -> dict[str, Any] | None:
    """--where's JSON as a where clause Chroma takes; else a usage error naming --where and the rule."""
    from s3sync_dagster.pipeline.search import checked_where

    if text is None:
        return None
    try:
        where = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(
            f'--where is not JSON ({error}): give a Chroma where clause, e.g. \'{{"meta_team": "finance"}}\''
        ) from None
    try:
        return checked_where(where)
    except ValueError as error:
        raise UsageError(f"--where: {error}") from None


def add_query(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`s3sync query SOURCE TEXT`."""
    parser = commands.add_parser("query", parents=[common], help="search a source's collection")
    parser.add_argument("source")
    parser.add_argument("text")
    parser.add_argument("-n", type=int, default=5, help="number of results (default 5)")
    parser.add_argument(
        "--mode",
        choices=["dense", "lexical", "hybrid"],
        default="hybrid",
        help="by meaning (dense), by exact words (lexical), or both fused (hybrid, the default)",
    )
    parser.add_argument(
        "--context",
        type=context_option,
        default=0,
        metavar="N|section",
        help="show each hit with the N chunks before and after it in its object (default 0), or with 'section' "
        "the chunks of its section (under the same headings, or in the same definition)",
    )
    parser.add_argument(
        "--per-object", type=int, metavar="K", help="keep at most K hits of one object (1: one hit per object)"
    )
    parser.add_argument(
        "--sections",
        action="store_true",
        help="rank sections, not chunks: each section once, scored by all its chunks (hybrid); see docs/search.md",
    )
    parser.add_argument(
        "--bold",
        action="store_true",
        help="set the question's words in each passage in bold (terminal escape codes; the default on a terminal)",
    )
    parser.add_argument(
        "--where",
        metavar="JSON",
        help='only chunks whose metadata pass this Chroma where clause, e.g. \'{"meta_team": "finance"}\'',
    )
    parser.add_argument(
        "--as",
        dest="principals",
        action="append",
        metavar="PRINCIPAL",
        help="search as this reader (repeatable): of a source with readers_tag, only what one of them may read",
    )
    parser.add_argument(
        "--all-readers",
        action="store_true",
        help="of a source with readers_tag, search every chunk whoever may read it (an operator's view)",
    )
    parser.add_argument(
        "--every-writer",
        action="store_true",
        help="search every chunk of the collection, not only the source's own (each hit says whose it is)",
    )
    parser.set_defaults(run=cmd_query)


def keep_searchers_open() -> None:
    """From now on `s3sync query`s in this process keep their store and model open for the next."""
    global _searchers
    from s3sync_dagster.commands.query import OpenSearchers

    _searchers = _searchers or OpenSearchers()
