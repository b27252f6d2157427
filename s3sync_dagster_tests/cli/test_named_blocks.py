"""Errors, never tracebacks (issue 62, item 5): what blocks a command is named, with what to do, before it makes
anything. A re-embedding beside a `<name>-s3sync-retired` collection another tool made; a lean install (an extra
left out) whose Dagster instance (`storage: postgres`) or config (`executor.celery`) needs the extra.

A lean install is this environment with the extra's modules hidden: a `sitecustomize` in the subprocess puts None
in `sys.modules` for each, so that `import` fails and `importlib.util.find_spec` finds nothing, as where the
packages were never installed (test_wheel.py installs a real lean environment, minutes; this takes seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import s3sync_dagster
from s3sync_dagster.commands.cli import main
from s3sync_dagster.pipeline import store
from s3sync_dagster.pipeline.embedding.chroma_functions import ChromaDefaultFunction
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import TEST_KEY_ID, TEST_SECRET, Row, put, store_chunks
from s3sync_dagster_tests.safety.test_neighbours import SENTENCE, Configure, neighbourhood, sync

pytestmark = pytest.mark.reliability("fail closed")
__all__ = ["neighbourhood"]  # the fixture, shared with test_neighbours.py

BIN = Path(sys.executable).parent
HIDER = """import os, sys
for name in os.environ.get("S3SYNC_TEST_HIDDEN", "").split(","):
    if name:
        sys.modules[name] = None  # `import name` fails, find_spec(name) is None: not installed
"""
POSTGRES_MODULES = "dagster_postgres,psycopg2"  # the [postgres] extra: dagster-postgres and psycopg2-binary
CELERY_MODULES = "dagster_celery,celery,redis"  # the [celery] extra: dagster-celery (celery) and redis


def test_reembed_beside_a_retired_collection_of_another_tool_names_it_and_makes_nothing(
    neighbourhood: tuple[Path, Configure], s3: Any, bucket: str, fault_row: Row, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another tool's `<name>-s3sync-retired` beside a source's collection: `s3sync reembed` says it is in the
    way (the swap would rename the collection to it) before it makes a copy, and leaves every collection as it
    was: no `-s3sync-rebuild` behind, the other tool's chunk and the source's as they were."""
    path, configure = neighbourhood
    config = configure(docs={})
    base = config.sources[0].collection_name
    put(s3, bucket, {"docs/a.txt": SENTENCE})
    assert [r.status for r in sync(s3, config, "docs", ["docs/a.txt"])] == ["indexed"]
    client = config.chroma.store().client()
    made_by = {"made_by": "another tool"}
    theirs = client.create_collection(
        base + "-s3sync-retired",
        metadata=made_by,
        embedding_function=ChromaDefaultFunction(),  # type: ignore[arg-type]
    )
    theirs.add(ids=["theirs"], documents=["another tool's chunk"])
    recorded = client.get_collection(base).configuration_json["embedding_function"]
    configure(embedding={"precision": "int8"}, docs={})  # a model change: a re-embedding to do
    capsys.readouterr()
    assert main(["reembed", "docs", "--config", str(path)]) != 0
    said = capsys.readouterr().err
    assert f"collection '{base}-s3sync-retired' is in the way of the re-embedding of collection '{base}'" in said, said
    assert "InternalError" not in said and "UNIQUE" not in said and "Traceback" not in said, said
    store.close_clients()
    client = config.chroma.store().client()
    assert sorted(c.name for c in client.list_collections() if c.name.startswith(base)) == [
        base,
        base + "-s3sync-retired",
    ]
    assert client.get_collection(base + "-s3sync-retired").metadata == made_by  # not renamed, not marked
    assert client.get_collection(base).configuration_json["embedding_function"] == recorded  # not swapped
    ours = {(base, keys.chunk_id(keys.object_id("docs/a.txt"), 0)): SENTENCE}
    expected = {**ours, (base + "-s3sync-retired", "theirs"): "another tool's chunk"}
    found = [chunk for chunk in store_chunks(client) if chunk[0].startswith(base)]
    fault_row.observe(expected, found)
    assert sorted(found) == sorted((name, chunk_id, text) for (name, chunk_id), text in expected.items())
    fault_row.passed = True


def _lean(tmp_path: Path, hidden: str, home: Path) -> dict[str, str]:
    """The environment of a subprocess of this install without the modules `hidden`, this checkout's package
    first (a worktree's, when the test runs from one), in the Dagster home `home`."""
    site = tmp_path / "lean-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDER, encoding="utf-8")
    checkout = Path(s3sync_dagster.__file__).resolve().parent.parent
    return dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(site), str(checkout)]), S3SYNC_TEST_HIDDEN=hidden,
        DAGSTER_HOME=str(home), S3SYNC_TEST_KEY_ID=TEST_KEY_ID, S3SYNC_TEST_SECRET=TEST_SECRET,
        S3SYNC_QUERY_SERVER="0",
    )  # fmt: skip


