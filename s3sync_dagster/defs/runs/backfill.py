"""The backfill job's run: choose a source's keys, then start Dagster's own partition backfill over them.

A backfill is started the way the UI's Materialize dialog starts one, through the webserver's GraphQL API
(`launchPartitionBackfill`): Dagster has no public Python call that creates a backfill. So the backfill is an
ordinary one, on the Backfills page, cancellable there, and cut into runs of `keys_per_run` keys by the
asset's backfill policy. "Every key" goes as `allPartitions`, which the webserver expands itself: no list of
a million keys travels, and that is what keeps the start to seconds where the dialog's own "All" freezes the
browser. Most selections list the bucket first (register_bucket), which at a million objects costs what a listing
costs (1,000 pages).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.names import (
    REGISTER_BATCH,
    documents_asset_key,
    partitions_def,
    partitions_name,
    register_new,
    register_partitions,
)
from s3sync_dagster.defs.resources import ChromaResource, EmbeddingResource, S3Connections
from s3sync_dagster.defs.run_config import BackfillConfig, Selection
from s3sync_dagster.defs.runs.assets import checked_bucket
from s3sync_dagster.defs.runs.checks import drift_of
from s3sync_dagster.defs.tags import SOURCE_TAG, TRIGGER_TAG
from s3sync_dagster.defs.webserver import DagsterWebserver
from s3sync_dagster.pipeline.records import to_object_key, to_partition_key
from s3sync_dagster.pipeline.s3 import glob_matches, is_meta_key, list_objects

LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionKeysNotFoundError { message }
    ... on PartitionSetNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on InvalidSubsetError { message }
    ... on ConflictingExecutionParamsError { message }
    ... on PythonError { message }
  }
}"""
REQUESTED_BY_RUN_TAG = "s3sync/requested_by_run"  # on the backfill and its runs: the job run that started it
# The selections that read the bucket first, registering the keys uploaded since: a UI user never needs
# `s3sync discover`. FAILED keys are registered by definition; STALE's audit lists the bucket itself.
LISTED_FIRST = (Selection.ALL, Selection.MISSING, Selection.PREFIX, Selection.GLOB)
MAX_REFUSALS_LOGGED = 20  # keys a selection leaves out named one warning each; past them, one warning counts them


def listed_object_keys(source: SourceConfig, client: Any) -> Iterator[str]:
    """The object keys under the source's prefix that are its partitions, as the listing pages come: those its
    include/exclude admit, and in metadata mode the .meta.json files alone (the documents they name are not)."""
    for info in list_objects(client, source.bucket_name, source.path_prefix, source.include, source.exclude):
        if source.auto_sync != "metadata" or is_meta_key(info.object_key):
            yield info.object_key


@dataclass
class Registered:
    listed: int = 0  # the source's object keys in the bucket now
    new: int = 0  # partitions this listing added
    partition_keys: set[str] = field(default_factory=set)  # the source's partitions after it


LISTING_LOGGED_EVERY = 100_000  # a line in the run's log per this many objects listed


def register_bucket(context: dg.OpExecutionContext, source: SourceConfig, s3: S3Connections) -> Registered:
    """List the source's prefix and register each key found that is not a partition yet, 10,000 at a time as the
    listing pages come; the keys uploaded since the last listing are the new ones. The partition keys already
    registered are held as a set (about the bucket's size); the listing itself is never held whole."""
    client = checked_bucket(source, s3)
    instance = context.instance
    existing = set(instance.get_dynamic_partitions(partitions_name(source.name)))
    found = Registered()
    page: list[str] = []
    for object_key in listed_object_keys(source, client):
        found.listed += 1
        partition_key = to_partition_key(object_key)
        if partition_key not in existing:
            page.append(partition_key)
        if len(page) >= REGISTER_BATCH:
            found.new += len(register_new(instance, source.name, page, existing))
            page = []
        if found.listed % LISTING_LOGGED_EVERY == 0:
            context.log.info(f"source '{source.name}': {found.listed:,} objects listed, {found.new:,} new so far")
    found.new += len(register_new(instance, source.name, page, existing))
    found.partition_keys = existing
    context.log.info(
        f"source '{source.name}': {found.listed:,} object(s) listed in s3://{source.bucket_name}/{source.path_prefix}"
        f", {found.new:,} of them new partitions"
    )
    return found


def select_by_object_key(
    partition_keys: Iterable[str], wanted: Callable[[str], bool], path_prefix: str = ""
) -> tuple[list[str], list[str]]:
    """The partition keys whose object key is wanted, sorted, and why each key naming no object key of the source
    was left out: one registered by hand (the UI, the API) not in canonical form, say 'a%41' for 'aA', or naming a
    key outside the source's path_prefix (another source's). A backfill of it could only fail, and it must not take
    the rest of the selection with it."""
    selected: list[str] = []
    refused: list[str] = []
    for partition_key in partition_keys:
        try:
            object_key = to_object_key(partition_key)
        except ValueError as error:  # names the key and the rule it breaks
            refused.append(str(error))
            continue
        if not wanted(object_key):
            continue
        if not object_key.startswith(path_prefix):
            refused.append(
                f"partition key '{partition_key}' names object '{object_key}', which is not under the source's "
                f"path_prefix '{path_prefix}' (registered by hand?)"
            )
            continue
        selected.append(partition_key)
    return sorted(selected), refused


