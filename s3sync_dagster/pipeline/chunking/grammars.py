"""The tree-sitter side of chunking: grammars by file extension, parsers, parsing within a time budget, node rules."""

from __future__ import annotations

import importlib
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Final

import tree_sitter

__all__ = [
    "CODE_RULES",
    "MARKDOWN_RULES",
    "SUPPORTED_LANGUAGES",
    "Kinds",
    "Rules",
    "language_for",
    "parse_within_budget",
    "parser_for",
]


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


def parser_for(name: str) -> tree_sitter.Parser:
    parsers: dict[str, tree_sitter.Parser] | None = getattr(_thread_state, "parsers", None)
    if parsers is None:
        parsers = {}
        _thread_state.parsers = parsers
    parser = parsers.get(name)
    if parser is None:
        parser = tree_sitter.Parser(_language(name))
        parsers[name] = parser
    return parser


# Error recovery on input that is not really in the language (binary junk, a
# mislabelled file) can run at a few hundred KB/s or slower; past this time
# budget the parse is abandoned and the file is chunked by lines. Real code
# parses several times faster than the budget allows, even on a slow machine.
_PARSE_SECONDS_BASE: Final = 1.5
_PARSE_SECONDS_PER_MB: Final = 1.5


def parse_within_budget(parser: tree_sitter.Parser, data: bytes) -> tree_sitter.Tree | None:
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


# --- node classification ----------------------------------------------------------


@dataclass(frozen=True)
class Rules:
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


CODE_RULES: Final = Rules(
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
MARKDOWN_RULES: Final = Rules(
    unit=re.compile(
        r"(?!atx_heading$|setext_heading$|list_marker.*|task_list_marker.*"
        r"|block_continuation$|block_quote_marker$).*"
    ),
    leading=re.compile(r"atx_heading|setext_heading"),
    recurse=re.compile(r"document|section|list|list_item|block_quote"),
)


class Kinds:
    """Memoised (is_unit, is_leading, may_recurse) per node type."""

    def __init__(self, rules: Rules) -> None:
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
