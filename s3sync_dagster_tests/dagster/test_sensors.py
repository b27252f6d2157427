"""Auto-sync through SQS: a real bucket notification (moto server) to a real queue, the sensor evaluated on
a real Dagster instance, and its run requests executed there as the daemon would."""

import json
import time
from typing import Any

import boto3
import dagster as dg
import pytest

from benchmarks.common import sensor_tick
from s3sync_dagster.config import AppConfig
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import documents_asset_key, partitions_name, sync_job_name
from s3sync_dagster.defs.resources import ChromaResource
from s3sync_dagster.pipeline.records import keys
from s3sync_dagster_tests.conftest import TEST_SECRET, ConfigFactory, Row, notifying_queue, put, store_chunks


@pytest.fixture
def sqs(moto_endpoint: str) -> Any:
    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def queue_url(sqs: Any, s3: Any, bucket: str) -> str:
    return notifying_queue(sqs, s3, bucket, f"{bucket}-events")


def queue_depth(sqs: Any, queue_url: str) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return sum(int(attributes[name]) for name in names)


class AutoSync:
    """One source with auto-sync, its definitions and a helper that runs a daemon-like tick."""

    def __init__(self, config: AppConfig, instance: dg.DagsterInstance, sensor: str = "sqs") -> None:
        self.config = config
        self.source = config.sources[0]
        self.instance = instance
        self.defs = build_definitions(config)
        self.sensor = self.defs.resolve_sensor_def(f"{self.source.name}_{sensor}")
        self.job = self.defs.resolve_job_def(sync_job_name(self.source.name))
        self.cursor: str | None = None

    def tick(self) -> tuple[dg.SensorResult, list[dg.ExecuteInProcessResult]]:
        """Evaluate the sensor as the daemon does: with the cursor the last tick left, its runs then launched."""
        with dg.build_sensor_context(
            instance=self.instance, resources=self.defs.resources, cursor=self.cursor
        ) as context:
            result = sensor_tick(self.sensor, context)
        assert isinstance(result, dg.SensorResult)
        self.cursor = result.cursor if result.cursor is not None else self.cursor
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys or []))
        runs = [
            self.job.execute_in_process(
                run_config=request.run_config, instance=self.instance, tags=request.tags, raise_on_error=False
            )
            for request in result.run_requests or []
        ]
        return result, runs

    def collection(self, name: str | None = None) -> Any:
        # The same (cached) client the runs used: one embedded store, one set of settings per process.
        return ChromaResource(path=self.config.chroma.path).client().get_collection(name or self.source.collection_name)

    def store_chunks(self) -> list[tuple[str, str, str]]:
        return store_chunks(ChromaResource(path=self.config.chroma.path).client())

    def chunks_or_none(self, object_key: str) -> dict[str, str] | None:
        """Its chunks, or None while the collection does not exist yet (the first run makes it)."""
        try:
            return self.chunks(object_key)
        except Exception:
            return None

    def chunks(self, object_key: str, collection: str | None = None) -> dict[str, str]:
        found = self.collection(collection).get(where={"object_key": object_key})
        return dict(zip(found["ids"], found["documents"], strict=True))

    def latest(self, object_key: str) -> dict[str, Any]:
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=documents_asset_key(self.source.name), asset_partitions=[keys.to_partition_key(object_key)]
            ),
            limit=1,
        ).records
        metadata = records[0].asset_materialization.metadata
        return {name: getattr(value, "value", value) for name, value in metadata.items()}


@pytest.fixture
def direct(make_config: ConfigFactory, bucket: str, queue_url: str, instance: dg.DagsterInstance) -> AutoSync:
    config, _ = make_config(bucket, path_prefix="in/", auto_sync="direct", sqs_queue_url=queue_url)
    return AutoSync(config, instance)


def test_upload_overwrite_and_delete_follow_the_bucket(
    s3: Any, bucket: str, direct: AutoSync, sqs: Any, queue_url: str
) -> None:
    hostile = ["in/plain.txt", "in/with space+plus.txt", "in/ünïcødé/文件.md", "in/dots...here.txt"]
    put(s3, bucket, {key: f"first version of {key}\n" for key in hostile} | {"out/elsewhere.txt": "x"})
    result, runs = direct.tick()
    assert [run.success for run in runs] == [True]
    assert sorted(direct.instance.get_dynamic_partitions(partitions_name("docs"))) == sorted(
        keys.to_partition_key(k) for k in hostile
    )
    for key in hostile:
        assert list(direct.chunks(key).values()) == [f"first version of {key}\n"]

    put(s3, bucket, {"in/plain.txt": "second, replacing version\n"})
    s3.delete_object(Bucket=bucket, Key="in/with space+plus.txt")
    _, runs = direct.tick()
    assert [run.success for run in runs] == [True]
    assert list(direct.chunks("in/plain.txt").values()) == ["second, replacing version\n"]
    assert direct.chunks("in/with space+plus.txt") == {}
    removed = direct.latest("in/with space+plus.txt")
    assert removed["status"] == "removed" and removed["chunks_deleted"] == 1
    # Its object and chunks gone, the key leaves the partitions; its history (above) stays.
    assert sorted(direct.instance.get_dynamic_partitions(partitions_name("docs"))) == sorted(
        keys.to_partition_key(k) for k in hostile if k != "in/with space+plus.txt"
    )
    # Messages stay (in flight) until a later tick sees their runs; then everything is consumed.
    assert queue_depth(sqs, queue_url) > 0
    result, runs = direct.tick()
    assert runs == [] and result.skip_reason
    assert queue_depth(sqs, queue_url) == 0


