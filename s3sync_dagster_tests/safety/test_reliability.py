"""Hostile inputs, one table-driven case each: object keys, object contents, `.meta.json` files, SQS messages
and configs. Every case is checked against the exact chunk set Chroma must hold (ids and texts, in every
collection) after a sync and again after a re-run, against each key's status and message, and for leaks
of the fixtures' secret.

Each case records a row (family, case, passed, chunks expected and found, lost, duplicated); when
S3SYNC_RELIABILITY_REPORT names a file the rows are written there as JSON at the end of the session, and
`python -m benchmarks.scale.reliability` turns them into RELIABILITY.md. A case that shows a bug is kept,
marked xfail(strict=True) with the bug named, until the bug is fixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import unicodedata
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote_plus

import boto3
import dagster as dg
import pytest
import yaml

from s3sync_dagster.config import ConfigError, load_config
from s3sync_dagster.defs.resources import ChromaResource
from s3sync_dagster.defs.sensors import ticks as sensors
from s3sync_dagster.pipeline.chunking import chunk
from s3sync_dagster.pipeline.extraction.extract import MARKDOWN_SUFFIXES, suffix_of
from s3sync_dagster.pipeline.s3.objects import list_objects
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync.reports import KeyReport
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster.pipeline.sync.targets import Collections
from s3sync_dagster_tests import document_fixtures as fx
from s3sync_dagster_tests.conftest import TEST_SECRET, Chunks, ConfigFactory, CountingEmbedder, Row, put
from s3sync_dagster_tests.dagster.test_sensors import AutoSync, queue_depth

pytestmark = pytest.mark.reliability  # in the table: python -m benchmarks.scale.reliability


# --- the table ----------------------------------------------------------------------------------------


FAMILIES = {
    "test_object_key": "object keys",
    "test_object_content": "object contents",
    "test_meta_file": "meta files",
    "test_sqs_message": "SQS messages",
    "test_config": "configs",
}


@pytest.fixture
def row(request: pytest.FixtureRequest, reliability_rows: list[Row]) -> Row:
    bug = request.node.get_closest_marker("xfail")
    this = Row(
        family=FAMILIES[request.node.originalname],
        case=request.node.callspec.id,
        known_bug=str(bug.kwargs.get("reason", "")) if bug else "",
    )
    reliability_rows.append(this)
    return this


def case_params(cases: Mapping[str, Any]) -> list[Any]:
    """pytest params with readable ids; a case with a `bug` is expected to fail until it is fixed."""
    return [
        pytest.param(case, id=name, marks=[pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else [])
        for name, case in cases.items()
    ]


# --- shared checks --------------------------------------------------------------------------------------


def chunks_in(client: Any) -> list[tuple[str, str, str]]:
    """(collection, chunk id, text) of every chunk in the store; also checks no secret is in any of it."""
    found: list[tuple[str, str, str]] = []
    for collection in client.list_collections():
        rows = collection.get(include=["documents", "metadatas"])
        assert_no_secret(rows["documents"], rows["metadatas"])
        found += [(collection.name, i, text) for i, text in zip(rows["ids"], rows["documents"], strict=True)]
    return found


def check_chunks(row: Row, expected: Chunks, found: list[tuple[str, str, str]]) -> None:
    row.observe(expected, found)
    assert len(found) == len({(c, i) for c, i, _ in found})
    assert {(c, i): text for c, i, text in found} == expected


def assert_no_secret(*values: Any) -> None:
    assert TEST_SECRET not in json.dumps(values, default=repr, ensure_ascii=False)


def chunk_id(object_key: str, position: int) -> str:
    """Chroma Sync's id scheme, written out here rather than taken from the code under test."""
    return f"{hashlib.sha256(object_key.encode('utf-8')).hexdigest()}-{position}"


def one_chunk(collection: str, object_key: str, text: str, custom_id: str | None = None) -> Chunks:
    return {(collection, f"{custom_id}-0" if custom_id else chunk_id(object_key, 0)): text}


def body_of(object_key: str) -> bytes:
    """A short text unique to the key: its whole body is its only chunk."""
    return f"the text of {object_key!r}\n".encode()


def check_report(report: KeyReport, object_key: str, status: str, rule: str = "") -> None:
    assert report.status == status, (object_key, report.status, report.message)
    if status in ("failed", "empty", "removed"):
        assert object_key in report.message, report.message  # the error names the object...
    assert rule in report.message, report.message  # ...and the rule it broke


# --- object keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyCase:
    """Objects put under these keys (each with body_of(key)), then a listing of the source and a sync."""

    object_keys: tuple[str, ...]
    indexed: tuple[str, ...] | None = None  # keys whose body must be their only chunk; default: all of them
    by_name: tuple[str, ...] = ()  # synced by name besides the listing (`s3sync sync --key`)
    failed: Mapping[str, str] = field(default_factory=dict)  # key -> the rule its error names
    removed: tuple[str, ...] = ()  # synced by name, not in the bucket: status removed, nothing indexed
    bug: str = ""


NFC_CAFE = unicodedata.normalize("NFC", "in/café.txt")
NFD_CAFE = unicodedata.normalize("NFD", "in/café.txt")
OUTSIDE = "does not start with source 'docs' path_prefix 'in/'"

KEY_CASES = {
    "space": KeyCase(("in/with space.txt", "in/ lead.txt", "in/trail.txt ", "in/   ")),
    "plus-and-space-twins": KeyCase(("in/a+b.txt", "in/a b.txt")),
    "percent-and-its-decoding": KeyCase(("in/100%.txt", "in/%41.txt", "in/A.txt", "in/%2E%2E%2E")),
    "dot-runs": KeyCase(("in/dots...here.txt", "in/....", "in/..")),
    "comma": KeyCase(("in/a,b,c.txt",)),
    "pipe": KeyCase(("in/a|b.txt",)),
    "tab-and-bell": KeyCase(("in/tab\there.txt", "in/bell\a.txt")),
    "nul-in-key": KeyCase(("in/nul\x00byte.txt",)),
    "c1-control-and-line-separators": KeyCase(("in/c1\x85.txt", "in/ls\u2028.txt", "in/ps\u2029.txt")),
    # moto's router refuses a PUT whose key holds "\n" (real S3 takes it): the key is synced by name only.
    "newline-by-name": KeyCase(("in/plain.txt",), by_name=("in/new\nline.txt",), removed=("in/new\nline.txt",)),
    "url-specials": KeyCase(("in/q?x=1#frag.txt", "in/semi;colon&amp=1.txt", "in/at@sign:colon.txt")),
    "double-slash-and-dot-segment": KeyCase(("in//double.txt", "in/./dot.txt")),
    "dot-dot-segment-is-literal": KeyCase(("in/a/../b.txt", "in/b.txt")),
    "key-of-1024-bytes": KeyCase(("in/" + "k" * 1017 + ".txt", "in/" + "é" * 508 + "x.txt")),
    "four-byte-unicode": KeyCase(("in/emoji 🎉.txt", "in/\U0001d518\U0001d52b.md", "in/日本語/ファイル.txt")),
    "nfc-nfd-twins": KeyCase((NFC_CAFE, NFD_CAFE)),
    "case-twins": KeyCase(("in/Readme.txt", "in/README.txt", "in/readme.txt")),
    "glob-characters-in-key": KeyCase(("in/[abc].txt", "in/*star*.txt", "in/q?.txt", "in/{a,b}.txt")),
    "backslashes": KeyCase(("in/back\\slash.txt", "in\\windows.txt"), indexed=("in/back\\slash.txt",)),
    "folder-marker": KeyCase(("in/folder/", "in/folder/file.txt"), indexed=("in/folder/file.txt",)),
    "outside-prefix-by-name": KeyCase(
        ("in/inside.txt", "out/x.txt", "in-other/y.txt", "in", "/in/lead.txt"),
        indexed=("in/inside.txt",),
        by_name=("out/x.txt", "in-other/y.txt", "in", "/in/lead.txt"),
        failed=dict.fromkeys(("out/x.txt", "in-other/y.txt", "in", "/in/lead.txt"), OUTSIDE),
    ),
    "excluded-globs": KeyCase(
        ("in/keep.txt", "in/drop.tmp", "in/deep/er/drop.tmp", "in/private/a.txt", "in/private.txt"),
        indexed=("in/keep.txt", "in/private.txt"),
    ),
}


