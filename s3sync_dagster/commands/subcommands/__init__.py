"""The subcommands of `s3sync`, one module per group, each its parser and its handler: sync (discover, sync,
repair), sources (sources, remove-source, rebuild-lexicon, reembed), invocations (invoke, invocations, cancel),
plan, query, servers (query-server, demo).

May import: demo, errors, query, resident, runs, subcommand.
"""

from __future__ import annotations

from s3sync_dagster.commands.subcommands.invocations import add_cancel, add_invocations, add_invoke
from s3sync_dagster.commands.subcommands.plan import add_plan
from s3sync_dagster.commands.subcommands.query import add_query, keep_searchers_open
from s3sync_dagster.commands.subcommands.servers import add_demo, add_query_server
from s3sync_dagster.commands.subcommands.sources import add_rebuild_lexicon, add_reembed, add_remove_source, add_sources
from s3sync_dagster.commands.subcommands.sync import add_discover, add_repair, add_sync

__all__ = [
    "add_cancel",
    "add_demo",
    "add_discover",
    "add_invocations",
    "add_invoke",
    "add_plan",
    "add_query",
    "add_query_server",
    "add_rebuild_lexicon",
    "add_reembed",
    "add_remove_source",
    "add_repair",
    "add_sources",
    "add_sync",
    "keep_searchers_open",
]
