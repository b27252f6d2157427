"""Discovery and batched materialisation on a Dagster instance: what `s3sync` and the demo drive.

A sync plans ranged runs of neighbouring partitions (commands/runs/ranged.py makes them), reads each run's
outcomes back (commands/runs/reports.py), and plans again what other commands moved under it; the Dagster home
is commands/runs/dagster_home.py's, the partitions' registration commands/runs/partitions.py's."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from botocore.exceptions import BotoCoreError

from s3sync_dagster.commands.errors import RunError, UsageError
from s3sync_dagster.commands.runs.partitions import add_partitions, meta_keys_for, register_keys
from s3sync_dagster.commands.runs.ranged import Executed, execute_runs, outside_range
from s3sync_dagster.commands.runs.reports import (
    failed_report,
    key_outcomes,
    object_key_or_partition,
    reports_of,
)
from s3sync_dagster.config import AppConfig, ConfigError, SourceConfig
from s3sync_dagster.defs.names import partitions_name
from s3sync_dagster.defs.resources import s3_connection
from s3sync_dagster.defs.runs import listed_object_keys
from s3sync_dagster.pipeline.records import to_object_key, to_partition_key
from s3sync_dagster.pipeline.s3 import BucketError, ObjectError, ObjectMissing, check_bucket, head_object


def s3_client(source: SourceConfig) -> Any:
    """A client for the source, after checking its credential variables are set and its bucket answers."""
    # Its fields are plain values (the credentials are variable names, read when the client is made): no Dagster
    # init context is needed, whose ephemeral instance would stay the process's current one after it is gone.
    client = s3_connection(source).get_client()
    try:
        check_bucket(client, source.bucket_name, source.name, source.credentials_in_words())
    except BucketError as error:
        raise ConfigError(str(error)) from None
    except BotoCoreError as error:
        raise ConfigError(f"source '{source.name}': the S3 client failed ({error})") from None
    return client


def check_store(config: AppConfig) -> None:
    """The Chroma store can be opened (Store.check), or a ConfigError naming it and the setting to correct."""
    store = config.chroma.store()
    try:
        store.check()
    except Exception as error:
        raise ConfigError(store.failure(error)) from None


LISTED_STEP = 1000  # one listing page


@dataclass
class DiscoverResult:
    source: str
    listed: int = 0
    new: int = 0
    registered: int = 0
    missing: int = 0  # registered partitions whose objects are no longer in the bucket
    new_keys: list[str] = field(default_factory=list)


def discover(
    config: AppConfig,
    source_name: str,
    instance: dg.DagsterInstance,
    on_listed: Callable[[int], None] | None = None,
) -> DiscoverResult:
    """List the source's prefix and register every new object key as a partition.

    on_listed: told of each object listed (a progress display), every LISTED_STEP objects and at the end.
    """
    source = config.source(source_name)
    result = DiscoverResult(source=source_name)
    listed: list[str] = []
    told = 0
    for object_key in listed_object_keys(source, s3_client(source)):
        listed.append(object_key)
        if on_listed is not None and len(listed) - told >= LISTED_STEP:
            on_listed(len(listed) - told)
            told = len(listed)
    if on_listed is not None and len(listed) > told:
        on_listed(len(listed) - told)
    result.listed = len(listed)
    listed_partitions = [to_partition_key(object_key) for object_key in listed]
    new, existing = add_partitions(instance, source_name, listed_partitions)
    result.new = len(new)
    result.new_keys = [to_object_key(partition_key) for partition_key in new]
    result.registered = len(existing) + len(new)
    result.missing = len(existing - set(listed_partitions))
    return result


def contiguous_batches(ordered: Sequence[str], wanted: Sequence[str], batch_size: int) -> list[list[str]]:
    """Group wanted partition keys into runs of neighbours in partition order, at most batch_size each.

    A run covers a partition *range*, so a batch may only hold keys that sit next to each other.
    """
    position = {partition_key: index for index, partition_key in enumerate(ordered)}
    indices = sorted({position[pk] for pk in wanted})
    batches: list[list[str]] = []
    for index in indices:
        if batches and position[batches[-1][-1]] == index - 1 and len(batches[-1]) < batch_size:
            batches[-1].append(ordered[index])
        else:
            batches.append([ordered[index]])
    return batches


@dataclass
class RunSummary:
    run_id: str
    success: bool
    partition_range: tuple[str, str]
    keys: int
    duration_s: float
    # Why it failed, in one line (its step's error, or the run's own failure: a lost worker, a run marked failed
    # from outside); "" when it succeeded.
    error: str = ""
    # 0 for a first run of its keys; n when its keys are those a run that failed as a whole left, tried again the
    # nth time (the instance's run_retries.max_retries bounds it, as the daemon's retries of the UI's runs).
    retry: int = 0


NOT_TRIED = "not_tried"  # the outcome of a key asked for whose run never came: one before it failed as a whole


@dataclass
class SyncResult:
    """What a sync did with the keys it was asked for. Each has one outcome (its report, or not tried), so
    `counts()` adds up to `asked`."""

    source: str
    asked: int = 0  # distinct keys asked for
    runs: list[RunSummary] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)  # one per key asked that a run was given
    # Keys the runs synced along with those asked for: the metadata files naming a synced document.
    also_synced: list[dict[str, Any]] = field(default_factory=list)
    not_tried: list[str] = field(default_factory=list)
    # Keys reported `removed` without a run of this sync: another command removed their object's partition
    # (and its chunks) after this sync had listed them.
    removed_elsewhere: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [report for report in [*self.reports, *self.also_synced] if report["status"] == "failed"]

    def counts(self) -> dict[str, int]:
        """The keys asked for by outcome: their reports' statuses, and not_tried."""
        counts = Counter(report["status"] for report in self.reports)
        if self.not_tried:
            counts[NOT_TRIED] = len(self.not_tried)
        return dict(counts)


