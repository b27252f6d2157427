"""S3 events read from SQS -> what to sync: S3 event notifications (direct or through SNS) and Amazon
EventBridge's S3 events (direct or through SNS); and `.meta.json` files."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus

from s3sync_dagster.pipeline.records import (
    Metadata,
    validate_collection_name,
    validate_custom_id,
    validate_user_metadata,
)

META_SUFFIX = ".meta.json"
META_VERSION = "chroma-v1"
# EventBridge's S3 detail-types that change what an object holds, or (a completed restore) make an archived object
# readable (pipeline/s3/archive.py); tags apart (below); every other one (a restore begun or expired, ACLs, storage classes) leaves
# its text as it was.
EVENTBRIDGE_ACTIONS: Mapping[str, Literal["index", "remove"]] = {
    "Object Created": "index", "Object Deleted": "remove", "Object Restore Completed": "index",
}  # fmt: skip
# A tag change leaves the text as it was but may change the chunks' labels (pipeline/chroma/labels.py): the key is synced
# again, which for a source without labels is a HEAD that finds it current (no GET, no write).
EVENTBRIDGE_TAG_EVENTS = frozenset({"Object Tags Added", "Object Tags Deleted"})
TAGGING_EVENT_PREFIX = "ObjectTagging:"


@dataclass(frozen=True)
class SyncRequest:
    """One object key to bring up to date: `index` for a created object, `remove` for a deleted one."""

    action: Literal["index", "remove"]
    object_key: str
    event_name: str


@dataclass(frozen=True)
class Ignored:
    """An event understood that needs no sync (a test event, another bucket, outside the prefix, a folder
    marker, a restore): its message may be deleted. The reason is logged by the sensor."""

    reason: str


@dataclass(frozen=True)
class NotUnderstood:
    """A message, or a record in one, that is no S3 event of a shape we know: its message must stay on the
    queue (the queue's redrive policy moves it to a dead-letter queue) and be reported, never dropped.

    The reason names the rule the message broke and shows no more of the message than an event type (cut
    short): a body may carry anything, and the sensor logs the reason.
    """

    reason: str


Parsed = SyncRequest | Ignored | NotUnderstood


def parse_message(body: str, bucket_name: str, path_prefix: str, *, tag_events: bool = False) -> list[Parsed]:
    """What one SQS message body asks for, in order, for a source's bucket and prefix.

    tag_events: a tag change (ObjectTagging:*, "Object Tags Added/Deleted") syncs the key, for a source whose
    chunks carry tags (object_tags, readers_tag); else it is ignored, as its text did not change.

    Never raises: a message we cannot read comes back as NotUnderstood, so it neither stalls the queue
    nor is dropped.
    """
    try:
        parsed = _parse_message(body, bucket_name, path_prefix)
        return parsed if tag_events else [_tags_ignored(item) for item in parsed]
    except Exception as error:  # a rule missing below: the message is kept and reported, not lost
        return [NotUnderstood(f"unreadable S3 event ({type(error).__name__})")]


def is_tag_event(event_name: str) -> bool:
    """A tag change, by its notification's eventName or its EventBridge detail-type (with its reason, if any)."""
    return event_name.startswith((TAGGING_EVENT_PREFIX, *EVENTBRIDGE_TAG_EVENTS))


def _tags_ignored(item: Parsed) -> Parsed:
    if isinstance(item, SyncRequest) and is_tag_event(item.event_name):
        return Ignored(f"event {_short(item.event_name)} for '{item.object_key}' needs no sync (no tags are indexed)")
    return item


def not_understood(items: Sequence[Parsed]) -> str | None:
    """Why a message must stay on the queue (the first reason, and how many more), or None if all is understood."""
    reasons = [item.reason for item in items if isinstance(item, NotUnderstood)]
    if not reasons:
        return None
    return reasons[0] + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "")