@pytest.mark.parametrize("case", case_params(KEY_CASES))
def test_object_key(
    case: KeyCase, row: Row, s3: Any, bucket: str, chroma_client: Any, embedder: CountingEmbedder
) -> None:
    spec = SourceSpec(
        name="docs",
        bucket_name=bucket,
        collection_name="hostile-keys",
        path_prefix="in/",
        exclude=("*.tmp", "in/private/**"),
        chunking_mode="lines",
    )
    collection = chroma_client.get_or_create_collection(spec.collection_name, embedding_function=embedder.inner)
    put(s3, bucket, {object_key: body_of(object_key) for object_key in case.object_keys})
    indexed = case.object_keys if case.indexed is None else case.indexed
    expected: Chunks = {}
    for object_key in indexed:
        expected |= one_chunk(spec.collection_name, object_key, body_of(object_key).decode())

    for run, status in enumerate(("indexed", "unchanged")):
        listed = [info.object_key for info in list_objects(s3, bucket, spec.path_prefix, spec.include, spec.exclude)]
        synced = list(dict.fromkeys([*listed, *case.by_name]))
        reports = {r.object_key: r for r in sync_keys(s3, spec, lambda _: collection, embedder, synced)}
        check_chunks(row, expected, chunks_in(chroma_client))
        assert_no_secret([r.as_dict() for r in reports.values()])
        assert sorted(reports) == sorted({*indexed, *case.failed, *case.removed}), f"run {run}"
        for object_key in indexed:
            check_report(reports[object_key], object_key, status)
        for object_key, rule in case.failed.items():
            check_report(reports[object_key], object_key, "failed", rule)
        for object_key in case.removed:
            check_report(reports[object_key], object_key, "removed", "removed 0 chunk(s)")
    row.passed = True


# --- object contents ------------------------------------------------------------------------------------


Fault = Literal["", "deleted-after-listing", "deleted-after-head", "replaced-after-head"]


@dataclass(frozen=True)
class ContentCase:
    """One object with hostile bytes, synced twice."""

    object_key: str
    body: bytes | Callable[[], bytes]
    status: Literal["indexed", "empty", "failed", "removed"]
    rule: str = ""  # what the report's message says besides the object's key
    chunks: tuple[str, ...] | None = None  # the exact chunk texts; None: the text as the chunker cuts it
    fault: Fault = ""  # what another writer does to the object during the first sync
    max_object_bytes: int = 200 * 1024 * 1024
    bug: str = ""

    def data(self) -> bytes:
        return self.body() if callable(self.body) else self.body


class OtherWriter:
    """The real S3 client, with another writer acting on one key right after the engine's HEAD of it (once)."""

    def __init__(self, s3: Any, object_key: str, act: Callable[[], None]) -> None:
        self._s3, self._object_key, self._act = s3, object_key, act
        self.acted = False

    def head_object(self, **request: Any) -> Any:
        head = self._s3.head_object(**request)
        if request.get("Key") == self._object_key and not self.acted:
            self.acted = True
            self._act()
        return head

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "a zip archive, not a Word document")
    return buffer.getvalue()


ONE_MB_LINE = ("word " * 209_716).encode()  # 1,048,580 bytes, no newline
NOT_UTF8 = "is not UTF-8 text"

