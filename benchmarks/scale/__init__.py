"""Scale: one source with many keys and one very large object, a million keys, the audit and the plan at scale,
section 10 across hosts, and the reliability table.

May import: common, latency, servers, sync.
"""