@pytest.mark.reliability
def test_redelivered_and_foreign_messages_are_harmless(
    s3: Any, bucket: str, direct: AutoSync, sqs: Any, queue_url: str, fault_row: Row
) -> None:
    put(s3, bucket, {"in/a.txt": "alpha\n"})
    peeked = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=0)
    body = next(m["Body"] for m in peeked["Messages"] if "ObjectCreated" in m["Body"])
    _, runs = direct.tick()
    assert [run.success for run in runs] == [True]
    before = direct.chunks("in/a.txt")
    sqs.send_message(QueueUrl=queue_url, MessageBody=body)  # the same notification again
    sqs.send_message(QueueUrl=queue_url, MessageBody="hello, not an S3 event")
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Records": [{"s3": "malformed"}]}))
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Event": "s3:TestEvent", "Bucket": bucket}))
    _, runs = direct.tick()
    assert [run.success for run in runs] == [True]
    assert direct.chunks("in/a.txt") == before  # no duplicate, nothing rewritten
    assert direct.latest("in/a.txt")["status"] == "unchanged"
    direct.tick()
    # All is consumed but the two messages not understood: they stay for the queue's dead-letter queue.
    assert queue_depth(sqs, queue_url) == 2
    fault_row.observe({("docs-collection", i): text for i, text in before.items()}, direct.store_chunks())
    fault_row.passed = len(before) == 1


