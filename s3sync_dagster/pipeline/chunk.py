"""Split a file's text into chunks for embedding, the way Chroma S3 Sync does.

Three stages: tree-sitter chunking along syntax boundaries for source code,
tree-sitter chunking along headings and blocks for markdown, and plain line
chunking for everything else (and for whatever the first two cannot split).

The module is pure Python (no Dagster import) so it can be used and tested on
its own. All splitting happens on the UTF-8 bytes, because that is what
tree-sitter reports offsets in and what ``max_size_bytes`` limits; the chunks
are decoded back to ``str`` only at the end, once per chunk, which keeps the
work linear in the size of the file.
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import tree_sitter

from s3sync_dagster.pipeline.tokens import TokenBudget, TokenCounter

__all__ = [
    "SUPPORTED_LANGUAGES",
    "Chunk",
    "ChunkResult",
    "chunk_text",
    "language_for",
]

_log = logging.getLogger(__name__)

MIN_SIZE_BYTES: Final = 16
"""Smallest accepted ``max_size_bytes``: room for a few 4-byte characters."""

# Parsing runs at a few MB/s and a tree takes many times the source's memory;
# files this big are nearly always generated or minified, where syntax-aware
# chunking gains little, so they go to the line stage.
_TREE_SITTER_MAX_BYTES: Final = 8 * 1024 * 1024

# Error recovery on input that is not really in the language (binary junk, a
# mislabelled file) can run at a few hundred KB/s or slower; past this time
# budget the parse is abandoned and the file is chunked by lines. Real code
# parses several times faster than the budget allows, even on a slow machine.
_PARSE_SECONDS_BASE: Final = 1.5
_PARSE_SECONDS_PER_MB: Final = 1.5

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


@dataclass(frozen=True)
class _Grammar:
    module: str  # import name of the grammar wheel
    function: str  # function in that module returning the language capsule
    extensions: tuple[str, ...]


_GRAMMARS: Final[Mapping[str, _Grammar]] = MappingProxyType(
    {
        "python": _Grammar("tree_sitter_python", "language", (".py", ".pyi", ".pyw")),
        "javascript": _Grammar("tree_sitter_javascript", "language", (".js", ".mjs", ".cjs", ".jsx")),
        "typescript": _Grammar("tree_sitter_typescript", "language_typescript", (".ts", ".mts", ".cts")),
        "tsx": _Grammar("tree_sitter_typescript", "language_tsx", (".tsx",)),
        "go": _Grammar("tree_sitter_go", "language", (".go",)),
        "rust": _Grammar("tree_sitter_rust", "language", (".rs",)),
        "java": _Grammar("tree_sitter_java", "language", (".java",)),
        "c": _Grammar("tree_sitter_c", "language", (".c", ".h")),
        "cpp": _Grammar(
            "tree_sitter_cpp",
            "language",
            (".cc", ".cpp", ".cxx", ".c++", ".hpp", ".hh", ".hxx", ".h++"),
        ),
        "csharp": _Grammar("tree_sitter_c_sharp", "language", (".cs",)),
        "ruby": _Grammar("tree_sitter_ruby", "language", (".rb", ".rake", ".gemspec")),
        "php": _Grammar("tree_sitter_php", "language_php", (".php", ".phtml")),
        "bash": _Grammar("tree_sitter_bash", "language", (".sh", ".bash")),
        "kotlin": _Grammar("tree_sitter_kotlin", "language", (".kt", ".kts")),
        "scala": _Grammar("tree_sitter_scala", "language", (".scala", ".sc")),
        "swift": _Grammar("tree_sitter_swift", "language", (".swift",)),
        "lua": _Grammar("tree_sitter_lua", "language", (".lua",)),
        "haskell": _Grammar("tree_sitter_haskell", "language", (".hs",)),
        "css": _Grammar("tree_sitter_css", "language", (".css",)),
        "json": _Grammar("tree_sitter_json", "language", (".json",)),
        "yaml": _Grammar("tree_sitter_yaml", "language", (".yaml", ".yml")),
        "toml": _Grammar("tree_sitter_toml", "language", (".toml",)),
        "markdown": _Grammar("tree_sitter_markdown", "language", (".md", ".markdown", ".mdx")),
    }
)

SUPPORTED_LANGUAGES: Final[Mapping[str, str]] = MappingProxyType(
    {ext: name for name, grammar in _GRAMMARS.items() for ext in grammar.extensions}
)
"""File extension (lower case, with the dot) -> language name."""


def language_for(file_name: str) -> str | None:
    """The language of a file by its extension (any case), or None for plain text."""
    return SUPPORTED_LANGUAGES.get(PurePosixPath(file_name).suffix.lower())


# --- grammar and parser cache ---------------------------------------------------

_languages: dict[str, tree_sitter.Language] = {}
_languages_lock = threading.Lock()
# A Parser keeps per-parse state, so each thread gets its own; Language objects
# are immutable and shared.
_thread_state = threading.local()


def _language(name: str) -> tree_sitter.Language:
    with _languages_lock:
        language = _languages.get(name)
        if language is None:
            grammar = _GRAMMARS[name]
            module = importlib.import_module(grammar.module)
            language = tree_sitter.Language(getattr(module, grammar.function)())
            _languages[name] = language
        return language


def _parser(name: str) -> tree_sitter.Parser:
    parsers: dict[str, tree_sitter.Parser] | None = getattr(_thread_state, "parsers", None)
    if parsers is None:
        parsers = {}
        _thread_state.parsers = parsers
    parser = parsers.get(name)
    if parser is None:
        parser = tree_sitter.Parser(_language(name))
        parsers[name] = parser
    return parser


# --- node classification ----------------------------------------------------------


@dataclass(frozen=True)
class _Rules:
    """How the tree walker treats node types of one family of grammars.

    "Unit" nodes are self-contained pieces (definitions, statements, blocks of
    prose): the tail of a split unit is never packed with the next unit, and
    units already in the open chunk are not glued onto the head of a split
    node. Other nodes (keywords, names, parameter lists, headings) are parts
    of a header and may travel with what follows them. "Leading" nodes
    (comments, decorators, headings) belong with the node after them, so they
    move to the next chunk when a chunk is closed right after them.
    """

    unit: re.Pattern[str]
    leading: re.Pattern[str]
    recurse: re.Pattern[str] | None  # None: any node with children may be split


_CODE_RULES: Final = _Rules(
    unit=re.compile(
        r".*_(definition|declaration|statement|item|directive)"
        r"|preproc_.*"
        r"|package_clause|package_header|import|call|command|variable_assignment"
        r"|assignment|method|singleton_method|class|module|function|function_call"
        r"|signature|data_type|newtype|instance|type_synonym|type_family"
        r"|rule_set|at_rule|pair|table|table_array_element|block_mapping_pair"
    ),
    leading=re.compile(r".*comment.*|haddock|decorator|attribute_item|annotation|marker_annotation"),
    recurse=None,
)

# Paragraphs, tables, code fences and the like are split only by lines: their
# children are inline tokens, and splitting at those would cut mid-sentence.
_MARKDOWN_RULES: Final = _Rules(
    unit=re.compile(
        r"(?!atx_heading$|setext_heading$|list_marker.*|task_list_marker.*"
        r"|block_continuation$|block_quote_marker$).*"
    ),
    leading=re.compile(r"atx_heading|setext_heading"),
    recurse=re.compile(r"document|section|list|list_item|block_quote"),
)


class _Kinds:
    """Memoised (is_unit, is_leading, may_recurse) per node type."""

    def __init__(self, rules: _Rules) -> None:
        self._rules = rules
        self._cache: dict[tuple[str, bool], tuple[bool, bool, bool]] = {}

    def of(self, node: tree_sitter.Node) -> tuple[bool, bool, bool]:
        key = (node.type, node.is_named)
        kinds = self._cache.get(key)
        if kinds is None:
            rules = self._rules
            name, named = key
            leading = named and rules.leading.fullmatch(name) is not None
            unit = named and not leading and rules.unit.fullmatch(name) is not None
            recurse = rules.recurse is None or rules.recurse.fullmatch(name) is not None
            kinds = (unit, leading, recurse)
            self._cache[key] = kinds
        return kinds


# --- line stage -------------------------------------------------------------------


def _char_floor(data: bytes, pos: int, low: int) -> int:
    """Move ``pos`` back to the start of the UTF-8 character it falls in."""
    start = pos
    while pos > low and pos < len(data) and data[pos] & 0xC0 == 0x80:
        pos -= 1
    # Only malformed input has no lead byte within reach; cut where asked then.
    return pos if pos > low else start


class _Limits:
    """What one chunk may hold: UTF-8 bytes, and the embedding model's tokens where its tokenizer is here.

    Token counts come from one tokenization of the whole text: a range holds the tokens that start in
    it. That is exact at the cuts the chunker makes (line ends, node and word boundaries); a cut inside
    a word can make a piece tokenize differently alone, which `_fit_tokens` checks and mends.
    """

    def __init__(self, max_bytes: int, token_starts: npt.NDArray[np.int64] | None = None, max_tokens: int = 0) -> None:
        self.max_bytes = max_bytes
        self._starts = token_starts
        self._max_tokens = max_tokens

    def tokens(self, start: int, end: int) -> int:
        if self._starts is None:
            return 0
        return int(np.searchsorted(self._starts, end) - np.searchsorted(self._starts, start))

    def fits(self, start: int, end: int) -> bool:
        if end - start > self.max_bytes:
            return False
        return self._starts is None or self.tokens(start, end) <= self._max_tokens

    def reach(self, start: int) -> int:
        """The furthest end a chunk starting at ``start`` may have (before snapping to a character)."""
        end = start + self.max_bytes
        if self._starts is not None:
            first = int(np.searchsorted(self._starts, start))
            if first + self._max_tokens < len(self._starts):
                end = min(end, int(self._starts[first + self._max_tokens]))
        return end

    def last_token_start(self, start: int, end: int) -> int | None:
        """The last token start in (start, end], if the tokens are known and one lies there."""
        if self._starts is None:
            return None
        index = int(np.searchsorted(self._starts, end, side="right")) - 1
        if index >= 0 and self._starts[index] > start:
            return int(self._starts[index])
        return None


# Where a line too long for one chunk is cut: after a sentence, else after a space, else at a token.
_SENTENCE_END: Final = re.compile(rb"(?:[.!?][\"')\]]*|\xe3\x80\x82)[ \t]+")
_SPACES: Final = re.compile(rb"[ \t]+")


def _cut_long_line(data: bytes, start: int, limit: int, limits: _Limits) -> int:
    """Where to end a chunk inside one line that runs past ``limit``: the last sentence end in the
    second half of the room, else the last space in its last three quarters, else the last token start,
    else the last character boundary."""
    room = limit - start
    best = None
    for match in _SENTENCE_END.finditer(data, start + room // 2, limit):
        best = match.end()
    if best is None:
        for match in _SPACES.finditer(data, start + room // 4, limit):
            best = match.end()
    if best is not None and best < limit:
        return best
    token = limits.last_token_start(start, limit)
    if token is not None and token < limit:
        return token
    return _char_floor(data, limit, start)


def _line_ends(data: bytes, start: int, end: int, limits: _Limits, max_lines: int) -> list[int]:
    """End offsets of line chunks covering ``data[start:end]``."""
    ends: list[int] = []
    pos = start
    while pos < end:
        limit = min(end, limits.reach(pos))
        after_newline = pos
        newlines = 0
        # Bounded by ``limit`` so a megabyte-long line costs O(max_bytes) per chunk.
        while newlines < max_lines:
            found = data.find(b"\n", after_newline, limit)
            if found < 0:
                break
            after_newline = found + 1
            newlines += 1
        if newlines == max_lines:
            cut = after_newline
        elif limit == end:
            cut = end
        elif newlines:
            cut = after_newline
        else:
            cut = _cut_long_line(data, pos, limit, limits)
        ends.append(cut)
        pos = cut
    return ends


# --- tree-sitter stages -----------------------------------------------------------


class _TreeChunker:
    """Greedy packing of sibling nodes into chunks of at most ``max_bytes``.

    Every node is given the byte span from its start to the next sibling's
    start (the whitespace after a definition stays with it, so the next chunk
    begins at the next definition), and the spans of one level tile the span of
    their parent exactly, so the chunks cover the text whatever the tree is
    like. The open chunk ("pending") is always a contiguous byte range.
    """

    def __init__(self, data: bytes, limits: _Limits, max_lines: int, rules: _Rules) -> None:
        self._data = data
        self._limits = limits
        self._max_lines = max_lines
        self._kinds = _Kinds(rules)
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
        ends = _line_ends(self._data, start, end, self._limits, self._max_lines)
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


def _cuts_to_line_ends(data: bytes, cuts: list[int], limits: _Limits) -> None:
    """Move cuts that fall inside a line to a line boundary wherever the limits allow.

    Packing nodes greedily can end a chunk inside a statement (``maybe.append(name`` | ``)``) or after a
    line's indentation; only a line too long for one chunk should be cut inside. Such a cut moves to the
    end of its line when the chunk before can take the rest of it, else back to the line's start when
    the chunk after can take its head, so chunks start and end with whole lines.
    """
    for index in range(1, len(cuts) - 1):
        before, cut, after = cuts[index - 1], cuts[index], cuts[index + 1]
        line_start = data.rfind(b"\n", before, cut) + 1
        if line_start == cut or (line_start == 0 and before > 0) or data[cut - 1 : cut] == b"\n":
            continue
        line_end = data.find(b"\n", cut, after) + 1
        indentation_only = not data[line_start:cut].strip(b" \t")
        if 0 < line_end < after and not indentation_only and limits.fits(before, line_end):
            cuts[index] = line_end
        elif line_start > before and limits.fits(line_start, after):
            cuts[index] = line_start


# --- assembling the result --------------------------------------------------------


def _normalise(data: bytes, cuts: list[int], limits: _Limits, max_lines: int) -> list[int]:
    """Safety net for the invariants: increasing cuts on character boundaries,
    no piece over the limits (re-split by lines if one ever is)."""
    size = len(data)
    fixed = [0]
    for cut in cuts[1:]:
        cut = size if cut >= size else _char_floor(data, cut, fixed[-1])
        if cut <= fixed[-1]:
            continue
        if not limits.fits(fixed[-1], cut):
            fixed.extend(_line_ends(data, fixed[-1], cut, limits, max_lines))
        else:
            fixed.append(cut)
    if fixed[-1] != size:
        fixed.extend(_line_ends(data, fixed[-1], size, limits, max_lines))
    return fixed


def _line_span(data: bytes, start: int, end: int) -> int:
    """Lines a non-empty piece touches; a final "\n" ends its line, it opens none."""
    return data.count(b"\n", start, end) - (data[end - 1 : end] == b"\n") + 1


def _blank_split(
    data: bytes, before_start: int, blank: tuple[int, int], after_end: int, limits: _Limits, max_lines: int | None
) -> int | None:
    """Where to cut the whitespace ``data[blank]`` so its head joins the piece before and its tail the one after.

    Prefers the cut that leaves the piece before ending a line and gives it as much as it can take
    (trailing whitespace reads as the end of what it follows).
    """
    blank_start, blank_end = blank
    before_newlines = data.count(b"\n", before_start, blank_start)
    blank_newlines = data.count(b"\n", blank_start, blank_end)
    after_span = _line_span(data, blank_end, after_end)
    best: int | None = None
    best_at_line_end: int | None = None
    cut = blank_start
    head_newlines = 0
    for char in data[blank_start:blank_end].decode("utf-8", "surrogatepass")[:-1]:
        cut += len(char.encode("utf-8", "surrogatepass"))
        head_newlines += char == "\n"
        if not limits.fits(before_start, cut):
            break
        if max_lines is not None and before_newlines + head_newlines - (char == "\n") + 1 > max_lines:
            break
        if not limits.fits(cut, after_end):
            continue
        if max_lines is not None and blank_newlines - head_newlines + after_span > max_lines:
            continue
        best = cut
        if char == "\n":
            best_at_line_end = cut
    return best_at_line_end if best_at_line_end is not None else best


def _merge_blank(data: bytes, cuts: list[int], limits: _Limits, max_lines: int | None) -> list[int]:
    """Fold whitespace-only pieces into their neighbours where the limits allow.

    A blank piece wastes an embedding, so it goes whole to the piece before, else whole to the piece
    after, else is shared between the two; only a blank that none of these fit stays.
    """

    def fits(start: int, end: int) -> bool:
        return limits.fits(start, end) and (max_lines is None or _line_span(data, start, end) <= max_lines)

    pieces = [[start, end] for start, end in pairwise(cuts)]
    out: list[list[int]] = []
    for index, (start, end) in enumerate(pieces):
        if not data[start:end].decode("utf-8", "surrogatepass").isspace():
            out.append([start, end])
            continue
        if out and fits(out[-1][0], end):
            out[-1][1] = end
            continue
        if index + 1 < len(pieces):
            following = pieces[index + 1]
            if fits(start, following[1]):
                # The next piece is visited later, so it may take further blanks.
                following[0] = start
                continue
            cut = _blank_split(data, out[-1][0], (start, end), following[1], limits, max_lines) if out else None
            if cut is not None:
                out[-1][1] = following[0] = cut
                continue
        out.append([start, end])
    return [cuts[0], *(end for _start, end in out)]


def _fit_tokens(data: bytes, cuts: list[int], counter: TokenCounter, max_tokens: int, max_lines: int) -> list[int]:
    """Count every piece alone, as the model will receive it, and re-split any that is over budget.

    The chunker counts tokens on the whole text; a piece that starts or ends inside a word can cost
    more alone. Such a piece is cut again with its own tokenization, until every piece fits.
    """
    content = max_tokens - counter.special_tokens
    while True:
        texts = [data[start:end].decode("utf-8", "surrogatepass") for start, end in pairwise(cuts)]
        over = {index for index, count in enumerate(counter.count(texts)) if count > max_tokens}
        if not over:
            return cuts
        fixed = [cuts[0]]
        for index, (start, end) in enumerate(pairwise(cuts)):
            if index not in over:
                fixed.append(end)
                continue
            own = _Limits(end - start, start + counter.token_starts(texts[index]), content)
            ends = _line_ends(data, start, end, own, max_lines)
            if len(ends) == 1:  # counted to fit by its own tokens yet over: cut it in two by bytes
                ends = [_char_floor(data, start + (end - start) // 2, start), end]
            fixed.extend(cut for cut in ends if cut > fixed[-1])
        cuts = fixed


def _to_chunks(data: bytes, cuts: list[int]) -> list[Chunk]:
    chunks: list[Chunk] = []
    line = 1
    for start, end in pairwise(cuts):
        text = data[start:end].decode("utf-8", "surrogatepass")
        end_line = line + text.count("\n", 0, len(text) - 1)
        chunks.append(Chunk(text=text, start_line=line, end_line=end_line))
        line = end_line + (1 if text.endswith("\n") else 0)
    return chunks


def _parse(parser: tree_sitter.Parser, data: bytes) -> tree_sitter.Tree | None:
    """Parse within the time budget; None when it ran out."""
    view = memoryview(data)
    budget = _PARSE_SECONDS_BASE + _PARSE_SECONDS_PER_MB * len(data) / 1_000_000
    deadline = time.monotonic() + budget

    def read(offset: int, _point: tree_sitter.Point) -> memoryview:
        return view[offset:]

    def over_budget(_offset: int, _has_error: bool) -> bool:
        return time.monotonic() > deadline

    try:
        return parser.parse(read, progress_callback=over_budget)
    except ValueError:
        # A halted parser resumes the old parse on its next call unless reset.
        parser.reset()
        return None


def _tree_cuts(data: bytes, language: str, limits: _Limits, max_lines: int) -> list[int] | None:
    """Cuts from the tree-sitter stage, or None when the grammar is unusable."""
    if not data:
        return [0]
    if len(data) > _TREE_SITTER_MAX_BYTES:
        return None
    try:
        parser = _parser(language)
    except (ImportError, AttributeError, TypeError, ValueError) as error:
        # A missing or ABI-incompatible grammar wheel should degrade the
        # chunking of that language, not stop the sync.
        _log.warning("tree-sitter grammar for %s unavailable (%s); chunking by lines", language, error)
        return None
    tree = _parse(parser, data)
    if tree is None:
        _log.warning("tree-sitter parse of %d bytes as %s took too long; chunking by lines", len(data), language)
        return None
    rules = _MARKDOWN_RULES if language == "markdown" else _CODE_RULES
    ends = _TreeChunker(data, limits, max_lines, rules).run(tree.root_node)
    cuts = [0, *ends]
    _cuts_to_line_ends(data, cuts, limits)
    return cuts


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
        cuts = [0, *_line_ends(data, 0, len(data), limits, max_lines)]
        line_limit: int | None = max_lines
    else:
        line_limit = None
    # An unusable grammar reports "lines": the name says what really chunked.
    chunker = f"tree_sitter:{tree_language}" if line_limit is None else "lines"

    cuts = _normalise(data, cuts, limits, max_lines)
    cuts = _merge_blank(data, cuts, limits, line_limit)
    if counter is not None and tokens is not None:
        cuts = _fit_tokens(data, cuts, counter, tokens.max_tokens, max_lines)
    return ChunkResult(chunks=_to_chunks(data, cuts), chunker=chunker, language=language)


def _limits(text: str, max_size_bytes: int, tokens: TokenBudget | None) -> tuple[_Limits, TokenCounter | None]:
    if tokens is None:
        return _Limits(max_size_bytes), None
    counter = tokens.counter()
    if counter is None:
        byte_bound = tokens.byte_bound() or max_size_bytes
        return _Limits(max(MIN_SIZE_BYTES, min(max_size_bytes, byte_bound))), None
    content = tokens.max_tokens - counter.special_tokens
    if content < 1:
        raise ValueError(
            f"max_tokens {tokens.max_tokens} leaves no room for text beside {counter.special_tokens} special tokens"
        )
    return _Limits(max_size_bytes, counter.token_starts(text), content), counter
