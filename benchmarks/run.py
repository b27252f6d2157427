"""The benchmark suite: `.venv/bin/python -m benchmarks.run` (add `--smoke` for the tiny version CI runs).

Prints the ratios as it goes and writes them, with the machine and date, to benchmarks/RESULTS.md
(raw figures beside it in results.json). Figures are medians of --repeats runs measured side by side
in this one invocation; the spread says how noisy they were.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import log
from benchmarks.latency import queues
from benchmarks.latency import report as latency_report
from benchmarks.latency import upload as latency
from benchmarks.sync import bulk, fixes, incremental
from s3sync_dagster.commands.demo import start

HERE = Path(__file__).resolve().parent


# Where each section's raw figures sit in results.json (section 5 reads section 1's).
RAW_KEYS = {"1": ("bulk", "bulk_measured"), "2": ("incremental",), "3": ("latency",), "4": ("scale",),
            "5": (), "6": ("fixes",), "7": ("retrieval",), "8": (), "9": ("inrun",), "10": (), "11": (), "12": ()}  # fmt: skip
# Measured on their own, always carried over here: section 8 (drift audit, `python -m benchmarks.scale.audit
# WORKDIR`), section 10 (beyond one machine, `python -m benchmarks.scale.cluster`, which writes it) and section 11
# (the model against the CPU's peak, `python -m benchmarks.sync.flops`, its figures in results-flops.json) and
# section 12 (a million keys, `python -m benchmarks.scale.million WORKDIR`).
STANDALONE = {"8", "10", "11", "12"}
CARRIED_NOTE = "_Not measured by the invocation above: carried over from the earlier run that wrote this file"


def earlier_sections(out: Path, skip: set[str]) -> list[str]:
    """The skipped sections as the file at ``out`` has them, each with a line saying where it came from."""
    if not out.is_file():
        return []
    text = out.read_text()
    header = text.split("\n## ", 1)[0]
    measured = re.search(r"Measured (.+?) at commit (\w+)", header)
    origin = f" ({measured.group(1)}, commit {measured.group(2)})" if measured else ""
    carried = []
    for section in re.split(r"\n(?=## \d+\. )", text)[1:]:
        number = section[3:].split(".", 1)[0]
        if number in skip:
            heading, _, body = section.strip().partition("\n")
            body = body.strip()
            # Carried twice, it keeps the run that measured it; a section another module writes (section 10,
            # which dates each part) was never this file's run's to begin with: it stays as it stands.
            if not body.startswith(CARRIED_NOTE) and number not in STANDALONE:
                body = f"{CARRIED_NOTE}{origin}._\n\n{body}"
            carried.append(f"{heading}\n\n{body}")
    return carried


def _origin(text: str, number: str) -> str:
    """Which run measured section ``number`` of a RESULTS.md text: "date, commit abc1234"."""
    header = text.split("\n## ", 1)[0]
    for section in re.split(r"\n(?=## \d+\. )", text)[1:]:
        if section[3:].split(".", 1)[0] == number:
            note = re.search(re.escape(CARRIED_NOTE) + r" \((.+?)\)\._", section)
            if note:
                return note.group(1)
    measured = re.search(r"Measured (.+?) at commit (\w+)", header)
    return f"{measured.group(1)}, commit {measured.group(2)}" if measured else "an earlier run"


def carried_fixes(out: Path, parts: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Section 6's figures for the parts this run does not measure, from the results.json beside ``out``,
    and for each the run that measured it."""
    results_json = out.with_name("results.json")
    earlier = json.loads(results_json.read_text()).get("fixes", {}) if results_json.is_file() else {}
    origin = _origin(out.read_text(), "6") if out.is_file() else "an earlier run"
    figures, carried = {}, {}
    for part in fixes.PARTS:
        if part in parts:
            continue
        if part not in earlier:
            raise SystemExit(f"section 6: {results_json} has no earlier '{part}' figures to carry over: measure it")
        carried[part] = earlier[part].get("measured", origin)
        figures[part] = {**earlier[part], "measured": carried[part]}  # carried again, it still names its run
    return figures, carried


