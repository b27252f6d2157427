"""The command's work on a Dagster instance: which home, keys as partitions, discovery and the ranged runs of a
sync (one per batch of neighbouring partitions), what a finished run did (read back from its events), repair, the
Sync API's invocations, sources as it shows them, and the live progress on a terminal.

May import: errors.
"""
