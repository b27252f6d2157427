"""Search by meaning and by exact words (pipeline/search/query.py): moto over HTTP -> the engine -> real Chroma,
embedded and a `chroma run` server, queried as `s3sync query` and the Python API query it."""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

import chromadb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3sync_dagster.pipeline.chroma import lifecycle
from s3sync_dagster.pipeline.lexicon import embedded as lexicon
from s3sync_dagster.pipeline.lexicon import terms
from s3sync_dagster.pipeline.lexicon.terms import query_terms, term_pattern
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster.pipeline.search import dense
from s3sync_dagster.pipeline.search import fusion as search_fusion
from s3sync_dagster.pipeline.search import hits as search_hits
from s3sync_dagster.pipeline.search import lexical as search_lexical
from s3sync_dagster.pipeline.search import query as search
from s3sync_dagster.pipeline.search.fusion import Fusion, fuse
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster_tests.conftest import CountingEmbedder, Row, put, store_chunks

# Prose on one theme, so meaning alone cannot tell them apart; each holds one exact thing someone remembers.
NOTES = {
    f"kb/note-{n:02d}.md": f"# Shipping note {n}\n\nThe parcel left the warehouse and reached the customer on time. "
    f"Reference {code} was printed on the label.\n"
    for n, code in enumerate(["QX-7741-B", "RB-1020-A", "MK-5550-C", "TT-9013-D", "ZP-3388-E", "LW-6204-F"])
}