def _earlier_retrieval(out: Path) -> list[dict[str, Any]]:
    """Section 7's budget rows as the results.json beside ``out`` has them (those it carried too), each
    stamped with the run that measured it and that run's corpus; the caller keeps those not measured again."""
    results_json = out.with_name("results.json")
    earlier = json.loads(results_json.read_text()).get("retrieval") if results_json.is_file() else None
    if not earlier:
        return []
    origin = _origin(out.read_text(), "7") if out.is_file() else "an earlier run"
    corpus = {key: earlier["corpus"][key] for key in ("objects", "bytes")}
    carried = []
    for run in [*earlier.get("budgets", []), *earlier.get("carried_budgets", [])]:
        run = {key: value for key, value in run.items() if key != "hybrid"}  # hybrid: measured runs only
        carried.append({**run, "measured": run.get("measured", origin), "corpus": run.get("corpus", corpus)})
    return carried


def earlier_raw(results_json: Path, skip: set[str]) -> dict[str, Any]:
    if not results_json.is_file():
        return {}
    earlier = json.loads(results_json.read_text())
    return {key: earlier[key] for number in skip for key in RAW_KEYS.get(number, ()) if key in earlier}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: keeps the suite working (CI)")
    parser.add_argument("--sizes", default="1000,10000", help="corpus sizes (default 1000,10000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per pipeline for the smallest size")
    parser.add_argument("--peer-repeats", type=int, help="runs of the peer pipeline (default: --repeats)")
    parser.add_argument(
        "--uploads",
        type=int,
        default=30,
        help="latency: single uploads (and as many of the floor's and the run-per-upload source's), 8 s apart in turn",
    )
    parser.add_argument("--burst", type=int, default=100, help="latency: uploads in the burst")
    parser.add_argument(
        "--latency-chroma", default="server,embedded", help="latency: the Chroma targets, the first with the floor"
    )
    parser.add_argument("--idle-seconds", type=float, default=600.0, help="latency: the idle measurement's length")
    parser.add_argument("--inrun-objects", type=int, default=150, help="section 9: text objects synced")
    parser.add_argument("--scale-keys", type=int, default=100_000)
    parser.add_argument("--big-object-mb", type=int, default=200)
    parser.add_argument("--scale-repeats", type=int, default=3, help="repeats of each scale key step")
    parser.add_argument("--moto-keys", type=int, default=5_000, help="keys for the scale steps over moto")
    parser.add_argument("--big-budget-s", type=float, default=1800.0, help="time for the big-object model runs")
    parser.add_argument("--retrieval-files", type=int, default=600, help="real documentation and stdlib files")
    parser.add_argument("--retrieval-probes", type=int, default=600, help="known-item queries per budget")
    parser.add_argument(
        "--retrieval-budgets", default="none", help="chunking.max_tokens per sync, 'none' for no budget: none,256,128"
    )
    parser.add_argument("--retrieval-before", help="git revision whose engine syncs the retrieval corpus as 'before'")
    parser.add_argument(
        "--retrieval-semantic", type=int, default=160, help="semantic probes drawn (hybrid search, section 7)"
    )
    parser.add_argument(
        "--retrieval-paraphrase", type=int, help="paraphrase probes asked (hybrid search, section 7; default: all)"
    )
    parser.add_argument(
        "--retrieval-latency-chunks",
        type=int,
        default=100_000,
        help="chunks of the synthetic collection section 7 times queries on",
    )
    parser.add_argument(
        "--bulk-before", help="git revision whose engine (A0) and s3sync (B0) sync the bulk corpus as 'before'"
    )
    parser.add_argument("--skip", default="", help="sections to skip, e.g. 3,4,6")
    parser.add_argument(
        "--fixes-parts",
        default=",".join(fixes.PARTS),
        help="section 6: the parts to measure; the others are carried over from the results.json beside --out",
    )
    parser.add_argument(
        "--scale-json",
        help="section 4 from an earlier `python -m benchmarks.scale.many_keys` run's JSON instead of measuring",
    )
    parser.add_argument(
        "--bulk-json",
        help="section 1 from an earlier run's results.json (its --workdir kept) instead of measuring; "
        "sections 2 and 5 go on from it",
    )
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--workdir", help="where buckets' copies, stores and instances go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats, args.uploads, args.scale_keys, args.big_object_mb = "24", 1, 1, 200, 1
        args.burst = 3
        args.retrieval_files, args.retrieval_probes, args.retrieval_budgets = 12, 24, "none"
        args.retrieval_semantic, args.retrieval_latency_chunks, args.retrieval_paraphrase = 4, 2000, 2
    sizes = [int(size) for size in args.sizes.split(",")]
    skip = {section.strip() for section in args.skip.split(",") if section.strip()} | STANDALONE
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="s3sync-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    common.credentials()
    with_peer = bulk.peer_available()
    if not with_peer:
        log("LlamaIndex is not installed (pip install -e '.[bench]'): the peer pipeline C is skipped")
    machine = common.machine()
    sections: list[str] = []
    raw: dict[str, Any] = {"machine": machine, "argv": sys.argv[1:] if argv is None else argv}

    # Sections this invocation skips keep what an earlier run wrote to the same file, marked as such.
    carried = earlier_sections(Path(args.out), skip)
    raw.update(earlier_raw(Path(args.out).with_name("results.json"), skip))
    fixes_parts = [part.strip() for part in args.fixes_parts.split(",") if part.strip()]
    earlier_fixes, fixes_carried = ({}, {}) if "6" in skip else carried_fixes(Path(args.out), fixes_parts)
    earlier_retrieval = [] if "7" in skip else _earlier_retrieval(Path(args.out))

    def write() -> None:
        # After every section, so a long run that is stopped part-way keeps what it measured.
        header = [
            "# Benchmark results",
            "",
            f"Measured {machine['date']} at commit {machine['commit']} with "
            f"`.venv/bin/python -m benchmarks.run {' '.join(raw['argv'])}`.",
            f"Machine: {machine['cpu']}, {machine['memory']} RAM, Python {machine['python']}, {machine['os']}.",
        ]
        if "bulk_measured" in raw:
            earlier = raw["bulk_measured"]
            header.append(
                f"Section 1 (and section 5, which reads its figures) was measured on this machine by an earlier "
                f"invocation, {earlier['machine']['date']} at commit {earlier['machine']['commit']}, with "
                f"`python -m benchmarks.run {' '.join(earlier['argv'])}`; the other sections went on from its instance and stores."
            )
        ordered = sorted([*sections, *carried], key=lambda section: int(section[3:].split(".", 1)[0]))
        Path(args.out).write_text("\n\n".join(["\n".join(header), *ordered]) + "\n")
        Path(args.out).with_name("results.json").write_text(json.dumps(raw, indent=2, default=str))

    server = start()
    try:
        bulks: list[dict[str, Any]] | None = None
        if args.bulk_json:
            bulks = bulk.earlier_bulks(Path(args.bulk_json), server.endpoint_url, raw)
        elif "1" not in skip or "2" not in skip or "5" not in skip:
            bulks = [
                bulk.bulk(
                    server.endpoint_url,
                    workdir,
                    size,
                    args.repeats if n == 0 else 1,
                    with_peer,
                    (args.peer_repeats or args.repeats) if n == 0 else 1,
                    args.bulk_before if n == 0 else None,
                )
                for n, size in enumerate(sizes)
            ]
        if bulks is not None:
            raw["bulk"] = [{k: v for k, v in result.items() if k != "keys"} for result in bulks]
            sections.append(bulk.section_markdown(bulks))
            write()
            for result in bulks:
                median = result["median"]
                log(
                    f"{result['size']} objects: B/A = {median['A']['seconds'] / median['B']['seconds']:.2f}"
                    + (f", B/C = {median['C']['seconds'] / median['B']['seconds']:.2f}" if "C" in median else "")
                )
            largest = bulks[-1]
            if "2" not in skip and largest["last_b"]:
                config_b, home = (Path(path) for path in largest["last_b"])
                result = incremental.measure(
                    common.s3_client(server.endpoint_url), largest["bucket"], config_b, home, largest["keys"]
                )
                raw["incremental"] = result
                sections.append(incremental.section_markdown(result, largest["median"]["B"]["seconds"]))
                write()
                log(f"incremental: {result}")
        if "5" not in skip and bulks is not None:
            sections.append(bulk.profile_markdown(bulks[-1]))
            write()
        if "6" not in skip:
            result = fixes.measure(
                24 if args.smoke else 1000, 4 if args.smoke else 128, 10 if args.smoke else 100, fixes_parts
            )
            for figures in result.values():
                figures["measured"] = f"{machine['date']}, commit {machine['commit']}"
            raw["fixes"] = {**earlier_fixes, **result}
            sections.append(fixes.section_markdown(raw["fixes"], bulk.sync_ms_per_key(raw), fixes_carried))
            write()
            log(f"fixes: {result}")
        if "3" not in skip:
            from benchmarks.servers.requests_log import proxied

            latencies: dict[str, Any] = {}
            for chroma in args.latency_chroma.split(","):
                requests = workdir / f"latency-{chroma}-requests.log"
                first = not latencies  # the idle figures and the run-per-upload source: once, with the first target
                with proxied(server.endpoint_url, requests) as endpoint:
                    latencies[chroma] = latency.measure(
                        endpoint, workdir / f"latency-{chroma}", args.uploads,
                        spacing_s=1.0 if args.smoke else 8.0, burst=args.burst, chroma=chroma, cold=first,
                        idle_s=(5.0 if args.smoke else args.idle_seconds) if first else 0.0, requests_log=requests,
                        poll=first,
                    )  # fmt: skip
                (workdir / f"latency-{chroma}.json").write_text(
                    json.dumps(latencies[chroma])
                )  # kept if a later one fails
                log(
                    f"latency ({chroma}): p50 {latencies[chroma]['median_s']:.2f} s, p95 {latencies[chroma]['p95_s']:.2f} s"
                )
            raw["latency"] = latencies
            # The four-source subsection (python -m benchmarks.latency.queues) is measured apart: kept as it stands.
            sections.append(latency_report.section_markdown(latencies) + queues.earlier(Path(args.out)))
            write()
        if "4" not in skip:
            from benchmarks.scale import many_keys as scale

            if args.scale_json:
                result = json.loads(Path(args.scale_json).read_text())
                log(f"section 4 from {args.scale_json} (measured earlier by python -m benchmarks.scale.many_keys)")
            else:
                result = scale.measure(
                    workdir / "scale", args.scale_keys, args.big_object_mb, smoke=args.smoke,
                    repeats=args.scale_repeats, moto_keys=args.moto_keys, big_budget_s=args.big_budget_s,
                )  # fmt: skip
            raw["scale"] = result
            sections.append(scale.section_markdown(result))
            write()
        if "9" not in skip:
            from benchmarks.sync import inrun

            result = inrun.measure(server.endpoint_url, workdir / "inrun", 20 if args.smoke else args.inrun_objects)
            raw["inrun"] = result
            sections.append(inrun.section_markdown(result))
            write()
            log(f"in-run embedding: {result['ratio']:.2f}x the bare function")
        if "7" not in skip:
            from benchmarks.retrieval import chunks as retrieval

            result = retrieval.measure(
                server.endpoint_url, workdir / "retrieval", retrieval.parse_budgets(args.retrieval_budgets),
                args.retrieval_files, args.retrieval_probes,
                max_bytes=retrieval.SMOKE_MAX_BYTES if args.smoke else retrieval.MAX_BYTES,
                before=args.retrieval_before, semantic=args.retrieval_semantic,
                latency_chunks=args.retrieval_latency_chunks, paraphrase=args.retrieval_paraphrase,
            )  # fmt: skip
            # Budgets not measured again keep their earlier rows, marked with the run that measured them.
            measured = {run["label"] for run in result["budgets"]}
            result["carried_budgets"] = [run for run in earlier_retrieval if run["label"] not in measured]
            raw["retrieval"] = result
            sections.append(retrieval.section_markdown(result))
            write()
            for run in result["budgets"]:
                thirds = {third: group["recall_at_5"] for third, group in run["probes"]["by_third"].items()}
                log(f"retrieval, max_tokens {run['label']}: recall@5 by third {thirds}")
    finally:
        server.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
