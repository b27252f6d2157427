"""Where a chunk stands in its object: its context line (the object's key, its title, the headings or the
enclosing definitions in effect where the chunk starts), and what is embedded and indexed for it: that line,
then the chunk's text.

A 128-token chunk of a section "Server Memory" of `deployment/concepts.md` rarely says "deployment" or
"memory" in its own words; embedded (and indexed) with `deployment/concepts.md > Deployments Concepts > Server
Memory` before it, it is found by them. The stored Chroma document stays the chunk's own text.

Contexts are computed from the chunks' texts in order, as they tile their object's text: the write path
(pipeline/sync/write.py) and a collection written before contexts (pipeline/reembed/context_backfill.py, from the stored
chunks, no S3 read) compute the same line for the same chunks.

**The window is shared, the chunk first.** A chunk keeps its token budget (every word of it still embedded);
its context gets what is left of the model's window, and is cut from its least specific end (the object's
key first, then the outer headings, then the first words of the innermost one) until context and chunk fit
together, or dropped when nothing is left. The cut line is what is stored, so what was embedded can always
be told again from the chunk alone (`embedding_input`).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from s3sync_dagster.pipeline.chunking.grammars import parse_within_budget, parser_for
from s3sync_dagster.pipeline.chunking.tokens import BYTE_BOUND_RESERVE, TokenBudget

__all__ = ["CONTEXT_KEY", "SEPARATOR", "context_lines", "embedding_input", "fit"]

# The chunk metadata key holding a chunk's context line (as embedded: already cut to the window).
CONTEXT_KEY: Final = "chunk_context"
SEPARATOR: Final = " > "
# Between the context line and the chunk's text in what is embedded and indexed.
_JOIN: Final = "\n\n"
# A part (a heading, a definition, the key) longer than this is cut: a heading that is really a paragraph
# (broken markdown) would otherwise crowd out the chunk's own meaning wherever the window is large.
PART_CHARS: Final = 100
# And a whole line longer than this loses parts from its least specific end, whatever the window: a context names
# where a chunk stands, it does not retell the document (and stays within Chroma Cloud's 4,096 bytes a value).
CONTEXT_CHARS: Final = 300
# Languages whose definitions make a context (tree-sitter); data and style sheets have none worth naming.
_NO_DEFINITIONS: Final = frozenset({"markdown", "json", "yaml", "toml", "css"})
_TREE_MAX_BYTES: Final = 8 * 1024 * 1024  # as pipeline/chunking/chunk.py: bigger files are generated; no tree


def embedding_input(text: str, metadata: Mapping[str, Any] | None) -> str:
    """What is embedded (and lexically indexed) for a chunk of `text` with this metadata: its context line,
    a blank line, its text; the text alone for a chunk written before contexts (or whose context was cut
    to nothing). Every path that embeds or hashes a chunk calls this."""
    context = (metadata or {}).get(CONTEXT_KEY)
    return _joined(context if isinstance(context, str) else "", text)


def _joined(context: str, text: str) -> str:
    return f"{context}{_JOIN}{text}" if context else text


def context_lines(
    object_key: str,
    language: str | None,
    texts: Sequence[str],
    budget: TokenBudget | None,
    *,
    chunked: bool = False,
) -> list[str]:
    """The context line of each chunk of one object, given its chunks' texts in order (blank chunks may be
    left out: they hold no heading), each cut to what the window leaves beside its chunk (`fit`).

    language: the chunk metadata's `language`: "markdown" (markdown files and converted documents: headings),
    a programming language (its enclosing definitions), or None (the key alone). chunked: the texts are the
    chunker's under this very budget (each within its max_tokens), which spares counting most of them."""
    if not texts:
        return []
    title: str | None = None
    if language == "markdown":
        title, paths = _heading_paths(texts)
    elif language is not None and language not in _NO_DEFINITIONS:
        paths = _definition_paths(texts, language)
    else:
        paths = [[] for _ in texts]
    key = _cut_part(object_key, keep_end=True)
    lines = []
    for path in paths:
        parts = [key]
        if title is not None and (not path or path[0] != title):
            parts.append(title)
        parts += path
        while len(parts) > 1 and len(SEPARATOR.join(parts)) > CONTEXT_CHARS:
            parts.pop(0)
        lines.append(SEPARATOR.join(parts))
    return fit(lines, texts, budget, chunked=chunked)


# --- the cut ----------------------------------------------------------------------------------


