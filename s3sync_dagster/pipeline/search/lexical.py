"""The lexical side of search: each query term's BM25 idf in the collection and the chunks holding its rarest terms,
from the collection's lexical index (pipeline/lexicon/embedded.py) or Chroma's full-text filter, ranked by BM25."""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline.chunking import embedding_input
from s3sync_dagster.pipeline.lexicon import (
    READ_PAGE,
    STEM_MARK,  # how text becomes terms, read by both sides of search
    LexicalIndex,
    fold,
    indexed_forms,
    of,
    query_terms,
    scoring_terms,
    stem,
    term_counts,
    term_pattern,
)
from s3sync_dagster.pipeline.search.rows import Ranking, chroma_where, plain_metadata
from s3sync_dagster.pipeline.search.where_match import matches

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

_WORD = re.compile(r"\w+")

# A term in more chunks than this, or with a BM25 idf under MIN_IDF (in over ~80% of the chunks of a large
# collection, in both of two), is common: it scores, but picks no candidates.
DF_LIMIT = 2000
MIN_IDF = 0.2
BM25_K1 = 1.2
BM25_B = 0.75

# The lexical index path: the lexical side offers this many times the pool, best first by BM25 on the
# query's rarer terms, and every candidate is then scored on all of them.
LEXICON_POOL_FACTOR = 2
# Lexical mode ranks at least this many of the index's candidates on every term: measured on Django's 203
# questions (benchmarks/retrieval/answers.py, 18,852 chunks), the 40 best on the rarer terms ranked below a plain BM25
# over all the chunks at @5 and @10 (0.153 / 0.197 against 0.192 / 0.241); the 200 best ranked at or above it
# at every depth (0.099 / 0.207 / 0.251, MRR@10 0.144 against 0.123), in 9 ms a query there.
LEXICAL_CANDIDATES = 200
# The rarer terms that pick the index's candidates hold at most this many chunks together (past the first):
# FTS5 ranks each chunk holding one of them, the best LEXICAL_CANDIDATES are then scored on every word. Measured
# on section 7's 1,200 known-item probes (20,994 chunks), picking on at most 500 (Chroma's path keeps at most
# DF_LIMIT // 4 candidates) ranked a remembered sentence's chunk in the top 10 for 0.995 of them, a plain BM25
# over every chunk for 0.997; on at most 4,000 for 0.998, the index ranking in 17 ms a query.
CANDIDATE_DF = 2 * DF_LIMIT
# Under a filter the index ranks every chunk holding one of the rarer terms and reads their metadata in turn
# (`admitted_best`): at 100,000 chunks, searching as a reader of one chunk in ten, picking on every word within
# 4,000 chunks took hybrid's p95 from 85 to 176-206 ms; the words worth looking up within 500, as before, keep it.
FILTERED_CANDIDATE_DF = DF_LIMIT // 4
# Under a filter, the index's ranking is read in steps this many times longer until enough pass it.
FILTER_WIDEN = 4


@dataclass(frozen=True)
class Lexical:
    """What the lexical side knows of one query: its terms, each term's BM25 idf (from its document frequency
    in the collection, read from Chroma's full-text index), and the ids of the chunks holding the rarest
    terms (its candidates). `score` gives BM25 for any chunk's text, offered by this side or not, on every
    term; `coverage` reads the `key_terms` (the query's words worth looking up, `query_terms`) alone, or every
    term when none are named."""

    terms: tuple[str, ...]
    idf: Mapping[str, float]
    candidate_ids: tuple[str, ...]
    key_terms: tuple[str, ...] | None = None

    def bm25(self, document: str, average_words: float) -> float:
        held, words = counted(document)
        norm = BM25_K1 * (1 - BM25_B + BM25_B * words / (average_words or 1.0))
        score = 0.0
        for term in self.terms:
            frequency = held.frequency(term)
            if frequency:
                score += self.idf[term] * frequency * (BM25_K1 + 1) / (frequency + norm)
        return score

    def coverage(self, document: str) -> float:
        """The share of the query's idf the text holds (each term counted once): 1.0 when it holds every term."""
        key = self.terms if self.key_terms is None else self.key_terms
        total = sum(self.idf[term] for term in key)
        if total <= 0:
            return 0.0
        held, _ = counted(document)
        return sum(self.idf[term] for term in key if held.frequency(term)) / total


