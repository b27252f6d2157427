"""The Dagster layer. `source` makes one source's Dagster objects (asset, checks, jobs, sensors) in named
functions; `names`, `tags` and `run_config` name and type them; `resources` holds connections only; `webserver` the
GraphQL the backfill job calls; `executor` picks where steps run; `state` and `links` keep the poll state and the
metadata links in the instance; `index_view` is what a source's collection holds now; `failpoints` lets the tests kill
a process at a named point. What runs and ticks do lives beneath:

    runs      a run of the asset or a job: index keys, the checks, repair, reembed, backfill, plan, linger
    sensors   a tick: SQS messages and prefix passes into run requests, readers, queues, invocations, the run monitor
"""
