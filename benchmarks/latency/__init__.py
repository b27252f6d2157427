"""Upload -> queryable: one file at a time with the SQS sensor and the daemon running, Dagster's own floor, and four
SQS sources of one code location.

May import: common, servers.
"""
