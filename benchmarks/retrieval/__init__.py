"""Retrieval: whether a chunk comes back when asked for (chunks), hybrid search's fusions, whether the shown passage
answers, int8 against float32, what a search costs, corpora no one here wrote.

May import: common, latency, servers, sync.
"""
