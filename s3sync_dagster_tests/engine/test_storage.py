"""Issue 52 items 4-6 against a moto server over HTTP: archived storage classes, versioned buckets, requester pays
and SSE-C. moto keeps storage classes, RestoreObject, versions and delete markers; it accepts requester-pays and
SSE-C requests without enforcing them (any key decrypts), so those tests read what the client sent on the wire
(botocore's before-send, the real request) and the refusal's wording is checked on its own."""

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from s3sync_dagster.commands.cli import main
from s3sync_dagster.defs.resources import s3_connection
from s3sync_dagster.pipeline.s3 import archive
from s3sync_dagster.pipeline.s3.request_settings import RequestSettings, refusal_hint
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync.stages import sync_object
from s3sync_dagster_tests.conftest import ConfigFactory, CountingEmbedder, put


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def chunks_of(path: Path, object_key: str) -> dict[str, dict[str, Any]]:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(path.parent / "chroma"), settings=Settings(anonymized_telemetry=False))
    found = client.get_collection("docs-collection").get(where={"object_key": object_key}, include=["metadatas"])
    return dict(zip(found["ids"], found["metadatas"], strict=True))


def test_archived_object_is_reported_not_failed_keeps_its_chunks_and_syncs_once_restored(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(s3, bucket, {"a/old.txt": "the first version of an object that is archived later\n", "a/plain.txt": "hi\n"})
    s3.put_object(
        Bucket=bucket, Key="a/cold.txt", Body=b"an object written straight to glacier\n", StorageClass="GLACIER"
    )
    _, path = make_config(bucket, path_prefix="a/")
    code, first = run_json(capsys, "sync", "docs", "--all", "--config", str(path))
    assert code == 0, first
    assert first["counts"] == {"indexed": 2, "archived": 1}
    [cold] = [report for report in first["keys"] if report["object_key"] == "a/cold.txt"]
    assert "GLACIER" in cold["message"] and "not restored" in cold["message"]
    assert chunks_of(path, "a/cold.txt") == {}
    before = chunks_of(path, "a/old.txt")
    assert before and all("version_id" not in meta for meta in before.values())  # unversioned: no version id

    # A new version written to an archive class: not read, the earlier chunks stay.
    s3.put_object(Bucket=bucket, Key="a/old.txt", Body=b"a second version, archived\n", StorageClass="DEEP_ARCHIVE")
    code, second = run_json(capsys, "sync", "docs", "--key", "a/old.txt", "--key", "a/cold.txt", "--config", str(path))
    assert code == 0, second
    assert second["counts"] == {"archived": 2}
    assert chunks_of(path, "a/old.txt") == before

    s3.restore_object(Bucket=bucket, Key="a/cold.txt", RestoreRequest={"Days": 1})
    code, third = run_json(capsys, "sync", "docs", "--key", "a/cold.txt", "--config", str(path))
    assert code == 0 and third["counts"] == {"indexed": 1}, third
    assert chunks_of(path, "a/cold.txt")


def test_archived_reason_by_class_tier_and_restore() -> None:
    assert archive.archived_reason({"StorageClass": "GLACIER"}) == "in storage class GLACIER, not restored"
    assert archive.archived_reason({"StorageClass": "GLACIER_IR"}) is None  # read at once
    assert archive.archived_reason({}) is None  # STANDARD: S3 leaves StorageClass out
    assert "restore is in progress" in str(
        archive.archived_reason({"StorageClass": "DEEP_ARCHIVE", "Restore": 'ongoing-request="true"'})
    )
    restored = {"StorageClass": "GLACIER", "Restore": 'ongoing-request="false", expiry-date="Fri, 01 Jan 2027"'}
    assert archive.archived_reason(restored) is None
    tiered = {"StorageClass": "INTELLIGENT_TIERING", "ArchiveStatus": "DEEP_ARCHIVE_ACCESS"}
    assert (
        archive.archived_reason(tiered)
        == "in storage class INTELLIGENT_TIERING (tier DEEP_ARCHIVE_ACCESS), not restored"
    )
    assert archive.archived_reason({"StorageClass": "INTELLIGENT_TIERING"}) is None


def test_versioned_bucket_records_version_ids_shows_them_in_hits_and_a_delete_marker_removes(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    put(s3, bucket, {"v/a.txt": "the first version of a versioned object\n"})
    version = s3.put_object(Bucket=bucket, Key="v/a.txt", Body=b"the zebra version of a versioned object\n")[
        "VersionId"
    ]
    _, path = make_config(bucket, path_prefix="v/")
    code, synced = run_json(capsys, "sync", "docs", "--all", "--config", str(path))
    assert code == 0 and synced["counts"] == {"indexed": 1}, synced
    stored = chunks_of(path, "v/a.txt")
    assert stored and {meta["version_id"] for meta in stored.values()} == {version}

    code, found = run_json(capsys, "query", "docs", "zebra version", "--config", str(path))
    assert code == 0 and found["results"][0]["version_id"] == version
    assert main(["query", "docs", "zebra version", "--config", str(path)]) == 0
    assert f"v/a.txt (version {version})" in capsys.readouterr().out

    s3.delete_object(Bucket=bucket, Key="v/a.txt")  # a delete marker: the versions stay, HEAD answers 404
    code, removed = run_json(capsys, "sync", "docs", "--key", "v/a.txt", "--config", str(path))
    assert code == 0 and removed["counts"] == {"removed": 1}, removed
    assert "delete marker" in removed["keys"][0]["message"] or removed["keys"][0]["chunks_deleted"] == len(stored)
    assert chunks_of(path, "v/a.txt") == {}


def test_requester_pays_and_customer_key_are_sent_on_every_request_and_never_shown(
    s3: Any,
    bucket: str,
    make_config: ConfigFactory,
    chroma_client: Any,
    embedder: CountingEmbedder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    customer_key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("S3SYNC_TEST_SSE_KEY", customer_key)
    s3.put_object(
        Bucket=bucket, Key="k/secret.txt", Body=b"text kept under a customer key\n",
        SSECustomerAlgorithm="AES256", SSECustomerKey=base64.b64decode(customer_key),
    )  # fmt: skip
    s3.put_bucket_request_payment(Bucket=bucket, RequestPaymentConfiguration={"Payer": "Requester"})
    config, _ = make_config(
        bucket, path_prefix="k/", request_payer="requester", sse_customer_key={"env": "S3SYNC_TEST_SSE_KEY"}
    )
    source = config.source("docs")
    connection = s3_connection(source)
    assert customer_key not in json.dumps(connection.model_dump(), default=str)  # the run config holds its name
    client = connection.get_client()
    sent: list[tuple[str, str, dict[str, str]]] = []

    def record(request: Any, **_: Any) -> None:
        headers = {
            name.lower(): value.decode() if isinstance(value, bytes) else str(value)
            for name, value in request.headers.items()
        }
        sent.append((request.method, request.url, headers))

    client.meta.events.register("before-send.s3", record, unique_id="test-storage-record")
    try:
        spec: SourceSpec = source.spec()
        collection = chroma_client.get_or_create_collection(spec.collection_name)
        from s3sync_dagster.pipeline.s3.objects import list_objects

        assert [info.object_key for info in list_objects(client, bucket, "k/")] == ["k/secret.txt"]
        report = sync_object(client, spec, lambda _: collection, embedder, "k/secret.txt")
    finally:
        client.meta.events.unregister("before-send.s3", unique_id="test-storage-record")
    assert report.status == "indexed", report.message
    assert collection.get(where={"object_key": "k/secret.txt"})["documents"] == ["text kept under a customer key\n"]
    objects_read = [(method, headers) for method, url, headers in sent if "list-type" not in url]
    listings = [headers for _, url, headers in sent if "list-type" in url]
    assert listings and {method for method, _ in objects_read} == {"GET", "HEAD"}
    assert all(headers.get("x-amz-request-payer") == "requester" for _, _, headers in sent)
    assert all(
        headers["x-amz-server-side-encryption-customer-algorithm"] == "AES256"
        and headers["x-amz-server-side-encryption-customer-key-md5"]
        for _, headers in objects_read
    )
    assert not any("x-amz-server-side-encryption-customer-key" in headers for headers in listings)
    # The key itself, not its base64 text, is what S3 gets: its MD5 is the decoded key's.
    key_md5 = base64.b64encode(hashlib.md5(base64.b64decode(customer_key)).digest()).decode()
    assert {headers["x-amz-server-side-encryption-customer-key-md5"] for _, headers in objects_read} == {key_md5}
    assert customer_key not in report.message
    raw_key = base64.b64decode(customer_key)
    assert repr(raw_key) not in repr(RequestSettings(None, raw_key))


def test_customer_key_and_literal_secret_are_refused_naming_the_field(
    bucket: str, make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3sync_dagster.config import ConfigError

    with pytest.raises(ConfigError, match="sse_customer_key") as refused:
        make_config(bucket, sse_customer_key="c2VjcmV0LXZhbHVlLW5vdC1zaG93bi1hbnl3aGVyZS0xMjM0NTY=")
    assert "c2VjcmV0" not in str(refused.value)
    monkeypatch.setenv("S3SYNC_TEST_SSE_KEY", "not base64 at all")
    config, _ = make_config(bucket, sse_customer_key={"env": "S3SYNC_TEST_SSE_KEY"})
    with pytest.raises(ValueError, match=r"source 'docs' sse_customer_key: .*32-byte") as wrong:
        s3_connection(config.source("docs")).get_client()
    assert "not base64 at all" not in str(wrong.value)


def test_refusals_name_the_setting() -> None:
    """moto refuses neither: the wording S3's 403 (requester pays) and 400 (SSE-C) get, on the client's after-call."""
    none = RequestSettings()
    assert "set request_payer: requester" in refusal_hint("GetObject", 403, "AccessDenied", none)
    assert refusal_hint("GetObject", 403, "AccessDenied", RequestSettings(request_payer="requester")) == ""
    assert "set sse_customer_key" in refusal_hint("HeadObject", 400, "400", none)
    assert "check sse_customer_key" in refusal_hint("GetObject", 400, "InvalidArgument", RequestSettings(None, b"k"))
    assert refusal_hint("GetObject", 403, "InvalidObjectState", none) == ""


def test_audit_counts_archived_keys_apart_from_drift_until_restored(
    s3: Any, bucket: str, chroma_client: Any, embedder: CountingEmbedder
) -> None:
    from s3sync_dagster.pipeline.audit.drift import audit

    spec = SourceSpec(name="docs", bucket_name=bucket, collection_name="audit-archive", chunking_mode="lines")
    collection = chroma_client.get_or_create_collection("audit-archive")
    put(s3, bucket, {"plain.txt": "an indexed object\n"})
    s3.put_object(Bucket=bucket, Key="cold.txt", Body=b"archived before it was indexed\n", StorageClass="GLACIER")
    assert sync_object(s3, spec, lambda _: collection, embedder, "plain.txt").status == "indexed"
    assert sync_object(s3, spec, lambda _: collection, embedder, "cold.txt").status == "archived"
    drift = audit(s3, spec, [collection])
    assert drift.missing == [] and drift.clean
    assert drift.archived == {"cold.txt": "in storage class GLACIER, not restored"}
    assert "1 archived (not restored)" in drift.summary()
    s3.restore_object(Bucket=bucket, Key="cold.txt", RestoreRequest={"Days": 1})
    restored = audit(s3, spec, [collection])
    assert restored.missing == ["cold.txt"] and restored.archived == {}


def test_poll_passes_request_archived_keys_again_only_every_recheck_pass() -> None:
    from s3sync_dagster.pipeline.s3.objects import ObjectInfo
    from s3sync_dagster.pipeline.s3.poll import ARCHIVE_RECHECK_PASSES, InMemoryStore, PollState

    listing = [
        ObjectInfo("cold.txt", 10, "e1", "2026-01-01T00:00:00+00:00", storage_class="GLACIER"),
        ObjectInfo("plain.txt", 10, "e2", "2026-01-01T00:00:00+00:00", storage_class="STANDARD"),
    ]
    store = InMemoryStore()
    requested = {}
    for _ in range(2 * ARCHIVE_RECHECK_PASSES):
        state = PollState(store)
        number = state.pass_number
        requested[number] = state.observe(listing)
        state.finish_pass()
        state.commit()
    assert requested[1] == ["cold.txt", "plain.txt"]  # new
    assert requested[ARCHIVE_RECHECK_PASSES] == requested[2 * ARCHIVE_RECHECK_PASSES] == ["cold.txt"]
    assert all(not keys for number, keys in requested.items() if number % ARCHIVE_RECHECK_PASSES and number > 1)
