"""No door echoes a literal secret (issue 50, item 3): a value written where a secret goes is refused with the field's
path and the `{env: VAR}` to write instead, and the value itself appears in no output and in no file of the
instance.

The doors: `dg check yaml`, `dg check defs`, the `s3sync` commands, the UI (`dg dev`'s code location, read through
the webserver's GraphQL, as the UI reads it), Dagster's own loading of an `s3sync.yaml` code location, and the
instance (its event log, runs and ticks). A run and a sensor tick both start by loading the definitions, which
refuse the secret: none happens, and the instance's files are searched for the value all the same.

`dg check yaml` validates the attributes against the component's JSON schema and prints the file's lines around
each problem it finds (and a problem in an object quotes the whole object): a literal secret anywhere makes that
schema take the attributes as they are (config.literal_secret_schema), so dg shows nothing, and the component's
load refuses the secret before anything else reads the settings. The test writes a misspelt setting on the line
after the secret, and a wrong value two lines below it, to show that no problem of theirs brings the secret's
line out either.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from benchmarks.servers.dagster_server import spawn, stop_group
from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo.local_s3 import LOOPBACK, free_port
from s3sync_dagster.config import ConfigError, component_schema, literal_secret_schema, literal_secrets, parse_config

BIN = Path(sys.executable).parent
PROJECT = "riverbank"
# A value no other string of the run contains: found anywhere, it was echoed. A digit first: no variable's name.
SECRET = secrets.choice(string.digits) + "".join(
    secrets.choice(string.ascii_letters + string.digits) for _ in range(39)
)
SHAPED = "AKIA" + SECRET.upper()[:16]  # an AWS access key id's shape, refused wherever it stands
FIELD = "sources[0] (source 'handbook').aws_secret_access_key"
COMPONENT = """\
type: s3sync_dagster.S3ChromaSync

attributes:
  chroma:
    path: .s3sync/chroma
  sources:
    - name: handbook
      bucket_name: "{bucket}"
      region: "us-east-1"
      collection_name: "handbook-chunks"
      endpoint_url: "{{{{ env.HANDBOOK_ENDPOINT }}}}"
      aws_access_key_id: {{env: S3SYNC_TEST_KEY_ID}}
      aws_secret_access_key: {secret}
      regoin: "us-east-1"
  documents:
    ocr: maybe
