"""Tests for s3sync_dagster.pipeline.chunking.chunk: hard properties over generated input, plus examples."""

from __future__ import annotations

import importlib
import itertools
import random
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3sync_dagster.pipeline.chunking import chunk, grammars
from s3sync_dagster.pipeline.chunking.chunk import ChunkResult, chunk_text
from s3sync_dagster.pipeline.chunking.cuts import Limits
from s3sync_dagster.pipeline.chunking.grammars import SUPPORTED_LANGUAGES, language_for
from s3sync_dagster.pipeline.chunking.tokens import TokenBudget
from s3sync_dagster.pipeline.embedding.functions import EmbeddingSpec

PROPERTY_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- the hard properties -------------------------------------------------------------


def _line_span(text: str) -> int:
    return text.count("\n", 0, len(text) - 1) + 1


def assert_chunking_ok(text: str, result: ChunkResult, max_bytes: int, max_lines: int | None) -> None:
    """Every hard property of a chunking; max_lines=None when lines are not limited."""
    chunks = result.chunks
    assert "".join(c.text for c in chunks) == text
    if not text:
        assert chunks == []
    offset = 0
    previous_end_line = 0
    for index, piece in enumerate(chunks):
        assert piece.text, f"chunk {index} is empty"
        size = len(piece.text.encode("utf-8"))
        assert size <= max_bytes, f"chunk {index} has {size} bytes > {max_bytes}"
        assert text[offset : offset + len(piece.text)] == piece.text
        expected_start = text.count("\n", 0, offset) + 1
        expected_end = text.count("\n", 0, offset + len(piece.text) - 1) + 1
        assert (piece.start_line, piece.end_line) == (expected_start, expected_end), index
        assert piece.start_line <= piece.end_line
        # Consecutive: a chunk starts on the line the previous one ended on, or the next.
        assert piece.start_line in (previous_end_line, previous_end_line + 1)
        if max_lines is not None:
            assert piece.end_line - piece.start_line + 1 <= max_lines, index
        previous_end_line = piece.end_line
        offset += len(piece.text)
    # A blank chunk is acceptable only where merging it into a neighbour would break a limit.
    for index, piece in enumerate(chunks):
        if not piece.text.isspace():
            continue
        for neighbour in (index - 1, index + 1):
            if 0 <= neighbour < len(chunks):
                first, second = sorted((index, neighbour))
                merged = chunks[first].text + chunks[second].text
                too_big = len(merged.encode("utf-8")) > max_bytes
                too_long = max_lines is not None and _line_span(merged) > max_lines
                assert too_big or too_long, f"blank chunk {index} could join chunk {neighbour}"


# --- strategies ----------------------------------------------------------------------

_PIECES = ["\n", "\r\n", "\r", " ", "\t", "    ", "é", "€", "中文", "😀", "🧑‍🚀", "\u00a0", "\u2028", "x"]

_line = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(["a", "é", "€", "😀", " "]), min_size=0, max_size=300),
    st.lists(st.sampled_from(_PIECES), max_size=30).map("".join),
)

any_text = st.one_of(
    st.text(max_size=300),
    st.lists(_line, max_size=40).flatmap(
        lambda lines: st.sampled_from(["\n", "\r\n", "\r"]).map(lambda sep: sep.join(lines))
    ),
    st.lists(st.sampled_from(_PIECES), max_size=200).map("".join),
)

max_bytes_st = st.one_of(st.integers(16, 64), st.integers(65, 600), st.just(4096))
max_lines_st = st.integers(1, 12)

# Code and markdown are assembled with a seeded random.Random: drawing every token
# through hypothesis costs far more time than chunking the result.
seeded = st.randoms(use_true_random=False)

_WORD_CHOICES = ["alpha", "beta", "é", "€uro", "数据", "😀", "x", "long" * 8, "gamma", "q\tz"]


def _ident(rng: random.Random) -> str:
    return rng.choice("abcdefghij") + "".join(rng.choices("klmnopqrstuvwxyz0123456789_", k=rng.randint(0, 10)))


def _words(rng: random.Random) -> str:
    return " ".join(rng.choices(_WORD_CHOICES, k=rng.randint(1, 12)))


def make_python(rng: random.Random) -> str:
    def statements(indent: str, depth: int) -> list[str]:
        out: list[str] = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.randint(0, 5 if depth < 3 else 3)
            name = _ident(rng)
            if kind == 0:
                out.append(f"{indent}{name} = {rng.randint(-99, 10**9)} + len({_words(rng)!r})")
            elif kind == 1:
                out.append(f"{indent}# {_words(rng)}")
            elif kind == 2:
                out.append(f"{indent}print({name}, {_words(rng)!r})")
            elif kind == 3:
                out.append(f"{indent}return {name}")
            elif kind == 4:
                out.append(f"{indent}if {name}:")
                out.extend(statements(indent + "    ", depth + 1))
            else:
                out.append(f"{indent}for {name} in range({rng.randint(0, 99)}):")
                out.extend(statements(indent + "    ", depth + 1))
        return out

    parts: list[str] = []
    for _ in range(rng.randint(0, 8)):
        name = _ident(rng)
        kind = rng.randint(0, 3)
        if kind == 0:
            body = "\n".join(statements("    ", 0))
            parts.append(f"def {name}(a, b):\n    {_words(rng)!r}\n{body}\n")
        elif kind == 1:
            methods = "\n\n".join(
                f"    def {_ident(rng)}(self):\n" + "\n".join(statements("        ", 1))
                for _ in range(rng.randint(1, 3))
            )
            parts.append(f"class {name.title()}:\n{methods}\n")
        elif kind == 2:
            parts.append(f"@decorator\ndef {name}():\n" + "\n".join(statements("    ", 0)) + "\n")
        else:
            parts.append(f"import {name}\n# {_words(rng)}\n")
    return rng.choice(["\n", "\n\n", "\n\n\n", "\r\n"]).join(parts)


