"""Chunks that say where they stand (issue 53, item 1): each chunk's context line (its object's key and title, and
the headings or definitions in effect where it starts) is embedded and lexically indexed before its text, while
the stored document stays the text; it is cut to what the model's window leaves beside the chunk, never the chunk;
and `s3sync reembed` gives it to a collection written before context lines from the stored chunks alone.

Real protocols throughout: moto over HTTP, embedded Chroma, the bundled model, docling for HTML."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from s3sync_dagster.commands.cli import main
from s3sync_dagster.config import AppConfig
from s3sync_dagster.pipeline import store
from s3sync_dagster.pipeline.chroma import lifecycle, vectors
from s3sync_dagster.pipeline.chunking.chunk import chunk_text
from s3sync_dagster.pipeline.chunking.context import CONTEXT_KEY, context_lines, embedding_input
from s3sync_dagster.pipeline.chunking.tokens import TokenBudget
from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction
from s3sync_dagster.pipeline.embedding.functions import EmbeddingSpec
from s3sync_dagster.pipeline.lexicon import embedded as lexicon
from s3sync_dagster.pipeline.reembed import swap as reembed
from s3sync_dagster.pipeline.search import lexical as search_lexical
from s3sync_dagster.pipeline.search import query as search
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster_tests.conftest import ConfigFactory, CountingEmbedder, put

KEY = "deployment/concepts.md"
GUIDE = (
    "Written for the operations team.\n\n"
    "# Deployments Concepts\n\n"
    "How a program runs once it leaves a laptop and serves many users.\n\n"
    "## Server Memory\n\n"
    "Each copy of the program loads its own model, so four copies hold four models at once.\n\n"
    "```python\n# not a heading: a comment in a fence\nworkers = 4\n```\n\n"
    "Plan for the largest of them, times the number of copies you start.\n\n"
    "### Workers\n\n"
    "Start one worker per core and no more than that.\n\n"
    "Replication\n-----------\n\n"
    "Two replicas answer while a third one restarts.\n"
)
SHAPES = (
    "class Shape:\n"
    '    """A shape on the page."""\n\n'
    "    def area(self):\n"
    "        return 0\n\n"
    "    async def grow(self, by):\n"
    '        """Grow it."""\n'
    "        return by\n\n\n"
    "def free():\n"
    "    pass\n"
)


def contexts_of(collection: Any, object_key: str) -> list[tuple[str, str, dict[str, Any], Any]]:
    """(text, context, metadata, vector) of each chunk of the object, in order."""
    found = collection.get(where={"object_key": object_key}, include=["documents", "metadatas", "embeddings"])
    rows = sorted(
        zip(found["documents"], found["metadatas"], found["embeddings"], strict=True),
        key=lambda row: row[1]["chunk_index"],
    )
    return [(text, metadata.get(CONTEXT_KEY), metadata, vector) for text, metadata, vector in rows]


def the_chunk(rows: list[tuple[str, str, dict[str, Any], Any]], words: str) -> tuple[str, str, dict[str, Any], Any]:
    (row,) = [row for row in rows if words in row[0]]
    return row


# --- the line -----------------------------------------------------------------------------------


def test_markdown_chunks_carry_the_title_and_the_headings_in_effect_where_they_start() -> None:
    # Chunks as the chunker might cut them: text before the first heading, a heading opening a chunk (it is
    # under it), a fence whose "#" line is code, a chunk in the middle of a section, a setext heading.
    texts = [
        "Written for the operations team.\n\n",
        "# Deployments Concepts\n\nHow a program runs.\n\n",
        "## Server Memory\n\nFour copies hold four models.\n\n```python\n# not a heading\nx = 1\n```\n\n",
        "Plan for the largest of them.\n\n",
        "### Workers\n\nStart one worker per core.\n\n",
        "Replication\n-----------\n\nTwo replicas answer.\n",
    ]
    assert context_lines(KEY, "markdown", texts, None) == [
        f"{KEY} > Deployments Concepts",  # before the first heading: the object's title
        f"{KEY} > Deployments Concepts",
        f"{KEY} > Deployments Concepts > Server Memory",
        f"{KEY} > Deployments Concepts > Server Memory",
        f"{KEY} > Deployments Concepts > Server Memory > Workers",
        f"{KEY} > Deployments Concepts > Replication",
    ]
    # No level-1 heading: the key and the headings; markup is read as words; YAML front matter's title is the title.
    assert context_lines("a.md", "markdown", ["## The `search()` **API** [docs](x.html)\n\nText.\n"], None) == [
        "a.md > The search() API docs"
    ]
    assert context_lines("b.md", "markdown", ["---\ntitle: Field Guide\n---\n\nText.\n", "## Birds\n\nx\n"], None) == [
        "b.md > Field Guide",
        "b.md > Field Guide > Birds",
    ]
    # Plain text: the key alone.
    assert context_lines("notes/plain.txt", None, ["one\n", "two\n"], None) == ["notes/plain.txt"] * 2


def test_code_chunks_carry_their_enclosing_definitions() -> None:
    texts = [
        'class Shape:\n    """A shape on the page."""\n\n',
        "    def area(self):\n        return 0\n\n",
        '    async def grow(self, by):\n        """Grow it."""\n',
        "        return by\n\n\n",
        "def free():\n    pass\n",
    ]
    assert "".join(texts) == SHAPES
    assert context_lines("src/shapes.py", "python", texts, None) == [
        "src/shapes.py > class Shape",
        "src/shapes.py > class Shape > def area",
        "src/shapes.py > class Shape > async def grow",
        "src/shapes.py > class Shape > async def grow",
        "src/shapes.py > def free",
    ]
    go = ["package main\n\n", "func (s *Server) Start() error {\n", "\treturn nil\n}\n"]
    assert context_lines("cmd/main.go", "go", go, None)[1:] == ["cmd/main.go > func (s *Server) Start"] * 2


def test_nested_definitions_are_found_at_any_depth_and_deep_nesting_of_no_definition_gives_none() -> None:
    """Walked down the tree from the root: twelve nested functions each in the path of a chunk inside the
    innermost, a chunk after them back at the top, and 5,000 nested parentheses (no definition) in none."""
    depth = 12
    nested = "".join(f"{'    ' * n}def f{n}():\n" for n in range(depth)) + f"{'    ' * depth}return 1\n"
    texts = [nested[: nested.index("def f6")], nested[nested.index("def f6") :], "\n\nx = 2\n"]
    assert context_lines("deep.py", "python", texts, None) == [
        "deep.py > def f0",  # its first byte is f0's
        "deep.py > " + " > ".join(f"def f{n}" for n in range(7)),
        "deep.py",
    ]
    parentheses = "x = " + "(" * 5000 + "1" + ")" * 5000 + "\n"
    pieces = [parentheses[start : start + 800] for start in range(0, len(parentheses), 800)]
    assert context_lines("parens.py", "python", pieces, None) == ["parens.py"] * len(pieces)


def test_a_long_context_is_cut_from_its_least_specific_end_and_the_chunk_never() -> None:
    counter_file = EmbeddingSpec().token_budget().tokenizer_file
    budget = TokenBudget(max_tokens=40, tokenizer_file=counter_file, model="test", window=64)
    headings = "".join(
        f"{'#' * level} Heading {level} about {' '.join(['interplanetary logistics'] * 3)}\n\n" for level in range(1, 7)
    )
    text = headings + "".join(f"Sentence {n} of the innermost section, with words enough.\n\n" for n in range(12))
    chunks = [chunk.text for chunk in chunk_text(text, "deep/very/long/path/to/a/guide.md", tokens=budget).chunks]
    assert "".join(chunks) == text  # the chunker alone decides the chunks
    whole = context_lines("deep/very/long/path/to/a/guide.md", "markdown", chunks, None)
    cut = context_lines("deep/very/long/path/to/a/guide.md", "markdown", chunks, budget)
    # The write path's lines (its chunks are the chunker's: most lines are counted alone) are the same.
    assert context_lines("deep/very/long/path/to/a/guide.md", "markdown", chunks, budget, chunked=True) == cut
    counter = budget.counter()
    assert counter is not None
    inputs = [embedding_input(chunk, {CONTEXT_KEY: line}) for chunk, line in zip(chunks, cut, strict=True)]
    assert max(counter.count(inputs)) <= 64
    assert any(line != full for line, full in zip(cut, whole, strict=True))
    for line, full, chunk in zip(cut, whole, chunks, strict=True):
        assert full.endswith(line)  # what is kept is the most specific end
        if line:
            assert counter.count([embedding_input(chunk, {CONTEXT_KEY: line})])[0] <= 64
    # A chunk that fills the window leaves no room: its context is dropped, the chunk is whole.
    full_window = TokenBudget(max_tokens=64, tokenizer_file=counter_file, model="test", window=64)
    long_chunk = " ".join(["word"] * 62)
    assert counter.count([long_chunk]) == [64]
    assert context_lines("k.md", "markdown", ["# Title\n\n", long_chunk], full_window)[1] == ""
    # Without a tokenizer (a model behind an API) a byte counts as a token.
    by_bytes = TokenBudget(max_tokens=60, window=80)
    (line,) = context_lines("a/b/c/d.md", "markdown", ["## Alpha Beta Gamma\n\n" + "x" * 25], by_bytes)
    assert len(embedding_input("## Alpha Beta Gamma\n\n" + "x" * 25, {CONTEXT_KEY: line}).encode()) <= 80 - 16
    assert line == "Alpha Beta Gamma"


# --- written, embedded, hashed, indexed ------------------------------------------------------------


@pytest.fixture
def spec(bucket: str) -> SourceSpec:
    return SourceSpec(name="docs", bucket_name=bucket, collection_name=f"context-{bucket}"[:60], max_size_bytes=160)


@pytest.fixture
def collection(chroma_client: Any, embedding_function: Any, spec: SourceSpec) -> Any:
    # Opened as the engine opens collections: with the store's lexical index.
    return lifecycle.open_collection(
        chroma_client, spec.collection_name, embedding_function, metadata={"created_by": "s3sync-dagster"}
    )


def same_vector(stored: Any, computed: Any) -> bool:
    """The text's vector, whichever runtime made each: a process that has embedded 2,000 texts moves the `auto`
    runtime from ONNX to torch's bfloat16 (embed_runtimes.TORCH_AFTER_TEXTS), which agree to cosine >= 0.9999, not
    to 1e-5 per component; another text's vector is far below that."""
    a, b = np.asarray(stored, dtype=float), np.asarray(computed, dtype=float)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= 0.9999