"""


@dataclass
class DagsterProject:
    """A project as `create-dagster project` makes it, with one S3ChromaSync component (its `src` on PYTHONPATH,
    where an install would put it: pip would fetch the project's build backend from the index)."""

    root: Path
    env: dict[str, str]

    @property
    def defs_yaml(self) -> Path:
        return self.root / "src" / PROJECT / "defs" / "handbook" / "defs.yaml"

    def run(self, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`dg ...`, `s3sync ...` or `dagster ...` in the project, as a user runs them."""
        return subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            cwd=self.root, env={**self.env, **env}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip


def create_project(parent: Path) -> DagsterProject:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(parent / PROJECT / "src"), os.environ.get("PYTHONPATH")])),
        DAGSTER_DG_UPDATE_CHECK_ENABLED="0",  # it would ask PyPI for a newer create-dagster
        DAGSTER_DISABLE_TELEMETRY="1",
    )
    for variable in ("S3SYNC_CONFIG", "DAGSTER_HOME"):
        env.pop(variable, None)
    made = subprocess.run(
        [str(BIN / "create-dagster"), "project", PROJECT, "--no-uv-sync"],
        cwd=parent, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    project = DagsterProject(parent / PROJECT, env)
    project.defs_yaml.parent.mkdir(parents=True)
    return project


def refused(said: str, field: str = FIELD) -> None:
    assert SECRET not in said and SHAPED not in said
    assert field in said and "{env: " in said, said[-3000:]


def files_holding(folder: Path, value: str) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and value.encode() in path.read_bytes()]


# What the UI reads of a code location that failed to load: the error, its causes, their stacks.
LOAD_ERROR = """
query { workspaceOrError { ... on Workspace { locationEntries { loadStatus locationOrLoadError {
  __typename ... on PythonError { message stack causes { message stack } } } } } } }"""


def ui_load_error(project: DagsterProject, home: Path, log: Path) -> str:
    """The code location's load error as `dg dev`'s webserver gives it to the UI (all of it, as JSON)."""
    port = free_port()
    argv = [str(BIN / "dg"), "dev", "--host", LOOPBACK, "--port", str(port)]
    process = spawn(argv, {**project.env, "DAGSTER_HOME": str(home)}, log, project.root)
    try:
        with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=30) as client:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                assert process.poll() is None, log.read_text(errors="replace")[-3000:]
                try:
                    body = client.post("/graphql", json={"query": LOAD_ERROR}).json()
                    entries = body["data"]["workspaceOrError"]["locationEntries"]
                    if entries and entries[0]["loadStatus"] == "LOADED":
                        return json.dumps(entries[0]["locationOrLoadError"])
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        raise TimeoutError(log.read_text(errors="replace")[-3000:])
    finally:
        stop_group(process)


def test_no_door_of_a_component_echoes_a_literal_secret(tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    project = create_project(tmp_path)
    (project.root / ".env").write_text(f"HANDBOOK_ENDPOINT={moto_endpoint}\n")
    project.defs_yaml.write_text(COMPONENT.format(bucket=bucket, secret=SECRET))
    checked = project.run("dg", "check", "yaml")
    assert SECRET not in checked.stdout + checked.stderr
    loaded = project.run("dg", "check", "defs")
    assert loaded.returncode != 0
    refused(loaded.stdout + loaded.stderr)
    assert "line 13: " + FIELD in loaded.stdout + loaded.stderr
    for argv in (("sources",), ("sync", "handbook", "--all")):
        done = project.run("s3sync", *argv)
        assert done.returncode == 2, done.stdout + done.stderr
        refused(done.stdout + done.stderr)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    log = tmp_path / "dg-dev.log"
    refused(ui_load_error(project, home, log))
    assert SECRET not in log.read_text(errors="replace")
    # Nothing ran, nothing ticked; whatever the instances hold, the value is in none of their files.
    assert files_holding(home, SECRET) == []
    assert files_holding(project.root / ".s3sync", SECRET) == []


CASES = {
    "sources[0] (source 'docs').aws_secret_access_key": {"sources": [{"aws_secret_access_key": SECRET}]},
    "sources[0] (source 'docs').aws_session_token": {"sources": [{"aws_session_token": {"env": f"x-{SECRET}"}}]},
    "sources[0] (source 'docs').aws_access_key_id": {"sources": [{"aws_access_key_id": "{{ '" + SECRET + "' }}"}]},
    "sources[0] (source 'docs').endpoint_url": {"sources": [{"endpoint_url": f"https://minio:{SECRET}@minio:9000"}]},
    "chroma.cloud.api_key": {"chroma": {"cloud": {"tenant": "t", "database": "d", "api_key": SECRET, "x": 1}}},
    "chroma.headers.X-Api-Key": {"chroma": {"host": "chroma", "headers": {"X-Api-Key": SECRET, "port": 1}}},
    "chroma.lexicon_postgres": {"chroma": {"host": "chroma", "lexicon_postgres": f"postgresql://u:{SECRET}@db/x"}},
    "embedding.config.default_headers.Authorization": {
        "embedding": {"function": "openai", "bogus": 1, "config": {"default_headers": {"Authorization": SECRET}}}
    },
    "embedding.config.api_key_env_var": {"embedding": {"function": "openai", "config": {"api_key_env_var": SECRET}}},
    "webserver.api_token": {"webserver": {"api_token": SECRET, "url": 3}},
    "executor.celery.broker": {"executor": {"celery": {"broker": f"redis://:{SECRET}@redis:6379/0", "x": 1}}},
    "sources[0] (source 'docs').path_prefix": {"sources": [{"path_prefix": SHAPED}]},
}


def settings(case: dict[str, Any]) -> dict[str, Any]:
    """The case's settings beside one valid source (and a misspelt setting of it: no problem of the schema)."""
    source = {"name": "docs", "bucket_name": "docs-bucket", "region": "us-east-1", "collection_name": "docs-c"}
    return {**case, "sources": [{**source, "regoin": "x", **item} for item in case.get("sources", [{}])]}


@pytest.mark.parametrize("field", list(CASES))
def test_every_secret_field_is_refused_by_name_and_dg_sees_nothing_to_show(
    field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = settings(CASES[field])
    # dg's check: no problem, so no lines of the file and no quoted object (each case also breaks another rule).
    assert list(Draft202012Validator(component_schema()).iter_errors(raw)) == []
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "s3sync.yaml")
    refused(str(caught.value), field)
    path = tmp_path / "s3sync.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["sources", "--config", str(path)]) == 2
    said = capsys.readouterr()
    refused(said.out + said.err, field)


def test_an_s3sync_yaml_code_location_is_refused_by_dagster_without_the_value(tmp_path: Path) -> None:
    path = tmp_path / "s3sync.yaml"
    path.write_text(yaml.safe_dump(settings(CASES["sources[0] (source 'docs').aws_secret_access_key"])))
    env = {**os.environ, "S3SYNC_CONFIG": str(path), "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "s3sync_dagster.definitions"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    refused(done.stdout + done.stderr, "sources[0] (source 'docs').aws_secret_access_key")


# Settings of every shape the rules look at: secret fields, URLs, headers, a function's config at any depth.
_TEXTS = ["docs", "{{ env.X }}", "NAME_1", "bad-name", "AKIA" + "ABCDEFGHIJKLMNOP", "http://u:p@h", "http://h/a@b"]
_KEYS = ["env", "api_key", "Authorization", "X-Team", "api_key_env_var", "model_name", "nested", "url", "host"]
_LEAVES = st.one_of(
    st.none(), st.integers(0, 2), st.sampled_from(_TEXTS), st.just({"env": "NAME_1"}), st.just({"env": "bad-name"})
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=3)),
    max_leaves=6,
)


def _mapping(*keys: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from([*keys, *_KEYS]), _VALUES, max_size=4)


_SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "sources": st.lists(
            _mapping("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "endpoint_url", "path_prefix"),
            max_size=2,
        ),
        "chroma": st.fixed_dictionaries(
            {},
            optional={"cloud": _mapping("tenant"), "headers": _mapping(), "host": _VALUES, "lexicon_postgres": _VALUES},
        ),
        "embedding": st.fixed_dictionaries({}, optional={"config": _mapping()}),
        "webserver": _mapping("api_token"),
        "executor": st.fixed_dictionaries({}, optional={"celery": _mapping("broker", "backend")}),
    },
)


@given(_SETTINGS)
def test_the_schema_dg_is_given_finds_the_literal_secrets_the_load_refuses(raw: dict[str, Any]) -> None:
    """literal_secret_schema() (what lets dg's check pass, showing nothing) is literal_secrets() (what the load
    refuses first): where one finds a secret, so does the other."""
    schema = {**literal_secret_schema(), "$defs": component_schema()["$defs"]}
    assert Draft202012Validator(schema).is_valid(raw) == bool(literal_secrets(raw)), literal_secrets(raw)
