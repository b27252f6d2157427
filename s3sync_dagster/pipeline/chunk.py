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

import tree_sitter

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


def _line_ends(data: bytes, start: int, end: int, max_bytes: int, max_lines: int) -> list[int]:
    """End offsets of line chunks covering ``data[start:end]``."""
    ends: list[int] = []
    pos = start
    while pos < end:
        limit = min(end, pos + max_bytes)
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
            cut = _char_floor(data, limit, pos)
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

    def __init__(self, data: bytes, max_bytes: int, max_lines: int, rules: _Rules) -> None:
        self._data = data
        self._max = max_bytes
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
        if size <= self._max:
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
        size = end - start
        pending = self._end - self._start
        if pending + size <= self._max:
            if self._tail and is_unit:
                self._flush(hold_leading=True)
            self._append(start, end, is_unit=is_unit, is_leading=is_leading)
            return
        if size <= self._max:
            held = self._end - self._leading_from if self._leading_from is not None else 0
            self._flush(hold_leading=held + size <= self._max)
            self._append(start, end, is_unit=is_unit, is_leading=is_leading)
            return
        # Too big for one chunk. What is pending is carried into its first
        # piece only when it is a header (keywords, names, comments), never
        # when it holds whole statements or the end of a node split before.
        if self._has_unit or self._tail:
            self._flush(hold_leading=True)
        if may_recurse and node.child_count and depth < _MAX_DEPTH:
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
        ends = _line_ends(self._data, start, end, self._max, self._max_lines)
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


def _indent_to_line_start(data: bytes, cuts: list[int], max_bytes: int) -> None:
    """Move cuts that fall after a line's indentation back to the line start.

    Chunks then start with a whole line (``"    def f"`` rather than
    ``"def f"``) and the chunk before ends with its newline.
    """
    for index in range(1, len(cuts) - 1):
        cut = cuts[index]
        line_start = data.rfind(b"\n", cuts[index - 1], cut) + 1
        if (
            line_start > cuts[index - 1]
            and line_start < cut
            and not data[line_start:cut].strip(b" \t")
            and cuts[index + 1] - line_start <= max_bytes
        ):
            cuts[index] = line_start


# --- assembling the result --------------------------------------------------------


def _normalise(data: bytes, cuts: list[int], max_bytes: int, max_lines: int) -> list[int]:
    """Safety net for the invariants: increasing cuts on character boundaries,
    no piece over the byte limit (re-split by lines if one ever is)."""
    size = len(data)
    fixed = [0]
    for cut in cuts[1:]:
        cut = size if cut >= size else _char_floor(data, cut, fixed[-1])
        if cut <= fixed[-1]:
            continue
        if cut - fixed[-1] > max_bytes:
            fixed.extend(_line_ends(data, fixed[-1], cut, max_bytes, max_lines))
        else:
            fixed.append(cut)
    if fixed[-1] != size:
        fixed.extend(_line_ends(data, fixed[-1], size, max_bytes, max_lines))
    return fixed


def _line_span(text: str) -> int:
    """Lines a non-empty text touches; a final "\n" ends its line, it opens none."""
    return text.count("\n") - text.endswith("\n") + 1


def _blank_split(
    before: tuple[str, int],
    blank: str,
    after: tuple[str, int],
    max_bytes: int,
    max_lines: int | None,
) -> int | None:
    """Where to cut ``blank`` so its head joins ``before`` and its tail ``after``.

    Prefers the cut that leaves ``before`` ending a line and gives it as much
    as it can take (trailing whitespace reads as the end of what it follows).
    """
    before_text, before_size = before
    after_text, after_size = after
    before_newlines = before_text.count("\n")
    after_span = after_text.count("\n") - after_text.endswith("\n") + 1
    blank_size = len(blank.encode("utf-8", "surrogatepass"))
    blank_newlines = blank.count("\n")
    head_size = head_newlines = 0
    best: int | None = None
    best_at_line_end: int | None = None
    for cut in range(1, len(blank)):
        char = blank[cut - 1]
        head_size += len(char.encode("utf-8", "surrogatepass"))
        head_newlines += char == "\n"
        if before_size + head_size > max_bytes:
            break
        if max_lines is not None and before_newlines + head_newlines - (char == "\n") + 1 > max_lines:
            break
        if blank_size - head_size + after_size > max_bytes:
            continue
        if max_lines is not None and blank_newlines - head_newlines + after_span > max_lines:
            continue
        best = cut
        if char == "\n":
            best_at_line_end = cut
    return best_at_line_end if best_at_line_end is not None else best


