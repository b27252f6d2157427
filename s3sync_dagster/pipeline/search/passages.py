"""The passage a hit shows: the part of its section that answers the question, not the chunk's first characters.

A hit's section (search_hits.with_context, `context="section"`: the chunks around it under the same headings) is
cut into units, sentences of prose and lines of code, lists and tables. The units of the hit's own chunk come
first (the ranking chose it for the question's meaning), then the rest of the section's; within each, those
holding more of the question's words in any English form (Snowball's stemmer: `milliseconds` holds
`millisecond`), each word weighed by how few of the section's units hold it, then the nearer. They are taken in
that order while they fit the budget, and shown in the document's order under the hit's heading path (its
context line less the object's key), "..." where taken parts do not meet. `marked` puts the question's words in
bold for a terminal.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from s3sync_dagster.pipeline.lexicon import fold, stem, stopwords, words

PASSAGE_CHARS = 600  # the passage's text at most (a unit longer than this is cut at a word)
HEADING_JOIN = " > "  # the context line's separator (pipeline/chunking/context.py)
# A sentence ends at . ! ? (or their run, or a closing quote or bracket after them) before a space and a capital,
# a digit, a quote or a bracket; `e.g. this` and `v1.2` stay whole.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[A-Z0-9\"'(\[`*])")
# A line that is code, a list item, a table row or a heading stands alone: it is not joined into a sentence.
_OWN_LINE = re.compile(r"^(\s{2,}|\t|[-*+] |\d+[.)] |\||#|>|```)")


@dataclass(frozen=True)
class Unit:
    """One sentence or line of a section: its text, and whether it joins its neighbours with a space (prose)."""

    text: str
    prose: bool


def units(section: Sequence[str], prose: bool = True) -> list[Unit]:
    """The section's text (its chunks in order) as sentences of prose and lines of everything else; of code
    (prose False: a source file, chunked by its syntax), every line."""
    if not prose:
        return [Unit(line.rstrip(), False) for line in "".join(section).splitlines() if line.strip()]
    found: list[Unit] = []
    paragraph: list[str] = []
    fenced = False

    def flush() -> None:
        if paragraph:
            joined = " ".join(line.strip() for line in paragraph)
            found.extend(Unit(sentence, True) for sentence in _SENTENCE_END.split(joined) if sentence.strip())
            paragraph.clear()

    for line in "".join(section).splitlines():
        if line.lstrip().startswith("```"):
            flush()
            fenced = not fenced
            found.append(Unit(line.rstrip(), False))
        elif fenced or _OWN_LINE.match(line):
            flush()
            if line.strip():
                found.append(Unit(line.rstrip(), False))
        elif not line.strip():
            flush()
        else:
            paragraph.append(line)
    flush()
    return found


def stems(text: str) -> set[str]:
    """The distinct stems of a text's words (folded, split at . and -: `terms.words`)."""
    return {stem(word) for word in words(text)}


def question_stems(question: str) -> set[str]:
    """The stems worth matching of a question: its words less stop words and one-letter words."""
    kept = {stem(word) for word in words(question) if len(word) > 1 and word not in stopwords()}
    return kept or stems(question)


def choose(
    question: str,
    section: Sequence[str],
    own: str,
    heading: str = "",
    budget: int = PASSAGE_CHARS,
    prose: bool = True,
    own_at: int | None = None,
) -> str:
    """The passage of a hit: `section` its section's chunk texts in order, `own` the hit's own chunk text (at
    `own_at` among them; None: where `own` first stands, else read alone), `heading` its heading path ('' for
    none); prose False for code, read line by line.

    The units (sentences, lines) of the hit's own chunk come first, the ranking having chosen it for the question's
    meaning, then those of the rest of its section; within each, those holding more of the question's words
    (each weighed by how few of the section's units hold it) before the others, and nearer the hit before
    farther. They are taken in that order while they fit the budget and shown in the document's order, a gap
    between two taken parts marked by "...". Measured on four question sets (benchmarks/RESULTS.md section 7,
    issue 63), against the best unit and its neighbours: Django's questions' passage held the answer in the
    first 5 hits for 0.606 of them, not 0.379."""
    if own_at is None:
        own_at = section.index(own) if own in section else None
    if own_at is None:
        section, own_at = [own], 0
    wanted = question_stems(question)
    found: list[Unit] = []
    chunk_of: list[int] = []
    for at, text in enumerate(section):
        cut = units([text], prose)
        found += cut
        chunk_of += [at] * len(cut)
    if not found:
        return heading
    held = [stems(unit.text) & wanted for unit in found]
    weight = {s: math.log(1 + len(found) / (1 + sum(s in h for h in held))) for s in wanted}
    scores = [sum(weight[s] for s in h) for h in held]
    order = sorted(
        range(len(found)),
        key=lambda i: (chunk_of[i] != own_at, -scores[i], abs(chunk_of[i] - own_at), i),
    )
    taken: list[int] = []
    size = 0
    for i in order:
        grown = size + len(found[i].text) + (1 if taken else 0)
        if grown <= budget:
            taken.append(i)
            size = grown
    if not taken:  # the first unit alone is longer than the budget: cut
        taken = order[:1]
    taken.sort()
    named = {part.strip() for part in heading.split(HEADING_JOIN)}
    while len(taken) > 1 and found[taken[0]].text.startswith("#") and found[taken[0]].text.lstrip("#").strip() in named:
        taken.pop(0)  # a heading the heading path already names
    runs: list[list[Unit]] = []
    for before, at in zip([None, *taken], taken, strict=False):
        if before is None or at != before + 1:
            runs.append([])
        runs[-1].append(found[at])
    text = _joined(runs[0], budget)
    for previous, run in itertools.pairwise(runs):  # the budget counts the units, not the marks between them
        text += " ... " if previous[-1].prose and run[0].prose else "\n...\n"
        text += _joined(run, budget)
    return f"{heading}\n{text}" if heading else text


def is_prose(language: object) -> bool:
    """Whether a chunk's `language` (its metadata) is read in sentences: markdown (documents converted to it
    included) and plain text; code is read line by line."""
    return language in (None, "", "markdown")


def heading_path(context_line: str | None, object_key: str) -> str:
    """A context line less its object's key: the headings or definitions the hit stands under ('' for none)."""
    if not context_line:
        return ""
    parts = context_line.split(HEADING_JOIN)
    if parts and parts[0] == object_key:
        parts = parts[1:]
    return HEADING_JOIN.join(parts)


def marked(passage: str, question: str, form: str = "{}") -> str:
    """The passage with each word holding a question's stem written in `form` (`{}` the word: a terminal's escape
    codes around it)."""
    wanted = question_stems(question)

    def mark(match: re.Match[str]) -> str:
        word = match.group(0)
        return form.format(word) if stem(fold(word)) in wanted else word

    return re.sub(r"\w+", mark, passage)


def _joined(chosen: Sequence[Unit], budget: int) -> str:
    """Sentences of one paragraph joined by a space, anything else by a new line."""
    text = ""
    for before, unit in zip([None, *chosen], chosen, strict=False):
        if before is not None:
            text += " " if before.prose and unit.prose else "\n"
        text += unit.text
    return _cut(text, budget)


def _cut(text: str, budget: int) -> str:
    if len(text) <= budget:
        return text
    cut = text[:budget].rsplit(" ", 1)[0].rstrip()
    return f"{cut} ..."
