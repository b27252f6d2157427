"""The backfill job from the UI's launchpad at 1,000,000 registered keys: a backfill of every key in one run.

Its own `dagster dev`, whose daemon looks for backfill work every 30 s as Dagster's does, not every few seconds as
the other tests' daemons (conftest's DAEMON_INTERVAL_S): the backfill is cancelled as soon as it is made, and a
daemon looking meanwhile would begin on a million keys (a minute of its time, and runs) before the cancel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest

from s3sync_dagster.defs.names import partitions_name
from s3sync_dagster_tests.conftest import TEST_SECRET
from s3sync_dagster_tests.dagster.test_ui_backfill import BIG, Live, cancel, serving

BIG_KEYS = 1_000_000


@pytest.fixture(scope="module")
def live(s3: Any, moto_endpoint: str, chroma_server: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with serving(s3, moto_endpoint, chroma_server, tmp_path_factory.mktemp("ui-million"), paced=False) as served:
        yield served


def test_a_backfill_of_a_million_keys_starts_from_the_launchpad_and_cancels(live: Live) -> None:
    """Registered directly (as discover would, without a million objects in moto): the launchpad's run must
    start a backfill of every key, which the Materialize dialog's "All" cannot at this size."""
    instance = dg.DagsterInstance.get()
    partition_keys = [f"big/{index:07d}.txt" for index in range(BIG_KEYS)]
    for start in range(0, BIG_KEYS, 100_000):
        instance.add_dynamic_partitions(partitions_name(BIG), partition_keys[start : start + 100_000])

    launched = live.launch(BIG, "ALL")
    assert launched["status"] == "SUCCESS", launched
    assert launched["metadata"]["partitions"] == BIG_KEYS
    backfill_id = launched["metadata"]["backfill_id"]
    backfill = live.backfill(backfill_id)
    assert backfill["numPartitions"] == BIG_KEYS and backfill["title"] == "big: all"
    tags = {tag["key"]: tag["value"] for tag in backfill["tags"]}
    assert tags["s3sync/source"] == BIG and tags["s3sync/trigger"] == "backfill"
    assert backfill["status"] == "REQUESTED"
    cancel(live, backfill_id)
    # The daemon finishes the cancellation on its next look, after any run it already launched.
    assert live.backfill(backfill_id)["status"] in ("CANCELING", "CANCELED")
    assert TEST_SECRET not in live.server.tail()
