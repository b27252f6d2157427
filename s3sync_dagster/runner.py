"""Discovery and batched materialisation on a Dagster instance: what `s3sync` and the demo drive."""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import time
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import IntegrityError

from s3sync_dagster.config import AppConfig, ConfigError, SourceConfig, config_path
from s3sync_dagster.definitions import build_definitions, documents_job
from s3sync_dagster.defs.links import InstanceMetaLinks
from s3sync_dagster.defs.names import documents_asset_key, partitions_name
from s3sync_dagster.defs.run_config import QUIET_LOGGERS
from s3sync_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG, SOURCE_TAG
from s3sync_dagster.pipeline import events, keys, objects
from s3sync_dagster.resources import s3_connection

# The CLI prints its own summary, a line per failed key or failed run; the run's full event log,
# warnings and tracebacks included, stays on the instance for the UI (`dagster` prints failures at
# ERROR level with their whole traceback: hundreds of lines for one unreachable store).
QUIET_RUN_CONFIG = {"loggers": QUIET_LOGGERS}


class UsageError(ValueError):
    """The request itself is wrong (a key outside the source's prefix, ...): nothing was run."""


class RunError(RuntimeError):
    """A run failed as a whole (the store cannot be reached, ...), not key by key: the next runs are not tried."""


def ensure_dagster_home(explicit_config: str | None = None) -> Path:
    """`$DAGSTER_HOME`, else `.s3sync/dagster` beside the config file, so runs land where the UI looks."""
    home = os.environ.get("DAGSTER_HOME")
    path = Path(home) if home else config_path(explicit_config).resolve().parent / ".s3sync" / "dagster"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(path)
    return path


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
        return dg.DagsterInstance.get()


def add_partitions(
    instance: dg.DagsterInstance, partitions_name: str, partition_keys: Sequence[str]
) -> tuple[list[str], set[str]]:
    """Register the keys not registered yet: returns those this call added, and those there before."""
    with home_lock(instance.root_directory):
        for attempt in range(2):
            existing = set(instance.get_dynamic_partitions(partitions_name))
            new = [partition_key for partition_key in dict.fromkeys(partition_keys) if partition_key not in existing]
            try:
                if new:
                    instance.add_dynamic_partitions(partitions_name, new)
                break
            except IntegrityError:
                # A writer outside this lock (the daemon's sensors) registered some of them meanwhile.
                if attempt:
                    raise
    return new, existing


def s3_client(source: SourceConfig) -> Any:
    """A client for the source, after checking its credential variables are set and its bucket answers."""
    for field_name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        ref = getattr(source, field_name)
        if ref is not None:
            ref.resolve(f"source '{source.name}' {field_name}")
    # Initialised as a run does, which resolves the dg.EnvVar fields (outside a run they are only names).
    client = s3_connection(source).process_config_and_initialize().get_client()
    try:
        client.head_bucket(Bucket=source.bucket_name)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "error")
        raise ConfigError(
            f"source '{source.name}': bucket '{source.bucket_name}' cannot be used ({code}: "
            f"{'it does not exist' if code in ('404', 'NoSuchBucket') else 'check the credentials and region'})"
        ) from None
    except objects.EndpointError as error:
        raise ConfigError(f"source '{source.name}': {objects.endpoint_failure(client, error)}") from None
    except BotoCoreError as error:
        raise ConfigError(f"source '{source.name}': S3 endpoint cannot be reached ({error})") from None
    return client


@dataclass
class DiscoverResult:
    source: str
    listed: int = 0
    new: int = 0
    registered: int = 0
    missing: int = 0  # registered partitions whose objects are no longer in the bucket
    new_keys: list[str] = field(default_factory=list)


