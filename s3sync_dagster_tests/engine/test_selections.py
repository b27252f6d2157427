"""Selections of keys: a glob matches in steps linear in the key whatever the pattern, with the documented
semantics; the backfill job's prefix and glob selections leave out a registered key not in canonical form
(naming it and the rule) instead of failing on it."""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import dagster as dg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.names import partitions_name
from s3sync_dagster.defs.resources import ChromaResource, EmbeddingResource, S3Connections
from s3sync_dagster.defs.run_config import BackfillConfig, Selection
from s3sync_dagster.defs.runs.backfill import selected_partitions
from s3sync_dagster.pipeline.s3 import globs
from s3sync_dagster_tests.conftest import Row

# --- the reference: the documented glob syntax, matched by counting the ways a key matches -------------------


def parses(pattern: str, object_key: str) -> int:
    """In how many ways the key matches the glob, read from the documented syntax: `**/` is no folder or any run
    of folders, `**` any characters, `*` any characters but `/`, `?` one character but `/`, anything else itself;
    a pattern without `/` matches the file name (as if it began with `**/`)."""
    if "/" not in pattern:
        pattern = "**/" + pattern

    @functools.cache
    def ways(at: int, start: int) -> int:  # pattern[at:] against object_key[start:]
        if at == len(pattern):
            return int(start == len(object_key))
        if pattern.startswith("**/", at):  # nothing, or up to and including any later `/`
            slashes = [end for end in range(start, len(object_key)) if object_key[end] == "/"]
            return ways(at + 3, start) + sum(ways(at + 3, end + 1) for end in slashes)
        if pattern.startswith("**", at):
            return sum(ways(at + 2, end) for end in range(start, len(object_key) + 1))
        if pattern[at] == "*":
            end = object_key.find("/", start)
            return sum(ways(at + 1, stop) for stop in range(start, (len(object_key) if end < 0 else end) + 1))
        if start == len(object_key):
            return 0
        if pattern[at] == "?":
            return ways(at + 1, start + 1) if object_key[start] != "/" else 0
        return ways(at + 1, start + 1) if object_key[start] == pattern[at] else 0

    return ways(0, 0)


def backtracking(pattern: str, object_key: str) -> tuple[bool, Counter[tuple[int, int]]]:
    """The old regex's search as a backtracking engine runs it (runs of wildcards longest first, `**/` its
    folders before nothing, the first match ends it): whether it matched, and how often it came to each (pattern
    position, key position). Exponential on `*a*a*a*b`: small keys only."""
    if "/" not in pattern:
        pattern = "**/" + pattern
    visits: Counter[tuple[int, int]] = Counter()

    def match(at: int, start: int) -> bool:
        visits[at, start] += 1
        if at == len(pattern):
            return start == len(object_key)
        if pattern.startswith("**/", at):
            slashes = [end for end in range(start, len(object_key)) if object_key[end] == "/"]
            return any(match(at + 3, end + 1) for end in reversed(slashes)) or match(at + 3, start)
        if pattern.startswith("**", at):
            return any(match(at + 2, end) for end in range(len(object_key), start - 1, -1))
        if pattern[at] == "*":
            stop = object_key.find("/", start)
            return any(match(at + 1, end) for end in range(len(object_key) if stop < 0 else stop, start - 1, -1))
        if start == len(object_key):
            return False
        if pattern[at] == "?":
            return object_key[start] != "/" and match(at + 1, start + 1)
        return object_key[start] == pattern[at] and match(at + 1, start + 1)

    return match(0, 0), visits


patterns = st.lists(st.sampled_from(["a", "b", ".", "/", "?", "*", "**", "**/"]), max_size=9).map("".join)
KEY_CHARACTERS = "ab./\n"  # a newline too: `*` and `**` match it


