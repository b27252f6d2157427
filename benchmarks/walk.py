"""The walk (issue 65, item 3): which rooms of the code a key's sync and a query pass through, and how often each
is entered again after it was left.

`python -m benchmarks.walk --json FILE` starts a local S3 endpoint, syncs the demo's sample into embedded Chroma
(not traced), changes one object and traces `s3sync sync SOURCE --key KEY` in this process, then traces
`s3sync query SOURCE QUESTION` (answered here, no resident process). A profile hook on every thread records each
function of the package at its first call, in order: those are the walk's *stops*. A stop's *room* is its
module, and its *stage* the engine's sub-package (or the layer, outside the engine). Along the stops, a room is
*entered* when a stop's room differs from the one before; a *return* is an entry into a room already left. Both
layouts are measured with the same script: the engine's flat modules of before issue 65 are mapped to the stage
that holds them now (FLAT_STAGES), so the stage figures compare like with like.

Two readings of "entered". In time (`entries`, `returns`): the stops in the order they come, a room entered each
time a stop's room differs from the one before; a module whose object is used at the start of a run and again at
its end (the worklist, a lexical index) counts twice, as a reader paging back to it would. On the call path
(`in_and_out`): the rooms on the stack when a stop is first called, from the command down; a room is entered
*again* on a path when it calls into another room that (itself or deeper) calls back into it, A -> B -> A: the
in and out the issue names (`lifecycle` in and out of `reembed`). `most_on_one_path` is the most times one room
is on one call path: 1 is a walk with no in and out.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

PACKAGE = "s3sync_dagster"
ENGINE = f"{PACKAGE}.pipeline"
CHANGED_KEY = "samples/notes/recipes.txt"
# Before issue 65 the engine was one folder; each of its modules and the stage (sub-package) that holds it now.
FLAT_STAGES = {
    **dict.fromkeys(("chunk", "cuts", "grammars", "context", "tokens"), "chunking"),
    **dict.fromkeys(("extract", "documents", "conversion", "docling_convert", "ocr", "html_text"), "extraction"),
    **dict.fromkeys(("embed", "embed_runtimes", "default_model", "onnx_minilm", "bert_onnx"), "embedding"),
    **dict.fromkeys(("lexicon", "lexicon_postgres", "terms"), "lexicon"),
    **dict.fromkeys(("keys", "owners", "metadata_rules"), "records"),
    **dict.fromkeys(("objects", "globs", "archive", "roles", "request_settings", "poll", "events", "meta_links"), "s3"),
    **dict.fromkeys(
        ("lifecycle", "stored", "vectors", "claims", "targets", "labels", "cloud_limits", "index"), "chroma"
    ),
    **dict.fromkeys(
        (
            "search",
            "search_dense",
            "search_lexical",
            "search_sparse",
            "search_fusion",
            "search_hits",
            "search_rows",
            "search_filter",
            "where_match",
            "passages",
        ),
        "search",
    ),
    **dict.fromkeys(("sync", "worklist", "staging", "extracting", "fetch", "write", "settle", "reports"), "sync"),
    **dict.fromkeys(("audit", "chunk_drift", "plan", "plan_estimates"), "audit"),
    **dict.fromkeys(("reembed", "reembed_copy", "context_backfill", "leftovers"), "reembed"),
    **dict.fromkeys(("extras", "spec", "store"), None),
}


def stage_of(module: str) -> str:
    """The engine's sub-package a module sits in (either layout), or its layer outside the engine."""
    parts = module.split(".")
    if module.startswith(ENGINE + ".") and len(parts) > 3:
        return f"pipeline.{parts[2]}"
    if module.startswith(ENGINE + "."):
        stage = FLAT_STAGES.get(parts[2])
        return f"pipeline.{stage}" if stage else f"pipeline.{parts[2]}"
    return ".".join(parts[1:3]) if len(parts) > 2 else parts[-1]


def _generated(frame: FrameType) -> bool:
    name = frame.f_code.co_qualname
    return name.startswith("__create_fn__") or name.rpartition(".")[2].startswith("<")


class Tracer:
    """The package's functions at their first call, in order, from every thread."""

    def __init__(self) -> None:
        self.stops: dict[tuple[str, str], None] = {}
        self.paths: dict[tuple[str, str], tuple[str, ...]] = {}
        self.lock = threading.Lock()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(PACKAGE + ".") and module != PACKAGE:
            return
        if _generated(frame):
            return  # a dataclass's generated method, a comprehension, a lambda: no room of its own is entered
        name = frame.f_code.co_qualname
        stop = (module, name)
        if stop not in self.stops:
            # The package's modules on this thread's stack, from its outermost call to this one; a lambda or a
            # comprehension counts in the module that wrote it (a lambda handed to another module is a way back in).
            path = []
            caller: FrameType | None = frame
            while caller is not None:
                if caller.f_globals.get("__name__", "").startswith(PACKAGE + "."):
                    path.append(caller.f_globals["__name__"])
                caller = caller.f_back
            with self.lock:
                self.stops.setdefault(stop, None)
                self.paths.setdefault(stop, tuple(reversed(path)))

    @contextmanager
    def tracing(self) -> Iterator[None]:
        threading.setprofile(self)
        sys.setprofile(self)
        try:
            yield
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]