def fit(
    contexts: Sequence[str], texts: Sequence[str], budget: TokenBudget | None, *, chunked: bool = False
) -> list[str]:
    """Each context cut until it and its chunk fit the model's window together (the chunk is never cut):
    whole parts from its least specific end first, then words of the last part, else nothing. No budget (no
    window known): as they are. chunked: as `context_lines`."""
    if budget is None:
        return list(contexts)
    cost = _Cost(budget)
    sure = cost.beside_any_chunk(set(contexts)) if chunked else set()
    unsure = [index for index, context in enumerate(contexts) if context and context not in sure]
    fitted = list(contexts)
    fits = cost.fit([_joined(contexts[index], texts[index]) for index in unsure])
    for index, fit_whole in zip(unsure, fits, strict=True):
        if not fit_whole:
            fitted[index] = _cut(contexts[index], texts[index], cost)
    return fitted


# Tokens the join may cost beyond the line's and the chunk's own (a byte-level BPE's token for the blank line).
_JOIN_TOKENS: Final = 2


@dataclass(frozen=True)
class _Cost:
    budget: TokenBudget

    def beside_any_chunk(self, contexts: set[str]) -> set[str]:
        """The lines that fit beside any chunk within the budget's max_tokens: counted alone (a few distinct lines
        an object), so most chunks are never tokenized again."""
        counter = self.budget.counter()
        if counter is None:
            return set()
        window, distinct = self.budget.window or self.budget.max_tokens, sorted(contexts)
        room = window - self.budget.max_tokens - _JOIN_TOKENS
        return {
            line
            for line, count in zip(distinct, counter.count(distinct), strict=True)
            if count - counter.special_tokens <= room
        }

    def fit(self, inputs: Sequence[str]) -> list[bool]:
        """Whether each input fits the window (special tokens included; without a tokenizer a byte a token)."""
        window = self.budget.window or self.budget.max_tokens
        counter = self.budget.counter()
        if counter is None:
            room = max(0, window - BYTE_BOUND_RESERVE)
            return [len(text.encode("utf-8", "surrogatepass")) <= room for text in inputs]
        return [count <= window for count in counter.count(inputs)]


def _cut(context: str, text: str, cost: _Cost) -> str:
    def fits(candidate: str) -> bool:
        return bool(candidate) and cost.fit([_joined(candidate, text)])[0]

    parts = context.split(SEPARATOR)
    for first in range(1, len(parts)):
        if fits(SEPARATOR.join(parts[first:])):
            return SEPARATOR.join(parts[first:])
    words = parts[-1].split(" ")
    # The fewest first words of the last part to drop (a binary search: keeping fewer words never costs more).
    low, high = 1, len(words)
    while low < high:
        middle = (low + high) // 2
        if fits(" ".join(words[middle:])):
            high = middle
        else:
            low = middle + 1
    kept = " ".join(words[low:])
    return kept if fits(kept) else ""


def _cut_part(part: str, *, keep_end: bool = False) -> str:
    part = " ".join(part.split())
    if len(part) <= PART_CHARS:
        return part
    return "…" + part[-(PART_CHARS - 1) :] if keep_end else part[: PART_CHARS - 1] + "…"


# --- markdown: the title and the heading path -------------------------------------------------------

_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_NOT_PARAGRAPH = re.compile(r" {0,3}(?:[-*+][ \t]|\d{1,9}[.)][ \t]|>|\||<|#|    |\t)")
_FRONT_MATTER_TITLE = re.compile(r"""title:[ \t]*["']?(.+?)["']?[ \t]*$""")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_MARKUP = re.compile(r"[*`]+")


def _plain(heading: str) -> str:
    """A heading's words as a reader sees them: no links' targets, HTML tags, emphasis or escapes."""
    text = _LINK.sub(r"\1", heading)
    text = _TAG.sub("", text)
    text = _MARKUP.sub("", text)
    text = _ESCAPE.sub(r"\1", text)
    return _cut_part(text)


def _headings(lines: Sequence[str]) -> tuple[list[tuple[int, int, str]], str | None]:
    """(line number, level, text) of each heading, outside code fences; and a YAML front matter's title."""
    found: list[tuple[int, int, str]] = []
    fence: str | None = None
    paragraph: list[int] = []  # the lines of the paragraph open above (a setext underline makes it a heading)
    start, front_title = 0, None
    if lines and lines[0].rstrip() == "---":  # YAML front matter: not markdown, and its title is the title
        for number in range(1, len(lines)):
            if lines[number].rstrip() in ("---", "..."):
                start = number + 1
                break
            matched = _FRONT_MATTER_TITLE.match(lines[number])
            if matched and front_title is None:
                front_title = _plain(matched.group(1))
    for number in range(start, len(lines)):
        line = lines[number]
        if fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            continue
        opened = _FENCE.match(line)
        if opened:
            fence, paragraph = opened.group(1), []
            continue
        atx = _ATX.match(line)
        if atx:
            found.append((number, len(atx.group(1)), _plain(atx.group(2) or "")))
            paragraph = []
            continue
        underline = _SETEXT.match(line)
        if underline and paragraph:
            words = _plain(" ".join(lines[n].strip() for n in paragraph))
            found.append((paragraph[0], 1 if underline.group(1)[0] == "=" else 2, words))
            paragraph = []
            continue
        if not line.strip():
            paragraph = []
        elif paragraph or not _NOT_PARAGRAPH.match(line):
            paragraph.append(number)
    return [heading for heading in found if heading[2]], front_title