@st.composite
def keys_for(draw: Any, pattern: str) -> str:
    """A key built to match the pattern (each wildcard filled at random), then perhaps changed in one place."""
    if "/" not in pattern:
        pattern = "**/" + pattern
    filler = st.text(alphabet="ab.\n", max_size=4)
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append(draw(st.sampled_from(["", draw(st.text(alphabet=KEY_CHARACTERS, max_size=5)) + "/"])))
            index += 3
        elif pattern.startswith("**", index):
            parts.append(draw(st.text(alphabet=KEY_CHARACTERS, max_size=5)))
            index += 2
        elif pattern[index] == "*":
            parts.append(draw(filler))
            index += 1
        elif pattern[index] == "?":
            parts.append(draw(st.sampled_from("ab.\n")))
            index += 1
        else:
            parts.append(pattern[index])
            index += 1
    object_key = "".join(parts)
    if object_key and draw(st.booleans()):
        at = draw(st.integers(0, len(object_key) - 1))
        object_key = object_key[:at] + draw(st.sampled_from(KEY_CHARACTERS)) + object_key[at + 1 :]
    return object_key


def on_regex_path(pattern: str) -> bool:
    return isinstance(getattr(globs._glob_matcher(pattern), "__self__", None), re.Pattern)


@pytest.mark.reliability("shared stores")
@pytest.mark.parametrize("case", ["glob-same-matches-as-documented"])
def test_a_glob_matches_the_keys_its_documented_syntax_matches(case: str, fault_row: Row) -> None:
    """Random small globs and keys: the matcher (both of its paths) agrees with the syntax and with the old
    regex's search; a glob it hands to the regex engine never brings that search back to a place it tried
    (before the key's end), which is what keeps backtracking linear there."""

    @settings(max_examples=3000, deadline=None)
    @given(data=st.data())
    def agrees(data: st.DataObject) -> None:
        pattern = data.draw(patterns, label="pattern")
        object_key = data.draw(st.one_of(st.text(alphabet=KEY_CHARACTERS, max_size=10), keys_for(pattern)), "key")
        matches = parses(pattern, object_key) > 0
        old_matched, visits = backtracking(pattern, object_key)
        assert old_matched == matches  # the two references agree
        assert globs.glob_matches(pattern, object_key) == matches
        automaton = globs._GlobAutomaton(globs._glob_tokens(pattern))
        assert (automaton.fullmatch(object_key) is not None) == matches
        automaton._MAX_REMEMBERED = 3  # its table full at once: on with plain sets of states
        assert (automaton.fullmatch(object_key + "b") is not None) == (parses(pattern, object_key + "b") > 0)
        if on_regex_path(pattern):
            again = {place: n for place, n in visits.items() if n > 1 and place[1] < len(object_key)}
            assert not again, f"{pattern!r} on {object_key!r}: (pattern, key) positions tried again: {again}"

    agrees()
    # Everyday globs stay on the regex engine's path, several times faster there than on the automaton's.
    for ordinary in ["reports/**/*.pdf", "*.pdf", "**/*.md", "docs/**", "docs/*.md", "**/tmp/**", "q?.txt", "**"]:
        assert on_regex_path(ordinary), ordinary
    fault_row.observe({}, [])
    fault_row.passed = True


def traced_lines(pattern: str, object_key: str) -> tuple[bool, int]:
    """glob_matches, and the lines of globs.py it executed: its work, counted rather than timed."""
    lines = 0

    def in_objects(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal lines
        lines += event == "line"
        return in_objects

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return in_objects if frame.f_code.co_filename == globs.__file__ else None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        matched = globs.glob_matches(pattern, object_key)
    finally:
        sys.settrace(previous)
    return matched, lines


LINES_PER_CHARACTER_AND_TOKEN = 4  # a few lines per key character and pattern character: linear, not quadratic


@pytest.mark.reliability("shared stores")
@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("**a**a**a**a**a**a**b", id="glob-backtracking-double-star"),
        pytest.param("*a*a*a*a*a*a*a*a*b", id="glob-backtracking-single-star"),
    ],
)
def test_a_backtracking_glob_matches_long_keys_in_linear_steps(pattern: str, fault_row: Row) -> None:
    """A backtracking regex needed over 90 s for 20 such keys (24.9 s for one of 106 characters), exponential in
    the key: the old code hangs here until pytest's timeout (600 s). The work is counted in executed lines, never
    timed; a regex path would not be counted, so the pattern must finish at all first."""
    for length in range(100, 1001, 47):  # 20 keys of 100-993 characters
        assert globs.glob_matches(pattern, "a" * length) is False
    cases = {"a" * 2000: False, "a" * 1999 + "b": True, "a/" * 1000 + "b": pattern.startswith("**")}
    for object_key, expected in cases.items():
        matched, lines = traced_lines(pattern, object_key)
        assert matched is expected, object_key[-20:]
        assert lines <= LINES_PER_CHARACTER_AND_TOKEN * len(object_key) * len(pattern), lines
    fault_row.observe({}, [])
    fault_row.passed = True