CONTENT_CASES = {
    "empty": ContentCase("in/empty.txt", b"", "empty", "has no text (0 bytes): nothing indexed"),
    "only-whitespace": ContentCase(
        "in/blank.txt",
        b"  \n\t\n   \n",
        "empty",
        "nothing indexed",
    ),
    "only-a-byte-order-mark": ContentCase("in/bom-only.txt", b"\xef\xbb\xbf", "empty", "has no text (3 bytes)"),
    "utf8-byte-order-mark": ContentCase("in/bom.txt", b"\xef\xbb\xbfhello\n", "indexed", chunks=("hello\n",)),
    "latin-1": ContentCase(
        "in/latin1.txt", "naïve\n".encode("latin-1"), "failed", f"{NOT_UTF8} (byte 0xef at offset 2"
    ),
    "overlong-utf8": ContentCase("in/overlong.txt", b"ok\xc0\xafslash\n", "failed", "(byte 0xc0 at offset 2"),
    "utf8-encoded-surrogate": ContentCase("in/surrogate.txt", b"x\xed\xa0\x80y\n", "failed", "(byte 0xed at offset 1"),
    "truncated-utf8-at-end": ContentCase(
        "in/cut.txt", "fin é".encode()[:-1], "failed", "(byte 0xc3 at offset 4: unexpected end of data)"
    ),
    "utf16-with-bom": ContentCase(
        "in/utf16.txt", b"\xff\xfe" + "hello\n".encode("utf-16-le"), "failed", "(byte 0xff at offset 0"
    ),
    "nul-bytes": ContentCase("in/nul.txt", b"before\x00after\n\x00\n", "indexed", chunks=("before\x00after\n\x00\n",)),
    "crlf-and-lone-cr": ContentCase("in/crlf.txt", b"one\r\ntwo\r\nthree\rfour\r", "indexed"),
    "controls-and-separators": ContentCase(
        "in/controls.txt", "tab\tbell\a ls\u2028ps\u2029 zero\u200bwidth\n".encode(), "indexed"
    ),
    "one-1mb-line": ContentCase("in/one-line.txt", ONE_MB_LINE, "indexed"),
    "one-100kb-word": ContentCase("in/one-word.txt", b"a" * 100_000 + b"\n", "indexed"),
    "ten-thousand-blank-lines": ContentCase(
        "in/blanks.txt",
        b"\n" * 10_000 + b"the only text\n",
        "indexed",
    ),
    "json-nested-10000-deep": ContentCase("in/deep.json", b"[" * 10_000 + b"]" * 10_000 + b"\n", "indexed"),
    "python-nested-5000-deep": ContentCase("in/deep.py", b"x = " + b"(" * 5000 + b"1" + b")" * 5000 + b"\n", "indexed"),
    "python-syntax-error": ContentCase("in/broken.py", b"def broken(:\n    return ((\n", "indexed"),
    "markdown-only-headings": ContentCase("in/headings.md", b"# a\n## b\n### c\n#### d\n", "indexed"),
    "png-named-txt": ContentCase(
        "in/picture.txt", lambda: fx.image_bytes("PNG", text=None), "failed", f"{NOT_UTF8} (byte 0x89 at offset 0"
    ),
    "zip-named-docx": ContentCase("in/archive.docx", zip_bytes, "failed", "could not be read as a .docx document"),
    "truncated-pdf": ContentCase("in/cut.pdf", lambda: fx.pdf_bytes()[:64], "failed", "is not a readable PDF"),
    "over-max-object-bytes": ContentCase(
        "in/big.txt",
        b"x" * 2000 + b"\n",
        "failed",
        "is 2,001 bytes, over the limit of 2,000 bytes per object (max_object_bytes)",
        max_object_bytes=2000,
    ),
    "exactly-max-object-bytes": ContentCase("in/fits.txt", b"y" * 1999 + b"\n", "indexed", max_object_bytes=2000),
    "deleted-between-listing-and-sync": ContentCase(
        "in/gone.txt",
        b"here at listing time\n",
        "removed",
        "no longer exists; removed 0 chunk(s)",
        fault="deleted-after-listing",
    ),
    "deleted-between-head-and-get": ContentCase(
        "in/race.txt",
        b"here at HEAD time\n",
        "removed",
        "no longer exists; removed 0 chunk(s)",
        fault="deleted-after-head",
    ),
    "replaced-between-head-and-get": ContentCase(
        "in/swap.txt",
        b"first version\n",
        "failed",
        "changed while it was being read",
        fault="replaced-after-head",
    ),
}
SECOND_VERSION = b"second version, written between HEAD and GET\n"


def expected_texts(case: ContentCase, text: str, spec: SourceSpec) -> tuple[str, ...]:
    """The chunk texts of an indexed object: given, or as the chunker cuts the text (long ones)."""
    if case.chunks is not None:
        return case.chunks
    pieces = chunk.chunk_text(
        text,
        case.object_key,
        mode=spec.chunking_mode,
        max_size_bytes=spec.max_size_bytes,
        max_lines=spec.max_lines,
        markdown=suffix_of(case.object_key) in MARKDOWN_SUFFIXES,
        tokens=spec.tokens,
    ).chunks
    assert "".join(piece.text for piece in pieces) == text  # together the chunks are the whole text
    # Whitespace alone holds nothing to find: such pieces (a run of blank lines) are not indexed.
    return tuple(piece.text for piece in pieces if piece.text.strip())


@pytest.mark.parametrize("case", case_params(CONTENT_CASES))
def test_object_content(
    case: ContentCase, row: Row, s3: Any, bucket: str, chroma_client: Any, embedder: CountingEmbedder
) -> None:
    spec = SourceSpec(
        name="docs",
        bucket_name=bucket,
        collection_name="hostile-contents",
        path_prefix="in/",
        max_object_bytes=case.max_object_bytes,
    )
    collection = chroma_client.get_or_create_collection(spec.collection_name, embedding_function=embedder.inner)
    data = case.data()
    put(s3, bucket, {case.object_key: data})
    client: Any = s3
    if case.fault == "deleted-after-head":
        client = OtherWriter(s3, case.object_key, lambda: s3.delete_object(Bucket=bucket, Key=case.object_key))
    elif case.fault == "replaced-after-head":
        client = OtherWriter(s3, case.object_key, lambda: put(s3, bucket, {case.object_key: SECOND_VERSION}))
    listed = [info.object_key for info in list_objects(s3, bucket, spec.path_prefix)]
    assert listed == [case.object_key]
    if case.fault == "deleted-after-listing":
        s3.delete_object(Bucket=bucket, Key=case.object_key)

    def expected_after(text: str | None) -> Chunks:
        if text is None:
            return {}
        texts = expected_texts(case, text, spec)
        return {(spec.collection_name, chunk_id(case.object_key, n)): piece for n, piece in enumerate(texts)}

    first_text = data.decode("utf-8").removeprefix("\ufeff") if case.status == "indexed" else None
    (report,) = sync_keys(client, spec, lambda _: collection, embedder, listed)
    check_chunks(row, expected_after(first_text), chunks_in(chroma_client))
    assert_no_secret(report.as_dict())
    check_report(report, case.object_key, case.status, case.rule)

    # The re-run: the same set; an object replaced under the first sync now has its new version indexed.
    (again,) = sync_keys(s3, spec, lambda _: collection, embedder, listed)
    if case.fault == "replaced-after-head":
        check_chunks(row, expected_after(SECOND_VERSION.decode()), chunks_in(chroma_client))
        check_report(again, case.object_key, "indexed")
    else:
        check_chunks(row, expected_after(first_text), chunks_in(chroma_client))
        check_report(again, case.object_key, "unchanged" if case.status == "indexed" else case.status, case.rule)
    blank = [text for _, _, text in chunks_in(chroma_client) if not text.strip()]
    assert not blank, f"{len(blank)} whitespace-only chunk(s): nothing in them can be found"
    if case.status == "indexed" and case.chunks is None and len(data) > 100_000:
        # Long texts repeat: each distinct chunk text went to the model once, not once per chunk.
        assert len(embedder.texts) == len(set(embedder.texts))
    row.passed = True


# --- .meta.json files -------------------------------------------------------------------------------------

DOCUMENT_KEY = "t1/doc.txt"
META_KEY = "t1/doc.meta.json"
DOCUMENT_TEXT = "the tenant's document\n"
DEFAULT_COLLECTION = "meta-default"


def meta(**fields: Any) -> bytes:
    """A .meta.json naming the document, with fields changed (a field given as None is left out)."""
    content: dict[str, Any] = {"version": "chroma-v1", "id": "doc-1", "path": DOCUMENT_KEY}
    content.update(fields)
    return json.dumps({k: v for k, v in content.items() if v is not None}, ensure_ascii=False).encode()


