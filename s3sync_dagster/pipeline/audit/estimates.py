"""What a plan's work would cost: each object's kind, the chunks it would make, the time to embed them on this
machine, and the same work's price on Chroma Sync, each figure with what it rests on (pipeline/audit/plan.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s3sync_dagster.pipeline.chunking import SUPPORTED_LANGUAGES
from s3sync_dagster.pipeline.extraction import CONVERTED_SUFFIXES, IMAGE_SUFFIXES
from s3sync_dagster.pipeline.s3 import META_SUFFIX

if TYPE_CHECKING:
    import pandas as pd

    from s3sync_dagster.pipeline.spec import SourceSpec

# How a sync would read an object, by its name: converted to markdown (pipeline/extraction/documents.py), chunked as code
# (a tree-sitter grammar, pipeline/chunking/grammars.py), a .meta.json file (it names a document; no chunks of its own),
# or read as UTF-8 text (everything else, markdown included).
KINDS = ("text", "code", "document", "metadata")
_CODE_SUFFIXES = frozenset(suffix for suffix, language in SUPPORTED_LANGUAGES.items() if language != "markdown")

# Formats that are neither UTF-8 text nor a document format: a sync reads them as text and fails them ("not
# UTF-8 text"), so the plan refuses them by name. Any other name is planned as text (its bytes decide at sync).
UNSUPPORTED_SUFFIXES = frozenset(
    {
        ".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".tar", ".jar", ".war", ".whl",
        ".exe", ".dll", ".so", ".dylib", ".bin", ".o", ".a", ".class", ".pyc", ".wasm",
        ".mp3", ".mp4", ".m4a", ".mov", ".avi", ".mkv", ".wav", ".flac", ".ogg", ".webm",
        ".bmp", ".ico", ".heic", ".psd", ".woff", ".woff2", ".ttf", ".otf", ".eot",
        ".parquet", ".avro", ".orc", ".npy", ".npz", ".pkl", ".pickle", ".h5", ".hdf5",
        ".onnx", ".pt", ".safetensors", ".sqlite", ".db", ".dmg", ".iso",
    }
)  # fmt: skip

# Bytes of object per chunk where the collection has no chunks of that kind to measure: text and code fill a chunk
# to the chunker's line limit at about 50 bytes a line (capped by its byte limit); a document's file holds about
# 8,000 bytes per chunk of the markdown it converts to (layout, fonts and images take most of a PDF or an Office
# file). A rough default, said as such in the plan.
LINE_BYTES = 50
DOCUMENT_BYTES_PER_CHUNK = 8000

# Chroma Sync's published prices: $0.01 per page of a converted document (shared/reference/chroma-s3-sync.md,
# "Document Types": "incur a $0.01/page extraction fee"), and $0.04 per GiB of data synced (issue 52's figure;
# the reference page states no per-GiB price), applied to the bytes of the objects a sync would read.
PRICE_PER_GIB = 0.04
PRICE_PER_PAGE = 0.01
GIB = 1024**3
# Pages of a converted document, estimated from its size: an image is one page; any other document one page per
# 100 KB of file (at least one). Chroma Sync counts the pages it converts; a listing holds no page count.
PAGE_BYTES = 100_000

# The embedding rate is measured at plan time on these texts: fixed, about 400 bytes each, as chunks are.
SAMPLE_TEXTS = tuple(
    f"Sample {n}: the quarterly report lists {n * 7} axolotls, {n + 3} capybaras and a pond cleaned on Mondays. "
    "Each section of the document is a few lines of plain prose, numbers and names, as most chunks are. "
    "The embedding time of a chunk follows its tokens, so the sample is sized like the chunks a sync writes. "
    "def handler(event): return [record['s3']['object']['key'] for record in event['Records']]"
    for n in range(32)
)


def kinds(object_keys: pd.Series) -> pd.Series:
    """Each key's kind (KINDS), by its name's suffix, for a column of keys at once (a plain loop: a million keys
    in about a second, where pandas' string methods take several)."""
    import pandas as pd

    found = ["metadata" if key.endswith(META_SUFFIX) else _kind_of_suffix(suffix_of(key)) for key in object_keys]
    return pd.Series(found, index=object_keys.index, dtype="object")


def suffix_of(object_key: str) -> str:
    """The key's suffix, lower case with its dot ('' for none), as PurePosixPath(object_key).suffix reads it."""
    name = object_key.rpartition("/")[2]
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def suffixes_of(object_keys: pd.Series) -> pd.Series:
    """Each key's suffix (suffix_of), for a column of keys."""
    import pandas as pd

    return pd.Series([suffix_of(key) for key in object_keys], index=object_keys.index, dtype="object")


def _kind_of_suffix(suffix: str) -> str:
    if suffix in CONVERTED_SUFFIXES:
        return "document"
    return "code" if suffix in _CODE_SUFFIXES else "text"


@dataclass(frozen=True)
class ChunkRate:
    """Bytes of object per chunk for one kind, and whence: measured on the collection's objects, or the default."""

    bytes_per_chunk: float
    basis: str


def chunk_rates(unchanged: pd.DataFrame, target: SourceSpec) -> dict[str, ChunkRate]:
    """Bytes per chunk by kind: measured on the objects indexed at their listed ETag (`unchanged`: kind, size,
    chunks), else the default of that kind."""
    rates: dict[str, ChunkRate] = {}
    measured = unchanged[unchanged["chunks"] > 0].groupby("kind")[["size", "chunks"]].sum()
    counted = unchanged[unchanged["chunks"] > 0].groupby("kind").size()
    text_default = min(target.max_size_bytes, target.max_lines * LINE_BYTES)
    defaults = {"text": text_default, "code": text_default, "document": DOCUMENT_BYTES_PER_CHUNK}
    for kind, default in defaults.items():
        if kind in measured.index and int(measured.loc[kind, "chunks"]) > 0:
            size, chunks = int(measured.loc[kind, "size"]), int(measured.loc[kind, "chunks"])
            rates[kind] = ChunkRate(
                size / chunks,
                f"measured: {int(counted[kind]):,} indexed object(s), {size:,} bytes in {chunks:,} chunk(s)",
            )
        else:
            rates[kind] = ChunkRate(float(default), "default (none of this kind indexed to measure)")
    return rates


def estimate_chunks(by_kind: Mapping[str, Mapping[str, int]], rates: Mapping[str, ChunkRate]) -> dict[str, int]:
    """Chunks by kind for the work's objects and bytes: bytes over the kind's bytes per chunk, at least one chunk
    per object; metadata files make none of their own."""
    estimate = {}
    for kind, totals in by_kind.items():
        if kind == "metadata" or not totals["objects"]:
            continue
        rate = rates[kind].bytes_per_chunk
        estimate[kind] = max(totals["objects"], math.ceil(totals["bytes"] / rate)) if rate > 0 else totals["objects"]
    return estimate


@dataclass(frozen=True)
class EmbeddingRate:
    """Chunks this machine embeds per second with the source's function, and how that was learned."""

    chunks_per_second: float
    basis: str


def measure_rate(
    embed: Callable[[list[str]], Any], function: str, texts: Sequence[str] = SAMPLE_TEXTS
) -> EmbeddingRate:
    """Time the embedding function on the fixed sample, after one text that loads the model (not counted)."""
    embed([texts[0]])
    started = time.perf_counter()
    embed(list(texts))
    seconds = max(time.perf_counter() - started, 1e-9)
    size = sum(len(text.encode()) for text in texts) // len(texts)
    return EmbeddingRate(
        len(texts) / seconds,
        f"measured at plan time: {len(texts)} fixed texts of about {size} bytes through {function} in "
        f"{seconds:.2f} s on this machine (the model's load not counted)",
    )


def pages(documents: pd.DataFrame) -> int:
    """Estimated pages of the converted documents among the work (object_key, size): see PAGE_BYTES."""
    if documents.empty:
        return 0
    images = suffixes_of(documents["object_key"]).isin(IMAGE_SUFFIXES)
    others = documents.loc[~images, "size"]
    return int(images.sum()) + int(((others + PAGE_BYTES - 1) // PAGE_BYTES).clip(lower=1).sum())


def chroma_sync_cost(work_bytes: int, document_pages: int) -> dict[str, Any]:
    """The same work at Chroma Sync's prices, each part and the terms it applies."""
    gib = work_bytes / GIB
    data = gib * PRICE_PER_GIB
    extraction = document_pages * PRICE_PER_PAGE
    return {
        "gib": round(gib, 6),
        "pages": document_pages,
        "data_usd": round(data, 4),
        "pages_usd": round(extraction, 2),
        "total_usd": round(data + extraction, 2),
        "terms": (
            f"${PRICE_PER_GIB} per GiB of the objects synced (issue 52's figure) and ${PRICE_PER_PAGE} per page of "
            "a converted document (Chroma's S3 Sync page); pages estimated: an image 1, any other document 1 per "
            f"{PAGE_BYTES:,} bytes of file"
        ),
    }
