"""Several SQS sources, one run reading their queues (defs/sensors/queues.py): real bucket notifications (moto server over
HTTP) to real queues, the sensors evaluated on a real Dagster instance and their runs executed there as the daemon
would."""

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import yaml
from dagster._core.test_utils import create_run_for_test

from benchmarks.common import REPO, sensor_tick
from s3sync_dagster.config import AppConfig, load_config
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import partitions_name, sync_job_name
from s3sync_dagster.defs.resources import ChromaResource
from s3sync_dagster.defs.tags import LINGER_TAG, READS_QUEUES_TAG, SOURCE_TAG
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import Row, notifying_queue, put, store_chunks

NAMES = ("one", "two", "three", "four")
DEADLINE_S = 180  # how long a test waits for what must happen before failing (never a figure it checks)


@pytest.fixture
def sqs(moto_endpoint: str) -> Any:
    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")


def queue_counts(sqs: Any, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages of the queue."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return int(attributes[names[0]]), int(attributes[names[1]])


class Sources:
    """Four SQS sources, each its bucket, queue and collection, in one code location on one instance."""

    def __init__(
        self, tmp_path: Path, moto_endpoint: str, s3: Any, sqs: Any, instance: dg.DagsterInstance, linger_s: int = 4
    ) -> None:
        self.s3, self.sqs, self.instance = s3, sqs, instance
        unique = uuid.uuid4().hex[:8]  # one moto server for the whole session
        self.buckets = {name: f"queues-{unique}-{name}" for name in NAMES}
        self.queues = {}
        for name, bucket in self.buckets.items():
            s3.create_bucket(Bucket=bucket)
            self.queues[name] = notifying_queue(sqs, s3, bucket, f"{bucket}-events")
            sqs.purge_queue(QueueUrl=self.queues[name])  # S3's test event: the queues hold uploads' events only
        entries = [
            {
                "name": name,
                "bucket_name": bucket,
                "region": "us-east-1",
                "collection_name": f"{name}-chunks",
                "endpoint_url": moto_endpoint,
                "aws_access_key_id": {"env": "S3SYNC_TEST_KEY_ID"},
                "aws_secret_access_key": {"env": "S3SYNC_TEST_SECRET"},
                "auto_sync": "direct",
                "sqs_queue_url": self.queues[name],
                "sqs_wait_seconds": 4,
                "sqs_linger_seconds": linger_s,
            }
            for name, bucket in self.buckets.items()
        ]
        tmp_path.mkdir(parents=True, exist_ok=True)
        path = tmp_path / "s3sync.yaml"
        path.write_text(yaml.safe_dump({"chroma": {"path": "chroma"}, "sources": entries}), encoding="utf-8")
        self.config: AppConfig = load_config(path)
        self.defs = build_definitions(self.config)

    def tick(self, name: str) -> dg.SensorResult:
        sensor = self.defs.resolve_sensor_def(f"{name}_sqs")
        with dg.build_sensor_context(instance=self.instance, resources=self.defs.resources) as context:
            result = sensor_tick(sensor, context)
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys or []))
        return result

    def run_in_background(self, name: str, request: dg.RunRequest) -> tuple[threading.Thread, list[Any]]:
        """The run of a request executed in a thread, as the daemon's launcher would (it may read queues)."""
        job = self.defs.resolve_job_def(sync_job_name(name))
        outcome: list[Any] = []
        thread = threading.Thread(
            target=lambda: outcome.append(
                job.execute_in_process(
                    run_config=request.run_config, instance=self.instance, tags=request.tags, raise_on_error=False
                )
            )
        )
        thread.start()
        return thread, outcome

    def chunks(self, name: str, object_key: str) -> list[str]:
        client = ChromaResource(path=self.config.chroma.path).client()
        try:
            found = client.get_collection(f"{name}-chunks").get(where={"object_key": object_key})
        except Exception:  # the collection comes with the source's first write
            return []
        return list(found["documents"] or [])

    def wait_for(self, name: str, object_key: str, thread: threading.Thread) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not self.chunks(name, object_key):
            assert time.monotonic() < deadline and thread.is_alive(), f"'{object_key}' of source '{name}' not indexed"
            time.sleep(0.2)


