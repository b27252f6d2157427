"""Bulk sync: one corpus three ways (throughput), the deterministic corpus, incremental cost, embedding in a run,
two writers, the embedding model against the CPU's peak, before/after figures, a LlamaIndex peer.

May import: common, servers.
"""
