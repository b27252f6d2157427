"""Extraction: an object's bytes to text. UTF-8 text here; documents (PDF, Office, OpenDocument, HTML, EPUB,
images) converted to markdown with page marks by docling in a worker pool, OCR by Tesseract, deep HTML read without
docling. docling and torch load only when a document needs them.

May import: nothing of the engine.
"""

from __future__ import annotations

from s3sync_dagster.pipeline.extraction.conversion import DEFAULT_MAX_PAGES, Converted, DocumentOptions
from s3sync_dagster.pipeline.extraction.documents import (
    CONVERTED_SUFFIXES,
    IMAGE_SUFFIXES,
    DocumentPool,
    convert_document,
    is_converted,
    result_of,
)
from s3sync_dagster.pipeline.extraction.extract import Extracted, ExtractionError, extract_text

__all__ = [
    "CONVERTED_SUFFIXES",
    "DEFAULT_MAX_PAGES",
    "IMAGE_SUFFIXES",
    "Converted",
    "DocumentOptions",
    "DocumentPool",
    "Extracted",
    "ExtractionError",
    "convert_document",
    "extract_text",
    "is_converted",
    "result_of",
]
