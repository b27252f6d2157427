"""Embedding inside a run against the bare function on the same texts; and what a run of 20 changed keys costs.

`python -m benchmarks.run` runs it as section 9. Both halves of the pair start in a fresh process, so each
pays its own model load, as a run does: the in-run figure is the sum of the keys' own `embed` timings in
a `s3sync sync --all` run; the bare figure is the same embedding function called on the very texts that
run stored, in the engine's write groups (up to 256 chunks), with nothing else around it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.sync import corpus

TEXT_SUFFIXES = (".txt", ".md", ".py", ".ts", ".go", ".java")
GROUP = 256  # the engine's shared write (pipeline/sync/write.py BATCH_CHUNKS)
CHANGED_KEYS = 20


def _cli(config_file: Path, home: Path, *argv: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [str(common.BIN / "s3sync"), *argv, "--config", str(config_file), "--json"],
        env=dict(os.environ, DAGSTER_HOME=str(home)),
        cwd=common.REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def _materializations(home: Path) -> list[tuple[str, float, dict[str, Any]]]:
    """(run id, timestamp, metadata) of every materialisation on the instance."""
    import dagster as dg

    found = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for record in instance.get_run_records():
            for entry in instance.all_logs(
                record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            ):
                materialization = entry.dagster_event.step_materialization_data.materialization  # type: ignore[union-attr]
                metadata = {name: getattr(value, "value", value) for name, value in materialization.metadata.items()}
                found.append((record.dagster_run.run_id, entry.timestamp, metadata))
    return found


def _run_started(home: Path, run_id: str) -> float:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        return instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)[0].timestamp


def bare(config_file: str, out: str) -> None:
    """In a fresh process: the configured embedding function on every stored chunk text, cold, in write groups."""
    from s3sync_dagster.config import load_config
    from s3sync_dagster.defs.resources import chroma_resource

    config = load_config(config_file)
    texts = chroma_resource(config.chroma).client().get_collection(config.sources[0].collection_name).get()["documents"]
    texts = sorted(set(texts or []))  # each distinct text once, as the engine embeds them
    function = config.embedding.spec().build()
    started = time.perf_counter()
    for start in range(0, len(texts), GROUP):
        function(texts[start : start + GROUP])
    Path(out).write_text(json.dumps({"texts": len(texts), "seconds": time.perf_counter() - started}))


def measure(endpoint_url: str, workdir: Path, objects: int = 150) -> dict[str, Any]:
    common.credentials()
    generated = corpus.generate(objects * 3, seed=11, prefix="inrun/")
    texts = dict(list({k: v for k, v in generated.items() if k.endswith(TEXT_SUFFIXES)}.items())[:objects])
    s3 = common.s3_client(endpoint_url)
    common.fill_bucket(s3, "inrun", texts)
    config_file = common.write_config(workdir / "inrun.yaml", endpoint_url, "inrun", workdir / "chroma")
    home = common.dagster_home(workdir / "home")
    sync_s = _cli(config_file, home, "sync", "bench", "--all")
    reports = [metadata for _, _, metadata in _materializations(home)]
    in_run_texts = sum(int(report.get("chunks_embedded", 0)) for report in reports)
    in_run_s = sum(float((report.get("timings_s") or {}).get("embed", 0.0)) for report in reports)
    out = workdir / "bare.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.sync.inrun", "bare", str(config_file), str(out)], cwd=common.REPO, check=True
    )
    bare_result = json.loads(out.read_text())

    # 20 neighbouring keys change (one run, as a sensor tick of 20 events makes): run start -> last write.
    changed = sorted(texts)[:CHANGED_KEYS]
    for object_key in changed:
        s3.put_object(Bucket="inrun", Key=object_key, Body=texts[object_key] + b"\nOne more line, changed.\n")
    before = {run_id for run_id, _, _ in _materializations(home)}
    change_s = _cli(config_file, home, "sync", "bench", *[arg for key in changed for arg in ("--key", key)])
    after = [(run_id, at) for run_id, at, _ in _materializations(home) if run_id not in before]
    run_ids = sorted({run_id for run_id, _ in after})
    first_start = min(_run_started(home, run_id) for run_id in run_ids)
    in_run_rate = in_run_texts / in_run_s if in_run_s else 0.0
    bare_rate = bare_result["texts"] / bare_result["seconds"] if bare_result["seconds"] else 0.0
    return {
        "objects": len(texts),
        "sync_all_s": sync_s,
        "in_run": {"texts": in_run_texts, "embed_s": in_run_s, "texts_per_s": in_run_rate},
        "bare": {**bare_result, "texts_per_s": bare_rate},
        "ratio": in_run_rate / bare_rate if bare_rate else 0.0,
        "changed": {
            "keys": len(changed),
            "runs": len(run_ids),
            "run_start_to_last_write_s": max(at for _, at in after) - first_start,
            "command_s": change_s,
        },
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["bare"]:
        bare(sys.argv[2], sys.argv[3])


def section_markdown(result: dict[str, Any]) -> str:
    in_run, bare, changed = result["in_run"], result["bare"], result["changed"]
    return "\n".join(
        [
            "## 9. Embedding inside a run; a run of changed keys",
            "",
            f"{result['objects']} generated text and code objects synced by `s3sync sync --all` in a fresh process "
            f"({result['sync_all_s']:.1f} s): the embedding time the run's keys report against the same embedding "
            "function, in another fresh process, on the very texts the run stored (each distinct text once, in the "
            "engine's write groups). Both pay their own model load, as a run does.",
            "",
            "| | texts | embedding s | texts/s |",
            "| --- | ---: | ---: | ---: |",
            f"| inside the run | {in_run['texts']} | {in_run['embed_s']:.2f} | {in_run['texts_per_s']:.1f} |",
            f"| bare function | {bare['texts']} | {bare['seconds']:.2f} | {bare['texts_per_s']:.1f} |",
            "",
            f"In-run / bare throughput: **{result['ratio']:.2f}**.",
            "",
            f"Then {changed['keys']} neighbouring keys change and `s3sync sync --key ...` syncs them: "
            f"{changed['runs']} run, **{changed['run_start_to_last_write_s']:.1f} s from the run's start to its "
            f"last write** ({changed['command_s']:.1f} s for the whole command, process start included).",
        ]
    )
