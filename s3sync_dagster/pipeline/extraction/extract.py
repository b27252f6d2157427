"""Object bytes + file name -> text: UTF-8 text files here; documents (PDF, Office, ...) go to a document extractor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

# Chroma Sync's document formats (by suffix): converted to markdown, never read as UTF-8 text.
# HTML and CSV are UTF-8 but are converted too, so tables and headings survive as markdown.
DOCUMENT_SUFFIXES = frozenset(
    {
        ".pdf",
        ".doc", ".docx", ".odt",
        ".xls", ".xlsx", ".xlsm", ".xltx", ".ods",
        ".ppt", ".pptx", ".odp",
        ".epub",
        ".png", ".jpg", ".jpeg", ".webp", ".gif", ".tiff", ".tif",
    }
)  # fmt: skip
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdx"})


class ExtractionError(ValueError):
    """The object's content breaks a rule; the message names the object and the rule."""


@dataclass(frozen=True)
class Extracted:
    text: str
    markdown: bool  # chunk with the markdown chunker whatever the suffix
    extractor: str  # which path produced the text, for the run's metadata
    page_label: str = "page"  # what a page is called in this format: page, slide or sheet
    page_starts: tuple[tuple[int, int], ...] = ()  # (1-based line, page number) where each page begins
    warnings: tuple[str, ...] = ()


def suffix_of(object_key: str) -> str:
    return PurePosixPath(object_key).suffix.lower()


def decode_utf8(object_key: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ExtractionError(
            f"object '{object_key}' is not UTF-8 text "
            f"(byte 0x{data[error.start]:02x} at offset {error.start}: {error.reason})"
        ) from None
    # A byte order mark is an encoding artefact, not text to embed.
    return text.removeprefix("\ufeff")


def extract_text(object_key: str, data: bytes) -> Extracted:
    """The UTF-8 text path; documents go through `documents.convert_document` instead."""
    return Extracted(
        text=decode_utf8(object_key, data),
        markdown=suffix_of(object_key) in MARKDOWN_SUFFIXES,
        extractor="utf-8",
    )
