"""`s3sync repair`: audit a source, repair exactly the drift found in one run of its repair job, audit again.

First it drops the re-embedding copies earlier releases left of collections the source writes that no
re-embedding will swap in (pipeline/reembed/swap.py, `drop_leftovers`), and says which, and which it kept.

It may run beside syncs, sensors' runs and other repairs of the source: each audit is read between their
writes, and the run's keys are the audit's, whatever those others sync or remove meanwhile.

A run that fails as a whole before it reached its keys (the store gone, a link cut) is tried again, as the daemon
retries the UI's runs and `s3sync sync` its own: up to the instance's run_retries.max_retries times when its run
retries are on, each time on the drift a new audit finds; the keys a failed run reached keep their outcome.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg

from s3sync_dagster.commands.errors import UsageError
from s3sync_dagster.commands.runs.reports import key_outcomes, reports_of, run_failure
from s3sync_dagster.commands.runs.runner import s3_client
from s3sync_dagster.config import AppConfig, SourceConfig
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import repair_job_name
from s3sync_dagster.defs.resources import ChromaResource, EmbeddingResource, chroma_outside_runs, embedding_resource
from s3sync_dagster.defs.run_config import repair_run_config
from s3sync_dagster.defs.runs import drift_of, unlinked_waiting
from s3sync_dagster.defs.sensors import in_process_tags
from s3sync_dagster.pipeline.audit import Drift
from s3sync_dagster.pipeline.chroma import moved
from s3sync_dagster.pipeline.reembed import drop_leftovers


@dataclass
class RepairResult:
    source: str
    before: dict[str, Any]
    after: dict[str, Any]
    run_id: str | None = None
    success: bool = True
    synced: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0
    # The copies earlier releases' re-embeddings left of collections the source writes: each with whether it was
    # dropped and why (pipeline/reembed/swap.py, `leftovers`).
    leftovers: list[dict[str, Any]] = field(default_factory=list)
    # Each run: its id, keys, success, why it failed ("" if it did not) and which retry it is (0: the first run).
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [report for report in self.reports if report.get("status") == "failed"]


def _described(drift: Drift) -> dict[str, Any]:
    described = asdict(drift)
    described["counts"] = drift.counts()
    described["clean"] = drift.clean
    return described


def _audit(
    source: SourceConfig, instance: dg.DagsterInstance, s3: Any, chroma: ChromaResource, embedding: EmbeddingResource
) -> Drift:
    """The drift, read between the writes of other commands' runs (each holds the store's write lock for all
    of its writes): a sync or a sensor's run at work is never caught halfway through a document. The lock is held
    while the store is read, not while S3 answers for each object."""
    return drift_of(source, instance, s3, chroma, embedding, hold=chroma.write_lock)


def _run(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    tags: dict[str, str] | None,
    drift: Drift,
    to_sync: list[str],
    source: SourceConfig,
    result: RepairResult,
    retry: int,
    retried: bool,
) -> list[str]:
    """One run of the repair job on this drift, its keys' outcomes into the result; the keys it did not reach
    when it failed as a whole. `retried`: such keys are tried again, so their outcome comes from a later run."""
    execution = job.execute_in_process(
        instance=instance,
        tags={**(tags or {}), **in_process_tags()},
        run_config=repair_run_config(
            source.name,
            to_sync,
            drift.unselected,
            sorted(drift.misplaced),
            bool(drift.foreign),
            sorted(drift.lexicon),
            sorted(drift.misembedded),
        ),
        raise_on_error=False,
    )
    error = "" if execution.success else run_failure(instance, execution.run_id)
    result.run_id, result.success = execution.run_id, execution.success
    result.runs.append(
        {"run_id": execution.run_id, "keys": len(to_sync), "success": execution.success, "error": error, "retry": retry}
    )
    reached = {report["object_key"] for report in reports_of(instance, execution.run_id)}
    unreached = [] if execution.success else [key for key in to_sync if key not in reached]
    # Each key with the reason for its outcome (a key the run recorded nothing for says why), then the
    # metadata files synced along with a document.
    settled = [key for key in to_sync if key not in unreached] if retried else to_sync
    own, also_synced = key_outcomes(instance, source, execution.run_id, settled, error or None)
    result.reports += own + also_synced
    return unreached


def repair(
    config: AppConfig,
    source_name: str,
    instance: dg.DagsterInstance,
    tags: dict[str, str] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RepairResult:
    """Audit the source, repair exactly the drift found in one run on the instance (tried again on a new audit's
    drift when it fails as a whole before its keys, while run retries allow), and audit again.

    on_start: told how many keys the run will sync, just before it starts (a progress display).
    """
    started = time.perf_counter()
    source = config.source(source_name)
    s3 = s3_client(source)  # checks credentials and bucket before anything runs
    chroma = chroma_outside_runs(config.chroma)
    embedding = embedding_resource(config.embedding)
    why = moved(chroma.client(), source.collection_name, source.spec(embedding.spec()).owner)
    if why is not None:  # an audit would count its chunks where they are as a target's: no drift, and none repaired
        raise UsageError(why)
    with chroma.write_lock():  # between the writes of other commands' runs, as an audit
        left = drop_leftovers(chroma.client(), source.spec(embedding.spec()))
    before = _audit(source, instance, s3, chroma, embedding)
    result = RepairResult(source=source_name, before=_described(before), after=_described(before))
    result.leftovers = [asdict(leftover) for leftover in left]
    job = build_definitions(config).get_job_def(repair_job_name(source_name))
    bound = instance.run_retries_max_retries if instance.run_retries_enabled else 0
    drift, asked, pending = before, set[str](), list[str]()
    while True:
        # Waiting metadata files are no drift: only those no sync has linked to their document are synced.
        to_sync = sorted({*drift.to_sync(), *unlinked_waiting(instance, source_name, drift)})
        # A failed run's keys it did not report that the audit now finds current: written before it stopped.
        result.reports += [
            {
                "object_key": key,
                "status": "unchanged",
                "message": f"run {result.run_id} failed before it reported object '{key}', which the audit after it "
                "finds current",
            }
            for key in pending
            if key not in to_sync
        ]
        if drift.clean and not to_sync:
            result.success = True  # nothing was to repair, or nothing is left after a run that failed as a whole
            break
        if on_start is not None and not result.runs:
            on_start(len(to_sync))
        asked.update(to_sync)
        retry = len(result.runs)
        pending = _run(job, instance, tags, drift, to_sync, source, result, retry, retried=retry < bound)
        if not pending or retry >= bound:
            break
        drift = _audit(source, instance, s3, chroma, embedding)  # what the failed run left, and anything since
    result.synced = len(asked)
    if not result.runs:
        result.duration_s = time.perf_counter() - started
        return result
    after = _audit(source, instance, s3, chroma, embedding)
    result.after = _described(after)
    result.duration_s = time.perf_counter() - started
    return result