C_LIKE_TEMPLATES = {
    "javascript": ("function {n}(a, b) {{", "class {N} {{\n  {n}(a) {{\n{b}\n  }}\n}}"),
    "go": ("func {n}(a int) int {{", "type {N} struct {{\n\tA int\n\tB string\n}}"),
    "c": ("static int {n}(int a, char *b) {{", "struct {n} {{\n  int a;\n  char *b;\n}};"),
    "rust": ("fn {n}(a: i32) -> i32 {{", "#[derive(Debug)]\nstruct {N} {{\n    a: i32,\n}}"),
}


def make_c_like(rng: random.Random, language: str) -> str:
    """JavaScript, Go, C or Rust: functions, types and comments with nested blocks."""

    def body(indent: str, depth: int) -> str:
        lines: list[str] = []
        for _ in range(rng.randint(1, 5)):
            name = _ident(rng)
            kind = rng.randint(0, 3 if depth < 3 else 1)
            if kind == 0:
                lines.append(f'{indent}{name}({rng.randint(0, 9)}, "{_words(rng)}");')
            elif kind == 1:
                lines.append(f"{indent}// {_words(rng)}")
            else:
                keyword = "if" if kind == 2 else "while"
                lines.append(f"{indent}{keyword} ({name}) {{\n{body(indent + '  ', depth + 1)}\n{indent}}}")
        return "\n".join(lines)

    function_header, type_template = C_LIKE_TEMPLATES[language]
    parts: list[str] = []
    for _ in range(rng.randint(0, 8)):
        name = _ident(rng)
        kind = rng.randint(0, 2)
        if kind == 0:
            parts.append(f"{function_header.format(n=name)}\n{body('  ', 0)}\n}}\n")
        elif kind == 1:
            parts.append(type_template.format(n=name, N=name.title(), b=body("    ", 1)) + "\n")
        else:
            parts.append(f"/* {_words(rng)} */\n")
    return rng.choice(["\n", "\n\n", "\r\n"]).join(parts)


def make_markdown(rng: random.Random) -> str:
    blocks: list[str] = []
    for _ in range(rng.randint(0, 14)):
        kind = rng.randint(0, 6)
        if kind == 0:
            blocks.append("#" * rng.randint(1, 4) + " " + _words(rng))
        elif kind == 1:
            blocks.append("\n".join(_words(rng) for _ in range(rng.randint(1, 6))))
        elif kind == 2:
            marker = rng.choice(["-", "*", "1."])
            blocks.append("\n".join(f"{marker} {_words(rng)}" for _ in range(rng.randint(1, 6))))
        elif kind == 3:
            rows = [f"| {_ident(rng)} | {_words(rng)} |" for _ in range(rng.randint(1, 6))]
            blocks.append("\n".join(["| key | value |", "|---|---|", *rows]))
        elif kind == 4:
            code = "\n".join(_words(rng) for _ in range(rng.randint(0, 8)))
            blocks.append(f"```{rng.choice(['', 'python', 'js'])}\n{code}\n```")
        elif kind == 5:
            blocks.append("> " + _words(rng))
        else:
            blocks.append("".join(rng.choices(_PIECES, k=rng.randint(0, 30))))
    separator = rng.choice(["\n\n", "\n", "\r\n\r\n", "\n\n\n"])
    return separator.join(blocks) + rng.choice(["", "\n"])


def _mangle(text: str, cuts: list[int]) -> str:
    """Break syntax by deleting characters at the given positions."""
    kept = list(text)
    for position in sorted({c % len(kept) for c in cuts} if kept else set(), reverse=True):
        del kept[position]
    return "".join(kept)


# --- property tests -----------------------------------------------------------------

FILE_NAMES = ["notes.txt", "a.py", "b.md", "c.js", "d.go", "e.c", "f.rs", "g.json", "h.yaml", "README"]


@PROPERTY_SETTINGS
@given(text=any_text, max_bytes=max_bytes_st, max_lines=max_lines_st, file_name=st.sampled_from(FILE_NAMES))
def test_lines_mode_properties(text: str, max_bytes: int, max_lines: int, file_name: str) -> None:
    result = chunk_text(text, file_name, mode="lines", max_size_bytes=max_bytes, max_lines=max_lines)
    assert result.chunker == "lines"
    assert_chunking_ok(text, result, max_bytes, max_lines)


