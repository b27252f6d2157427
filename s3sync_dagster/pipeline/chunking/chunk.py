"""Split a file's text into chunks for embedding, the way Chroma S3 Sync does.

Three stages: tree-sitter chunking along syntax boundaries for source code,
tree-sitter chunking along headings and blocks for markdown, and plain line
chunking for everything else (and for whatever the first two cannot split).

The module is pure Python (no Dagster import) so it can be used and tested on
its own. All splitting happens on the UTF-8 bytes, because that is what
tree-sitter reports offsets in and what ``max_size_bytes`` limits; the chunks
are decoded back to ``str`` only at the end, once per chunk, which keeps the
work linear in the size of the file.

This module walks the syntax tree and assembles the result; which grammar
reads a file and how its node types are treated is in ``grammars``, and the
arithmetic of byte-offset cuts (limits, chunking by lines, mending cuts) is
in ``cuts``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import pairwise
from typing import Final, Literal

import tree_sitter

from s3sync_dagster.pipeline.chunking.cuts import (
    Limits,
    cuts_to_line_ends,
    fit_tokens,
    line_ends,
    merge_blank,
    normalise,
)
from s3sync_dagster.pipeline.chunking.grammars import (
    CODE_RULES,
    MARKDOWN_RULES,
    Kinds,
    Rules,
    language_for,
    parse_within_budget,
    parser_for,
)
from s3sync_dagster.pipeline.chunking.tokens import TokenBudget, TokenCounter

__all__ = ["Chunk", "ChunkResult", "chunk_text"]

_log = logging.getLogger(__name__)

MIN_SIZE_BYTES: Final = 16
"""Smallest accepted ``max_size_bytes``: room for a few 4-byte characters."""

# Parsing runs at a few MB/s and a tree takes many times the source's memory;
# files this big are nearly always generated or minified, where syntax-aware
# chunking gains little, so they go to the line stage.
_TREE_SITTER_MAX_BYTES: Final = 8 * 1024 * 1024

# Deep trees (long operator chains, generated code) would otherwise exhaust
# Python's recursion limit; below this depth a too-big node goes to lines.
_MAX_DEPTH: Final = 128


@dataclass(frozen=True)
class Chunk:
    """A piece of a file's text, with where it sits in the file."""

    text: str
    start_line: int  # 1-based line number of the chunk's first character
    end_line: int  # 1-based line of its last character; a trailing "\n" ends its line


@dataclass(frozen=True)
class ChunkResult:
    """The chunks of one file and the stage that produced them."""

    chunks: list[Chunk]
    chunker: str  # "tree_sitter:<language>", "tree_sitter:markdown" or "lines"
    language: str | None  # "python", ..., "markdown", or None for other text


# --- tree-sitter stages -----------------------------------------------------------


