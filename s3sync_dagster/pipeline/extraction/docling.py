"""docling, offline: one converter per process and settings, and a document converted to markdown page by page."""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath
from typing import Any

from s3sync_dagster.pipeline.extraction.conversion import Converted, DocumentOptions, join_pages, too_many_pages
from s3sync_dagster.pipeline.extraction.extract import ExtractionError
from s3sync_dagster.pipeline.extraction.ocr import fill_pages_without_text


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


def convert_with_docling(
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
        raise ExtractionError(too_many_pages(object_key, len(page_numbers), options.max_pages))
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
        page_texts, more = fill_pages_without_text(object_key, data, page_texts, options)
        warnings.extend(more)
        if any("tesseract" in w for w in more):
            extractor += "+tesseract"
    markdown, starts = join_pages(page_texts)
    return Converted(markdown, extractor, label, starts, warnings)


def _short(error: object) -> str:
    text = " ".join(str(error).split())
    return text[:300] + ("..." if len(text) > 300 else "")
