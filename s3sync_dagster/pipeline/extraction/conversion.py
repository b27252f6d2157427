"""What converting a document takes and gives: the options, and the markdown with page marks it yields."""

from __future__ import annotations

from dataclasses import dataclass, field

from s3sync_dagster.pipeline.extraction.extract import Extracted

DEFAULT_MAX_PAGES = 7000  # Chroma Sync's limit per document
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class DocumentOptions:
    """How documents are converted; plain values so they cross into worker processes."""

    max_pages: int = DEFAULT_MAX_PAGES
    timeout_s: float = DEFAULT_TIMEOUT_S
    # docling model weights for the full PDF layout pipeline (tables, headings); None: look in the
    # Hugging Face cache, and use the model-free native pipeline when they are not there.
    artifacts_path: str | None = None
    ocr: bool = True


@dataclass
class Converted:
    """A document as markdown, with where each page (slide, sheet) starts."""

    markdown: str
    extractor: str
    page_label: str = "page"
    page_starts: list[tuple[int, int]] = field(default_factory=list)  # (1-based line, page number)
    warnings: list[str] = field(default_factory=list)

    def to_extracted(self) -> Extracted:
        return Extracted(
            text=self.markdown,
            markdown=True,
            extractor=self.extractor,
            page_label=self.page_label,
            page_starts=tuple(self.page_starts),
            warnings=tuple(self.warnings),
        )


def join_pages(pages: list[tuple[int, str]]) -> tuple[str, list[tuple[int, int]]]:
    parts: list[str] = []
    starts: list[tuple[int, int]] = []
    line = 1
    for number, markdown in pages:
        text = markdown.strip("\n")
        if not text:
            continue
        if parts:
            parts.append("\n\n")
            line += 2
        starts.append((line, number))
        parts.append(text)
        line += text.count("\n")
    body = "".join(parts)
    return (body + "\n" if body else ""), starts


def too_many_pages(object_key: str, pages: int, limit: int) -> str:
    return f"object '{object_key}' has {pages:,} pages, over the limit of {limit:,} pages per document (max_document_pages)"