def _heading_paths(texts: Sequence[str]) -> tuple[str | None, list[list[str]]]:
    """The object's title (its first level-1 heading, else its front matter's title) and, for each chunk, the
    headings in effect at its first line that holds text (a heading there included: the chunk is under it)."""
    whole = "".join(texts)
    lines = whole.split("\n")
    line_starts = [0]
    for line in lines[:-1]:
        line_starts.append(line_starts[-1] + len(line) + 1)
    headings, front_title = _headings(lines)
    title = next((text for _, level, text in headings if level == 1), front_title)
    paths: list[list[str]] = []
    stack: list[tuple[int, str]] = []
    next_heading, offset = 0, 0
    for text in texts:
        first = offset + (len(text) - len(text.lstrip())) if text.strip() else offset
        first_line = bisect.bisect_right(line_starts, first) - 1
        while next_heading < len(headings) and headings[next_heading][0] <= first_line:
            _, level, heading = headings[next_heading]
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, heading))
            next_heading += 1
        paths.append([heading for _, heading in stack])
        offset += len(text)
    return title, paths


# --- code: the enclosing definitions -----------------------------------------------------------

_DEFINITION = re.compile(
    r"(?:\w+_)?(?:class|function|method|constructor|struct|enum|interface|trait|impl|mod|module|namespace"
    r"|object|protocol|extension|record|union|singleton_method)(?:_(?:definition|declaration|item|specifier))?"
)

# Names that read like definitions but are uses (C++'s `foo<int>` in a call).
_NOT_DEFINITIONS: Final = frozenset({"template_function", "template_method"})


def _definition_paths(texts: Sequence[str], language: str) -> list[list[str]]:
    """For each chunk, the definitions (class, function, method, ...) enclosing its first byte that is not
    whitespace, outermost first, each as its source reads up to its name (`class Foo`, `async def bar`)."""
    data_parts = [text.encode("utf-8", "surrogatepass") for text in texts]
    data = b"".join(data_parts)
    empty: list[list[str]] = [[] for _ in texts]
    if len(data) > _TREE_MAX_BYTES:
        return empty
    try:
        parser = parser_for(language)
    except (ImportError, AttributeError, KeyError, TypeError, ValueError):  # as chunk.py: no grammar, no tree
        return empty
    tree = parse_within_budget(parser, data)
    if tree is None:
        return empty
    paths, offset = [], 0
    for part in data_parts:
        first = offset + len(part) - len(part.lstrip()) if part.strip() else offset
        paths.append(_enclosing_definitions(tree, first, data))
        offset += len(part)
    return paths


def _enclosing_definitions(tree: Any, first: int, data: bytes) -> list[str]:
    """The definitions on the way from the root down to byte `first`, outermost first.

    Walked down with a cursor: tree-sitter's nodes do not keep their parent (a node's `parent` searches down from
    the root again), so walking up from the innermost node took time in the square of the nesting depth, 8 s for
    one file of 5,000 nested parentheses; down, it is linear."""
    cursor = tree.walk()
    path: list[str] = []
    while cursor.node.start_byte <= first:
        node = cursor.node
        if _is_definition(node):
            label = _label(node, data)
            if label:
                path.append(label)
        if cursor.goto_first_child_for_byte(first) is None:
            break
    return path


def _is_definition(node: Any) -> bool:
    return bool(node.is_named and node.type not in _NOT_DEFINITIONS and _DEFINITION.fullmatch(node.type))


def _label(node: Any, data: bytes) -> str | None:
    """A definition as its source reads from its line's start to the end of its name; None when it has none
    (an anonymous function)."""
    name = node.child_by_field_name("name")
    if name is None:  # C and C++: the name is the innermost declarator
        name = node.child_by_field_name("declarator")
        while name is not None and name.child_by_field_name("declarator") is not None:
            name = name.child_by_field_name("declarator")
    if name is None:  # Rust's `impl Display for Foo`: what it implements for
        name = node.child_by_field_name("type")
    if name is None:
        return None
    line_start = data.rfind(b"\n", 0, name.start_byte) + 1
    start = max(node.start_byte, line_start)
    label = data[start : name.end_byte].decode("utf-8", "replace")
    return _cut_part(label, keep_end=True) or None
