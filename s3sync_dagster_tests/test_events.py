"""S3 event notifications and .meta.json files: parsing and every validation rule."""

import json

import pytest

from s3sync_dagster.pipeline.events import Ignored, SyncRequest, parse_message, parse_meta_file


def s3_event(key: str, name: str = "ObjectCreated:Put", bucket: str = "bkt") -> str:
    return json.dumps(
        {
            "Records": [
                {"eventSource": "aws:s3", "eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
            ]
        }
    )


def test_keys_are_url_decoded() -> None:
    [request] = parse_message(s3_event("docs/a+b%2Bc+%C3%A9.txt"), "bkt", "docs/")
    assert request == SyncRequest("index", "docs/a b+c é.txt", "ObjectCreated:Put")


def test_sns_wrapped_notifications_are_unwrapped() -> None:
    body = json.dumps({"Type": "Notification", "Message": s3_event("docs/x.md", "ObjectRemoved:Delete")})
    assert parse_message(body, "bkt", "docs/") == [SyncRequest("remove", "docs/x.md", "ObjectRemoved:Delete")]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "bkt"}), "s3:TestEvent"),
        ("not json at all", "not JSON"),
        (json.dumps({"hello": "world"}), "no Records"),
        (s3_event("docs/a.txt", bucket="other"), "not this source's bucket 'bkt'"),
        (s3_event("elsewhere/a.txt"), "outside this source's path_prefix 'docs/'"),
        (s3_event("docs/folder/"), "folder marker"),
        (s3_event("docs/a.txt", "ObjectRestore:Completed"), "needs no sync"),
    ],
)
def test_what_is_ignored_says_why(body: str, reason: str) -> None:
    [item] = parse_message(body, "bkt", "docs/")
    assert isinstance(item, Ignored) and reason in item.reason


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


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"Records": [{"s3": "malformed"}]}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": "x", "object": 5}}]}),
        json.dumps({"Type": "Notification", "Message": "not json"}),
        json.dumps([1, 2, 3]),
    ],
)
def test_malformed_messages_are_ignored_not_raised(body: str) -> None:
    items = parse_message(body, "bkt", "")
    assert items and all(isinstance(item, Ignored) for item in items)
