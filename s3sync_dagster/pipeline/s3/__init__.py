"""S3 and SQS as the engine reads them: objects (HEAD, bounded GET, paged listings with include/exclude globs),
archived storage classes, assumed roles, request settings (requester pays, SSE-C), events from SQS and `.meta.json`
files, the links between metadata files and documents, and a poll's listing state.

May import: records.
"""

from __future__ import annotations

from s3sync_dagster.pipeline.s3.archive import archived_message, listed_as_archived, may_be_archived
from s3sync_dagster.pipeline.s3.events import (
    META_SUFFIX,
    Ignored,
    SyncRequest,
    is_meta_key,
    not_understood,
    parse_message,
    parse_meta_file,
)
from s3sync_dagster.pipeline.s3.globs import glob_matches, key_selected
from s3sync_dagster.pipeline.s3.meta_links import InMemoryMetaLinks, MetaLinks
from s3sync_dagster.pipeline.s3.objects import (
    DEFAULT_MAX_OBJECT_BYTES,
    BucketError,
    EndpointError,
    EndpointSilent,
    ObjectError,
    ObjectInfo,
    ObjectMissing,
    S3Client,
    check_bucket,
    check_size,
    endpoint_failure,
    error_meaning,
    head_object,
    list_objects,
    read_object,
    refuse_non_s3_answers,
    skip_while_silent,
)
from s3sync_dagster.pipeline.s3.poll import PollState, clear, has_state, migrate_legacy_file
from s3sync_dagster.pipeline.s3.request_settings import RequestSettings, customer_key, send_request_settings
from s3sync_dagster.pipeline.s3.roles import Role, assumed_role_credentials, session_with

__all__ = [
    "DEFAULT_MAX_OBJECT_BYTES",
    "META_SUFFIX",
    "BucketError",
    "EndpointError",
    "EndpointSilent",
    "Ignored",
    "InMemoryMetaLinks",
    "MetaLinks",
    "ObjectError",
    "ObjectInfo",
    "ObjectMissing",
    "PollState",
    "RequestSettings",
    "Role",
    "S3Client",
    "SyncRequest",
    "archived_message",
    "assumed_role_credentials",
    "check_bucket",
    "check_size",
    "clear",
    "customer_key",
    "endpoint_failure",
    "error_meaning",
    "glob_matches",
    "has_state",
    "head_object",
    "is_meta_key",
    "key_selected",
    "list_objects",
    "listed_as_archived",
    "may_be_archived",
    "migrate_legacy_file",
    "not_understood",
    "parse_message",
    "parse_meta_file",
    "read_object",
    "refuse_non_s3_answers",
    "send_request_settings",
    "session_with",
    "skip_while_silent",
]
