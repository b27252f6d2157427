"""Incremental cost after a bulk sync: the poll sensor's pass, the re-sync of what changed, and a pass
over an unchanged bucket, each timed on the bulk sync's own instance and Chroma store.

The sensor is evaluated as the daemon evaluates it, and its run requests are executed in this
process, one after the other (a daemon would start one process per run: add its start-up).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from benchmarks.common import sensor_tick
from s3sync_dagster.config import load_config
from s3sync_dagster.definitions import build_definitions
from s3sync_dagster.defs.names import sync_job_name


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, source: str) -> dict[str, Any]:
    """One full pass of the poll sensor (as many ticks as it takes), then its runs; both timed."""
    sensor = defs.resolve_sensor_def(f"{source}_poll")
    job = defs.resolve_job_def(sync_job_name(source))
    started = time.perf_counter()
    requests: list[dg.RunRequest] = []
    ticks = 0
    while True:
        ticks += 1
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
            result = sensor_tick(sensor, context)
        assert isinstance(result, dg.SensorResult)
        for partitions in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(partitions.partitions_def_name, list(partitions.partition_keys or []))
        requests += result.run_requests or []
        if _pass_done(instance, source) or ticks >= 1000:
            break
    poll_s = time.perf_counter() - started
    started = time.perf_counter()
    keys = 0
    for request in requests:
        keys += len(request.run_config["ops"][next(iter(request.run_config["ops"]))]["config"]["object_keys"])
        job.execute_in_process(
            run_config=request.run_config, instance=instance, tags=request.tags, raise_on_error=False
        )
    return {
        "ticks": ticks,
        "poll_s": poll_s,
        "runs": len(requests),
        "keys": keys,
        "resync_s": time.perf_counter() - started,
    }


def _pass_done(instance: dg.DagsterInstance, source: str) -> bool:
    from s3sync_dagster.defs.state import poll_state

    state = poll_state(instance, source)
    try:
        return state.continuation_token is None
    finally:
        state.close()


def measure(
    s3: Any, bucket: str, config_file: Path, home: Path, object_keys: list[str], seed: int = 11
) -> dict[str, Any]:
    """Runs after `s3sync sync --all` filled the store from `config_file` on the instance in `home`."""
    raw = yaml.safe_load(config_file.read_text())
    raw["sources"][0]["poll_interval_seconds"] = 60
    # Each run ends with its keys: a run passing over the prefix after them (poll_linger_seconds, 60 s by default)
    # would add its quiet minute to the re-sync's time. What lingering buys is measured in section 3.
    raw["sources"][0]["poll_linger_seconds"] = 0
    polled = config_file.with_name("incremental.yaml")
    polled.write_text(yaml.safe_dump(raw))
    config = load_config(polled)
    source = config.sources[0].name
    defs = build_definitions(config)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # The poll state starts empty: the first pass checks every key (all unchanged: a HEAD and one
        # metadata read each, nothing read or written) and records the bucket.
        first = _tick(defs, instance, source)
        rng = random.Random(seed)
        share = max(1, len(object_keys) // 100)  # 1% changed, 1% deleted
        text_keys = sorted(k for k in object_keys if not k.endswith((".docx", ".xlsx", ".pptx", ".pdf")))
        changed = rng.sample(text_keys, share)
        deleted = rng.sample(sorted(set(object_keys) - set(changed)), share)
        for key in changed:  # an appended line: new bytes, new ETag, most chunks the same
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            s3.put_object(Bucket=bucket, Key=key, Body=body + b"\nOne more line, appended.\n")
        for key in deleted:
            s3.delete_object(Bucket=bucket, Key=key)
        after_change = _tick(defs, instance, source)
        unchanged = _tick(defs, instance, source)
    return {
        "objects": len(object_keys),
        "changed": len(changed),
        "deleted": len(deleted),
        "first_pass": first,
        "after_change": after_change,
        "unchanged_pass": unchanged,
    }


def section_markdown(result: dict[str, Any], bulk_seconds: float) -> str:
    after, unchanged, first = result["after_change"], result["unchanged_pass"], result["first_pass"]
    return "\n".join(
        [
            "## 2. Incremental cost",
            "",
            f"After the bulk sync of {result['objects']:,} objects: {result['changed']} changed (a line appended), "
            f"{result['deleted']} deleted. Poll sensor passes on the bulk sync's instance; its runs executed in-process.",
            "",
            "| pass | ticks | poll s | runs | keys | re-sync s |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            f"| first poll after the bulk sync (nothing recorded yet: every key checked) | {first['ticks']} | "
            f"{first['poll_s']:.2f} | {first['runs']} | {first['keys']:,} | {first['resync_s']:.1f} |",
            f"| after 1% changed + 1% deleted | {after['ticks']} | {after['poll_s']:.2f} | {after['runs']} | "
            f"{after['keys']} | {after['resync_s']:.1f} |",
            f"| unchanged bucket | {unchanged['ticks']} | {unchanged['poll_s']:.2f} | {unchanged['runs']} | "
            f"{unchanged['keys']} | {unchanged['resync_s']:.1f} |",
            "",
            f"An unchanged pass launched {unchanged['runs']} runs and cost {unchanged['poll_s']:.2f} s: "
            f"{bulk_seconds / max(unchanged['poll_s'], 1e-3):,.0f}x less than the bulk sync ({bulk_seconds:.1f} s). "
            f"The 2% change cost {after['poll_s'] + after['resync_s']:.1f} s "
            f"({(after['poll_s'] + after['resync_s']) / bulk_seconds * 100:.1f}% of the bulk sync).",
        ]
    )