@PROPERTY_SETTINGS
@given(
    text=any_text,
    max_bytes=max_bytes_st,
    max_lines=max_lines_st,
    file_name=st.sampled_from(sorted({f"x{ext}" for ext in SUPPORTED_LANGUAGES} | {"x.txt"})),
)
def test_tree_sitter_mode_properties_on_any_text(text: str, max_bytes: int, max_lines: int, file_name: str) -> None:
    result = chunk_text(text, file_name, max_size_bytes=max_bytes, max_lines=max_lines)
    line_limit = max_lines if result.chunker == "lines" else None
    assert_chunking_ok(text, result, max_bytes, line_limit)


@PROPERTY_SETTINGS
@given(rng=seeded, max_bytes=max_bytes_st, cuts=st.lists(st.integers(0, 10**6), max_size=3))
def test_generated_python(rng: random.Random, max_bytes: int, cuts: list[int]) -> None:
    source = make_python(rng)
    for text in (source, _mangle(source, cuts)):
        result = chunk_text(text, "module.py", max_size_bytes=max_bytes)
        assert result.chunker == "tree_sitter:python"
        assert result.language == "python"
        assert_chunking_ok(text, result, max_bytes, None)
        lines = chunk_text(text, "module.py", mode="lines", max_size_bytes=max_bytes, max_lines=7)
        assert_chunking_ok(text, lines, max_bytes, 7)


@PROPERTY_SETTINGS
@given(data=st.data(), max_bytes=max_bytes_st)
def test_generated_c_like_code(data: st.DataObject, max_bytes: int) -> None:
    language, extension = data.draw(
        st.sampled_from([("javascript", ".js"), ("go", ".go"), ("c", ".c"), ("rust", ".rs")])
    )
    source = make_c_like(data.draw(seeded), language)
    text = data.draw(st.sampled_from([source, _mangle(source, [7, 301, 1999])]))
    result = chunk_text(text, f"src/file{extension}", max_size_bytes=max_bytes)
    assert result.chunker == f"tree_sitter:{language}"
    assert_chunking_ok(text, result, max_bytes, None)


@settings(max_examples=80, deadline=None)
@given(rng=seeded, max_bytes=max_bytes_st, language=st.sampled_from(["python", "javascript", "c", "markdown"]))
def test_tree_stage_alone_keeps_the_limits(rng: random.Random, max_bytes: int, language: str) -> None:
    """The tree walk itself must respect the limits, not rely on the final safety net."""
    if language == "python":
        text = make_python(rng)
    elif language == "markdown":
        text = make_markdown(rng)
    else:
        text = make_c_like(rng, language)
    data = text.encode()
    cuts = chunk._tree_cuts(data, language, Limits(max_bytes), 10)
    assert cuts is not None
    assert cuts[0] == 0 and cuts[-1] == len(data)
    for start, end in itertools.pairwise(cuts):
        assert 0 < end - start <= max_bytes
        data[start:end].decode("utf-8")  # cuts fall between characters


def test_tree_stage_packs_exactly_up_to_the_limit() -> None:
    data = b"a=1\n" * 10  # ten 4-byte statements
    for max_bytes, expected in ((15, [12, 12, 12, 4]), (16, [16, 16, 8]), (17, [16, 16, 8])):
        cuts = chunk._tree_cuts(data, "python", Limits(max_bytes), 10)
        assert cuts is not None
        assert [end - start for start, end in itertools.pairwise(cuts)] == expected


@PROPERTY_SETTINGS
@given(rng=seeded, max_bytes=max_bytes_st, max_lines=max_lines_st)
def test_generated_markdown(rng: random.Random, max_bytes: int, max_lines: int) -> None:
    text = make_markdown(rng)
    result = chunk_text(text, "doc.md", max_size_bytes=max_bytes, max_lines=max_lines)
    assert result.chunker == "tree_sitter:markdown"
    assert_chunking_ok(text, result, max_bytes, None)
    extracted = chunk_text(text, "report.pdf", markdown=True, max_size_bytes=max_bytes, max_lines=max_lines)
    assert extracted.chunks == result.chunks
    lines = chunk_text(text, "doc.md", mode="lines", max_size_bytes=max_bytes, max_lines=max_lines)
    assert_chunking_ok(text, lines, max_bytes, max_lines)


@settings(max_examples=60, deadline=None)
@given(rng=seeded, extra=st.integers(0, 200))
def test_markdown_sections_that_fit_start_with_their_heading(rng: random.Random, extra: int) -> None:
    texts = [
        f"## {_words(rng)}\n\n" + "\n\n".join(_words(rng) for _ in range(rng.randint(1, 3))) + "\n\n"
        for _ in range(rng.randint(1, 8))
    ]
    max_bytes = max(16, *(len(t.encode()) for t in texts)) + extra
    result = chunk_text("".join(texts), "doc.md", max_size_bytes=max_bytes)
    assert_chunking_ok("".join(texts), result, max_bytes, None)
    for piece in result.chunks:
        assert piece.text.startswith("## "), piece.text
    # No section is split: every chunk is a run of whole sections.
    boundaries = {sum(len(t) for t in texts[:i]) for i in range(len(texts) + 1)}
    offset = 0
    for piece in result.chunks:
        offset += len(piece.text)
        assert offset in boundaries


# --- examples: code ------------------------------------------------------------------