class Held:
    """A text's terms as BM25 counts them: each whole term (`term_counts`: what Chroma's filter finds, an
    identifier's runs of words too) with how often it stands, and, for the lexical index's stems (`STEM_MARK`),
    how often words of that stem stand. A stem is counted only when asked, among the words that begin as it does
    (Snowball's English stem is its word's beginning but for its last letter, `happy`: `happi`; three words
    aside: `dying`, `lying`, `tying`): stemming every word of every candidate cost a query at 100,000 chunks
    33 ms."""

    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts
        self._by_letter: dict[str, list[str]] | None = None  # the words by first letter, at the first stem asked

    def frequency(self, term: str) -> int:
        if not term.startswith(STEM_MARK):
            return self.counts.get(term, 0)
        if self._by_letter is None:
            self._by_letter = {}
            for word in self.counts:
                if "." not in word and "-" not in word:
                    self._by_letter.setdefault(word[:1], []).append(word)
        wanted = term[len(STEM_MARK) :]
        head = wanted[:-1] or wanted  # a stem is its word's beginning, but for its last letter (happy: happi)
        return sum(
            self.counts[word]
            for word in self._by_letter.get(wanted[:1], ())
            if word.startswith(head) and stem(word) == wanted
        )


@functools.lru_cache(maxsize=1024)
def counted(document: str) -> tuple[Held, int]:
    """A text's terms as BM25 counts them (`Held`) and its number of words (BM25's length): read once for a
    query's BM25, coverage and mean length."""
    return Held(term_counts(fold(document))), len(_WORD.findall(document))