@pytest.fixture
def sources(tmp_path: Path, moto_endpoint: str, s3: Any, sqs: Any, instance: dg.DagsterInstance) -> Sources:
    return Sources(tmp_path, moto_endpoint, s3, sqs, instance)


def materialised(instance: dg.DagsterInstance, run_id: str) -> set[tuple[str, str | None]]:
    """(asset key, partition) of each materialisation the run recorded."""
    found: set[tuple[str, str | None]] = set()
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        event = entry.dagster_event
        if event is not None and event.asset_key is not None:
            found.add((event.asset_key.to_user_string(), event.partition))
    return found


def test_one_run_reads_the_queues_of_every_sqs_source_and_their_sensors_leave_them_to_it(
    tmp_path: Path, moto_endpoint: str, s3: Any, sqs: Any, instance: dg.DagsterInstance
) -> None:
    """The first source's run, its key done, syncs what every source's queue brings, each key a materialisation of
    its own source's partition, its messages deleted; the other sensors meanwhile launch nothing."""
    # A quiet spell long enough for the other sensors' ticks below (each waits READER_WAIT_S for the run to stop) to
    # come while the run reads, on a busy machine.
    sources = Sources(tmp_path, moto_endpoint, s3, sqs, instance, linger_s=25)
    put(sources.s3, sources.buckets["one"], {"first.txt": "the upload that starts the run\n"})
    result = sources.tick("one")
    [request] = result.run_requests or []
    assert request.tags[READS_QUEUES_TAG] == "two,three,four" and request.tags[LINGER_TAG] == "true"
    thread, outcome = sources.run_in_background("one", request)
    sources.wait_for("one", "first.txt", thread)
    for name in NAMES[1:]:
        skipped = sources.tick(name)
        assert not skipped.run_requests, f"source '{name}' launched a run beside the one reading its queue"
        assert "reads the queue of source" in str(skipped.skip_reason), skipped.skip_reason
    later = {name: f"later/{name}.txt" for name in NAMES}
    for name, object_key in later.items():
        put(sources.s3, sources.buckets[name], {object_key: f"an upload to source {name}\n"})
    for name in NAMES:
        sources.wait_for(name, later[name], thread)
    thread.join(timeout=DEADLINE_S)
    assert not thread.is_alive() and outcome and outcome[0].success
    run_id = outcome[0].run_id
    expected = {(f"{name}/documents", keys.to_partition_key(later[name])) for name in NAMES}
    assert materialised(sources.instance, run_id) == expected | {("one/documents", keys.to_partition_key("first.txt"))}
    for name in NAMES[1:]:
        assert sources.instance.get_dynamic_partitions(partitions_name(name)) == [keys.to_partition_key(later[name])]
        assert sources.chunks(name, later[name]) == [f"an upload to source {name}\n"]
        assert queue_counts(sqs, sources.queues[name]) == (0, 0)
    said = [entry.user_message for entry in sources.instance.all_logs(run_id)]
    assert any("'one', 'two', 'three', 'four': stopped reading their queues" in line for line in said), said
    # Once the run has ended, each sensor reads its queue again.
    put(sources.s3, sources.buckets["three"], {"after.txt": "after the run\n"})
    after = sources.tick("three")
    [request] = after.run_requests or []
    assert request.run_config["ops"]["three_sync_keys"]["config"]["object_keys"] == ["after.txt"]
    assert request.tags[READS_QUEUES_TAG] == "one,two,four"


