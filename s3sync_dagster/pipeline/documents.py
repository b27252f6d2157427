"""Documents (PDF, Office, OpenDocument, HTML, EPUB, images) -> markdown with page marks, offline.

docling converts every document format it can without a network; images, and PDF pages with no
text layer, are read by Tesseract. Conversion runs in worker processes with a time limit per file,
each worker keeping one converter, so a batch of documents uses every core and a file that hangs
costs only its own key. Nothing here imports docling or torch until a document is met.
"""

from __future__ import annotations

import atexit
import io
import os
import re
import shutil
import subprocess
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from s3sync_dagster.pipeline.extract import DOCUMENT_SUFFIXES, Extracted, ExtractionError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".tiff", ".tif"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
CONVERTED_SUFFIXES = DOCUMENT_SUFFIXES | HTML_SUFFIXES | {".csv"}
DEFAULT_MAX_PAGES = 7000  # Chroma Sync's limit per document
DEFAULT_TIMEOUT_S = 300.0

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


@dataclass(frozen=True)
class DocumentOptions:
    """How documents are converted; plain values so they cross into worker processes."""

    max_pages: int = DEFAULT_MAX_PAGES
    timeout_s: float = DEFAULT_TIMEOUT_S
    # docling model weights for the full PDF layout pipeline (tables, headings); None: look in the
    # Hugging Face cache, and use the model-free native pipeline when they are not there.
    artifacts_path: str | None = None
    ocr: bool = True


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


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def layout_models_available(options: DocumentOptions) -> bool:
    """Whether docling's PDF layout model is on this machine (never fetched: we are offline).

    It needs docling's model runtime (`docling-slim[models-local]`, not installed by default) and
    its weights, in `artifacts_path` or the Hugging Face cache.
    """
    import importlib.util

    if importlib.util.find_spec("docling_ibm_models") is None:
        return False
    if options.artifacts_path:
        return Path(options.artifacts_path).is_dir()
    hub = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    )
    return any(hub.glob("models--docling-project--docling-layout*")) or any(hub.glob("models--ds4sd--docling-models"))


_converters: dict[tuple[DocumentOptions, bool], Any] = {}


def _converter(options: DocumentOptions, layout: bool) -> Any:
    """One docling converter per process and settings: building one loads backends (and models)."""
    key = (options, layout)
    if key not in _converters:
        _offline()
        from docling.datamodel.base_models import InputFormat
        from docling.datamodel.pipeline_options import NativePdfPipelineOptions, PdfPipelineOptions
        from docling.document_converter import DocumentConverter, NativePdfFormatOption, PdfFormatOption

        if layout:
            pdf_options = PdfPipelineOptions(artifacts_path=options.artifacts_path, do_ocr=False)
            pdf_format = PdfFormatOption(pipeline_options=pdf_options)
        else:
            pdf_format = NativePdfFormatOption(pipeline_options=NativePdfPipelineOptions())
        _converters[key] = DocumentConverter(format_options={InputFormat.PDF: pdf_format})
    return _converters[key]


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


def _join_pages(pages: list[tuple[int, str]]) -> tuple[str, list[tuple[int, int]]]:
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


def _tesseract(image_png: bytes, timeout_s: float) -> str:
    if shutil.which("tesseract") is None:
        raise FileNotFoundError("tesseract")
    done = subprocess.run(
        ["tesseract", "stdin", "stdout", "-l", "eng"],
        input=image_png,
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or "tesseract failed")
    return done.stdout.decode("utf-8", "replace")


def _convert_image(object_key: str, data: bytes, options: DocumentOptions) -> Converted:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = getattr(image, "n_frames", 1)
            pages = []
            for frame in range(min(frames, options.max_pages + 1)):
                image.seek(frame)
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="PNG")
                pages.append((frame + 1, buffer.getvalue()))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ExtractionError(f"object '{object_key}' is not a readable image ({error})") from None
    if len(pages) > options.max_pages:
        raise ExtractionError(_too_many_pages(object_key, frames, options.max_pages))
    if not options.ocr or shutil.which("tesseract") is None:
        return Converted(
            "",
            "none",
            warnings=[f"object '{object_key}': no OCR engine available (install tesseract): nothing indexed"],
        )
    texts = [(number, _tesseract(png, options.timeout_s)) for number, png in pages]
    markdown, starts = _join_pages([(number, text.strip()) for number, text in texts])
    converted = Converted(markdown, "tesseract", page_starts=starts if frames > 1 else [])
    if not markdown:
        converted.warnings.append(f"object '{object_key}': no text found in the image: nothing indexed")
    return converted