def discover(config: AppConfig, source_name: str, instance: dg.DagsterInstance) -> DiscoverResult:
    """List the source's prefix and register every new object key as a partition, in one request."""
    source = config.source(source_name)
    result = DiscoverResult(source=source_name)
    listed = [
        info.object_key
        for info in objects.list_objects(
            s3_client(source), source.bucket_name, source.path_prefix, source.include, source.exclude
        )
        # In metadata mode only .meta.json files are partitions: the documents they name are not.
        if source.auto_sync != "metadata" or events.is_meta_key(info.object_key)
    ]
    result.listed = len(listed)
    name = partitions_name(source_name)
    listed_partitions = [keys.to_partition_key(object_key) for object_key in listed]
    new, existing = add_partitions(instance, name, listed_partitions)
    result.new = len(new)
    result.new_keys = [keys.to_object_key(partition_key) for partition_key in new]
    result.registered = len(existing) + len(new)
    result.missing = len(existing - set(listed_partitions))
    return result


def meta_keys_for(instance: dg.DagsterInstance, source: SourceConfig, object_keys: Sequence[str]) -> list[str]:
    """Metadata mode: a document is synced through the .meta.json files naming it, which take its place."""
    documents = [object_key for object_key in object_keys if not events.is_meta_key(object_key)]
    named = InstanceMetaLinks(instance, source.name).naming(documents)
    for document in documents:
        if document not in named:
            raise UsageError(
                f"source '{source.name}' syncs in metadata mode: object '{document}' is indexed only through a "
                f"{events.META_SUFFIX} file naming it, and none does (sync the metadata file)"
            )
    return list(
        dict.fromkeys(
            meta_key
            for object_key in object_keys
            for meta_key in ([object_key] if events.is_meta_key(object_key) else named[object_key])
        )
    )