def synced(s3: Any, spec: SourceSpec, collection: Any, embedder: Any, files: dict[str, str | bytes]) -> None:
    put(s3, spec.bucket_name, files)
    reports = sync_keys(s3, spec, lambda _: collection, embedder, list(files))
    assert all(report.status == "indexed" for report in reports), [(r.object_key, r.message) for r in reports]


def test_what_is_embedded_is_context_and_text_and_the_stored_document_is_the_text(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    synced(s3, spec, collection, embedder, {KEY: GUIDE, "src/shapes.py": SHAPES})
    rows = contexts_of(collection, KEY)
    assert len(rows) > 3 and "".join(text for text, *_ in rows) == GUIDE  # the documents are the text, whole
    text, line, _, _ = the_chunk(rows, "four copies")
    assert line == f"{KEY} > Deployments Concepts > Server Memory"  # issue 53's example
    assert the_chunk(rows, "one worker per core")[1] == f"{KEY} > Deployments Concepts > Server Memory > Workers"
    assert the_chunk(rows, "```python")[1] == f"{KEY} > Deployments Concepts > Server Memory"  # mid-section
    assert the_chunk(rows, "Written for")[1].startswith(f"{KEY} > Deployments Concepts")
    function = vectors.function_record(collection)
    model = ChromaDefaultFunction()
    for text, line, metadata, vector in rows + contexts_of(collection, "src/shapes.py"):
        embedded = f"{line}\n\n{text}"
        assert embedded in embedder.texts and text not in embedder.texts
        assert metadata["text_hash"] == vectors.text_hash(embedded, function)
        assert same_vector(vector, model([embedded])[0])
    # Hits read as before: the chunk's own text.
    (hit,) = search.search(collection, "how many models do four copies hold", mode="dense", n=1)
    assert hit.document == the_chunk(rows, "four copies")[0]


def test_a_chunk_under_another_heading_is_embedded_again_not_reused(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    closing = "The closing paragraph stays word for word the same in both versions.\n"
    first = (
        "# Guide\n\n## Alpha\n\n" + "An opening paragraph of the section, long enough to fill its chunk.\n\n" + closing
    )
    synced(s3, replace(spec, max_size_bytes=80), collection, embedder, {"g.md": first})
    before = the_chunk(contexts_of(collection, "g.md"), "closing paragraph")
    assert before[0] == closing and before[1] == "g.md > Guide > Alpha"
    embedder.texts.clear()
    second = first.replace("## Alpha", "## Omega")
    synced(s3, replace(spec, max_size_bytes=80), collection, embedder, {"g.md": second})
    after = the_chunk(contexts_of(collection, "g.md"), "closing paragraph")
    assert after[0] == closing and after[1] == "g.md > Guide > Omega"
    assert f"g.md > Guide > Omega\n\n{closing}" in embedder.texts  # the same text, embedded again
    assert after[2]["text_hash"] != before[2]["text_hash"]
    assert same_vector(after[3], ChromaDefaultFunction()([f"g.md > Guide > Omega\n\n{closing}"])[0])
    # The same text in another object is another context: embedded, never given this one's vector.
    embedder.texts.clear()
    synced(s3, spec, collection, embedder, {"h.txt": closing})
    assert embedder.texts == [f"h.txt\n\n{closing}"]


def test_docling_html_headings_make_the_context(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    page = (
        "<html><head><title>Ops</title></head><body><h1>Operations Guide</h1>"
        "<p>Everything the night shift needs to know before it starts.</p><h2>Backups</h2>"
        "<p>Nightly snapshots are kept for a week and then dropped.</p>"
        "<p>A restore takes about twenty minutes from the last snapshot.</p></body></html>"
    )
    synced(s3, replace(spec, max_size_bytes=90), collection, embedder, {"site/ops.html": page})
    rows = contexts_of(collection, "site/ops.html")
    assert the_chunk(rows, "restore takes")[1] == "site/ops.html > Operations Guide > Backups", rows
    assert the_chunk(rows, "night shift")[1] == "site/ops.html > Operations Guide"


def test_the_lexical_index_finds_a_chunk_by_a_heading_word_its_text_lacks(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    synced(s3, spec, collection, embedder, {KEY: GUIDE, "notes/other.md": "# Cooking\n\nMemory of a good soup.\n"})
    assert search_lexical.indexed(collection) is not None  # the index answers, not Chroma's filter
    rows = contexts_of(collection, KEY)
    plan = the_chunk(rows, "Plan for the largest")
    assert "memory" not in plan[0].lower() and "deployment" not in plan[0].lower()
    hits = search.search(collection, "deployment memory", mode="lexical", n=10)
    under = [hit for hit in hits if "Server Memory" in str(hit.metadata.get(CONTEXT_KEY))]
    assert plan[0] in [hit.document for hit in under]
    assert hits[0] in under and hits[0].document in {text for text, *_ in rows}  # hits are the chunks' own texts
    # The index holds context and text; its audit agrees with Chroma.
    found = lexicon.of(collection)
    assert found is not None and found.verify(collection) == []


# --- collections written before context lines -------------------------------------------------------


def without_contexts(collection: Any) -> None:
    """Make the collection as an earlier release wrote it: no context line, each vector and hash of the text."""
    found = collection.get(include=["documents"])
    model = ChromaDefaultFunction()
    function = vectors.function_record(collection)
    collection.update(
        ids=found["ids"],
        embeddings=list(model(found["documents"])),
        metadatas=[{CONTEXT_KEY: None, "text_hash": vectors.text_hash(text, function)} for text in found["documents"]],
    )
    built = lexicon.of(collection)
    if built is not None:
        built.rebuild(collection)
    assert all(CONTEXT_KEY not in metadata for metadata in collection.get(include=["metadatas"])["metadatas"])


def written_contexts(collection: Any) -> dict[str, str]:
    found = collection.get(include=["metadatas"])
    return {
        chunk_id: metadata[CONTEXT_KEY] for chunk_id, metadata in zip(found["ids"], found["metadatas"], strict=True)
    }


def drop_bucket(s3: Any, bucket: str) -> None:
    """No S3 request can succeed from here: whatever asks the bucket fails."""
    for listed in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=listed["Key"])
    s3.delete_bucket(Bucket=bucket)


def assert_contexts_as_written(collection: Any, written: dict[str, Any], function: Any) -> None:
    """Every chunk holds the line a sync wrote, and the function's vector of that line and its text."""
    found = collection.get(include=["documents", "metadatas", "embeddings"])
    assert {i: m[CONTEXT_KEY] for i, m in zip(found["ids"], found["metadatas"], strict=True)} == written
    inputs = [embedding_input(t, m) for t, m in zip(found["documents"], found["metadatas"], strict=True)]
    computed = function(inputs)
    assert all(same_vector(stored, vector) for stored, vector in zip(found["embeddings"], computed, strict=True))
    record = vectors.function_record(collection)
    assert [m["text_hash"] for m in found["metadatas"]] == [vectors.text_hash(i, record) for i in inputs]


@pytest.fixture
def configured(make_config: ConfigFactory, bucket: str, s3: Any, dagster_home: Path) -> tuple[AppConfig, Path, Any]:
    """A source synced into an embedded store, then made as an earlier release left it (no context lines)."""
    config, path = make_config(bucket, name="docs", chunking={"max_size_bytes": 160})
    spec = config.embedding.spec()
    source = config.sources[0].spec(spec)
    collection = config.chroma.store().collection(source.collection_name, spec, owner=source.owner)
    put(s3, bucket, {KEY: GUIDE, "src/shapes.py": SHAPES, "notes/plain.txt": "one line\n"})
    sync_keys(s3, source, lambda _: collection, spec.build(), [KEY, "src/shapes.py", "notes/plain.txt"])
    return config, path, collection


def test_reembed_gives_a_collection_written_without_contexts_its_lines_with_no_s3_request(
    configured: tuple[AppConfig, Path, Any], s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config, path, collection = configured
    written = written_contexts(collection)
    without_contexts(collection)
    plan = the_chunk(contexts_of(collection, KEY), "Plan for the largest")[0]
    assert plan not in [hit.document for hit in search.search(collection, "deployment memory", mode="lexical", n=10)]
    drop_bucket(s3, bucket)
    store.close_clients()
    assert main(["reembed", "docs", "--config", str(path)]) == 0
    assert "context lines added to" in capsys.readouterr().err
    store.close_clients()
    spec = config.embedding.spec()
    collection = config.chroma.store().collection(config.sources[0].collection_name, spec, create=False)
    assert_contexts_as_written(collection, written, ChromaDefaultFunction())
    assert plan in [hit.document for hit in search.search(collection, "deployment memory", mode="lexical", n=10)]
    # Nothing left to add: the second run changes nothing.
    assert main(["reembed", "docs", "--config", str(path)]) == 0
    assert "context lines added" not in capsys.readouterr().err


def test_a_model_change_gives_chunks_without_contexts_theirs_as_it_copies(
    configured: tuple[AppConfig, Path, Any], s3: Any, bucket: str
) -> None:
    config, _, collection = configured
    written = written_contexts(collection)
    without_contexts(collection)
    drop_bucket(s3, bucket)
    int8 = ChromaDefaultFunction(precision="int8")
    budget = config.sources[0].spec(config.embedding.spec()).tokens
    swapped, progress = reembed.run(config.chroma.store().client(), collection, int8, contexts=budget)
    assert progress.phase == "swapped" and progress.reconciled == 0  # a line the copy was given is no difference
    assert_contexts_as_written(swapped, written, int8)
