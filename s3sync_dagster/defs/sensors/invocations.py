"""Invocations (`s3sync invoke`) as requests recorded on the instance, and the one sensor that turns them into runs.

`s3sync invoke` records a request as a runless observation of the source's asset, on the object's partition
(the instance's public event log: the daemon, the webserver and the CLI share it, whatever host they run on,
and the UI shows the request in the partition's history). The sensor reads the requests recorded since its
cursor (an event storage id) and asks for one run of that partition each, with the invocation's parameters
as the run's config, so a re-execution from the UI uses them again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.names import documents_asset_key, partitions_name
from s3sync_dagster.defs.run_config import invocation_run_config
from s3sync_dagster.defs.tags import INVOCATION_TAG, SOURCE_TAG
from s3sync_dagster.pipeline.spec import Invocation

INVOCATION_SENSOR = "s3sync_invocations"
# The observation metadata that marks a request (the asset's other observations are failed keys).
REQUEST_MARKER = "s3sync_request"
REQUEST_KIND = "invocation"
# Requests read per source and tick; more wait for the next tick (the cursor stops before them).
REQUESTS_PER_TICK = 500
# Each tick costs a Dagster instance in the code server and the tick's records in the daemon's: at Dagster's 5 s
# it was a third of what an idle daemon spent (docs/auto-sync.md, "What it costs"). An invocation's run is
# requested within 15 s of it.
INVOCATION_INTERVAL_S = 15


@dataclass(frozen=True)
class InvocationRequest:
    """One `s3sync invoke` as recorded on the instance, not yet (or already) turned into a run."""

    invocation_id: str
    source_name: str
    partition_key: str
    invocation: Invocation
    storage_id: int
    timestamp: float


def invocation_tags(source_name: str, invocation_id: str) -> dict[str, str]:
    """The tags of an invocation's run, wherever it runs: the sensor's run, or `invoke --wait` in process."""
    return {SOURCE_TAG: source_name, INVOCATION_TAG: invocation_id}


def new_invocation_id() -> str:
    """An invocation's id: the Sync API's job id, `invoke` returns it before any run exists."""
    return str(uuid.uuid4())


def _name(source: SourceConfig | str) -> str:
    return source if isinstance(source, str) else source.name


def record_request(
    instance: dg.DagsterInstance, source: SourceConfig | str, partition_key: str, invocation: Invocation
) -> InvocationRequest:
    """Record an invocation for the sensor to run; its partition must be registered already."""
    source_name = _name(source)
    invocation_id = new_invocation_id()
    metadata: dict[str, Any] = {REQUEST_MARKER: REQUEST_KIND, "invocation_id": invocation_id}
    if invocation.custom_id is not None:
        metadata["custom_id"] = invocation.custom_id
    if invocation.metadata:
        metadata["metadata"] = json.dumps(invocation.metadata, sort_keys=True)
    if invocation.target_collection_name is not None:
        metadata["target_collection_name"] = invocation.target_collection_name
    instance.report_runless_asset_event(
        dg.AssetObservation(asset_key=documents_asset_key(source), partition=partition_key, metadata=metadata)
    )
    # Read back from the partition's latest observations: its storage id and time are the store's.
    records_filter = dg.AssetRecordsFilter(asset_key=documents_asset_key(source), asset_partitions=[partition_key])
    for record in instance.fetch_observations(records_filter, limit=20).records:
        request = _request(source_name, record)
        if request is not None and request.invocation_id == invocation_id:
            return request
    raise RuntimeError(f"invocation {invocation_id} of source '{source_name}' was recorded but cannot be read back")


def _request(source_name: str, record: dg.EventLogRecord) -> InvocationRequest | None:
    observation = record.asset_observation
    if observation is None or record.partition_key is None:
        return None
    values: dict[str, Any] = {name: getattr(value, "value", value) for name, value in observation.metadata.items()}
    invocation_id = values.get("invocation_id")
    if values.get(REQUEST_MARKER) != REQUEST_KIND or not isinstance(invocation_id, str):
        return None
    metadata = json.loads(values["metadata"]) if isinstance(values.get("metadata"), str) else {}
    return InvocationRequest(
        invocation_id=invocation_id,
        source_name=source_name,
        partition_key=record.partition_key,
        invocation=Invocation(values.get("custom_id"), metadata, values.get("target_collection_name")),
        storage_id=record.storage_id,
        timestamp=record.timestamp,
    )


def recorded_requests(
    instance: dg.DagsterInstance, source: SourceConfig | str, limit: int = 1000
) -> list[InvocationRequest]:
    """The requests among the source's latest `limit` observations, oldest first."""
    records = instance.fetch_observations(documents_asset_key(source), limit=limit).records
    return [request for record in reversed(records) if (request := _request(_name(source), record)) is not None]


