"""How text becomes terms for lexical search: folding (`fold`), the term rule, the query's terms, the terms the
lexical index holds (`index_terms`: words by their English stem, identifiers whole too), and the pattern Chroma's
full-text filter runs for a term (`term_pattern`).

pipeline/search/query.py reads queries and chunks with it; pipeline/lexicon/embedded.py indexes chunks with it, so the
index and Chroma's filter agree on what a word is. See search.py for why each rule is as it is.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import itertools
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# A term: a word, or words joined by . - (an identifier path, a product code: `os.path.join`, `XK-42`); a
# word of the characters Chroma's regex counts as word characters (`_Folding.word_extra`).
_TERM = r"{word}+(?:[.\-]{word}+)*"
# The most ways of writing one run of a term's letters that multi-letter folds overlap in ("ss": ss or ß;
# "ffi": ffi, fﬁ, ﬀi, ﬃ): past it (a run like "sssssss") the rarer ways are left out of the pattern.
MAX_SPELLINGS = 16
# A term's parts (`term_counts`): words and the separators between them; past MAX_PARTS words, the rest are
# left out of a term's runs (a long dotted number).
_SEPARATOR = re.compile(r"([.\-])")
MAX_PARTS = 16
_ASCII_TERM = re.compile(_TERM.format(word=r"\w"))
# Chroma's full-text index is of trigrams: a shorter term cannot use it, and finds nearly everything anyway.
MIN_TERM_CHARS = 3
# The most terms of one query looked up (the rarest-looking first: longest, with digits); each is one read.
MAX_TERMS = 12
# The most terms of one query the lexical index scores it on (`scoring_terms`): a quoted paragraph's words.
MAX_SCORING_TERMS = 64
# What marks a stem among the lexical index's terms (`index_terms`): not a word character, so no term is one.
STEM_MARK = "~"


def fold(text: str) -> str:
    """Text as lexical search compares it: NFC, Unicode case folding (ß is ss, ﬁ is fi), and the Turkish
    capital dotted and small dotless i (U+0130, U+0131) as plain i: case folding alone makes the first an i
    with a combining dot above and leaves the second apart, so "istanbul" would not find İstanbul."""
    folded = unicodedata.normalize("NFC", text).casefold().replace("i\u0307", "i").replace("\u0131", "i")
    # Folding can decompose (ǰ, ΐ): composed again, a folded text is its own fold.
    return unicodedata.normalize("NFC", folded)


@dataclass(frozen=True)
class _Folding:
    """What `fold` makes of each character, read once from unicodedata (a scan of every code point)."""

    # A folded letter or letters -> the other texts that fold to it (each code point as written, in NFC and
    # in NFD), leaving out those Rust's `(?i)` already matches (its simple case folding: K and k and the
    # Kelvin sign, ß and ẞ, the Greek sigmas), which keeps the pattern short.
    spellings: Mapping[str, tuple[str, ...]]
    # A letter -> the folds of more than one letter that start with it ("s" -> "ss" for ß, "st" for ﬆ).
    multi: Mapping[str, tuple[str, ...]]
    # What Rust's `\w` (so Chroma's `\b`) holds beyond Python's: combining marks, connector punctuation,
    # joiners. Both sides then agree where a word ends, even at a mark that NFC could not compose.
    word_extra: frozenset[str]
    term: re.Pattern[str]  # _TERM, of those word characters

    def is_word(self, character: str) -> bool:
        return character.isalnum() or character == "_" or character in self.word_extra


def _rust_case(text: str) -> str:
    """`text` with each character as Rust's `(?i)` sees it: its simple case folding (one character)."""
    simple = []
    for character in text:
        mapped = next((m for m in (character.casefold(), character.lower()) if len(m) == 1), character)
        simple.append(mapped)
    return "".join(simple)


def _ranges(code_points: list[int]) -> str:
    """Sorted code points as the inside of a Python character class."""
    runs: list[tuple[int, int]] = []
    for code_point in code_points:
        if runs and runs[-1][1] == code_point - 1:
            runs[-1] = (runs[-1][0], code_point)
        else:
            runs.append((code_point, code_point))
    return "".join(f"\\U{low:08x}" + (f"-\\U{high:08x}" if high > low else "") for low, high in runs)


def _folding_tables() -> tuple[dict[str, tuple[str, ...]], list[int]]:
    """What `fold` makes of each character, from a scan of every code point (about a second): the other
    spellings of each folded letter or letters, and the code points of FOLDING's word_extra."""
    forms: dict[str, set[str]] = {}
    word_extra: list[int] = []  # sorted
    for code_point in range(0x110000):
        character = chr(code_point)
        category = unicodedata.category(character)
        if category in ("Cn", "Cs", "Co"):
            continue
        if (category[0] == "M" or category == "Pc" or code_point in (0x200C, 0x200D)) and not re.match(
            r"\w", character
        ):
            word_extra.append(code_point)
        if character.casefold() == character and unicodedata.is_normalized("NFD", character) and character != "\u0131":
            continue  # folds to itself, in one form only: nothing to spell out
        written = {character, unicodedata.normalize("NFC", character), unicodedata.normalize("NFD", character)}
        forms.setdefault(fold(character), set()).update(written)
    spellings: dict[str, tuple[str, ...]] = {}
    for folded, written in forms.items():
        kept: dict[str, str] = {}
        # The folded text itself first: what `(?i)` matches of it needs no alternative of its own.
        for form in sorted(written, key=lambda form: (form != folded, -len(form), _rust_case(form) != form, form)):
            kept.setdefault(_rust_case(form), form)
        others = tuple(form for form in kept.values() if _rust_case(form) != _rust_case(folded))
        if others:
            spellings[folded] = others
    return spellings, word_extra


