"""Context lines for chunks written before them (pipeline/chunking/context.py), from the stored chunks of their object, with
no S3 read: a re-embedding under another function fills them in as it copies (pipeline/reembed/swap.py), and under
the same function `add_missing` embeds context + text in place (`s3sync reembed`).

An object's stored chunks, in `chunk_index` order, tile its text (blank pieces aside, which hold no heading), so
its headings and definitions are read from them exactly as the write path reads them from the text it chunked:
the same chunks get the same lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline.chroma import (
    TEXT_HASH,
    Embedder,
    batches,
    embed_texts,
    function_of,
    function_record,
    max_batch_size,
    pages,
    text_hash,
)
from s3sync_dagster.pipeline.chunking import CONTEXT_KEY, TokenBudget, context_lines, embedding_input
from s3sync_dagster.pipeline.lexicon import mirrored
from s3sync_dagster.pipeline.records import Owner

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

# Documents whose chunks one read asks for (`$in` of their ids: embedded Chroma scans the collection for a
# metadata filter whatever it matches, so one read of 64 costs about what one of one does; stored.READ_KEYS).
READ_DOCUMENTS = 64


@dataclass(frozen=True)
class _Row:
    chunk_id: str
    text: str
    metadata: Mapping[str, Any]

    @property
    def order(self) -> tuple[int, int, str]:
        index, line = self.metadata.get("chunk_index"), self.metadata.get("start_line")
        return (
            index if isinstance(index, int) else 1 << 62,
            line if isinstance(line, int) else 1 << 62,
            self.chunk_id,
        )


def lacks_context(metadata: Mapping[str, Any] | None) -> bool:
    """Whether a chunk was written before context lines (a chunk whose line was cut to nothing holds "")."""
    return CONTEXT_KEY not in (metadata or {})


def _document_id(metadata: Mapping[str, Any] | None) -> str | None:
    found = (metadata or {}).get("document_id")
    return found if isinstance(found, str) and found else None


def _objects(collection: Collection, document_ids: Iterable[str]) -> list[list[_Row]]:
    """The stored chunks of each of these documents, in order."""
    by_document: dict[str, list[_Row]] = {}
    for part in batches(sorted(document_ids), READ_DOCUMENTS):
        where: Any = {"document_id": {"$in": list(part)}}
        found = collection.get(where=where, include=["documents", "metadatas"])  # type: ignore[list-item]
        metadatas = found.get("metadatas") or [{}] * len(found["ids"])
        for chunk_id, text, metadata in zip(found["ids"], found.get("documents") or [], metadatas, strict=True):
            document_id = _document_id(metadata)
            if document_id is not None:
                by_document.setdefault(document_id, []).append(_Row(chunk_id, text or "", metadata or {}))
    return [sorted(rows, key=lambda row: row.order) for rows in by_document.values()]


def _lines(rows: Sequence[_Row], budget: TokenBudget | None) -> list[str]:
    first = rows[0].metadata
    object_key, language = first.get("object_key"), first.get("language")
    return context_lines(
        object_key if isinstance(object_key, str) else "",
        language if isinstance(language, str) else None,
        [row.text for row in rows],
        budget,
    )


def completed(
    collection: Collection,
    ids: Sequence[str],
    metadatas: Sequence[Mapping[str, Any] | None],
    budget: TokenBudget | None,
) -> list[dict[str, Any]]:
    """The metadatas of these chunks of `collection`, each lacking a context line given one, computed from its
    object's stored chunks (budget: what the line is cut to; None: left without one)."""
    out = [dict(metadata or {}) for metadata in metadatas]
    missing = {_document_id(metadata) for metadata in out if lacks_context(metadata)} - {None}
    if budget is None or not missing:
        return out
    lines: dict[str, str] = {}
    for rows in _objects(collection, [document_id for document_id in missing if document_id is not None]):
        lines.update(zip([row.chunk_id for row in rows], _lines(rows, budget), strict=True))
    for chunk_id, metadata in zip(ids, out, strict=True):
        if lacks_context(metadata) and chunk_id in lines:
            metadata[CONTEXT_KEY] = lines[chunk_id]
    return out


def add_missing(
    collection: Collection,
    embed: Embedder,
    budget: TokenBudget | None,
    owner: Owner,
    report: Callable[[int, int], None] = lambda _chunks, _objects: None,
) -> tuple[int, int]:
    """Give every chunk of `owner` written before context lines its line, its vector embedded again from context
    + text by the function the collection records, and its text hash; in place (the function does not change,
    so queries meanwhile read vectors of one model, with and without contexts). Returns (chunks, objects).

    Each object's chunks are read by document id, their lines computed, and the chunks written in one update
    each (a writer racing it on a server, rewriting a chunk between the read and the update, leaves a chunk
    whose recorded hash is not its input's: the drift audit's `misembedded`, which a repair embeds again)."""
    documents: set[str] = set()
    for page in pages(collection):
        documents.update(
            document_id
            for _, metadata in page
            if lacks_context(metadata) and owner.owns(metadata) and (document_id := _document_id(metadata))
        )
    embed, record, chunks = function_of(collection, embed), function_record(collection), 0
    for part in batches(sorted(documents), READ_DOCUMENTS):
        todo: list[tuple[_Row, str]] = []
        for rows in _objects(collection, part):
            todo += [
                (row, line)
                for row, line in zip(rows, _lines(rows, budget), strict=True)
                if lacks_context(row.metadata) and owner.owns(row.metadata)
            ]
        for written in batches(todo, max_batch_size(collection)):
            inputs = [embedding_input(row.text, {CONTEXT_KEY: line}) for row, line in written]
            ids = [row.chunk_id for row, _ in written]
            with mirrored(collection, ids, dict(zip(ids, inputs, strict=True))):
                collection.update(
                    ids=ids,
                    embeddings=list(embed_texts(embed, inputs)),  # type: ignore[arg-type]
                    metadatas=[
                        {CONTEXT_KEY: line, TEXT_HASH: text_hash(embedded, record)}
                        for (_, line), embedded in zip(written, inputs, strict=True)
                    ],
                )
            chunks += len(written)
        report(chunks, len(documents))
    return chunks, len(documents)
