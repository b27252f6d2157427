"""What a search finds: each hit (a chunk, its score, where each side ranked it), at most so many of one object,
and the chunks around it in its object."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from s3sync_dagster.pipeline import records

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection


@dataclass(frozen=True)
class Passage:
    """A chunk of the hit's object around it (`with_context`): its place in the object and its text."""

    chunk_id: str
    chunk_index: int
    document: str


@dataclass(frozen=True)
class Hit:
    """One chunk found: its text and metadata, the score of the mode asked (higher is better), and where
    each side ranked it (1 is first; None where that side did not offer it)."""

    chunk_id: str
    document: str
    metadata: Mapping[str, Any]
    score: float
    dense_rank: int | None = None
    lexical_rank: int | None = None
    distance: float | None = None  # the dense side's, where it offered the chunk
    # With context (`with_context`): the chunks of the same object around this one, this one among them, in
    # the object's order; empty when none was asked for.
    context: tuple[Passage, ...] = ()
    # With passages (`with_passages`): the part of its section that answers the question, under its heading path:
    # what a person reads of the hit (pipeline/search/passages.py); "" when none was chosen.
    passage: str = ""

    @property
    def object_key(self) -> str:
        return str(self.metadata.get("object_key") or "")


def per_object(hits: Sequence[Hit], most: int) -> list[Hit]:
    """The hits in their order, keeping at most `most` of each object (the best ones, as ranked)."""
    seen: dict[str, int] = {}
    kept = []
    for hit in hits:
        seen[hit.object_key] = seen.get(hit.object_key, 0) + 1
        if seen[hit.object_key] <= most:
            kept.append(hit)
    return kept


# `context="section"` (`--context section`): each hit with the chunks of its section around it, at most this many
# on each side (about 2,000 tokens of the default 128-token chunks in all).
SECTION: Final = "section"
SECTION_REACH = 8
Context = int | Literal["section"]


def with_context(
    collection: Collection,
    hits: Sequence[Hit],
    size: Context,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
) -> list[Hit]:
    """Each hit with the `size` chunks before and after it in its object (fewer at the object's ends), or with
    `size="section"` the chunks of its section: those around it, in a row, whose context line
    (pipeline/chunking/context.py: the headings or definitions in effect) names the same place, at most SECTION_REACH on
    each side. All are read by their ids in one request: a chunk's id is its document's id and its place
    (keys.chunk_id). `keep` says which chunks may be shown (a source's own): a neighbour it refuses is left out,
    and ends a section."""
    if size != SECTION and (not isinstance(size, int) or isinstance(size, bool)):
        raise ValueError(f"the context must be a number of chunks or '{SECTION}', got {size!r}")
    if isinstance(size, int) and size < 0:
        raise ValueError(f"the context must be 0 chunks or more, got {size}")
    if size == 0 or not hits:
        return list(hits)
    reach = SECTION_REACH if size == SECTION else int(size)
    wanted: dict[str, tuple[str, int]] = {}
    for hit in hits:
        document_id, position, count = (hit.metadata.get(k) for k in ("document_id", "chunk_index", "chunk_count"))
        if not isinstance(document_id, str) or not isinstance(position, int) or not isinstance(count, int):
            continue  # not a chunk s3sync wrote: no neighbours known
        for at in range(max(0, position - reach), min(count, position + reach + 1)):
            wanted[records.chunk_id(document_id, at)] = (document_id, at)
    found = collection.get(ids=list(wanted), include=["documents", "metadatas"]) if wanted else None
    passages: dict[tuple[str, int], tuple[Passage, Mapping[str, Any]]] = {}
    if found is not None:
        for chunk_id, document, metadata in zip(
            found["ids"], found["documents"] or [], found["metadatas"] or [], strict=True
        ):
            metadata = metadata or {}
            document_id, at = wanted[chunk_id]
            if metadata.get("document_id") == document_id and (keep is None or keep(metadata)):
                passages[(document_id, at)] = (Passage(chunk_id, at, document or ""), metadata)
    with_passages = []
    for hit in hits:
        document_id, position = hit.metadata.get("document_id"), hit.metadata.get("chunk_index")
        if not isinstance(document_id, str) or not isinstance(position, int):
            with_passages.append(hit)
            continue
        passages[(document_id, position)] = (Passage(hit.chunk_id, position, hit.document), hit.metadata)
        if size == SECTION:
            around = _section(passages, document_id, position)
        else:
            around = [
                found_at[0]
                for at in range(position - reach, position + reach + 1)
                if (found_at := passages.get((document_id, at))) is not None
            ]
        with_passages.append(dataclasses.replace(hit, context=tuple(around)))
    return with_passages


def _section(
    passages: Mapping[tuple[str, int], tuple[Passage, Mapping[str, Any]]], document_id: str, position: int
) -> list[Passage]:
    """The hit's passage and its neighbours in a row that stand in the same place (`same_place`); the hit alone
    when it has no context line (a chunk written before them: `s3sync reembed` adds them)."""
    from s3sync_dagster.pipeline.chunking import CONTEXT_KEY

    def line(at: int) -> str | None:
        found = passages.get((document_id, at))
        value = found[1].get(CONTEXT_KEY) if found is not None else None
        return value if isinstance(value, str) else None

    own = line(position) or ""
    first = last = position
    while first > position - SECTION_REACH and same_place(own, line(first - 1)):
        first -= 1
    while last < position + SECTION_REACH and same_place(own, line(last + 1)):
        last += 1
    return [passages[(document_id, at)][0] for at in range(first, last + 1)]


def same_place(line: str, other: str | None) -> bool:
    """Whether two chunks' context lines name the same place: equal, or one of them the other cut from its least
    specific end to fit the model's window (whole parts, then words: pipeline/chunking/context.py `fit`), a suffix of it."""
    if not line or not other:
        return False
    return line == other or line.endswith(" " + other) or other.endswith(" " + line)


def with_passages(
    collection: Collection,
    hits: Sequence[Hit],
    question: str,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
    context: Context = 0,
) -> list[Hit]:
    """Each hit with its passage (pipeline/search/passages.py), chosen from its section (`with_context`'s `section`, read
    in one request), and with the `context` asked (`with_context`; the section itself, not read twice)."""
    import s3sync_dagster.pipeline.search.passages as passages
    from s3sync_dagster.pipeline.chunking import CONTEXT_KEY

    sections = with_context(collection, hits, SECTION, keep)
    chosen = []
    for hit, in_section in zip(hits, sections, strict=True):
        texts = [passage.document for passage in in_section.context] or [hit.document]
        own_at = next((at for at, p in enumerate(in_section.context) if p.chunk_id == hit.chunk_id), 0)
        line = hit.metadata.get(CONTEXT_KEY)
        heading = passages.heading_path(line if isinstance(line, str) else None, hit.object_key)
        prose = passages.is_prose(hit.metadata.get("language"))
        shown = passages.choose(question, texts, hit.document, heading, prose=prose, own_at=own_at)
        chosen.append(dataclasses.replace(in_section if context == SECTION else hit, passage=shown))
    return chosen if context in (0, SECTION) else with_context(collection, chosen, context, keep)