def _merge_blank(pieces: list[tuple[str, int]], max_bytes: int, max_lines: int | None) -> list[tuple[str, int]]:
    """Fold whitespace-only pieces into their neighbours where the limits allow.

    Each piece is (text, utf-8 size). A blank piece wastes an embedding, so it
    goes whole to the piece before, else whole to the piece after, else is
    shared between the two; only a blank that none of these fit stays.
    """

    def fits(text: str, size: int) -> bool:
        return size <= max_bytes and (max_lines is None or _line_span(text) <= max_lines)

    pending = list(pieces)
    out: list[tuple[str, int]] = []
    for index, (text, size) in enumerate(pending):
        if not text.isspace():
            out.append((text, size))
            continue
        has_next = index + 1 < len(pending)
        if out and fits(out[-1][0] + text, out[-1][1] + size):
            out[-1] = (out[-1][0] + text, out[-1][1] + size)
            continue
        if has_next:
            next_text, next_size = pending[index + 1]
            if fits(text + next_text, size + next_size):
                # The next piece is visited later, so it may take further blanks.
                pending[index + 1] = (text + next_text, size + next_size)
                continue
            cut = _blank_split(out[-1], text, pending[index + 1], max_bytes, max_lines) if out else None
            if cut is not None:
                head, tail = text[:cut], text[cut:]
                head_size = len(head.encode("utf-8", "surrogatepass"))
                out[-1] = (out[-1][0] + head, out[-1][1] + head_size)
                pending[index + 1] = (tail + next_text, size - head_size + next_size)
                continue
        out.append((text, size))
    return out


def _to_chunks(pieces: list[tuple[str, int]]) -> list[Chunk]:
    chunks: list[Chunk] = []
    line = 1
    for text, _size in pieces:
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


def _tree_cuts(data: bytes, language: str, max_bytes: int, max_lines: int) -> list[int] | None:
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
    ends = _TreeChunker(data, max_bytes, max_lines, rules).run(tree.root_node)
    cuts = [0, *ends]
    _indent_to_line_start(data, cuts, max_bytes)
    return cuts


def chunk_text(
    text: str,
    file_name: str,
    *,
    mode: Literal["tree_sitter", "lines"] = "tree_sitter",
    max_size_bytes: int = 4096,
    max_lines: int = 10,
    markdown: bool = False,
) -> ChunkResult:
    """Split ``text`` into consecutive chunks that together are exactly ``text``.

    ``mode="lines"`` chunks every file by lines (at most ``max_lines`` lines and
    ``max_size_bytes`` UTF-8 bytes each). ``mode="tree_sitter"`` chunks code by
    syntax and markdown (by extension, or any file when ``markdown`` is true)
    by sections and blocks, bounded by ``max_size_bytes`` only; other files,
    and single nodes too big to split further, are chunked by lines.
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

    tree_language = language if mode == "tree_sitter" else None
    cuts = _tree_cuts(data, tree_language, max_size_bytes, max_lines) if tree_language else None
    if cuts is None:
        cuts = [0, *_line_ends(data, 0, len(data), max_size_bytes, max_lines)]
        line_limit: int | None = max_lines
    else:
        line_limit = None
    # An unusable grammar reports "lines": the name says what really chunked.
    chunker = f"tree_sitter:{tree_language}" if line_limit is None else "lines"

    cuts = _normalise(data, cuts, max_size_bytes, max_lines)
    pieces = [(data[start:end].decode("utf-8", "surrogatepass"), end - start) for start, end in pairwise(cuts)]
    pieces = _merge_blank(pieces, max_size_bytes, line_limit)
    return ChunkResult(chunks=_to_chunks(pieces), chunker=chunker, language=language)
