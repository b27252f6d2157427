"""Documents end to end: generated fixtures of every Chroma Sync format, through a moto server, docling
(and Tesseract) in worker processes, into Chroma; and every way a document can be bad."""

import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from s3sync_dagster.pipeline.extraction.conversion import DocumentOptions
from s3sync_dagster.pipeline.extraction.documents import IMAGE_SUFFIXES, DocumentPool, convert_document
from s3sync_dagster.pipeline.extraction.extract import DOCUMENT_SUFFIXES, ExtractionError
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync.reports import KeyReport
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster_tests import document_fixtures as fx
from s3sync_dagster_tests.conftest import put

pytestmark = pytest.mark.keeps_clients  # `synced` holds one client for the module

ALL_SUFFIXES = sorted(DOCUMENT_SUFFIXES | {".html", ".htm", ".csv"})


@pytest.fixture(scope="module")
def pool() -> Iterator[DocumentPool]:
    documents = DocumentPool(2)
    yield documents
    documents.close()


@pytest.fixture(scope="module")
def synced(s3: Any, tmp_path_factory: pytest.TempPathFactory, pool: DocumentPool) -> tuple[Any, dict[str, KeyReport]]:
    """Every format uploaded to one bucket and synced once, in one batch, through the worker pool."""
    import chromadb

    from s3sync_dagster.pipeline.embedding.chroma_functions import LazySentenceTransformer

    bucket = "s3sync-documents"
    s3.create_bucket(Bucket=bucket)
    fixtures = fx.all_documents()
    put(s3, bucket, {f"docs/report{suffix}": data for suffix, (data, _) in fixtures.items()})
    client = chromadb.PersistentClient(path=str(tmp_path_factory.mktemp("doc-chroma")))
    embed = LazySentenceTransformer()
    collection = client.get_or_create_collection("documents", embedding_function=embed)  # type: ignore[arg-type]
    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name="documents", path_prefix="docs/")
    reports = sync_keys(s3, spec, lambda _: collection, embed, [f"docs/report{s}" for s in fixtures], pool=pool)
    return collection, {report.object_key: report for report in reports}


def test_every_suffix_has_a_fixture() -> None:
    assert sorted(fx.all_documents()) == ALL_SUFFIXES


@pytest.mark.parametrize("suffix", ALL_SUFFIXES)
def test_format_end_to_end(synced: tuple[Any, dict[str, KeyReport]], suffix: str) -> None:
    collection, reports = synced
    object_key = f"docs/report{suffix}"
    report = reports[object_key]
    assert report.status == "indexed", report.message
    has_table, is_image = fx.all_documents()[suffix][1], suffix in IMAGE_SUFFIXES
    wanted = [fx.IMAGE_TEXT] if is_image else [fx.SENTENCE] + ([fx.CELL] if has_table else [])
    for text in wanted:
        found = collection.query(query_texts=[text], n_results=1, where={"object_key": object_key})
        document = found["documents"][0][0]
        assert " ".join(text.split()) in " ".join(document.split()), (suffix, text, document)
    assert report.extractor == (
        "tesseract" if is_image else f"docling:{'pdf-native' if suffix == '.pdf' else suffix[1:]}"
    )


def test_tables_come_out_as_markdown_tables(synced: tuple[Any, dict[str, KeyReport]]) -> None:
    collection, _ = synced
    for suffix in (".docx", ".xlsx", ".pptx", ".html", ".odt", ".csv"):
        chunks = collection.get(where={"object_key": f"docs/report{suffix}"})["documents"]
        assert any(re.search(rf"\|\s*widget\s*\|\s*{fx.CELL}\s*\|", chunk) for chunk in chunks), suffix


def test_pages_slides_and_sheets_are_in_chunk_metadata(synced: tuple[Any, dict[str, KeyReport]]) -> None:
    collection, reports = synced

    def pages_of(suffix: str, text: str) -> set[tuple[Any, Any]]:
        found = collection.get(where={"object_key": f"docs/report{suffix}"}, include=["documents", "metadatas"])
        return {
            (meta.get("page"), meta.get("slide") or meta.get("sheet"))
            for document, meta in zip(found["documents"], found["metadatas"], strict=True)
            if text in document
        }

    assert pages_of(".pdf", "gravitational lenses") == {(2, None)}
    assert pages_of(".pptx", fx.CELL) == {(2, 2)}
    assert pages_of(".xlsx", fx.SENTENCE) == {(2, 2)}
    assert reports["docs/report.pdf"].pages == 2
    # Each page is chunked on its own: no chunk mixes two pages, and together they cover the text.
    pdf = collection.get(where={"object_key": "docs/report.pdf"}, include=["documents", "metadatas"])
    assert sorted(meta["page"] for meta in pdf["metadatas"]) == [1, 2]


