"""Access fails closed (issue 62, item 1): principals are a list or an error, and an object whose new readers tag
cannot be read is read by no one at once, on every path that writes labels: a sync of a changed object, the
metadata-only update of an unchanged one, a `.meta.json` file's copy, and the SQS sensor's tagging event. Moto over
HTTP (S3 and SQS), embedded Chroma, the SQS sensor on a real Dagster instance."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import dagster as dg
import pytest

from s3sync_dagster.commands.query import SourceSearch, search_source
from s3sync_dagster.config import AppConfig
from s3sync_dagster.pipeline.chroma.labels import READERS_KEY
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster.pipeline.sync.stages import sync_keys
from s3sync_dagster_tests.conftest import ConfigFactory, Row, notifying_queue, store_chunks
from s3sync_dagster_tests.dagster.test_sensors import AutoSync

pytestmark = pytest.mark.reliability("fail closed")

ZEBRA = "The zebra grazes by the northern fence at dawn.\n"
OTTER = "The otters are fed herring twice a day.\n"
BAD_READERS = "bob+eve smith"  # 'eve smith' breaks the principal rule (no spaces)


def put(s3: Any, bucket: str, object_key: str, text: str, readers: str | None = None) -> None:
    tagging = f"readers={quote(readers)}" if readers is not None else ""
    s3.put_object(Bucket=bucket, Key=object_key, Body=text.encode(), Tagging=tagging)


def retag(s3: Any, bucket: str, object_key: str, readers: str) -> None:
    s3.put_object_tagging(Bucket=bucket, Key=object_key, Tagging={"TagSet": [{"Key": "readers", "Value": readers}]})


def sync(s3: Any, config: AppConfig, object_keys: list[str]) -> dict[str, Any]:
    embedding = config.embedding.spec()
    source = config.sources[0]
    collection = config.chroma.store().collection(source.collection_name, embedding)
    reports = sync_keys(s3, source.spec(embedding), lambda _: collection, embedding.build(), object_keys)
    return {report.object_key: report for report in reports}


def readers_of(config: AppConfig, object_key: str) -> list[Any]:
    collection = config.chroma.store().collection(config.sources[0].collection_name, config.embedding.spec())
    found = collection.get(where={"object_key": object_key}, include=["metadatas"])["metadatas"] or []
    assert found, f"no chunks of {object_key}"
    return [metadata.get(READERS_KEY) for metadata in found]


def seen_by(config: AppConfig, principal: str, query: str) -> set[str]:
    """The objects a principal's search finds, every mode together."""
    searcher = SourceSearch(config.sources[0].name, config)
    return {
        hit.object_key
        for mode in ("dense", "lexical", "hybrid")
        for hit in searcher.search(query, mode=mode, n=5, principals=[principal])
    }


def expected(config: AppConfig, files: dict[str, str], document_ids: dict[str, str] | None = None) -> dict[Any, str]:
    name = config.sources[0].collection_name
    ids = document_ids or {}
    return {(name, keys.chunk_id(ids.get(k) or keys.object_id(k), 0)): text for k, text in files.items()}


def test_principals_that_are_not_a_list_are_refused_naming_the_parameter(
    s3: Any, bucket: str, make_config: ConfigFactory, fault_row: Row
) -> None:
    """A bare string was read as its letters: 'alice' searched as a, l, i, c, e and found what only 'e' reads."""
    config, _ = make_config(bucket, readers_tag="readers", chunking={"type": "lines", "max_lines": 1})
    put(s3, bucket, "letters.txt", ZEBRA, readers="e")
    put(s3, bucket, "alice.txt", OTTER, readers="alice")
    assert {r.status for r in sync(s3, config, ["alice.txt", "letters.txt"]).values()} == {"indexed"}
    searcher = SourceSearch("docs", config)
    for wrong in ("alice", b"alice", {"alice": 1}, 7):
        with pytest.raises(TypeError, match=r"principals must be a list of principals"):
            searcher.search("zebra", principals=wrong)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"principals must be a list of principals"):
            search_source("docs", "zebra", config=config, principals=wrong)  # type: ignore[arg-type]
    assert seen_by(config, "e", "zebra fence") == {"letters.txt"}
    assert [h.object_key for h in searcher.search("otters herring", principals=("alice",))] == ["alice.txt"]
    fault_row.observe(
        expected(config, {"letters.txt": ZEBRA, "alice.txt": OTTER}), store_chunks(config.chroma.store().client())
    )
    fault_row.passed = True


