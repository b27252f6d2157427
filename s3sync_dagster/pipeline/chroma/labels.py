"""What of an object besides its text reaches its chunks: user metadata, tags, readers (a source's labels).

A source's `object_metadata: [team]` puts the object's `x-amz-meta-team` on every chunk as `meta_team`, its
`object_tags: [cls]` the tag `cls` as `tag_cls`, its `readers_tag` the tag's `+`-separated principals as the
sorted list `readers` (else `default_readers`; none: no `readers` key, so only an operator's search sees it).
Labels are no part of the sync signature: a change of them alone (a PutObjectTagging, a copy in place with new
metadata, which keeps the ETag) updates the stored chunks' metadata, never their text or vectors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from s3sync_dagster.pipeline.chroma.lifecycle import copy_of, max_batch_size
from s3sync_dagster.pipeline.chroma.stored import StoredChunk, batches
from s3sync_dagster.pipeline.records import Metadata, validate_user_metadata
from s3sync_dagster.pipeline.s3 import (
    EndpointError,
    ObjectError,
    ObjectInfo,
    ObjectMissing,
    S3Client,
    endpoint_failure,
    error_meaning,
)
from s3sync_dagster.pipeline.spec import SourceSpec

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

# One reader in a readers tag's value (`alice+group:finance`: `+` separates them); config.source's rule too.
PRINCIPAL_PATTERN = r"^[\w.:/=@-]+$"
MAX_PRINCIPAL_CHARS = 256
READERS_KEY = "readers"
META_PREFIX, TAG_PREFIX = "meta_", "tag_"


def wanted(spec: SourceSpec) -> bool:
    """Whether the source carries any label: without, nothing here asks S3 or changes a chunk."""
    return bool(spec.object_metadata or spec.object_tags or spec.readers_tag or spec.default_readers)


def reads_tags(spec: SourceSpec) -> bool:
    """Whether an object's tags are read (one GetObjectTagging per object synced)."""
    return bool(spec.object_tags or spec.readers_tag)


def label_keys(spec: SourceSpec) -> frozenset[str]:
    """The chunk metadata keys the source's labels own (set, changed or removed by a label update)."""
    owned = {META_PREFIX + name for name in spec.object_metadata} | {TAG_PREFIX + key for key in spec.object_tags}
    if spec.readers_tag or spec.default_readers:
        owned.add(READERS_KEY)
    return frozenset(owned)


def check_user_keys(spec: SourceSpec, user_metadata: Mapping[str, Any], what: str) -> None:
    """A `.meta.json` file's or an invocation's metadata may not write a label's key (`readers` is reserved
    everywhere, in metadata_rules)."""
    taken = sorted(set(user_metadata) & label_keys(spec))
    if taken:
        raise ValueError(
            f"{what}: metadata key '{taken[0]}' is the source's label (object_metadata / object_tags / readers_tag "
            "write it from S3); a metadata file or an invocation may not set it"
        )


class TagsRefused(ObjectError):
    """S3 answered GetObjectTagging with an error: `code` is S3's (AccessDenied, InvalidObjectState, ...)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def refused_as_archived(error: Exception) -> bool:
    """Whether the endpoint refused an archived object's tags for its storage class (as moto does; S3 answers
    them): the object stays `archived`, not failed, and its chunks are closed where it has readers."""
    return isinstance(error, TagsRefused) and error.code == "InvalidObjectState"


def object_tags(s3: S3Client, bucket_name: str, object_key: str) -> dict[str, str]:
    """The object's tags (one GetObjectTagging); a gone object is ObjectMissing, as its HEAD."""
    try:
        answer = s3.get_object_tagging(Bucket=bucket_name, Key=object_key)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in {"NoSuchKey", "404"}:
            raise ObjectMissing(f"object '{object_key}' does not exist in bucket '{bucket_name}'") from None
        raise TagsRefused(
            f"object '{object_key}' in bucket '{bucket_name}': GetObjectTagging failed "
            f"({error_meaning(error, 's3:GetObjectTagging (object_tags and readers_tag read the tags)')})",
            code,
        ) from None
    except EndpointError as error:
        raise ObjectError(
            f"object '{object_key}' in bucket '{bucket_name}': GetObjectTagging failed: {endpoint_failure(s3, error)}"
        ) from None
    return {str(tag["Key"]): str(tag["Value"]) for tag in answer.get("TagSet", [])}


