"""The subcommands of `s3sync`, one module per group, each its parser and its handler: sync (discover, sync,
repair), sources (sources, remove-source, rebuild-lexicon, reembed), invocations (invoke, invocations, cancel),
plan, query, servers (query-server, demo).

May import: demo, errors, query, resident, runs, subcommand.
"""
