"""The engine without Dagster: chunking, extraction, embedding, keys, events, selections, the sync and its stages, the lexical index, poll state, labels, limits, storage classes and roles."""
