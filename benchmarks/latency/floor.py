"""The floor of section 3: Dagster's own way from an S3 event in SQS to a materialised partition, with nothing of
ours in it. A code location of its own, served by the same daemon beside s3sync's: a sensor long-polls its queue
as ours does (the same wait, the same minimum interval) and requests a run of one partition of an asset that does
nothing, queued and launched as ours are. Its run's process imports Dagster and this module only, so the
difference between ours and it is what s3sync adds: its imports, its resources, the work itself.

Read by benchmarks/latency/upload.py through the workspace it writes; the queue and the endpoint come from the
environment (FLOOR_QUEUE_ENV, FLOOR_ENDPOINT_ENV).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any
from urllib.parse import unquote_plus

import boto3
import dagster as dg

# The same pacing as s3sync's SQS sensor (sqs_wait_seconds' default in config/source.py, SQS_TICK_INTERVAL_S in
# defs/sensors/ticks.py), written out: importing them would bring s3sync's imports into this location's run processes.
FIRST_WAIT_S = 19
TICK_INTERVAL_S = 1
FLOOR_QUEUE_ENV = "S3SYNC_FLOOR_QUEUE_URL"
FLOOR_ENDPOINT_ENV = "S3SYNC_FLOOR_ENDPOINT"
SENT_TAG = "floor/sqs_sent_ms"

objects = dg.DynamicPartitionsDefinition(name="floor_objects")


@dg.asset(partitions_def=objects)
def floor() -> dg.MaterializeResult:
    """Nothing: the run's start and end are what is measured."""
    return dg.MaterializeResult()


# In the run's own process, as s3sync's runs execute (defs/executor.py): Dagster's default would start a second one.
floor_job = dg.define_asset_job(
    "floor_job", selection=[floor], partitions_def=objects, executor_def=dg.in_process_executor
)


@functools.cache
def _sqs() -> Any:
    """One client for the process, as s3sync's sensors keep theirs (defs/resources.boto_client)."""
    return boto3.client("sqs", endpoint_url=os.environ[FLOOR_ENDPOINT_ENV], region_name="us-east-1")


@dg.sensor(job=floor_job, minimum_interval_seconds=TICK_INTERVAL_S, default_status=dg.DefaultSensorStatus.RUNNING)
def floor_sqs(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    sqs = _sqs()
    queue_url = os.environ[FLOOR_QUEUE_ENV]
    messages = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=FIRST_WAIT_S, AttributeNames=["SentTimestamp"]
    ).get("Messages", [])
    requests, keys = [], []
    for message in messages:
        sent = message.get("Attributes", {}).get("SentTimestamp", "0")
        for record in json.loads(message["Body"]).get("Records", []):
            key = unquote_plus(record["s3"]["object"]["key"])
            keys.append(key)
            requests.append(dg.RunRequest(run_key=message["MessageId"], partition_key=key, tags={SENT_TAG: sent}))
    if messages:
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)],
        )
    if not requests:
        return dg.SensorResult(skip_reason="no S3 events in the queue")
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=[objects.build_add_request(keys)])


defs = dg.Definitions(assets=[floor], jobs=[floor_job], sensors=[floor_sqs])
