"""Errors that name the setting and the fix (issue 50, item 4): an `endpoint_url` that answers but is not S3, a
template whose variable is not set, a misspelt setting, and which Dagster home `s3sync` reads.

Real parts: a moto server and a small web app over HTTP, a real Dagster instance, embedded Chroma, and a project
made by `create-dagster` where `dg` and `s3sync` run as a user runs them.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from benchmarks.common import sensor_tick
from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo.local_s3 import LOOPBACK
from s3sync_dagster.config import ConfigError, load_config
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import documents_asset_key, partitions_name
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.cli.test_secret_doors import DagsterProject, create_project
from s3sync_dagster_tests.conftest import ConfigFactory, put

FILES = {"d/a.txt": "Alpha notes.\n", "d/b.md": "# Beta\n\nBeta notes.\n", "d/c.txt": "Gamma notes.\n"}
WEB_PAGE = b"<!DOCTYPE html><html><head><title>Grafana</title></head><body><p>Welcome</p></body></html>"


class _WebApp(http.server.BaseHTTPRequestHandler):
    """What answers on the port endpoint_url names: a single-page app, 200 and its page to every request."""

    def _page(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(WEB_PAGE)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(WEB_PAGE)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _page

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web_app() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _WebApp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{LOOPBACK}:{server.server_port}"
    server.shutdown()
    server.server_close()


def _state(config_path: Path) -> tuple[set[str], int, int]:
    """The source's registered keys, its runs, and the chunks its collection holds."""
    with dg.DagsterInstance.get() as instance:
        registered = set(instance.get_dynamic_partitions(partitions_name("docs")))
        runs = len(instance.get_run_records())
    store = load_config(config_path).chroma.store()  # opened as the runs open it
    return registered, runs, store.client().get_collection("docs-collection").count()


def test_an_endpoint_that_is_not_s3_is_named_once_and_no_key_is_failed_or_forgotten(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, web_app: str, capsys: Any
) -> None:
    put(s3, bucket, FILES)
    _, path = make_config(bucket, path_prefix="d/", poll_interval_seconds=1)
    assert main(["sync", "docs", "--all", "--config", str(path)]) == 0
    before = _state(path)
    assert len(before[0]) == len(FILES) and before[2] == len(FILES)
    raw = yaml.safe_load(path.read_text())
    raw["sources"][0]["endpoint_url"] = web_app  # the port of a web app, not of the S3 API
    elsewhere = path.with_name("web-app.yaml")
    elsewhere.write_text(yaml.safe_dump(raw))
    said = (
        rf"source 'docs' endpoint_url: the S3 endpoint {re.escape(web_app)} answered ListObjectsV2 with a web page "
        r"\(HTTP 200, text/html\): it did not answer as S3 does; endpoint_url must be the address of an S3 API"
    )
    capsys.readouterr()
    for argv in (["discover", "docs"], ["sync", "docs", "--all"], ["sync", "docs", "--key", "d/a.txt"]):
        assert main([*argv, "--config", str(elsewhere)]) == 2
        err = capsys.readouterr().err
        assert re.search(said, err) and "KeyError" not in err, err
    assert _state(path) == before  # no partition removed, no run made (so none failed), every chunk kept
    defs = build_definitions(load_config(elsewhere))
    with dg.DagsterInstance.get() as instance:
        # The poll sensor's tick fails, naming it: no key is taken for deleted.
        with (
            dg.build_sensor_context(instance=instance, resources=defs.resources) as context,
            pytest.raises(Exception, match=r"endpoint_url: the S3 endpoint .* did not answer as S3 does"),
        ):
            sensor_tick(defs.resolve_sensor_def("docs_poll"), context)
        # A run launched from the UI fails once, at its one step, with the same words; no key fails on its own.
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            asset_selection=[documents_asset_key("docs")],
            partition_key=keys.to_partition_key("d/a.txt"),
            raise_on_error=False,
        )
        failures = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
        assert len(failures) == 1 and failures[0].step_failure_data.user_failure_data is not None
        assert re.search(said, failures[0].step_failure_data.user_failure_data.description or "")
        assert instance.fetch_observations(documents_asset_key("docs"), limit=10).records == []
    registered, runs, chunks = _state(path)
    assert (registered, chunks) == (before[0], before[2]) and runs == before[1] + 1


COMPONENT = """\
type: s3sync_dagster.S3ChromaSync

attributes:
  sources:
    - name: handbook
      bucket_name: {bucket_name}
      region: us-east-1
      collection_name: handbook-chunks
      endpoint_url: "{{{{ env.HANDBOOK_ENDPOINT }}}}"
"""


