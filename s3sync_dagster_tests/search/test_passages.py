"""The passage a hit shows (issue 63, item 1; pipeline/search/passages.py): the part of its section that answers the
question, in the document's order under its heading path, words matched in any English form; `s3sync query`
prints it (the question's words in bold on a terminal) and `--json` returns exactly that text. Moto over HTTP,
embedded Chroma, the real command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.query import search_source
from s3sync_dagster.config import AppConfig
from s3sync_dagster.pipeline.search import passages
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster_tests.conftest import ConfigFactory, put

# A section of three chunks (120 bytes each at most): the answer to "which days is recycling collected" sits in the
# second, after a chunk that names the topic and before one about something else.
GUIDE = """# City services

## Waste collection

The city collects household waste from every street once a week, in the early morning.

Recycling bins are emptied on Tuesday and Saturday, so put them out the evening before.

Garden waste goes out monthly from March to November, on the first Monday.

## Parking

Residents park free with a permit; visitors pay two euros an hour in the centre.
"""


def test_the_passage_is_the_sentence_that_answers_in_its_sections_order() -> None:
    section = [
        "The city collects household waste every week. Recycling bins are emptied on Tuesday and Saturday. ",
        "Garden waste goes out monthly.\n\n" + "Bulky items need a booking two days ahead. " * 12,
    ]
    shown = passages.choose("which days are the recycling bins emptied", section, section[0], "Waste", budget=120)
    assert shown.splitlines()[0] == "Waste"
    assert "Recycling bins are emptied on Tuesday and Saturday." in shown
    assert "Bulky" not in shown and len(shown.splitlines()[1]) <= 120
    # Word forms: the question's `millisecond` and `timeouts` hold the text's `milliseconds` and `timeout`.
    text = ["Connections are kept alive for a while. The timeout is given in milliseconds and defaults to 500.\n"]
    assert passages.choose("timeouts in millisecond", text, text[0], budget=80) == (
        "The timeout is given in milliseconds and defaults to 500."
    )
    assert passages.marked("The timeout is in milliseconds", "millisecond timeouts", "[{}]") == (
        "The [timeout] is in [milliseconds]"
    )
    # Code and list lines stay lines; nothing of the question found: the hit's own chunk from its start.
    code = ["```python\nclient = connect(host)\nclient.retry(times=3)\n```\n"]
    assert passages.choose("retry times", code, code[0]).splitlines()[1:3] == [
        "client = connect(host)",
        "client.retry(times=3)",
    ]
    assert passages.choose("zebra", ["One. Two."], "One. Two.") == "One. Two."
    # Code (a source file chunked by its syntax) is read line by line, its indentation kept.
    source = "def retry(times):\n    for attempt in range(times):\n        wait(2 ** attempt)\n"
    assert passages.choose("how long does it wait", [source], source, "retry", prose=False) == (
        "retry\ndef retry(times):\n    for attempt in range(times):\n        wait(2 ** attempt)"
    )
    assert not passages.is_prose("python") and passages.is_prose("markdown") and passages.is_prose(None)


def test_the_hits_own_chunk_comes_first_then_the_sections_words_and_a_gap_is_marked() -> None:
    # The ranking chose the second chunk for the question's meaning: its answer, in other words than the
    # question's, is shown, though the first chunk's sentences hold more of the question's words.
    section = [
        "Questions about how often the recycling bins are emptied go to the city office. "
        "The recycling bins are blue. Bins that are emptied late are reported online. ",
        "Collection happens twice a week, on Tuesday and Saturday. Lorries start at six. ",
        "Parking near the depot is free. ",
    ]
    shown = passages.choose("how often are the recycling bins emptied", section, section[1], budget=170, own_at=1)
    assert shown.startswith("Questions about how often the recycling bins are emptied go to the city office. ... ")
    assert "Collection happens twice a week, on Tuesday and Saturday. Lorries start at six." in shown
    assert "Parking" not in shown and "blue" not in shown and len(shown) <= 170
    # Where the own chunk is not named, it is found in the section; one alone is read alone.
    assert passages.choose("how often are the recycling bins emptied", section, section[1], budget=170) == shown
    assert passages.choose("tuesday", [], "Lorries start at six.") == "Lorries start at six."


@pytest.fixture
def guide(s3: Any, bucket: str, make_config: ConfigFactory) -> tuple[AppConfig, Path]:
    config, path = make_config(bucket, chunking={"type": "tree_sitter", "max_size_bytes": 120})
    put(s3, bucket, {"guide.md": GUIDE})
    embedding = config.embedding.spec()
    collection = config.chroma.store().collection(config.sources[0].collection_name, embedding)
    reports = sync_keys(s3, config.sources[0].spec(embedding), lambda _: collection, embedding.build(), ["guide.md"])
    assert [r.status for r in reports] == ["indexed"]
    return config, path


def test_a_hit_shows_the_answer_from_its_section_and_the_command_prints_exactly_it(
    guide: tuple[AppConfig, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, path = guide
    question = "on which days are recycling bins emptied"
    hits = search_source("docs", question, config=config, n=3)
    with_answer = [hit for hit in hits if "Tuesday and Saturday" in hit.passage]
    assert with_answer, [(hit.document, hit.passage) for hit in hits]
    assert with_answer[0].passage.startswith("City services > Waste collection\n")
    assert all(hit.passage for hit in hits)
    # A hit whose own chunk does not hold the answer shows it from the next chunk of its section.
    assert any("Tuesday" not in hit.document and "Tuesday and Saturday" in hit.passage for hit in hits)

    capsys.readouterr()
    assert main(["query", "docs", question, "--config", str(path), "--json", "-n", "3"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["passage"] for r in results] == [hit.passage for hit in hits]
    assert main(["query", "docs", question, "--config", str(path), "-n", "3"]) == 0
    printed = capsys.readouterr().out
    for result in results:  # the terminal shows each passage, line by line (no escape codes off a terminal)
        assert "\n".join(f"   {line}" for line in result["passage"].splitlines()) in printed
    assert "\033[" not in printed
    # On a terminal (or with --bold, which the command adds when the resident process answers for a terminal) the
    # question's words are set in bold, in any form; the text around them is the passage's.
    assert main(["query", "docs", question, "--config", str(path), "-n", "1", "--bold"]) == 0
    bold = capsys.readouterr().out
    assert "\033[1mRecycling\033[0m \033[1mbins\033[0m are \033[1memptied\033[0m on Tuesday" in bold, bold


def test_sections_ranked_each_once_by_all_their_chunks_words(
    guide: tuple[AppConfig, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, path = guide
    # The question's words are spread over the waste section's chunks: "collects", "street", "morning" in its
    # first, "recycling", "bins", "tuesday" in its second.
    question = "which morning does the city collect recycling bins from my street, tuesday"
    chunks = search_source("docs", question, config=config, n=6)
    places = [(hit.metadata["document_id"], hit.metadata["chunk_context"]) for hit in chunks]
    assert len(set(places)) < len(places)  # ranked by chunk: the waste section more than once
    ranked = search_source("docs", question, config=config, n=6, sections=True)
    places = [(hit.metadata["document_id"], hit.metadata["chunk_context"]) for hit in ranked]
    assert len(set(places)) == len(places)  # each section once
    assert ranked[0].metadata["chunk_context"].endswith("Waste collection")
    assert ranked[0].chunk_id == chunks[0].chunk_id  # the section stands by its best chunk
    assert "Tuesday and Saturday" in ranked[0].passage
    capsys.readouterr()
    assert main(["query", "docs", question, "--config", str(path), "--json", "--sections"]) == 0
    shown = [r["id"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert shown == [hit.chunk_id for hit in ranked[:5]]
