"""Every user-caused failure we know, on both doors: the message names the field (or the variable) and the fix.

The table: a config field of the wrong type, an unset credential variable, a bucket that does not exist,
credentials the endpoint refuses, an endpoint that does not answer, an embedded Chroma path that cannot be a
folder, a Chroma server that does not answer. Each is met through `s3sync sync` and through a Dagster run of
the source's asset (what a launch from the UI executes) on a real instance.

- `s3sync` says it in one line before any run: no run is made, so no partition is marked failed.
- A Dagster run fails once, at its one step, with the same words: no key fails on its own, and a bucket
  that is not there is never read as objects deleted (their chunks stay).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import yaml

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo.local_s3 import LOOPBACK, free_port, start
from s3sync_dagster.config import load_config
from s3sync_dagster.definitions import build_definitions, load_app_config
from s3sync_dagster.defs.names import documents_asset_key, partitions_name
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import TEST_KEY_ID, TEST_SECRET, ConfigFactory, put

Raw = dict[str, Any]


@dataclass(frozen=True)
class Case:
    change: Callable[[Raw, Path, str], None]  # (the config, a scratch folder, the strict endpoint) -> in place
    said: str  # a regular expression the message must match: the field or variable, and the fix
    strict: bool = False  # the source's bucket is on a moto server that checks credentials
    lines: int = 1  # a config's problems are listed a line each under the file's name


def _source(raw: Raw, **fields: Any) -> None:
    raw["sources"][0].update(fields)


def _strict(raw: Raw, scratch: Path, endpoint: str) -> None:
    _source(raw, endpoint_url=endpoint, bucket_name="strict-bucket")


def _not_a_folder(raw: Raw, scratch: Path, endpoint: str) -> None:
    (scratch / "a-file").write_text("not a folder\n")
    raw["chroma"] = {"path": str(scratch / "a-file" / "chroma")}


CASES = {
    "config field": Case(
        lambda raw, scratch, endpoint: _source(raw, keys_per_run="lots"),
        r"s3sync\.yaml: 1 problem\(s\):\n  line 11: sources\[0\] \(source 'docs'\)\.keys_per_run: Input should be "
        r"a valid integer",
        lines=2,
    ),
    "environment variable": Case(
        lambda raw, scratch, endpoint: _source(raw, aws_secret_access_key={"env": "S3SYNC_TEST_UNSET"}),
        r"^source 'docs' aws_secret_access_key: environment variable S3SYNC_TEST_UNSET is not set: set it where "
        r"s3sync and Dagster run",
    ),
    "bucket": Case(
        lambda raw, scratch, endpoint: _source(raw, bucket_name="no-such-bucket-here"),
        r"^source 'docs' bucket_name: bucket 'no-such-bucket-here' does not exist at the S3 endpoint "
        r"http://127\.0\.0\.1:\d+: correct bucket_name",
    ),
    "credentials": Case(
        _strict,
        r"^source 'docs': the S3 endpoint http://127\.0\.0\.1:\d+ refused the credentials for bucket 'strict-bucket' "
        r"\(403\): check aws_access_key_id \(variable S3SYNC_TEST_KEY_ID\) and aws_secret_access_key "
        r"\(variable S3SYNC_TEST_SECRET\)",
        strict=True,
    ),
    "endpoint": Case(
        lambda raw, scratch, endpoint: _source(raw, endpoint_url=f"http://{LOOPBACK}:{free_port()}"),
        r"^source 'docs' endpoint_url: the S3 endpoint http://127\.0\.0\.1:\d+ cannot be reached: Connection "
        r"refused \(\d attempts\): correct endpoint_url, or start the endpoint",
    ),
    "chroma path": Case(
        _not_a_folder,
        r"^embedded Chroma at \S+/a-file/chroma cannot be opened: Not a directory: '\S+/a-file(/chroma)?': "
        r"set chroma.path to a folder this user can create and write",
    ),
    "chroma server": Case(
        lambda raw, scratch, endpoint: raw.update(chroma={"host": LOOPBACK, "port": free_port()}),
        r"^Chroma server http://127\.0\.0\.1:\d+ cannot be reached: Connection refused: check chroma\.host and "
        r"chroma\.port, and that a Chroma server runs there",
    ),
}


@pytest.fixture(scope="module")
def strict_endpoint() -> Iterator[str]:
    """A moto server that checks credentials after its first request (which makes the bucket)."""
    server = start(unchecked_requests=1)
    try:
        boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1").create_bucket(
            Bucket="strict-bucket"
        )
        yield server.endpoint_url
    finally:
        server.stop()


@pytest.fixture
def broken(
    request: pytest.FixtureRequest, s3: Any, bucket: str, make_config: ConfigFactory, tmp_path: Path
) -> tuple[Case, Path]:
    """The case's config: a synced-looking source (an object, its partition) with one thing wrong."""
    case: Case = CASES[request.param]
    put(s3, bucket, {"d/a.txt": "a\n"})
    _, path = make_config(bucket, path_prefix="d/")
    raw = yaml.safe_load(path.read_text())
    endpoint = request.getfixturevalue("strict_endpoint") if case.strict else ""
    case.change(raw, tmp_path, endpoint)
    path.write_text(yaml.safe_dump(raw))
    return case, path


def _message_is_right(case: Case, message: str) -> None:
    assert re.search(case.said, message), message
    assert TEST_SECRET not in message and TEST_KEY_ID not in message
    assert message.strip().count("\n") == case.lines - 1 and "Traceback" not in message


@pytest.mark.parametrize("broken", list(CASES), indirect=True, ids=list(CASES))
def test_s3sync_names_the_field_and_the_fix_before_any_run(
    broken: tuple[Case, Path], dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case, path = broken
    capsys.readouterr()
    assert main(["sync", "docs", "--all", "--config", str(path)]) == 2
    err = capsys.readouterr().err  # after the instance's warning of missing settings, if it is a fresh home
    err = err[err.rindex("s3sync: ") :] if "s3sync: " in err else err
    assert err.startswith("s3sync: "), err
    _message_is_right(case, err.removeprefix("s3sync: "))
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_records() == []  # nothing ran: no partition is marked failed


@pytest.mark.parametrize("broken", list(CASES), indirect=True, ids=list(CASES))
def test_a_dagster_run_fails_once_naming_the_field_and_the_fix(
    broken: tuple[Case, Path], instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    case, path = broken
    if case is CASES["config field"]:  # the code location loads the config: Dagster's error is ours
        monkeypatch.setenv("S3SYNC_CONFIG", str(path))
        with pytest.raises(Exception) as raised:
            load_app_config()
        _message_is_right(case, str(raised.value))
        return
    config = load_config(path)
    partition_key = keys.to_partition_key("d/a.txt")
    instance.add_dynamic_partitions(partitions_name("docs"), [partition_key])
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[documents_asset_key("docs")],
        partition_key=partition_key,
        raise_on_error=False,
    )
    assert not result.success
    failures = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1
    data = failures[0].step_failure_data
    assert data.user_failure_data is not None, data.error  # our dg.Failure, not a traceback
    _message_is_right(case, data.user_failure_data.description or "")
    if case is CASES["chroma server"]:  # the whole chain is kept in the run's log, for whoever digs
        assert data.error is not None and data.error.cause is not None
        assert "Connection refused" in data.error.cause.to_string()
    observed = instance.fetch_observations(documents_asset_key("docs"), limit=10).records
    assert observed == []  # no key failed on its own: the run said it once