@dataclass(frozen=True)
class MetaCase:
    """A metadata file (its document present) synced twice; failed with a rule, or indexed as it asks."""

    content: bytes
    rule: str = ""  # failed: what the error says after naming the metadata file
    not_said: str = ""  # failed: what the error must not say (a rule that is not the one broken)
    document_id: str = ""  # indexed: the custom id
    collection: str = DEFAULT_COLLECTION  # indexed: where the chunks go
    metadata: Mapping[str, Any] = field(default_factory=dict)  # indexed: user metadata on every chunk
    objects: Mapping[str, str] = field(default_factory=lambda: {DOCUMENT_KEY: DOCUMENT_TEXT})
    document_key: str = DOCUMENT_KEY
    bug: str = ""


NOT_JSON = "is not valid UTF-8 JSON"
NOT_OBJECT = "must hold a JSON object"
NOT_SCALAR = "must be a string, number, boolean, null or an array of one of those"

META_CASES = {
    "not-json": MetaCase(b"{not json", NOT_JSON),
    "empty-file": MetaCase(b"", NOT_JSON),
    "not-utf8": MetaCase(b'{"version": "chroma-v1", "id": "\xff"}', NOT_JSON),
    "json-array": MetaCase(b"[1, 2]", NOT_OBJECT),
    "json-string": MetaCase(b'"t1/doc.txt"', NOT_OBJECT),
    "wrong-version": MetaCase(meta(version="chroma-v2"), 'version must be "chroma-v1" (got "chroma-v2")'),
    "version-as-number": MetaCase(meta(version=1), 'version must be "chroma-v1" (got 1)'),
    "missing-version": MetaCase(meta(version=None), 'version must be "chroma-v1" (got null)'),
    "missing-id": MetaCase(meta(id=None), "id is required and must be a string"),
    "id-not-a-string": MetaCase(meta(id=42), "id is required and must be a string"),
    "empty-id": MetaCase(meta(id=""), "custom id is empty"),
    "id-of-121-bytes": MetaCase(meta(id="x" * 121), "custom id is 121 bytes; at most 120 bytes are allowed"),
    "id-of-61-two-byte-chars": MetaCase(meta(id="é" * 61), "custom id is 122 bytes"),
    "missing-path": MetaCase(meta(path=None), "path is required"),
    "path-outside-prefix": MetaCase(
        meta(path="t2/secret.txt"),
        "path 't2/secret.txt' is outside this source's path_prefix 't1/'",
        objects={DOCUMENT_KEY: DOCUMENT_TEXT, "t2/secret.txt": "another tenant's secret\n"},
    ),
    "path-is-a-meta-file": MetaCase(
        meta(path="t1/other.meta.json"), "path 't1/other.meta.json' is itself a metadata file"
    ),
    "unknown-field": MetaCase(meta(extra=1), "unknown field(s) extra"),
    "metadata-not-an-object": MetaCase(meta(metadata=[1]), "metadata must be an object"),
    "nested-metadata": MetaCase(meta(metadata={"owner": {"team": "a"}}), f"metadata 'owner' {NOT_SCALAR}"),
    "mixed-array": MetaCase(meta(metadata={"tags": [1, "a"]}), "metadata 'tags' must be an array of one scalar type"),
    "array-of-objects": MetaCase(meta(metadata={"tags": [{"a": 1}]}), "must be an array of one scalar type"),
    "empty-array": MetaCase(meta(metadata={"tags": []}), "metadata 'tags' is an empty array"),
    "empty-metadata-key": MetaCase(meta(metadata={"": 1}), "metadata keys must be non-empty strings"),
    **{
        f"reserved-{name}": MetaCase(meta(metadata={name: "x"}), f"metadata key '{name}' is reserved")
        for name in ("object_key", "source", "document_id", "metadata_key", "chunk_index")
    },
    "target-not-a-string": MetaCase(meta(target_collection_name=5), "target_collection_name must be a string"),
    "target-invalid-name": MetaCase(
        meta(target_collection_name="x"),
        "target_collection_name 'x' is not a valid Chroma collection name",
    ),
    "meta-file-over-1mb": MetaCase(
        meta(metadata={"note": "n" * 1024 * 1024}),
        "over the limit of 1,048,576 bytes",
        not_said="max_object_bytes",
    ),
    "integer-over-64-bits": MetaCase(
        meta(metadata={"big": 10**30}),
        "metadata 'big'",
    ),
    "metadata-nan": MetaCase(meta(metadata={"score": math.nan}), "metadata 'score' is NaN"),
    "metadata-infinity": MetaCase(meta(metadata={"score": math.inf}), "metadata 'score' is Infinity"),
    "metadata-array-with-minus-infinity": MetaCase(
        meta(metadata={"scores": [0.5, -math.inf]}), "metadata 'scores' is -Infinity"
    ),
    "metadata-of-33-keys": MetaCase(
        meta(metadata={f"k{n}": n for n in range(33)}), "metadata has 33 keys; at most 32 are allowed"
    ),
    "metadata-of-exactly-32-keys": MetaCase(
        meta(id="k-32", metadata={f"k{n}": n for n in range(32)}),
        document_id="k-32",
        metadata={f"k{n}": n for n in range(32)},
    ),
    "metadata-string-of-100-kib": MetaCase(
        meta(metadata={"note": "n" * 100 * 1024}), "(largest: 'note'); at most 16,384 bytes are allowed"
    ),
    "utf8-byte-order-mark": MetaCase(
        b"\xef\xbb\xbf" + meta(id="bom-1"),
        document_id="bom-1",
    ),
    "valid-with-target-and-metadata": MetaCase(
        meta(
            id="report-1",
            target_collection_name="tenant-one",
            metadata={"year": 2024, "tags": ["a", "b"], "draft": False, "score": 0.5, "dropped": None},
        ),
        document_id="report-1",
        collection="tenant-one",
        metadata={"year": 2024, "tags": ["a", "b"], "draft": False, "score": 0.5},
    ),
    "id-of-exactly-120-bytes": MetaCase(meta(id="x" * 120), document_id="x" * 120),
    "id-with-spaces-slashes-unicode": MetaCase(meta(id="Rapport 2024 / été"), document_id="Rapport 2024 / été"),
    "metadata-null": MetaCase(meta(id="n-1", metadata=None), document_id="n-1"),
    "unicode-metadata-keys": MetaCase(
        meta(id="u-1", metadata={"clé": "välue", "emoji🎉": 1}),
        document_id="u-1",
        metadata={"clé": "välue", "emoji🎉": 1},
    ),
    "path-with-literal-dot-dot": MetaCase(
        # S3 keys are literal: t1/../t2/x.txt is inside t1/, and the object at t2/x.txt is another one.
        meta(id="dd-1", path="t1/../t2/x.txt"),
        document_id="dd-1",
        objects={"t1/../t2/x.txt": "the literal key's text\n", "t2/x.txt": "another tenant's text\n"},
        document_key="t1/../t2/x.txt",
    ),
    "path-with-hostile-characters": MetaCase(
        meta(id="h-1", path="t1/a b+c%2F...,|.txt"),
        document_id="h-1",
        objects={"t1/a b+c%2F...,|.txt": "hostile path's text\n"},
        document_key="t1/a b+c%2F...,|.txt",
    ),
}


