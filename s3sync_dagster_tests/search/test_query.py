"""Where people search (commands/query.py): the Python API object that keeps the store and the model open,
hits with the chunks around them (`context`), one hit per object (`per_object`), and `s3sync query`, which
imports no Dagster. Moto over HTTP -> the engine -> real Chroma, embedded and a `chroma run` server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.query import SourceSearch, search_source
from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.pipeline.search import hits
from s3sync_dagster.pipeline.search import query as engine
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster_tests.conftest import TEST_KEY_ID, TEST_SECRET, ResidentCommands, put

# One line a chunk (lines chunking, max_lines 1): each manual is a numbered procedure, so a hit's neighbours
# are known by their place. Every step names its manual's code, so a query for a code matches each step.
BIN = Path(sys.executable).parent

MANUALS = {
    f"manuals/{name}.txt": "".join(f"Step {step} of the {name} manual, code {code}: {action}.\n" for step, action in enumerate(actions))
    for name, code, actions in [
        ("boiler", "BX-4410", ["open the valve", "bleed the radiator", "check the pressure gauge", "relight the pilot", "close the panel", "log the service"]),
        ("kettle", "KT-2093", ["fill with water", "descale the element", "rinse twice", "dry the base"]),
        ("router", "RT-7788", ["unplug the power", "hold the reset pin", "wait for the lights", "log in again", "change the password"]),
    ]
}  # fmt: skip


@pytest.fixture(params=["embedded", "server"])
def searched(
    request: pytest.FixtureRequest, s3: Any, bucket: str, tmp_path: Path, moto_endpoint: str
) -> Iterator[tuple[AppConfig, Path]]:
    """A config over MANUALS, synced by the engine into the store it names (embedded, or a `chroma run` server)."""
    chroma: dict[str, Any] = {"path": "chroma"}
    if request.param == "server":
        chroma = {"host": "127.0.0.1", "port": request.getfixturevalue("chroma_server")}
    yield from synced(s3, bucket, tmp_path, moto_endpoint, chroma, MANUALS)


def synced(
    s3: Any, bucket: str, tmp_path: Path, moto_endpoint: str, chroma: dict[str, Any], objects: dict[str, str]
) -> Iterator[tuple[AppConfig, Path]]:
    source = {
        "name": "manuals", "bucket_name": bucket, "region": "us-east-1", "collection_name": f"q-{bucket}"[:60],
        "endpoint_url": moto_endpoint, "path_prefix": "manuals/", "chunking": {"type": "lines", "max_lines": 1},
        "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"}, "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
    }  # fmt: skip
    path = tmp_path / "s3sync.yaml"
    path.write_text(yaml.safe_dump({"chroma": chroma, "sources": [source]}), encoding="utf-8")
    config = load_config(path)
    put(s3, bucket, objects)
    spec = config.sources[0].spec(config.embedding.spec())
    collection = config.chroma.store().collection(spec.collection_name, config.embedding.spec())
    reports = sync_keys(s3, spec, lambda _: collection, config.embedding.spec().build(), sorted(objects))
    assert [report.status for report in reports] == ["indexed"] * len(objects), reports
    yield config, path
    config.chroma.store().client().delete_collection(spec.collection_name)


def lines_of(name: str) -> list[str]:
    return MANUALS[f"manuals/{name}.txt"].splitlines(keepends=True)


def test_a_hit_comes_with_the_chunks_around_it_in_the_objects_order(searched: tuple[AppConfig, Path]) -> None:
    config, _ = searched
    searcher = SourceSearch("manuals", config)
    (hit,) = searcher.search("BX-4410 bleed the radiator", mode="lexical", n=1, context=1)
    assert hit.object_key == "manuals/boiler.txt" and hit.metadata["chunk_index"] == 1
    assert [(p.chunk_index, p.document) for p in hit.context] == list(enumerate(lines_of("boiler")))[0:3]
    assert hit.context[1].chunk_id == hit.chunk_id
    # At an object's ends there are fewer neighbours; a wide context stops at the last chunk.
    (last,) = searcher.search("KT-2093 dry the base", mode="lexical", n=1, context=3)
    assert last.metadata["chunk_index"] == 3
    assert [p.document for p in last.context] == lines_of("kettle")
    (first,) = searcher.search("RT-7788 unplug the power", mode="lexical", n=1, context=2)
    assert [p.chunk_index for p in first.context] == [0, 1, 2]
    # No context asked: none read.
    assert searcher.search("BX-4410 bleed the radiator", mode="lexical", n=1)[0].context == ()


def test_per_object_keeps_each_objects_best_hit(searched: tuple[AppConfig, Path]) -> None:
    config, _ = searched
    searcher = SourceSearch("manuals", config)
    query = "which step of the manual has code BX-4410, KT-2093 or RT-7788"
    for mode in ("dense", "lexical", "hybrid"):
        every = searcher.search(query, mode=mode, n=10)
        assert len({hit.object_key for hit in every}) < len(every), mode  # several steps of one manual
        one_each = searcher.search(query, mode=mode, n=3, per_object=1)
        assert sorted(hit.object_key for hit in one_each) == sorted(MANUALS), mode
        best = {}
        for hit in searcher.search(query, mode=mode, n=60):
            best.setdefault(hit.object_key, hit.chunk_id)
        assert {hit.object_key: hit.chunk_id for hit in one_each} == best, mode
        two_each = searcher.search("BX-4410", mode=mode, n=5, per_object=2)
        assert max(sum(h.object_key == key for h in two_each) for key in MANUALS) <= 2, mode


def test_per_object_reads_past_one_long_object_ranking_each_pool_once(
    s3: Any, bucket: str, tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One long manual whose 60 steps all name the code (three times) ahead of three short ones (once, among lines
    # that do not): the first pool's 20 best are all the long one's, so the short ones are found further down. Each is ranked
    # once (the widening used to ask for 3 hits, then 12, then 48, ranking the first pool again each time).
    objects = {
        "manuals/long.txt": "".join(f"Step {i}: code QZ-5150 QZ-5150 QZ-5150, press the button.\n" for i in range(60)),
        **{
            f"manuals/short{i}.txt": f"Note {i}: code QZ-5150 appears once here.\n"
            + "".join(f"Line {j} is about something else.\n" for j in range(60))
            for i in range(3)
        },
    }
    configured = synced(s3, bucket, tmp_path, moto_endpoint, {"path": "chroma"}, objects)
    config, _ = next(configured)
    searcher = SourceSearch("manuals", config)
    pools: list[int] = []
    ranked = engine.ranked

    def counted(*args: Any) -> list[Any]:
        pools.append(args[3])
        return ranked(*args)

    monkeypatch.setattr(engine, "ranked", counted)
    for mode in ("lexical", "hybrid"):
        pools.clear()
        one_each = searcher.search("code QZ-5150", mode=mode, n=4, per_object=1)
        assert sorted(hit.object_key for hit in one_each) == sorted(objects), mode
        assert len(pools) == len(set(pools)) > 1, (mode, pools)  # more than one pool read, none of them twice
        every = searcher.search("code QZ-5150", mode=mode, n=63)
        assert [hit.chunk_id for hit in one_each] == [hit.chunk_id for hit in hits.per_object(every, 1)][:4], mode
    next(configured, None)


def test_one_searcher_answers_many_queries_as_one_off_searches_do(searched: tuple[AppConfig, Path]) -> None:
    config, _ = searched
    searcher = SourceSearch("manuals", config)
    collection = searcher.collection
    for text in ("how do I get back into my router", "KT-2093", "the heating is cold"):
        kept = [(hit.chunk_id, hit.score) for hit in searcher.search(text, n=3)]
        once = [(hit.chunk_id, hit.score) for hit in search_source("manuals", text, n=3, config=config)]
        assert kept == once, text
    assert searcher.collection is collection  # opened once


def test_s3sync_query_shows_context_and_one_hit_per_object(
    searched: tuple[AppConfig, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = searched
    argv = ["query", "manuals", "RT-7788 hold the reset pin", "--config", str(path)]
    assert main([*argv, "--mode", "lexical", "-n", "1", "--context", "1", "--json"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)["results"]
    assert hit["chunk_index"] == 1 and [c["chunk_index"] for c in hit["context"]] == [0, 1, 2]
    assert [c["document"] for c in hit["context"]] == lines_of("router")[0:3]
    assert main([*argv, "-n", "3", "--per-object", "1", "--json"]) == 0
    keys = [hit["object_key"] for hit in json.loads(capsys.readouterr().out)["results"]]
    assert sorted(keys) == sorted(MANUALS)
    assert main([*argv, "--mode", "lexical", "-n", "1", "--context", "1"]) == 0
    shown = capsys.readouterr().out.splitlines()
    # The hit, its passage (the part of its section that answers), then its neighbours with the hit marked.
    assert shown[0].startswith("1. manuals/router.txt") and "RT-7788" in shown[1]
    marked = [line for line in shown if line.startswith("   > ")]
    assert len(marked) == 1 and marked[0].startswith("   > Step 1 of the router manual")
    # Lines chunking: no headings, so the section is the object (at most SECTION_REACH chunks each side).
    assert main([*argv, "--mode", "lexical", "-n", "1", "--context", "section", "--json"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)["results"]
    assert [c["document"] for c in hit["context"]] == lines_of("router")
    for bad, rule in (
        ("--context=-1", "--context must be at least 0"),
        ("--context=page", "give a number of chunks or 'section'"),
        ("--per-object=0", "--per-object must be"),
    ):
        assert main([*argv, bad]) == 2
        assert rule in capsys.readouterr().err


def test_s3sync_query_imports_no_dagster(searched: tuple[AppConfig, Path]) -> None:
    """The command answers a search without importing Dagster (or dagster-aws, ...): a fresh process runs it,
    then lists what it imported."""
    _, path = searched
    script = (
        "import json, sys\n"
        "from s3sync_dagster.commands.cli import main\n"
        f"code = main(['query', 'manuals', 'reset the router', '--config', {str(path)!r}, '--json'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster'))\n"
        "print(json.dumps({'code': code, 'dagster': heavy}), file=sys.stderr)\n"
    )
    env = dict(os.environ, S3SYNC_TEST_KEY_ID=TEST_KEY_ID, S3SYNC_TEST_SECRET=TEST_SECRET)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "dagster": []}, done.stderr[-3000:]
    assert json.loads(done.stdout)["results"][0]["object_key"] == "manuals/router.txt"
    # The same script through a command that needs Dagster does import it: the check can see an import.
    syncing = script.replace("['query', 'manuals', 'reset the router',", "['discover', 'manuals',")
    done = subprocess.run([sys.executable, "-c", syncing], capture_output=True, text=True, env=env, timeout=300)
    assert json.loads(done.stderr.strip().splitlines()[-1])["dagster"], done.stderr[-3000:]


# Embedded only: a server's client is always current, and the resident process runs the same command for it.
@pytest.mark.parametrize("searched", ["embedded"], indirect=True)
def test_a_resident_process_answers_later_queries_and_sees_other_writers(
    searched: tuple[AppConfig, Path], s3: Any, bucket: str, tmp_path: Path
) -> None:
    """`s3sync query` answers the first query itself and leaves a resident process (commands/resident.py) that
    answers the next ones as it would, importing nothing on the caller's side, and sees what another process
    writes to the store after it opened it (an embedded client keeps its index in memory)."""
    config, path = searched
    s3sync = ResidentCommands()
    env, run_dir, served = s3sync.env, s3sync.run_dir, s3sync.served

    def query(text: str, mode: str = "lexical") -> list[str]:
        done = s3sync("query", "manuals", text, "--config", str(path), "--mode", mode, "-n", "1", "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        return [hit["object_key"] for hit in json.loads(done.stdout)["results"]]

    try:
        assert served() is None
        assert query("KT-2093 descale the element") == ["manuals/kettle.txt"]  # answered here; one is started
        before = s3sync.wait_until_serving()
        assert before is not None, [(p.name, p.read_text()[-2000:]) for p in run_dir.glob("*/*.log")]
        assert query("RT-7788 hold the reset pin") == ["manuals/router.txt"]
        assert served() == before + 1
        # The caller imports none of chromadb, Dagster or the config on that path.
        script = (
            "import json, sys\n"
            "from s3sync_dagster.commands.launcher import main\n"
            f"code = main(['query', 'manuals', 'BX-4410', '--config', {str(path)!r}, '-n', '1', '--json'])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('chromadb', 'dagster', 'onnxruntime')"
            " or m == 's3sync_dagster.config')\n"
            "print(json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)\n"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert json.loads(done.stderr.strip().splitlines()[-1]) == {"code": 0, "heavy": []}, done.stderr[-2000:]
        assert json.loads(done.stdout)["results"][0]["object_key"] == "manuals/boiler.txt"
        assert served() == before + 2
        # Another process (this one) writes a new manual into the store the resident process has open.
        oven = {"manuals/oven.txt": "Step 0 of the oven manual, code OV-5150: preheat the oven.\n"}
        put(s3, bucket, oven)
        spec = config.sources[0].spec(config.embedding.spec())
        collection = config.chroma.store().collection(spec.collection_name, config.embedding.spec())
        (report,) = sync_keys(s3, spec, lambda _: collection, config.embedding.spec().build(), sorted(oven))
        assert report.status == "indexed", report
        # By meaning: the HNSW index, which a client opened before the write does not have.
        assert query("preheat the oven", mode="dense") == ["manuals/oven.txt"]
        assert served() == before + 3
        # A bad request is told as the command tells it, through the resident process too.
        bad = s3sync("query", "manuals", "oven", "--config", str(path), "--per-object=0")
        assert bad.returncode == 2 and "--per-object must be at least 1" in bad.stderr
    finally:
        stopped = json.loads(s3sync("query-server", "stop", "--json").stdout)
    assert "pid" in stopped and not stopped["running"]
    assert served() is None
    shutil.rmtree(run_dir)
    # A socket path too long to bind: no resident process, and the reason; queries are answered in their own.
    env["XDG_RUNTIME_DIR"] = str(tmp_path / ("long-" * 20))
    Path(env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700)
    refused = json.loads(s3sync("query-server", "start", "--json").stdout)
    assert not refused["running"] and "longer than 103 bytes" in refused["why"], refused
    assert query("RT-7788 hold the reset pin") == ["manuals/router.txt"]
