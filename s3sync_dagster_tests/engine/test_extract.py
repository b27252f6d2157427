"""Bytes -> text: UTF-8 with the offending byte named, documents routed away from the text path."""

import pytest

from s3sync_dagster.pipeline.extraction.documents import is_converted
from s3sync_dagster.pipeline.extraction.extract import ExtractionError, extract_text


def test_utf8_text_and_markdown_flag() -> None:
    assert extract_text("a/notes.txt", "héllo\n".encode()).text == "héllo\n"
    assert extract_text("a/README.MD", b"# t\n").markdown
    assert not extract_text("a/x.py", b"x = 1\n").markdown
    assert extract_text("bom.txt", b"\xef\xbb\xbfhi").text == "hi"


def test_non_utf8_names_object_byte_and_offset() -> None:
    with pytest.raises(ExtractionError) as caught:
        extract_text("data/latin1.txt", "abc café".encode("latin-1"))
    assert str(caught.value).startswith("object 'data/latin1.txt' is not UTF-8 text (byte 0xe9 at offset 7")


def test_documents_are_routed_to_conversion_by_suffix() -> None:
    for object_key in ("r/report.PDF", "a/b.docx", "page.htm", "data.csv", "scan.TIFF", "book.epub"):
        assert is_converted(object_key), object_key
    for object_key in ("notes.txt", "main.py", "README.md", "config.yaml", "no-suffix"):
        assert not is_converted(object_key), object_key
