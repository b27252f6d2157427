"""The run config of a source's asset and jobs, typed: what the launchpad shows, what a re-execution reuses."""

import enum
from typing import Any

import dagster as dg

from s3sync_dagster.config import SourceConfig
from s3sync_dagster.defs.names import asset_op_name, reembed_op_name, repair_op_name, sync_op_name
from s3sync_dagster.pipeline.spec import Invocation

# Run logs of the command line's in-process runs stay off the terminal: the command says what happened.
QUIET_LOGGERS: dict[str, Any] = {"console": {"config": {"log_level": "CRITICAL"}}}


class InvocationConfig(dg.Config):
    """The Sync API's invocation parameters (`s3sync invoke`); empty for plain syncs and backfills.

    They travel in the run's config, so a re-execution from the UI uses them again.
    """

    custom_id: str | None = None  # chunk ids become `{custom_id}-{n}`; one object key per run
    metadata: dict[str, Any] = {}  # noqa: RUF012 - a pydantic field: copied per instance
    target_collection_name: str | None = None  # instead of the source's collection

    def invocation(self) -> Invocation | None:
        invocation = Invocation(self.custom_id, dict(self.metadata), self.target_collection_name)
        return None if invocation == Invocation() else invocation


class SyncKeysConfig(dg.Config):
    """Object keys to bring up to date: created or changed ones are indexed, deleted ones removed."""

    object_keys: list[str]
    # Set by the SQS sensor (the source's sqs_linger_seconds): after these keys, the run reads the queue itself until
    # it has seen no event this long (defs/runs/linger.py).
    linger_seconds: int = 0
    # Set by the poll sensor (the source's poll_linger_seconds): after these keys, the run passes over the prefix
    # itself every poll_interval_seconds until its passes have found no change this long (defs/runs/linger.py).
    poll_linger_seconds: int = 0


class RepairConfig(dg.Config):
    """What to repair; launched from the UI with nothing set, the run audits the source first."""

    # None: audit first and repair what it finds. A list (what `s3sync repair` passes): sync these keys.
    object_keys: list[str] | None = None
    unselected: list[str] = []  # noqa: RUF012 - a pydantic field: copied per instance
    # Collections where the source's chunks are deleted: it may not write there (another source's).
    misplaced: list[str] = []  # noqa: RUF012 - a pydantic field: copied per instance
    foreign: bool = False  # delete the chunks other sources wrote into the source's own collection
    # Collections whose lexical index is built again from their chunks (pipeline/lexicon/embedded.py).
    lexicon: list[str] = []  # noqa: RUF012 - a pydantic field: copied per instance
    # Collections whose misembedded chunks (text hash not their text's) are deleted, their keys then synced from S3.
    misembedded: list[str] = []  # noqa: RUF012 - a pydantic field: copied per instance


class ReembedConfig(dg.Config):
    """A re-embedding of the source's collection under the configured embedding function (pipeline/reembed/swap.py)."""

    abandon: bool = False  # drop the re-embedding underway instead: the collection is left as it is
    batch_size: int = 500  # chunks read, embedded and written at a time (and a progress line each)


def reembed_run_config(source_name: str, abandon: bool = False, batch_size: int = 500) -> dg.RunConfig:
    config = ReembedConfig(abandon=abandon, batch_size=batch_size)
    return dg.RunConfig(ops={reembed_op_name(source_name): config}, loggers=QUIET_LOGGERS)


class Selection(enum.Enum):
    """Which keys of the source a backfill covers (the launchpad shows these as a drop-down)."""

    ALL = "all"  # every key: the bucket listed, the keys found registered, with those registered before
    MISSING = "missing"  # keys never materialised (the grey of the partition bar), the bucket listed first
    FAILED = "failed"  # keys whose last run failed (the red)
    STALE = "stale"  # objects changed in the bucket since they were indexed, or missing some chunks (the audit)
    PREFIX = "prefix"  # keys whose object key starts with `pattern`, the bucket listed first
    GLOB = "glob"  # keys whose object key matches `pattern` (the include/exclude glob syntax), listed first


class BackfillConfig(dg.Config):
    """What to backfill. `pattern` is the prefix or the glob of those two selections, ignored by the others."""

    selection: Selection = Selection.ALL  # launched as it opens, the job indexes the whole bucket
    pattern: str = ""


def sync_run_config(
    source_name: str, object_keys: list[str], linger_seconds: int = 0, poll_linger_seconds: int = 0
) -> dg.RunConfig:
    config = SyncKeysConfig(
        object_keys=object_keys, linger_seconds=linger_seconds, poll_linger_seconds=poll_linger_seconds
    )
    return dg.RunConfig(ops={sync_op_name(source_name): config})


def repair_run_config(
    source_name: str,
    object_keys: list[str],
    unselected: list[str],
    misplaced: list[str] | None = None,
    foreign: bool = False,
    lexicon: list[str] | None = None,
    misembedded: list[str] | None = None,
) -> dg.RunConfig:
    config = RepairConfig(
        object_keys=object_keys,
        unselected=unselected,
        misplaced=misplaced or [],
        foreign=foreign,
        lexicon=lexicon or [],
        misembedded=misembedded or [],
    )
    return dg.RunConfig(ops={repair_op_name(source_name): config}, loggers=QUIET_LOGGERS)


def invocation_run_config(
    source: SourceConfig | str, invocation: Invocation, loggers: dict[str, Any] | None = None
) -> dg.RunConfig:
    """The asset's config for an invocation's parameters: shown in the UI, reused by a re-execution."""
    config = InvocationConfig(
        custom_id=invocation.custom_id,
        # Dagster config has no nulls; the Sync API drops null metadata values anyway.
        metadata={key: value for key, value in invocation.metadata.items() if value is not None},
        target_collection_name=invocation.target_collection_name,
    )
    return dg.RunConfig(ops={asset_op_name(source): config}, loggers=loggers)
