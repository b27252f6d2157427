"""What earlier releases' re-embeddings left: the copies no re-embedding will swap in, and which a repair drops.

Before COPY_OF_KEY, a model change of a source copied every collection it could write, `<name>-s3sync-rebuild`
marked with FROM_KEY alone (and the original's metadata): shared metadata-file targets, another project's
collection, even a copy of a copy. Only the source's own collection (and targets holding only its chunks) is
ever re-embedded and swapped now: the rest stay stale until `s3sync repair` of a source that writes their base
drops them (`leftovers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline.audit import may_write
from s3sync_dagster.pipeline.chroma import (
    COPY_OF_KEY,
    FROM_KEY,
    REBUILD_SUFFIX,
    RETIRED_KEY,
    drop_collection,
    may_reembed,
    owned,
)

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from s3sync_dagster.pipeline.spec import SourceSpec


@dataclass(frozen=True)
class Leftover:
    """A re-embedding copy an earlier release made of collection `base`, and what a repair does with it."""

    collection: str
    base: str
    dropped: bool
    why: str


def _base_of(name: str) -> tuple[str, int]:
    """The collection a copy's name copies, every rebuild suffix stripped, and how many there were."""
    base, depth = name, 0
    while base.endswith(REBUILD_SUFFIX):
        base, depth = base[: -len(REBUILD_SUFFIX)], depth + 1
    return base, depth


def _earlier_copy(metadata: Mapping[str, Any]) -> bool:
    """Made by an earlier release's re-embedding (FROM_KEY), and unmarked by this one (a copy this release makes
    records COPY_OF_KEY; a collection its swap retired, RETIRED_KEY)."""
    return FROM_KEY in metadata and COPY_OF_KEY not in metadata and RETIRED_KEY not in metadata


def _writes(target: SourceSpec, name: str, holder: Collection) -> bool:
    """Whether collection `name` is one the source writes: its own, or one it may write that holds a chunk of it
    (`holder`: the collection itself, or, where it is missing, a copy of it)."""
    if name == target.collection_name:
        return True
    return may_write(target, name) and next(owned(holder, target.owner), None) is not None


def _verdict(target: SourceSpec, base: Collection | None, base_name: str, depth: int) -> tuple[bool, str]:
    if base is None:
        return False, (
            f"its base collection '{base_name}' is missing: it may hold the only copy of what an interrupted swap of "
            f"an earlier release left, so it is left as it is (rename it '{base_name}', or remove it by hand)"
        )
    if depth > 1:
        return True, f"a copy of a copy of collection '{base_name}' an earlier release made: never swapped in"
    if not may_reembed(base, target.owner):
        return True, (
            f"a copy an earlier release made of collection '{base_name}', which a model change of source "
            f"'{target.name}' does not re-embed (another source's or project's, or shared): never swapped in"
        )
    return False, f"the re-embedding of collection '{base_name}' an earlier release began: `s3sync reembed` resumes it"


def leftovers(client: ClientAPI, target: SourceSpec) -> list[Leftover]:
    """The copies earlier releases left of collections the source writes, each with whether `drop_leftovers`
    drops it and why. A collection of a reserved name without FROM_KEY (another tool's) is none of them."""
    listed = {collection.name: collection for collection in client.list_collections()}
    found = []
    for name, copy in sorted(listed.items()):
        base_name, depth = _base_of(name)
        if not depth or not _earlier_copy(copy.metadata or {}):
            continue
        base = listed.get(base_name)
        if _writes(target, base_name, copy if base is None else base):
            found.append(Leftover(name, base_name, *_verdict(target, base, base_name, depth)))
    return found


def drop_leftovers(client: ClientAPI, target: SourceSpec) -> list[Leftover]:
    """Drop the copies earlier releases left that no re-embedding will swap in (`leftovers`, `dropped`), each
    read again just before (a copy this release marked meanwhile is kept); returns every leftover found."""
    from chromadb.errors import NotFoundError

    found = leftovers(client, target)
    for leftover in found:
        if not leftover.dropped:
            continue
        try:
            copy = client.get_collection(name=leftover.collection)
            if _earlier_copy(copy.metadata or {}):
                drop_collection(client, copy)
        except NotFoundError:  # dropped meanwhile (another repair)
            continue
        except Exception as error:
            raise RuntimeError(
                f"collection '{leftover.collection}' (a copy an earlier release left of collection "
                f"'{leftover.base}') could not be dropped: {type(error).__name__}: {error}"
            ) from error
    return found