def selected_partitions(
    context: dg.OpExecutionContext,
    source: SourceConfig,
    config: BackfillConfig,
    s3: S3Connections,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
    registered: Iterable[str] | None = None,
) -> list[str] | None:
    """The partition keys the backfill covers, sorted; None for every key of the source. registered: the source's
    partitions, where a listing just read them (else read here)."""
    instance = context.instance
    if config.selection is Selection.ALL:
        return None
    if config.selection is Selection.STALE:
        drift = drift_of(source, instance, s3.client(source.name), chroma, embedding)
        stale = drift.stale or []
        # An audit may find keys no listing registered (indexed before a rename of the partitions): a backfill
        # needs them registered.
        register_partitions(instance, source.name, stale)
        return sorted(stale)
    if registered is None:
        registered = instance.get_dynamic_partitions(partitions_name(source.name))
    registered = list(registered)
    if config.selection in (Selection.PREFIX, Selection.GLOB):

        def wanted(object_key: str) -> bool:
            if config.selection is Selection.GLOB:
                return glob_matches(config.pattern, object_key)
            return object_key.startswith(config.pattern)

        selected, refused = select_by_object_key(registered, wanted, source.path_prefix)
        what = f"{config.selection.value} selection '{config.pattern}'"
        for reason in refused[:MAX_REFUSALS_LOGGED]:
            context.log.warning(f"source '{source.name}': {reason}; the {what} leaves it out")
        if len(refused) > MAX_REFUSALS_LOGGED:
            context.log.warning(
                f"source '{source.name}': the {what} leaves out {len(refused) - MAX_REFUSALS_LOGGED:,} more "
                "partition keys that name no object key of the source"
            )
        return selected
    statuses = (
        instance.get_status_by_partition(documents_asset_key(source), registered, partitions_def(source.name)) or {}
    )
    if config.selection is Selection.MISSING:
        return sorted(key for key in registered if statuses.get(key) is None)
    return sorted(key for key, status in statuses.items() if status == dg.AssetPartitionStatus.FAILED)


def backfill_params(
    source: SourceConfig, partition_keys: Sequence[str] | None, what: str, run_id: str
) -> dict[str, Any]:
    """`LaunchBackfillParams` as the UI's dialog sends them, for the source's asset."""
    params: dict[str, Any] = {
        "assetSelection": [{"path": documents_asset_key(source).path}],
        # Dagster refuses %, * and " in a title: the selection's name there, the pattern in the description.
        "title": f"{source.name}: {what.split(' ')[0]}",
        "description": f"source '{source.name}', {what}",
        "tags": [
            {"key": SOURCE_TAG, "value": source.name},
            {"key": TRIGGER_TAG, "value": "backfill"},
            {"key": REQUESTED_BY_RUN_TAG, "value": run_id},
        ],
    }
    if partition_keys is None:
        params["allPartitions"] = True
    else:
        params["partitionNames"] = list(partition_keys)
        params["fromFailure"] = False
    return params


def launch_backfill(webserver: DagsterWebserver, params: dict[str, Any], address: tuple[str, str]) -> str:
    """Start the backfill through the webserver at `address`; its id, or dg.Failure with the webserver's reason."""
    answer = webserver.graphql(LAUNCH_BACKFILL, {"backfillParams": params}, address=address)
    answer = answer["launchPartitionBackfill"]
    if answer["__typename"] != "LaunchBackfillSuccess":
        raise dg.Failure(
            f"the Dagster webserver at {address[0]} refused the backfill: "
            f"{answer['__typename']}: {str(answer.get('message', ''))[:1000]}"
        )
    return str(answer["backfillId"])


def request_backfill(
    context: dg.OpExecutionContext,
    source: SourceConfig,
    config: BackfillConfig,
    *,
    webserver: DagsterWebserver,
    s3: S3Connections,
    chroma: ChromaResource,
    embedding: EmbeddingResource,
) -> dg.Output[None]:
    """Starts the backfill; its id, page and size are the output's metadata (the output has no value)."""
    if config.selection in (Selection.PREFIX, Selection.GLOB) and not config.pattern:
        raise dg.Failure(
            f"source '{source.name}': selection '{config.selection.value}' needs a pattern "
            "(a key prefix, or a glob such as 'reports/**/*.pdf')"
        )
    listing: dict[str, Any] = {}
    found: Registered | None = None
    if config.selection in LISTED_FIRST:
        found = register_bucket(context, source, s3)
        listing = {"listed": found.listed, "new_partitions": found.new}
    registered = found.partition_keys if found is not None else None
    partition_keys = selected_partitions(context, source, config, s3, chroma, embedding, registered)
    what = config.selection.value + (f" '{config.pattern}'" if config.pattern else "")
    # ALL (None) was listed first, so its count is known.
    count = len(partition_keys) if partition_keys is not None else len(registered or ())
    if count == 0:  # an empty bucket, or a selection matching nothing: no backfill to start
        context.log.info(f"source '{source.name}': no key is {what}; nothing to backfill")
        return dg.Output(None, metadata={"selection": what, "partitions": 0, **listing})
    address = webserver.address()  # found once: the backfill's call and its link name the same webserver
    backfill_id = launch_backfill(webserver, backfill_params(source, partition_keys, what, context.run_id), address)
    page = f"{address[0].rstrip('/')}/runs/b/{backfill_id}"
    context.log.info(f"source '{source.name}': backfill {backfill_id} of {count} keys ({what}): {page}")
    return dg.Output(
        None,
        metadata={
            "backfill": dg.MetadataValue.url(page),
            "backfill_id": backfill_id,
            "selection": what,
            "partitions": count,
            "keys_per_run": source.keys_per_run,
            **listing,
        },
    )