def closes_and_fails(report: Any, object_key: str) -> None:
    assert report.status == "failed", report
    assert f"object '{object_key}'" in report.message and "tag 'readers'" in report.message, report.message
    assert "'eve smith'" in report.message and "no reader sees this object" in report.message, report.message


@pytest.mark.parametrize("path", ["changed-object", "labels-only", "meta-file"])
def test_a_bad_readers_tag_closes_the_object_to_every_reader_at_once(
    s3: Any, bucket: str, make_config: ConfigFactory, fault_row: Row, path: str
) -> None:
    """alice reads the object; its tag becomes `bob+eve smith`. The key fails naming the tag and the rule, and from
    that moment neither alice (removed) nor bob (not yet admitted by a tag that does not read) sees it; fixed to
    `bob`, bob reads it and alice does not."""
    config, _ = make_config(bucket, readers_tag="readers", chunking={"type": "lines", "max_lines": 1})
    meta = "zoo.meta.json"
    synced = [meta] if path == "meta-file" else ["zoo.txt"]
    put(s3, bucket, "zoo.txt", ZEBRA, readers="alice")
    if path == "meta-file":  # the document reached through its metadata file: its own id, the object's tags
        s3.put_object(
            Bucket=bucket,
            Key=meta,
            Body=json.dumps({"version": "chroma-v1", "id": "zoo-doc", "path": "zoo.txt"}).encode(),
        )
    put(s3, bucket, "other.txt", OTTER, readers="alice")
    reports = sync(s3, config, [*synced, "other.txt"])
    assert {r.status for r in reports.values()} == {"indexed"}, reports
    assert seen_by(config, "alice", "zebra fence") >= {"zoo.txt"}

    text = ZEBRA
    if path == "changed-object":  # a new version and a new tag at once (the tag comes with the upload)
        text = "The zebra now grazes by the southern fence.\n"
        put(s3, bucket, "zoo.txt", text, readers=BAD_READERS)
    else:
        retag(s3, bucket, "zoo.txt", BAD_READERS)
    reports = sync(s3, config, [*synced, "other.txt"])
    for principal in ("alice", "bob", "eve"):  # the removed reader first of all
        assert "zoo.txt" not in seen_by(config, principal, "zebra fence"), principal
    assert readers_of(config, "zoo.txt") == [None]
    closes_and_fails(reports[synced[0]], "zoo.txt")
    assert reports["other.txt"].status == "unchanged"  # one bad tag fails its own key alone
    assert seen_by(config, "alice", "otters herring") == {"other.txt"}

    retag(s3, bucket, "zoo.txt", "bob")
    assert sync(s3, config, synced)[synced[0]].status == "indexed"
    assert readers_of(config, "zoo.txt") == [["bob"]]
    assert "zoo.txt" in seen_by(config, "bob", "zebra fence")
    assert "zoo.txt" not in seen_by(config, "alice", "zebra fence")
    ids = {"zoo.txt": "zoo-doc"} if path == "meta-file" else {}
    fault_row.observe(
        expected(config, {"zoo.txt": text, "other.txt": OTTER}, ids),
        store_chunks(config.chroma.store().client()),
    )
    assert fault_row.lost == fault_row.duplicated == fault_row.stray == 0, fault_row
    fault_row.passed = True


