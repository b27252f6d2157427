"""A collection re-embedded under another embedding function without downtime (issue 39).

Chroma records one embedding function per collection and will not change it in place, and a collection
holding two models' vectors answers every query wrong. So a model change (another function, another model,
`precision: int8`) is carried by a copy, `<name>-s3sync-rebuild`, recording the new function:

1. **Begun**: the copy is created (`begin`), recording on its metadata which function it re-embeds from. A
   collection of either name that the re-embedding did not make (another tool's) stops it first, named, with
   nothing made (`in_the_way`): the copy could not take its name, or the swap could not retire the collection.
   From then on every write through pipeline/chroma/replace.py to the collection lands in the copy too, in the new
   function (`lifecycle.attach_copy`): a sync during the re-embedding keeps the copy exact.
2. **Filled** (`fill`): every chunk of the collection, page by page, its stored context line and text embedded by
   the new function and added to the copy with its id and metadata (a chunk written before context lines gets
   one, from its object's stored chunks: pipeline/reembed/context_backfill.py). No S3 read, no extraction. `add` leaves a chunk a
   sync already wrote to the copy as it is; chunks already in the copy (an earlier, interrupted pass) are
   skipped before they are embedded.
3. **Reconciled** (`reconcile`), until a pass finds nothing: every chunk whose id, text or metadata differ
   between the two is embedded again, or removed from the copy (what a write racing a page left).
4. **Swapped** (`swap`): the collection is renamed `<name>-s3sync-retired`, the copy takes its name, and the
   retired one is dropped. Between the two renames (milliseconds) the name is missing: our readers wait for
   it (`wait_for_swap`), and a crash there is finished on the next open (`recover`).

Throughout, queries go to the collection under its own name and embed with its recorded function, so they are
answered from the old vectors until the swap and from the new ones after. A crash at any step leaves a state
the next `run` resumes (the copy kept, filled further) and the next open makes consistent (`recover`).
`step` names each point (a test kills the process there).

What is written to the copy (each chunk's context line and text embedded; the two collections compared) is
reembed/fill.py's; the copies earlier releases left, and which a repair drops, are reembed/leftovers.py's.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import s3sync_dagster.pipeline.reembed.fill as reembed_copy
from s3sync_dagster.pipeline.chroma import (
    COPY_OF_KEY,
    FROM_KEY,
    REBUILD_SUFFIX,
    RETIRED_KEY,
    RETIRED_SUFFIX,
    attach_copy,
    detach_copy,
    drop_collection,
    get_collection,
    is_copy_of,
    opened,
)
from s3sync_dagster.pipeline.chunking import TokenBudget
from s3sync_dagster.pipeline.lexicon import of
from s3sync_dagster.pipeline.reembed.context_backfill import completed
from s3sync_dagster.pipeline.reembed.fill import Digest, catch_up, embed_into, reconcile

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Documents, EmbeddingFunction

# On a collection whose re-embedding was abandoned: the function it was to (a sync under that config does not
# begin it again; `s3sync reembed` does).
ABANDONED_KEY = "s3sync_reembed_abandoned"
_MARKERS = frozenset({FROM_KEY, RETIRED_KEY, ABANDONED_KEY, COPY_OF_KEY})
PAGE = reembed_copy.PAGE  # chunks read, embedded and added at a time
RECONCILE_ROUNDS = 5  # passes that still found differences before giving up (writes outpacing the copy)
SWAP_WAIT_S = 10.0  # how long a reader waits for a swap's second rename

Step = Callable[[str], None]


@dataclass
class Progress:
    """Where a re-embedding stands: `done` of `total` chunks are in the copy."""

    total: int = 0
    done: int = 0
    embedded: int = 0  # texts the new function embedded
    reconciled: int = 0  # chunks the reconcile passes embedded again or removed
    seconds: float = 0.0
    phase: str = "begun"

    def line(self) -> str:
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        rate = f", {self.embedded / self.seconds:.0f} texts/s" if self.seconds and self.embedded else ""
        return f"{self.phase}: {self.done:,} of {self.total:,} chunks in the copy{share}{rate}"


class InTheWay(ValueError):
    """A collection this project did not make as a copy holds the name a re-embedding's copy needs."""


class Abandoned(ValueError):
    """The re-embedding to this function was abandoned (`s3sync reembed --abandon`): a write does not begin it
    again; `s3sync reembed` does."""


def _function_json(function: EmbeddingFunction[Documents]) -> str:
    return json.dumps({"name": function.name(), "config": function.get_config()}, sort_keys=True, default=str)


