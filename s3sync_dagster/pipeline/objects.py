"""S3 objects: HEAD, bounded GET, paged listing under a prefix with include/exclude globs."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

S3Client = Any  # a boto3 S3 client; boto3 ships no type stubs
DEFAULT_MAX_OBJECT_BYTES = 200 * 1024 * 1024  # refused before download when larger (Chroma Sync's limit)


class ObjectError(Exception):
    """An object could not be read, or breaks a rule; the message names the object and the rule."""


class ObjectMissing(ObjectError):
    """The object does not exist (any more)."""


@dataclass(frozen=True)
class ObjectInfo:
    object_key: str
    size: int
    etag: str
    last_modified: str  # ISO 8601, UTC


def _etag(raw: str) -> str:
    return raw.strip('"')


def _describe(error: ClientError) -> str:
    details = error.response.get("Error", {})
    return f"{details.get('Code', 'error')}: {details.get('Message', '') or 'no message'}".rstrip(": ")


# What botocore raises when the endpoint itself fails (no answer, or none in time), after its retries.
EndpointError = (BotoConnectionError, HTTPClientError)


def endpoint_failure(s3: S3Client, error: Exception, retried: bool = True) -> str:
    """Why the endpoint gave no answer, with the client's timeout and attempts: 'the S3 endpoint
    http://host:9000 did not answer within the read timeout of 60 s (3 attempts)'."""
    config = s3.meta.config
    split = urlsplit(s3.meta.endpoint_url)
    endpoint = f"{split.scheme}://{split.hostname}" + (f":{split.port}" if split.port else "")  # no user:password
    attempts = (config.retries or {}).get("total_max_attempts")
    tried = f" ({attempts} attempt{'s' if attempts != 1 else ''})" if retried and attempts else ""
    if isinstance(error, ReadTimeoutError):
        what = f"did not answer within the read timeout of {config.read_timeout:g} s"
    elif isinstance(error, ConnectTimeoutError):
        what = f"did not accept a connection within the connect timeout of {config.connect_timeout:g} s"
    elif isinstance(error, EndpointConnectionError):
        cause = re.search(r"\[Errno -?\d+\]\s*(.+)", str(getattr(error, "kwargs", {}).get("error", "")))
        what = "cannot be reached" + (f": {cause.group(1).strip()}" if cause else "")
    elif isinstance(error, ConnectionClosedError):
        what = "closed the connection without answering"
    else:
        what = f"failed ({type(error).__name__}: {error})"
    return f"the S3 endpoint {endpoint} {what}{tried}"


def head_object(s3: S3Client, bucket_name: str, object_key: str) -> ObjectInfo:
    try:
        head = s3.head_object(Bucket=bucket_name, Key=object_key)
    except ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404:
            raise ObjectMissing(f"object '{object_key}' does not exist in bucket '{bucket_name}'") from None
        raise ObjectError(
            f"object '{object_key}' in bucket '{bucket_name}': HEAD failed ({_describe(error)})"
        ) from None
    except EndpointError as error:
        raise ObjectError(
            f"object '{object_key}' in bucket '{bucket_name}': HEAD failed: {endpoint_failure(s3, error)}"
        ) from None
    return ObjectInfo(
        object_key=object_key,
        size=int(head["ContentLength"]),
        etag=_etag(head["ETag"]),
        last_modified=head["LastModified"].isoformat(),
    )


def check_size(info: ObjectInfo, max_object_bytes: int) -> None:
    if info.size > max_object_bytes:
        raise ObjectError(
            f"object '{info.object_key}' is {info.size:,} bytes, over the limit of "
            f"{max_object_bytes:,} bytes per object (max_object_bytes)"
        )


def read_object(s3: S3Client, bucket_name: str, info: ObjectInfo, max_object_bytes: int) -> bytes:
    """GET the very version HEAD saw (If-Match on its ETag), refusing it before download if too large."""
    check_size(info, max_object_bytes)
    try:
        response = s3.get_object(Bucket=bucket_name, Key=info.object_key, IfMatch=f'"{info.etag}"')
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404"):
            raise ObjectMissing(f"object '{info.object_key}' was deleted while it was being read") from None
        if code == "PreconditionFailed":
            raise ObjectError(
                f"object '{info.object_key}' changed while it was being read (ETag is no longer {info.etag}); "
                "the next sync picks up the new version"
            ) from None
        raise ObjectError(
            f"object '{info.object_key}' in bucket '{bucket_name}': GET failed ({_describe(error)})"
        ) from None
    except EndpointError as error:
        raise ObjectError(
            f"object '{info.object_key}' in bucket '{bucket_name}': GET failed: {endpoint_failure(s3, error)}"
        ) from None
    try:
        body: bytes = response["Body"].read(max_object_bytes + 1)
    except EndpointError as error:  # the body stalled midway: botocore does not retry that
        raise ObjectError(
            f"object '{info.object_key}' in bucket '{bucket_name}': reading its body failed: "
            f"{endpoint_failure(s3, error, retried=False)}"
        ) from None
    if len(body) > max_object_bytes:  # the object grew behind HEAD's back
        check_size(ObjectInfo(info.object_key, len(body), info.etag, info.last_modified), max_object_bytes)
    return body


@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`**` crosses folders, `*` and `?` stay within one; a pattern with no `/` matches the file name."""
    if "/" not in pattern:
        pattern = "**/" + pattern
    out: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            out.append(".*")
            index += 2
        elif pattern[index] == "*":
            out.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            out.append("[^/]")
            index += 1
        else:
            out.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(out), re.DOTALL)


def glob_matches(pattern: str, object_key: str) -> bool:
    """Whether the whole key matches a glob of the include/exclude syntax."""
    return _glob_regex(pattern).fullmatch(object_key) is not None


def key_selected(object_key: str, path_prefix: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether a key belongs to a source: under its prefix, matching an include glob (if any), no exclude glob."""
    if not object_key.startswith(path_prefix) or object_key.endswith("/"):
        return False
    if include and not any(glob_matches(p, object_key) for p in include):
        return False
    return not any(glob_matches(p, object_key) for p in exclude)


def list_objects(
    s3: S3Client,
    bucket_name: str,
    path_prefix: str = "",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    page_size: int = 1000,
) -> Iterator[ObjectInfo]:
    """Every selected object under the prefix, paging ListObjectsV2 lazily."""
    paginator = s3.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(
            Bucket=bucket_name, Prefix=path_prefix, PaginationConfig={"PageSize": page_size}
        ):
            for entry in page.get("Contents", []):
                if key_selected(entry["Key"], path_prefix, include, exclude):
                    yield ObjectInfo(
                        object_key=entry["Key"],
                        size=int(entry["Size"]),
                        etag=_etag(entry["ETag"]),
                        last_modified=entry["LastModified"].isoformat(),
                    )
    except ClientError as error:
        raise ObjectError(f"listing bucket '{bucket_name}' under '{path_prefix}' failed ({_describe(error)})") from None
    except EndpointError as error:
        raise ObjectError(
            f"listing bucket '{bucket_name}' under '{path_prefix}' failed: {endpoint_failure(s3, error)}"
        ) from None