def _too_many_pages(object_key: str, pages: int, limit: int) -> str:
    return f"object '{object_key}' has {pages:,} pages, over the limit of {limit:,} pages per document (max_document_pages)"


_EMPTY_PAGE_TREE = re.compile(rb"/Type\s*/Pages\b[^>]*?/Count\s+0\b|/Count\s+0\b[^>]*?/Type\s*/Pages\b")
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def _pdf_page_count(object_key: str, data: bytes) -> int:
    import pypdfium2

    try:
        document = pypdfium2.PdfDocument(data)
    except pypdfium2.PdfiumError as error:
        if _EMPTY_PAGE_TREE.search(data) and not _PAGE_OBJECT.search(data):
            return 0  # PDFium opens no document whose page tree is empty (its error code is not reliable)
        if "password" in str(error).lower():
            raise ExtractionError(f"object '{object_key}' is a password-protected PDF: it cannot be read") from None
        raise ExtractionError(f"object '{object_key}' is not a readable PDF ({error})") from None
    try:
        return len(document)
    finally:
        document.close()


def _ocr_pdf_pages(data: bytes, page_numbers: list[int], timeout_s: float) -> dict[int, str]:
    import pypdfium2

    document = pypdfium2.PdfDocument(data)
    try:
        texts = {}
        for number in page_numbers:
            bitmap = document[number - 1].render(scale=300 / 72)
            buffer = io.BytesIO()
            bitmap.to_pil().save(buffer, format="PNG")
            texts[number] = _tesseract(buffer.getvalue(), timeout_s).strip()
        return texts
    finally:
        document.close()


def convert_document(object_key: str, data: bytes, options: DocumentOptions) -> Converted:
    """Convert one document in this process. Raises ExtractionError naming the object and the rule."""
    suffix = PurePosixPath(object_key).suffix.lower()
    check_content(object_key, data)
    if suffix in IMAGE_SUFFIXES:
        return _convert_image(object_key, data, options)
    layout = False
    warnings: list[str] = []
    if suffix == ".pdf":
        pages = _pdf_page_count(object_key, data)
        if pages == 0:
            return Converted("", "none", warnings=[f"object '{object_key}': the PDF has no pages: nothing indexed"])
        if pages > options.max_pages:
            raise ExtractionError(_too_many_pages(object_key, pages, options.max_pages))
        layout = layout_models_available(options)
        if not layout:
            warnings.append(
                f"object '{object_key}': docling's PDF layout model is not installed here; used the model-free "
                "native pipeline (text only: no table structure or headings)"
            )
    # Valid HTML can nest deeper than docling's recursive walk goes (it fails past ~500 levels, and takes
    # 47 s to fail at 10,000): such a page is indexed by its text, without structure.
    too_deep = suffix in HTML_SUFFIXES and _html_depth(data) > HTML_MAX_DEPTH
    if not too_deep:
        try:
            return _convert_with_docling(object_key, data, options, suffix, layout, warnings)
        except RecursionError:
            if suffix not in HTML_SUFFIXES:
                raise ExtractionError(
                    f"object '{object_key}' is nested too deeply to be read as a {suffix} document"
                ) from None
    warnings.append(f"object '{object_key}': HTML nested too deeply for docling; indexed its text without structure")
    return Converted(html_text(data), "html:text", warnings=warnings)


HTML_MAX_DEPTH = 256  # elements inside elements; docling converted 300 in 0.5 s here and failed at 600
_HTML_TAG = re.compile(rb"<(/?)([a-zA-Z][a-zA-Z0-9]*)")
# Void elements, and those HTML closes implicitly (often written without an end tag): no depth of their own.
_HTML_FLAT = frozenset(
    b"area base br col embed hr img input link meta source track wbr p li dt dd tr td th option".split()
)


def _html_depth(data: bytes) -> int:
    """How deep elements nest, from the tags alone (a regular expression over the bytes: fast, no tree)."""
    depth = deepest = 0
    for match in _HTML_TAG.finditer(data):
        if match.group(2).lower() in _HTML_FLAT:
            continue
        if match.group(1):
            depth = max(0, depth - 1)
        else:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


def html_text(data: bytes) -> str:
    """The text of an HTML page, a line per block, by a streaming parser: no depth limit, no recursion."""
    from html.parser import HTMLParser

    class _Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []
            self._skipped = 0  # inside <script> or <style>

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag in ("script", "style"):
                self._skipped += 1
            if tag in _HTML_BLOCKS:
                self.parts.append("\n")

        def handle_endtag(self, tag: str) -> None:
            if tag in ("script", "style") and self._skipped:
                self._skipped -= 1
            if tag in _HTML_BLOCKS:
                self.parts.append("\n")

        def handle_data(self, text: str) -> None:
            if not self._skipped:
                self.parts.append(text)

    parser = _Text()
    parser.feed(data.decode("utf-8", "replace"))
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line) + "\n"


