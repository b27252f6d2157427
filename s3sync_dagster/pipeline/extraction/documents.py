"""Documents (PDF, Office, OpenDocument, HTML, EPUB, images) -> markdown with page marks, offline.

docling converts every document format it can without a network; images, and PDF pages with no
text layer, are read by Tesseract. Conversion runs in worker processes with a time limit per file,
each worker keeping one converter, so a batch of documents uses every core and a file that hangs
costs only its own key. Nothing here imports docling or torch until a document is met.

This module is the entry: content checks, which converter reads a file, and the worker pool. The
options and the result are in ``conversion``, docling in ``docling_convert``, Tesseract and PDFium
in ``ocr``, and the text of HTML too deep for docling in ``html_text``.
"""

from __future__ import annotations

import atexit
import os
import threading
from concurrent.futures import Future
from pathlib import PurePosixPath
from typing import Any

from s3sync_dagster.pipeline.extraction.conversion import Converted, DocumentOptions, too_many_pages
from s3sync_dagster.pipeline.extraction.docling import convert_with_docling, layout_models_available
from s3sync_dagster.pipeline.extraction.extract import DOCUMENT_SUFFIXES, Extracted, ExtractionError
from s3sync_dagster.pipeline.extraction.html_text import HTML_MAX_DEPTH, html_depth, html_text
from s3sync_dagster.pipeline.extraction.ocr import convert_image, pdf_page_count

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".tiff", ".tif"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
CONVERTED_SUFFIXES = DOCUMENT_SUFFIXES | HTML_SUFFIXES | {".csv"}

# What a file of each suffix must start with: a PNG named .docx fails with a reason, not deep in a parser.
_ZIP = (b"PK\x03\x04",)
_OLE = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",)
_MAGIC: dict[str, tuple[bytes, ...]] = {
    **dict.fromkeys((".docx", ".xlsx", ".xlsm", ".xltx", ".pptx", ".odt", ".ods", ".odp", ".epub"), _ZIP),
    **dict.fromkeys((".doc", ".xls", ".ppt"), _OLE),
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".gif": (b"GIF87a", b"GIF89a"),
    ".tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),  # classic and BigTIFF
    ".tif": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}
_KNOWN_CONTENT = [
    (b"%PDF", "PDF"),
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"PK\x03\x04", "ZIP"),
    (b"\xd0\xcf\x11\xe0", "OLE (legacy Office)"),
]


def is_converted(object_key: str) -> bool:
    return PurePosixPath(object_key).suffix.lower() in CONVERTED_SUFFIXES


def _describe_content(data: bytes) -> str:
    head = data[:1024]
    for magic, name in _KNOWN_CONTENT:
        if head.startswith(magic) or (name == "PDF" and magic in head):
            return f"looks like {name}"
    return "is not in that format"


def check_content(object_key: str, data: bytes) -> None:
    """Refuse a mislabelled file before any parser sees it."""
    suffix = PurePosixPath(object_key).suffix.lower()
    if not data:
        return
    expected = _MAGIC.get(suffix)
    mislabelled = (expected is not None and not data.startswith(expected)) or (
        suffix == ".pdf" and b"%PDF" not in data[:1024]
    )
    if suffix == ".webp" and not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        mislabelled = True
    if mislabelled and data.startswith(_OLE) and "EncryptedPackage".encode("utf-16-le") in data[:65536]:
        # Office keeps a password-protected .docx/.xlsx/.pptx in an encrypted OLE container.
        raise ExtractionError(f"object '{object_key}' is a password-protected {suffix} document: it cannot be read")
    if mislabelled:
        raise ExtractionError(f"object '{object_key}' is not a {suffix} file: its content {_describe_content(data)}")


# --- conversion, inside a worker process ------------------------------------------------------


def convert_document(object_key: str, data: bytes, options: DocumentOptions) -> Converted:
    """Convert one document in this process. Raises ExtractionError naming the object and the rule."""
    suffix = PurePosixPath(object_key).suffix.lower()
    check_content(object_key, data)
    if suffix in IMAGE_SUFFIXES:
        return convert_image(object_key, data, options)
    layout = False
    warnings: list[str] = []
    if suffix == ".pdf":
        pages = pdf_page_count(object_key, data)
        if pages == 0:
            return Converted("", "none", warnings=[f"object '{object_key}': the PDF has no pages: nothing indexed"])
        if pages > options.max_pages:
            raise ExtractionError(too_many_pages(object_key, pages, options.max_pages))
        layout = layout_models_available(options)
        if not layout:
            warnings.append(
                f"object '{object_key}': docling's PDF layout model is not installed here; used the model-free "
                "native pipeline (text only: no table structure or headings)"
            )
    # Valid HTML can nest deeper than docling's recursive walk goes (it fails past ~500 levels, and takes
    # 47 s to fail at 10,000): such a page is indexed by its text, without structure.
    too_deep = suffix in HTML_SUFFIXES and html_depth(data) > HTML_MAX_DEPTH
    if not too_deep:
        try:
            return convert_with_docling(object_key, data, options, suffix, layout, warnings)
        except RecursionError:
            if suffix not in HTML_SUFFIXES:
                raise ExtractionError(
                    f"object '{object_key}' is nested too deeply to be read as a {suffix} document"
                ) from None
    warnings.append(f"object '{object_key}': HTML nested too deeply for docling; indexed its text without structure")
    return Converted(html_text(data), "html:text", warnings=warnings)


# --- the worker pool --------------------------------------------------------------------------


class DocumentPool:
    """Worker processes that convert documents, each with a time limit; a worker that overruns is killed."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or min(2, os.cpu_count() or 1))
        self._pool: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._pool is None:
                import multiprocessing

                from pebble import ProcessPool

                # Fresh interpreters: the run process has Chroma's threads and maybe torch loaded.
                self._pool = ProcessPool(max_workers=self.workers, context=multiprocessing.get_context("spawn"))
            return self._pool

    def submit(self, object_key: str, data: bytes, options: DocumentOptions) -> Future[Converted]:
        return self._get().schedule(convert_document, args=(object_key, data, options), timeout=options.timeout_s)  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.stop()
                self._pool.join()
                self._pool = None

    @classmethod
    def shared(cls, workers: int | None = None) -> DocumentPool:
        """One pool per process and size, kept for the process's life: the runs of `s3sync sync` in one
        process share warm workers instead of each paying docling's import again (seconds per worker)."""
        with _shared_lock:
            pool = _shared_pools.get(workers)
            if pool is None:
                pool = _shared_pools[workers] = cls(workers)
                if len(_shared_pools) == 1:
                    atexit.register(_close_shared)
            return pool


_shared_pools: dict[int | None, DocumentPool] = {}
_shared_lock = threading.Lock()


def _close_shared() -> None:
    for pool in list(_shared_pools.values()):
        pool.close()


def result_of(object_key: str, future: Future[Converted], options: DocumentOptions) -> Extracted:
    """Wait for a conversion, turning a timeout or a dead worker into this object's own error."""
    from concurrent.futures import TimeoutError as FutureTimeout
    from concurrent.futures.process import BrokenProcessPool

    from pebble import ProcessExpired

    try:
        return future.result().to_extracted()
    except FutureTimeout:
        raise ExtractionError(
            f"object '{object_key}': document extraction took longer than {options.timeout_s:g} s "
            "(documents.timeout_seconds) and was stopped"
        ) from None
    except (ProcessExpired, BrokenProcessPool) as error:
        raise ExtractionError(f"object '{object_key}': the extraction worker died ({error})") from None
