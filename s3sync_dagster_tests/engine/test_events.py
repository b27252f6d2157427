"""S3 events (notifications and EventBridge events, direct or through SNS) and .meta.json files: parsing and
every validation rule."""

import json
from typing import Any

import pytest

from s3sync_dagster.pipeline.s3.events import (
    Ignored,
    NotUnderstood,
    SyncRequest,
    not_understood,
    parse_message,
    parse_meta_file,
)


def s3_event(key: str, name: str = "ObjectCreated:Put", bucket: str = "bkt") -> str:
    return json.dumps(
        {
            "Records": [
                {"eventSource": "aws:s3", "eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
            ]
        }
    )


def eventbridge(key: str, detail_type: str = "Object Created", bucket: str = "bkt", **detail: Any) -> str:
    """An EventBridge S3 event as AWS documents it (S3 user guide, "EventBridge event message structure")."""
    return json.dumps(
        {
            "version": "0",
            "id": "17793124-05d4-b198-2fde-7ededc63b103",
            "detail-type": detail_type,
            "source": "aws.s3",
            "account": "111122223333",
            "time": "2021-11-12T00:00:00Z",
            "region": "ca-central-1",
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": {
                "version": "0",
                "bucket": {"name": bucket},
                "object": {"key": key, "size": 5, "etag": "b1946ac92492d2347c6235b4d2611184"},
                "request-id": "N4N7GDK58NMKJ12R",
                "requester": "123456789012",
                **detail,
            },
        }
    )


def sns(message: str) -> str:
    return json.dumps({"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": message})


def test_keys_are_url_decoded() -> None:
    [request] = parse_message(s3_event("docs/a+b%2Bc+%C3%A9.txt"), "bkt", "docs/")
    assert request == SyncRequest("index", "docs/a b+c é.txt", "ObjectCreated:Put")


def test_sns_wrapped_notifications_are_unwrapped() -> None:
    body = json.dumps({"Type": "Notification", "Message": s3_event("docs/x.md", "ObjectRemoved:Delete")})
    assert parse_message(body, "bkt", "docs/") == [SyncRequest("remove", "docs/x.md", "ObjectRemoved:Delete")]


def test_lifecycle_expirations_remove() -> None:
    for name in ("LifecycleExpiration:Delete", "LifecycleExpiration:DeleteMarkerCreated"):
        assert parse_message(s3_event("docs/old.txt", name), "bkt", "docs/") == [
            SyncRequest("remove", "docs/old.txt", name)
        ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            eventbridge("docs/a.txt", reason="PutObject"),
            SyncRequest("index", "docs/a.txt", "Object Created (PutObject)"),
        ),
        (
            eventbridge(
                "docs/a.txt", "Object Deleted", reason="DeleteObject", **{"deletion-type": "Permanently Deleted"}
            ),
            SyncRequest("remove", "docs/a.txt", "Object Deleted (DeleteObject)"),
        ),
        (
            eventbridge(
                "docs/a.txt",
                "Object Deleted",
                reason="Lifecycle Expiration",
                **{"deletion-type": "Delete Marker Created"},
            ),
            SyncRequest("remove", "docs/a.txt", "Object Deleted (Lifecycle Expiration)"),
        ),
        (eventbridge("docs/a.txt"), SyncRequest("index", "docs/a.txt", "Object Created")),  # no reason: still read
        # EventBridge keys are not URL-encoded: taken exactly as they are.
        (eventbridge("docs/a b+c%2B é.txt"), SyncRequest("index", "docs/a b+c%2B é.txt", "Object Created")),
        (sns(eventbridge("docs/x.md", "Object Deleted")), SyncRequest("remove", "docs/x.md", "Object Deleted")),
    ],
    ids=["created", "deleted", "lifecycle-expiration", "no-reason", "key-as-is", "sns-wrapped"],
)
def test_eventbridge_s3_events(body: str, expected: SyncRequest) -> None:
    assert parse_message(body, "bkt", "docs/") == [expected]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "bkt"}), "s3:TestEvent"),
        (sns(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "bkt"})), "s3:TestEvent"),
        (s3_event("docs/a.txt", bucket="other"), "not this source's bucket 'bkt'"),
        (s3_event("elsewhere/a.txt"), "outside this source's path_prefix 'docs/'"),
        (s3_event("docs/folder/"), "folder marker"),
        (s3_event("docs/a.txt", "ObjectRestore:Post"), "needs no sync"),
        (eventbridge("docs/a.txt", bucket="other"), "in bucket 'other', not this source's bucket 'bkt'"),
        (eventbridge("elsewhere/a.txt"), "outside this source's path_prefix 'docs/'"),
        (eventbridge("docs/folder/"), "folder marker"),
        (
            eventbridge("docs/a.txt", "Object Restore Initiated"),
            "event Object Restore Initiated for 'docs/a.txt' needs",
        ),
        (eventbridge("docs/a.txt", "Object Tags Added"), "needs no sync"),
        (eventbridge("docs/a.txt", "Object Storage Class Changed"), "needs no sync"),
        (sns(eventbridge("docs/a.txt", "Object ACL Updated")), "needs no sync"),
    ],
)
def test_what_is_ignored_says_why(body: str, reason: str) -> None:
    [item] = parse_message(body, "bkt", "docs/")
    assert isinstance(item, Ignored) and reason in item.reason