PYTHON_FUNCTIONS = "\n\n".join(
    f'def function_{i}(value):\n    """Return value plus {i}."""\n    total = value + {i}\n'
    f"    for step in range({i}):\n        total += step\n    return total\n"
    for i in range(8)
)


def test_python_chunks_start_at_definitions() -> None:
    source = "import os\n\n\n" + PYTHON_FUNCTIONS + "\n\nclass Holder:\n    value = 1\n"
    result = chunk_text(source, "pkg/mod.py", max_size_bytes=300)
    assert result.chunker == "tree_sitter:python"
    assert len(result.chunks) > 3
    assert_chunking_ok(source, result, 300, None)
    for piece in result.chunks[1:]:
        assert piece.text.startswith(("def ", "class ")), piece.text
    # Every definition fits, so no definition is split across chunks.
    for i in range(8):
        assert sum(f"def function_{i}(" in piece.text for piece in result.chunks) == 1


def test_split_definition_does_not_share_chunks_with_neighbours() -> None:
    big = "def big():\n" + "".join(f"    value_{i} = compute({i}, 'some text here')\n" for i in range(40))
    source = "def small_a():\n    return 1\n\n\n" + big + "\n\ndef small_b():\n    return 2\n"
    result = chunk_text(source, "m.py", max_size_bytes=400)
    assert_chunking_ok(source, result, 400, None)
    texts = [piece.text for piece in result.chunks]
    assert texts[0].startswith("def small_a") and "def big" not in texts[0]
    assert texts[1].startswith("def big")
    assert texts[-1].startswith("def small_b")
    assert all("value_" not in text for text in (texts[0], texts[-1]))


def test_comments_and_decorators_stay_with_the_next_definition() -> None:
    filler = "\n".join(f"    x{i} = {i}" for i in range(12))
    source = (
        f"def first():\n{filler}\n\n# About second.\n@decorated\ndef second():\n{filler}\n\n"
        f"// not python but a comment line is fine\n"
    )
    rust = f"fn first() {{\n{filler};\n}}\n\n/// About second.\n#[inline]\nfn second() {{\n{filler};\n}}\n"
    for text, name, size in ((source, "a.py", 200), (rust, "a.rs", 200)):
        result = chunk_text(text, name, max_size_bytes=size)
        assert_chunking_ok(text, result, size, None)
        holder = next(p for p in result.chunks if "second()" in p.text)
        assert "About second." in holder.text, [p.text for p in result.chunks]


def test_trailing_comment_stays_with_its_line() -> None:
    big = "def big():\n" + "".join(f"    value_{i} = {i}\n" for i in range(20))
    source = f"limit = 10  # about limit\n# about big\n{big}"
    result = chunk_text(source, "a.py", max_size_bytes=120)
    assert_chunking_ok(source, result, 120, None)
    assert result.chunks[0].text == "limit = 10  # about limit\n"
    assert result.chunks[1].text.startswith("# about big\ndef big():")


def test_lone_surrogates_do_not_crash() -> None:
    text = "x = '\ud800 é'\n# \udc80\n" * 20
    for name in ("a.py", "a.md", "a.txt"):
        result = chunk_text(text, name, max_size_bytes=20)
        assert "".join(c.text for c in result.chunks) == text
        assert all(0 < len(c.text.encode("utf-8", "surrogatepass")) <= 20 for c in result.chunks)


def test_class_methods_are_split_at_method_boundaries() -> None:
    methods = "\n".join(f"    def method_{i}(self):\n        return self.value * {i} + {i}\n" for i in range(10))
    source = f"class Big:\n    value = 3\n\n{methods}"
    result = chunk_text(source, "a.py", max_size_bytes=150)
    assert_chunking_ok(source, result, 150, None)
    assert result.chunks[0].text.startswith("class Big:")
    for piece in result.chunks[1:]:
        assert piece.text.startswith("    def method_"), piece.text


def test_line_numbers_with_crlf_and_lone_cr() -> None:
    text = "a\r\nb\rc\n\nd"
    result = chunk_text(text, "x.txt", mode="lines", max_size_bytes=16, max_lines=2)
    assert [(c.text, c.start_line, c.end_line) for c in result.chunks] == [
        ("a\r\nb\rc\n", 1, 2),
        ("\nd", 3, 4),
    ]


def test_lines_mode_groups_max_lines() -> None:
    text = "".join(f"line {i}\n" for i in range(25))
    result = chunk_text(text, "x.py", mode="lines", max_lines=10)
    assert [(c.start_line, c.end_line) for c in result.chunks] == [(1, 10), (11, 20), (21, 25)]
    assert result.chunker == "lines" and result.language == "python"


def test_long_line_is_split_at_character_boundaries() -> None:
    text = "😀" * 100 + "\nend"
    result = chunk_text(text, "x.txt", max_size_bytes=18)
    assert_chunking_ok(text, result, 18, 10)
    assert result.chunks[0].text == "😀" * 4


def test_whitespace_only_and_empty_text() -> None:
    assert chunk_text("", "a.py").chunks == []
    assert chunk_text("", "a.txt", mode="lines").chunks == []
    assert chunk_text("", "a.md").chunker == "tree_sitter:markdown"
    for name in ("a.py", "a.txt", "a.md"):
        result = chunk_text(" \n\n\t\n", name)
        assert [c.text for c in result.chunks] == [" \n\n\t\n"]