@pytest.mark.parametrize("case", case_params(META_CASES))
def test_meta_file(
    case: MetaCase, row: Row, s3: Any, bucket: str, chroma_client: Any, embedder: CountingEmbedder
) -> None:
    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name=DEFAULT_COLLECTION, path_prefix="t1/")

    def open_collection(name: str) -> Any:
        return chroma_client.get_or_create_collection(name, embedding_function=embedder.inner)

    collections = Collections(open_collection, lambda: [c.name for c in chroma_client.list_collections()])
    collections(DEFAULT_COLLECTION)
    put(s3, bucket, {**case.objects, META_KEY: case.content})
    expected: Chunks = {}
    if not case.rule:
        expected = one_chunk(case.collection, case.document_key, case.objects[case.document_key], case.document_id)

    for status in ("indexed", "unchanged"):
        (report,) = sync_keys(s3, spec, collections, embedder, [META_KEY])
        check_chunks(row, expected, chunks_in(chroma_client))
        assert_no_secret(report.as_dict())
        if case.rule:
            check_report(report, META_KEY, "failed", case.rule)
            assert report.message.startswith(f"metadata file '{META_KEY}'"), report.message
            if case.not_said:
                assert case.not_said not in report.message
        else:
            check_report(report, META_KEY, status)
            assert report.document_key == case.document_key
    if expected:
        ((collection, chunk_id),) = expected
        (metadata,) = chroma_client.get_collection(collection).get(ids=[chunk_id], include=["metadatas"])["metadatas"]
        assert {k: metadata.get(k) for k in case.metadata} == case.metadata
        assert metadata["metadata_key"] == META_KEY and metadata["custom_id"] == case.document_id
        assert "dropped" not in metadata
    row.passed = True


# --- SQS messages -----------------------------------------------------------------------------------------


def s3_record(
    bucket: str, object_key: str, event: str = "ObjectCreated:Put", encode: bool = True, **changes: Any
) -> dict[str, Any]:
    """One S3 event record as S3 writes it: the key URL-encoded ("a b+c" -> "a+b%2Bc")."""
    record: dict[str, Any] = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventName": event,
        "s3": {
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(object_key, safe="/") if encode else object_key, "size": 1},
        },
    }
    record.update(changes)
    return record


def notification(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


Messages = Callable[[str], list[str]]  # the bucket's name -> message bodies


def created(*object_keys: str) -> Messages:
    return lambda bucket: [notification(*(s3_record(bucket, k) for k in object_keys))]


def removed(*object_keys: str) -> Messages:
    return lambda bucket: [notification(*(s3_record(bucket, k, "ObjectRemoved:Delete") for k in object_keys))]


def sns(inner: Messages) -> Messages:
    return lambda bucket: [
        json.dumps({"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": body})
        for body in inner(bucket)
    ]


def eventbridge_event(bucket: str, object_key: str, detail_type: str = "Object Created", **detail: Any) -> str:
    """One S3 event as EventBridge delivers it (S3 user guide, "EventBridge event message structure"): the
    key as it is, not URL-encoded."""
    return json.dumps(
        {
            "version": "0",
            "id": "2ee9cc15-d022-99ea-1fb8-1b1bac4850f9",
            "detail-type": detail_type,
            "source": "aws.s3",
            "account": "111122223333",
            "time": "2021-11-12T00:00:00Z",
            "region": "us-east-1",
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": {
                "version": "0",
                "bucket": {"name": bucket},
                "object": {"key": object_key, "etag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "617f08"},
                "request-id": "0BH729840619AG5K",
                "requester": "123456789012",
                **detail,
            },
        }
    )


def bridged(*object_keys: str, detail_type: str = "Object Created", **detail: Any) -> Messages:
    """One EventBridge event per key, in the bucket of the case."""
    return lambda bucket: [eventbridge_event(bucket, k, detail_type, **detail) for k in object_keys]


@dataclass(frozen=True)
class SqsCase:
    """Objects in the bucket, then messages on the source's queue, read by the sensor and run as the daemon would.

    The re-run sends the same messages again (a redelivery): the chunk set must not change.
    """

    messages: Messages
    objects: tuple[str, ...] = ("in/a.txt",)  # each with body_of(key)
    indexed: tuple[str, ...] = ()  # keys whose body must be their only chunk afterwards
    runs: int = 0  # runs the first tick launches
    auto_sync: Literal["direct", "metadata"] = "direct"
    deleted: tuple[str, ...] = ()  # indexed first (a created event), then deleted from the bucket
    extra: Mapping[str, bytes] = field(default_factory=dict)  # objects with their own bodies
    meta_chunks: Chunks = field(default_factory=dict)  # chunks a .meta.json asks for, besides `indexed`
    # Messages of each delivery not understood: never deleted, they stay on the queue (for its dead-letter
    # queue); every other message must be consumed.
    kept: int = 0
    bug: str = ""


IGNORED = "nothing indexed, no run"
WRONG_RECORDS = [
    {"eventName": "ObjectCreated:Put"},
    {"eventName": "ObjectCreated:Put", "s3": {}},
    {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "x"}}},
    {"eventName": "ObjectCreated:Put", "s3": {"bucket": "x", "object": 5}},
    {"eventName": 5, "s3": {"bucket": {"name": None}, "object": {"key": None}}},
    "a string record",
    None,
]


def huge_message(bucket: str) -> list[str]:
    # 1,200 records (~230 KB, near SQS's 256 KB) naming two keys over and over.
    return [notification(*(s3_record(bucket, f"in/{'ab'[n % 2]}.txt") for n in range(1200)))]


def meta_file_event(bucket: str) -> list[str]:
    return created("in/doc.meta.json")(bucket)