# embedded: the store's lexical index answers the lexical side (pipeline/lexicon/embedded.py); unindexed: an embedded
# collection opened as another tool opens it, where Chroma's full-text filter does; server: a `chroma run` one.
@pytest.fixture(params=["embedded", "unindexed", "server"])
def client(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    if request.param != "server":
        yield chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    else:
        port = request.getfixturevalue("chroma_server")
        yield chromadb.HttpClient(host="127.0.0.1", port=port)


@pytest.fixture
def spec(bucket: str) -> SourceSpec:
    return SourceSpec(name="docs", bucket_name=bucket, collection_name=f"search-{bucket}"[:60])


@pytest.fixture
def collection(request: pytest.FixtureRequest, client: Any, spec: SourceSpec, embedding_function: Any) -> Iterator[Any]:
    if request.node.callspec.params["client"] == "unindexed":
        collection = client.get_or_create_collection(spec.collection_name, embedding_function=embedding_function)
    else:
        collection = lifecycle.open_collection(
            client, spec.collection_name, embedding_function, metadata={"created_by": "s3sync-dagster"}
        )
    assert (lexicon.of(collection) is not None) == (request.node.callspec.params["client"] == "embedded")
    yield collection
    client.delete_collection(spec.collection_name)


def synced(s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder, files: dict[str, str]) -> None:
    put(s3, spec.bucket_name, files)
    reports = sync_keys(s3, spec, lambda _: collection, embedder, list(files))
    assert all(report.status in ("indexed", "unchanged") for report in reports), reports


def first_key(hits: list[search_hits.Hit]) -> str | None:
    return str(hits[0].metadata["object_key"]) if hits else None


def test_an_exact_code_is_found_first_by_lexical_and_hybrid_search(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    synced(s3, spec, collection, embedder, NOTES)
    for object_key, text in NOTES.items():
        code = text.split("Reference ")[1].split(" ")[0]
        for mode in ("lexical", "hybrid"):
            hits = search.search(collection, code, mode=mode, n=3)
            assert first_key(hits) == object_key, (mode, code, [h.metadata["object_key"] for h in hits])
        # Any case, inside a question: the term is the code, the rest are stop words.
        assert first_key(search.search(collection, f"what was {code.lower()}?", mode="lexical")) == object_key
    lexical = search.search(collection, "RB-1020-A", mode="lexical", n=5)
    assert [hit.lexical_rank for hit in lexical] == list(range(1, len(lexical) + 1))
    assert lexical[0].dense_rank is None and lexical[0].score > 0


def test_whole_words_only(s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder) -> None:
    synced(s3, spec, collection, embedder, {"c/a.py": "def parse_header(line):\n    return line\n"})
    synced(s3, spec, collection, embedder, {"c/b.py": "def parse_headers(lines):\n    return lines\n"})
    assert [first_key(search.search(collection, q, mode="lexical")) for q in ("parse_header", "PARSE_HEADERS")] == [
        "c/a.py",
        "c/b.py",
    ]
    assert search.search(collection, "parse_head", mode="lexical") == []  # a part of a word is not the word


def test_a_changed_object_is_found_by_its_new_words_only_and_a_removed_one_not_at_all(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    synced(s3, spec, collection, embedder, {"kb/policy.md": "# Policy\n\nThe override code is HALCYON-17.\n"})
    assert first_key(search.search(collection, "HALCYON-17", mode="lexical")) == "kb/policy.md"
    synced(s3, spec, collection, embedder, {"kb/policy.md": "# Policy\n\nThe override code is BRAMBLE-42.\n"})
    assert search.search(collection, "HALCYON-17", mode="lexical") == []
    assert first_key(search.search(collection, "bramble-42", mode="lexical")) == "kb/policy.md"
    s3.delete_object(Bucket=spec.bucket_name, Key="kb/policy.md")
    [report] = sync_keys(s3, spec, lambda _: collection, embedder, ["kb/policy.md"])
    assert report.status == "removed"
    assert search.search(collection, "BRAMBLE-42", mode="lexical") == []
    assert all(hit.metadata.get("object_key") != "kb/policy.md" for hit in search.search(collection, "policy"))


def test_where_keeps_the_search_to_one_source(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    other = SourceSpec(name="other", bucket_name=spec.bucket_name, collection_name="unused", path_prefix="o/")
    put(s3, spec.bucket_name, {"o/x.md": "The vault combination is 31-07-99.\n", "d/y.md": "Combination 31-07-99.\n"})
    sync_keys(s3, spec, lambda _: collection, embedder, ["d/y.md"])
    sync_keys(s3, other, lambda _: collection, embedder, ["o/x.md"])
    for mode in search.MODES:
        hits = search.search(collection, "vault combination 31-07-99", mode=mode, where={"source": "other"})
        assert {hit.metadata["source"] for hit in hits} == {"other"}, mode


def test_hybrid_reports_where_each_side_ranked_a_chunk(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    synced(s3, spec, collection, embedder, NOTES)
    hits = search.search(collection, "label reference MK-5550-C", n=3)
    assert first_key(hits) == "kb/note-02.md"
    assert hits[0].lexical_rank == 1 and hits[0].dense_rank is not None and hits[0].distance is not None
    assert hits[0].chunk_id == keys.object_id("kb/note-02.md") + "-0"


@pytest.mark.parametrize(
    ("mode", "text", "n", "rule"),
    [
        ("fuzzy", "x", 5, "search mode 'fuzzy' is not one of dense, lexical, hybrid"),
        ("hybrid", "  ", 5, "the query is empty"),
        ("dense", "x", 0, "the number of results must be at least 1, got 0"),
    ],
)
def test_bad_searches_say_which_rule(mode: Any, text: str, n: int, rule: str, chroma_client: Any) -> None:
    collection = chroma_client.get_or_create_collection("bad-searches")
    with pytest.raises(ValueError, match=rule):
        search.search(collection, text, mode=mode, n=n)


def test_query_terms_keep_codes_and_identifiers_and_drop_stop_words() -> None:
    assert query_terms("How do I call os.path.join() with the XK-42 flag in it?") == [
        "xk-42",
        "os.path.join",
        "call",
        "flag",
    ]
    assert query_terms("a an of to it") == []


def test_fusions_keep_each_sides_winner_and_weigh_as_asked() -> None:
    dense = [("d1", "", {}, 0.1), ("both", "", {}, 0.2), ("d3", "", {}, 0.9)]
    lexical = [("l1", "", {}, 9.0), ("both", "", {}, 5.0), ("l3", "", {}, 0.5)]
    rrf = [hit.chunk_id for hit in fuse(dense, lexical, 3, Fusion("rrf"))]
    assert rrf[0] == "both" and set(rrf[1:]) == {"d1", "l1"}
    assert [hit.chunk_id for hit in fuse(dense, lexical, 1, Fusion("rrf", lexical_weight=1.0))] == ["l1"]
    assert [hit.chunk_id for hit in fuse(dense, lexical, 1, Fusion("rrf", lexical_weight=0.0))] == ["d1"]
    relative = fuse(dense, lexical, 5, Fusion("relative", lexical_weight=0.5))
    scores = {hit.chunk_id: hit.score for hit in relative}
    assert scores["d1"] == pytest.approx(0.5) and scores["l1"] == pytest.approx(0.5)
    assert scores["both"] == pytest.approx(0.5 * (0.7 / 0.8) + 0.5 * (4.5 / 8.5))
    assert [hit.chunk_id for hit in fuse(dense, lexical, 1, Fusion("relative", lexical_weight=0.0))] == ["d1"]


def test_words_in_most_chunks_pick_nothing_and_leave_the_dense_answer_first(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    synced(s3, spec, collection, embedder, {f"n/file-{n:02d}.txt": f"small file number {n}\n" for n in range(30)})
    assert search.search(collection, "small file number", mode="lexical") == []
    dense = search.search(collection, "small file number 17", mode="dense", n=1)
    assert first_key(search.search(collection, "small file number 17", n=1)) == first_key(dense) == "n/file-17.txt"


# Chunks whose words are written as people do not type them: a capital dotted or a dotless Turkish i, a
# sharp s, decomposed accents (a letter, then U+0301 or U+0308), capitals with tonos, a ligature.
SPELLED = {
    "turkish": "The night ferry to İstanbul leaves the harbour at nine.",
    "dotless": "Our cousins drove all the way from Diyarbak\u0131r last summer.",
    "sharp-s": "Die Straße am Hafen bleibt bis Montag gesperrt.",
    "capitals": "ZUR FUSSGÄNGERZONE GEHT ES GERADEAUS.",
    "nfc": unicodedata.normalize("NFC", "Order a café with the breakfast plate."),
    "nfd": unicodedata.normalize("NFD", "Send my résumé to the naïve recruiter."),
    "greek": "ΣΊΣΥΦΟΣ pushed the stone up the hill again.",
    "ligature": "Ask at the back oﬃce for a parking permit.",
    "marks": "हिन्दी भाषा",  # vowel signs that no NFC composes: marks inside the word
}


@pytest.mark.reliability("shared stores")
@pytest.mark.parametrize(
    ("query", "chunk_id"),
    [
        pytest.param("istanbul", "turkish", id="lexical-turkish-dotted-i"),
        pytest.param("İSTANBUL", "turkish", id="lexical-turkish-dotted-capital-i"),
        pytest.param("ISTANBUL", "turkish", id="lexical-turkish-capital-i"),
        pytest.param("DIYARBAKIR", "dotless", id="lexical-turkish-dotless-i"),
        pytest.param("strasse", "sharp-s", id="lexical-sharp-s"),
        pytest.param("STRASSE", "sharp-s", id="lexical-sharp-s-capitals"),
        pytest.param("Fußgängerzone", "capitals", id="lexical-sharp-s-query-capital-text"),
        pytest.param(unicodedata.normalize("NFD", "café"), "nfc", id="lexical-nfd-query"),
        pytest.param(unicodedata.normalize("NFC", "résumé"), "nfd", id="lexical-nfc-query-nfd-text"),
        pytest.param(unicodedata.normalize("NFD", "naïve"), "nfd", id="lexical-nfd-query-nfd-text"),
        pytest.param(unicodedata.normalize("NFD", "σίσυφος"), "greek", id="lexical-greek-nfd-query-capital-text"),
        pytest.param("office", "ligature", id="lexical-ligature"),
        pytest.param("हिन्दी", "marks", id="lexical-combining-marks-in-word"),
        pytest.param("Ankara", None, id="lexical-unrelated-word"),
    ],
)
def test_words_are_found_in_any_case_and_unicode_form(
    query: str, chunk_id: str | None, chroma_client: Any, embedding_function: Any, fault_row: Row
) -> None:
    collection = chroma_client.get_or_create_collection("spelled", embedding_function=embedding_function)
    collection.add(ids=list(SPELLED), documents=list(SPELLED.values()), metadatas=[{"source": "docs"}] * len(SPELLED))
    for term in query_terms(query):  # the pattern Chroma runs is one Python's re reads too
        re.compile(term_pattern(term))
    lexical = search.search(collection, query, mode="lexical", n=3)
    hybrid = search.search(collection, query, mode="hybrid", n=3)
    if chunk_id is None:
        assert lexical == [] and all(hit.lexical_rank is None for hit in hybrid), (lexical, hybrid)
    else:
        assert [hit.chunk_id for hit in lexical] == [chunk_id], lexical
        assert lexical[0].score > 0
        assert hybrid[0].chunk_id == chunk_id and hybrid[0].lexical_rank == 1, hybrid
    fault_row.observe({("spelled", i): text for i, text in SPELLED.items()}, store_chunks(chroma_client))
    fault_row.passed = True


def test_query_terms_are_folded_and_a_combining_mark_belongs_to_its_word() -> None:
    assert query_terms("Where is İSTANBUL's Straße, CAFE\u0301?") == ["istanbul", "strasse", "café"]
    assert query_terms("हिन्दी") == ["हिन्दी"]
    # As in Chroma's regex: no precomposed q with acute exists, so "faq" is not a word of "faq\u0301".
    assert terms.term_frequency("faq", terms.fold("FAQ\u0301 faq, FAQ")) == 2
    assert terms.term_frequency("हिन्द", terms.fold("हिन्दी")) == 0


# --- fusion scoring every candidate on both sides (issue 36) ------------------------------------------------

SCORED = Fusion("scored", lexical_weight=0.7, coverage_power=2.0, pool_factor=2, min_pool=10)


def candidate(chunk_id: str, distance: float, bm25: float) -> search_fusion.Candidate:
    return search_fusion.Candidate(chunk_id, chunk_id, {}, distance, bm25, None, None)


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("coverage", [0.0, 0.4, 1.0])
def test_a_chunk_both_sides_score_best_comes_first_whatever_the_weights(weight: float, coverage: float) -> None:
    rows = (candidate("best", 0.2, 9.0), candidate("near", 0.3, 1.0), candidate("wordy", 0.9, 8.9))
    for power in (None, 1.0, 3.0):
        fusion = Fusion("scored", lexical_weight=weight, coverage_power=power)
        hits = search_fusion.fuse_scored(search_fusion.Candidates(rows, coverage), 3, fusion)
        assert hits[0].chunk_id == "best", (weight, coverage, power)


def test_the_lexical_weight_follows_how_much_of_the_query_the_best_candidates_hold() -> None:
    adaptive = Fusion("scored", lexical_weight=0.8, coverage_power=2.0)
    assert search_fusion.lexical_weight(adaptive, 1.0) == pytest.approx(0.8)
    assert search_fusion.lexical_weight(adaptive, 0.5) == pytest.approx(0.2)
    assert search_fusion.lexical_weight(adaptive, 0.0) == 0.0
    assert search_fusion.lexical_weight(Fusion("scored", lexical_weight=0.4), 0.1) == 0.4  # static
    # A question whose words no chunk holds together: dense decides; the same words held whole: BM25 does.
    rows = (candidate("meaning", 0.2, 0.5), candidate("words", 0.6, 6.0))
    assert search_fusion.fuse_scored(search_fusion.Candidates(rows, 0.2), 1, adaptive)[0].chunk_id == "meaning"
    assert search_fusion.fuse_scored(search_fusion.Candidates(rows, 1.0), 1, adaptive)[0].chunk_id == "words"


def test_scored_fusion_scores_each_sides_candidates_on_the_other(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder, embedding_function: Any
) -> None:
    synced(s3, spec, collection, embedder, {**NOTES, "kb/codes.txt": "Codes: ZZ-9999-Q\n"})
    query = "the parcel reached the customer on time ZZ-9999-Q"
    found = search_fusion.scored_candidates(collection, query, 1, None, embedding_function([query])[0])
    (dense_first,) = (row for row in found.rows if row.dense_rank == 1)
    (lexical_first,) = (row for row in found.rows if row.lexical_rank == 1)
    # Each side's first is the other side's stranger: a note by meaning, the codes file by its rare word.
    assert dense_first.metadata["object_key"].startswith("kb/note-") and dense_first.lexical_rank is None
    assert lexical_first.metadata["object_key"] == "kb/codes.txt" and lexical_first.dense_rank is None
    assert len(found.rows) == 2 and found.coverage < 1.0  # no chunk holds every word of the query
    # Scored on both: the distance a full dense query gives each, and BM25 for the note's shared words.
    distances = {row[0]: row[3] for row in dense.dense_ranking(collection, query, len(NOTES) + 1)}
    for row in found.rows:
        assert row.distance == pytest.approx(distances[row.chunk_id], abs=1e-4), row.chunk_id
    assert dense_first.bm25 > 0 and lexical_first.bm25 > 0


def test_scored_fusion_keeps_the_exact_code_first_and_the_dense_answer_for_common_words(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    synced(s3, spec, collection, embedder, NOTES)
    for object_key, text in NOTES.items():
        code = text.split("Reference ")[1].split(" ")[0]
        assert first_key(search.search(collection, f"which parcel had {code}?", fusion=SCORED)) == object_key
    common = {f"n/file-{n:02d}.txt": f"small file number {n}\n" for n in range(30)}
    synced(s3, spec, collection, embedder, common)
    for query in ("small file number 17", "a small file"):
        dense = search.search(collection, query, mode="dense", n=3)
        hybrid = search.search(collection, query, n=3, fusion=SCORED)
        assert first_key(hybrid) == first_key(dense), query


def test_the_folding_tables_are_kept_between_processes_and_rebuilt_when_damaged(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-off `s3sync query` does not scan every code point again (about a second): the tables are read
    from a file named after the Unicode data and the code deriving them, the same as a scan gives."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    terms._folding.cache_clear()
    try:
        scanned = terms._folding()
        (cache,) = (tmp_path / "s3sync-dagster").glob("folding-*.json")
        terms._folding.cache_clear()
        loaded = terms._folding()
        assert loaded == scanned and loaded is not scanned
        assert re.search(term_pattern("strasse"), "Die Straße am Hafen")  # spelled from the loaded tables
        cache.write_text("{not json")
        terms._folding.cache_clear()
        assert terms._folding() == scanned and json.loads(cache.read_text())["word_extra"]
    finally:
        terms._folding.cache_clear()


# --- rankings that do not depend on n (issue 53) ----------------------------------------------------------------

TOPICS = ("deployment", "memory", "workers", "parcel", "invoice", "certificate", "cache", "timeout", "retry", "token")
VERBS = ("configure", "restart", "measure", "renew", "limit", "inspect", "upload", "rotate")


def tiers_corpus() -> dict[str, str]:
    """Thirty pages of six sections on overlapping words: many chunks share each term and near-ties abound, so
    a ranking read from a pool that grows with n would reorder its first hits."""
    pages = {}
    for page in range(30):
        sections = []
        for section in range(6):
            topic, other = TOPICS[(page + section) % 10], TOPICS[(page * 3 + section * 7) % 10]
            verb = VERBS[(page + 2 * section) % 8]
            sections.append(
                f"## {topic.title()} {section}\n\nTo {verb} the {topic}, first check the {other} settings of "
                f"page {page}. The {topic} {verb} step waits for the {other} and logs code P{page}-S{section}.\n"
            )
        pages[f"guide/page-{page:02d}.md"] = f"# Guide {page}\n\n" + "\n".join(sections)
    return pages


@pytest.mark.parametrize("client", ["embedded", "unindexed"], indirect=True)
@pytest.mark.parametrize("mode", search.MODES)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(st.sampled_from(TOPICS + VERBS + ("settings", "logs", "P7-S3", "page")), min_size=1, max_size=4),
    n=st.integers(1, 90),
    data=st.data(),
)
def test_the_first_k_hits_are_the_same_for_every_n_asked(
    s3: Any,
    spec: SourceSpec,
    collection: Any,
    embedder: CountingEmbedder,
    mode: search.Mode,
    words: list[str],
    n: int,
    data: st.DataObject,
) -> None:
    if not collection.count():
        synced(s3, spec, collection, embedder, tiers_corpus())
    text = " ".join(words)
    k = data.draw(st.integers(1, n), label="k")
    many = search.search(collection, text, mode=mode, n=n)
    few = search.search(collection, text, mode=mode, n=k)
    assert [hit.chunk_id for hit in many[:k]] == [hit.chunk_id for hit in few], (text, n, k)


# --- the answer's section (issue 53, item 2) --------------------------------------------------------------------

MANUAL = (
    "# Kettle manual\n\nRead this first.\n\n"
    "## Descaling\n\n"
    + "".join(
        f"Descaling step {n}: pour the vinegar mix, code DS-{n}0{n}, and wait before rinsing.\n\n" for n in range(1, 5)
    )
    + "## Warranty\n\n"
    + "".join(f"Warranty clause {n}: the element is covered for {n} years.\n\n" for n in range(1, 4))
)


@pytest.mark.parametrize("client", ["embedded"], indirect=True)
def test_a_hit_comes_back_with_its_section_and_nothing_of_the_next(
    s3: Any, bucket: str, collection: Any, embedder: CountingEmbedder
) -> None:
    """`context="section"`: the hit's chunks under the same heading, in the object's order; none of the section
    before or after it. Small chunks (one paragraph each), so a section is several."""
    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name=collection.name, max_size_bytes=100)
    synced(s3, spec, collection, embedder, {"manuals/kettle.md": MANUAL})
    (hit,) = search.search(collection, "DS-303", mode="lexical", n=1)
    assert "Descaling step 3" in hit.document
    (with_section,) = search_hits.with_context(collection, [hit], "section")
    texts = [passage.document for passage in with_section.context]
    assert any("## Descaling" in text for text in texts)
    assert [n for n in range(1, 5) if any(f"Descaling step {n}:" in text for text in texts)] == [1, 2, 3, 4]
    assert not any("Warranty" in text or "Read this first" in text for text in texts), texts
    assert [passage.chunk_index for passage in with_section.context] == sorted(
        passage.chunk_index for passage in with_section.context
    )
    # A chunk written before context lines (none in its metadata) comes back alone.
    bare = dataclasses.replace(hit, metadata={k: v for k, v in hit.metadata.items() if k != "chunk_context"})
    (alone,) = search_hits.with_context(collection, [bare], "section")
    assert [passage.chunk_id for passage in alone.context] == [hit.chunk_id]
    with pytest.raises(ValueError, match="'section'"):
        search_hits.with_context(collection, [hit], "page")  # type: ignore[arg-type]


# --- every word of the query (issue 53, item 4) ---------------------------------------------------------------

# Lines someone copies from a page: numbers, a line of code, a sentence of short common words. Each is told from
# its neighbours only by words the term rule leaves out of `query_terms` (under three characters, stop words).
COPIED = {
    "numbers-a": "Sample: [30, 83, 16, 4, 8, 81, 41, 50, 18, 33]",
    "numbers-b": "Sample: [12, 47, 16, 9, 2, 65, 71, 50, 28, 39]",
    "numbers-c": "Sample: [30, 14, 77, 6, 3, 95, 44, 21, 58, 19]",
    "code-a": "assert i == (i // j) * j + (i % j)",
    "code-b": "assert x == (x // k) * k + (x % k)",
    "said-a": "Write it down: it is what it was, and that is all of it.",
    "said-b": "Write it down once more, before the end of the day.",
}


@pytest.mark.parametrize(
    ("query", "chunk_id"),
    [
        pytest.param("[30, 83, 16, 4, 8, 81, 41, 50, 18, 33]", "numbers-a", id="numbers"),
        pytest.param("i == (i // j) * j + (i % j)", "code-a", id="code"),
        pytest.param("it is what it was", "said-a", id="short-common-words"),
    ],
)
def test_a_copied_line_is_found_by_its_short_and_common_words(
    query: str, chunk_id: str, chroma_client: Any, embedding_function: Any
) -> None:
    collection = lifecycle.open_collection(chroma_client, "copied", embedding_function, metadata={"created_by": "t"})
    collection.add(ids=list(COPIED), documents=list(COPIED.values()), metadatas=[{"object_key": i} for i in COPIED])
    found = lexicon.of(collection)
    assert found is not None and found.rebuild(collection) == len(COPIED)
    assert search_lexical.indexed(collection) is not None  # the store's lexical index: every word is looked up
    assert query_terms(query) == [] or chunk_id == "said-a"  # no word the full-text filter would look up
    lexical = search.search(collection, query, mode="lexical", n=3)
    assert lexical and lexical[0].chunk_id == chunk_id, lexical
    assert search.search(collection, query, n=3, embedding_function=embedding_function)[0].chunk_id == chunk_id


@given(st.text(alphabet="ab.-_ \u03011", max_size=40))
@settings(max_examples=300, deadline=None)
def test_term_counts_are_each_terms_frequency(text: str) -> None:
    folded = terms.fold(text)
    counts = terms.term_counts(folded)
    assert all(count > 0 for count in counts.values())
    for term in {*counts, *terms.text_terms(text), "a", "b", "a.b", "ab", "1"}:
        if len(re.findall(f"(?={re.escape(term)})", folded)) != folded.count(term):
            continue  # where a run overlaps itself ("1.1" in "1.1.1") `term_frequency` counts it once
        assert counts.get(term, 0) == terms.term_frequency(term, folded), (text, term)


# --- a quoted line comes first (issue 53, item 4) -------------------------------------------------------------

# One chunk holds the line word for word, in a longer text; the others hold its words more often and nearer in
# meaning, but never in its order: BM25 and the dense side both put one of them first.
QUOTED = {
    "holds-it": "Shutdown notes. **The cache is flushed** when the worker stops. Other settings: retries, timeouts, "
    "logging levels and the metrics port are read once at start and kept for the worker's life.",
    "near-1": "Flushed cache, worker stops: when the worker stops the cache is flushed; the cache is flushed.",
    "near-2": "When stops the worker, flushed is the cache. Worker stops: cache flushed, cache is flushed.",
    "near-3": "The worker stops when the cache is flushed, and the cache is flushed when the worker halts.",
    **{f"other-{n}": f"Release {n}: the installer now checks disk space and signs package {n}." for n in range(12)},
}


def test_a_quoted_line_comes_first_where_it_is_written(chroma_client: Any, embedding_function: Any) -> None:
    collection = lifecycle.open_collection(chroma_client, "quoted", embedding_function, metadata={"created_by": "t"})
    collection.add(ids=list(QUOTED), documents=list(QUOTED.values()), metadatas=[{"object_key": i} for i in QUOTED])
    found = lexicon.of(collection)
    assert found is not None and found.rebuild(collection) == len(QUOTED)
    line = "the cache is flushed when the Worker stops"
    assert search.search(collection, line, mode="lexical", n=1)[0].chunk_id != "holds-it"
    assert search.search(collection, line, mode="dense", n=1, embedding_function=embedding_function)[0].chunk_id != (
        "holds-it"
    )
    hits = search.search(collection, line, n=4, embedding_function=embedding_function)
    assert hits[0].chunk_id == "holds-it", hits
    assert hits[0].score > 1 >= hits[1].score  # the quoted chunk's score says so
    # Shorter lines: "near-3" holds this one too.
    assert search_fusion.quoted("cache is flushed when the worker", QUOTED) == {"holds-it", "near-3"}
    assert search_fusion.quoted("os.path join(", {"a": "`os.path.join(x)`", "b": "os path"}) == {"a"}
    assert search_fusion.quoted("cache flushed", QUOTED) == frozenset()  # two words: not a quoted line
    # The tier holds where scores tie: last on both sides, a quoted chunk scores 1, as one first on both does.
    rows = (
        search_fusion.Candidate("first", "", {}, 0.1, 9.0, 1, 1),
        search_fusion.Candidate("quoted", "", {}, 0.4, 3.0, 2, 2),
    )
    tie = search_fusion.Candidates(rows, 1.0, frozenset({"quoted"}))
    assert [hit.chunk_id for hit in search_fusion.fuse_scored(tie, 2, search_fusion.FUSION)] == [
        "quoted",
        "first",
    ]
