"""The `s3sync` command. `launcher` is where it starts (a query goes to the resident query process when one
runs); `cli` builds the parser from the subcommands; `subcommand` is what they share (--config, --json, exit codes);
`errors` what a command reports in one line; `query` searching a source (`SourceSearch` / `search_source` for
applications, importing no Dagster); `resident` and `resident_server` the resident query process that keeps the store,
the lexical index and the model open between `s3sync query` calls; `celery_worker` the Celery app workers serve.
Beneath them, by concern:

    subcommands   one module per group of subcommands, each its parser and handler
    runs          the command's runs on a Dagster instance: discover, ranged runs, their reports, repair, invocations
    demo          the demo: a local S3 endpoint, the bundled sample (`demo_data/`)
"""