def register_keys(instance: dg.DagsterInstance, source: SourceConfig, object_keys: Sequence[str]) -> None:
    add_partitions(instance, partitions_name(source.name), [keys.to_partition_key(k) for k in object_keys])


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
    error: str  # the first line of what failed the run; "" when it succeeded

    @classmethod
    def of(cls, execution: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> Executed:
        return cls(execution.run_id, execution.success, "" if execution.success else _run_error(execution))


@dataclass
class RunSummary:
    run_id: str
    success: bool
    partition_range: tuple[str, str]
    keys: int
    duration_s: float


@dataclass
class SyncResult:
    source: str
    runs: list[RunSummary] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [report for report in self.reports if report["status"] == "failed"]


def _metadata_value(value: Any) -> Any:
    return getattr(value, "value", value)


def sync(
    config: AppConfig,
    source_name: str,
    instance: dg.DagsterInstance,
    object_keys: Sequence[str] | None = None,
    batch_size: int | None = None,
    tags: dict[str, str] | None = None,
) -> SyncResult:
    """Materialise the given keys (None: every registered key) in ranged runs recorded on the instance."""
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
    s3_client(source)  # fail fast, once, on credentials or bucket, before any run starts
    ordered = instance.get_dynamic_partitions(partitions_name(source_name))
    wanted = ordered if object_keys is None else [keys.to_partition_key(k) for k in object_keys]
    result = SyncResult(source=source_name)
    if not wanted:
        return result
    batches = contiguous_batches(ordered, wanted, batch_size or source.keys_per_run)
    runs = _execute_runs(config, source_name, instance, batches, tags or {})
    with contextlib.closing(runs):  # a RunError below: runs not started yet are not started
        _collect(result, instance, runs)
    result.duration_s = time.perf_counter() - started
    return result


def _collect(
    result: SyncResult, instance: dg.DagsterInstance, runs: Generator[tuple[list[str], Executed, float]]
) -> None:
    for batch, execution, duration_s in runs:
        result.runs.append(
            RunSummary(
                run_id=execution.run_id,
                success=execution.success,
                partition_range=(keys.to_object_key(batch[0]), keys.to_object_key(batch[-1])),
                keys=len(batch),
                duration_s=duration_s,
            )
        )
        reports = reports_of(instance, execution.run_id)
        if not execution.success and not reports:
            done = len(result.reports)
            raise RunError(
                f"run {execution.run_id} failed: {execution.error}"
                + (f" ({done} key(s) were synced by the runs before it; the others were not tried)" if done else "")
            )
        reported = {report["object_key"] for report in reports}
        for partition_key in batch:
            object_key = keys.to_object_key(partition_key)
            if object_key not in reported:  # the run died before it could report this key
                reports.append(
                    {
                        "object_key": object_key,
                        "status": "failed",
                        "message": f"run {execution.run_id} failed: {execution.error}",
                    }
                )
        result.reports.extend(reports)


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
    asset_key = documents_asset_key(source_name)

    def run_tags(batch: list[str]) -> dict[str, str]:
        return {RANGE_START_TAG: batch[0], RANGE_END_TAG: batch[-1], SOURCE_TAG: source_name, **tags}

    celery = config.executor.celery
    if celery is None:
        job = build_definitions(config).resolve_implicit_global_asset_job_def()
        for batch in batches:
            run_started = time.perf_counter()
            execution = job.execute_in_process(
                instance=instance,
                asset_selection=[asset_key],
                tags=run_tags(batch),
                run_config=QUIET_RUN_CONFIG,
                raise_on_error=False,
            )
            yield batch, Executed.of(execution), time.perf_counter() - run_started
        return
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no lock or thread of this one
    with ProcessPoolExecutor(max_workers=celery.concurrent_runs, mp_context=spawn) as pool:
        futures = [pool.submit(_orchestrate, instance.get_ref(), source_name, run_tags(batch)) for batch in batches]
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


def _orchestrate(instance_ref: Any, source_name: str, tags: dict[str, str]) -> tuple[Executed, float]:
    """One run of `definitions.documents_job` (rebuilt here, and by the workers, from the same config file),
    its step sent to Celery, in a process of the sync's pool.

    Not a thread: Dagster sets up each run's logging with `logging.config.dictConfig`, which closes every
    handler under logging's global lock; runs set up in threads of one process while others write events
    deadlock (seen with the PostgreSQL instance: a sync hung with four runs in flight).
    """
    run_started = time.perf_counter()
    recon_job = dg.build_reconstructable_job(documents_job.__module__, documents_job.__name__, (source_name,))
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        execution = dg.execute_job(
            recon_job, instance=instance, tags=tags, run_config=QUIET_RUN_CONFIG, raise_on_error=False
        )
        return Executed.of(execution), time.perf_counter() - run_started


def _object_key_or_partition(partition_key: str) -> str:
    try:
        return keys.to_object_key(partition_key)
    except ValueError:
        return partition_key


def _run_error(execution: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> str:
    """The first line of what failed the run: a dg.Failure's description, else the user code's error."""
    for event in execution.all_events:
        if not event.is_step_failure:
            continue
        failure = event.step_failure_data
        if failure.user_failure_data is not None and failure.user_failure_data.description:
            return failure.user_failure_data.description.strip().splitlines()[0]
        error = failure.error
        # Dagster wraps the user code's exception (DagsterExecutionStepExecutionError): say the user's.
        while error is not None and error.cause is not None and (error.cls_name or "").startswith("Dagster"):
            error = error.cause
        if error is not None:
            return error.message.strip().splitlines()[0]
    return "no step failure recorded"


def reports_of(instance: dg.DagsterInstance, run_id: str) -> list[dict[str, Any]]:
    """Per-key reports as the run recorded them on the instance (what the UI shows)."""
    reports = []
    events = instance.all_logs(
        run_id, of_type={dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_OBSERVATION}
    )
    for entry in events:
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
            reports.append(
                {
                    "object_key": _object_key_or_partition(observation.partition or ""),
                    "status": "failed",
                    "message": _metadata_value(observation.metadata.get("error")),
                }
            )
    return reports