def _folding_cache() -> Path | None:
    """Where the tables are kept between processes: they depend only on this Python's Unicode data and on the
    code that derives them, both in the file's name, so a one-off `s3sync query` does not scan again. None
    where that code cannot be read (an install without sources): then every process scans."""
    try:
        derivation = inspect.getsource(_folding_tables) + inspect.getsource(fold) + inspect.getsource(_rust_case)
    except (OSError, TypeError):
        return None
    key = hashlib.sha256(f"{unicodedata.unidata_version}\n{derivation}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "s3sync-dagster" / f"folding-{key}.json"


@functools.cache
def _folding() -> _Folding:
    cache = _folding_cache()
    try:
        if cache is None:
            raise OSError("no cache")
        raw = json.loads(cache.read_text(encoding="utf-8"))
        spellings = {folded: tuple(others) for folded, others in raw["spellings"].items()}
        word_extra = [int(code_point) for code_point in raw["word_extra"]]
    except (OSError, ValueError, KeyError, TypeError):
        spellings, word_extra = _folding_tables()
        if cache is not None:
            with contextlib.suppress(OSError):  # a read-only home: the next process scans again
                cache.parent.mkdir(parents=True, exist_ok=True)
                partial = cache.with_suffix(f".{os.getpid()}.tmp")
                partial.write_text(json.dumps({"spellings": spellings, "word_extra": word_extra}), encoding="utf-8")
                partial.replace(cache)
    multi: dict[str, list[str]] = {}
    for folded in spellings:
        if len(folded) > 1:
            multi.setdefault(folded[0], []).append(folded)
    return _Folding(
        spellings=spellings,
        multi={first: tuple(sorted(folds, key=len, reverse=True)) for first, folds in multi.items()},
        word_extra=frozenset(map(chr, word_extra)),
        term=re.compile(_TERM.format(word=rf"[\w{_ranges(word_extra)}]")),
    )


@functools.cache
def stopwords() -> frozenset[str]:
    """Words too common to choose a chunk or a passage by: Chroma BM25's list (read when first asked for, so that
    loading the config or the definitions does not import chromadb)."""
    from chromadb.utils.embedding_functions.chroma_bm25_embedding_function import DEFAULT_CHROMA_BM25_STOPWORDS

    return frozenset(DEFAULT_CHROMA_BM25_STOPWORDS)


def text_terms(text: str) -> Iterator[str]:
    """Every term of a text, in order, folded (`fold`): what the lexical index (pipeline/lexicon/embedded.py) holds."""
    for match in _folding().term.finditer(fold(text)):
        term = match.group(0).strip(".-")
        if term:
            yield term


def query_terms(text: str) -> list[str]:
    """The query's distinct terms worth looking up, folded (`fold`), the rarest-looking first."""
    seen: dict[str, None] = {}
    for term in text_terms(text):
        if len(term) >= MIN_TERM_CHARS and term not in stopwords():
            seen.setdefault(term)
    ranked = sorted(seen, key=lambda term: (not any(c.isdigit() for c in term), -len(term)))
    return ranked[:MAX_TERMS]


def scoring_terms(text: str) -> list[str]:
    """Every distinct term of the query, folded, stop words and short words too, in order (at most
    MAX_SCORING_TERMS): what BM25 scores a chunk on where the lexical index gives each term's document frequency
    in one lookup. A remembered sentence is found by all its words: on section 7's known-item probes a BM25 on
    `query_terms` alone ranked the sentence's chunk first for 0.88 of them, on every word for 0.92
    (benchmarks/RESULTS.md section 7)."""
    return list(dict.fromkeys(text_terms(text)))[:MAX_SCORING_TERMS]


def words(text: str) -> list[str]:
    """The words of a text, in order, folded (`fold`): its terms (`text_terms`) split at . and -, so that
    `path.join(` is found in `os.path.join(`."""
    return [word for term in text_terms(text) for word in _SEPARATOR.split(term)[0::2] if word]


@functools.lru_cache(maxsize=1)
def _stemmer() -> Callable[[str], str]:
    import snowballstemmer

    return functools.lru_cache(maxsize=65536)(snowballstemmer.stemmer("english").stemWord)


def stem(word: str) -> str:
    """A folded word's English stem (Snowball's Porter2: `milliseconds`, `millisecond` -> `millisecond`;
    `running`, `runs` -> `run`). A word that is not letters alone is an identifier, its own stem: `parse_headers`
    is not `parse_header`, `utf8` not `utf`."""
    return _stemmer()(word) if word.isalpha() else word


def index_terms(text: str) -> Iterator[str]:
    """The terms the lexical index holds for a text (pipeline/lexicon/embedded.py), in order: each word's stem, marked
    (`STEM_MARK`), so a word is found in any English form; and a term joined by . or - (`os.path.join`,
    `XK-42`) also whole, so an identifier is found whole and by each of its words."""
    for term in text_terms(text):
        parts = _SEPARATOR.split(term)[0::2]
        if len(parts) > 1:
            yield term
        for word in parts:
            if word:
                yield STEM_MARK + stem(word)


def indexed_forms(query: Sequence[str]) -> list[str]:
    """A query's terms (`query_terms`, `scoring_terms`) as the lexical index holds them (`index_terms`),
    distinct, in order: a word by its stem, an identifier joined by . or - whole (asked whole, it is not
    any chunk holding one of its words: `QX-7741-B` is not every "b")."""
    return list(dict.fromkeys(term if _SEPARATOR.search(term) else STEM_MARK + stem(term) for term in query))


def _alternatives(texts: Sequence[str]) -> str:
    escaped = [re.escape(text) for text in texts]
    return escaped[0] if len(escaped) == 1 else f"(?:{'|'.join(escaped)})"


def _spellings(run: str, folding: _Folding) -> Iterator[str]:
    """Each way of writing a run of folded letters, as a pattern: letter by letter first, then with a
    multi-letter fold (ß, ﬃ) standing for the letters it folds to."""
    if not run:
        yield ""
        return
    first = _alternatives((run[0], *folding.spellings.get(run[0], ())))
    yield from (first + rest for rest in _spellings(run[1:], folding))
    for folded in folding.multi.get(run[0], ()):
        if run.startswith(folded):
            for written in folding.spellings[folded]:
                yield from (re.escape(written) + rest for rest in _spellings(run[len(folded) :], folding))


def term_pattern(term: str) -> str:
    """Where a folded term is written in a chunk, in any case and form (`fold`), as a whole word: the pattern
    for Chroma's `$regex` (Rust regex syntax), which Python's `re` reads too.

    Chroma runs it on the texts as stored, so each letter becomes the group of what folds to it beyond
    `(?i)` (for i: I + U+0307, U+0130, U+0131; for é: e + U+0301) and a run that a multi-letter fold covers
    becomes each way of writing it ("strasse": `(?:st|ﬅ|ﬆ)ra(?:ss|ß)e`)."""
    folding = _folding()
    pieces = []
    start = 0
    while start < len(term):
        # The run: from here to the end of every multi-letter fold that starts inside it.
        end = start + 1
        at = start
        while at < end:
            for folded in folding.multi.get(term[at], ()):
                if term.startswith(folded, at):
                    end = max(end, at + len(folded))
            at += 1
        spellings = list(itertools.islice(_spellings(term[start:end], folding), MAX_SPELLINGS))
        pieces.append(spellings[0] if len(spellings) == 1 else f"(?:{'|'.join(spellings)})")
        start = end
    return rf"(?i)\b{''.join(pieces)}\b"


def term_counts(folded_text: str) -> Counter[str]:
    """How often each term stands as a whole word in a folded text (`fold`): `term_frequency` of every term at
    once, in one pass. A term joined by . or - counts as itself and as each run of its parts (`os.path.join`:
    os, path, join, os.path, path.join), as `term_frequency` finds a part between non-word characters."""
    # An ASCII text holds none of `word_extra` (all beyond ASCII): the plain `\w` pattern reads it 4x faster.
    pattern = _ASCII_TERM if folded_text.isascii() else _folding().term
    counts = Counter(pattern.findall(folded_text))
    for token, count in [(token, count) for token, count in counts.items() if "." in token or "-" in token]:
        pieces = _SEPARATOR.split(token)
        words, separators = pieces[0::2][:MAX_PARTS], pieces[1::2]
        for first in range(len(words)):
            joined = words[first]
            for last in range(first, len(words)):
                if last > first:
                    joined += separators[last - 1] + words[last]
                if joined != token:
                    counts[joined] += count
    return counts


def term_frequency(term: str, folded_text: str) -> int:
    """How often a folded term stands as a whole word in a folded text (`fold`), for BM25. Not `term_pattern`
    on the text as stored: Python's `re` ends a word at a combining mark, where Rust's (Chroma's) does not."""
    folding = _folding()
    count = 0
    start = folded_text.find(term)
    while start >= 0:
        end = start + len(term)
        before = start > 0 and folding.is_word(folded_text[start - 1])
        after = end < len(folded_text) and folding.is_word(folded_text[end])
        if before or after:
            start = folded_text.find(term, start + 1)
        else:
            count += 1
            start = folded_text.find(term, end)
    return count
