"""S3 objects: HEAD, bounded GET, paged listing under a prefix with include/exclude globs (pipeline/s3/globs.py)."""

from __future__ import annotations

import re
import threading
import time
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

from s3sync_dagster.pipeline.s3.archive import archived_reason
from s3sync_dagster.pipeline.s3.globs import key_selected

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
    # The listing's StorageClass (ListObjectsV2 names it; a HEAD does only when not STANDARD).
    storage_class: str = "STANDARD"
    user_metadata: tuple[tuple[str, str], ...] = ()  # x-amz-meta-* from a HEAD (names lowercased); a listing has none
    archived: str | None = None  # why a GET is refused until restored (pipeline/s3/archive.py); None: readable
    version_id: str | None = None  # HEAD's VersionId in a versioned bucket; None in an unversioned one


def _etag(raw: str) -> str:
    return raw.strip('"')


def _describe(error: ClientError) -> str:
    details = error.response.get("Error", {})
    return f"{details.get('Code', 'error')}: {details.get('Message', '') or 'no message'}".rstrip(": ")


# What an S3 error code means to the person reading a key's failure; a code not here is shown with S3's message.
# A missing permission is said only for AccessDenied: an archived object, a gone bucket or a throttle is not one.
ERROR_MEANINGS = {
    "AccessDenied": "access denied: the credentials lack {permission} on it",
    "AllAccessDisabled": "access to the bucket is disabled",
    "InvalidObjectState": "the object is archived and not restored (S3 answers it only after a RestoreObject)",
    "NoSuchBucket": "the bucket does not exist",
    "InvalidAccessKeyId": "the access key id is not known to the endpoint",
    "SignatureDoesNotMatch": "the secret key does not match the access key id",
    "ExpiredToken": "the temporary credentials have expired",
    "SlowDown": "S3 throttled the requests (SlowDown) after the client's retries",
    "ServiceUnavailable": "S3 could not answer (ServiceUnavailable) after the client's retries",
    "InternalError": "S3 failed inside (InternalError) after the client's retries",
}


def error_meaning(error: ClientError, permission: str) -> str:
    """An S3 error as its code and what it means here: 'AccessDenied: access denied: the credentials lack
    s3:GetObjectTagging on it'; `permission` is the IAM action the request needed."""
    code = str(error.response.get("Error", {}).get("Code", "") or "error")
    meaning = ERROR_MEANINGS.get(code)
    if meaning is None:
        return _describe(error)
    return f"{code}: {meaning.format(permission=permission)}"


class EndpointSilent(Exception):
    """A request not sent: the client's endpoint left another unanswered moments ago (`skip_while_silent`)."""


# What botocore raises when the endpoint itself fails (no answer, or none in time), after its retries; and a request
# skip_while_silent did not send.
EndpointError = (BotoConnectionError, HTTPClientError, EndpointSilent)


def endpoint_failure(s3: S3Client, error: Exception, retried: bool = True) -> str:
    """Why the endpoint gave no answer, with the client's timeout and attempts: 'the S3 endpoint
    http://host:9000 did not answer within the read timeout of 60 s (3 attempts)'."""
    config = s3.meta.config
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
    elif isinstance(error, EndpointSilent):
        return f"{_endpoint(s3)} {error}"
    else:
        what = f"failed ({type(error).__name__}: {error})"
    return f"{_endpoint(s3)} {what}{tried}"


