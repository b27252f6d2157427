"""Section 10, beyond one machine: `python -m benchmarks.cluster PART --json FILE` (parts: bulk, workers).

bulk: B of section 1 (`s3sync sync SOURCE --all` on the default instance, embedded Chroma) over the
section 1 corpus at 500 objects and at 10,000, one after the other in this one invocation, so the
ratio of their rates says what scale alone costs. About 75 minutes on 2 cores; hence a part of its own,
run when the machine is otherwise idle, and read into RESULTS.md by `benchmarks.run --cluster-json`.

Each part writes its figures into FILE under its own name, keeping the other part's.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import common, corpus, throughput
from s3sync_dagster import local_s3

BULK_SIZES = (500, 10_000)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class LoadSampler:
    """The 1-minute load average every `every_s` while a measurement runs: says how busy the machine was."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {"median": common.median(self.samples), "max": max(self.samples), "samples": len(self.samples)}


def bulk(workdir: Path, sizes: tuple[int, ...] = BULK_SIZES) -> dict[str, Any]:
    """B at each size, in order, each in a fresh process on a fresh instance and store."""
    common.credentials()
    server = local_s3.start()
    results: list[dict[str, Any]] = []
    try:
        s3 = common.s3_client(server.endpoint_url)
        for size in sizes:
            data = corpus.generate(size)
            bucket = f"scale-{size}"
            started = time.perf_counter()
            common.fill_bucket(s3, bucket, data)
            log(f"{size} objects uploaded in {time.perf_counter() - started:.1f} s: {corpus.describe(data)}")
            base = workdir / f"bulk-{size}"
            config = common.write_config(base / "b.yaml", endpoint_url=server.endpoint_url, bucket=bucket,
                                         chroma_path=base / "chroma")  # fmt: skip
            with LoadSampler() as load:
                run = throughput.run_dagster(config, base / "home")
            run.update(throughput.rates(run))
            run.update(size=size, corpus=corpus.describe(data), load=load.summary())
            results.append(run)
            log(f"B {size}: {run['seconds']:.1f} s, {run['objects_s']:.2f} objects/s, load {run['load']}")
            del data
    finally:
        server.stop()
    return {"measured": common.machine(), "runs": results}


def _update(json_file: Path, part: str, figures: dict[str, Any]) -> None:
    earlier = json.loads(json_file.read_text()) if json_file.is_file() else {}
    earlier[part] = figures
    json_file.write_text(json.dumps(earlier, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("part", choices=["bulk"])
    parser.add_argument("--json", required=True, help="where the figures go (other parts' figures are kept)")
    parser.add_argument("--workdir", required=True, help="buckets' stores and instances (kept)")
    parser.add_argument("--sizes", default=",".join(str(size) for size in BULK_SIZES))
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.part == "bulk":
        _update(Path(args.json), "bulk", bulk(workdir, tuple(int(size) for size in args.sizes.split(","))))
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
