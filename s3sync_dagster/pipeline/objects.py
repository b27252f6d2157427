"""S3 objects: HEAD, bounded GET, paged listing under a prefix with include/exclude globs."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterator, Sequence
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
            raise ObjectMissing(f"object '{object_key}' does not exist in bucket '{bucket_name}'") from None
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


# A glob is read as tokens: a literal character or one of these wildcards (every `*` and `?` of a pattern is a
# wildcard, so neither is ever a literal).
_DIRS = "**/"  # no folder, or any run of folders: `a/`, `a/b/`
_ANY_RUN = "**"  # any characters, `/` included
_SEGMENT_RUN = "*"  # any characters within one folder level (no `/`)
_ONE = "?"  # one character but `/`
_WILDCARDS = (_DIRS, _ANY_RUN, _SEGMENT_RUN, _ONE)  # longest first
_REGEX = {_DIRS: "(?:.*/)?", _ANY_RUN: ".*", _SEGMENT_RUN: "[^/]*", _ONE: "[^/]"}


def _glob_tokens(pattern: str) -> tuple[str, ...]:
    """`**` crosses folders, `*` and `?` stay within one; a pattern with no `/` matches the file name."""
    if "/" not in pattern:
        pattern = _DIRS + pattern
    tokens: list[str] = []
    index = 0
    while index < len(pattern):
        token = next((wildcard for wildcard in _WILDCARDS if pattern.startswith(wildcard, index)), pattern[index])
        tokens.append(token)
        index += len(token)
    return tuple(tokens)


def _share_a_character(takes: str, other: str) -> bool:
    """Whether two states' characters (a literal, `_ONE`: any but `/`, `_ANY_RUN`: any) have one in common."""
    if _ANY_RUN in (takes, other):
        return True
    if _ONE in (takes, other):
        return "/" not in (takes, other)
    return takes == other