@pytest.mark.reliability("newest features")
def test_four_sqs_sources_on_two_run_slots_each_upload_indexed_no_source_waiting_for_a_slot(
    tmp_path: Path, moto_endpoint: str, s3: Any, sqs: Any, fault_row: Row
) -> None:
    """Issue 49's row "four SQS sources on the default two run slots" (the third and fourth sources' runs started
    12-21 s after being made: they waited for a slot). On this repo's dagster.yaml run queue (two run slots), an
    upload to every source at once, no run reading yet: the first tick makes the one run, which reads every queue;
    the others, ticking before the daemon has stored that run, launch nothing and give their messages back (visible
    at once); that run indexes all four uploads, each exactly once, and it is the only run the instance holds, so
    no source's upload waits for a slot.

    Before defs/sensors/queues.py the first tick's request named no other queue (no READS_QUEUES_TAG: the first assertion
    fails), each other sensor made a run of its own (four runs for two slots), and the first run indexed only its
    own source's upload."""
    run_queue = yaml.safe_load((REPO / "dagster.yaml").read_text(encoding="utf-8"))["run_queue"]
    with dg.instance_for_test(overrides={"run_queue": run_queue}) as instance:
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
        sources = Sources(tmp_path, moto_endpoint, s3, sqs, instance)
        burst = {name: f"burst/{name}.txt" for name in NAMES}
        for name, object_key in burst.items():
            put(sources.s3, sources.buckets[name], {object_key: f"at once, to source {name}\n"})
        [request] = sources.tick("one").run_requests or []
        assert request.tags[READS_QUEUES_TAG] == "two,three,four"
        for name in NAMES[1:]:
            result = sources.tick(name)
            assert not result.run_requests, f"source '{name}' made a run of its own"
            assert "the run source 'one''s sensor makes reads the queue" in str(result.skip_reason), result.skip_reason
            assert queue_counts(sqs, sources.queues[name]) == (1, 0)
        thread, outcome = sources.run_in_background("one", request)
        for name, object_key in burst.items():
            sources.wait_for(name, object_key, thread)
        thread.join(timeout=DEADLINE_S)
        assert not thread.is_alive() and outcome and outcome[0].success
        # One run made for the four sources, and it indexed every upload: none waited for a run slot.
        assert [run.run_id for run in instance.get_runs()] == [outcome[0].run_id]
        expected_partitions = {(f"{name}/documents", keys.to_partition_key(burst[name])) for name in NAMES}
        assert materialised(instance, outcome[0].run_id) == expected_partitions
        for name in NAMES[1:]:
            assert queue_counts(sqs, sources.queues[name]) == (0, 0)
        expected = {
            (f"{name}-chunks", keys.chunk_id(keys.object_id(object_key), 0)): f"at once, to source {name}\n"
            for name, object_key in burst.items()
        }
        fault_row.observe(expected, store_chunks(ChromaResource(path=sources.config.chroma.path).client()))
        assert fault_row.lost == fault_row.duplicated == fault_row.stray == 0, fault_row
    fault_row.passed = True


def test_a_run_leaves_queues_an_older_run_reads_to_it(sources: Sources, sqs: Any) -> None:
    """Two sensors' runs made at once both name every queue: the newer syncs its own keys and reads no queue, and
    the messages that come stay on their queues for the older one. (The older run is a run record on the instance,
    as the daemon stores one about to start; it never executes.)"""
    older = create_run_for_test(
        sources.instance,
        job_name=sync_job_name("two"),
        tags={SOURCE_TAG: "two", LINGER_TAG: "true", READS_QUEUES_TAG: "one,three,four"},
        status=dg.DagsterRunStatus.STARTING,
    )
    put(sources.s3, sources.buckets["one"], {"first.txt": "the newer run's own key\n"})
    # The sensor of 'one' leaves its queue to the older run.
    assert not sources.tick("one").run_requests
    request = dg.RunRequest(
        run_config={"ops": {"one_sync_keys": {"config": {"object_keys": ["first.txt"], "linger_seconds": 4}}}},
        tags={SOURCE_TAG: "one", LINGER_TAG: "true", READS_QUEUES_TAG: "two,three,four"},
    )
    sources.instance.add_dynamic_partitions(partitions_name("one"), [keys.to_partition_key("first.txt")])
    thread, outcome = sources.run_in_background("one", request)
    thread.join(timeout=DEADLINE_S)
    assert not thread.is_alive() and outcome and outcome[0].success
    said = [entry.user_message for entry in sources.instance.all_logs(outcome[0].run_id)]
    assert any("are read by an older run: left to it" in line for line in said), said
    assert not any("reading" in line and "queue" in line for line in said), said
    assert sources.chunks("one", "first.txt") == ["the newer run's own key\n"]
    # The upload's message is still the queue's, visible, for the older run (or the sensor once it ends).
    assert queue_counts(sqs, sources.queues["one"])[0] == 1
    sources.instance.report_run_canceled(older)
    assert [request.tags[SOURCE_TAG] for request in sources.tick("one").run_requests or []] == ["one"]