CLOUDTRAIL_EVENT = {
    "version": "0",
    "detail-type": "AWS API Call via CloudTrail",
    "source": "aws.s3",
    "detail": {"eventName": "PutObject", "requestParameters": {"bucketName": "bkt", "key": "docs/a.txt"}},
}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json at all", "message body is not JSON"),
        ("", "message body is not JSON"),
        (json.dumps([1, 2, 3]), "not a JSON object"),
        (json.dumps({"hello": "world"}), "neither an S3 event notification (Records) nor an EventBridge event"),
        (json.dumps({"Records": []}), "Records is not a non-empty list"),
        (json.dumps({"Records": "docs/a.txt"}), "Records is not a non-empty list"),
        (json.dumps({"Records": ["docs/a.txt"]}), "record 1 is not a JSON object"),
        (json.dumps({"Records": [{"s3": "malformed"}]}), "record 1 has no eventName"),
        (
            json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": "x", "object": 5}}]}),
            "record 1 (ObjectCreated:Put) has no s3.bucket.name",
        ),
        (
            json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "bkt"}}}]}),
            "record 1 (ObjectCreated:Put) has no s3.object.key",
        ),
        (s3_event("docs/%FF.txt"), "s3.object.key is not URL-encoded UTF-8"),
        (
            json.dumps({"Records": [{"eventSource": "aws:dynamodb", "eventName": "INSERT"}]}),
            "eventSource other than S3",
        ),
        (json.dumps({"Type": "Notification", "Message": "not json"}), "SNS notification whose Message is not JSON"),
        (
            json.dumps({"Type": "Notification", "Message": {"Records": []}}),
            "SNS notification whose Message is not text",
        ),
        (sns(json.dumps({"hello": "world"})), "neither an S3 event notification"),
        (json.dumps({**json.loads(eventbridge("docs/a.txt")), "source": "aws.ec2"}), "source is not aws.s3"),
        (
            json.dumps({**json.loads(eventbridge("docs/a.txt")), "detail": None}),
            "(Object Created) has no detail.bucket",
        ),
        (json.dumps(CLOUDTRAIL_EVENT), "EventBridge S3 event (AWS API Call via CloudTrail) has no detail.bucket.name"),
        (sns(json.dumps(CLOUDTRAIL_EVENT)), "has no detail.bucket.name"),
        (eventbridge(""), "has no detail.object.key"),
        (eventbridge("docs/\ud800.txt"), "the object key is not valid Unicode"),
    ],
)
def test_what_is_not_understood_says_why(body: str, reason: str) -> None:
    items = parse_message(body, "bkt", "docs/")
    assert items and all(isinstance(item, NotUnderstood) for item in items), items
    assert reason in str(not_understood(items))