def abandoned(collection: Collection, function: EmbeddingFunction[Documents]) -> bool:
    """Whether the re-embedding of `collection` to `function` was abandoned (ABANDONED_KEY)."""
    return (collection.metadata or {}).get(ABANDONED_KEY) == _function_json(function)


def _nothing(_: str) -> None:
    return None


def copy_name(name: str) -> str:
    return name + REBUILD_SUFFIX


def _get(client: ClientAPI, name: str, function: EmbeddingFunction[Documents] | None = None) -> Collection | None:
    from chromadb.errors import NotFoundError

    try:
        if function is None:
            return client.get_collection(name=name)
        return get_collection(client, name, function)
    except (NotFoundError, ValueError):
        return None


def underway(client: ClientAPI, collection: Collection) -> Collection | None:
    """The re-embed copy of `collection`, if a re-embedding is underway (begun, not yet swapped)."""
    copy = _get(client, copy_name(collection.name))
    if copy is None or FROM_KEY not in (copy.metadata or {}) or not is_copy_of(copy, collection.name):
        return None
    return copy


def _retired(client: ClientAPI, name: str) -> Collection | None:
    """The collection a swap of `name` retired, if one is there (marked by the swap: RETIRED_KEY)."""
    retired = _get(client, name + RETIRED_SUFFIX)
    if retired is None or (retired.metadata or {}).get(RETIRED_KEY) != name:
        return None
    return retired


def _records(collection: Collection, function: EmbeddingFunction[Documents]) -> bool:
    """Whether `collection` records `function` (its name and config)."""
    recorded = (collection.configuration_json or {}).get("embedding_function") or {}
    return bool(recorded.get("name") == function.name() and (recorded.get("config") or {}) == function.get_config())


def in_the_way(client: ClientAPI, name: str) -> dict[str, str]:
    """The collections of the names a re-embedding of collection `name` needs that it did not make, each with why
    it blocks: a `-s3sync-rebuild` that is not its copy, a `-s3sync-retired` no swap of `name` marked."""
    blocking = {}
    rebuild = _get(client, copy_name(name))
    if rebuild is not None and (FROM_KEY not in (rebuild.metadata or {}) or not is_copy_of(rebuild, name)):
        blocking[rebuild.name] = (
            "its copy takes that name, and this is not a re-embedding's copy (another tool's, or an interrupted "
            "rebuild's)"
        )
    retired = _get(client, name + RETIRED_SUFFIX)
    if retired is not None and (retired.metadata or {}).get(RETIRED_KEY) != name:
        blocking[name + RETIRED_SUFFIX] = (
            "its swap renames the collection to that name, and this is not one a swap retired (another tool's)"
        )
    return blocking


def refuse_what_is_in_the_way(client: ClientAPI, collection: Collection) -> None:
    """InTheWay, naming each collection of in_the_way, before a re-embedding makes or renames anything: they are
    left as they are, and so is the collection."""
    blocking = in_the_way(client, collection.name)
    if blocking:
        raise InTheWay(
            "; ".join(
                f"collection '{name}' is in the way of the re-embedding of collection '{collection.name}': {why}"
                for name, why in blocking.items()
            )
            + ". Each is left as it is: rename or remove it, then run the re-embedding again"
        )


def abandon(client: ClientAPI, collection: Collection, *, sticks: bool = False) -> bool:
    """Drop the re-embedding copy of `collection` (a rollback: the collection was never touched); True if one was.
    sticks: recorded on the collection, so that a write under the same config does not begin it again."""
    copy = underway(client, collection)
    if copy is None:
        return False
    if sticks:
        recorded = (copy.configuration_json or {}).get("embedding_function") or {}
        target = json.dumps({"name": recorded.get("name"), "config": recorded.get("config") or {}}, sort_keys=True)
        collection.modify(metadata={**(collection.metadata or {}), ABANDONED_KEY: target})
    detach_copy(collection)
    _drop(client, copy.name)
    return True