_HTML_BLOCKS = frozenset(
    [
        "p",
        "div",
        "br",
        "li",
        "ul",
        "ol",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "tr",
        "table",
        "section",
        "article",
        "header",
        "footer",
        "pre",
        "blockquote",
        "dt",
        "dd",
    ]
)


def _convert_with_docling(
    object_key: str, data: bytes, options: DocumentOptions, suffix: str, layout: bool, warnings: list[str]
) -> Converted:
    from docling.datamodel.base_models import ConversionStatus, DocumentStream

    try:
        result = _converter(options, layout).convert(
            DocumentStream(name=PurePosixPath(object_key).name, stream=io.BytesIO(data)),
            raises_on_error=False,
            max_num_pages=options.max_pages,
        )
    except RecursionError:
        raise
    except Exception as error:  # docling raises many types for unreadable input
        raise ExtractionError(
            f"object '{object_key}' could not be read as a {suffix} document ({_short(error)})"
        ) from None
    if result.status not in (ConversionStatus.SUCCESS, ConversionStatus.PARTIAL_SUCCESS):
        reasons = "; ".join(_short(e.error_message) for e in result.errors) or result.status.value
        if "maximum recursion depth" in reasons:
            raise RecursionError(reasons)
        raise ExtractionError(f"object '{object_key}' could not be read as a {suffix} document ({reasons})")
    document = result.document
    extractor = f"docling:{'pdf-layout' if layout else 'pdf-native'}" if suffix == ".pdf" else f"docling:{suffix[1:]}"
    page_numbers = sorted(document.pages) if document.pages else []
    if len(page_numbers) > options.max_pages:
        raise ExtractionError(_too_many_pages(object_key, len(page_numbers), options.max_pages))
    label = {".pptx": "slide", ".ppt": "slide", ".odp": "slide", ".xlsx": "sheet", ".xlsm": "sheet",
             ".xltx": "sheet", ".xls": "sheet", ".ods": "sheet"}.get(suffix, "page")  # fmt: skip
    if len(page_numbers) <= 1 and suffix != ".pdf":
        # One page (a one-sheet workbook, ...): the whole export, which some backends fill better than
        # a page-scoped one, still marked as that page.
        markdown = document.export_to_markdown(image_placeholder="")
        starts = [(1, page_numbers[0])] if page_numbers and markdown.strip() else []
        return Converted(markdown, extractor, label, starts, warnings)
    # Pictures carry no text here; a placeholder per picture would only add noise to the vectors.
    page_texts = [
        (number, document.export_to_markdown(page_no=number, image_placeholder="")) for number in page_numbers
    ]
    if suffix == ".pdf":
        page_texts, more = _fill_pages_without_text(object_key, data, page_texts, options)
        warnings.extend(more)
        if any("tesseract" in w for w in more):
            extractor += "+tesseract"
    markdown, starts = _join_pages(page_texts)
    return Converted(markdown, extractor, label, starts, warnings)


def _pages_without_text(data: bytes) -> list[int]:
    """Page numbers whose text layer is empty (scanned pages), read from the PDF itself."""
    import pypdfium2

    document = pypdfium2.PdfDocument(data)
    try:
        blank = []
        for index in range(len(document)):
            text_page = document[index].get_textpage()
            if not text_page.get_text_range().strip():
                blank.append(index + 1)
        return blank
    finally:
        document.close()


def _fill_pages_without_text(
    object_key: str, data: bytes, page_texts: list[tuple[int, str]], options: DocumentOptions
) -> tuple[list[tuple[int, str]], list[str]]:
    """Scanned pages have no text layer: OCR them where Tesseract is available, else say so."""
    blank = _pages_without_text(data)
    if not blank:
        return page_texts, []
    shown = ", ".join(map(str, blank[:10])) + (" ..." if len(blank) > 10 else "")
    if not options.ocr or shutil.which("tesseract") is None:
        return page_texts, [f"object '{object_key}': page(s) {shown} have no text layer and no OCR engine is available"]
    ocr = _ocr_pdf_pages(data, blank, options.timeout_s)
    known = {number for number, _ in page_texts}
    filled = [(number, ocr.get(number, text)) for number, text in page_texts]
    filled += [(number, text) for number, text in ocr.items() if number not in known]
    return sorted(filled), [f"object '{object_key}': page(s) {shown} have no text layer: read with tesseract OCR"]


def _short(error: object) -> str:
    text = " ".join(str(error).split())
    return text[:300] + ("..." if len(text) > 300 else "")


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