def _parse_message(body: str, bucket_name: str, path_prefix: str) -> list[Parsed]:
    try:
        message = json.loads(body)
    except json.JSONDecodeError:
        return [NotUnderstood("message body is not JSON")]
    if isinstance(message, dict) and message.get("Type") == "Notification" and "Message" in message:
        # ... -> SNS -> SQS: the S3 event (a notification or an EventBridge event) is the SNS message's text.
        if not isinstance(message["Message"], str):
            return [NotUnderstood("SNS notification whose Message is not text")]
        try:
            message = json.loads(message["Message"])
        except json.JSONDecodeError:
            return [NotUnderstood("SNS notification whose Message is not JSON")]
    if not isinstance(message, dict):
        return [NotUnderstood("message is not a JSON object")]
    if message.get("Event") == "s3:TestEvent":
        return [Ignored("s3:TestEvent (sent by S3 when notifications are configured)")]
    if "Records" in message:
        return _parse_records(message["Records"], bucket_name, path_prefix)
    if "detail-type" in message and "source" in message:
        return [_parse_eventbridge(message, bucket_name, path_prefix)]
    return [NotUnderstood("neither an S3 event notification (Records) nor an EventBridge event (detail-type)")]


def _parse_records(records: Any, bucket_name: str, path_prefix: str) -> list[Parsed]:
    """S3 -> SQS (or SNS): `Records`, each naming its bucket and its URL-encoded key."""
    if not isinstance(records, list) or not records:
        return [NotUnderstood("Records is not a non-empty list")]
    out: list[Parsed] = []
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            out.append(NotUnderstood(f"record {number} is not a JSON object"))
            continue
        event_name = record.get("eventName")
        event_source = record.get("eventSource", "aws:s3")
        s3 = record.get("s3")
        bucket = _field(s3, "bucket", "name")
        raw_key = _field(s3, "object", "key")
        # S3-compatible stores name themselves ("minio:s3", "ceph:s3"); other services' records are no S3 event.
        if not isinstance(event_source, str) or not event_source.endswith("s3"):
            out.append(NotUnderstood(f"record {number} has an eventSource other than S3"))
        elif not isinstance(event_name, str) or not event_name:
            out.append(NotUnderstood(f"record {number} has no eventName"))
        elif not isinstance(bucket, str) or not bucket:
            out.append(NotUnderstood(f"record {number} ({_short(event_name)}) has no s3.bucket.name"))
        elif not isinstance(raw_key, str) or not raw_key:
            out.append(NotUnderstood(f"record {number} ({_short(event_name)}) has no s3.object.key"))
        else:
            try:
                # S3 encodes keys in notifications: "a+b%2B.txt" is "a b+.txt".
                object_key = unquote_plus(raw_key, errors="strict")
            except UnicodeDecodeError:
                out.append(
                    NotUnderstood(f"record {number} ({_short(event_name)}): s3.object.key is not URL-encoded UTF-8")
                )
                continue
            if (
                event_name.startswith(("ObjectCreated:", TAGGING_EVENT_PREFIX))
                or event_name == "ObjectRestore:Completed"
            ):
                action: Literal["index", "remove"] | None = "index"
            elif event_name.startswith(("ObjectRemoved:", "LifecycleExpiration:")):
                action = "remove"  # a lifecycle rule's expiration deletes the object (or hides it behind a marker)
            else:
                action = None
            out.append(_request(event_name, action, bucket, object_key, bucket_name, path_prefix))
    return out


def _parse_eventbridge(event: Mapping[str, Any], bucket_name: str, path_prefix: str) -> Parsed:
    """S3 -> EventBridge -> SQS (or SNS): one event, `detail.bucket.name` and `detail.object.key`.

    The key is taken as it is, not URL-decoded as a notification's: AWS documents no encoding for it,
    and AWS's Media Lake guidance reads EventBridge keys such as "test+b.png" and "%2B++ %20.mp3" as
    they stand (its fix after testing on S3, aws-solutions-library-samples/guidance-for-medialake-on-aws#21).
    """
    detail_type, source, detail = event.get("detail-type"), event.get("source"), event.get("detail")
    if source != "aws.s3":
        return NotUnderstood("EventBridge event whose source is not aws.s3")
    if not isinstance(detail_type, str) or not detail_type:
        return NotUnderstood("EventBridge S3 event with no detail-type")
    bucket = _field(detail, "bucket", "name")
    object_key = _field(detail, "object", "key")
    # Events from CloudTrail ("AWS API Call via CloudTrail") carry neither: a shape this sync does not read.
    if not isinstance(bucket, str) or not bucket:
        return NotUnderstood(f"EventBridge S3 event ({_short(detail_type)}) has no detail.bucket.name")
    if not isinstance(object_key, str) or not object_key:
        return NotUnderstood(f"EventBridge S3 event ({_short(detail_type)}) has no detail.object.key")
    reason = detail.get("reason") if isinstance(detail, dict) else None
    event_name = _short(f"{detail_type} ({reason})" if isinstance(reason, str) and reason else detail_type)
    action: Literal["index", "remove"] | None = (
        "index" if detail_type in EVENTBRIDGE_TAG_EVENTS else EVENTBRIDGE_ACTIONS.get(detail_type)
    )
    return _request(event_name, action, bucket, object_key, bucket_name, path_prefix)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field(parent: Any, entry: str, name: str) -> Any:
    """parent[entry][name], or None where a level is missing or not an object."""
    child = parent.get(entry) if isinstance(parent, dict) else None
    return child.get(name) if isinstance(child, dict) else None


