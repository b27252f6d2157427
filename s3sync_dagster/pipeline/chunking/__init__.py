"""Chunking: a text cut into chunks (tree-sitter grammars for code and markdown, lines otherwise), each chunk's
context line (key, title, headings or enclosing definitions), and the model's token window they are cut to.

May import: nothing of the engine.
"""

from __future__ import annotations

from s3sync_dagster.pipeline.chunking.chunk import Chunk, ChunkResult, chunk_text
from s3sync_dagster.pipeline.chunking.context import CONTEXT_KEY, context_lines, embedding_input
from s3sync_dagster.pipeline.chunking.grammars import SUPPORTED_LANGUAGES
from s3sync_dagster.pipeline.chunking.tokens import TokenBudget, TokenCounter

__all__ = [
    "CONTEXT_KEY",
    "SUPPORTED_LANGUAGES",
    "Chunk",
    "ChunkResult",
    "TokenBudget",
    "TokenCounter",
    "chunk_text",
    "context_lines",
    "embedding_input",
]