def begin(
    client: ClientAPI, collection: Collection, function: EmbeddingFunction[Documents], *, again: bool = False
) -> Collection:
    """The copy (created if missing) that re-embeds `collection` under `function`, its writes attached. A copy
    under another function (the config changed again meanwhile) is dropped and begun anew. A re-embedding to
    `function` that was abandoned is begun only `again` (`s3sync reembed`): Abandoned otherwise. A collection in
    the way (`in_the_way`) stops it before its copy is made; a copy underway stays attached whatever appears
    meanwhile (its writes keep it exact), and `swap` checks again before it renames anything."""
    if underway(client, collection) is None:
        refuse_what_is_in_the_way(client, collection)  # before anything is written, the abandoned mark included
    if abandoned(collection, function):
        if not again:
            raise Abandoned(
                f"collection '{collection.name}': its re-embedding to {function.name()} "
                f"{json.dumps(function.get_config(), default=str)} was abandoned (s3sync reembed --abandon); writes go "
                "on in the function it records. Start it again with `s3sync reembed SOURCE`, or set the old "
                "`embedding:` back"
            )
        metadata = {k: v for k, v in (collection.metadata or {}).items() if k != ABANDONED_KEY}
        collection.modify(metadata=metadata or None)
    copy = underway(client, collection)
    if copy is not None and not _records(copy, function):
        abandon(client, collection)
        copy = None
    if copy is None:
        refuse_what_is_in_the_way(client, collection)
        hnsw = (collection.configuration or {}).get("hnsw")
        recorded = (collection.configuration_json or {}).get("embedding_function") or {}
        with contextlib.suppress(Exception):  # another writer created it first: take theirs
            client.create_collection(
                name=copy_name(collection.name),
                configuration={"hnsw": dict(hnsw)} if hnsw else None,  # type: ignore[arg-type,typeddict-item]
                embedding_function=function,  # type: ignore[arg-type]
                metadata={
                    **{k: v for k, v in (collection.metadata or {}).items() if k not in _MARKERS},
                    FROM_KEY: json.dumps(recorded, sort_keys=True),
                    COPY_OF_KEY: collection.name,
                },
            )
    copy = get_collection(client, copy_name(collection.name), function)
    index_of = of(copy)
    if index_of is not None:
        index_of.create_if_empty(copy)
    attach_copy(collection, copy, function)
    return copy


def fill(
    collection: Collection,
    copy: Collection,
    function: EmbeddingFunction[Documents],
    progress: Progress,
    report: Callable[[Progress], None],
    step: Step,
    page_size: int = PAGE,
    contexts: TokenBudget | None = None,
) -> None:
    """Every chunk of the collection not yet in the copy, embedded by `function` and added, page by page; one
    without a context line given one, cut to `contexts` (None: copied without)."""
    progress.phase, progress.total, progress.done = "re-embedding", collection.count(), copy.count()
    report(progress)
    started, offset = time.perf_counter(), 0
    while True:
        page = collection.get(limit=page_size, offset=offset, include=["documents", "metadatas"])  # type: ignore[list-item]
        if not page["ids"]:
            break
        offset += len(page["ids"])
        present = set(copy.get(ids=page["ids"], include=[])["ids"])
        todo = [i for i, chunk_id in enumerate(page["ids"]) if chunk_id not in present]
        if todo:
            ids = [page["ids"][i] for i in todo]
            documents = [(page["documents"] or [])[i] or "" for i in todo]
            metadatas = completed(collection, ids, [(page["metadatas"] or [])[i] for i in todo], contexts)
            progress.embedded += embed_into(copy, function, ids, documents, metadatas, upsert=False)
        progress.done = copy.count()
        progress.seconds = time.perf_counter() - started
        report(progress)
        step("reembed:page")


def swap(
    client: ClientAPI,
    name: str,
    function: EmbeddingFunction[Documents],
    step: Step = _nothing,
    snapshot: Mapping[str, Digest] | None = None,
    contexts: TokenBudget | None = None,
) -> Collection:
    """The copy takes the collection's name; what reached the old one after `snapshot` is caught up; the old one
    is dropped. Each rename is one step; another process finding the name missing between them finishes the swap
    itself (recover, or lifecycle.open_collection)."""
    old = client.get_collection(name=name)
    refuse_what_is_in_the_way(client, old)  # made since the copy was begun: the copy is kept, to resume
    # Renamed and marked in one request: a retired collection is always known for a swap's.
    old.modify(name=name + RETIRED_SUFFIX, metadata={**(old.metadata or {}), RETIRED_KEY: name})
    step("reembed:retired")
    _promote(client, name)
    step("reembed:swapped")
    swapped = get_collection(client, name, function)
    retired = _retired(client, name)
    if snapshot is not None and retired is not None:
        catch_up(opened(client, retired), swapped, snapshot, function, contexts)
    recover(client, name)  # drops the retired collection
    return swapped


def _promote(client: ClientAPI, name: str) -> bool:
    """The copy (if this project's) takes the free name; True if it did (or another process did meanwhile)."""
    from chromadb.errors import NotFoundError

    copy = _get(client, copy_name(name))
    if copy is None or not is_copy_of(copy, name):
        return False
    with contextlib.suppress(NotFoundError, ValueError):  # another process may be finishing it too
        copy.modify(name=name)
    return True