def _config(tmp_path: Path, bucket: str, endpoint: str, **shared: Any) -> Path:
    source = {
        "name": "docs", "bucket_name": bucket, "region": "us-east-1", "endpoint_url": endpoint,
        "collection_name": "docs", "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"},
        "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
    }  # fmt: skip
    path = tmp_path / "s3sync.yaml"
    settings = {"chroma": {"path": "chroma"}, **shared, "sources": [source]}
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def _refused(command: list[str], cwd: Path, env: dict[str, str], extra: str, setting: str, ours: bool = True) -> None:
    """`command` exits non-zero saying the setting and the extra's pip command; ours (an `s3sync` command): in
    words alone, no traceback (Dagster's own commands show the load error's)."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode != 0, (command, said)
    assert setting in said and f"pip install 's3sync-dagster[{extra}]'" in said, (command, said)
    if ours:
        assert "Traceback" not in said and "CheckError" not in said, (command, said)


def _chunks(folder: Path) -> list[tuple[str, str, str]]:
    """The chunks of the embedded store in `folder`, if one was made there."""
    return store_chunks(store.Store(path=str(folder)).client()) if folder.exists() else []


def test_a_lean_install_under_a_postgres_instance_names_the_extra_at_every_s3sync_command(
    tmp_path: Path, s3: Any, bucket: str, moto_endpoint: str, fault_row: Row
) -> None:
    """No [postgres] extra, `storage: postgres` in the Dagster home's dagster.yaml: each `s3sync` command that
    opens the instance says the setting, its file and the pip command, not Dagster's `CheckError` traceback,
    before it touches the home, the bucket or the store. With the extra installed (here) the same file passes."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_url: postgresql://nobody@127.0.0.1:1/nowhere\ntelemetry:\n  enabled: false\n",
        encoding="utf-8",
    )
    path = _config(tmp_path, bucket, moto_endpoint)
    put(s3, bucket, {"docs/a.txt": SENTENCE})
    env = _lean(tmp_path, POSTGRES_MODULES, home)
    s3sync = str(BIN / "s3sync")
    for command in (["sources"], ["discover", "docs"], ["sync", "docs", "--all"], ["invocations"]):
        _refused([s3sync, *command, "--config", str(path)], tmp_path, env, "postgres", "storage.postgres")
    assert sorted(p.name for p in home.iterdir()) == ["dagster.yaml"]  # the home untouched: no lock, no database
    from s3sync_dagster.config import require_instance_extras  # here: the file also runs on code from before it

    require_instance_extras(home)  # this environment has the extra: nothing to say
    found = _chunks(tmp_path / "chroma")
    fault_row.observe({}, found)
    assert found == []
    fault_row.passed = True


def test_a_lean_install_configured_for_celery_names_the_extra_at_every_s3sync_command(
    tmp_path: Path, s3: Any, bucket: str, moto_endpoint: str, fault_row: Row
) -> None:
    """No [celery] extra, `executor.celery` in the config: `s3sync sources` (and every command that loads the
    config) exits non-zero naming the setting and the pip command, as the code location's load does
    (`dg check defs`): the config is refused as it loads, so every door says the same."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    # Celery workers write to a Chroma server (an embedded store is one host's): one no command here reaches.
    celery = {"celery": {"broker": "redis://127.0.0.1:1/0"}}
    path = _config(tmp_path, bucket, moto_endpoint, chroma={"host": "127.0.0.1", "port": 1}, executor=celery)
    put(s3, bucket, {"docs/a.txt": SENTENCE})
    env = _lean(tmp_path, CELERY_MODULES, home)
    s3sync = str(BIN / "s3sync")
    for command in (["sources"], ["sync", "docs", "--all"], ["query", "docs", "warehouse audit"]):
        _refused([s3sync, *command, "--config", str(path)], tmp_path, env, "celery", "executor.celery")
    # The code location's load, as `dg check defs` validates it (and the daemon's code server loads it).
    validate = [str(BIN / "dagster"), "definitions", "validate", "-m", "s3sync_dagster.definitions"]
    lean = {**env, "S3SYNC_CONFIG": str(path)}
    _refused(validate, tmp_path, lean, "celery", "executor.celery", ours=False)
    found = _chunks(tmp_path / "chroma")
    fault_row.observe({}, found)
    assert found == []
    fault_row.passed = True