def test_blank_runs_are_folded_into_code() -> None:
    text = "x = 1" + "\n" * 30 + "y = 2\n"
    result = chunk_text(text, "a.py", max_size_bytes=24)
    assert_chunking_ok(text, result, 24, None)
    assert all(not piece.text.isspace() for piece in result.chunks)


def test_broken_code_is_still_covered() -> None:
    broken = {
        "a.py": "def f(:\n    return ((1,\nclass\n  x = ] + 'unterminated\n" * 20,
        "a.js": "function (a, { return [1, 2; } } } class { " * 30,
        "a.c": "int main( { if (x { return; } #include \n" * 30,
        "a.go": "func ( { package \n\tx := \n" * 40,
    }
    for name, text in broken.items():
        result = chunk_text(text, name, max_size_bytes=100)
        assert result.chunker.startswith("tree_sitter:")
        assert_chunking_ok(text, result, 100, None)


def test_deep_nesting_does_not_recurse_too_far() -> None:
    text = "x = " + "(" * 3000 + "1" + ")" * 3000 + "\n" + "y = " + " + ".join(f"a{i}" for i in range(5000))
    result = chunk_text(text, "deep.py", max_size_bytes=64)
    assert_chunking_ok(text, result, 64, None)


def test_one_megabyte_chunks_quickly() -> None:
    source = PYTHON_FUNCTIONS.replace("value", "välue") * 900
    assert len(source.encode()) > 1_000_000
    # A guard against work that grows with the square of the size (~0.3 s here), not a speed measurement: this
    # process's CPU time, which other processes' load on the machine does not lengthen (wall time would).
    started = time.process_time()
    result = chunk_text(source, "big.py")
    elapsed = time.process_time() - started
    assert result.chunker == "tree_sitter:python"
    assert "".join(c.text for c in result.chunks) == source
    assert elapsed < 5, elapsed
    long_line = "€" * 400_000
    started = time.process_time()
    lines = chunk_text(long_line, "big.txt")
    assert time.process_time() - started < 2
    assert "".join(c.text for c in lines.chunks) == long_line


def test_parse_over_budget_falls_back_to_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    source = PYTHON_FUNCTIONS * 30
    monkeypatch.setattr(grammars, "_PARSE_SECONDS_BASE", -1.0)
    monkeypatch.setattr(grammars, "_PARSE_SECONDS_PER_MB", 0.0)
    result = chunk_text(source, "a.py", max_size_bytes=200, max_lines=4)
    assert result.chunker == "lines" and result.language == "python"
    assert_chunking_ok(source, result, 200, 4)
    monkeypatch.undo()
    # This thread's halted parser must start afresh, not resume the abandoned
    # parse: compare with a thread whose parser never was halted.
    other = "class Small:\n    x = 1\n\n\n" + "def g(a):\n    return a\n\n\n" * 4
    again = chunk_text(other, "a.py", max_size_bytes=30)
    fresh: list[ChunkResult] = []
    worker = threading.Thread(target=lambda: fresh.append(chunk_text(other, "a.py", max_size_bytes=30)))
    worker.start()
    worker.join()
    assert again == fresh[0]
    assert again.chunker == "tree_sitter:python"
    assert [p.text.split("(")[0].split(":")[0] for p in again.chunks] == ["class Small"] + ["def g"] * 4


def test_missing_grammar_falls_back_to_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_grammar(language: str) -> None:
        raise ImportError(f"No module named tree_sitter_{language}")

    monkeypatch.setattr(chunk, "parser_for", no_grammar)
    result = chunk_text("x = 1\n" * 30, "a.py", max_lines=5)
    assert result.chunker == "lines"
    assert [(c.start_line, c.end_line) for c in result.chunks] == [
        (1, 5),
        (6, 10),
        (11, 15),
        (16, 20),
        (21, 25),
        (26, 30),
    ]


def test_threads_get_the_same_chunks() -> None:
    texts = [(PYTHON_FUNCTIONS, "a.py"), (PYTHON_FUNCTIONS.replace("def ", "function ").replace(":\n", " {\n"), "a.js")]
    expected = [chunk_text(t, n, max_size_bytes=200) for t, n in texts]
    failures: list[str] = []

    def work() -> None:
        for _ in range(20):
            for (text, name), want in zip(texts, expected, strict=True):
                if chunk_text(text, name, max_size_bytes=200) != want:
                    failures.append(name)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- examples: markdown --------------------------------------------------------------

MARKDOWN = """Intro line before any heading.

# Guide

Welcome paragraph that says what the guide is about.

## Install

Run the installer.

- step one
- step two

## Configure

| key | value |
|-----|-------|
| a   | 1     |

```python
print("hello")
```

## Use

Just use it.
"""


