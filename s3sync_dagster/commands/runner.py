"""Discovery and batched materialisation on a Dagster instance: what `s3sync` and the demo drive."""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from botocore.exceptions import BotoCoreError
from sqlalchemy.exc import IntegrityError

from s3sync_dagster.commands.errors import RunError, UsageError
from s3sync_dagster.config import AppConfig, ConfigError, SourceConfig, config_file, state_dir
from s3sync_dagster.definitions import build_definitions, documents_job
from s3sync_dagster.defs.links import InstanceMetaLinks
from s3sync_dagster.defs.monitor import in_process_tags
from s3sync_dagster.defs.names import documents_job_name, partitions_name, register_partitions
from s3sync_dagster.defs.resources import s3_connection
from s3sync_dagster.defs.run_config import QUIET_LOGGERS
from s3sync_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG, SOURCE_TAG
from s3sync_dagster.pipeline import events, keys, objects

# The CLI prints its own summary, a line per failed key or failed run; the run's full event log,
# warnings and tracebacks included, stays on the instance for the UI (`dagster` prints failures at
# ERROR level with their whole traceback: hundreds of lines for one unreachable store).
QUIET_RUN_CONFIG = {"loggers": QUIET_LOGGERS}


def ensure_dagster_home(explicit_config: str | None = None) -> Path:
    """`$DAGSTER_HOME`, else `.s3sync/dagster` beside the config file (a component's: in the project's root), so
    runs land where the UI looks."""
    home = os.environ.get("DAGSTER_HOME")
    config = Path(explicit_config) if explicit_config else config_file()
    path = Path(home) if home else state_dir(config) / ".s3sync" / "dagster"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def home_in_words(home: Path, from_variable: bool, component: bool) -> str:
    """Which Dagster home the command read, why, and how the UI shares it: its keys, runs and partitions are that
    home's, and `dg dev` (or `dagster dev`) without DAGSTER_HOME uses a temporary one of its own."""
    if from_variable:
        return f"Dagster home: {home} (DAGSTER_HOME)"
    where = "in the shell, or in the Dagster project's .env (dg and s3sync both read it)"
    where = where if component else "in the shell where both run"
    return (
        f"Dagster home: {home} (DAGSTER_HOME is not set: s3sync's default, .s3sync/dagster beside the "
        f"{'Dagster project' if component else 'config file'}). `dg dev` and `dagster dev` without DAGSTER_HOME "
        "use a temporary home of their own, removed when they stop, so the UI and s3sync see different keys, runs "
        f"and partitions: to share this one, set DAGSTER_HOME={home} {where}"
    )