def tagging_event(bucket: str, object_key: str) -> str:
    """An S3 event notification of a tag change, as S3 sends it to SQS (moto sends none for tagging)."""
    record = {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventName": "ObjectTagging:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote(object_key)}},
    }  # fmt: skip
    return json.dumps({"Records": [record]})


def test_a_bad_readers_tag_through_the_sqs_sensor_closes_the_object_at_once(
    s3: Any, bucket: str, make_config: ConfigFactory, instance: dg.DagsterInstance, moto_endpoint: str, fault_row: Row
) -> None:
    """The tagging event's run fails its key naming the tag; the removed reader sees nothing from then on."""
    import boto3

    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    queue_url = notifying_queue(sqs, s3, bucket, f"{bucket}-tags")
    config, _ = make_config(
        bucket, path_prefix="in/", auto_sync="direct", sqs_queue_url=queue_url, readers_tag="readers",
        chunking={"type": "lines", "max_lines": 1},
    )  # fmt: skip
    live = AutoSync(config, instance)
    put(s3, bucket, "in/zoo.txt", ZEBRA, readers="alice")
    _, runs = live.tick()
    assert [run.success for run in runs] == [True]
    assert seen_by(config, "alice", "zebra fence") == {"in/zoo.txt"}

    retag(s3, bucket, "in/zoo.txt", BAD_READERS)
    sqs.send_message(QueueUrl=queue_url, MessageBody=tagging_event(bucket, "in/zoo.txt"))
    _, runs = live.tick()
    assert len(runs) == 1
    failures = [
        event.step_failure_data.error.message if event.step_failure_data.error else ""
        for run in runs
        for event in run.get_step_failure_events()
    ]
    assert any("tag 'readers'" in message and "eve smith" in message for message in failures), failures
    (metadata,) = live.collection().get(where={"object_key": "in/zoo.txt"}, include=["metadatas"])["metadatas"]
    assert READERS_KEY not in metadata, metadata
    for principal in ("alice", "bob"):
        assert seen_by(config, principal, "zebra fence") == set(), principal
    fault_row.observe(expected(config, {"in/zoo.txt": ZEBRA}), live.store_chunks())
    fault_row.passed = True


