"""What a tick does: the SQS tick and the poll tick (ticks), an SQS tick's messages, the run requests a tick
makes, who else reads a queue or prefix now, the queues one run reads, invocations turned into runs, and the
monitor that fails runs whose worker died.

May import: failpoints, links, names, resources, run_config, state, tags.
"""
