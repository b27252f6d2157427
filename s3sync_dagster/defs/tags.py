"""The run tags this project reads and writes, in one place: which source a run syncs, why, and which keys."""

SOURCE_TAG = "s3sync/source"  # the source a run syncs
TRIGGER_TAG = "s3sync/trigger"  # why: sync, repair, poll, sqs:direct, sqs:metadata (UI runs carry none)
INVOCATION_TAG = "s3sync/invocation"  # set on runs `s3sync invoke` made
# On the SQS sensor's run that reads the queue itself after its keys (defs/runs/linger.py): the sensor leaves it the queue.
LINGER_TAG = "s3sync/reads_queue"
# On the poll sensor's run that passes over the prefix itself after its keys: the sensor leaves it the prefix.
PREFIX_LINGER_TAG = "s3sync/reads_prefix"
# On a run the `s3sync` command executes in its own process (no run worker records a pid): that process's pid,
# so the run monitor (defs/sensors/monitor.py) fails the run once the process is gone.
PROCESS_TAG = "s3sync/process"
# On a failed run whose failure the run monitor reported again because Dagster's run retries missed it
# (defs/sensors/monitor.py): when, epoch seconds. Once per run.
RETRY_NUDGED_TAG = "s3sync/retry_nudged"
# Dagster's own tags: a run of one partition, of a range of partitions (many keys in one run), of a backfill.
PARTITION_TAG = "dagster/partition"
BACKFILL_TAG = "dagster/backfill"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# Set by Dagster on a failed run: whether its run retries will retry it, and the retry's run id once made.
WILL_RETRY_TAG = "dagster/will_retry"
AUTO_RETRY_RUN_TAG = "dagster/auto_retry_run_id"
# On a run that reads the queues of other SQS sources beside its own (defs/sensors/queues.py): their names, comma-separated.
READS_QUEUES_TAG = "s3sync/reads_queues_of"