SQS_CASES = {
    "created": SqsCase(created("in/a.txt"), indexed=("in/a.txt",), runs=1),
    "url-encoded-key": SqsCase(
        created("in/a b+c é%,|....txt"), objects=("in/a b+c é%,|....txt",), indexed=("in/a b+c é%,|....txt",), runs=1
    ),
    "encoded-control-characters": SqsCase(
        created("in/tab\there\a.txt"), objects=("in/tab\there\a.txt",), indexed=("in/tab\there\a.txt",), runs=1
    ),
    # A producer that did not encode: "+" in an event means a space, so "in/x+y.txt" is not the key named.
    "unencoded-plus-means-space": SqsCase(
        lambda bucket: [notification(s3_record(bucket, "in/x+y.txt", encode=False))], objects=("in/x+y.txt",), runs=1
    ),
    "sns-wrapped": SqsCase(sns(created("in/a.txt")), indexed=("in/a.txt",), runs=1),
    "sns-wrapped-text-not-json": SqsCase(
        lambda _: [json.dumps({"Type": "Notification", "Message": "not json"})], kept=1
    ),
    "not-json": SqsCase(lambda _: ["hello, not an S3 event", "{", ""], kept=3),
    "json-but-not-an-event": SqsCase(lambda _: ["[1, 2]", "null", '"in/a.txt"', json.dumps({"Records": []})], kept=4),
    "test-event": SqsCase(
        lambda bucket: [json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket})]
    ),
    "other-bucket": SqsCase(lambda _: [notification(s3_record("someone-elses-bucket", "in/a.txt"))]),
    "outside-prefix-and-folder-marker": SqsCase(
        created("out/a.txt", "in/folder/"), objects=("in/a.txt", "out/a.txt", "in/folder/")
    ),
    # What it understands is synced; the message still goes to the dead-letter queue for the rest.
    "records-missing-fields": SqsCase(
        lambda bucket: [json.dumps({"Records": [*WRONG_RECORDS, s3_record(bucket, "in/a.txt")]})],
        indexed=("in/a.txt",),
        runs=1,
        kept=1,
    ),
    "records-not-a-list": SqsCase(
        lambda _: [json.dumps({"Records": "in/a.txt"}), json.dumps({"Records": {"a": 1}})], kept=2
    ),
    "not-an-s3-event-source": SqsCase(
        lambda bucket: [notification(s3_record(bucket, "in/a.txt", eventSource="aws:sns"))], kept=1
    ),
    # A completed restore makes an archived object readable: it is indexed (issue 52); a restore begun changes nothing.
    "restore-event": SqsCase(
        lambda bucket: [notification(s3_record(bucket, "in/a.txt", "ObjectRestore:Completed"))],
        indexed=("in/a.txt",),
        runs=1,
    ),
    "restore-begun-event": SqsCase(lambda bucket: [notification(s3_record(bucket, "in/a.txt", "ObjectRestore:Post"))]),
    "huge-message": SqsCase(huge_message, objects=("in/a.txt", "in/b.txt"), indexed=("in/a.txt", "in/b.txt"), runs=1),
    "duplicate-redelivery": SqsCase(lambda bucket: created("in/a.txt")(bucket) * 3, indexed=("in/a.txt",), runs=1),
    "removed-never-indexed": SqsCase(removed("in/ghost.txt")),
    "removed-after-indexing": SqsCase(removed("in/a.txt"), deleted=("in/a.txt",), runs=1),
    # A lifecycle rule's expiration deletes the object: its chunks go.
    "lifecycle-expiration-record": SqsCase(
        lambda bucket: [notification(s3_record(bucket, "in/a.txt", "LifecycleExpiration:Delete"))],
        deleted=("in/a.txt",),
        runs=1,
    ),
    "stale-created-after-removed": SqsCase(
        lambda bucket: removed("in/a.txt")(bucket) + created("in/a.txt")(bucket), deleted=("in/a.txt",), runs=1
    ),
    "metadata-mode-plain-upload": SqsCase(created("in/a.txt"), auto_sync="metadata"),
    "metadata-mode-meta-file": SqsCase(
        meta_file_event,
        objects=(),
        extra={
            "in/doc.txt": b"the document a metadata file names\n",
            "in/doc.meta.json": json.dumps({"version": "chroma-v1", "id": "sqs-doc", "path": "in/doc.txt"}).encode(),
        },
        auto_sync="metadata",
        runs=1,
        meta_chunks={("docs-collection", "sqs-doc-0"): "the document a metadata file names\n"},
    ),
    # S3 -> EventBridge -> SQS. A case whose events need no sync carries one that does ("in/b.txt"): the
    # irrelevant ones must not index "in/a.txt", while EventBridge events are read at all.
    "eventbridge-created": SqsCase(bridged("in/a.txt", reason="PutObject"), indexed=("in/a.txt",), runs=1),
    "eventbridge-deleted": SqsCase(
        bridged(
            "in/a.txt", detail_type="Object Deleted", reason="DeleteObject", **{"deletion-type": "Permanently Deleted"}
        ),
        deleted=("in/a.txt",),
        runs=1,
    ),
    "eventbridge-lifecycle-expiration": SqsCase(
        bridged(
            "in/a.txt",
            detail_type="Object Deleted",
            reason="Lifecycle Expiration",
            **{"deletion-type": "Delete Marker Created"},
        ),
        deleted=("in/a.txt",),
        runs=1,
    ),
    # EventBridge does not URL-encode keys: "+" is a plus and "%2B" three characters.
    "eventbridge-key-as-is": SqsCase(
        bridged("in/a b+c é%2B,|....txt"),
        objects=("in/a b+c é%2B,|....txt",),
        indexed=("in/a b+c é%2B,|....txt",),
        runs=1,
    ),
    "eventbridge-other-bucket": SqsCase(
        lambda bucket: [eventbridge_event("someone-elses-bucket", "in/a.txt"), eventbridge_event(bucket, "in/b.txt")],
        objects=("in/a.txt", "in/b.txt"),
        indexed=("in/b.txt",),
        runs=1,
    ),
    "eventbridge-outside-prefix-and-folder-marker": SqsCase(
        bridged("out/a.txt", "in/folder/", "in/b.txt"),
        objects=("out/a.txt", "in/folder/", "in/b.txt"),
        indexed=("in/b.txt",),
        runs=1,
    ),
    "eventbridge-restore-tags-acl-storage-class": SqsCase(
        lambda bucket: [
            *(
                eventbridge_event(bucket, "in/a.txt", detail_type)
                for detail_type in (
                    "Object Restore Initiated",
                    "Object Restore Completed",
                    "Object Restore Expired",
                    "Object Tags Added",
                    "Object ACL Updated",
                    "Object Storage Class Changed",
                    "Object Access Tier Changed",
                )
            ),
            eventbridge_event(bucket, "in/b.txt"),
        ],
        objects=("in/a.txt", "in/b.txt"),
        indexed=("in/a.txt", "in/b.txt"),  # in/a.txt by its completed restore
        runs=1,
    ),
    # An EventBridge rule may target an SNS topic that the queue subscribes to.
    "sns-wrapped-eventbridge": SqsCase(sns(bridged("in/a.txt")), indexed=("in/a.txt",), runs=1),
    "eventbridge-duplicate-redelivery": SqsCase(
        lambda bucket: bridged("in/a.txt")(bucket) * 3, indexed=("in/a.txt",), runs=1
    ),
    "eventbridge-stale-created-after-deleted": SqsCase(
        lambda bucket: bridged("in/a.txt", detail_type="Object Deleted")(bucket) + bridged("in/a.txt")(bucket),
        deleted=("in/a.txt",),
        runs=1,
    ),
    "eventbridge-metadata-mode-meta-file": SqsCase(
        bridged("in/doc.meta.json"),
        objects=(),
        extra={
            "in/doc.txt": b"a document an EventBridge event's metadata file names\n",
            "in/doc.meta.json": json.dumps({"version": "chroma-v1", "id": "eb-doc", "path": "in/doc.txt"}).encode(),
        },
        auto_sync="metadata",
        runs=1,
        meta_chunks={("docs-collection", "eb-doc-0"): "a document an EventBridge event's metadata file names\n"},
    ),
    # Not understood: left on the queue, whatever is around them.
    "unknown-json-shapes": SqsCase(
        lambda _: [
            json.dumps({"hello": "world"}),
            json.dumps({"detail-type": "Object Created", "detail": {"bucket": {"name": "x"}}}),  # no source
            json.dumps({"Message": "an SNS envelope without its Type"}),
        ],
        kept=3,
    ),
    "unknown-beside-known": SqsCase(
        lambda bucket: ["hello, not an S3 event", *bridged("in/a.txt")(bucket), json.dumps({"Event": "s3:Other"})],
        indexed=("in/a.txt",),
        runs=1,
        kept=2,
    ),
    "eventbridge-not-from-s3": SqsCase(
        lambda bucket: [json.dumps({**json.loads(eventbridge_event(bucket, "in/a.txt")), "source": "aws.ec2"})], kept=1
    ),
    "eventbridge-without-object-key": SqsCase(
        lambda bucket: [
            json.dumps({**json.loads(eventbridge_event(bucket, "in/a.txt")), "detail": {"bucket": {"name": bucket}}})
        ],
        kept=1,
    ),
    # S3 API calls recorded by CloudTrail reach EventBridge with source aws.s3 in another shape.
    "eventbridge-cloudtrail-api-call": SqsCase(
        lambda bucket: [
            json.dumps(
                {
                    "version": "0",
                    "detail-type": "AWS API Call via CloudTrail",
                    "source": "aws.s3",
                    "detail": {
                        "eventSource": "s3.amazonaws.com",
                        "eventName": "PutObject",
                        "requestParameters": {"bucketName": bucket, "key": "in/a.txt"},
                    },
                }
            )
        ],
        kept=1,
    ),
    "secret-in-an-unknown-message": SqsCase(
        lambda _: [json.dumps({"token": TEST_SECRET}), json.dumps({"detail-type": TEST_SECRET, "source": TEST_SECRET})],
        kept=2,
    ),
}


