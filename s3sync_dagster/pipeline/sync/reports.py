"""What happened to one object key: its report, the time each step took, and a failure's message."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from s3sync_dagster.pipeline.chroma import EmbeddingError
from s3sync_dagster.pipeline.extraction import ExtractionError
from s3sync_dagster.pipeline.s3 import ObjectError

# waiting: a .meta.json names an object not in the bucket (yet); ignored: a document in metadata mode,
# indexed only through the .meta.json files naming it (reported in the run's log, not on a partition); archived:
# in an archive storage class and not restored (pipeline/s3/archive.py): not read, not failed, its chunks kept.
Status = Literal["indexed", "unchanged", "empty", "removed", "waiting", "ignored", "archived", "failed"]


@dataclass
class KeyReport:
    """What happened to one object key, as reported on its materialisation."""

    object_key: str  # the partition's key: the object's, or its .meta.json file's
    status: Status
    collection_name: str
    document_key: str | None = None  # the object a .meta.json file pointed at
    size_bytes: int = 0
    etag: str = ""
    chunk_count: int = 0
    chunks_written: int = 0
    chunks_embedded: int = 0
    chunks_metadata_only: int = 0
    chunks_unchanged: int = 0
    chunks_deleted: int = 0
    chunker: str = ""
    language: str | None = None
    extractor: str = ""
    duration_s: float = 0.0
    preview: str = ""
    message: str = ""
    pages: int | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lap(report: KeyReport, step: str, since: float) -> float:
    now = time.perf_counter()
    report.timings[step] = report.timings.get(step, 0.0) + (now - since)
    return now


def failure_message(object_key: str, error: Exception) -> str:
    """Our own errors already name the object and rule; anything else gets the object named for it, and
    an error with no text is named by its type: never an empty message."""
    text = str(error).strip()
    if isinstance(error, (ObjectError, ExtractionError, ValueError)) and object_key in text:
        return text
    if isinstance(error, (EmbeddingError, ValueError)) and text:
        return f"object '{object_key}': {text}"
    return f"object '{object_key}': {type(error).__name__}" + (f": {text}" if text else " (the error gave no reason)")
