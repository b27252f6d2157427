"""One run reads the queues of every SQS source of the code location: which sources a lingering run reads, and the
threads that long-poll them side by side for it (defs/runs/linger.py syncs what they bring).

Four SQS sources on two run slots cannot each keep a run reading its own queue: the third and fourth wait for a
slot, and their uploads for a new run's start. So the SQS sensor's run reads, after its keys, the queues of the
other lingering SQS sources as well (tagged READS_QUEUES_TAG), and their sensors leave their queues to it: one
process, one run slot (one Celery worker), one model and one store client for all of them, and on an embedded
store one writer instead of four taking turns on its lock. An instance that holds each source to one writer (a
tag limit on s3sync/source, pool limits: deploy/dagster.yaml) keeps the rule: there a source's run reads only its
own queue, and the queues of sources whose pools have no limit.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.names import pool_name
from s3sync_dagster.defs.tags import READS_QUEUES_TAG, SOURCE_TAG

# Each read of a queue waits this long at most for an event (SQS's long poll answers at once when one comes).
WAIT_S = 2


def lingers_on_queue(source: SourceConfig) -> bool:
    """Whether the source's SQS sensor asks its runs to read the queue after their keys."""
    return source.auto_sync != "none" and source.sqs_queue_url is not None and source.sqs_linger_seconds > 0


def _limited_pools(instance: dg.DagsterInstance) -> set[str] | None:
    """The pools with a limit of their own on this instance, or None when every source is held to one writer (a
    tag limit per s3sync/source, or a default limit for every pool)."""
    config = instance.get_concurrency_config()
    if config.pool_config.default_pool_limit is not None:
        return None
    limits = config.run_queue_config.tag_concurrency_limits if config.run_queue_config is not None else []
    if any(limit.get("key") == SOURCE_TAG for limit in limits or []):
        return None
    try:
        return set(instance.event_log_storage.get_concurrency_keys())
    except NotImplementedError:  # a storage without pools: none is limited
        return set()


def queues_read_with(instance: dg.DagsterInstance, source: SourceConfig, sources: Sequence[SourceConfig]) -> list[str]:
    """The other sources whose queues a lingering run of `source` reads after its keys: the lingering SQS sources
    of the code location, but those the instance holds to one writer each."""
    peers = [peer for peer in sources if peer.name != source.name and lingers_on_queue(peer)]
    if not peers or not lingers_on_queue(source):
        return []
    limited = _limited_pools(instance)
    if limited is None or pool_name(source.name) in limited:  # a source held to its own writers reads its own queue
        return []
    return [peer.name for peer in peers if pool_name(peer.name) not in limited]


def read_by(run: dg.DagsterRun) -> list[str]:
    """The sources whose queue (or prefix) a lingering run reads: its own, and those its READS_QUEUES_TAG names."""
    own = run.tags.get(SOURCE_TAG)
    others = [name for name in run.tags.get(READS_QUEUES_TAG, "").split(",") if name]
    return ([own] if own else []) + others


def release_messages(log: Any, client: Any, queue_url: str, receipt_handles: Sequence[str]) -> None:
    """Make received messages visible again at once (best effort: otherwise they come back after the visibility
    timeout), for whoever reads the queue next."""
    for start in range(0, len(receipt_handles), 10):
        entries = [
            {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": 0}
            for index, handle in enumerate(receipt_handles[start : start + 10])
        ]
        try:
            client.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
        except Exception as error:
            log.warning(f"could not give {len(entries)} SQS message(s) back; they come back later ({error})")


@dataclass
class Watched:
    """A queue a lingering run reads: its source, its client, and until when the run waits for its next event."""

    source: SourceConfig
    client: Any
    linger_s: int
    quiet_until: float
    # Acquired by the queue's thread before each read, released once the run has taken what it read: a queue's
    # messages wait one read at most, never piling up in the run (invisible) while it syncs.
    turn: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(1))


# What a queue's thread hands the run: the messages of one read, or the error that ended its reading.
Read = tuple[Watched, list[dict[str, Any]] | Exception]


class QueueReaders:
    """A thread per queue long-polling it, WAIT_S at a time, so that an event on any queue is seen at once; the run's
    thread takes what they read (`next`), one read at a time per queue."""

    def __init__(self, watched: Sequence[Watched], receive: Callable[[Watched], list[dict[str, Any]]]) -> None:
        self._reads: queue.SimpleQueue[Read] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._read, args=(entry, receive), name=f"s3sync-sqs-{entry.source.name}", daemon=True
            )
            for entry in watched
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, watched: Watched, receive: Callable[[Watched], list[dict[str, Any]]]) -> None:
        while not self._stop.is_set():
            if not watched.turn.acquire(timeout=0.5):
                continue
            try:
                messages = receive(watched)
            except Exception as error:  # the run's failure, raised in its thread
                self._reads.put((watched, error))
                return
            if messages:
                self._reads.put((watched, messages))  # the run releases the turn once it has taken them
            else:
                watched.turn.release()

    def _take(self, read: Read) -> tuple[Watched, list[dict[str, Any]]]:
        watched, messages = read
        if isinstance(messages, Exception):
            raise messages
        watched.turn.release()
        return watched, messages

    def next(self, timeout_s: float) -> tuple[Watched, list[dict[str, Any]]] | None:
        """The next read with messages, waiting up to timeout_s; an error a queue's thread met is raised here."""
        try:
            return self._take(self._reads.get(timeout=timeout_s))
        except queue.Empty:
            return None

    def _drain(self) -> Iterator[Read]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        while True:
            try:
                yield self._reads.get_nowait()
            except queue.Empty:
                return

    def stop(self) -> Iterator[tuple[Watched, list[dict[str, Any]]]]:
        """Stop reading (each thread ends with its read underway) and yield what was read but not taken yet."""
        for read in self._drain():
            yield self._take(read)

    def give_back(self, log: Any) -> None:
        """Stop reading; what was read but not taken is made visible again (the run is failing or stopped)."""
        for watched, messages in self._drain():
            if not isinstance(messages, Exception):
                handles = [str(message["ReceiptHandle"]) for message in messages]
                release_messages(log, watched.client, str(watched.source.sqs_queue_url), handles)


# Sensor ticks that found events in the same moment, no run reading their queues yet, elect one of them to make the
# run that reads them all; the others give their messages back to it (instead of four runs on two slots). A ticket
# in the instance's key-value store; fresh this long: from a tick's election until the daemon has stored its run
# (then the sensors see the run itself: readers.reading_run).
ELECTION_KEY = "s3sync/queue_reader_ticket"
ELECTION_FRESH_S = 10.0
# Between writing a ticket and reading it back: the last ticket written in a moment names the winner.
ELECTION_SETTLE_S = 0.5


def elected(instance: dg.DagsterInstance, source_name: str) -> str | None:
    """None if this tick makes the run that reads every queue, else the source whose tick does."""
    storage = instance.run_storage

    def ticket() -> tuple[str, str, float] | None:
        stored = storage.get_cursor_values({ELECTION_KEY}).get(ELECTION_KEY)
        if not stored:
            return None
        owner, token, at = stored.split("|")
        return (owner, token, float(at)) if time.time() - float(at) < ELECTION_FRESH_S else None

    current = ticket()
    if current is not None:
        return current[0]
    mine = uuid.uuid4().hex
    storage.set_cursor_values({ELECTION_KEY: f"{source_name}|{mine}|{time.time()}"})
    time.sleep(ELECTION_SETTLE_S)
    current = ticket()
    return None if current is None or current[1] == mine else current[0]