@contextlib.contextmanager
def home_lock(home: str | os.PathLike[str]) -> Iterator[None]:
    """One s3sync process at a time sets up a Dagster home's databases or registers partitions in it.

    Neither is atomic across processes on SQLite: two `s3sync sync` started together on a fresh home
    both create and stamp its databases (IntegrityError on alembic_version, "table secondary_indexes
    already exists"), and both read the registered keys, then insert the same new ones
    (IntegrityError on the partitions' unique index).
    """
    Path(home).mkdir(parents=True, exist_ok=True)
    with open(Path(home) / ".s3sync-setup.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_instance(explicit_config: str | None = None) -> dg.DagsterInstance:
    """The instance in `ensure_dagster_home()`, its databases created by one process at a time."""
    home = ensure_dagster_home(explicit_config)
    with home_lock(home):
        instance = dg.DagsterInstance.get()
        warn_of_missing_settings(instance, home)
        return instance


# The instance settings the sources rely on (this repository's dagster.yaml; docs/install.md, step 4), each
# with the snippet that gives it.
RELIED_ON = {
    "run_retries": "run_retries: {enabled: true, max_retries: 2, retry_on_asset_or_op_failure: false}",
    "run_monitoring": "run_monitoring: {enabled: true, start_timeout_seconds: 180, poll_interval_seconds: 30}",
    "run_queue.dequeue_interval_seconds": "run_queue: {dequeue_use_threads: true, dequeue_interval_seconds: 1}",
}
WARNED_FILE = ".s3sync-settings-warned"


def missing_settings(instance: dg.DagsterInstance) -> list[str]:
    """The settings of RELIED_ON the instance lacks: a run whose process died would not be retried, one whose
    worker never came up would stay STARTING, a queued run would wait up to 5 s to start."""
    missing = []
    if not instance.run_retries_enabled:
        missing.append("run_retries")
    if not instance.run_monitoring_enabled:
        missing.append("run_monitoring")
    dequeue = getattr(instance.run_coordinator, "dequeue_interval_seconds", None)
    if dequeue is not None and dequeue > 1:
        missing.append("run_queue.dequeue_interval_seconds")
    return missing


def warn_of_missing_settings(instance: dg.DagsterInstance, home: Path) -> None:
    """Once per home and set of missing settings (a file in the home remembers it): which, and what to copy."""
    missing = missing_settings(instance)
    marker = home / WARNED_FILE
    said = ",".join(missing)
    if not missing or (marker.is_file() and marker.read_text(encoding="utf-8") == said):
        return
    lines = [f"s3sync: warning: the Dagster instance in {home} lacks {', '.join(missing)}; add to {home}/dagster.yaml:"]
    lines += [f"  {RELIED_ON[name]}" for name in missing]
    lines.append("  (docs/install.md, step 4; this warning is shown once)")
    print("\n".join(lines), file=sys.stderr)
    with contextlib.suppress(OSError):
        marker.write_text(said, encoding="utf-8")


def add_partitions(
    instance: dg.DagsterInstance, source_name: str, partition_keys: Sequence[str]
) -> tuple[list[str], set[str]]:
    """Register the keys not registered yet: returns those this call added, and those there before."""
    with home_lock(instance.root_directory):
        for attempt in range(2):
            existing = set(instance.get_dynamic_partitions(partitions_name(source_name)))
            new = [partition_key for partition_key in dict.fromkeys(partition_keys) if partition_key not in existing]
            try:
                register_partitions(instance, source_name, new)
                break
            except IntegrityError:
                # A writer outside this lock (the daemon's sensors) registered some of them meanwhile.
                if attempt:
                    raise
    return new, existing


def s3_client(source: SourceConfig) -> Any:
    """A client for the source, after checking its credential variables are set and its bucket answers."""
    # Its fields are plain values (the credentials are variable names, read when the client is made): no Dagster
    # init context is needed, whose ephemeral instance would stay the process's current one after it is gone.
    client = s3_connection(source).get_client()
    try:
        objects.check_bucket(client, source.bucket_name, source.name, source.credentials_in_words())
    except objects.BucketError as error:
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
    for info in objects.list_objects(
        s3_client(source), source.bucket_name, source.path_prefix, source.include, source.exclude
    ):
        # In metadata mode only .meta.json files are partitions: the documents they name are not.
        if source.auto_sync != "metadata" or events.is_meta_key(info.object_key):
            listed.append(info.object_key)
        if on_listed is not None and len(listed) - told >= LISTED_STEP:
            on_listed(len(listed) - told)
            told = len(listed)
    if on_listed is not None and len(listed) > told:
        on_listed(len(listed) - told)
    result.listed = len(listed)
    listed_partitions = [keys.to_partition_key(object_key) for object_key in listed]
    new, existing = add_partitions(instance, source_name, listed_partitions)
    result.new = len(new)
    result.new_keys = [keys.to_object_key(partition_key) for partition_key in new]
    result.registered = len(existing) + len(new)
    result.missing = len(existing - set(listed_partitions))
    return result


def unnamed_document(source: SourceConfig, document: str) -> str:
    """Why a document of a metadata-mode source that no synced metadata file names cannot be synced by itself."""
    return (
        f"source '{source.name}' syncs in metadata mode: object '{document}' is indexed only through a "
        f"{events.META_SUFFIX} file naming it, and no metadata file synced so far names it"
    )


def meta_keys_for(instance: dg.DagsterInstance, source: SourceConfig, object_keys: Sequence[str]) -> list[str]:
    """Metadata mode: a document is synced through the .meta.json files naming it, which take its place."""
    documents = [object_key for object_key in object_keys if not events.is_meta_key(object_key)]
    named = InstanceMetaLinks(instance, source.name).naming(documents)
    for document in documents:
        if document not in named:
            raise UsageError(f"{unnamed_document(source, document)} (sync the metadata file)")
    return list(
        dict.fromkeys(
            meta_key
            for object_key in object_keys
            for meta_key in ([object_key] if events.is_meta_key(object_key) else named[object_key])
        )
    )


def register_keys(instance: dg.DagsterInstance, source: SourceConfig, object_keys: Sequence[str]) -> None:
    add_partitions(instance, source.name, [keys.to_partition_key(k) for k in object_keys])


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


@dataclass(frozen=True)
class Executed:
    """What a sync reads back from a finished run, wherever it was orchestrated (it crosses processes)."""

    run_id: str
    success: bool
    error: str  # the first line of what failed the run (never empty then); "" when it succeeded
    # False: no run was made, because the batch was no longer a range of partitions when its turn came
    # (another command removed one of them): its keys are planned again (`sync`).
    launched: bool = True

    @classmethod
    def of(cls, execution: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> Executed:
        return cls(
            execution.run_id, execution.success, "" if execution.success else failure_reason(execution.all_events)
        )

    @classmethod
    def not_launched(cls) -> Executed:
        return cls("", False, "its partition range changed before its run started", launched=False)


@dataclass
class RunSummary:
    run_id: str
    success: bool
    partition_range: tuple[str, str]
    keys: int
    duration_s: float


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


def _metadata_value(value: Any) -> Any:
    return getattr(value, "value", value)


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
    wanted = ordered if object_keys is None else list(dict.fromkeys(keys.to_partition_key(k) for k in object_keys))
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
            object_key for object_key in map(_object_key_or_partition, wanted) if object_key not in reported
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
    for attempt in range(REPLANS + 1):
        registered = set(ordered)
        present = [partition_key for partition_key in pending if partition_key in registered]
        vanished = [partition_key for partition_key in pending if partition_key not in registered]
        # Registered again, these are planned in the next round, over the partitions as they are then.
        again = _settle_vanished(instance, source, s3, result, vanished) if vanished else []
        if present:
            runs = _execute_runs(
                config, source.name, instance, contiguous_batches(ordered, present, batch_size), tags or {}
            )
            with contextlib.closing(runs):  # a RunError below: runs not started yet are not started
                again += _collect(result, instance, source, runs)
        pending = list(dict.fromkeys(again))
        if not pending:
            return
        if attempt < REPLANS:
            ordered = instance.get_dynamic_partitions(name)
    for partition_key in pending:
        object_key = _object_key_or_partition(partition_key)
        result.reports.append(
            _failed(
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
        object_key = _object_key_or_partition(partition_key)
        try:
            objects.head_object(s3, source.bucket_name, object_key)
        except objects.ObjectMissing:
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
        except objects.ObjectError as error:
            unknown = f"another command removed the partition of object '{object_key}' while this sync ran"
            result.reports.append(_failed(object_key, f"{unknown}, and the object could not be looked up: {error}"))
        else:
            back.append(partition_key)
    add_partitions(instance, source.name, back)
    return back


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
) -> list[str]:
    """Each run's keys with their outcomes into the result. Returns the partition keys to plan again: those of
    batches no run was made for, and those a run could not reach because another command removed their
    partition (or registered it again, at the end of the order) once the run's range was set."""
    again: list[str] = []
    for batch, execution, duration_s in runs:
        if not execution.launched:
            again.extend(batch)
            continue
        object_keys = [_object_key_or_partition(partition_key) for partition_key in batch]
        result.runs.append(
            RunSummary(
                run_id=execution.run_id,
                success=execution.success,
                partition_range=(object_keys[0], object_keys[-1]),
                keys=len(batch),
                duration_s=duration_s,
            )
        )
        recorded = reports_of(instance, execution.run_id)
        reached = {report["object_key"] for report in recorded}
        unreached = [pk for pk, object_key in zip(batch, object_keys, strict=True) if object_key not in reached]
        moved = set(_outside_range(instance, source.name, batch, unreached)) if unreached else set()
        if not execution.success and not recorded:
            if moved:
                # Its range broke between the run's creation and its step (Dagster failed the step): tried again.
                again.extend(batch)
                continue
            raise RunError(f"run {execution.run_id} failed: {execution.error}")
        again.extend(partition_key for partition_key in batch if partition_key in moved)
        own, also_synced = key_outcomes(
            instance,
            source,
            execution.run_id,
            [object_key for pk, object_key in zip(batch, object_keys, strict=True) if pk not in moved],
            None if execution.success else execution.error,
            recorded,
        )
        result.reports.extend(own)
        result.also_synced.extend(also_synced)
    return again


def _outside_range(
    instance: dg.DagsterInstance, source_name: str, batch: Sequence[str], partition_keys: Sequence[str]
) -> list[str]:
    """Of these keys of a batch, those no longer between the batch's first and last partitions."""
    registered = instance.get_dynamic_partitions(partitions_name(source_name))
    try:
        covered = set(registered[registered.index(batch[0]) : registered.index(batch[-1]) + 1])
    except ValueError:  # an end is gone, and the range with it
        covered = set()
    return [partition_key for partition_key in partition_keys if partition_key not in covered]


def _ends_registered(instance: dg.DagsterInstance, source_name: str, batch: Sequence[str]) -> bool:
    """Whether the first and last keys of a batch are still partitions: Dagster refuses to make a run over a
    range whose ends are not (a key gone from inside the range is skipped, and planned again by `_collect`).
    Read right before the run is made, since another command may have removed one since the batch was planned."""
    name = partitions_name(source_name)
    return instance.has_dynamic_partition(name, batch[0]) and instance.has_dynamic_partition(name, batch[-1])


def key_outcomes(
    instance: dg.DagsterInstance,
    source: SourceConfig,
    run_id: str,
    object_keys: Sequence[str],
    failure: str | None,
    recorded: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each key a finished run was given with its outcome there (in order), and the reports of the keys it
    synced along with them.

    failure: why the run failed (None: it succeeded). A key the run recorded nothing for gets a report that
    says why: a document of a metadata-mode source is ignored (the engine logs that report, which belongs
    to no partition); any other key was not reached, because the run failed (or died) first.
    """
    recorded = reports_of(instance, run_id) if recorded is None else recorded
    by_key = {report["object_key"]: report for report in recorded}
    unreported = [object_key for object_key in object_keys if object_key not in by_key]
    documents = [k for k in unreported if source.auto_sync == "metadata" and not events.is_meta_key(k)]
    logged = _logged_about(instance, run_id, documents) if documents else {}
    for object_key in unreported:
        if object_key in logged or (object_key in documents and failure is None):
            message = logged.get(object_key) or (
                f"source '{source.name}' syncs in metadata mode: object '{object_key}' is indexed only through "
                f"the {events.META_SUFFIX} files naming it, never by itself; run {run_id} recorded nothing for it"
            )
            by_key[object_key] = {"object_key": object_key, "status": "ignored", "message": message}
        elif failure is not None:
            by_key[object_key] = _failed(
                object_key, f"run {run_id} failed before it reported object '{object_key}': {failure}"
            )
        else:
            by_key[object_key] = _failed(
                object_key,
                f"run {run_id} succeeded but recorded no outcome for object '{object_key}' "
                "(no materialisation or failure on its partition)",
            )
    asked = set(object_keys)
    return [by_key[k] for k in object_keys], [report for report in recorded if report["object_key"] not in asked]


def _failed(object_key: str, message: str) -> dict[str, Any]:
    return {"object_key": object_key, "status": "failed", "message": message}


def _logged_about(instance: dg.DagsterInstance, run_id: str, documents: Sequence[str]) -> dict[str, str]:
    """What a run's log says of documents it recorded no event for: the engine's "ignored" report of a
    document in metadata mode is a log line that starts with the quoted key (pipeline/sync.py)."""
    wanted = {f"'{document}' ": document for document in documents}
    said: dict[str, str] = {}
    for entry in instance.all_logs(run_id):
        message = entry.user_message or ""
        if entry.dagster_event is None and message.startswith("'"):
            document = next((key for prefix, key in wanted.items() if message.startswith(prefix)), None)
            if document is not None:
                said[document] = message
    return said


def _execute_runs(
    config: AppConfig,
    source_name: str,
    instance: dg.DagsterInstance,
    batches: list[list[str]],
    tags: dict[str, str],
) -> Generator[tuple[list[str], Executed, float]]:
    """One run per batch, yielded in batch order with its duration: in this process, or through Celery.

    In process, one run after another. With `executor.celery`, `concurrent_runs` runs at a time, each
    orchestrated from a process of a pool while its step executes on a worker (`_orchestrate`).
    A caller that stops early (a run failed as a whole) leaves the batches not yet started untried.
    """

    def run_tags(batch: list[str]) -> dict[str, str]:
        return {RANGE_START_TAG: batch[0], RANGE_END_TAG: batch[-1], SOURCE_TAG: source_name, **tags}

    celery = config.executor.celery
    if celery is None:
        # The source's documents job: the asset without its checks (defs/source.py), as on Celery.
        job = build_definitions(config).resolve_job_def(documents_job_name(source_name))
        for batch in batches:
            run_started = time.perf_counter()
            if not _ends_registered(instance, source_name, batch):
                yield batch, Executed.not_launched(), 0.0
                continue
            run_id = str(uuid.uuid4())  # Dagster's own form of run id
            try:
                execution = job.execute_in_process(
                    instance=instance,
                    tags={**run_tags(batch), **in_process_tags()},
                    run_config=QUIET_RUN_CONFIG,
                    raise_on_error=False,
                    run_id=run_id,
                )
            except dg.DagsterInvalidInvocationError:
                if not _range_broke(instance, source_name, batch, [run_id]):
                    raise
                yield batch, Executed.not_launched(), 0.0
                continue
            yield batch, Executed.of(execution), time.perf_counter() - run_started
        return
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no lock or thread of this one
    with ProcessPoolExecutor(max_workers=celery.concurrent_runs, mp_context=spawn) as pool:
        futures = [
            pool.submit(_orchestrate, instance.get_ref(), source_name, batch, run_tags(batch)) for batch in batches
        ]
        try:
            for batch, future in zip(batches, futures, strict=True):
                try:
                    yield batch, *future.result()
                except BrokenProcessPool as error:
                    raise RunError(
                        f"the process orchestrating the run of {batch[0]}..{batch[-1]} died: {error}"
                    ) from None
        finally:
            for future in futures:
                future.cancel()


def _orchestrate(instance_ref: Any, source_name: str, batch: list[str], tags: dict[str, str]) -> tuple[Executed, float]:
    """One run of `definitions.documents_job` (rebuilt here, and by the workers, from the same config file),
    its step sent to Celery, in a process of the sync's pool.

    Not a thread: Dagster sets up each run's logging with `logging.config.dictConfig`, which closes every
    handler under logging's global lock; runs set up in threads of one process while others write events
    deadlock (seen with the PostgreSQL instance: a sync hung with four runs in flight).
    """
    run_started = time.perf_counter()
    recon_job = dg.build_reconstructable_job(documents_job.__module__, documents_job.__name__, (source_name,))
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        if not _ends_registered(instance, source_name, batch):
            return Executed.not_launched(), 0.0
        launched = datetime.now(UTC)
        try:
            execution = dg.execute_job(
                recon_job, instance=instance, tags=tags, run_config=QUIET_RUN_CONFIG, raise_on_error=False
            )
        except dg.DagsterInvalidInvocationError:
            # execute_job takes no run id: the run it stored is the one of these tags (the range, the source,
            # the command's) made since, never started.
            made = instance.get_run_records(
                filters=dg.RunsFilter(tags=tags, statuses=[dg.DagsterRunStatus.NOT_STARTED], created_after=launched)
            )
            if not _range_broke(instance, source_name, batch, [record.dagster_run.run_id for record in made]):
                raise
            return Executed.not_launched(), 0.0
        return Executed.of(execution), time.perf_counter() - run_started


def _range_broke(instance: dg.DagsterInstance, source_name: str, batch: list[str], run_ids: Sequence[str]) -> bool:
    """Dagster refused to make a batch's run: whether another command removed an end of its range since
    `_ends_registered` looked. Dagster stores the run before it checks the range: that run, never started, is
    deleted, so nothing counts it as in flight. False: both ends are there, the error is another one."""
    if _ends_registered(instance, source_name, batch):
        return False
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status == dg.DagsterRunStatus.NOT_STARTED:
            instance.delete_run(run_id)
    return True


def _object_key_or_partition(partition_key: str) -> str:
    try:
        return keys.to_object_key(partition_key)
    except ValueError:
        return partition_key


def _first_line(text: str | None) -> str:
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")


def failure_reason(dagster_events: Iterable[dg.DagsterEvent | None]) -> str:
    """The first line of what failed a run, never empty: a step's dg.Failure description, else the user
    code's error, else the run's own failure message (a run marked failed from outside says why there)."""
    run_failure = ""
    for event in dagster_events:
        if event is None:
            continue
        if event.is_step_failure:
            failure = event.step_failure_data
            if failure.user_failure_data is not None and _first_line(failure.user_failure_data.description):
                return _first_line(failure.user_failure_data.description)
            error = failure.error
            # Dagster wraps the user code's exception (DagsterExecutionStepExecutionError): say the user's.
            while error is not None and error.cause is not None and (error.cls_name or "").startswith("Dagster"):
                error = error.cause
            if error is not None:
                return _first_line(error.message) or f"step {event.step_key} raised {error.cls_name}"
        elif event.is_run_failure and not run_failure:
            run_failure = _first_line(event.message)
    return run_failure or "the run failed and recorded no reason (its process may have died): see its log"


def run_failure(instance: dg.DagsterInstance, run_id: str) -> str:
    """Why a finished run failed, from its events on the instance (`failure_reason`)."""
    records = instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE})
    return failure_reason(record.dagster_event for record in records)


def reports_of(instance: dg.DagsterInstance, run_id: str) -> list[dict[str, Any]]:
    """Per-key reports as the run recorded them on the instance (what the UI shows)."""
    reports = []
    records = instance.all_logs(
        run_id, of_type={dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_OBSERVATION}
    )
    for entry in records:
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.step_materialization_data.materialization
            report = {name: _metadata_value(value) for name, value in materialization.metadata.items()}
            report.pop("preview", None)
            reports.append(report)
        else:
            observation = event.asset_observation_data.asset_observation
            object_key = _object_key_or_partition(observation.partition or "")
            message = str(_metadata_value(observation.metadata.get("error")) or "").strip()
            reports.append(_failed(object_key, _naming(object_key, message, run_id)))
    return reports


def _naming(object_key: str, message: str, run_id: str) -> str:
    """A failed key's message names the object, whatever raised it (the engine's own errors already do)."""
    if not message:
        return f"object '{object_key}' failed in run {run_id} with no message: its log on the instance has the error"
    return message if f"'{object_key}'" in message else f"object '{object_key}': {message}"