# --- the backfill job's prefix and glob selections over registered keys ------------------------------------------

REGISTERED = [
    "d/aA.txt",
    "d/a%41.txt",  # registered by hand in the UI for d/aA.txt: not in canonical form
    "d/%FF.txt",  # percent-decodes to bytes that are not UTF-8
    "d/b.txt",
    "d/x%2C.txt",  # canonical: the object key is d/x,.txt
    "e/c.txt",
]


def select(
    instance: dg.DagsterInstance,
    source: SourceConfig,
    registered: list[str],
    selection: Selection,
    pattern: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> tuple[list[str] | None, list[str]]:
    """The keys a backfill's selection covers over these registered partitions, as the job's op selects them on a
    real instance, and the warnings its run log got."""
    instance.add_dynamic_partitions(partitions_name(source.name), registered)
    context = dg.build_op_context(instance=instance)
    context.log.addHandler(caplog.handler)  # the run's log: Dagster's log manager is no child of the root logger
    selected = selected_partitions(
        context,
        source,
        BackfillConfig(selection=selection, pattern=pattern),
        S3Connections(connections=[]),
        ChromaResource(path=str(tmp_path / "chroma")),
        EmbeddingResource(),
    )
    return selected, [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


@pytest.mark.reliability("shared stores")
@pytest.mark.parametrize(
    ("selection", "pattern"),
    [
        pytest.param(Selection.PREFIX, "d/", id="prefix-selection-non-canonical-key"),
        pytest.param(Selection.GLOB, "d/*.txt", id="glob-selection-non-canonical-key"),
    ],
)
def test_a_non_canonical_registered_key_is_left_out_of_a_selection_naming_it(
    selection: Selection,
    pattern: str,
    fault_row: Row,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real instance's dynamic partitions; the selection runs as the backfill job's op does, before it reaches
    the webserver (which test_ui_backfill starts): every other key is selected, each bad one is named."""
    source = SourceConfig(name="docs", bucket_name="bucket", region="us-east-1", collection_name="docs-collection")
    selected, warnings = select(instance, source, REGISTERED, selection, pattern, tmp_path, caplog)
    assert selected == ["d/aA.txt", "d/b.txt", "d/x%2C.txt"]
    assert any("'d/a%41.txt' is not in canonical form" in message for message in warnings), warnings
    assert any("'d/%FF.txt' percent-decodes to bytes that are not UTF-8" in message for message in warnings)
    assert all(f"{selection.value} selection" in message for message in warnings), warnings
    fault_row.observe({}, [])
    fault_row.passed = True


@pytest.mark.reliability("shared stores")
@pytest.mark.parametrize(
    ("selection", "pattern"),
    [
        pytest.param(Selection.PREFIX, "other/", id="prefix-selection-foreign-key"),
        pytest.param(Selection.GLOB, "**/*.txt", id="glob-selection-foreign-key"),
    ],
)
def test_a_key_registered_by_hand_outside_the_sources_prefix_is_left_out_of_a_selection(
    selection: Selection,
    pattern: str,
    fault_row: Row,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another source's key typed into this source's partitions (the UI's "add partition"): a selection leaves it
    out and names it, instead of sending it to a run that refuses it."""
    source = SourceConfig(
        name="docs", bucket_name="bucket", region="us-east-1", collection_name="docs-collection", path_prefix="d/"
    )
    registered = ["d/b.txt", "other/hand.txt"]
    selected, warnings = select(instance, source, registered, selection, pattern, tmp_path, caplog)
    assert selected == ([] if selection is Selection.PREFIX else ["d/b.txt"])
    assert any("'other/hand.txt', which is not under the source's path_prefix 'd/'" in w for w in warnings), warnings
    fault_row.observe({}, [])
    fault_row.passed = True