def test_a_burst_becomes_a_few_runs(
    make_config: ConfigFactory, s3: Any, bucket: str, sqs: Any, queue_url: str, instance: dg.DagsterInstance
) -> None:
    # keys_per_run 10 over 30 uploads: the same batching as the default 100 over 300, a tenth of the embedding.
    config, _ = make_config(bucket, path_prefix="in/", auto_sync="direct", sqs_queue_url=queue_url, keys_per_run=10)
    direct = AutoSync(config, instance)
    put(s3, bucket, {f"in/burst/{n:03d}.txt": f"burst file {n}\n" for n in range(30)})
    # A tick reads for at most READ_BUDGET_S: on a slow machine moto may hand out fewer than 30
    # messages in that time, and the next tick takes the rest. Either way: runs of up to 10 keys.
    # Each tick's keys in runs of 10 (keys_per_run): as few runs as its keys allow, whatever a tick read.
    requested: list[list[str]] = []
    for _ in range(5):
        result, runs = direct.tick()
        assert all(run.success for run in runs)
        ticked = [
            request.run_config["ops"]["docs_sync_keys"]["config"]["object_keys"]
            for request in result.run_requests or []
        ]
        assert len(ticked) == -(-sum(map(len, ticked)) // 10) and all(len(keys) <= 10 for keys in ticked), ticked
        requested += ticked
        if queue_depth(sqs, queue_url) == 0:
            break
    assert sorted(key for object_keys in requested for key in object_keys) == sorted(
        f"in/burst/{n:03d}.txt" for n in range(30)
    )
    assert direct.collection().count() == 30


def test_document_limit_caps_registration(
    make_config: ConfigFactory, s3: Any, bucket: str, queue_url: str, instance: dg.DagsterInstance
) -> None:
    config, _ = make_config(bucket, auto_sync="direct", sqs_queue_url=queue_url, document_limit=2)
    limited = AutoSync(config, instance)
    put(s3, bucket, {f"doc-{n}.txt": "x\n" for n in range(4)})
    limited.tick()
    assert len(instance.get_dynamic_partitions(partitions_name("docs"))) == 2


def test_metadata_mode(
    make_config: ConfigFactory, s3: Any, bucket: str, queue_url: str, instance: dg.DagsterInstance
) -> None:
    config, _ = make_config(bucket, path_prefix="t1/", auto_sync="metadata", sqs_queue_url=queue_url)
    tenant = AutoSync(config, instance)
    put(s3, bucket, {"t1/report.txt": "the tenant's report\n", "t1/ignored.txt": "no metadata file\n"})
    _, runs = tenant.tick()
    assert runs == []  # plain uploads do not trigger in metadata mode
    meta = {
        "version": "chroma-v1",
        "id": "report-1",
        "path": "t1/report.txt",
        "target_collection_name": "tenant-one",
        "metadata": {"year": 2024},
    }
    put(s3, bucket, {"t1/report.meta.json": json.dumps(meta)})
    _, runs = tenant.tick()
    assert [run.success for run in runs] == [True]
    assert instance.get_dynamic_partitions(partitions_name("docs")) == ["t1/report.meta.json"]
    found = tenant.collection("tenant-one").get(where={"object_key": "t1/report.txt"}, include=["metadatas"])
    assert found["ids"] == ["report-1-0"]
    assert found["metadatas"][0]["year"] == 2024 and found["metadatas"][0]["metadata_key"] == "t1/report.meta.json"
    assert tenant.latest("t1/report.meta.json")["document_key"] == "t1/report.txt"

    # The metadata file now routes the document elsewhere: the old collection loses its chunks.
    put(s3, bucket, {"t1/report.meta.json": json.dumps(meta | {"target_collection_name": "tenant-one-b"})})
    _, runs = tenant.tick()
    assert [run.success for run in runs] == [True]
    assert tenant.collection("tenant-one").get(where={"object_key": "t1/report.txt"})["ids"] == []
    assert tenant.collection("tenant-one-b").get(where={"object_key": "t1/report.txt"})["ids"] == ["report-1-0"]

    # A second document routed by its metadata file; deleting that file removes the chunks from the target.
    put(
        s3,
        bucket,
        {
            "t1/other.txt": "another report\n",
            "t1/other.meta.json": json.dumps(meta | {"id": "o", "path": "t1/other.txt"}),
        },
    )
    _, runs = tenant.tick()
    assert tenant.collection("tenant-one").get(where={"object_key": "t1/other.txt"})["ids"] == ["o-0"]
    s3.delete_object(Bucket=bucket, Key="t1/other.meta.json")
    _, runs = tenant.tick()
    assert [run.success for run in runs] == [True]
    assert (
        tenant.collection("tenant-one").get(where={"object_key": "t1/other.txt"})["ids"] == []
    )  # its metadata file went

    # Re-uploading a document in metadata mode does not index it on its own.
    s3.delete_object(Bucket=bucket, Key="t1/ignored.txt")
    put(s3, bucket, {"t1/ignored.txt": "still no metadata file\n"})
    tenant.tick()
    assert tenant.collection().get(where={"object_key": "t1/ignored.txt"})["ids"] == []

    # Deleting the document removes its chunks, though only its metadata file was a partition.
    s3.delete_object(Bucket=bucket, Key="t1/report.txt")
    _, runs = tenant.tick()
    assert [run.success for run in runs] == [True]
    assert tenant.collection("tenant-one-b").get(where={"object_key": "t1/report.txt"})["ids"] == []

    bad = {"version": "chroma-v1", "id": "x", "path": "t2/other-tenant.txt"}
    put(s3, bucket, {"t1/evil.meta.json": json.dumps(bad)})
    _, runs = tenant.tick()
    assert [run.success for run in runs] == [False]
    failure = next(e for e in runs[0].all_events if e.is_step_failure).step_failure_data.error.message
    assert (
        "metadata file 't1/evil.meta.json': path 't2/other-tenant.txt' is outside this source's path_prefix 't1/'"
        in failure
    )


def test_sensor_is_on_by_default(direct: AutoSync) -> None:
    assert direct.sensor.default_status == dg.DefaultSensorStatus.RUNNING


def run_events(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType) -> list[Any]:
    return [entry for entry in instance.all_logs(run_id, of_type=kind) if entry.dagster_event is not None]


def tick_and_run_in_background(live: AutoSync) -> tuple[dg.RunRequest, Any, list[dg.ExecuteInProcessResult]]:
    """The sensor's first tick, and its one run started in a thread (it lingers): the request, the thread, and
    the run's result once the thread ends."""
    import threading

    with dg.build_sensor_context(instance=live.instance, resources=live.defs.resources) as context:
        result = sensor_tick(live.sensor, context)
    live.cursor = result.cursor
    [request] = result.run_requests or []
    for partitions in result.dynamic_partitions_requests or []:
        live.instance.add_dynamic_partitions(partitions.partitions_def_name, list(partitions.partition_keys or []))
    outcome: list[dg.ExecuteInProcessResult] = []
    run = threading.Thread(
        target=lambda: outcome.append(
            live.job.execute_in_process(run_config=request.run_config, instance=live.instance, tags=request.tags)
        )
    )
    run.start()
    return request, run, outcome


def test_the_sensors_run_reads_the_queue_after_its_keys_and_the_sensor_leaves_it_to_the_run(
    make_config: ConfigFactory, s3: Any, bucket: str, sqs: Any, queue_url: str, instance: dg.DagsterInstance
) -> None:
    """The default: the tick's run, its keys done, syncs what the queue brings next itself (each key its own
    materialisation and partition, each message deleted once its key is reported); the sensor meanwhile leaves
    the queue to it, and reads it again once the run has seen no event for sqs_linger_seconds."""
    config, _ = make_config(
        bucket, path_prefix="in/", auto_sync="direct", sqs_queue_url=queue_url, sqs_linger_seconds=8
    )
    live = AutoSync(config, instance)
    put(s3, bucket, {"in/first.txt": "the first upload\n"})
    request, run, outcome = tick_and_run_in_background(live)
    assert request.run_config["ops"]["docs_sync_keys"]["config"]["linger_seconds"] == 8
    assert request.tags["s3sync/reads_queue"] == "true"
    deadline = time.monotonic() + 120
    while not live.chunks_or_none("in/first.txt"):
        assert time.monotonic() < deadline and run.is_alive(), "the run's own key was not indexed"
        time.sleep(0.2)
    # The run now reads the queue: later uploads are its, and the sensor leaves the queue alone.
    put(s3, bucket, {"in/second.txt": "the second upload\n", "out/elsewhere.txt": "not the source's\n"})
    time.sleep(1)
    put(s3, bucket, {"in/third.txt": "the third upload\n"})
    result, runs = live.tick()  # it waits for the run to stop (READER_WAIT_S, under the run's 8 s), then skips
    assert runs == [] and result.skip_reason is not None
    assert "reads the queue" in (result.skip_reason.skip_message or ""), result.skip_reason
    run.join(timeout=120)
    assert not run.is_alive() and outcome and outcome[0].success
    run_id = outcome[0].run_id
    materialized = {
        entry.dagster_event.partition
        for entry in run_events(instance, run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
    }
    assert materialized == {keys.to_partition_key(k) for k in ("in/first.txt", "in/second.txt", "in/third.txt")}
    assert set(instance.get_dynamic_partitions(partitions_name("docs"))) == materialized
    assert list(live.chunks("in/third.txt").values()) == ["the third upload\n"]
    said = [entry.user_message for entry in instance.all_logs(run_id)]
    assert any("stopped reading its queue: no S3 event for 8 s" in line for line in said), said
    # The run's messages are gone (the first tick's with the next tick); the sensor reads the queue again.
    put(s3, bucket, {"in/fourth.txt": "the fourth upload\n"})
    result, runs = live.tick()
    assert [run.success for run in runs] == [True]
    assert list(live.chunks("in/fourth.txt").values()) == ["the fourth upload\n"]
    live.tick()
    assert queue_depth(sqs, queue_url) == 0


def test_the_poll_sensors_run_passes_over_the_prefix_after_its_keys_and_the_sensor_leaves_it_to_the_run(
    make_config: ConfigFactory, s3: Any, bucket: str, instance: dg.DagsterInstance
) -> None:
    """The default: the poll tick's run, its keys done, passes over the prefix itself every poll_interval_seconds
    (new, changed and vanished keys synced there, each its own materialisation); the sensor meanwhile leaves the
    prefix to it, and passes over it again once the run's passes have found nothing for poll_linger_seconds."""
    config, _ = make_config(bucket, path_prefix="p/", poll_interval_seconds=1, poll_linger_seconds=4)
    live = AutoSync(config, instance, sensor="poll")
    put(s3, bucket, {"p/first.txt": "the first upload\n", "p/gone.txt": "deleted while the run passes\n"})
    request, run, outcome = tick_and_run_in_background(live)
    assert request.run_config["ops"]["docs_sync_keys"]["config"]["poll_linger_seconds"] == 4
    assert request.tags["s3sync/reads_prefix"] == "true" and "s3sync/reads_queue" not in request.tags
    deadline = time.monotonic() + 120
    while not live.chunks_or_none("p/first.txt"):
        assert time.monotonic() < deadline and run.is_alive(), "the run's own keys were not indexed"
        time.sleep(0.2)
    # The run now passes over the prefix: a new key, a changed one and a deleted one are its.
    put(s3, bucket, {"p/second.txt": "the second upload\n", "p/first.txt": "the first upload, changed\n"})
    s3.delete_object(Bucket=bucket, Key="p/gone.txt")
    while not live.chunks("p/second.txt"):
        assert time.monotonic() < deadline and run.is_alive(), "the run's pass did not sync the new key"
        time.sleep(0.2)
    result, runs = live.tick()
    assert runs == [] and result.skip_reason is not None
    assert "passes over the prefix" in (result.skip_reason.skip_message or ""), result.skip_reason
    run.join(timeout=120)
    assert not run.is_alive() and outcome and outcome[0].success
    run_id = outcome[0].run_id
    materialized = {
        entry.dagster_event.partition
        for entry in run_events(instance, run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
    }
    assert materialized == {keys.to_partition_key(k) for k in ("p/first.txt", "p/gone.txt", "p/second.txt")}
    assert list(live.chunks("p/first.txt").values()) == ["the first upload, changed\n"]
    assert live.chunks("p/gone.txt") == {}
    said = [entry.user_message for entry in instance.all_logs(run_id)]
    assert any("stopped passing over its prefix: no change for 4 s" in line for line in said), said
    # The sensor passes over the prefix again, from where the run's passes left it: only what changed since.
    put(s3, bucket, {"p/third.txt": "the third upload\n"})
    result, runs = live.tick()
    assert [run.success for run in runs] == [True]
    assert runs[0].dagster_run.run_config["ops"]["docs_sync_keys"]["config"]["object_keys"] == ["p/third.txt"]
    assert list(live.chunks("p/third.txt").values()) == ["the third upload\n"]


@pytest.fixture
def polled(make_config: ConfigFactory, bucket: str, instance: dg.DagsterInstance) -> AutoSync:
    config, _ = make_config(bucket, path_prefix="p/", poll_interval_seconds=30, exclude=["*.tmp"])
    return AutoSync(config, instance, sensor="poll")


def test_polling_finds_new_changed_and_vanished_keys(s3: Any, bucket: str, polled: AutoSync) -> None:
    put(s3, bucket, {f"p/file-{n}.txt": f"file {n}\n" for n in range(5)} | {"p/skip.tmp": "x", "q/other.txt": "x"})
    result, runs = polled.tick()
    assert [run.success for run in runs] == [True]
    assert polled.collection().count() == 5

    # A pass over the unchanged bucket launches nothing and writes nothing.
    materializations = polled.instance.fetch_materializations(documents_asset_key("docs"), limit=1000).records
    result, runs = polled.tick()
    assert runs == [] and result.skip_reason
    assert polled.instance.fetch_materializations(documents_asset_key("docs"), limit=1000).records == materializations

    put(s3, bucket, {"p/file-1.txt": "file 1, changed\n", "p/file-9.txt": "a new file\n"})
    s3.delete_object(Bucket=bucket, Key="p/file-2.txt")
    _, runs = polled.tick()
    assert [run.success for run in runs] == [True]
    assert list(polled.chunks("p/file-1.txt").values()) == ["file 1, changed\n"]
    assert polled.chunks("p/file-2.txt") == {}
    assert list(polled.chunks("p/file-9.txt").values()) == ["a new file\n"]
    assert polled.collection().count() == 5
    assert polled.latest("p/file-2.txt")["status"] == "removed"


def test_a_pass_over_a_large_listing_spans_ticks(
    s3: Any, bucket: str, polled: AutoSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3sync_dagster.defs.sensors import ticks as sensors

    put(s3, bucket, {f"p/k{n:02d}.txt": f"key {n}\n" for n in range(6)})
    polled.tick()  # the first complete pass
    monkeypatch.setattr(sensors, "LIST_PAGE_SIZE", 2)
    monkeypatch.setattr(sensors, "READ_BUDGET_S", 0.0)  # one page per tick
    s3.delete_object(Bucket=bucket, Key="p/k00.txt")
    ticks = [polled.tick() for _ in range(3)]
    # Deletes are only known once the pass is complete: the third tick reads the last page.
    assert [len(runs) for _, runs in ticks] == [0, 0, 1]
    assert polled.chunks("p/k00.txt") == {}


@pytest.fixture
def tenant(make_config: ConfigFactory, bucket: str, queue_url: str, instance: dg.DagsterInstance) -> AutoSync:
    config, _ = make_config(bucket, path_prefix="t1/", auto_sync="metadata", sqs_queue_url=queue_url)
    return AutoSync(config, instance)


def meta_file(document_id: str, path: str, **fields: Any) -> str:
    return json.dumps({"version": "chroma-v1", "id": document_id, "path": path, **fields})


@pytest.mark.reliability("metadata mode")
def test_a_meta_file_before_its_document_waits_for_it(s3: Any, bucket: str, tenant: AutoSync, fault_row: Row) -> None:
    put(s3, bucket, {"t1/early.meta.json": meta_file("early", "t1/early.txt", metadata={"team": "a"})})
    _, runs = tenant.tick()
    assert [run.success for run in runs] == [True]
    waiting = tenant.latest("t1/early.meta.json")
    assert waiting["status"] == "waiting" and waiting["document_key"] == "t1/early.txt"
    assert "names 't1/early.txt', which is not in the bucket: waiting for it" in waiting["message"]

    # The document's upload completes what its metadata file asked for.
    put(s3, bucket, {"t1/early.txt": "the document arrived after its metadata file\n"})
    _, runs = tenant.tick()
    assert [run.success for run in runs] == [True]
    assert tenant.chunks("t1/early.txt") == {"early-0": "the document arrived after its metadata file\n"}
    indexed = tenant.latest("t1/early.meta.json")
    assert indexed["status"] == "indexed" and indexed["document_key"] == "t1/early.txt"

    # A change of the document refreshes it; its deletion empties it and the metadata file waits again.
    put(s3, bucket, {"t1/early.txt": "a second version of the document\n"})
    tenant.tick()
    assert tenant.chunks("t1/early.txt") == {"early-0": "a second version of the document\n"}
    s3.delete_object(Bucket=bucket, Key="t1/early.txt")
    _, runs = tenant.tick()
    assert [run.success for run in runs] == [True]
    assert tenant.chunks("t1/early.txt") == {}
    assert tenant.latest("t1/early.meta.json")["status"] == "waiting"
    # Documents are never partitions in metadata mode.
    assert tenant.instance.get_dynamic_partitions(partitions_name("docs")) == ["t1/early.meta.json"]
    fault_row.observe({}, tenant.store_chunks())
    fault_row.passed = not tenant.store_chunks()


@pytest.mark.reliability("metadata mode")
def test_each_meta_file_is_its_own_document(s3: Any, bucket: str, tenant: AutoSync, fault_row: Row) -> None:
    put(s3, bucket, {"t1/shared.txt": "one object named by two metadata files\n"})
    put(s3, bucket, {"t1/first.meta.json": meta_file("first", "t1/shared.txt", metadata={"who": "first"})})
    tenant.tick()
    put(s3, bucket, {"t1/second.meta.json": meta_file("second", "t1/shared.txt", metadata={"who": "second"})})
    tenant.tick()
    text = "one object named by two metadata files\n"
    assert tenant.chunks("t1/shared.txt") == {"first-0": text, "second-0": text}
    assert tenant.latest("t1/first.meta.json")["status"] in ("indexed", "unchanged")
    assert tenant.latest("t1/second.meta.json")["status"] == "indexed"

    # Re-syncing either leaves the other alone; deleting one takes only its own chunks.
    put(s3, bucket, {"t1/first.meta.json": meta_file("first", "t1/shared.txt", metadata={"who": "first, again"})})
    tenant.tick()
    assert set(tenant.chunks("t1/shared.txt")) == {"first-0", "second-0"}
    s3.delete_object(Bucket=bucket, Key="t1/second.meta.json")
    tenant.tick()
    assert tenant.chunks("t1/shared.txt") == {"first-0": text}
    assert tenant.latest("t1/second.meta.json")["status"] == "removed"

    # One id, one document: a metadata file cannot take over the id of another that still exists.
    put(s3, bucket, {"t1/thief.meta.json": meta_file("first", "t1/shared.txt", metadata={"who": "thief"})})
    _, runs = tenant.tick()
    assert [run.success for run in runs] == [False]
    failure = next(e for e in runs[0].all_events if e.is_step_failure).step_failure_data.error.message
    assert (
        "metadata file 't1/thief.meta.json': id 'first' is already the id of the document of metadata file "
        "'t1/first.meta.json'" in failure
    )
    found = tenant.collection().get(ids=["first-0"], include=["metadatas"])
    assert found["metadatas"][0]["metadata_key"] == "t1/first.meta.json"
    assert found["metadatas"][0]["who"] == "first, again"
    fault_row.observe({("docs-collection", "first-0"): text}, tenant.store_chunks())
    assert tenant.chunks("t1/shared.txt") == {"first-0": text}
    fault_row.passed = True


@pytest.fixture
def polled_tenant(make_config: ConfigFactory, bucket: str, queue_url: str, instance: dg.DagsterInstance) -> AutoSync:
    config, _ = make_config(
        bucket, path_prefix="t1/", auto_sync="metadata", sqs_queue_url=queue_url, poll_interval_seconds=30
    )
    return AutoSync(config, instance, sensor="poll")


def test_polling_in_metadata_mode_indexes_only_through_meta_files(
    s3: Any, bucket: str, polled_tenant: AutoSync
) -> None:
    put(
        s3,
        bucket,
        {
            "t1/plain.txt": "no metadata file names me\n",
            "t1/named.txt": "a metadata file names me\n",
            "t1/named.meta.json": meta_file("named-doc", "t1/named.txt", metadata={"k": 1}),
        },
    )
    _, runs = polled_tenant.tick()
    assert all(run.success for run in runs)
    assert polled_tenant.collection().get()["ids"] == ["named-doc-0"]  # the id its metadata file gave
    assert polled_tenant.instance.get_dynamic_partitions(partitions_name("docs")) == ["t1/named.meta.json"]
    # A pass over the unchanged bucket launches nothing, and a re-sync finds the document unchanged.
    _, runs = polled_tenant.tick()
    assert runs == []
    put(s3, bucket, {"t1/named.txt": "a metadata file names me, changed\n"})
    _, runs = polled_tenant.tick()
    assert all(run.success for run in runs)
    assert polled_tenant.chunks("t1/named.txt") == {"named-doc-0": "a metadata file names me, changed\n"}


@pytest.mark.reliability
def test_messages_outlive_a_tick_whose_runs_were_never_stored(
    make_config: ConfigFactory,
    s3: Any,
    bucket: str,
    queue_url: str,
    sqs: Any,
    instance: dg.DagsterInstance,
    fault_row: Row,
) -> None:
    """The daemon dies after the sensor returned, before it stored the run requests: the messages were not
    deleted, come back after the visibility timeout, and are synced then (the daemon test kills for real)."""
    config, _ = make_config(bucket, auto_sync="direct", sqs_queue_url=queue_url, sqs_visibility_timeout_seconds=10)
    live = AutoSync(config, instance)
    put(s3, bucket, {f"lost-{n}.txt": f"event {n} must not be lost\n" for n in range(3)})
    with dg.build_sensor_context(instance=instance, resources=live.defs.resources) as context:
        lost = sensor_tick(live.sensor, context)  # its result (runs and cursor) never reaches the instance
    assert isinstance(lost, dg.SensorResult) and lost.run_requests
    assert queue_depth(sqs, queue_url) >= 3
    deadline = time.monotonic() + 60
    runs: list[dg.ExecuteInProcessResult] = []
    while not runs and time.monotonic() < deadline:
        _, runs = live.tick()
    assert [run.success for run in runs] == [True]
    assert live.collection().count() == 3
    live.tick()  # sees the runs, deletes their messages
    assert queue_depth(sqs, queue_url) == 0
    expected = {
        ("docs-collection", keys.chunk_id(keys.object_id(f"lost-{n}.txt"), 0)): f"event {n} must not be lost\n"
        for n in range(3)
    }
    fault_row.observe(expected, live.store_chunks())
    assert {(c, i): text for c, i, text in live.store_chunks()} == expected
    fault_row.passed = True


def test_discover_and_sync_all_in_metadata_mode_index_only_through_meta_files(
    make_config: ConfigFactory, s3: Any, bucket: str, queue_url: str, instance: dg.DagsterInstance
) -> None:
    from s3sync_dagster.commands.runs import runner

    config, _ = make_config(bucket, path_prefix="t1/", auto_sync="metadata", sqs_queue_url=queue_url)
    put(
        s3,
        bucket,
        {
            "t1/plain.txt": "no metadata file names me\n",
            "t1/named.txt": "a metadata file names me\n",
            "t1/named.meta.json": meta_file("named-doc", "t1/named.txt", metadata={"k": 1}),
        },
    )
    assert runner.discover(config, "docs", instance).new_keys == ["t1/named.meta.json"]
    first = runner.sync(config, "docs", instance)
    assert [(r["object_key"], r["status"]) for r in first.reports] == [("t1/named.meta.json", "indexed")]
    found = ChromaResource(path=config.chroma.path).client().get_collection("docs-collection").get()
    assert found["ids"] == ["named-doc-0"] and found["metadatas"][0]["k"] == 1
    # Re-runs find it current; a document asked for by name is synced through its metadata file.
    again = runner.sync(config, "docs", instance)
    assert [r["status"] for r in again.reports] == ["unchanged"]
    by_document = runner.sync(config, "docs", instance, ["t1/named.txt"])
    assert [(r["object_key"], r["status"]) for r in by_document.reports] == [("t1/named.meta.json", "unchanged")]
    with pytest.raises(runner.UsageError, match=r"object 't1/plain\.txt' is indexed only through a \.meta\.json file"):
        runner.sync(config, "docs", instance, ["t1/plain.txt"])


# --- every shape of S3 event, in both modes ------------------------------------------------------------


@pytest.fixture
def events_client(moto_endpoint: str) -> Any:
    return boto3.client("events", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def sns_client(moto_endpoint: str) -> Any:
    return boto3.client("sns", endpoint_url=moto_endpoint, region_name="us-east-1")


def queue_arn(sqs: Any, url: str) -> str:
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def eventbridge_queue(sqs: Any, events_client: Any, s3: Any, bucket_name: str, queue_name: str) -> str:
    """A queue that receives the bucket's events as Amazon EventBridge delivers them: S3 -> the default
    event bus -> a rule for this bucket (every detail-type) -> the queue."""
    url = str(sqs.create_queue(QueueName=queue_name)["QueueUrl"])
    s3.put_bucket_notification_configuration(
        Bucket=bucket_name, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    pattern = {"source": ["aws.s3"], "detail": {"bucket": {"name": [bucket_name]}}}
    events_client.put_rule(Name=queue_name, EventPattern=json.dumps(pattern))
    events_client.put_targets(Rule=queue_name, Targets=[{"Id": "queue", "Arn": queue_arn(sqs, url)}])
    return url


MODES = ["direct", "metadata"]


def document(mode: str, object_key: str, text: str) -> tuple[dict[str, bytes | str], str, str]:
    """(objects to upload, the key whose partition records the document's sync, its chunk id) in a mode:
    in metadata mode a `.meta.json` names the document and gives it its id."""
    if mode == "direct":
        return {object_key: text}, object_key, keys.chunk_id(keys.object_id(object_key), 0)
    meta_key = object_key.rsplit(".", 1)[0] + ".meta.json"
    document_id = object_key.rsplit("/", 1)[-1].split(".")[0]
    return {object_key: text, meta_key: meta_file(document_id, object_key)}, meta_key, f"{document_id}-0"


@pytest.mark.parametrize("mode", MODES)
def test_eventbridge_created_indexes_and_deleted_removes(
    mode: str,
    make_config: ConfigFactory,
    s3: Any,
    sqs: Any,
    events_client: Any,
    bucket: str,
    instance: dg.DagsterInstance,
) -> None:
    url = eventbridge_queue(sqs, events_client, s3, bucket, f"{bucket}-eventbridge")
    config, _ = make_config(bucket, path_prefix="in/", auto_sync=mode, sqs_queue_url=url)
    auto = AutoSync(config, instance)
    files, partition_object, chunk = document(mode, "in/report.txt", "a report that arrived through EventBridge\n")
    put(s3, bucket, files | {"out/elsewhere.txt": "outside the prefix\n"})
    _, runs = auto.tick()
    assert [run.success for run in runs] == [True]
    assert auto.chunks("in/report.txt") == {chunk: "a report that arrived through EventBridge\n"}
    assert auto.latest(partition_object)["status"] == "indexed"

    # "Object Tags Added": understood, nothing to sync, and consumed.
    s3.put_object_tagging(Bucket=bucket, Key="in/report.txt", Tagging={"TagSet": [{"Key": "team", "Value": "a"}]})
    _, runs = auto.tick()
    assert runs == []

    s3.delete_object(Bucket=bucket, Key="in/report.txt")
    _, runs = auto.tick()
    assert [run.success for run in runs] == [True]
    assert auto.chunks("in/report.txt") == {}
    assert auto.latest(partition_object)["status"] == ("removed" if mode == "direct" else "waiting")
    auto.tick()
    assert queue_depth(sqs, url) == 0
    assert auto.store_chunks() == []


@pytest.mark.parametrize("mode", MODES)
def test_a_redelivered_eventbridge_event_changes_nothing(
    mode: str,
    make_config: ConfigFactory,
    s3: Any,
    sqs: Any,
    events_client: Any,
    bucket: str,
    instance: dg.DagsterInstance,
) -> None:
    url = eventbridge_queue(sqs, events_client, s3, bucket, f"{bucket}-eventbridge")
    config, _ = make_config(bucket, path_prefix="in/", auto_sync=mode, sqs_queue_url=url)
    auto = AutoSync(config, instance)
    files, partition_object, chunk = document(mode, "in/a.txt", "alpha\n")
    put(s3, bucket, files)
    peeked = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=0)
    bodies = [message["Body"] for message in peeked["Messages"]]
    # moto's PutObject also sends "Object Tags Added"; every event is delivered again below.
    assert sum(json.loads(body)["detail-type"] == "Object Created" for body in bodies) == len(files), bodies
    _, runs = auto.tick()
    assert [run.success for run in runs] == [True]
    before = auto.store_chunks()
    assert [(chunk_id, text) for _, chunk_id, text in before] == [(chunk, "alpha\n")]
    for body in bodies:  # EventBridge delivers at least once: the same events again
        sqs.send_message(QueueUrl=url, MessageBody=body)
    _, runs = auto.tick()
    assert [run.success for run in runs] == [True]
    assert auto.store_chunks() == before  # no duplicate, nothing rewritten
    assert auto.latest(partition_object)["status"] == "unchanged"
    auto.tick()
    assert queue_depth(sqs, url) == 0


@pytest.mark.parametrize("mode", MODES)
def test_sns_wrapped_notifications_and_eventbridge_events(
    mode: str,
    make_config: ConfigFactory,
    s3: Any,
    sqs: Any,
    sns_client: Any,
    events_client: Any,
    bucket: str,
    instance: dg.DagsterInstance,
) -> None:
    """S3 -> SNS -> SQS, and S3 -> EventBridge -> SNS -> SQS: the EventBridge events are real ones (S3 to a
    rule to a queue, in moto); the test publishes them to the topic as EventBridge's SNS target would
    (moto's EventBridge has no SNS target). SNS wraps both in its envelope on the way to the queue."""
    topic = sns_client.create_topic(Name=f"{bucket}-topic")["TopicArn"]
    url = str(sqs.create_queue(QueueName=f"{bucket}-sns")["QueueUrl"])
    sns_client.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn(sqs, url))
    captured = eventbridge_queue(sqs, events_client, s3, bucket, f"{bucket}-captured")
    via_eventbridge, eventbridge_partition, eventbridge_chunk = document(mode, "in/bridged.txt", "via EventBridge\n")
    put(s3, bucket, via_eventbridge)
    bridged = sqs.receive_message(QueueUrl=captured, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    created = [m for m in bridged if json.loads(m["Body"])["detail-type"] == "Object Created"]
    assert len(created) == len(via_eventbridge)  # and moto's "Object Tags Added" of each PutObject
    # Now the bucket notifies the topic (S3 sends it an s3:TestEvent first).
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": topic, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
        },
    )
    via_notification, notification_partition, notification_chunk = document(mode, "in/notified.txt", "via SNS\n")
    put(s3, bucket, via_notification)
    for message in bridged:
        sns_client.publish(TopicArn=topic, Message=message["Body"])
    config, _ = make_config(bucket, path_prefix="in/", auto_sync=mode, sqs_queue_url=url)
    auto = AutoSync(config, instance)
    _, runs = auto.tick()
    assert [run.success for run in runs] == [True]
    assert auto.chunks("in/bridged.txt") == {eventbridge_chunk: "via EventBridge\n"}
    assert auto.chunks("in/notified.txt") == {notification_chunk: "via SNS\n"}
    assert auto.latest(eventbridge_partition)["status"] == auto.latest(notification_partition)["status"] == "indexed"
    auto.tick()
    assert queue_depth(sqs, url) == 0  # the test event too


@pytest.mark.parametrize("mode", MODES)
def test_a_message_not_understood_stays_for_the_dead_letter_queue(
    mode: str,
    make_config: ConfigFactory,
    s3: Any,
    sqs: Any,
    bucket: str,
    instance: dg.DagsterInstance,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Good messages around it are synced and deleted; it is reported on each tick that reads it, read
    again only after its visibility timeout, and SQS moves it to the dead-letter queue after
    maxReceiveCount receives. The s3:TestEvent S3 sends first is understood and deleted."""
    dead_letters = str(sqs.create_queue(QueueName=f"{bucket}-dlq")["QueueUrl"])
    redrive = {"deadLetterTargetArn": queue_arn(sqs, dead_letters), "maxReceiveCount": "2"}
    url = str(
        sqs.create_queue(QueueName=f"{bucket}-main", Attributes={"RedrivePolicy": json.dumps(redrive)})["QueueUrl"]
    )
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": queue_arn(sqs, url), "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}
            ]
        },
    )
    config, _ = make_config(
        bucket, path_prefix="in/", auto_sync=mode, sqs_queue_url=url, sqs_visibility_timeout_seconds=10
    )
    auto = AutoSync(config, instance)
    first, first_partition, first_chunk = document(mode, "in/first.txt", "before the stranger\n")
    put(s3, bucket, first)
    unknown = {
        sqs.send_message(QueueUrl=url, MessageBody=body)["MessageId"]: body
        for body in ["hello, not an S3 event", json.dumps({"token": TEST_SECRET, "note": "no S3 event"})]
    }
    second, second_partition, second_chunk = document(mode, "in/second.txt", "after the stranger\n")
    put(s3, bucket, second)
    good = 1 + len(first) + len(second)  # the test event and one notification per upload

    result, runs = auto.tick()
    assert [run.success for run in runs] == [True]
    assert auto.chunks("in/first.txt") == {first_chunk: "before the stranger\n"}
    assert auto.chunks("in/second.txt") == {second_chunk: "after the stranger\n"}
    [pending] = json.loads(auto.cursor or "")["pending"]
    assert len(pending["receipt_handles"]) == good  # the bookkeeping holds the good messages only
    log = capsys.readouterr().err
    assert "message body is not JSON" in log and "neither an S3 event notification" in log
    assert all(f"SQS message {message_id} is not an S3 event" in log for message_id in unknown)
    assert TEST_SECRET not in log

    result, runs = auto.tick()  # deletes the good ones; the others are invisible until their timeout
    assert runs == [] and queue_depth(sqs, url) == len(unknown)
    assert result.skip_reason and result.skip_reason.skip_message == "no S3 events in the queue"

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # visible again after 10 s: read and reported a second time
        result, runs = auto.tick()
        if result.skip_reason and "not understood" in (result.skip_reason.skip_message or ""):
            break
    assert runs == [] and result.skip_reason
    message = result.skip_reason.skip_message or ""
    assert message.startswith("nothing to sync; 2 SQS message(s) not understood, left on the queue")
    assert all(message_id in message for message_id in unknown)
    assert "(received 2 time(s))" in capsys.readouterr().err
    assert queue_depth(sqs, url) == len(unknown) and queue_depth(sqs, dead_letters) == 0

    while time.monotonic() < deadline and queue_depth(sqs, dead_letters) < len(unknown):
        auto.tick()  # the third receive finds maxReceiveCount reached: SQS moves them on
    assert queue_depth(sqs, url) == 0
    moved = sqs.receive_message(QueueUrl=dead_letters, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    assert sorted(m["Body"] for m in moved) == sorted(unknown.values())
    assert auto.chunks("in/first.txt") == {first_chunk: "before the stranger\n"}
    assert auto.latest(first_partition)["status"] == auto.latest(second_partition)["status"] == "indexed"