class BucketError(ObjectError):
    """The source's bucket cannot be used at all (missing, refused, unreachable): every key of it would fail
    alike, so it is said once, naming the field to correct. `transient`: worth trying again unchanged."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# Answers to a HEAD of the bucket that mean the credentials, not the bucket, are wrong (a HEAD has no body: a
# bare status is all there is; a GET or a listing names the code).
_REFUSED = {"403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}


class NotS3Error(BucketError):
    """The endpoint answered, but not as S3 does (a web app's page, another service): endpoint_url points elsewhere.
    Read as S3, its listing would hold no key (every registered one would look deleted), a HEAD no ETag."""


# A field every S3 store (AWS, MinIO, R2, GCS's XML API, moto) puts in its answer to each of these operations.
_ALWAYS_ANSWERED = {"ListObjectsV2": "IsTruncated", "HeadObject": "ETag", "GetObject": "ETag"}


def not_s3(operation: str, response: dict[str, Any]) -> str | None:
    """What in botocore's `response` to `operation` (a result, or a ClientError's) no S3 store would send, in words."""
    meta = response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 0)
    content_type = str(meta.get("HTTPHeaders", {}).get("content-type", "")).split(";")[0].strip()
    field = _ALWAYS_ANSWERED.get(operation)
    if field is None:
        return None
    if operation == "ListObjectsV2" and content_type == "text/html":  # S3 lists in XML, its errors too
        return f"a web page (HTTP {status}, text/html)"
    if 200 <= status < 300 and field not in response:
        return f"an answer without {field} (HTTP {status}, {content_type or 'no content type'})"
    return None


def _not_s3_error(endpoint: str, operation: str, what: str, status: int) -> NotS3Error:
    return NotS3Error(
        f"endpoint_url: {endpoint} answered {operation} with {what}: it did not answer as S3 does; endpoint_url "
        "must be the address of an S3 API (AWS, an S3-compatible store's API port), not a web app or a console",
        transient=status >= 500,  # a proxy's error page in front of S3 may pass
    )


def refuse_non_s3_answers(s3: S3Client) -> S3Client:
    """Have the client raise NotS3Error, whoever calls it (a listing, a HEAD, a sensor's page), for an answer no S3
    store gives, instead of reading a web app's page as a bucket with no keys or an object with no ETag."""
    endpoint = _endpoint(s3)

    def check(http_response: Any, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        what = not_s3(model.name, parsed)
        if what is not None:
            raise _not_s3_error(endpoint, model.name, what, int(http_response.status_code))

    s3.meta.events.register("after-call.s3", check, unique_id="s3sync-refuse-non-s3-answers")
    return s3


def skip_while_silent(s3: S3Client) -> S3Client:
    """After a request the endpoint left unanswered through all its attempts (a read or connect timeout), the
    client sends nothing for its read timeout: each request meanwhile fails at once with EndpointSilent, naming the
    endpoint and the setting. With S3 silent mid-run, a run's later keys fail in moments, not each after its own
    attempts x timeouts (a run of 100 keys: hours); the first request after the pause is sent, and answers again
    if the endpoint is back. As chroma.timeout_seconds bounds a Chroma server's silence (pipeline/chroma/bounded)."""
    config = s3.meta.config
    pause_s = float(config.read_timeout)
    unanswered: float | None = None  # when a request last went unanswered (monotonic), if one did
    lock = threading.Lock()

    def failed(exception: Exception | None = None, **_: Any) -> None:
        nonlocal unanswered
        if isinstance(exception, (ReadTimeoutError, ConnectTimeoutError)):
            with lock:
                unanswered = time.monotonic()

    def before_send(event_name: str = "", **_: Any) -> None:
        with lock:
            since = None if unanswered is None else time.monotonic() - unanswered
        if since is not None and since < pause_s:
            operation = event_name.rsplit(".", 1)[-1]
            raise EndpointSilent(
                f"has not answered a request for {since:.0f} s, so {operation} was not sent (it is sent again "
                f"{pause_s:g} s after the last unanswered one: timeouts.read_seconds)"
            )

    s3.meta.events.register("after-call-error.s3", failed, unique_id="s3sync-note-silence")
    s3.meta.events.register("before-send.s3", before_send, unique_id="s3sync-skip-while-silent")
    return s3


def _answered_as_s3(s3: S3Client, operation: str, answer: dict[str, Any]) -> None:
    """NotS3Error where the client's answer is no S3 store's (a client without refuse_non_s3_answers)."""
    what = not_s3(operation, answer)
    if what is not None:
        status = int(answer.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        raise _not_s3_error(_endpoint(s3), operation, what, status)


def _listing_problem(s3: S3Client, bucket_name: str) -> NotS3Error | None:
    """One key listed, to tell an S3 endpoint from anything else that answers a HEAD with 200 (a web app does)."""
    try:
        answer = s3.list_objects_v2(Bucket=bucket_name, MaxKeys=1)
    except NotS3Error as error:
        return error
    except ClientError as error:  # refused to list, or not S3 (for a client without refuse_non_s3_answers)
        answer = error.response
    what = not_s3("ListObjectsV2", answer)
    status = int(answer.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return _not_s3_error(_endpoint(s3), "ListObjectsV2", what, status) if what else None


def check_bucket(s3: S3Client, bucket_name: str, source_name: str, credentials: str) -> None:
    """HEAD the bucket and list one key, once, before any key: a wrong bucket name, refused credentials, an
    endpoint that does not answer or is not S3 is the source's one failure, said once with the field to correct.
    Without it each key's HEAD would answer 404 for a bucket that is not there, which reads as an object deleted:
    its chunks removed.

    `credentials`: what the source authenticates with, in words (SourceConfig.credentials_in_words).
    """
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    where = f"source '{source_name}'"
    try:
        s3.head_bucket(Bucket=bucket_name)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", "error"))
        at = _endpoint(s3)
        if code in ("404", "NoSuchBucket"):
            raise BucketError(
                f"{where} bucket_name: bucket '{bucket_name}' does not exist at {at}: correct bucket_name "
                "(or endpoint_url, if the bucket is on another endpoint)"
            ) from None
        if code in _REFUSED:
            raise BucketError(
                f"{where}: {at} refused the credentials for bucket '{bucket_name}' ({code}): check {credentials}, "
                "and that they may list and read the bucket"
            ) from None
        if code in ("301", "400", "PermanentRedirect", "AuthorizationHeaderMalformed"):
            raise BucketError(
                f"{where} region: bucket '{bucket_name}' is not in region '{s3.meta.region_name}' ({code}): "
                "correct region"
            ) from None
        raise BucketError(f"{where}: bucket '{bucket_name}' cannot be used ({_describe(error)})") from None
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise BucketError(f"{where}: no S3 credentials were found ({error}): set {credentials}") from None
    except EndpointError as error:
        raise BucketError(
            f"{where} endpoint_url: {endpoint_failure(s3, error)}: correct endpoint_url, or start the endpoint",
            transient=True,
        ) from None
    except NotS3Error as error:
        raise NotS3Error(f"{where} {error}", error.transient) from None
    try:
        problem = _listing_problem(s3, bucket_name)
    except EndpointError as error:
        raise BucketError(f"{where} endpoint_url: {endpoint_failure(s3, error)}", transient=True) from None
    if problem is not None:
        raise NotS3Error(f"{where} {problem}", problem.transient)


def _endpoint(s3: S3Client) -> str:
    """'the S3 endpoint http://host:9000': scheme, host and port only, never a user:password."""
    split = urlsplit(s3.meta.endpoint_url)
    return f"the S3 endpoint {split.scheme}://{split.hostname}" + (f":{split.port}" if split.port else "")


def head_object(s3: S3Client, bucket_name: str, object_key: str) -> ObjectInfo:
    try:
        head = s3.head_object(Bucket=bucket_name, Key=object_key)
    except ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404:
            headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            marker = " (its current version is a delete marker)" if headers.get("x-amz-delete-marker") == "true" else ""
            raise ObjectMissing(f"object '{object_key}' does not exist in bucket '{bucket_name}'{marker}") from None
        raise ObjectError(
            f"object '{object_key}' in bucket '{bucket_name}': HEAD failed ({_describe(error)})"
        ) from None
    except EndpointError as error:
        raise ObjectError(
            f"object '{object_key}' in bucket '{bucket_name}': HEAD failed: {endpoint_failure(s3, error)}"
        ) from None
    _answered_as_s3(s3, "HeadObject", head)
    return ObjectInfo(
        object_key=object_key,
        size=int(head["ContentLength"]),
        etag=_etag(head["ETag"]),
        last_modified=head["LastModified"].isoformat(),
        user_metadata=tuple(sorted((str(k).lower(), str(v)) for k, v in (head.get("Metadata") or {}).items())),
        archived=archived_reason(head),
        version_id=_version_id(head),
    )


def _version_id(head: dict[str, Any]) -> str | None:
    """A versioned bucket's version id; an unversioned bucket's objects have none (S3 may answer 'null')."""
    version_id = head.get("VersionId")
    return str(version_id) if version_id and version_id != "null" else None


def check_size(info: ObjectInfo, max_object_bytes: int) -> None:
    if info.size > max_object_bytes:
        raise ObjectError(
            f"object '{info.object_key}' is {info.size:,} bytes, over the limit of "
            f"{max_object_bytes:,} bytes per object (max_object_bytes)"
        )


def read_object(s3: S3Client, bucket_name: str, info: ObjectInfo, max_object_bytes: int) -> bytes:
    """GET the very version HEAD saw (If-Match on its ETag, and its VersionId in a versioned bucket, so the text and
    the version id recorded agree), refusing it before download if too large."""
    check_size(info, max_object_bytes)
    version = {"VersionId": info.version_id} if info.version_id else {}
    try:
        response = s3.get_object(Bucket=bucket_name, Key=info.object_key, IfMatch=f'"{info.etag}"', **version)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "NoSuchVersion", "404"):
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
            _answered_as_s3(s3, "ListObjectsV2", page)
            for entry in page.get("Contents", []):
                if key_selected(entry["Key"], path_prefix, include, exclude):
                    yield ObjectInfo(
                        object_key=entry["Key"],
                        size=int(entry["Size"]),
                        etag=_etag(entry["ETag"]),
                        last_modified=entry["LastModified"].isoformat(),
                        storage_class=str(entry.get("StorageClass") or "STANDARD"),
                    )
    except ClientError as error:
        raise ObjectError(f"listing bucket '{bucket_name}' under '{path_prefix}' failed ({_describe(error)})") from None
    except EndpointError as error:
        raise ObjectError(
            f"listing bucket '{bucket_name}' under '{path_prefix}' failed: {endpoint_failure(s3, error)}"
        ) from None