class _TreeChunker:
    """Greedy packing of sibling nodes into chunks of at most ``max_bytes``.

    Every node is given the byte span from its start to the next sibling's
    start (the whitespace after a definition stays with it, so the next chunk
    begins at the next definition), and the spans of one level tile the span of
    their parent exactly, so the chunks cover the text whatever the tree is
    like. The open chunk ("pending") is always a contiguous byte range.
    """

    def __init__(self, data: bytes, limits: Limits, max_lines: int, rules: Rules) -> None:
        self._data = data
        self._limits = limits
        self._max_lines = max_lines
        self._kinds = Kinds(rules)
        self._ends: list[int] = []
        self._start = 0  # pending chunk is data[_start:_end]; empty when equal
        self._end = 0
        self._has_unit = False
        self._tail = False  # pending holds the last piece of a split node
        self._leading_from: int | None = None  # start of a trailing run of leading nodes

    def run(self, root: tree_sitter.Node) -> list[int]:
        size = len(self._data)
        if self._limits.fits(0, size):
            return [size] if size else []
        if root.child_count and self._kinds.of(root)[2]:
            self._walk(root, 0, size, 0)
        else:
            self._lines(0, size)
        self._flush(hold_leading=False)
        return self._ends

    def _walk(self, node: tree_sitter.Node, start: int, end: int, depth: int) -> None:
        children = node.children
        # Each span ends where the next sibling starts, clamped so that
        # zero-width (MISSING) nodes and odd offsets from error recovery can
        # neither make spans overlap nor leave the parent's span.
        span_ends = [min(max(child.start_byte, start), end) for child in children[1:]]
        span_ends.append(end)
        span_start = start
        for child, span_end in zip(children, span_ends, strict=True):
            if span_end > span_start:
                self._add(child, span_start, span_end, depth)
                span_start = span_end

    def _add(self, node: tree_sitter.Node, start: int, end: int, depth: int) -> None:
        is_unit, is_leading, may_recurse = self._kinds.of(node)
        if is_leading and not self._starts_line(node):
            # A comment after code on the same line ("x = 1  # why") is about
            # that code, not about what follows.
            is_leading = False
        fits = self._limits.fits
        # The pending chunk is contiguous and ends where this node's span starts.
        if fits(self._start if self._end > self._start else start, end):
            if self._tail and is_unit:
                self._flush(hold_leading=True)
            self._append(start, end, is_unit=is_unit, is_leading=is_leading)
            return
        can_split = may_recurse and node.child_count > 0 and depth < _MAX_DEPTH
        header_only = self._end > self._start and not self._has_unit and not self._tail
        # A node that fits alone but not after a pending header (a decorator, a signature, a heading) is
        # split at its children instead, so the header travels with its first part and no chunk is a
        # lone "def f(x):" or "@property".
        if fits(start, end) and not (header_only and can_split):
            held_from = self._leading_from if self._leading_from is not None else start
            self._flush(hold_leading=fits(held_from, end))
            self._append(start, end, is_unit=is_unit, is_leading=is_leading)
            return
        # Too big for one chunk. What is pending is carried into its first
        # piece only when it is a header (keywords, names, comments), never
        # when it holds whole statements or the end of a node split before.
        if self._has_unit or self._tail:
            self._flush(hold_leading=True)
        if can_split:
            self._walk(node, start, end, depth + 1)
            self._tail = True
        else:
            self._lines(start, end)

    def _starts_line(self, node: tree_sitter.Node) -> bool:
        column = node.start_point.column  # in bytes
        # Indentation is short; a node far into a line is never first on it,
        # and not scanning long lines keeps minified files linear.
        if column > 256:
            return False
        return not self._data[node.start_byte - column : node.start_byte].strip()

    def _append(self, start: int, end: int, *, is_unit: bool, is_leading: bool) -> None:
        if self._end == self._start:
            self._start = start
        self._end = end
        self._has_unit = self._has_unit or is_unit
        if not is_leading:
            self._leading_from = None
        elif self._leading_from is None:
            self._leading_from = start

    def _lines(self, start: int, end: int) -> None:
        if self._end > self._start:
            start = self._start
        ends = line_ends(self._data, start, end, self._limits, self._max_lines)
        self._ends.extend(ends[:-1])
        self._start = ends[-2] if len(ends) > 1 else start
        self._end = end
        self._has_unit = False
        self._tail = True
        self._leading_from = None

    def _flush(self, *, hold_leading: bool) -> None:
        """Close the pending chunk; with ``hold_leading`` keep its trailing
        comments/decorators/headings open so they join what follows."""
        if self._end == self._start:
            return
        keep_from = self._leading_from if hold_leading else None
        if keep_from is not None and keep_from > self._start:
            self._ends.append(keep_from)
            self._start = keep_from
        elif keep_from is None:
            self._ends.append(self._end)
            self._start = self._end
            self._leading_from = None
        self._has_unit = False
        self._tail = False


def _tree_cuts(data: bytes, language: str, limits: Limits, max_lines: int) -> list[int] | None:
    """Cuts from the tree-sitter stage, or None when the grammar is unusable."""
    if not data:
        return [0]
    if len(data) > _TREE_SITTER_MAX_BYTES:
        return None
    try:
        parser = parser_for(language)
    except (ImportError, AttributeError, TypeError, ValueError) as error:
        # A missing or ABI-incompatible grammar wheel should degrade the
        # chunking of that language, not stop the sync.
        _log.warning("tree-sitter grammar for %s unavailable (%s); chunking by lines", language, error)
        return None
    tree = parse_within_budget(parser, data)
    if tree is None:
        _log.warning("tree-sitter parse of %d bytes as %s took too long; chunking by lines", len(data), language)
        return None
    rules = MARKDOWN_RULES if language == "markdown" else CODE_RULES
    ends = _TreeChunker(data, limits, max_lines, rules).run(tree.root_node)
    cuts = [0, *ends]
    cuts_to_line_ends(data, cuts, limits)
    return cuts