def _drop(client: ClientAPI, name: str) -> None:
    from chromadb.errors import NotFoundError

    with contextlib.suppress(NotFoundError, ValueError):
        drop_collection(client, client.get_collection(name=name))


def recover(client: ClientAPI, name: str) -> bool:
    """Finish a swap a crash interrupted between its renames (or drop what it left): True if it did anything.

    The collection's name missing, a retired collection and the copy there: the copy takes the name (the swap
    goes on); no copy: the retired one takes its name back. The name there and a retired one too: it is dropped.
    """
    from chromadb.errors import NotFoundError

    retired = _retired(client, name)
    if retired is None:
        return False
    if _get(client, name) is None and not _promote(client, name):
        with contextlib.suppress(NotFoundError, ValueError):  # no copy: the swap undone, the collection unmarked
            kept = {k: v for k, v in (retired.metadata or {}).items() if k != RETIRED_KEY}
            retired.modify(name=name, metadata=kept or None)
        return True
    if _retired(client, name) is not None:
        _drop(client, name + RETIRED_SUFFIX)
    return True


def wait_for_swap(client: ClientAPI, name: str, timeout_s: float = SWAP_WAIT_S) -> bool:
    """For a reader that did not find `name`: whether a swap is underway (a retired collection is there), after
    waiting for its second rename (or finishing it past `timeout_s`). False: no swap; the name is missing."""
    deadline = time.monotonic() + timeout_s
    while _retired(client, name) is not None:
        if _get(client, name) is not None:
            return True
        if time.monotonic() > deadline:
            return recover(client, name)
        time.sleep(0.05)
    return _get(client, name) is not None


def run(
    client: ClientAPI,
    collection: Collection,
    function: EmbeddingFunction[Documents],
    report: Callable[[Progress], None] = lambda _: None,
    step: Step = _nothing,
    page_size: int = PAGE,
    contexts: TokenBudget | None = None,
) -> tuple[Collection, Progress]:
    """Re-embed `collection` under `function` and swap the copy in: begin (or resume), fill, reconcile, swap.
    contexts: what the context line of a chunk written without one is cut to (the source's token budget, its
    `window` the new model's); None: such chunks are copied without one.

    Another re-embedding of the same collection at the same time (two runs launched together on a server): the
    first to swap wins; this one, finding its collection swapped or gone, ends with the swapped-in collection
    when that records `function`, and says who changed it otherwise."""
    from chromadb.errors import NotFoundError

    recover(client, collection.name)
    progress = Progress()
    try:
        return _run(client, collection, function, progress, report, step, page_size, contexts), progress
    except NotFoundError:
        current = _get(client, collection.name)
        if current is not None and current.id != collection.id and _records(current, function):
            progress.phase = "swapped by another re-embedding"
            report(progress)
            return get_collection(client, collection.name, function), progress
        raise RuntimeError(
            f"collection '{collection.name}' or its re-embedding copy '{copy_name(collection.name)}' was removed "
            "while it was re-embedded (by another re-embedding abandoned meanwhile, or by hand): run it again"
        ) from None


def _run(
    client: ClientAPI,
    collection: Collection,
    function: EmbeddingFunction[Documents],
    progress: Progress,
    report: Callable[[Progress], None],
    step: Step,
    page_size: int,
    contexts: TokenBudget | None,
) -> Collection:
    copy = begin(client, collection, function, again=True)
    step("reembed:begun")
    fill(collection, copy, function, progress, report, step, page_size, contexts)
    progress.phase = "reconciling"
    report(progress)
    for _ in range(RECONCILE_ROUNDS):
        fixed, snapshot = reconcile(collection, copy, function, contexts)
        progress.reconciled += fixed
        if not fixed:
            break
    else:
        raise RuntimeError(
            f"collection '{collection.name}': writes kept changing it faster than its copy caught up "
            f"({RECONCILE_ROUNDS} passes); run the re-embedding again"
        )
    step("reembed:copied")
    progress.done = copy.count()
    progress.phase = "swapping"
    report(progress)
    index_of = of(copy)
    if index_of is not None:  # the copy's lexical index, whole, before it answers queries
        index_of.rebuild(copy)
    if client.get_collection(name=collection.name).id != collection.id:  # another re-embedding swapped first
        from chromadb.errors import NotFoundError

        raise NotFoundError(f"collection '{collection.name}' was swapped meanwhile")
    swapped = swap(client, collection.name, function, step, snapshot, contexts)
    progress.phase = "swapped"
    report(progress)
    return swapped