def test_pdf_without_layout_model_warns_not_fails(synced: tuple[Any, dict[str, KeyReport]]) -> None:
    _, reports = synced
    report = reports["docs/report.pdf"]
    assert report.status == "indexed"
    assert any("model-free native pipeline" in warning for warning in report.warnings)


BAD = {
    "bad/truncated.docx": (lambda: fx.docx_bytes()[:600], r"could not be read as a \.docx document"),
    "bad/png-inside.docx": (lambda: fx.image_bytes("PNG"), r"is not a \.docx file: its content looks like PNG"),
    "bad/locked.pdf": (lambda: fx.pdf_bytes(password="s3cret"), r"password-protected PDF"),
    "bad/garbage.pdf": (lambda: b"%PDF-1.7\n" + b"\x00garbage" * 50, r"not a readable PDF"),
    "bad/long.pdf": (
        lambda: fx.pdf_bytes(pages=3),
        r"has 3 pages, over the limit of 2 pages per document \(max_document_pages\)",
    ),
    "bad/broken.png": (lambda: fx.image_bytes("PNG")[:40], r"not a readable image"),
    "bad/text.xlsx": (lambda: b"just text", r"is not a \.xlsx file"),
}


def test_bad_documents_fail_only_their_own_key(
    s3: Any, bucket: str, chroma_client: Any, embedder: Any, pool: DocumentPool
) -> None:
    good = {"bad/good.docx": fx.docx_bytes(), "bad/blank.png": fx.image_bytes("PNG", text=None)}
    put(s3, bucket, {**{key: make() for key, (make, _) in BAD.items()}, **good})
    collection = chroma_client.get_or_create_collection("bad-docs")
    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name="bad-docs", path_prefix="bad/")
    spec = SourceSpec(**{**spec.__dict__, "document_options": DocumentOptions(max_pages=2)})
    reports = {r.object_key: r for r in sync_keys(s3, spec, lambda _: collection, embedder, [*BAD, *good], pool=pool)}
    for object_key, (_, rule) in BAD.items():
        assert reports[object_key].status == "failed", object_key
        assert reports[object_key].message.startswith(f"object '{object_key}'"), reports[object_key].message
        assert re.search(rule, reports[object_key].message), reports[object_key].message
    assert "s3cret" not in reports["bad/locked.pdf"].message
    assert reports["bad/good.docx"].status == "indexed"
    assert reports["bad/blank.png"].status == "empty"
    assert "no text found in the image: nothing indexed" in reports["bad/blank.png"].message


