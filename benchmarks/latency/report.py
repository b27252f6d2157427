"""Section 3's text: upload -> queryable, from `upload.measure`'s results (one per Chroma target), the floor beside
it, where a run's time goes, and the idle cost."""

from __future__ import annotations

from typing import Any

from benchmarks.latency import upload as latency


def section_markdown(results: dict[str, Any]) -> str:
    """Section 3 from latency.measure's results, one per Chroma target ('server', 'embedded')."""
    rows = []
    for chroma, result in results.items():
        rows.append(
            f"| {chroma} | {result['uploads']} | {result['median_s']:.2f} | {result['p95_s']:.2f} | "
            f"{result['max_s']:.2f} | {result['min_s']:.2f} | {result.get('taken_by_a_reading_run', 0)} | "
            f"{result.get('burst_all_queryable_s', 0):.1f} ({result.get('burst_runs', 0)} run(s)) |"
        )
    lines = [
        "## 3. Latency",
        "",
        "Upload -> queryable with `dagster-daemon` running, the SQS sensor in direct mode and default settings "
        "(`sqs_linger_seconds: 60`: the sensor's run reads the queue itself after its keys), each upload timed from "
        "PutObject's return until a read of the collection finds its chunk. Single uploads after one warm-up, in "
        "turn with the uploads below, each 8 s after the last; then a burst of uploads at once.",
        "",
        "| Chroma | uploads | p50 s | p95 s | max s | min s | taken by a run reading the queue | burst: all "
        "queryable after s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    server = results.get("server") or next(iter(results.values()))
    floor, cold = server.get("floor") or {}, server.get("cold")
    polled = server.get("poll")
    if polled:
        lines += [
            "",
            f"A poll-mode source ({server['chroma']} Chroma, `poll_interval_seconds: {polled['interval_s']}`, default "
            "settings otherwise: its run passes over the prefix itself after its keys, `poll_linger_seconds: 60`), "
            f"after the burst, on its own: {len(polled['all_s'])} single "
            "uploads after a warm-up, each made once the last was queryable (8 s after it at the soonest): right "
            "after a pass, so each waits for nearly a whole interval, the worst case. p50 "
            f"{polled['median_s']:.2f} s, p95 {polled['p95_s']:.2f} s, max {polled['max_s']:.2f} s: **at most the "
            f"interval {polled['max_over_interval_s']:+.2f} s**; {polled['taken_by_a_passing_run']} found by a run "
            f"already passing over the prefix. All: {polled['all_s']}",
        ]
    if floor:
        lines += [
            "",
            f"In the same run ({server['chroma']} Chroma): a source whose every upload is a run of its own "
            "(`sqs_linger_seconds: 0`, the first upload after a quiet minute), and the floor: the same path with an "
            "asset that does nothing (benchmarks/latency/floor.py: its own code location in the same daemon, a "
            "sensor long-polling its own queue as ours does, one partition's run per upload, queued and launched as "
            "ours). The floor's 'chunks written' is its materialisation.",
            "",
            "| | p50 s | p95 s | p50 / floor | p95 / floor |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| ours, default | {server['median_s']:.2f} | {server['p95_s']:.2f} | "
            f"{server['median_s'] / floor['median_s']:.2f}x | {server['p95_s'] / floor['p95_s']:.2f}x |",
        ]
        if cold:
            lines.append(
                f"| ours, a run per upload | {cold['median_s']:.2f} | {cold['p95_s']:.2f} | "
                f"{cold['median_s'] / floor['median_s']:.2f}x | {cold['p95_s'] / floor['p95_s']:.2f}x |"
            )
        lines.append(f"| floor | {floor['median_s']:.2f} | {floor['p95_s']:.2f} | 1.00x | 1.00x |")
        stages = (cold or {}).get("stages_median_s", {})
        floor_stages = floor.get("stages_median_s", {})
        if stages:
            lines += [
                "",
                "Where a run's upload's time goes (a run per upload): median seconds after PutObject at which it "
                "reached each stage, from its run's events.",
                "",
                "| stage | ours, a run per upload | floor |",
                "| --- | ---: | ---: |",
                *[
                    f"| {label} | {stages[name]:.2f} | "
                    + (f"{floor_stages[name]:.2f} |" if name in floor_stages else " |")
                    for name, label in latency.STAGES
                    if name in stages
                ],
                f"| (embedding, duration) | {stages.get('embed_duration', 0.0):.3f} | |",
            ]
    idle = server.get("idle")
    if idle:
        queues = idle.get("queues", {})
        per_queue = ", ".join(
            f"{queues.get(queue, queue)} {rate:.2f}/s" for queue, rate in idle["sqs_requests_per_s_by_queue"].items()
        )
        lines += [
            "",
            f"Idle, after the burst and the poll-mode uploads: {idle['seconds']:.0f} s with no upload, once the runs "
            "reading the queue or passing over the prefix had ended (after their quiet minute), the floor's sensor and "
            "the poll-mode source's (a pass every 10 s) stopped: the two SQS sources. The daemon and s3sync's code "
            "server, and every process under them: "
            f"**{idle['cpu_percent_of_one_core']:.1f}% of one core**; SQS requests per second by queue: {per_queue}.",
        ]
    lines += ["", *[f"All ({chroma}): {result['all_s']}" for chroma, result in results.items()]]
    if cold:
        lines.append(f"A run per upload, all: {cold['all_s']}")
    if floor:
        lines.append(f"Floor, all: {floor['all_s']}")
    return "\n".join(lines)