def test_an_archived_object_costs_one_head_and_an_s3_error_says_its_code_and_meaning(
    s3: Any, bucket: str, make_config: ConfigFactory, fault_row: Row
) -> None:
    """Item 4: tags and metadata are read after the archive check (a GLACIER object's GetObjectTagging fails with
    InvalidObjectState, which was reported as a missing permission); only AccessDenied is said to be one."""
    from collections import Counter

    config, _ = make_config(
        bucket, readers_tag="readers", object_tags=["cls"], object_metadata=["team"],
        chunking={"type": "lines", "max_lines": 1},
    )  # fmt: skip
    s3.put_object(Bucket=bucket, Key="cold.txt", Body=ZEBRA.encode(), StorageClass="GLACIER", Tagging="readers=alice")
    put(s3, bucket, "warm.txt", OTTER, readers="alice")
    sent: Counter[str] = Counter()

    def count(model: Any, params: Any, **_: Any) -> None:
        sent[f"{model.name} {params.get('Key')}"] += 1

    s3.meta.events.register("provide-client-params.s3", count, unique_id="test-fail-closed-count")
    try:
        reports = sync(s3, config, ["cold.txt", "warm.txt"])
    finally:
        s3.meta.events.unregister("provide-client-params.s3", unique_id="test-fail-closed-count")
    cold = reports["cold.txt"]
    assert cold.status == "archived", cold.message
    assert "GLACIER" in cold.message and "s3:GetObjectTagging" not in cold.message
    assert {call: n for call, n in sent.items() if call.endswith(" cold.txt")} == {"HeadObject cold.txt": 1}
    assert reports["warm.txt"].status == "indexed"

    from botocore.exceptions import ClientError

    from s3sync_dagster.pipeline.s3.objects import error_meaning

    def failure(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": f"S3 says {code}"}}, "GetObjectTagging")

    assert error_meaning(failure("AccessDenied"), "s3:GetObjectTagging") == (
        "AccessDenied: access denied: the credentials lack s3:GetObjectTagging on it"
    )
    for code in ("InvalidObjectState", "NoSuchBucket", "SlowDown", "ExpiredToken", "SomethingNew"):
        meaning = error_meaning(failure(code), "s3:GetObjectTagging")
        assert meaning.startswith(f"{code}: ") and "s3:GetObjectTagging" not in meaning, meaning
    assert error_meaning(failure("SomethingNew"), "s3:X") == "SomethingNew: S3 says SomethingNew"
    fault_row.observe(expected(config, {"warm.txt": OTTER}), store_chunks(config.chroma.store().client()))
    fault_row.passed = True


def test_an_archived_object_and_an_invocations_copy_follow_a_readers_tag_too(
    s3: Any, bucket: str, make_config: ConfigFactory, fault_row: Row
) -> None:
    """An object indexed, then archived (GLACIER, its ETag kept), then retagged: its chunks stay searchable, so the
    removed reader must see nothing of them (moto refuses an archived object's tags, as S3 does not: closed, and
    reported archived). An invocation's copy of another object in a target collection is closed with it when that
    object's tag stops reading."""
    from s3sync_dagster.pipeline.spec import Invocation
    from s3sync_dagster.pipeline.sync.targets import Collections

    config, _ = make_config(bucket, readers_tag="readers", chunking={"type": "lines", "max_lines": 1})
    put(s3, bucket, "cold.txt", ZEBRA, readers="alice")
    put(s3, bucket, "copied.txt", OTTER, readers="alice")
    embedding = config.embedding.spec()
    store = config.chroma.store()
    source = config.sources[0]
    collections = Collections(
        lambda name: store.collection(name, embedding), lambda: [c.name for c in store.client().list_collections()]
    )
    spec = source.spec(embedding)
    sync_keys(s3, spec, collections, embedding.build(), ["cold.txt", "copied.txt"])
    target = f"{source.collection_name}-target"
    invoked = {"copied.txt": Invocation(custom_id="copied-doc", target_collection_name=target)}
    (report,) = sync_keys(s3, spec, collections, embedding.build(), ["copied.txt"], invocations=invoked)
    assert report.status == "indexed" and report.collection_name == target, report
    assert "cold.txt" in seen_by(config, "alice", "zebra fence")

    s3.copy_object(
        Bucket=bucket, Key="cold.txt", CopySource={"Bucket": bucket, "Key": "cold.txt"}, StorageClass="GLACIER"
    )
    retag(s3, bucket, "cold.txt", "bob")
    retag(s3, bucket, "copied.txt", BAD_READERS)
    reports = {r.object_key: r for r in sync_keys(s3, spec, collections, embedding.build(), ["cold.txt", "copied.txt"])}
    assert "cold.txt" not in seen_by(config, "alice", "zebra fence")
    assert reports["cold.txt"].status == "archived", reports["cold.txt"]
    assert reports["copied.txt"].status == "failed" and "tag 'readers'" in reports["copied.txt"].message
    there = store.collection(target, embedding).get(include=["metadatas"])["metadatas"]
    assert there and all(READERS_KEY not in metadata for metadata in there), there
    fault_row.observe(
        {
            (source.collection_name, keys.chunk_id(keys.object_id("cold.txt"), 0)): ZEBRA,
            (source.collection_name, keys.chunk_id(keys.object_id("copied.txt"), 0)): OTTER,
            (target, keys.chunk_id("copied-doc", 0)): OTTER,
        },
        store_chunks(store.client()),
    )
    assert fault_row.lost == fault_row.duplicated == fault_row.stray == 0, fault_row
    fault_row.passed = True