@pytest.fixture
def sqs(moto_endpoint: str) -> Any:
    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.mark.parametrize("case", case_params(SQS_CASES))
def test_sqs_message(
    case: SqsCase,
    row: Row,
    s3: Any,
    sqs: Any,
    bucket: str,
    make_config: ConfigFactory,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The messages are all on the queue before the tick: short polls read them, no long wait at the end.
    monkeypatch.setattr(sensors, "READ_BUDGET_S", 1.9)
    # A queue of its own and no bucket notifications: the test's messages are the only ones.
    queue_url = sqs.create_queue(QueueName=f"{bucket}-hostile")["QueueUrl"]
    config, _ = make_config(bucket, path_prefix="in/", auto_sync=case.auto_sync, sqs_queue_url=queue_url)
    auto = AutoSync(config, instance)
    put(s3, bucket, {**{k: body_of(k) for k in (*case.objects, *case.deleted)}, **case.extra})
    if case.deleted:
        for body in created(*case.deleted)(bucket):
            sqs.send_message(QueueUrl=queue_url, MessageBody=body)
        _, runs = auto.tick()
        assert [run.success for run in runs] == [True]
        assert len(chunks_in(chroma_of(auto))) == len(case.deleted)
        for object_key in case.deleted:
            s3.delete_object(Bucket=bucket, Key=object_key)
    expected: Chunks = dict(case.meta_chunks)
    for object_key in case.indexed:
        expected |= one_chunk(config.sources[0].collection_name, object_key, body_of(object_key).decode())

    for attempt in ("first delivery", "redelivery"):
        for body in case.messages(bucket):
            sqs.send_message(QueueUrl=queue_url, MessageBody=body)
        result, runs = auto.tick()
        check_chunks(row, expected, chunks_in(chroma_of(auto)))
        assert all(run.success for run in runs), attempt
        if attempt == "first delivery":
            assert len(runs) == case.runs, [r.run_config for r in result.run_requests or []]
        for run in runs:
            assert_no_secret([str(event.message) for event in run.all_events])
    # What each key's partition says last: the redelivery found it current, or gone.
    for object_key, status in [*((k, "unchanged") for k in case.indexed), *((k, "removed") for k in case.deleted)]:
        latest = auto.latest(object_key)
        assert_no_secret(latest)
        assert latest["status"] == status, latest
    # Once a tick has seen the runs, every message is consumed but those not understood, of both deliveries.
    auto.tick()
    assert queue_depth(sqs, queue_url) == 2 * case.kept
    assert_no_secret(capsys.readouterr())  # the sensor's log: reasons and message ids, never bodies
    row.passed = True


def chroma_of(auto: AutoSync) -> Any:
    """The (cached) client the runs used: one embedded store, one set of settings per process."""
    return ChromaResource(path=auto.config.chroma.path).client()


# --- configs -----------------------------------------------------------------------------------------------

SOURCE = {"name": "docs", "bucket_name": "my-bucket", "region": "eu-west-1", "collection_name": "docs-col"}
# Built here so no credential-shaped literal sits in the repository.
KEY_SHAPED = "AKIA" + "ABCDEFGHIJKLMNOP"


@dataclass(frozen=True)
class ConfigCase:
    """A config file: one source changed (a None value drops the field), other top-level keys, or raw bytes."""

    source: Mapping[str, Any] = field(default_factory=dict)
    top: Mapping[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    said: tuple[str, ...] = ()  # what the error says (the field and the rule); empty: the file loads
    bug: str = ""

    def text(self) -> bytes:
        if self.raw is not None:
            return self.raw
        entry = {k: v for k, v in {**SOURCE, **self.source}.items() if v is not None}
        return yaml.safe_dump({"sources": [entry], **self.top}, allow_unicode=True).encode()


CREDENTIALS = "carries credentials (user:password@...), refused and not shown"
ENV_PAIR = {"aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"}}
WHERE = "sources[0] (source 'docs')"

CONFIG_CASES = {
    "literal-secret": ConfigCase(
        {**ENV_PAIR, "aws_secret_access_key": TEST_SECRET},
        said=(
            f"{WHERE}.aws_secret_access_key",
            "a literal secret is refused (not shown): write `aws_secret_access_key: {env: ",
        ),
    ),
    "secret-pasted-as-env-name": ConfigCase(
        {**ENV_PAIR, "aws_secret_access_key": {"env": TEST_SECRET}},
        said=(
            f"{WHERE}.aws_secret_access_key",
            "{env: ...} takes a variable's name, not the secret itself (not shown)",
        ),
    ),
    "secret-in-endpoint-url": ConfigCase(
        {"endpoint_url": f"http://minio:{TEST_SECRET}@localhost:9000"}, said=(f"{WHERE}.endpoint_url", CREDENTIALS)
    ),
    "secret-in-sqs-queue-url": ConfigCase(
        {"auto_sync": "direct", "sqs_queue_url": f"https://user:{TEST_SECRET}@sqs.local/1/q"},
        said=(f"{WHERE}.sqs_queue_url", CREDENTIALS),
    ),
    "secret-in-chroma-host": ConfigCase(
        top={"chroma": {"host": f"admin:{TEST_SECRET}@chroma.internal"}}, said=("chroma.host", CREDENTIALS)
    ),
    "secret-in-chroma-header": ConfigCase(
        top={"chroma": {"host": "localhost", "headers": {"Authorization": f"Bearer {TEST_SECRET}"}}},
        said=("headers.Authorization", "a literal secret is refused"),
    ),
    "secret-in-embedding-config": ConfigCase(
        top={"embedding": {"function": "openai", "config": {"api_key": TEST_SECRET}}},
        said=("config.api_key", "a literal secret is refused"),
    ),
    "key-shaped-literal-anywhere": ConfigCase(
        {"path_prefix": f"in/{KEY_SHAPED}/"}, said=(f"{WHERE}.path_prefix", "looks like a literal credential")
    ),
    "unknown-source-field": ConfigCase({"bucket": "typo"}, said=(f"{WHERE}.bucket", "Extra inputs are not permitted")),
    "unknown-top-level-field": ConfigCase(top={"sourcse": []}, said=("sourcse", "Extra inputs are not permitted")),
    "name-with-capitals": ConfigCase({"name": "Docs"}, said=("(source 'Docs').name", "should match pattern")),
    "name-with-dash": ConfigCase({"name": "my-docs"}, said=("(source 'my-docs').name", "should match pattern")),
    "name-with-newline": ConfigCase({"name": "docs\nx"}, said=(".name", "should match pattern")),
    "duplicate-source-names": ConfigCase(
        top={"sources": [SOURCE, {**SOURCE, "collection_name": "other-col"}]},
        said=("source name 'docs' is used twice",),
    ),
    "two-sources-one-collection": ConfigCase(
        top={"sources": [SOURCE, {**SOURCE, "name": "wiki"}]},
        said=("sources 'docs' and 'wiki' both write collection 'docs-col'",),
    ),
    "bad-regex": ConfigCase(
        {"container_tag_regex": "(unclosed"},
        said=(f"{WHERE}.container_tag_regex", "not a valid regular expression"),
    ),
    "regex-without-its-group": ConfigCase(
        {"container_tag_regex": "^users/([^/]+)/"}, said=(f"{WHERE}.container_tag_regex", "needs a named group")
    ),
    "max-tokens-over-the-window": ConfigCase(
        {"chunking": {"type": "tree_sitter", "max_tokens": 257}},
        said=("source 'docs': chunking.max_tokens is 257", "reads (256 tokens"),
    ),
    "max-tokens-without-chunking-type": ConfigCase(
        {"chunking": {"max_tokens": 64}},
    ),
    "invalid-collection-name": ConfigCase(
        {"collection_name": "-docs-"}, said=(f"{WHERE}.collection_name", "is not a valid Chroma collection name")
    ),
    "collection-name-with-the-rebuild-suffix": ConfigCase(
        {"collection_name": "docs-s3sync-rebuild"},
        said=(f"{WHERE}.collection_name", "which s3sync-dagster reserves for the collections a rebuild"),
    ),
    "prefixes-overlapping-as-strings": ConfigCase(
        top={
            "sources": [
                {**SOURCE, "path_prefix": "team1"},
                {**SOURCE, "name": "wiki", "collection_name": "wiki-col", "path_prefix": "team10/"},
            ]
        },
        said=("sources 'docs' (path_prefix 'team1') and 'wiki' (path_prefix 'team10/') overlap in bucket 'my-bucket'",),
    ),
    "empty-prefix-overlaps-every-other": ConfigCase(
        top={"sources": [SOURCE, {**SOURCE, "name": "wiki", "collection_name": "wiki-col", "path_prefix": "w/"}]},
        said=("sources 'docs' (path_prefix '') and 'wiki' (path_prefix 'w/') overlap", "allow_prefix_overlap"),
    ),
    "overlap-allowed-by-one-source-only": ConfigCase(
        top={
            "sources": [
                {**SOURCE, "allow_prefix_overlap": True},
                {**SOURCE, "name": "wiki", "collection_name": "wiki-col", "path_prefix": "w/"},
            ]
        },
        said=("overlap in bucket 'my-bucket'",),
    ),
    "overlap-allowed-by-both-sources": ConfigCase(
        top={
            "sources": [
                {**SOURCE, "allow_prefix_overlap": True},
                {
                    **SOURCE,
                    "name": "wiki",
                    "collection_name": "wiki-col",
                    "path_prefix": "w/",
                    "allow_prefix_overlap": True,
                },
            ]
        },
    ),
    "same-prefix-in-two-buckets": ConfigCase(
        top={
            "sources": [
                SOURCE,
                {**SOURCE, "name": "wiki", "collection_name": "wiki-col", "bucket_name": "other-bucket"},
            ]
        },
    ),
    "auto-sync-without-queue": ConfigCase({"auto_sync": "direct"}, said=("auto_sync: direct needs sqs_queue_url",)),
    "half-a-credential-pair": ConfigCase(ENV_PAIR, said=("aws_access_key_id and aws_secret_access_key together",)),
    "max-object-bytes-zero": ConfigCase(
        {"max_object_bytes": 0}, said=(f"{WHERE}.max_object_bytes", "greater than or equal to 1")
    ),
    "not-a-mapping": ConfigCase(raw=b"- a\n- b\n", said=("the top level must be a mapping",)),
    "yaml-with-a-tab": ConfigCase(raw=b"sources:\n  - name: docs\n\tregion: x\n", said=("not valid YAML",)),
    "python-object-tag": ConfigCase(
        raw=b"sources: !!python/object/apply:os.system ['echo pwned']\n", said=("not valid YAML",)
    ),
    "not-utf8": ConfigCase(
        raw=b"sources:\n  - name: d\xf6cs\n",
        said=("UTF-8",),
    ),
    "empty-file": ConfigCase(raw=b""),
    "utf8-byte-order-mark": ConfigCase(raw=b"\xef\xbb\xbf" + yaml.safe_dump({"sources": [SOURCE]}).encode()),
}


@pytest.mark.parametrize("case", case_params(CONFIG_CASES))
def test_config(case: ConfigCase, row: Row, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s3sync.yaml"
    path.write_bytes(case.text())
    check_chunks(row, {}, [])  # configs index nothing: a row of zeros in the table
    if not case.said:
        config = load_config(path)
        assert_no_secret(config.model_dump(mode="json"))
        row.passed = True
        return
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:"), message  # names the file...
    for said in case.said:
        assert said in message, message  # ...the field and the rule
    captured = capsys.readouterr()
    assert_no_secret(message, captured.out, captured.err)
    row.passed = True