def sync(
    config: AppConfig,
    source_name: str,
    instance: dg.DagsterInstance,
    object_keys: Sequence[str] | None = None,
    batch_size: int | None = None,
    tags: dict[str, str] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> SyncResult:
    """Materialise the given keys (None: every registered key) in ranged runs recorded on the instance.

    on_start: told how many keys the runs will sync, just before the first starts (a progress display).

    Other commands may remove partitions meanwhile (`_sync_rounds`): such a key is reported `removed` when its
    object is gone, else registered again and synced; every key asked still has exactly one outcome.

    A run that fails as a whole raises RunError, which carries the result so far: what the runs before it
    did, and the keys not tried.
    """
    source = config.source(source_name)
    started = time.perf_counter()
    if object_keys is not None:
        for object_key in object_keys:
            if not object_key.startswith(source.path_prefix):
                raise UsageError(
                    f"object key '{object_key}' does not start with source '{source_name}' "
                    f"path_prefix '{source.path_prefix}'"
                )
        if source.auto_sync == "metadata":
            object_keys = meta_keys_for(instance, source, object_keys)
        register_keys(instance, source, object_keys)
    s3 = s3_client(source)  # fail fast, once, on credentials or bucket, before any run starts
    check_store(config)  # and on the store: no run is made (nor its partitions marked failed) to say it
    ordered = instance.get_dynamic_partitions(partitions_name(source_name))
    wanted = ordered if object_keys is None else list(dict.fromkeys(to_partition_key(k) for k in object_keys))
    result = SyncResult(source=source_name, asked=len(wanted))
    if not wanted:
        return result
    if on_start is not None:
        on_start(len(wanted))
    try:
        _sync_rounds(config, source, instance, s3, result, ordered, wanted, batch_size or source.keys_per_run, tags)
    except RunError as error:
        reported = {report["object_key"] for report in result.reports}
        result.not_tried = [
            object_key for object_key in map(object_key_or_partition, wanted) if object_key not in reported
        ]
        result.duration_s = time.perf_counter() - started
        raise RunError(f"{error}{_before_it(result)}", result) from None
    result.duration_s = time.perf_counter() - started
    return result


# How many times a sync plans again the keys that other commands moved under it (below): past that, each is
# failed, named. Each time needs another command to remove the key's partition again, in a window of seconds.
REPLANS = 3


def _sync_rounds(
    config: AppConfig,
    source: SourceConfig,
    instance: dg.DagsterInstance,
    s3: Any,
    result: SyncResult,
    ordered: Sequence[str],
    wanted: Sequence[str],
    batch_size: int,
    tags: dict[str, str] | None,
) -> None:
    """Sync the wanted partition keys in ranged runs, over partitions other commands may change meanwhile.

    `repair`, the sensors' runs, other syncs and `remove-source` remove partitions (a gone object's, once its
    chunks are removed; every key of a removed source) while this sync has them listed, and a ranged run over
    a key that is no longer a partition cannot be made (Dagster refuses the range) or skips the key. So each
    round runs what is planned, and whatever a run could not cover is planned again: a key whose partition is
    gone is reported `removed` if its object is gone too, else registered again and synced in the next round.
    """
    name = partitions_name(source.name)
    pending = list(wanted)
    tries = Retries(instance)
    for _round in range(max(REPLANS, tries.bound) + 1):
        registered = set(ordered)
        present = [partition_key for partition_key in pending if partition_key in registered]
        vanished = [partition_key for partition_key in pending if partition_key not in registered]
        # Registered again, these are planned in the next round, over the partitions as they are then.
        again = _settle_vanished(instance, source, s3, result, vanished) if vanished else []
        if present:
            runs = execute_runs(
                config, source.name, instance, contiguous_batches(ordered, present, batch_size), tags or {}
            )
            with contextlib.closing(runs):  # a RunError below: runs not started yet are not started
                again += _collect(result, instance, source, runs, tries)
        pending = list(dict.fromkeys(again))
        if not pending:
            return
        ordered = instance.get_dynamic_partitions(name)
    for partition_key in pending:
        object_key = object_key_or_partition(partition_key)
        result.reports.append(
            failed_report(
                object_key,
                f"object '{object_key}' was not synced: other commands removed or registered its partition again "
                f"each of the {REPLANS + 1} times this sync planned a run for it; sync it again",
            )
        )


def _settle_vanished(
    instance: dg.DagsterInstance, source: SourceConfig, s3: Any, result: SyncResult, partition_keys: Sequence[str]
) -> list[str]:
    """Keys whose partition another command removed after this sync listed them: each is reported `removed`
    if its object is gone too (that command removed its chunks with it), else registered again, and returned
    to be synced."""
    back: list[str] = []
    for partition_key in partition_keys:
        object_key = object_key_or_partition(partition_key)
        try:
            head_object(s3, source.bucket_name, object_key)
        except ObjectMissing:
            result.removed_elsewhere.append(object_key)
            result.reports.append(
                {
                    "object_key": object_key,
                    "status": "removed",
                    "message": (
                        f"object '{object_key}' is no longer in the bucket, and another command (a repair, a "
                        "sensor's or another sync's run, or remove-source) removed its partition and its chunks "
                        "while this sync ran: nothing of it was left to sync"
                    ),
                }
            )
        except ObjectError as error:
            unknown = f"another command removed the partition of object '{object_key}' while this sync ran"
            result.reports.append(
                failed_report(object_key, f"{unknown}, and the object could not be looked up: {error}")
            )
        else:
            back.append(partition_key)
    add_partitions(instance, source.name, back)
    return back


class Retries:
    """How often the keys of runs that failed as a whole (a lost worker, a dropped link, a store gone) were tried
    again: up to the instance's run_retries.max_retries times when its run retries are on (dagster.yaml), the
    bound the daemon keeps for the UI's and the sensors' runs; the keys a failed run reached keep their outcome."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.bound = instance.run_retries_max_retries if instance.run_retries_enabled else 0
        self._tries: Counter[str] = Counter()

    def of(self, batch: Sequence[str]) -> int:
        return max((self._tries[partition_key] for partition_key in batch), default=0)

    def again(self, partition_keys: Sequence[str]) -> bool:
        """Whether these keys, left by a run that failed as a whole, are tried again (counted if so)."""
        if not partition_keys or self.of(partition_keys) >= self.bound:
            return False
        self._tries.update(partition_keys)
        return True


def _before_it(result: SyncResult) -> str:
    """For the line of a run that failed as a whole: what the runs before it did. Only keys that were
    synced count as synced; failed ones are counted apart (and listed with their reasons by the caller)."""
    if not result.reports and not result.also_synced:
        return ""  # nothing was tried: the run's failure is all there is to say
    failed = sum(1 for report in result.reports if report["status"] == "failed")
    text = f"; of the {result.asked} key(s) asked, the runs before it synced {len(result.reports) - failed}"
    if failed:
        text += f" and failed {failed} (each listed with its reason)"
    also_failed = sum(1 for report in result.also_synced if report["status"] == "failed")
    if also_failed:
        text += f", and failed {also_failed} metadata file(s) synced with them"
    return text + f"; {len(result.not_tried)} were not tried"


def _collect(
    result: SyncResult,
    instance: dg.DagsterInstance,
    source: SourceConfig,
    runs: Generator[tuple[list[str], Executed, float]],
    tries: Retries,
) -> list[str]:
    """Each run's keys with their outcomes into the result. Returns the partition keys to plan again: those of
    batches no run was made for, those a run could not reach because another command removed their partition (or
    registered it again, at the end of the order) once the run's range was set, and those a run that failed as a
    whole did not reach, while `tries` allows."""
    again: list[str] = []
    for batch, execution, duration_s in runs:
        if not execution.launched:
            again.extend(batch)
            continue
        object_keys = [object_key_or_partition(partition_key) for partition_key in batch]
        result.runs.append(
            RunSummary(
                run_id=execution.run_id,
                success=execution.success,
                partition_range=(object_keys[0], object_keys[-1]),
                keys=len(batch),
                duration_s=duration_s,
                error=execution.error,
                retry=tries.of(batch),
            )
        )
        recorded = reports_of(instance, execution.run_id)
        reached = {report["object_key"] for report in recorded}
        unreached = [pk for pk, object_key in zip(batch, object_keys, strict=True) if object_key not in reached]
        moved = set(outside_range(instance, source.name, batch, unreached)) if unreached else set()
        if not execution.success and not recorded and moved:
            # Its range broke between the run's creation and its step (Dagster failed the step): tried again.
            again.extend(batch)
            continue
        lost = [pk for pk in unreached if pk not in moved] if not execution.success else []
        if tries.again(lost):
            lost_set = set(lost)  # the run failed before them: tried again, as the daemon retries a run
        elif not recorded and not execution.success:
            raise RunError(f"run {execution.run_id} failed: {execution.error}")
        else:
            lost_set = set()
        again.extend(partition_key for partition_key in batch if partition_key in moved or partition_key in lost_set)
        own, also_synced = key_outcomes(
            instance,
            source,
            execution.run_id,
            [
                object_key
                for pk, object_key in zip(batch, object_keys, strict=True)
                if pk not in moved and pk not in lost_set
            ],
            None if execution.success else execution.error,
            recorded,
        )
        result.reports.extend(own)
        result.also_synced.extend(also_synced)
    return again