def _pdf_without_pages() -> bytes:
    """A valid PDF whose page tree is empty (what some tools write for an empty export)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
    body, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, text in enumerate(objects, 1):
        offsets.append(len(body))
        body += b"%d 0 obj\n%s\nendobj\n" % (number, text)
    xref = len(body)
    body += b"xref\n0 3\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    body += b"trailer\n<< /Size 3 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(body)


def test_valid_but_unusual_documents_are_indexed_not_failed(
    s3: Any, bucket: str, chroma_client: Any, embedder: Any, pool: DocumentPool
) -> None:
    # HTML nested 10,000 deep (past docling's recursive walk: "maximum recursion depth exceeded" before)
    # is indexed by its text; a PDF with no pages (reported "not a readable PDF" before) is empty.
    sentence = "The deepest sentence sits under ten thousand nested divisions."
    deep = "<html><body><style>p {}</style>" + "<div>" * 10_000 + f"<p>{sentence}</p>" + "</div>" * 10_000
    put(s3, bucket, {"odd/deep.html": (deep + "</body></html>").encode(), "odd/empty.pdf": _pdf_without_pages()})
    collection = chroma_client.get_or_create_collection("odd-docs")
    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name="odd-docs", path_prefix="odd/")
    object_keys = ["odd/deep.html", "odd/empty.pdf"]
    reports = {r.object_key: r for r in sync_keys(s3, spec, lambda _: collection, embedder, object_keys, pool=pool)}
    assert reports["odd/deep.html"].status == "indexed", reports["odd/deep.html"].message
    assert reports["odd/deep.html"].extractor == "html:text"
    assert "nested too deeply" in " ".join(reports["odd/deep.html"].warnings)
    chunks = collection.get(where={"object_key": "odd/deep.html"})["documents"]
    assert chunks == [sentence + "\n"]  # the text, and nothing of the style sheet
    assert reports["odd/empty.pdf"].status == "empty", reports["odd/empty.pdf"].message
    assert "the PDF has no pages: nothing indexed" in reports["odd/empty.pdf"].message
    assert collection.get(where={"object_key": "odd/empty.pdf"})["ids"] == []


def test_a_document_that_overruns_its_time_limit_fails_alone(
    s3: Any, bucket: str, chroma_client: Any, embedder: Any
) -> None:
    put(s3, bucket, {"slow/report.docx": fx.docx_bytes(), "slow/notes.txt": "plain text\n"})
    collection = chroma_client.get_or_create_collection("slow-docs")
    # A fresh pool: its worker spends far longer than 0.5 s importing docling, so the limit is hit.
    options = DocumentOptions(timeout_s=0.5)
    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name="slow-docs", document_options=options)
    slow_pool = DocumentPool(1)
    try:
        reports = {
            r.object_key: r
            for r in sync_keys(
                s3, spec, lambda _: collection, embedder, ["slow/report.docx", "slow/notes.txt"], pool=slow_pool
            )
        }
    finally:
        slow_pool.close()
    assert reports["slow/report.docx"].status == "failed"
    assert "took longer than 0.5 s (documents.timeout_seconds) and was stopped" in reports["slow/report.docx"].message
    assert reports["slow/notes.txt"].status == "indexed"


def test_scanned_pdf_pages_are_read_with_ocr() -> None:
    converted = convert_document("scan/page.pdf", fx.scanned_pdf_bytes(), DocumentOptions())
    assert "Zanzibar" in converted.markdown
    assert converted.extractor == "docling:pdf-native+tesseract"
    assert any("have no text layer: read with tesseract OCR" in warning for warning in converted.warnings)
    without_ocr = convert_document("scan/page.pdf", fx.scanned_pdf_bytes(), DocumentOptions(ocr=False))
    assert without_ocr.markdown.strip() == ""
    assert any("page(s) 1 have no text layer and no OCR engine is available" in w for w in without_ocr.warnings)


def test_text_only_runs_start_no_worker(s3: Any, bucket: str, chroma_client: Any, embedder: Any) -> None:
    put(s3, bucket, {"code/a.py": "x = 1\n", "code/b.md": "# b\n"})
    collection = chroma_client.get_or_create_collection("text-only")
    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name="text-only")
    fresh = DocumentPool(2)
    reports = sync_keys(s3, spec, lambda _: collection, embedder, ["code/a.py", "code/b.md"], pool=fresh)
    assert [r.status for r in reports] == ["indexed", "indexed"]
    assert fresh._pool is None  # no worker process was ever started


def test_importing_the_project_loads_no_docling_or_torch() -> None:
    import subprocess

    script = (
        "import sys\n"
        "from s3sync_dagster.pipeline.extraction.documents import DocumentPool, is_converted\n"
        "from s3sync_dagster.pipeline import sync\n"
        "import s3sync_dagster.definitions, s3sync_dagster.commands.runs.runner\n"
        "assert not is_converted('a/b.py') and not is_converted('README.md') and is_converted('x.PDF')\n"
        "pool = DocumentPool(2)\n"
        "assert pool._pool is None\n"
        "heavy = [m for m in ('docling', 'torch', 'sentence_transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)


def test_extraction_error_names_object_and_rule() -> None:
    with pytest.raises(ExtractionError, match=r"^object 'x/y\.pptx' is not a \.pptx file: its content looks like PDF$"):
        convert_document("x/y.pptx", b"%PDF-1.4 ...", DocumentOptions())