# --- assembling the result --------------------------------------------------------


def _to_chunks(data: bytes, cuts: list[int]) -> list[Chunk]:
    chunks: list[Chunk] = []
    line = 1
    for start, end in pairwise(cuts):
        text = data[start:end].decode("utf-8", "surrogatepass")
        end_line = line + text.count("\n", 0, len(text) - 1)
        chunks.append(Chunk(text=text, start_line=line, end_line=end_line))
        line = end_line + (1 if text.endswith("\n") else 0)
    return chunks


def chunk_text(
    text: str,
    file_name: str,
    *,
    mode: Literal["tree_sitter", "lines"] = "tree_sitter",
    max_size_bytes: int = 4096,
    max_lines: int = 10,
    markdown: bool = False,
    tokens: TokenBudget | None = None,
) -> ChunkResult:
    """Split ``text`` into consecutive chunks that together are exactly ``text``.

    ``mode="lines"`` chunks every file by lines (at most ``max_lines`` lines and
    ``max_size_bytes`` UTF-8 bytes each). ``mode="tree_sitter"`` chunks code by
    syntax and markdown (by extension, or any file when ``markdown`` is true)
    by sections and blocks, bounded by ``max_size_bytes`` only; other files,
    and single nodes too big to split further, are chunked by lines.

    With ``tokens``, no chunk costs the embedding model more than ``tokens.max_tokens``
    (special tokens included), counted with the model's tokenizer: structure still
    decides where to cut, and only a single line too long for the budget is cut
    inside, after a sentence or a word where it can be.
    """
    if max_size_bytes < MIN_SIZE_BYTES:
        raise ValueError(f"max_size_bytes must be at least {MIN_SIZE_BYTES}, got {max_size_bytes}")
    if max_lines < 1:
        raise ValueError(f"max_lines must be at least 1, got {max_lines}")
    if mode not in ("tree_sitter", "lines"):
        raise ValueError(f"mode must be 'tree_sitter' or 'lines', got {mode!r}")

    language = "markdown" if markdown else language_for(file_name)
    # surrogatepass: text decoded with surrogateescape must not crash the sync.
    data = text.encode("utf-8", "surrogatepass")
    limits, counter = _limits(text, max_size_bytes, tokens)

    tree_language = language if mode == "tree_sitter" else None
    cuts = _tree_cuts(data, tree_language, limits, max_lines) if tree_language else None
    if cuts is None:
        cuts = [0, *line_ends(data, 0, len(data), limits, max_lines)]
        line_limit: int | None = max_lines
    else:
        line_limit = None
    # An unusable grammar reports "lines": the name says what really chunked.
    chunker = f"tree_sitter:{tree_language}" if line_limit is None else "lines"

    cuts = normalise(data, cuts, limits, max_lines)
    cuts = merge_blank(data, cuts, limits, line_limit)
    if counter is not None and tokens is not None:
        cuts = fit_tokens(data, cuts, counter, tokens.max_tokens, max_lines)
    return ChunkResult(chunks=_to_chunks(data, cuts), chunker=chunker, language=language)


def _limits(text: str, max_size_bytes: int, tokens: TokenBudget | None) -> tuple[Limits, TokenCounter | None]:
    if tokens is None:
        return Limits(max_size_bytes), None
    counter = tokens.counter()
    if counter is None:
        byte_bound = tokens.byte_bound() or max_size_bytes
        return Limits(max(MIN_SIZE_BYTES, min(max_size_bytes, byte_bound))), None
    content = tokens.max_tokens - counter.special_tokens
    if content < 1:
        raise ValueError(
            f"max_tokens {tokens.max_tokens} leaves no room for text beside {counter.special_tokens} special tokens"
        )
    return Limits(max_size_bytes, counter.token_starts(text), content), counter
