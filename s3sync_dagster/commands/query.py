"""`s3sync query` and its Python form: search a source's collection by meaning, by exact words, or both.

Nothing here imports Dagster (test_cli asserts it for `s3sync query`): the config is read by config/, the
store opened by pipeline/store.py, as a run opens them. Only a component's defs.yaml needs Dagster, to render
its templates.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chromadb.errors import NotFoundError

from s3sync_dagster.commands.errors import UsageError
from s3sync_dagster.config import AppConfig, config_file, is_component, load_config
from s3sync_dagster.pipeline import search as engine
from s3sync_dagster.pipeline.chroma import moved
from s3sync_dagster.pipeline.embedding import function_of_record
from s3sync_dagster.pipeline.search import FUSION, Context, Fusion, Hit, Mode, all_of, search_filter, with_passages
from s3sync_dagster.pipeline.store import close_clients

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

# A search that must drop hits (another writer's chunks, a second hit of one object) reads its ranking on past
# them, up to MAX_ASKED hits; once more than WIDEN x n were another writer's, Chroma's filter is asked instead.
WIDEN = 4
MAX_ASKED = 1000


def load_sources(path: str | os.PathLike[str] | None = None) -> AppConfig:
    """The config as `s3sync` finds it (--config, $S3SYNC_CONFIG, ./s3sync.yaml, the project's component)."""
    where = Path(path) if path is not None else config_file()
    if not is_component(where):
        return load_config(where)
    from s3sync_dagster.definitions import load_app_config  # a component's templates are Dagster's

    return load_app_config(where)


class SourceSearch:
    """A source's collection, opened once and kept open (the store's client, the collection, the embedding
    model) for as many queries as a program asks: `s3sync query`'s search, without the cost of opening.

        searcher = SourceSearch("handbook")            # the config as `s3sync` finds it
        for hit in searcher.search("how do I reset my password", n=3, context=1):
            print(hit.object_key, [passage.document for passage in hit.context])

    Only the source's own chunks are answers (pipeline/records/owners.py): a chunk another writer put into its
    collection is not one of this source's documents. every_writer=True searches the whole collection; each
    hit's metadata says whose it is (`source`, `project`).

    A search may filter by metadata (`where`, a Chroma where clause: `{"meta_team": "finance"}`), and of a source
    with `readers_tag` returns only what one of `principals` may read (none named: nothing, unless
    `all_readers`, an operator's view): pipeline/search/filters.py. Both sides rank among the chunks the filter
    admits, so the n best of those are found however many others rank above them.
    """

    def __init__(self, source_name: str, config: AppConfig | None = None, *, every_writer: bool = False) -> None:
        self.config = config or load_sources()
        self.source = self.config.source(source_name)
        self.every_writer = every_writer
        self.owner = self.source.spec(self.config.embedding.spec()).owner
        self._open()

    def _open(self) -> None:
        spec = self.config.embedding.spec()
        store = self.config.chroma.store()
        try:
            self.collection: Collection = store.collection(
                self.source.collection_name, spec, create=False, queries=True
            )
        except NotFoundError:
            raise UsageError(
                moved(store.client(), self.source.collection_name, self.owner)
                or f"source '{self.source.name}' has not been synced yet: "
                f"collection '{self.source.collection_name}' does not exist"
            ) from None
        except Exception as error:
            if store.unreachable(error) is None:
                raise
            raise UsageError(store.failure(error)) from None  # the store itself: named, with the setting to correct
        # The collection's own function (an int8 collection's queries embed in int8; one still holding an earlier
        # model's vectors until its re-embedding swaps, that model's): the model loads at the first query, then
        # stays loaded.
        recorded = (self.collection.configuration_json or {}).get("embedding_function")
        self.embedding_function = function_of_record(recorded, spec)

    def owns(self, metadata: Mapping[str, Any]) -> bool:
        return self.every_writer or self.owner.owns(metadata)

    def search(
        self,
        text: str,
        *,
        mode: Mode = "hybrid",
        n: int = 5,
        context: Context = 0,
        per_object: int | None = None,
        fusion: Fusion = FUSION,
        where: Mapping[str, Any] | None = None,
        principals: Sequence[str] | None = None,
        all_readers: bool = False,
        sections: bool = False,
    ) -> list[Hit]:
        """The n best answers to `text` (see pipeline/search/query.py for the modes).

        context: each hit comes with the `context` chunks before and after it in its object (`Hit.context`,
        in the object's order, the hit among them), or with `context="section"` the chunks of its section (those
        around it under the same headings, or in the same definition: `search_hits.with_context`). per_object: at most this many hits of one object.
        where, principals, all_readers: which chunks may answer (the class's docstring). sections: rank sections,
        each once by all its chunks' evidence, not chunks (`search.search`)."""
        if per_object is not None and per_object < 1:
            raise ValueError(f"per_object must be at least 1, got {per_object}")
        allowed = search_filter(
            self.source.name, self.source.readers_tag, where=where, principals=principals, all_readers=all_readers
        )
        if allowed.closed is not None:
            return []
        filtered = allowed.where
        try:
            hits = self._search_scopes(text, mode, n, context, per_object, fusion, filtered, sections)
            if not hits and not self.every_writer:  # none of its chunks here, perhaps: the collection renamed?
                why = moved(self.config.chroma.store().client(), self.collection.name, self.owner)
                if why is not None:
                    raise UsageError(why)
            return hits
        except Exception as error:
            # The collection was swapped for its re-embedded copy meanwhile (pipeline/reembed/swap.py): the name now
            # holds the new one, whose queries embed with its own function. Asked once more, there. The old one's
            # drop shows as NotFoundError, or on a server mid-drop as another ChromaError ("Missing metadata
            # segment"): any error is retried only when the name holds another collection now.
            if not isinstance(error, NotFoundError) and not self._swapped():
                raise
            self._open()
            return self._search_scopes(text, mode, n, context, per_object, fusion, filtered, sections)

    def _swapped(self) -> bool:
        try:
            return bool(
                self.config.chroma.store().client().get_collection(self.collection.name).id != self.collection.id
            )
        except Exception:  # the name missing between a swap's renames: _open waits for the second one
            return True

    def _search_scopes(
        self,
        text: str,
        mode: Mode,
        n: int,
        context: Context,
        per_object: int | None,
        fusion: Fusion,
        filtered: Mapping[str, Any] | None = None,
        sections: bool = False,
    ) -> list[Hit]:
        # First without Chroma's metadata filter, which reads every chunk of the collection (0.6 s a query
        # at 100,000 chunks): the owner rule is tested on each hit as the ranking is read, and only if more than
        # WIDEN x n of them are another writer's does the search ask Chroma to filter. A caller's filter (where,
        # readers) cannot be tested after the ranking, or the best admitted chunks below the first n * WIDEN
        # would be lost: it is Chroma's (and the lexical index's) from the start, and the owner's with it.
        scopes: list[tuple[Mapping[str, Any] | None, int | None]]
        if filtered:
            scopes = [(filtered if self.every_writer else all_of(self.owner.where(), filtered), None)]
        elif self.every_writer:
            scopes = [(None, None)]
        else:
            scopes = [(None, n * WIDEN), (self.owner.where(), None)]
        for where, foreign in scopes:
            kept, over = self._search(text, where, mode, n, foreign, per_object, fusion, sections)
            if over:
                break
        return with_passages(self.collection, kept[:n], text, self.owns, context)

    def _search(
        self,
        text: str,
        where: Mapping[str, Any] | None,
        mode: Mode,
        n: int,
        foreign: int | None,
        per_object: int | None,
        fusion: Fusion,
        sections: bool = False,
    ) -> tuple[list[Hit], bool]:
        """The hits kept (the source's own, at most per_object of one object), read down the ranking until n
        are kept or MAX_ASKED were read, each pool ranked once (`search.in_tiers`); and whether the search is
        over (n kept, or the collection had no more). With `foreign`, the reading stops, as not over, once more
        than that many hits were another writer's: Chroma's filter is then asked to leave them out."""
        read = refused = 0

        def owned(hit: Hit) -> bool:  # the prefix, which Chroma's filter cannot test, is tested on each hit
            nonlocal read, refused
            read += 1
            if self.owns(hit.metadata):
                return True
            refused += 1
            if foreign is not None and refused > foreign:
                raise _MostlyForeign
            return False

        try:
            kept = engine.search(
                self.collection, text, mode=mode, n=n, where=where, fusion=fusion,
                embedding_function=self.embedding_function, keep=owned, per_object=per_object, most=MAX_ASKED,
                sections=sections,
            )  # fmt: skip
        except _MostlyForeign:
            return [], False
        return kept, len(kept) >= n or read < MAX_ASKED


class _MostlyForeign(Exception):
    """A ranking read unfiltered holds more of other writers' chunks than a search reads past."""


class OpenSearchers:
    """The searchers of a process that answers many `s3sync query`s (commands/resident.py), one a source as
    configured, each kept open while its store is as it left it.

    Another process's writes to an embedded store are not in this process's client (it keeps the HNSW index in
    memory), so before each search the store's files are compared with how the searcher's last search left
    them: if any changed, every client of the process is closed and the store opened again. A write during a
    search closes them too, after it. A server's (or Chroma Cloud's) clients are always current."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[SourceSearch, Any]] = {}

    def search(
        self, source_name: str, text: str, *, config: AppConfig, every_writer: bool = False, **options: Any
    ) -> list[Hit]:
        embedding = config.embedding.spec()
        store = config.chroma.store()
        key = repr((store, embedding, config.source(source_name).spec(embedding), every_writer))
        kept = self._open.get(key)
        if kept is not None and kept[1] != store.disk_state():
            self.close()
            kept = None
        searcher = kept[0] if kept is not None else SourceSearch(source_name, config, every_writer=every_writer)
        before = store.disk_state()
        try:
            found = searcher.search(text, **options)
        finally:
            after = store.disk_state()
            if after == before:
                self._open[key] = (searcher, after)
            else:
                self.close()
        return found

    def close(self) -> None:
        self._open.clear()
        close_clients()


def search_source(
    source_name: str,
    text: str,
    *,
    mode: Mode = "hybrid",
    n: int = 5,
    config: AppConfig | None = None,
    fusion: Fusion = FUSION,
    every_writer: bool = False,
    context: Context = 0,
    per_object: int | None = None,
    where: Mapping[str, Any] | None = None,
    principals: Sequence[str] | None = None,
    all_readers: bool = False,
    sections: bool = False,
) -> list[Hit]:
    """The n chunks of a configured source that best answer `text`, found as `s3sync query` finds them: one
    query of a `SourceSearch` (which a program asking many keeps, so the store and the model stay open)."""
    searcher = SourceSearch(source_name, config, every_writer=every_writer)
    return searcher.search(
        text, mode=mode, n=n, fusion=fusion, context=context, per_object=per_object, where=where,
        principals=principals, all_readers=all_readers, sections=sections,
    )  # fmt: skip