def lexical_side(collection: Collection, text: str, n: int, where: Mapping[str, Any] | None = None) -> Lexical:
    """Looks each query term up whole-word in the collection (`where_document` `$regex`) for its document
    frequency, and picks the chunks holding the rarest terms as candidates. Chroma's filter reads the chunks'
    texts only: a term only a chunk's context line holds (a heading's) is not found this way."""
    terms = query_terms(text)
    matching: dict[str, list[str]] = {}
    for term in terms:
        found = collection.get(
            where=chroma_where(where), where_document={"$regex": term_pattern(term)}, include=[], limit=DF_LIMIT
        )
        matching[term] = list(found["ids"])
    total = max(collection.count(), 1) if terms else 1
    idf = {term: bm25_idf(total, len(ids)) for term, ids in matching.items()}
    # Candidates: the chunks holding the rarest terms, until there are enough to rank. A common term (past
    # DF_LIMIT, or with an idf under MIN_IDF: in most chunks) picks none: it says little, and a ranking of
    # near-equal scores would only push the dense side's answer down in a fusion. Only common terms: no answer.
    candidates: dict[str, None] = {}
    for term in sorted(terms, key=lambda term: len(matching[term])):
        if len(matching[term]) >= DF_LIMIT or idf[term] < MIN_IDF:
            break
        candidates.update(dict.fromkeys(matching[term]))
        if len(candidates) >= max(n, DF_LIMIT // 4):
            break
    return Lexical(tuple(terms), idf, tuple(candidates))


def bm25_idf(total: int, count: int) -> float:
    """A term's BM25 idf (the non-negative form) in `total` chunks of which `count` hold it."""
    return math.log(1 + (total - count + 0.5) / (count + 0.5))


def indexed(collection: Collection) -> LexicalIndex | None:
    """The collection's lexical index (pipeline/lexicon/embedded.py) when it can answer for it now, else None."""
    found = of(collection)
    return found if found is not None and found.state(collection) is None else None


def lexicon_side(
    index: LexicalIndex, collection: Collection, text: str, n: int, where: Mapping[str, Any] | None = None
) -> Lexical:
    """The lexical side from the index: each term's idf from its exact document frequency, and as
    candidates the n chunks BM25 ranks best on the rarer terms (as `lexical_side` picks them: a common
    term scores, but picks no candidates).

    Under a filter (`where`) the candidates are the n best of the chunks it admits, not those admitted among
    the n best (`admitted_best`); the idf stays the collection's, as unfiltered.

    The terms are the index's (`terms.index_terms`): each word by its English stem, so "milliseconds" finds and
    scores "millisecond", an identifier joined by . or - whole and by its words. BM25 scores on every word of the
    query (`scoring_terms`: stop words and short words too, each one lookup in the index); coverage is read on the
    words worth looking up (`query_terms`), as on Chroma's path. The
    rarest words pick: of every word unfiltered (a line of code or numbers, `i == (i // j) * j`, has no
    other); under a filter, of the words worth looking up while one of them is in the collection (a short
    word in thousands of chunks would have each of them read, FILTERED_CANDIDATE_DF)."""
    key = indexed_forms(query_terms(text))
    terms = list(dict.fromkeys([*indexed_forms(scoring_terms(text)), *key]))
    frequency, total = index.document_frequency(collection, terms)
    total = max(total, 1)
    idf = {term: bm25_idf(total, count) for term, count in frequency.items()}
    pickers = key if where and any(frequency[term] for term in key) else terms
    uncommon: list[str] = []  # rarest first, up to the first common one
    for term in sorted(pickers, key=lambda term: (frequency[term], term)):
        if not frequency[term]:
            continue
        if frequency[term] >= DF_LIMIT or idf[term] < MIN_IDF:
            break
        uncommon.append(term)
    # The rarer terms: together in at most CANDIDATE_DF chunks past the first (FILTERED_CANDIDATE_DF under a
    # filter, where `admitted_best` widens them while too few pass it).
    budget = FILTERED_CANDIDATE_DF if where else CANDIDATE_DF
    rarer, held = 0, 0
    while rarer < len(uncommon) and (not rarer or held + frequency[uncommon[rarer]] <= budget):
        held += frequency[uncommon[rarer]]
        rarer += 1
    if not where:
        best = [chunk_id for chunk_id, _ in index.best(collection, uncommon[:rarer], n)]
    else:
        best = admitted_best(index, collection, uncommon, rarer, n, where)
    return Lexical(tuple(terms), idf, tuple(best), tuple(key))


def admitted_best(
    index: LexicalIndex,
    collection: Collection,
    uncommon: Sequence[str],
    rarer: int,
    n: int,
    where: Mapping[str, Any],
) -> list[str]:
    """The ids of the n chunks the index ranks best among those `where` admits, best first, on the rarer
    terms: the first `rarer` of `uncommon`, and more of them (twice as many each time) while fewer than n
    admitted chunks hold one, as the rarer terms are picked until they hold enough candidates (an admitted
    chunk may hold none of the collection's rarest terms).

    The index holds no metadata: it ranks every chunk holding one of the terms, in one request (none is
    common, so each is in fewer than DF_LIMIT chunks), and the ranking is read in steps FILTER_WIDEN times
    longer until n pass, each id's metadata read once, by id, and tested as Chroma tests it
    (pipeline/search/where_match.py: Chroma's own `get(ids, where)` reads the filter over the whole collection
    first, seconds at 100,000 chunks)."""
    admitted: dict[str, bool] = {}
    while True:
        terms = uncommon[:rarer]
        ranked = [chunk_id for chunk_id, _ in index.best(collection, terms, DF_LIMIT * len(terms))]
        kept: list[str] = []
        read, step = 0, n * FILTER_WIDEN
        while len(kept) < n and read < len(ranked):
            page = ranked[read : read + step]
            unknown = [chunk_id for chunk_id in page if chunk_id not in admitted]
            for start in range(0, len(unknown), READ_PAGE):
                got = collection.get(ids=unknown[start : start + READ_PAGE], include=["metadatas"])
                admitted.update(dict.fromkeys(unknown[start : start + READ_PAGE], False))  # gone: not
                admitted.update(
                    (chunk_id, matches(where, metadata or {}))
                    for chunk_id, metadata in zip(got["ids"], got["metadatas"] or [], strict=True)
                )
            kept += [chunk_id for chunk_id in page if admitted[chunk_id]]
            read += step
            step *= FILTER_WIDEN
        if len(kept) >= n or rarer >= len(uncommon):
            return kept[:n]
        rarer = min(len(uncommon), rarer * 2)


def average_words(documents: Sequence[str]) -> float:
    """The mean number of words of the texts (1.0 for none): BM25's length norm."""
    return sum(counted(document)[1] for document in documents) / max(len(documents), 1) or 1.0


def lexical_ranking(collection: Collection, text: str, n: int, where: Mapping[str, Any] | None = None) -> Ranking:
    """(chunk id, text, metadata, BM25 score) of the n best chunks for the query's words."""
    index = indexed(collection)
    if index is not None:
        side = lexicon_side(index, collection, text, max(LEXICAL_CANDIDATES, LEXICON_POOL_FACTOR * n), where)
    else:
        side = lexical_side(collection, text, n, where)
    if not side.candidate_ids:
        return []
    got = collection.get(ids=list(side.candidate_ids), include=["documents", "metadatas"])
    rows = [
        (chunk_id, document or "", plain_metadata(metadata))
        for chunk_id, document, metadata in zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True)
    ]
    # BM25 counts the terms of what the lexical index holds, context line and text (context.embedding_input);
    # the hit keeps the chunk's own text.
    indexed_texts = {chunk_id: embedding_input(document, metadata) for chunk_id, document, metadata in rows}
    average = average_words(list(indexed_texts.values()))
    scored = [
        (chunk_id, document, metadata, side.bm25(indexed_texts[chunk_id], average))
        for chunk_id, document, metadata in rows
    ]
    scored.sort(key=lambda row: (-row[3], row[0]))
    return scored[:n]