def test_markdown_heading_starts_each_chunk_when_sections_fit() -> None:
    result = chunk_text(MARKDOWN, "guide.md", max_size_bytes=120)
    assert result.chunker == "tree_sitter:markdown" and result.language == "markdown"
    assert_chunking_ok(MARKDOWN, result, 120, None)
    texts = [c.text for c in result.chunks]
    # "# Guide" is too big as a whole, so it is split into its children: its
    # heading stays with its paragraph, and each subsection that fits is whole.
    assert texts == [
        "Intro line before any heading.\n\n",
        "# Guide\n\nWelcome paragraph that says what the guide is about.\n\n"
        "## Install\n\nRun the installer.\n\n- step one\n- step two\n\n",
        MARKDOWN[MARKDOWN.index("## Configure") :],
    ]
    narrow = chunk_text(MARKDOWN, "guide.md", max_size_bytes=100)
    assert_chunking_ok(MARKDOWN, narrow, 100, None)
    assert [c.text.splitlines()[0] for c in narrow.chunks] == [
        "Intro line before any heading.",
        "# Guide",
        "## Install",
        "## Configure",
        "## Use",
    ]
    whole = chunk_text(MARKDOWN, "guide.md")
    assert [c.text for c in whole.chunks] == [MARKDOWN]


def test_markdown_big_section_splits_between_blocks() -> None:
    paragraphs = [f"Paragraph {i} " + "words " * 12 + "end." for i in range(6)]
    text = "# Title\n\n" + "\n\n".join(paragraphs) + "\n"
    result = chunk_text(text, "a.markdown", max_size_bytes=180)
    assert_chunking_ok(text, result, 180, None)
    assert result.chunks[0].text.startswith("# Title\n\nParagraph 0")
    for piece in result.chunks:
        # No paragraph is cut: each one lies entirely inside one chunk.
        assert piece.text.strip().endswith("end."), piece.text


def test_markdown_flag_overrides_extension() -> None:
    result = chunk_text(MARKDOWN, "report.pdf", markdown=True, max_size_bytes=120)
    assert result.chunker == "tree_sitter:markdown" and result.language == "markdown"
    assert chunk_text(MARKDOWN, "report.pdf", max_size_bytes=120).chunker == "lines"
    assert chunk_text(MARKDOWN, "report.pdf", max_size_bytes=120).language is None
    assert chunk_text(MARKDOWN, "x.md", mode="lines").chunker == "lines"


def test_oversized_paragraph_falls_back_to_lines() -> None:
    paragraph = "\n".join(f"line {i} of a very long paragraph" for i in range(40))
    text = f"# Head\n\n{paragraph}\n"
    result = chunk_text(text, "a.md", max_size_bytes=200, max_lines=5)
    assert_chunking_ok(text, result, 200, 5)
    assert result.chunks[0].text.startswith("# Head\n")


# --- languages and arguments ---------------------------------------------------------

LANGUAGE_SAMPLES: dict[str, tuple[tuple[str, ...], str]] = {
    "python": ((".py", ".pyi"), "def f(x):\n    return x\n"),
    "javascript": ((".js", ".mjs", ".cjs", ".jsx"), "function f(x) { return <div>{x}</div>; }\n"),
    "typescript": ((".ts", ".mts", ".cts"), "function f(x: number): number { return x; }\n"),
    "tsx": ((".tsx",), "const f = (x: number) => <div>{x}</div>;\n"),
    "go": ((".go",), "package main\n\nfunc f(x int) int { return x }\n"),
    "rust": ((".rs",), "fn f(x: i32) -> i32 { x }\n"),
    "java": ((".java",), "class A { int f(int x) { return x; } }\n"),
    "c": ((".c", ".h"), "int f(int x) { return x; }\n"),
    "cpp": ((".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx"), "template <class T> T f(T x) { return x; }\n"),
    "csharp": ((".cs",), "class A { int F(int x) { return x; } }\n"),
    "ruby": ((".rb",), "def f(x)\n  x\nend\n"),
    "php": ((".php",), "<?php\nfunction f($x) { return $x; }\n"),
    "bash": ((".sh", ".bash"), 'f() {\n  echo "$1"\n}\n'),
    "kotlin": ((".kt", ".kts"), "fun f(x: Int): Int = x\n"),
    "scala": ((".scala",), "object A { def f(x: Int): Int = x }\n"),
    "swift": ((".swift",), "func f(x: Int) -> Int { return x }\n"),
    "lua": ((".lua",), "local function f(x) return x end\n"),
    "haskell": ((".hs",), "f :: Int -> Int\nf x = x\n"),
    "css": ((".css",), "a { color: red; }\n"),
    "json": ((".json",), '{"a": [1, 2]}\n'),
    "yaml": ((".yaml", ".yml"), "a: 1\nb: [1, 2]\n"),
    "toml": ((".toml",), "[a]\nb = 1\n"),
    "markdown": ((".md", ".markdown", ".mdx"), "# Title\n\nText.\n"),
}


@pytest.mark.parametrize("language", sorted(LANGUAGE_SAMPLES))
def test_every_language_maps_and_parses(language: str) -> None:
    extensions, sample = LANGUAGE_SAMPLES[language]
    for extension in extensions:
        assert SUPPORTED_LANGUAGES[extension] == language
        assert language_for(f"dir/File{extension.upper()}") == language
    # The grammar wheel is installed, loads with this tree-sitter and parses the sample.
    tree = grammars.parser_for(language).parse(sample.encode())
    assert not tree.root_node.has_error, str(tree.root_node)
    result = chunk_text(sample * 40, f"x{extensions[0]}", max_size_bytes=64)
    assert result.chunker == f"tree_sitter:{language}"
    assert result.language == language
    assert_chunking_ok(sample * 40, result, 64, None)