@pytest.fixture
def project(tmp_path: Path, moto_endpoint: str) -> DagsterProject:
    made = create_project(tmp_path)
    (made.root / ".env").write_text(f"HANDBOOK_ENDPOINT={moto_endpoint}\n")
    return made


def test_an_unset_template_variable_is_named_where_the_definitions_load(project: DagsterProject, bucket: str) -> None:
    project.defs_yaml.write_text(COMPONENT.format(bucket_name='"{{ env.HANDBOOK_BUCKET }}"'))
    # `dg check yaml` gives a component no say: the template is text, as the schema takes it.
    assert project.run("dg", "check", "yaml").returncode == 0
    said = (
        "line 6: sources[0] (source 'handbook').bucket_name: {{ env.HANDBOOK_BUCKET }} renders nothing: environment "
        "variable HANDBOOK_BUCKET is not set: set it where dg and s3sync run"
    )
    for argv in (("dg", "check", "defs", "--no-check-yaml"), ("s3sync", "sources")):
        done = project.run(*argv)
        assert done.returncode != 0 and said in done.stdout + done.stderr, done.stdout + done.stderr
        assert "Input should be a valid string" not in done.stdout + done.stderr
    assert project.run("dg", "check", "defs", "--no-check-yaml", HANDBOOK_BUCKET=bucket).returncode == 0


def test_a_misspelt_setting_is_named_with_the_nearest_on_the_line_dg_gives(
    project: DagsterProject, tmp_path: Path
) -> None:
    text = COMPONENT.format(bucket_name="handbook-bucket").replace("      region:", "      regoin:")
    text += "      chunkng:\n        type: lines\n"  # a block value: its key's line, not the value's
    project.defs_yaml.write_text(text)
    lines = {key: n for n, line in enumerate(text.splitlines(), 1) for key in ("regoin", "chunkng") if key in line}
    # dg gives one problem for the mapping when two keys are wrong: each alone, each at its own line.
    for key, meant in (("regoin", "region"), ("chunkng", "chunking")):
        project.defs_yaml.write_text(text.replace("chunkng" if key == "regoin" else "regoin", meant))
        checked = project.run("dg", "check", "yaml")
        dg_line = re.search(rf"defs\.yaml:(\d+)\S* - \S*s3sync_dagster\.S3ChromaSync\S* \S*attributes\.sources\.0\.{key}",
                            checked.stdout)  # fmt: skip
        assert dg_line and int(dg_line.group(1)) == lines[key], checked.stdout[-2000:]
        ours = f"defs.yaml:{lines[key]} - attributes.sources.0.{key} Additional properties are not allowed ('{key}' "
        ours += f"was unexpected): did you mean `{meant}`?"
        for argv in (("dg", "check", "defs", "--no-check-yaml"), ("s3sync", "sources")):
            done = project.run(*argv)
            assert done.returncode != 0 and ours in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]
    # s3sync.yaml, validated by the model alone, says the same.
    path = tmp_path / "s3sync.yaml"
    path.write_text("sources:\n  - name: docs\n    bucket_nmae: docs-bucket\n    region: us-east-1\n")
    with pytest.raises(ConfigError, match=r"line 3: sources\[0\] \(source 'docs'\)\.bucket_nmae: Extra inputs are "
                       r"not permitted: did you mean `bucket_name`\?"):  # fmt: skip
        load_config(path)


def test_s3sync_says_which_dagster_home_it_reads_and_how_to_share_it(project: DagsterProject) -> None:
    project.defs_yaml.write_text(COMPONENT.format(bucket_name="handbook-bucket"))
    home = project.root / ".s3sync" / "dagster"
    done = project.run("s3sync", "sources")
    assert done.returncode == 0, done.stderr
    assert "0 registered key(s)" in done.stdout
    assert f"Dagster home: {home} (DAGSTER_HOME is not set: s3sync's default" in done.stdout
    assert f"set DAGSTER_HOME={home} in the shell, or in the Dagster project's .env" in done.stdout
    # As it says: the project's .env, which Dagster's own commands (dg dev's among them) read too.
    (project.root / ".env").write_text((project.root / ".env").read_text() + f"DAGSTER_HOME={home}\n")
    done = project.run("s3sync", "sources", "--json")
    assert yaml.safe_load(done.stdout)["dagster_home"] == {"path": str(home), "from": "DAGSTER_HOME"}
    assert f"$DAGSTER_HOME: {home}" in project.run("dagster", "instance", "info").stdout
