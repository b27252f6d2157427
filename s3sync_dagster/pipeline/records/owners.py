"""Who may touch a chunk: the one rule every read, write, removal, audit and search of a source's chunks follows.

A chunk is a source's when it says so on every count it records: the source's name, the project (the
deployment: `project` in the config; absent, none), the bucket it came from, and an object key under the
source's prefix. One Chroma store, or one server, is often shared: by sources of one config, by two projects
that each named a source `docs`, by a test deployment beside production. The name alone said nothing of
which project's `docs` wrote a chunk, so one project's repair deleted the other's as orphaned; the bucket and
the prefix tell two projects' sources apart without any setting, and `project` tells apart two projects that
read the same bucket.

Chunks written before `project` existed hold no `project`: they are the chunks of a config that sets none,
exactly as before, so existing collections need no re-sync.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Owner:
    """The writer a chunk names: a source of a project, reading one bucket under one prefix."""

    source: str
    bucket_name: str = ""  # "" (an engine test's bare source): any bucket
    path_prefix: str = ""
    project: str = ""  # "" : the config names no project

    def owns(self, metadata: Mapping[str, Any]) -> bool:
        """Whether a chunk with this metadata is this owner's to replace or delete."""
        if metadata.get("source") != self.source or str(metadata.get("project") or "") != self.project:
            return False
        bucket = metadata.get("bucket_name")
        if self.bucket_name and isinstance(bucket, str) and bucket != self.bucket_name:
            return False
        object_key = metadata.get("object_key")
        return not isinstance(object_key, str) or object_key.startswith(self.path_prefix)

    def stamp(self) -> dict[str, str]:
        """The metadata every chunk this owner writes carries to say whose it is."""
        return {"source": self.source, **({"project": self.project} if self.project else {})}

    def where(self) -> dict[str, Any]:
        """A Chroma filter narrowing a read to this owner's chunks (what Chroma can test: the prefix is not;
        `owns` is the whole rule)."""
        terms: list[dict[str, Any]] = [{"source": self.source}]
        if self.bucket_name:
            terms.append({"bucket_name": self.bucket_name})
        if self.project:
            terms.append({"project": self.project})
        return terms[0] if len(terms) == 1 else {"$and": terms}

    def describe(self) -> str:
        """In words, as the writer itself is named in errors (its bucket and prefix are the config's)."""
        return describe(self.stamp())

    def record(self) -> str:
        """This owner as its own collection records it (index.bind_owner)."""
        fields = {"source": self.source, "bucket_name": self.bucket_name, "path_prefix": self.path_prefix}
        return json.dumps(fields | {"project": self.project}, sort_keys=True)


def describe(metadata: Mapping[str, Any]) -> str:
    """Whose a chunk is, in words, from its metadata: "source 'docs' (bucket 'b') of project 'p'"."""
    said = f"source '{metadata.get('source', '?')}'"
    if metadata.get("bucket_name"):
        prefix = f", prefix '{metadata['path_prefix']}'" if metadata.get("path_prefix") else ""
        said += f" (bucket '{metadata['bucket_name']}'{prefix})"
    if metadata.get("project"):
        said += f" of project '{metadata['project']}'"
    return said