def test_every_supported_extension_has_a_tested_language() -> None:
    assert set(SUPPORTED_LANGUAGES.values()) == set(LANGUAGE_SAMPLES)


@pytest.mark.parametrize("name", ["notes.txt", "README", "archive.tar.gz", ".bashrc", "Makefile", "data.csv"])
def test_other_files_have_no_language(name: str) -> None:
    assert language_for(name) is None
    assert chunk_text("a\nb\n", name).chunker == "lines"


@pytest.mark.parametrize(
    ("max_size_bytes", "max_lines", "named"),
    [
        (15, 10, "max_size_bytes"),
        (0, 10, "max_size_bytes"),
        (-5, 10, "max_size_bytes"),
        (4096, 0, "max_lines"),
        (4096, -1, "max_lines"),
    ],
)
def test_bad_limits_raise(max_size_bytes: int, max_lines: int, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        chunk_text("text", "a.py", max_size_bytes=max_size_bytes, max_lines=max_lines)


def test_bad_mode_raises() -> None:
    with pytest.raises(ValueError, match="mode"):
        chunk_text("text", "a.py", mode="words")  # type: ignore[arg-type]


def test_smallest_limits_are_accepted() -> None:
    text = "ab😀c\n" * 5
    result = chunk_text(text, "a.py", max_size_bytes=16, max_lines=1)
    assert_chunking_ok(text, result, 16, None)


# --- token budgets: every chunk fits what the embedding model reads -------------------------------

TOKENS = EmbeddingSpec().token_budget(256)  # all-MiniLM-L6-v2's window: 256 tokens, [CLS] and [SEP] included
COUNTER = TOKENS.counter()
assert COUNTER is not None
token_budgets_st = st.one_of(st.integers(6, 40), st.integers(41, 256))


def assert_tokens_ok(text: str, result: ChunkResult, max_tokens: int, max_bytes: int, max_lines: int | None) -> None:
    """The hard properties, and each chunk costs the model at most max_tokens counted alone."""
    assert "".join(c.text for c in result.chunks) == text
    counts = COUNTER.count([c.text for c in result.chunks])
    assert all(count <= max_tokens for count in counts), (max_tokens, max(counts))
    offset = 0
    for index, piece in enumerate(result.chunks):
        assert piece.text, f"chunk {index} is empty"
        assert len(piece.text.encode("utf-8", "surrogatepass")) <= max_bytes
        expected = (text.count("\n", 0, offset) + 1, text.count("\n", 0, offset + len(piece.text) - 1) + 1)
        assert (piece.start_line, piece.end_line) == expected, index
        if max_lines is not None:
            assert piece.end_line - piece.start_line + 1 <= max_lines, index
        offset += len(piece.text)


def _budget(max_tokens: int) -> TokenBudget:
    return TokenBudget(max_tokens, TOKENS.tokenizer_file, TOKENS.model)


@PROPERTY_SETTINGS
@given(text=any_text, max_tokens=token_budgets_st, max_bytes=max_bytes_st, max_lines=max_lines_st)
def test_token_budget_holds_on_any_text(text: str, max_tokens: int, max_bytes: int, max_lines: int) -> None:
    for mode, name in (("lines", "notes.txt"), ("tree_sitter", "doc.md"), ("tree_sitter", "code.py")):
        result = chunk_text(
            text, name, mode=mode, max_size_bytes=max_bytes, max_lines=max_lines, tokens=_budget(max_tokens)
        )
        assert_tokens_ok(text, result, max_tokens, max_bytes, max_lines if mode == "lines" else None)


@PROPERTY_SETTINGS
@given(rng=seeded, max_tokens=token_budgets_st, language=st.sampled_from(["python", "javascript", "c", "markdown"]))
def test_token_budget_holds_on_generated_code_and_markdown(rng: random.Random, max_tokens: int, language: str) -> None:
    if language == "python":
        text, name = make_python(rng), "gen.py"
    elif language == "markdown":
        text, name = make_markdown(rng), "gen.md"
    else:
        text, name = make_c_like(rng, language), {"javascript": "gen.js", "c": "gen.c"}[language]
    result = chunk_text(text, name, tokens=_budget(max_tokens))
    assert_tokens_ok(text, result, max_tokens, 4096, None)
    assert result.chunker == f"tree_sitter:{language}"


def test_without_a_token_budget_chunks_run_past_the_window() -> None:
    # What the budget fixes: 4096-byte chunks of prose are about 800 tokens, three times the window.
    text = "\n\n".join(" ".join(f"Sentence {n} of paragraph {p} says something." for n in range(12)) for p in range(40))
    unbounded = chunk_text(text, "doc.md", max_size_bytes=4096)
    assert max(COUNTER.count([c.text for c in unbounded.chunks])) > 700
    bounded = chunk_text(text, "doc.md", max_size_bytes=4096, tokens=TOKENS)
    assert_tokens_ok(text, bounded, 256, 4096, None)
    assert len(bounded.chunks) > len(unbounded.chunks)


def test_an_over_long_line_is_cut_after_sentences() -> None:
    paragraph = " ".join(f"The river number {n} flows past the old mill before it reaches the sea." for n in range(60))
    result = chunk_text(paragraph + "\n", "notes.md", tokens=_budget(64))
    assert_tokens_ok(paragraph + "\n", result, 64, 4096, None)
    assert len(result.chunks) > 5
    # Every piece but the last ends where a sentence ends: nobody's sentence is cut in two.
    assert all(piece.text.endswith("sea. ") for piece in result.chunks[:-1])


def test_a_line_without_spaces_is_cut_by_tokens() -> None:
    # (A run of over 100 characters without punctuation is one [UNK] token to this tokenizer: it fits.)
    blob = "/usr/lib/python3/dist-packages/s3sync_dagster/pipeline/" * 60  # one "line" far over budget
    chinese = "数据同步到向量数据库以后每个词都能被找到" * 40  # no spaces between words
    for text in (blob, chinese, blob + " " + chinese):
        result = chunk_text(text, "blob.txt", tokens=_budget(32))
        assert_tokens_ok(text, result, 32, 4096, 10)
        assert len(result.chunks) > 3


def test_a_long_function_is_split_at_its_statements_not_inside_lines() -> None:
    body = "\n".join(f"    total_{n} = compute_the_value(alpha, beta, gamma, delta) + {n}" for n in range(80))
    text = (
        f"def long_function(alpha, beta, gamma, delta):\n{body}\n    return total_1\n\n\ndef short():\n    return 1\n"
    )
    result = chunk_text(text, "code.py", tokens=TOKENS)
    assert_tokens_ok(text, result, 256, 4096, None)
    assert len(result.chunks) >= 3
    assert all(piece.text.endswith("\n") for piece in result.chunks)  # every cut at a line end
    assert result.chunks[-1].text.startswith("def short")


@pytest.mark.parametrize("module_name", ["modulefinder", "shlex", "configparser", "dataclasses", "_osx_support"])
@pytest.mark.parametrize("max_tokens", [128, 256])
def test_real_code_is_cut_inside_a_line_only_when_neither_neighbour_can_take_it(
    module_name: str, max_tokens: int
) -> None:
    # Real code (the standard library that runs this test): packing statements greedily used to end
    # chunks inside a line ("maybe.append(name" | ")", "cc = '" | "...'") 2-13 times per module.

    path = importlib.import_module(module_name).__file__
    assert path is not None
    text = Path(path).read_text(encoding="utf-8")
    result = chunk_text(text, f"{module_name}.py", tokens=_budget(max_tokens))
    assert_tokens_ok(text, result, max_tokens, 4096, None)
    for before, after in itertools.pairwise(result.chunks):
        if before.text.endswith("\n"):
            continue
        head = after.text.partition("\n")[0]
        line_start = before.text.rfind("\n") + 1
        with_rest = COUNTER.count([before.text + head + "\n"])[0]
        with_head = COUNTER.count([before.text[line_start:] + after.text])[0]
        assert with_rest > max_tokens and (line_start == 0 or with_head > max_tokens), (
            f"{module_name}: cut inside line {before.end_line}: {before.text[line_start:]!r} | {head!r}"
        )


def test_pieces_that_tokenize_differently_alone_are_cut_again() -> None:
    # Cut inside a word, a piece can cost more tokens alone than its share of the whole text: the
    # final count per piece (as the model receives it) catches that.
    text = "".join(f"unbelievably{n}" for n in range(400))
    result = chunk_text(text, "blob.txt", tokens=_budget(12))
    assert_tokens_ok(text, result, 12, 4096, 10)


def test_a_long_text_without_newlines_is_tokenized_in_pieces_with_the_same_starts() -> None:
    # A minified file: one line of 300,000 characters is tokenized in pieces cut after a space (so the
    # tokenizer never holds the whole file's tokens at once), and the starts equal one whole encoding's.
    from s3sync_dagster.pipeline.chunking import tokens

    text = " ".join(f"var{n % 977}=é{n}" for n in range(30_000))
    assert "\n" not in text and len(tokens._segments(text)) > 2
    whole = COUNTER._tokenizer.encode(text, add_special_tokens=False)
    byte_at = list(itertools.accumulate((len(char.encode("utf-8")) for char in text), initial=0))
    expected = sorted({byte_at[start] for start, _end in whole.offsets})
    assert COUNTER.token_starts(text).tolist() == expected


def test_token_budget_keeps_lone_surrogates() -> None:
    text = "ok \udcff bad bytes \udc80 here " * 100
    result = chunk_text(text, "x.txt", tokens=_budget(16))
    assert "".join(c.text for c in result.chunks) == text


def test_a_budget_with_no_room_for_text_is_refused() -> None:
    with pytest.raises(ValueError, match="leaves no room for text"):
        chunk_text("hello", "x.txt", tokens=_budget(2))


def test_without_a_tokenizer_each_byte_counts_as_a_token() -> None:
    # A model behind an API: no tokenizer here, so a chunk holds at most max_tokens - 16 bytes.
    text = "word " * 2000
    result = chunk_text(text, "x.txt", tokens=TokenBudget(max_tokens=512, model="cohere"))
    assert max(len(c.text.encode()) for c in result.chunks) <= 512 - 16
    assert "".join(c.text for c in result.chunks) == text