def entries(rooms: Sequence[str]) -> list[str]:
    """The rooms in the order they are entered: consecutive stops in one room are one entry."""
    return [room for index, room in enumerate(rooms) if index == 0 or rooms[index - 1] != room]


def figures(
    stops: Sequence[tuple[str, str]], paths: Sequence[Sequence[str]], room: Callable[[str], str]
) -> dict[str, Any]:
    """The walk's figures, its rooms as `room` names them. paths: each stop's call path (its modules, outermost
    first), of the modules this part of the walk counts."""
    entered = entries([room(module) for module, _ in stops])
    visits = collections.Counter(entered)
    again: collections.Counter[str] = collections.Counter()  # stops first called inside a call out of their room
    most = 1
    for (_, name), path in zip(stops, paths, strict=True):
        on_path = entries([room(module) for module in path])
        rooms = collections.Counter(on_path)
        most = max(most, *rooms.values()) if rooms else most
        if on_path and rooms[on_path[-1]] > 1:
            again[f"{on_path[-1]}:{name}"] += 1
    return {
        "stops": len(stops),
        "rooms": len(visits),
        "entries": len(entered),
        "returns": len(entered) - len(visits),
        "most_entered": visits.most_common(5),
        "entered_once_or_twice": sum(1 for count in visits.values() if count <= 2),
        "most_on_one_path": most,
        "in_and_out": sorted(again),
    }


def walk(stops: Sequence[tuple[str, str]], paths: Mapping[tuple[str, str], Sequence[str]]) -> dict[str, Any]:
    """The whole command's walk by module, and the engine's (its stops alone, their paths its modules alone) by
    module and by stage."""
    engine = [stop for stop in stops if stop[0].startswith(ENGINE + ".")]
    engine_paths = [[module for module in paths[stop] if module.startswith(ENGINE + ".")] for stop in engine]
    by_module = lambda module: module.removeprefix(PACKAGE + ".")  # noqa: E731
    return {
        "command_by_module": figures(stops, [paths[stop] for stop in stops], by_module),
        "engine_by_module": figures(engine, engine_paths, by_module),
        "engine_by_stage": figures(engine, engine_paths, stage_of),
        "path": [f"{module.removeprefix(PACKAGE + '.')}:{name}" for module, name in stops],
        "call_paths": [[module.removeprefix(PACKAGE + ".") for module in paths[stop]] for stop in stops],
    }


def _first(*modules: str) -> Any:
    """The first of these modules that exists: the same helper in the layout of before and of after issue 65."""
    for name in modules:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(modules[0])


def measure(workdir: Path) -> dict[str, Any]:
    local_s3 = _first(f"{PACKAGE}.commands.demo.local_s3", f"{PACKAGE}.commands.local_s3")
    demo = _first(f"{PACKAGE}.commands.demo.run", f"{PACKAGE}.commands.demo")
    launcher = importlib.import_module(f"{PACKAGE}.commands.launcher")
    os.environ.update(demo.DEMO_CREDENTIALS)
    os.environ["S3SYNC_QUERY_SERVER"] = "0"  # the query answered in this process, where the hook sees it
    home = workdir / "dagster"
    home.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    with local_s3.running() as s3:
        demo.upload_sample(s3.endpoint_url)
        config = str(demo.write_config(workdir, s3.endpoint_url))
        assert launcher.main(["sync", demo.DEMO_SOURCE, "--all", "--config", config]) == 0
        import boto3

        client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1")
        body = client.get_object(Bucket=demo.DEMO_BUCKET, Key=CHANGED_KEY)["Body"].read()
        client.put_object(Bucket=demo.DEMO_BUCKET, Key=CHANGED_KEY, Body=body + b"\nA changed line.\n")
        sync, query = Tracer(), Tracer()
        with sync.tracing():
            code = launcher.main(["sync", demo.DEMO_SOURCE, "--key", CHANGED_KEY, "--config", config])
        assert code == 0, code
        with query.tracing():
            code = launcher.main(["query", demo.DEMO_SOURCE, demo.DEMO_QUERY, "--config", config])
        assert code == 0, code
    return {"sync": walk(list(sync.stops), sync.paths), "query": walk(list(query.stops), query.paths)}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| walk | part, rooms as | stops | rooms | entries | returns | rooms entered once or twice | most entered "
        "| most on one path | in and out |"
    ]
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |")
    for name in ("sync", "query"):
        for kind in ("command_by_module", "engine_by_module", "engine_by_stage"):
            f = result[name][kind]
            most = ", ".join(f"{room} {count}" for room, count in f["most_entered"][:3])
            lines.append(
                f"| {name} | {kind.replace('_by_', ', ')} | {f['stops']} | {f['rooms']} | {f['entries']} | "
                f"{f['returns']} | {f['entered_once_or_twice']} of {f['rooms']} | {most} | {f['most_on_one_path']} | "
                f"{', '.join(f['in_and_out']) or 'none'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.walk", description=__doc__)
    parser.add_argument("--json", type=Path, help="write the figures and both paths here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="s3sync-walk-") as scratch:
        result = measure(Path(scratch))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
