"""A source that reaches its bucket by assuming a role (issue 52, item 1): its own keys may only ask STS for the
role, the role may read the bucket; the sync goes through STS, the credentials are asked again before they expire,
and a role STS will not give is named with the source.

Real parts: a moto server over HTTP that checks every request against its IAM once the users, the role and the
bucket are made (moto's INITIAL_NO_AUTH_ACTION_COUNT), serving S3 and STS on one endpoint as MinIO does; the
`s3sync` command in this process; embedded Chroma."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo.local_s3 import start
from s3sync_dagster.config import ConfigError, load_config
from s3sync_dagster.defs.resources import s3_connection
from s3sync_dagster.pipeline.s3 import roles

BUCKET = "company-handbook"
FILES = {
    "policies/leave.md": "# Leave\n\nEach employee has 27 days of paid leave a year, booked in LV-7731.\n",
    "policies/travel.md": "# Travel\n\nTrain tickets over 300 euros need a manager's sign-off, form TR-2208.\n",
}
# The requests that set the server up before it checks credentials: two users with a key each and a policy each,
# the role and its policy, the bucket and its objects.
SETUP_REQUESTS = 2 * 3 + 2 + 1 + len(FILES)


@dataclass
class Account:
    endpoint_url: str
    role_arn: str
    keys: dict[str, tuple[str, str]]  # user -> (key id, secret)


def _policy(action: str, resource: str) -> str:
    return json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": resource}]}
    )


@pytest.fixture(scope="module")
def account() -> Iterator[Account]:
    """Two users who may only assume roles; the reader role's trust policy names `assumer`, not `stranger`. The role
    reads the bucket; the users' own keys cannot."""
    server = start(unchecked_requests=SETUP_REQUESTS)
    try:
        options: dict[str, Any] = {
            "endpoint_url": server.endpoint_url, "region_name": "us-east-1",
            "aws_access_key_id": "moto-setup-key-id", "aws_secret_access_key": "setup",
        }  # fmt: skip
        iam = boto3.client("iam", **options)
        keys, arns = {}, {}
        for user in ("assumer", "stranger"):
            arns[user] = iam.create_user(UserName=user)["User"]["Arn"]
            iam.put_user_policy(UserName=user, PolicyName="sts", PolicyDocument=_policy("sts:AssumeRole", "*"))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        # The role's trust policy names the assumer only, as another account's role names who may assume it.
        trust = {"Effect": "Allow", "Principal": {"AWS": [arns["assumer"]]}, "Action": "sts:AssumeRole"}
        document = json.dumps({"Version": "2012-10-17", "Statement": [trust]})
        role = iam.create_role(RoleName="handbook-reader", AssumeRolePolicyDocument=document)["Role"]
        iam.put_role_policy(RoleName="handbook-reader", PolicyName="read", PolicyDocument=_policy("s3:*", "*"))
        s3 = boto3.client("s3", **options)
        s3.create_bucket(Bucket=BUCKET)
        for object_key, text in FILES.items():
            s3.put_object(Bucket=BUCKET, Key=object_key, Body=text.encode())
        yield Account(server.endpoint_url, role["Arn"], keys)
    finally:
        server.stop()


def _config(tmp_path: Path, account: Account, user: str, monkeypatch: pytest.MonkeyPatch, **source: Any) -> Path:
    key_id, secret = account.keys[user]
    monkeypatch.setenv("HANDBOOK_KEY_ID", key_id)
    monkeypatch.setenv("HANDBOOK_SECRET", secret)
    monkeypatch.setenv("HANDBOOK_EXTERNAL_ID", "handbook-7f1c")
    entry = {
        "name": "handbook",
        "bucket_name": BUCKET,
        "region": "us-east-1",
        "collection_name": "handbook-chunks",
        "endpoint_url": account.endpoint_url,
        "aws_access_key_id": {"env": "HANDBOOK_KEY_ID"},
        "aws_secret_access_key": {"env": "HANDBOOK_SECRET"},
        **source,
    }
    path = tmp_path / "s3sync.yaml"
    path.write_text(yaml.safe_dump({"chroma": {"path": str(tmp_path / "chroma")}, "sources": [entry]}))
    return path


def _sync(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["sync", "handbook", "--all", "--json", "--config", str(path)])
    out = capsys.readouterr()
    return code, json.loads(out.out) if out.out.strip() else {"stderr": out.err}


def test_a_source_syncs_through_the_role_its_keys_may_only_assume(
    account: Account, tmp_path: Path, dagster_home: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # Its own keys alone may not read the bucket: the server checks them.
    alone = _config(tmp_path, account, "assumer", monkeypatch)
    code, said = _sync(alone, capsys)
    assert code != 0 and "refused the credentials" in json.dumps(said), said
    # Through the role (with an external id, as a trust policy across accounts asks) every object is indexed.
    through = _config(
        tmp_path,
        account,
        "assumer",
        monkeypatch,
        role_arn=account.role_arn,
        external_id={"env": "HANDBOOK_EXTERNAL_ID"},
    )
    code, said = _sync(through, capsys)
    assert code == 0, said
    assert said["counts"] == {"indexed": len(FILES)}, said
    assert "handbook-7f1c" not in json.dumps(said)


def test_a_role_sts_will_not_give_is_named_with_the_source(
    account: Account, tmp_path: Path, dagster_home: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = _config(tmp_path, account, "stranger", monkeypatch, role_arn=account.role_arn)
    code, said = _sync(path, capsys)
    assert code != 0
    text = json.dumps(said)
    assert f"source 'handbook': STS refused to let it assume the role {account.role_arn}" in text, text
    assert account.keys["stranger"][1] not in text


def test_the_roles_credentials_are_asked_again_before_they_expire(
    account: Account, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session of STS's shortest length (15 min) is within botocore's refresh window from the start: each use asks
    STS again, as a run or a lingering reader does once an hour-long session nears its end."""
    path = _config(tmp_path, account, "assumer", monkeypatch, role_arn=account.role_arn, role_duration_seconds=900)
    connection = s3_connection(load_config(path).source("handbook"))
    role = roles.Role(account.role_arn, "handbook", None, duration_seconds=900)
    key_id, secret = account.keys["assumer"]
    base = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret)
    sts = {"endpoint_url": account.endpoint_url, "region_name": "us-east-1"}
    credentials = roles.assumed_role_credentials(base, role, sts)
    first, second = (credentials.get_frozen_credentials().access_key for _ in range(2))
    assert first != second and key_id not in (first, second)
    # The source's own client signs with such credentials: a listing works across refreshes.
    client = connection.get_client()
    for _ in range(2):
        listed = client.list_objects_v2(Bucket=BUCKET)
        assert sorted(item["Key"] for item in listed["Contents"]) == sorted(FILES)


def test_role_settings_are_checked_at_load_and_the_external_id_is_a_secret(
    account: Account, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = {
        "an external id without a role": ({"external_id": {"env": "HANDBOOK_EXTERNAL_ID"}}, "give role_arn too"),
        "not a role's ARN": ({"role_arn": "arn:aws:iam::123456789012:user/assumer"}, "role_arn"),
        "a literal external id": (
            {"role_arn": account.role_arn, "external_id": "handbook-literal-3e9a"},
            "external_id: {env: S3SYNC_EXTERNAL_ID}",
        ),
    }
    for case, (settings, said) in cases.items():
        path = _config(tmp_path, account, "assumer", monkeypatch, **settings)
        with pytest.raises(ConfigError) as refused:
            load_config(path)
        assert said in str(refused.value), (case, str(refused.value))
        assert "handbook-literal-3e9a" not in str(refused.value)