def test_messages_a_tick_read_as_another_sources_run_began_reading_are_given_back(sources: Sources, sqs: Any) -> None:
    """A sensor whose long poll took a message while another source's run began to read its queue launches nothing:
    the message is visible again at once, for that run. (Whether the run appeared before the tick's read or during
    it, the outcome is the same: no run, the message on the queue and visible.)"""
    tick: list[dg.SensorResult] = []
    ticking = threading.Thread(target=lambda: tick.append(sources.tick("two")))
    ticking.start()
    time.sleep(1)  # most likely in its long poll by now; either way the outcome below holds
    create_run_for_test(
        sources.instance,
        job_name=sync_job_name("one"),
        tags={SOURCE_TAG: "one", LINGER_TAG: "true", READS_QUEUES_TAG: "two,three,four"},
        status=dg.DagsterRunStatus.STARTED,
    )
    put(sources.s3, sources.buckets["two"], {"during.txt": "uploaded during the tick's long poll\n"})
    ticking.join(timeout=DEADLINE_S)
    [result] = tick
    assert not result.run_requests
    assert "reads the queue of source 'two'" in str(result.skip_reason), result.skip_reason
    assert queue_counts(sqs, sources.queues["two"]) == (1, 0)


def test_an_instance_holding_each_source_to_one_writer_keeps_each_run_to_its_own_queue(
    tmp_path: Path, moto_endpoint: str, s3: Any, sqs: Any
) -> None:
    """A tag limit on s3sync/source (deploy/dagster.yaml) holds each source to one writer: a run reads only its own
    source's queue. A pool limit on one source keeps that source's queue out of the others' runs."""
    limited = {
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {
                "tag_concurrency_limits": [{"key": SOURCE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
            },
        }
    }
    with dg.instance_for_test(overrides=limited) as instance:
        held = Sources(tmp_path / "held", moto_endpoint, s3, sqs, instance)
        put(s3, held.buckets["one"], {"a.txt": "a\n"})
        [request] = held.tick("one").run_requests or []
        assert request.tags[LINGER_TAG] == "true" and READS_QUEUES_TAG not in request.tags
    with dg.instance_for_test() as instance:
        pooled = Sources(tmp_path / "pooled", moto_endpoint, s3, sqs, instance)
        instance.event_log_storage.set_concurrency_slots("s3sync_three", 1)
        put(s3, pooled.buckets["one"], {"b.txt": "b\n"})
        [request] = pooled.tick("one").run_requests or []
        assert request.tags[READS_QUEUES_TAG] == "two,four"
        put(s3, pooled.buckets["three"], {"c.txt": "c\n"})
        [request] = pooled.tick("three").run_requests or []
        assert request.tags[LINGER_TAG] == "true" and READS_QUEUES_TAG not in request.tags


def test_a_tick_that_finds_a_reading_run_waits_for_it_to_stop_and_then_reads_the_queue(sources: Sources) -> None:
    """A tick that begins while another run reads its queue waits (READER_WAIT_S) for that run to stop before it
    skips: an upload that came as the run stopped is taken by this tick, not by one a daemon loop (5 s) later and
    then a new run (issue 49, item 8: the first upload after the lingering run ended)."""
    reader = create_run_for_test(
        sources.instance,
        job_name=sync_job_name("one"),
        tags={SOURCE_TAG: "one", LINGER_TAG: "true", READS_QUEUES_TAG: "two,three,four"},
        status=dg.DagsterRunStatus.STARTED,
    )
    put(sources.s3, sources.buckets["two"], {"as-it-stopped.txt": "uploaded as the reading run stopped\n"})
    stopping = threading.Timer(1.0, lambda: sources.instance.report_run_failed(reader))
    stopping.start()
    result = sources.tick("two")
    stopping.join()
    [request] = result.run_requests or []
    assert request.run_config["ops"]["two_sync_keys"]["config"]["object_keys"] == ["as-it-stopped.txt"]
