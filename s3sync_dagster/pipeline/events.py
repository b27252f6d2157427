"""S3 event notifications (direct or wrapped in SNS) from SQS -> what to sync; and `.meta.json` files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus

from s3sync_dagster.pipeline import index, keys

META_SUFFIX = ".meta.json"
META_VERSION = "chroma-v1"


@dataclass(frozen=True)
class SyncRequest:
    """One object key to bring up to date: `index` for a created object, `remove` for a deleted one."""

    action: Literal["index", "remove"]
    object_key: str
    event_name: str


@dataclass(frozen=True)
class Ignored:
    """A record or message that leads to no sync, with the reason (logged by the sensor)."""

    reason: str


def _records(body: str) -> list[Mapping[str, Any]] | Ignored:
    try:
        message = json.loads(body)
    except json.JSONDecodeError:
        return Ignored("message body is not JSON: not an S3 event notification")
    if isinstance(message, dict) and message.get("Type") == "Notification" and isinstance(message.get("Message"), str):
        # S3 -> SNS -> SQS: the S3 notification is the SNS message's text.
        try:
            message = json.loads(message["Message"])
        except json.JSONDecodeError:
            return Ignored("SNS message text is not JSON: not an S3 event notification")
    if not isinstance(message, dict):
        return Ignored("message is not a JSON object: not an S3 event notification")
    if message.get("Event") == "s3:TestEvent":
        return Ignored("s3:TestEvent (sent by S3 when notifications are configured)")
    records = message.get("Records")
    if not isinstance(records, list) or not records:
        return Ignored("message has no Records: not an S3 event notification")
    return [record for record in records if isinstance(record, dict)]


def parse_message(body: str, bucket_name: str, path_prefix: str) -> list[SyncRequest | Ignored]:
    """The sync requests one SQS message body asks for, in order, for a source's bucket and prefix.

    Never raises: a malformed message must be logged and dropped, not stall the queue.
    """
    try:
        return _parse_message(body, bucket_name, path_prefix)
    except Exception as error:
        return [Ignored(f"malformed S3 event notification ({type(error).__name__}: {error})")]


def _parse_message(body: str, bucket_name: str, path_prefix: str) -> list[SyncRequest | Ignored]:
    records = _records(body)
    if isinstance(records, Ignored):
        return [records]
    out: list[SyncRequest | Ignored] = []
    for record in records:
        event_name = str(record.get("eventName", ""))
        s3 = record.get("s3")
        bucket_entry = s3.get("bucket") if isinstance(s3, dict) else None
        object_entry = s3.get("object") if isinstance(s3, dict) else None
        bucket = bucket_entry.get("name") if isinstance(bucket_entry, dict) else None
        raw_key = object_entry.get("key") if isinstance(object_entry, dict) else None
        if not str(record.get("eventSource", "aws:s3")).endswith("s3") or raw_key is None:
            out.append(Ignored(f"record {event_name or '?'} is not an S3 object event"))
            continue
        object_key = unquote_plus(str(raw_key))  # S3 encodes keys in events: "a+b.txt" is "a b.txt"
        if bucket != bucket_name:
            out.append(Ignored(f"'{object_key}' is in bucket '{bucket}', not this source's bucket '{bucket_name}'"))
        elif not object_key.startswith(path_prefix):
            out.append(Ignored(f"'{object_key}' is outside this source's path_prefix '{path_prefix}'"))
        elif object_key.endswith("/"):
            out.append(Ignored(f"'{object_key}' is a folder marker"))
        elif event_name.startswith("ObjectCreated:"):
            # In metadata mode a document's upload matters only to the metadata files naming it (the sensor
            # knows which do); it is never indexed on its own.
            out.append(SyncRequest("index", object_key, event_name))
        elif event_name.startswith("ObjectRemoved:"):
            out.append(SyncRequest("remove", object_key, event_name))
        else:
            out.append(Ignored(f"event {event_name} for '{object_key}' needs no sync"))
    return out


@dataclass(frozen=True)
class MetaFile:
    """A validated `.meta.json`: which object to index, under which id, with which metadata, where."""

    meta_key: str
    document_id: str
    path: str
    target_collection_name: str | None
    metadata: index.Metadata


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
        keys.validate_custom_id(document_id)
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
        keys.validate_collection_name(target, f"{where}: target_collection_name")
    metadata = content.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: metadata must be an object")
    return MetaFile(meta_key, document_id, path, target, index.validate_user_metadata(metadata, where))