def _request(
    event_name: str,
    action: Literal["index", "remove"] | None,
    bucket: str,
    object_key: str,
    bucket_name: str,
    path_prefix: str,
) -> Parsed:
    """One understood event on one object: a sync of it, or why none is needed."""
    try:
        object_key.encode("utf-8")
    except UnicodeEncodeError:  # JSON may carry lone surrogates; S3 keys are UTF-8
        return NotUnderstood(f"{_short(event_name)}: the object key is not valid Unicode")
    if bucket != bucket_name:
        return Ignored(f"'{object_key}' is in bucket '{bucket}', not this source's bucket '{bucket_name}'")
    if not object_key.startswith(path_prefix):
        return Ignored(f"'{object_key}' is outside this source's path_prefix '{path_prefix}'")
    if object_key.endswith("/"):
        return Ignored(f"'{object_key}' is a folder marker")
    if action is None:
        return Ignored(f"event {_short(event_name)} for '{object_key}' needs no sync")
    # In metadata mode a document's upload matters only to the metadata files naming it (the sensor knows
    # which do); it is never indexed on its own.
    return SyncRequest(action, object_key, event_name)


@dataclass(frozen=True)
class MetaFile:
    """A validated `.meta.json`: which object to index, under which id, with which metadata, where."""

    meta_key: str
    document_id: str
    path: str
    target_collection_name: str | None
    metadata: Metadata


def is_meta_key(object_key: str) -> bool:
    return object_key.endswith(META_SUFFIX)


def parse_meta_file(meta_key: str, data: bytes, path_prefix: str) -> MetaFile:
    """Validate every field; errors name the metadata file and the rule it broke."""
    where = f"metadata file '{meta_key}'"
    try:
        content = json.loads(data.decode("utf-8-sig"))  # a byte order mark, as Windows editors write it, is fine
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{where} is not valid UTF-8 JSON ({error})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{where} must hold a JSON object")
    unknown = sorted(set(content) - {"version", "id", "path", "target_collection_name", "metadata"})
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if content.get("version") != META_VERSION:
        raise ValueError(f'{where}: version must be "{META_VERSION}" (got {json.dumps(content.get("version"))})')
    document_id = content.get("id")
    if not isinstance(document_id, str):
        raise ValueError(f"{where}: id is required and must be a string")
    try:
        validate_custom_id(document_id)
    except ValueError as error:
        raise ValueError(f"{where}: id: {error}") from None
    path = content.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: path is required and must be the document's full object key")
    if not path.startswith(path_prefix):
        # A tenant's metadata file must never pull another tenant's object.
        raise ValueError(f"{where}: path '{path}' is outside this source's path_prefix '{path_prefix}'")
    if is_meta_key(path):
        raise ValueError(f"{where}: path '{path}' is itself a metadata file")
    target = content.get("target_collection_name")
    if target is not None and not isinstance(target, str):
        raise ValueError(f"{where}: target_collection_name must be a string")
    if target is not None:
        validate_collection_name(target, f"{where}: target_collection_name")
    metadata = content.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: metadata must be an object")
    return MetaFile(meta_key, document_id, path, target, validate_user_metadata(metadata, where))
