"""Tesseract OCR of images and of PDF pages with no text layer, and what PDFium reads of a PDF's pages."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

from s3sync_dagster.pipeline.extraction.conversion import Converted, DocumentOptions, join_pages, too_many_pages
from s3sync_dagster.pipeline.extraction.extract import ExtractionError


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


def convert_image(object_key: str, data: bytes, options: DocumentOptions) -> Converted:
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
        raise ExtractionError(too_many_pages(object_key, frames, options.max_pages))
    if not options.ocr or shutil.which("tesseract") is None:
        return Converted(
            "",
            "none",
            warnings=[f"object '{object_key}': no OCR engine available (install tesseract): nothing indexed"],
        )
    texts = [(number, _tesseract(png, options.timeout_s)) for number, png in pages]
    markdown, starts = join_pages([(number, text.strip()) for number, text in texts])
    converted = Converted(markdown, "tesseract", page_starts=starts if frames > 1 else [])
    if not markdown:
        converted.warnings.append(f"object '{object_key}': no text found in the image: nothing indexed")
    return converted


_EMPTY_PAGE_TREE = re.compile(rb"/Type\s*/Pages\b[^>]*?/Count\s+0\b|/Count\s+0\b[^>]*?/Type\s*/Pages\b")
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def pdf_page_count(object_key: str, data: bytes) -> int:
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


def fill_pages_without_text(
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