def parse_readers(value: str, object_key: str, tag_key: str) -> list[str]:
    """A readers tag's value as the sorted unique principals; a bad one fails the object, naming the rule."""
    readers = {part.strip() for part in value.split("+")} - {""}
    for reader in sorted(readers):
        if len(reader) > MAX_PRINCIPAL_CHARS or not re.match(PRINCIPAL_PATTERN, reader):
            raise ValueError(
                f"object '{object_key}': tag '{tag_key}' names the reader {reader[:80]!r}, which breaks the rule for "
                f"a principal ({PRINCIPAL_PATTERN}, at most {MAX_PRINCIPAL_CHARS} characters; '+' separates readers)"
            )
    return sorted(readers)


def object_labels(
    s3: S3Client, spec: SourceSpec, info: ObjectInfo, user_metadata: Mapping[str, Any] | None = None
) -> Metadata:
    """The labels one object's chunks carry, from its HEAD (user metadata) and, when asked for, its tags.

    user_metadata: the object's own metadata (a metadata file's, an invocation's), checked with the labels
    against the size limits every chunk's metadata keeps.
    """
    if not wanted(spec):
        return {}
    what = f"object '{info.object_key}'"
    head_metadata = dict(info.user_metadata)
    labels: dict[str, Any] = {
        META_PREFIX + name: head_metadata[name] for name in spec.object_metadata if name in head_metadata
    }
    tags = object_tags(s3, spec.bucket_name, info.object_key) if reads_tags(spec) else {}
    labels.update({TAG_PREFIX + key: tags[key] for key in spec.object_tags if key in tags})
    validate_user_metadata({**(user_metadata or {}), **labels}, what)  # storable, within the size limits
    readers = (
        parse_readers(tags[spec.readers_tag], info.object_key, spec.readers_tag) if spec.readers_tag in tags else []
    )
    readers = readers or sorted(set(spec.default_readers))
    if readers:
        labels[READERS_KEY] = readers
    return labels


class ReadersUnknown(ObjectError):
    """An object's labels could not be read (a bad readers tag, a tag S3 would not give): its chunks were closed
    to every reader and its key fails, naming what broke."""


def closed(collection: Collection, stored: Mapping[str, StoredChunk], spec: SourceSpec, error: Exception) -> Exception:
    """Fail closed: when a source lists readers per object and an object's labels cannot be read, the chunks it
    has lose their readers (an operator's search alone sees them) until its tag reads again; the error to raise,
    saying so. A source without readers_tag has no readers to withdraw: the error as it is."""
    if not spec.readers_tag:
        return error
    close(collection, stored)
    return ReadersUnknown(
        f"{error}; until tag '{spec.readers_tag}' reads again, no reader sees this object "
        f"({len(stored)} chunk(s) closed to every reader)"
    )


def close(collection: Collection, stored: Mapping[str, StoredChunk]) -> None:
    """Withdraw the chunks' readers (metadata only, in the re-embedding copy too): an operator's search alone sees
    them."""
    held = [chunk_id for chunk_id, chunk in stored.items() if chunk.metadata.get(READERS_KEY)]
    if held:
        update_labels(collection, held, {READERS_KEY: None})


def changed(spec: SourceSpec, stored: Mapping[str, StoredChunk], labels: Metadata) -> dict[str, Any]:
    """What a label update must write on the stored chunks (None removes a key), or {} when they carry `labels`."""
    update: dict[str, Any] = {}
    for key in sorted(label_keys(spec)):
        want = labels.get(key)
        if any(chunk.metadata.get(key) != want for chunk in stored.values()):
            update[key] = want
    return update


def update_labels(collection: Collection, chunk_ids: list[str], update: Mapping[str, Any]) -> int:
    """Write the labels on the chunks (metadata only: no text, no vector), in its copy too while re-embedded."""
    for part in batches(sorted(chunk_ids), max_batch_size(collection)):
        collection.update(ids=list(part), metadatas=[dict(update) for _ in part])
    copy = copy_of(collection)
    if copy is not None:
        present = copy.get(ids=sorted(chunk_ids), include=[])["ids"]
        if present:
            update_labels(copy, list(present), update)
    return len(chunk_ids)
