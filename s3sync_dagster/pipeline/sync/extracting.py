"""The extract and chunk stages of a sync: an object's bytes -> text (in this process, or converted in the
run's document pool with a window of conversions in flight) -> the records its write needs."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from s3sync_dagster.pipeline import extraction
from s3sync_dagster.pipeline.extraction import (
    Converted,
    DocumentPool,
    Extracted,
    convert_document,
    is_converted,
    result_of,
)
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync.fetch import Fetched
from s3sync_dagster.pipeline.sync.reports import lap
from s3sync_dagster.pipeline.sync.write import NewObjects, Prepared, prepare


def extract_in_process(object_key: str, data: bytes, spec: SourceSpec) -> Extracted:
    """An object's text, extracted (a document converted) in this process."""
    if is_converted(object_key):
        return convert_document(object_key, data, spec.document_options).to_extracted()
    return extraction.extract_text(object_key, data)


def extract_with(pool: DocumentPool | None, spec: SourceSpec) -> Callable[[str, bytes], Extracted]:
    """Object key, bytes -> text as a sync of the run extracts it: a document in the run's pool (its timeout, its
    isolation) where there is one, anything else in this process. One at a time: for the settle check's resyncs."""

    def extract_text(object_key: str, data: bytes) -> Extracted:
        if pool is not None and is_converted(object_key):
            return result_of(object_key, pool.submit(object_key, data, spec.document_options), spec.document_options)
        return extract_in_process(object_key, data, spec)

    return extract_text


def chunked_in_process(fetched: Fetched, spec: SourceSpec) -> Prepared:
    """A fetched object's text, extracted in this process, cut into the records its write needs."""
    mark = time.perf_counter()
    extracted = extract_in_process(fetched.report.document_key or fetched.report.object_key, fetched.data, spec)
    lap(fetched.report, "extract", mark)
    fetched.data = b""  # chunked next: the text is what the write needs
    return prepare(fetched, extracted, spec)


# Object key, the error, when its sync began: the key is reported failed (its own failure, never the others').
Failed = Callable[[str, Exception, float], None]


class Conversions:
    """Documents converting in the run's pool, in key order: a window of 2 per worker in flight, so every core
    stays busy while this thread writes; each result, once taken (in order), is chunked and handed to the write
    stage. Submitting past the window takes the oldest first; a conversion that fails fails its key alone."""

    def __init__(self, pool: DocumentPool | None, spec: SourceSpec, new_objects: NewObjects, failed: Failed) -> None:
        self._pool, self._spec, self._new_objects, self._failed = pool, spec, new_objects, failed
        self._window = 2 * pool.workers if pool is not None else 0
        self._in_flight: deque[tuple[Fetched, Future[Converted]]] = deque()

    def takes(self, document_key: str) -> bool:
        """Whether the object is converted in the pool (a document, and the run has a pool)."""
        return self._pool is not None and is_converted(document_key)

    def submit(self, fetched: Fetched) -> None:
        assert self._pool is not None, "documents are submitted only to a run with a pool (takes)"
        document_key = fetched.report.document_key or fetched.report.object_key
        self._in_flight.append((fetched, self._pool.submit(document_key, fetched.data, self._spec.document_options)))
        fetched.data = b""  # the worker has its copy; do not hold every document in memory
        while len(self._in_flight) >= self._window:
            self._take_oldest()

    def drain(self, stopping: Callable[[], bool]) -> None:
        """Take every conversion still in flight, in order, unless the run is stopping."""
        while self._in_flight and not stopping():
            self._take_oldest()

    def cancel(self) -> None:
        """Cancel the conversions left in flight (only a stopped run leaves any)."""
        for _, future in self._in_flight:
            future.cancel()

    def _take_oldest(self) -> None:
        fetched, future = self._in_flight.popleft()
        self._new_objects.wait_for(future)  # the new objects prepared meanwhile are written, not held behind it
        try:
            mark = time.perf_counter()
            extracted = result_of(
                fetched.report.document_key or fetched.report.object_key, future, self._spec.document_options
            )
            lap(fetched.report, "extract", mark)
            self._new_objects.deliver(prepare(fetched, extracted, self._spec))
        except Exception as error:  # one bad object fails its own key, never the others
            self._failed(fetched.report.object_key, error, fetched.started)