def runs_of_invocations(instance: dg.DagsterInstance, invocation_ids: Sequence[str]) -> dict[str, list[dg.RunRecord]]:
    """Each invocation's runs, oldest first: the run the sensor (or `invoke --wait`) made, then re-executions."""
    found: dict[str, list[dg.RunRecord]] = {}
    if not invocation_ids:
        return found
    for record in reversed(instance.get_run_records(dg.RunsFilter(tags={INVOCATION_TAG: list(invocation_ids)}))):
        found.setdefault(record.dagster_run.tags[INVOCATION_TAG], []).append(record)
    return found


def invocation_run_request(request: InvocationRequest, source: SourceConfig | str) -> dg.RunRequest:
    return dg.RunRequest(
        # The daemon makes no second run for a run key it has seen: a tick that is evaluated again is harmless.
        run_key=request.invocation_id,
        asset_selection=[documents_asset_key(source)],
        # An invocation's run evaluates no check: the invocation's own status says what its key did.
        asset_check_keys=[],
        partition_key=request.partition_key,
        run_config=invocation_run_config(source, request.invocation),
        tags=invocation_tags(request.source_name, request.invocation_id),
    )


def new_requests(
    instance: dg.DagsterInstance, sources: Sequence[SourceConfig | str], after_storage_id: int | None
) -> tuple[list[InvocationRequest], int]:
    """Every source's requests after the cursor, oldest first, and the cursor past them.

    Storage ids are the event log's, shared by all assets. A source with more than a tick's worth holds the
    cursor back to its last record read; what the other sources have beyond it is read again next tick.
    With no cursor (the first tick, or a reset one) only each source's latest tick's worth is read, not the
    asset's whole history of observations (a failed key is one too).
    """
    read: list[InvocationRequest] = []
    cursor: int | None = None
    held: int | None = None
    for source in sources:
        name = _name(source)
        records_filter = dg.AssetRecordsFilter(asset_key=documents_asset_key(source), after_storage_id=after_storage_id)
        records = instance.fetch_observations(
            records_filter, limit=REQUESTS_PER_TICK, ascending=after_storage_id is not None
        ).records
        if not records:
            continue
        records = sorted(records, key=lambda record: record.storage_id)
        last = records[-1].storage_id
        cursor = max(cursor or 0, last)
        if after_storage_id is not None and len(records) == REQUESTS_PER_TICK:
            held = min(held if held is not None else last, last)
        read.extend(request for record in records if (request := _request(name, record)) is not None)
    if held is not None:
        cursor = held
        read = [request for request in read if request.storage_id <= held]
    if cursor is None:  # nothing recorded after the cursor (or at all: every later record is new)
        cursor = after_storage_id if after_storage_id is not None else 0
    return sorted(read, key=lambda request: request.storage_id), cursor


def build_invocation_sensor(sources: Sequence[SourceConfig]) -> dg.SensorDefinition:
    """One sensor for every source: requests recorded by `s3sync invoke` become runs of their partition."""
    by_name = {source.name: source for source in sources}

    @dg.sensor(
        name=INVOCATION_SENSOR,
        asset_selection=[documents_asset_key(source) for source in sources],
        minimum_interval_seconds=INVOCATION_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Runs the invocations `s3sync invoke` records: one run of the object's partition each.",
    )
    def s3sync_invocations(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        instance = context.instance
        requests, cursor = new_requests(instance, list(sources), int(context.cursor) if context.cursor else None)
        # A cursor reset (or a tick evaluated again) finds requests that already have their run.
        done = runs_of_invocations(instance, [request.invocation_id for request in requests])
        run_requests = []
        for request in requests:
            if request.invocation_id in done:
                continue
            if not instance.has_dynamic_partition(partitions_name(request.source_name), request.partition_key):
                # A request for a key forgotten since (remove-source): a run of it could not start.
                context.log.warning(
                    f"invocation {request.invocation_id}: partition '{request.partition_key}' of source "
                    f"'{request.source_name}' is no longer registered: not run"
                )
                continue
            run_requests.append(invocation_run_request(request, by_name[request.source_name]))
        if not run_requests:
            return dg.SensorResult(skip_reason="no new invocation", cursor=str(cursor))
        return dg.SensorResult(run_requests=run_requests, cursor=str(cursor))

    return s3sync_invocations