class _GlobAutomaton:
    """A glob as a set of states advanced one key character at a time: steps linear in the key (times the
    pattern) for every pattern, where a backtracking regex is exponential on `*a*a*a*a*b`. The sets of states met
    are remembered with their moves (a DFA built as the keys need it): one dict lookup per character after that.
    """

    _MAX_REMEMBERED = 10_000  # sets and moves per pattern; past them, moves are worked out each time (as linear)
    _MAX_PAIRS_LOOKED_AT = 200_000  # by `regex_is_linear`, before it leaves the glob to this class

    def __init__(self, tokens: Sequence[str]) -> None:
        # State i takes one character (`_takes[i]`: a literal, _ONE or _ANY_RUN; "" for none) to state `_after[i]`
        # (itself: a run of wildcards), or moves on without one to each of `_skips[i]`; the state past the last one
        # is the match.
        self._takes: list[str] = []
        self._after: list[int] = []
        self._skips: list[tuple[int, ...]] = []
        for token in tokens:
            here = len(self._takes)
            if token == _DIRS:  # nothing (on to here + 3), or characters (here + 1) then the `/` of here + 2
                self._add("", here + 3, (here + 1, here + 3))  # takes no character: only the choice
                self._add(_ANY_RUN, here + 1, (here + 2,))
                self._add("/", here + 3, ())
            elif token in (_ANY_RUN, _SEGMENT_RUN):
                self._add(_ANY_RUN if token == _ANY_RUN else _ONE, here, (here + 1,))
            else:
                self._add(token, here + 1, ())
        self._final = len(self._takes)
        # The states each state reaches without a character, itself included, as a bit set (skips go forward).
        self._closure = [0] * self._final + [1 << self._final]
        for state in reversed(range(self._final)):
            for skip in self._skips[state]:
                self._closure[state] |= self._closure[skip]
            self._closure[state] |= 1 << state
        self._lock = threading.Lock()
        self._sets: list[int] = [0, self._closure[0]]  # DFA state -> its set of states; 0: none left, no match
        self._ids = {states: dfa_state for dfa_state, states in enumerate(self._sets)}
        self._moves: list[dict[str, int]] = [{}, {}]
        self._matches = [self._matching(states) for states in self._sets]
        self._remembered = 0

    def _add(self, takes: str, after: int, skips: tuple[int, ...]) -> None:
        self._takes.append(takes)
        self._after.append(after)
        self._skips.append(skips)

    def _matching(self, states: int) -> bool:
        return states >> self._final & 1 == 1

    def _members(self, states: int) -> list[int]:
        """The states of a set that take a character."""
        members: list[int] = []
        while states:
            state = (states & -states).bit_length() - 1  # the lowest
            states ^= 1 << state
            if state < self._final and self._takes[state]:
                members.append(state)
        return members

    def _next(self, states: int, char: str) -> int:
        """The set of states after one more character."""
        reached = 0
        for state in self._members(states):
            takes = self._takes[state]
            if takes in (_ANY_RUN, char) or (takes == _ONE and char != "/"):
                reached |= self._closure[self._after[state]]
        return reached

    def _learn(self, dfa_state: int, char: str) -> int | None:
        """The DFA state after a character, remembered; None when too many sets were met to remember one more."""
        reached = self._next(self._sets[dfa_state], char)
        with self._lock:  # sensors may match from several threads: each set gets one id, published last
            following = self._ids.get(reached)
            if following is None:
                if len(self._sets) >= self._MAX_REMEMBERED:
                    return None
                following = len(self._sets)
                self._sets.append(reached)
                self._moves.append({})
                self._matches.append(self._matching(reached))
                self._ids[reached] = following
            if self._remembered < self._MAX_REMEMBERED:
                self._moves[dfa_state][char] = following
                self._remembered += 1
        return following

    def fullmatch(self, object_key: str) -> bool | None:
        """True when the whole key matches, else None (a regex's fullmatch answers so too)."""
        moves = self._moves
        dfa_state = 1
        characters = iter(object_key)
        for char in characters:
            following = moves[dfa_state].get(char)
            if following is None:
                following = self._learn(dfa_state, char)
                if following is None:  # nothing more is remembered: the rest of the key with plain sets
                    states = self._next(self._sets[dfa_state], char)
                    for rest in characters:
                        states = self._next(states, rest)
                    return True if self._matching(states) else None
            if not following:
                return None
            dfa_state = following
        return True if self._matches[dfa_state] else None

    def regex_is_linear(self) -> bool:
        """Whether a backtracking regex engine (Python's) matches this glob in steps linear in the key.

        Such an engine comes back to one (pattern position, key position) only along a second way of matching the
        key up to there. Where no two ways can meet in one state, it tries each pair at most once, a run of
        wildcards is entered once per folder level, and it is linear; a trailing `**` matches at its first try,
        so ways may meet there. Everyday globs are so (`reports/**/*.pdf`, `*.pdf`, `docs/**`, `**/tmp/**`) and
        run faster on the regex engine than here; `*draft*` is not (`draftdraft/x`: a way per `draft`).
        Worked out on the pairs of states that two ways may be in before one character of some key.
        """
        runs = [state for state, after in enumerate(self._after) if after == state]
        if len(runs) <= 1:
            return True  # the rest of the pattern fixes where the only run ends
        done = {state for state in runs if self._takes[state] == _ANY_RUN and self._matching(self._closure[state])}
        entered = [[state for state in self._members(closure) if state not in done] for closure in self._closure]

        def pairs(after: tuple[int, int]) -> Iterator[tuple[int, int]]:
            for a in entered[after[0]]:
                for b in entered[after[1]]:
                    if _share_a_character(self._takes[a], self._takes[b]):
                        yield a, b

        reached: set[tuple[int, int]] = set()
        waiting: list[tuple[int, int] | None] = [None]  # None: before the key's first character
        looked_at = 0
        while waiting:
            came_from = waiting.pop()
            after = (0, 0) if came_from is None else (self._after[came_from[0]], self._after[came_from[1]])
            for pair in pairs(after):
                looked_at += 1
                if looked_at > self._MAX_PAIRS_LOOKED_AT:
                    return False  # a glob this involved is left to this class
                if came_from is not None and came_from[0] != came_from[1] and pair[0] == pair[1]:
                    return False  # two ways meet
                if pair not in reached:
                    reached.add(pair)
                    waiting.append(pair)
        return True


@functools.lru_cache(maxsize=256)
def _glob_matcher(pattern: str) -> Callable[[str], object]:
    """A glob's compiled form: the regex engine's fullmatch where backtracking stays linear, else the automaton."""
    tokens = _glob_tokens(pattern)
    automaton = _GlobAutomaton(tokens)
    if automaton.regex_is_linear():
        return re.compile("".join(_REGEX.get(token, re.escape(token)) for token in tokens), re.DOTALL).fullmatch
    return automaton.fullmatch


def glob_matches(pattern: str, object_key: str) -> bool:
    """Whether the whole key matches a glob of the include/exclude syntax (in steps linear in the key)."""
    return _glob_matcher(pattern)(object_key) is not None


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
            _answered_as_s3(s3, "ListObjectsV2", page)
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
