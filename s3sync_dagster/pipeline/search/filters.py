"""The metadata filter a search applies: the caller's `where` (a Chroma where clause over the chunks' metadata:
`meta_<name>`, `tag_<name>`, any field) and a source's readers rule, joined with `$and` as Chroma takes them.

The readers rule (a source with `readers_tag`): each chunk lists who may read it (`readers`, a list of principal
strings written at ingestion); a search naming principals keeps the chunks whose list holds one of them
(Chroma's `$contains` on a string list: an exact element, not a substring); a search naming none finds nothing
unless it asks for an operator's view (`all_readers`). A chunk with no `readers` (an object without the tag and
a source with no `default_readers`) is read by operators only. A source without `readers_tag` has no readers
to name: naming one is an error, not a filter that would quietly find nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The chunk metadata field listing an object's readers, written at ingestion from the source's readers_tag.
from s3sync_dagster.pipeline.chroma import READERS_KEY


@dataclass(frozen=True)
class SearchFilter:
    """What a search may return: `where`, Chroma's filter (None: every chunk), or nothing at all (`closed`
    says why, in words for the person who asked)."""

    where: dict[str, Any] | None
    closed: str | None = None


def all_of(*clauses: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Clauses joined with `$and` as Chroma takes them (one alone as it is; none: None)."""
    kept = [dict(clause) for clause in clauses if clause]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else {"$and": kept}


def readable_by(principals: Sequence[str]) -> dict[str, Any]:
    """The chunks whose readers hold one of the principals."""
    clauses = [{READERS_KEY: {"$contains": principal}} for principal in dict.fromkeys(principals)]
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


def checked_where(where: Any) -> dict[str, Any] | None:
    """The caller's where clause if Chroma takes it; else a ValueError saying the rule it breaks."""
    if where is None:
        return None
    from chromadb.api.types import validate_where

    if not isinstance(where, Mapping):
        raise ValueError(f"the where filter must be an object (a Chroma where clause), got {type(where).__name__}")
    try:
        validate_where(dict(where))
    except ValueError as error:
        raise ValueError(f"the where filter is not a Chroma where clause: {error}") from None
    return dict(where) or None


def principal_list(principals: Any) -> list[str]:
    """The principals a search names, as a list; a value that is not a list of them (a bare string would be read
    as its letters, each a principal) is refused, naming the parameter."""
    if principals is None:
        return []
    if isinstance(principals, (str, bytes, Mapping)) or not isinstance(principals, (Sequence, set, frozenset)):
        raise TypeError(
            f"principals must be a list of principals, e.g. ['alice', 'group:finance'], not a "
            f"{type(principals).__name__} ({str(principals)[:40]!r}): a string would be read as its letters"
        )
    return list(principals)


def search_filter(
    source_name: str,
    readers_tag: str | None,
    *,
    where: Mapping[str, Any] | None = None,
    principals: Sequence[str] | None = None,
    all_readers: bool = False,
) -> SearchFilter:
    """The filter of one search of a source: the caller's where, and-ed with the readers rule."""
    asked = checked_where(where)
    named = principal_list(principals)
    if any(not isinstance(principal, str) or not principal.strip() for principal in named):
        raise ValueError("a principal is a non-empty string (as a readers tag lists it: alice, group:finance)")
    if readers_tag is None:
        if named:
            raise ValueError(
                f"source '{source_name}' has no readers_tag: its chunks list no readers, so a search of it names "
                "no principal (--as); set readers_tag on the source to filter by who may read an object"
            )
        return SearchFilter(asked)
    if named and all_readers:
        raise ValueError("name principals (--as) or ask for every reader's chunks (--all-readers), not both")
    if all_readers:
        return SearchFilter(asked)
    if not named:
        return SearchFilter(
            asked,
            closed=f"source '{source_name}' lists readers per object (readers_tag): name --as PRINCIPAL, "
            "or --all-readers for an operator's view",
        )
    return SearchFilter(all_of(readable_by(named), asked))
