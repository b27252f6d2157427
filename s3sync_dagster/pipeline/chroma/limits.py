"""Chroma Cloud's published quotas per record, as rules: the one table of them, the check of a source's settings
at load, and the check of an object's records before anything of it is written to a Cloud store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from s3sync_dagster.pipeline.chroma.stored import ChunkRecord
from s3sync_dagster.pipeline.chroma.vectors import TEXT_HASH
from s3sync_dagster.pipeline.records import RESERVED_METADATA_KEYS, MetadataValue

# Its table "Quotas & Limits"; the values as of chroma-core/chroma docs (commit 956cdd6).
SOURCE = "https://docs.trychroma.com/cloud/quotas-limits"


@dataclass(frozen=True)
class Limit:
    """One quota, by the name Chroma Cloud's table gives it."""

    name: str
    value: int
    unit: str
    source: str = SOURCE

    def says(self) -> str:
        """The limit in words, with where it is published, for an error message."""
        return f"Chroma Cloud allows at most {self.value:,} {self.unit} ({self.name}: {self.source})"


DOCUMENT_BYTES = Limit("Maximum document bytes", 16_384, "bytes a document")
ID_BYTES = Limit("Maximum ID size bytes", 128, "bytes an id")
METADATA_KEYS = Limit("Maximum number of record metadata keys", 32, "metadata keys a record")
KEY_BYTES = Limit("Maximum metadata key size bytes", 36, "bytes a metadata key name")
VALUE_BYTES = Limit("Maximum record metadata value size bytes", 4_096, "bytes a metadata value")
COLLECTION_NAME_BYTES = Limit("Maximum collection name size bytes", 128, "bytes a collection name")
DATABASE_NAME_BYTES = Limit("Maximum database name size bytes", 128, "bytes a database name")

# What is checked here; docs/sources.md ("Chroma Cloud's quotas") shows the same table.
LIMITS = (DOCUMENT_BYTES, ID_BYTES, METADATA_KEYS, KEY_BYTES, VALUE_BYTES, COLLECTION_NAME_BYTES, DATABASE_NAME_BYTES)

# The sync's own keys on a record: those it writes when chunking and the text hash the write adds.
OWN_KEYS = RESERVED_METADATA_KEYS | {TEXT_HASH}


def _bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def value_bytes(value: MetadataValue) -> int:
    """A metadata value's size: a string's UTF-8 bytes, an array's items together; a number or boolean 8."""
    if isinstance(value, list):
        return sum(value_bytes(item) for item in value)
    return _bytes(value) if isinstance(value, str) else 8


def check_database(database: str) -> None:
    """chroma.cloud.database, at load."""
    if (size := _bytes(database)) > DATABASE_NAME_BYTES.value:
        raise ValueError(f"chroma.cloud.database is {size:,} bytes; {DATABASE_NAME_BYTES.says()}")


def check_source(source_name: str, max_size_bytes: int, collection_name: str) -> None:
    """A source's settings, at load, where the store is Chroma Cloud: a chunk is one document, and is at most
    chunking.max_size_bytes UTF-8 bytes (the chunker's bound; a token budget only lowers it)."""
    what = f"source '{source_name}'"
    if max_size_bytes > DOCUMENT_BYTES.value:
        raise ValueError(
            f"{what}: chunking.max_size_bytes is {max_size_bytes:,}, but each chunk is stored as one document and "
            f"{DOCUMENT_BYTES.says()}: set it to {DOCUMENT_BYTES.value} or less"
        )
    if (size := _bytes(collection_name)) > COLLECTION_NAME_BYTES.value:
        raise ValueError(f"{what}: collection_name is {size:,} bytes; {COLLECTION_NAME_BYTES.says()}")


def _shown(key: str) -> str:
    return key if len(key) <= 48 else key[:45] + "..."


def record_problem(record: ChunkRecord) -> str | None:
    """The first quota one record breaks, in words (its id, the limit and the value), or None. Keys are
    counted as Chroma Cloud will store them: the sync's own included, with the text hash the write adds."""
    chunk = f"chunk {record.metadata.get('chunk_index', record.chunk_id)}"
    if (size := _bytes(record.chunk_id)) > ID_BYTES.value:
        return f"{chunk}'s id is {size:,} bytes; {ID_BYTES.says()}"
    if (size := _bytes(record.text)) > DOCUMENT_BYTES.value:
        return f"{chunk} is {size:,} bytes of text; {DOCUMENT_BYTES.says()}: lower chunking.max_size_bytes"
    names = set(record.metadata) | {TEXT_HASH}
    if len(names) > METADATA_KEYS.value:
        own = len(names & OWN_KEYS)
        return (
            f"{chunk} would carry {len(names)} metadata keys ({len(names) - own} of the object's own metadata and "
            f"{own} the sync writes); {METADATA_KEYS.says()}, so at most {METADATA_KEYS.value - own} of its own fit"
        )
    for key, value in record.metadata.items():
        if (size := _bytes(key)) > KEY_BYTES.value:
            return f"metadata key '{_shown(key)}' is {size:,} bytes; {KEY_BYTES.says()}"
        if (size := value_bytes(value)) > VALUE_BYTES.value:
            return f"metadata '{_shown(key)}' is {size:,} bytes; {VALUE_BYTES.says()}"
    return None


def check_records(records: Sequence[ChunkRecord], what: str) -> None:
    """Before anything of an object is written to Chroma Cloud: raise, naming the object (`what`), the first
    record that breaks a quota, the limit and the value; nothing of the object is written."""
    for record in records:
        problem = record_problem(record)
        if problem is not None:
            raise ValueError(f"{what}: {problem}; nothing of it was written")