def test_a_message_with_records_understood_and_not_is_both() -> None:
    good = json.loads(s3_event("docs/a.txt"))["Records"][0]
    items = parse_message(json.dumps({"Records": [good, {"eventName": "ObjectCreated:Put"}, None]}), "bkt", "docs/")
    assert items[0] == SyncRequest("index", "docs/a.txt", "ObjectCreated:Put")
    assert not_understood(items) == "record 2 (ObjectCreated:Put) has no s3.bucket.name (and 1 more)"
    assert not_understood(items[:1]) is None


def test_reasons_show_no_more_of_the_message_than_an_event_type() -> None:
    secret = "s3sync-test-secret-value-in-a-message"
    bodies = [
        json.dumps({"password": secret}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:" + "x" * 200 + secret}]}),
        json.dumps({"detail-type": secret, "source": "aws.ec2", "detail": {"token": secret}}),
        json.dumps({"detail-type": "x" * 200 + secret, "source": "aws.s3", "detail": {}}),
        sns(secret),
    ]
    for body in bodies:
        reason = not_understood(parse_message(body, "bkt", "docs/"))
        assert reason and secret not in reason and len(reason) < 200, reason


def meta(**fields: object) -> bytes:
    content = {"version": "chroma-v1", "id": "doc-1", "path": "t1/doc.pdf"}
    content.update(fields)
    return json.dumps({k: v for k, v in content.items() if v is not None}).encode()


def test_valid_meta_file() -> None:
    parsed = parse_meta_file(
        "t1/doc.meta.json",
        meta(target_collection_name="tenant-one", metadata={"year": 2024, "tags": ["a"], "x": None}),
        "t1/",
    )
    assert (parsed.document_id, parsed.path, parsed.target_collection_name) == ("doc-1", "t1/doc.pdf", "tenant-one")
    assert parsed.metadata == {"year": 2024, "tags": ["a"]}


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        (meta(version="chroma-v2"), 'version must be "chroma-v1"'),
        (meta(id=None), "id is required"),
        (meta(id="x" * 121), "id: custom id is 121 bytes; at most 120"),
        (meta(path=None), "path is required"),
        (meta(path="t2/other-tenant.pdf"), "path 't2/other-tenant.pdf' is outside this source's path_prefix 't1/'"),
        (meta(path="t1/x.meta.json"), "is itself a metadata file"),
        (meta(metadata={"nested": {"a": 1}}), "metadata 'nested' must be a string, number, boolean, null or an array"),
        (meta(metadata={"mixed": [1, "a"]}), "array of one scalar type"),
        (meta(metadata={"etag": "x"}), "reserved"),
        (meta(target_collection_name=5), "target_collection_name must be a string"),
        (meta(extra=1), "unknown field(s) extra"),
        (b"\xff", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must hold a JSON object"),
    ],
)
def test_meta_file_rules(content: bytes, rule: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_meta_file("t1/doc.meta.json", content, "t1/")
    assert str(caught.value).startswith("metadata file 't1/doc.meta.json'")
    assert rule in str(caught.value)


def test_restore_completed_indexes_and_delete_marker_removes() -> None:
    """Issue 52: a completed restore makes an archived object readable; a delete marker hides it as a delete does."""
    assert parse_message(s3_event("docs/a.txt", "ObjectRestore:Completed"), "bkt", "docs/") == [
        SyncRequest("index", "docs/a.txt", "ObjectRestore:Completed")
    ]
    assert parse_message(eventbridge("docs/a.txt", "Object Restore Completed"), "bkt", "docs/") == [
        SyncRequest("index", "docs/a.txt", "Object Restore Completed")
    ]
    assert parse_message(s3_event("docs/a.txt", "ObjectRemoved:DeleteMarkerCreated"), "bkt", "docs/") == [
        SyncRequest("remove", "docs/a.txt", "ObjectRemoved:DeleteMarkerCreated")
    ]
