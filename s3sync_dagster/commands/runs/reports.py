"""What a finished run did, read back from its events on the instance: each key's report, the keys it recorded
nothing for, and why it failed, in one line that names the object."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.pipeline.records import to_object_key
from s3sync_dagster.pipeline.s3 import META_SUFFIX, is_meta_key


def _metadata_value(value: Any) -> Any:
    return getattr(value, "value", value)


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
    documents = [k for k in unreported if source.auto_sync == "metadata" and not is_meta_key(k)]
    logged = _logged_about(instance, run_id, documents) if documents else {}
    for object_key in unreported:
        if object_key in logged or (object_key in documents and failure is None):
            message = logged.get(object_key) or (
                f"source '{source.name}' syncs in metadata mode: object '{object_key}' is indexed only through "
                f"the {META_SUFFIX} files naming it, never by itself; run {run_id} recorded nothing for it"
            )
            by_key[object_key] = {"object_key": object_key, "status": "ignored", "message": message}
        elif failure is not None:
            by_key[object_key] = failed_report(
                object_key, f"run {run_id} failed before it reported object '{object_key}': {failure}"
            )
        else:
            by_key[object_key] = failed_report(
                object_key,
                f"run {run_id} succeeded but recorded no outcome for object '{object_key}' "
                "(no materialisation or failure on its partition)",
            )
    asked = set(object_keys)
    return [by_key[k] for k in object_keys], [report for report in recorded if report["object_key"] not in asked]


def failed_report(object_key: str, message: str) -> dict[str, Any]:
    return {"object_key": object_key, "status": "failed", "message": message}


def _logged_about(instance: dg.DagsterInstance, run_id: str, documents: Sequence[str]) -> dict[str, str]:
    """What a run's log says of documents it recorded no event for: the engine's "ignored" report of a
    document in metadata mode is a log line that starts with the quoted key (pipeline/sync/stages.py)."""
    wanted = {f"'{document}' ": document for document in documents}
    said: dict[str, str] = {}
    for entry in instance.all_logs(run_id):
        message = entry.user_message or ""
        if entry.dagster_event is None and message.startswith("'"):
            document = next((key for prefix, key in wanted.items() if message.startswith(prefix)), None)
            if document is not None:
                said[document] = message
    return said


def object_key_or_partition(partition_key: str) -> str:
    try:
        return to_object_key(partition_key)
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
            object_key = object_key_or_partition(observation.partition or "")
            message = str(_metadata_value(observation.metadata.get("error")) or "").strip()
            reports.append(failed_report(object_key, _naming(object_key, message, run_id)))
    return reports


def _naming(object_key: str, message: str, run_id: str) -> str:
    """A failed key's message names the object, whatever raised it (the engine's own errors already do)."""
    if not message:
        return f"object '{object_key}' failed in run {run_id} with no message: its log on the instance has the error"
    return message if f"'{object_key}'" in message else f"object '{object_key}': {message}"
