"""The embedding model against the CPU's peak (issue 27, part 3): the FLOP rate each embedding path reaches
beside what matrix products of the model's own shapes reach on the same cores, in one process.

`python -m benchmarks.sync.flops [--texts 1000] [--budget-s 90] [--json benchmarks/results-flops.json]` measures,
writes the JSON and prints the section for benchmarks/RESULTS.md; `python -m benchmarks.sync.flops section
[--json FILE] [--number 11]` prints the section again from the JSON (the file is edited by hand from it).

The peak: for each shape, the best of up to --repeats timed products after one untimed, threads as each
library sets them by default (torch: `torch.get_num_threads()`; ONNX Runtime: one per core). The shapes are
the model's, [M, K] x [K, N] with M = one ONNX batch of full chunks (16 texts x 128 tokens) and K, N those
of its projections (384 -> 384) and feed-forward matrices (384 -> 1536, 1536 -> 384), and 2048^3:
- float32 and bfloat16 through `torch.matmul`, B laid out as `nn.Linear` keeps its weight (the transpose of a
  row-major [N, K]), and once with a row-major [K, N] B, which takes another kernel;
- float32 through ONNX Runtime's MatMul, the GEMM the ONNX path runs on, B a constant (packed once, as the
  model's weights are);
- int8 through ONNX Runtime's MatMulInteger, uint8 x int8 -> int32 (what its dynamic quantization runs) and
  int8 x int8, in one-node graphs built with `onnx`. torch has no public int8 GEMM on CPU: `torch._int_mm`
  is private, and `torch.ao.quantization`'s dynamic Linear is deprecated for removal; neither is measured.
GFLOP/s = 2 M N K / seconds (an int8 multiply-add counts as two operations, as a float one does).

The model: --texts chunk texts of this repository's .py and .md files, cut by the project's chunker with the
default budget (128 tokens) and shuffled with a fixed seed, embedded in the engine's write groups
(pipeline/sync/write.py BATCH_CHUNKS) through each path of the `default` function: ONNX Runtime float32
(pipeline/embedding/onnx_minilm.py), torch float32 and torch bfloat16 (autocast; pipeline/embedding/functions.py). One untimed
call on 16 other texts warms each path (model load, kernel set-up). Then the paths take each group in turn,
so load from other work on the machine falls on all of them alike; a path skips the groups that would take
it past --budget-s (judged by its last group), so a slow path covers the first groups of the same texts,
and the section also compares the paths on the texts all of them embedded.

FLOPs are those of the matrix products, counted from each text's tokens (special tokens included, at most
the 256 the model reads) by the model's tokenizer. For L tokens, per layer: 2 L (4 H^2 + 2 H I) for the Q, K,
V and output projections and the two feed-forward matrices, plus 2 (2 L^2 H) for Q K^T and the weighted sum
of values (all heads together); times the layers (all-MiniLM-L6-v2's config.json: 6 layers, H 384, I 1536).
Embeddings, layer norms, softmax, GELU, biases and pooling, under 1% of those FLOPs (not of the time: see
the profile below), are left out. Useful FLOPs
take each text's own length; computed FLOPs its batch's padded length: for ONNX by onnx_minilm's batching
(each call's texts sorted by characters, BATCH_SIZE a batch, padded to the longest), for torch the shapes a
forward pre-hook on the sentence-transformers model records. Achieved GFLOP/s = useful FLOPs / seconds;
padding waste = 1 - useful / computed.

Inside the ONNX path (the default one): its first group again, tokenized beforehand in its batches, through
its own session alone (what tokenizing and pooling cost beside it), then through a copy with ONNX Runtime's
profiler on: kernel time by operator, and the products' GFLOP/s from the shapes the profiler records (their
FLOPs add up to the formula's at the padded lengths). The profiler slows the run a little; its shares count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import log
from s3sync_dagster.pipeline import embedding
from s3sync_dagster.pipeline.chunking import TokenCounter, chunk_text

# embed is imported before any torch import: it sets OMP_WAIT_POLICY as the project's processes run with it.
from s3sync_dagster.pipeline.embedding import (
    BATCH_SIZE,
    DEFAULT_MODEL_CHUNK_TOKENS,
    MAX_TOKENS,
    TORCH_AFTER_TEXTS,
    ChromaDefaultFunction,
    Precision,
    Runtime,
    batch_feeds,
    bundled_model_path,
    cpu_has_native_bf16,
    default_token_budget,
    encode,
    ensure_default_model,
    load_model,
    load_session,
    resolve_precision,
)
from s3sync_dagster.pipeline.sync import BATCH_CHUNKS

HERE = Path(__file__).resolve().parents[1]
JSON_FILE = HERE / "results-flops.json"
SECTION_NUMBER = 11
SECTION_TITLE = "Embedding against the CPU's peak (issue 27)"
# Flags that decide what the CPU can multiply natively: fused float32, wide vectors, bfloat16 and int8 dot products.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
SOURCE_GLOBS = ("*.py", "*.md")
SEED = 27
WARM_TEXTS = 16
SQUARE = 2048
# (library, precision): the columns of the peak table, in order.
GEMMS = (
    ("torch", "float32"),
    ("onnxruntime", "float32"),
    ("torch", "bfloat16"),
    ("onnxruntime", "int8 u8s8"),
    ("onnxruntime", "int8 s8s8"),
)
COLUMN_NAMES = {
    ("torch", "float32"): "torch float32",
    ("onnxruntime", "float32"): "ONNX Runtime float32",
    ("torch", "bfloat16"): "torch bfloat16",
    ("onnxruntime", "int8 u8s8"): "ONNX Runtime int8 (u8 x s8)",
    ("onnxruntime", "int8 s8s8"): "ONNX Runtime int8 (s8 x s8)",
}
# (label, runtime, precision): the default function's paths, in the order they run.
PATHS: tuple[tuple[str, Runtime, Precision], ...] = (
    ("ONNX Runtime float32", "onnx", "float32"),
    ("ONNX Runtime int8", "onnx", "int8"),  # embedding.precision int8: each text alone, a core each (onnx_minilm)
    ("torch float32", "torch", "float32"),
    ("torch bfloat16", "torch", "bfloat16"),
)


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a BERT encoder, from its config.json."""

    layers: int
    hidden: int
    intermediate: int
    heads: int

    @classmethod
    def bundled(cls) -> ModelShape:
        config = json.loads((Path(bundled_model_path()) / "config.json").read_text())
        return cls(
            layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            heads=config["num_attention_heads"],
        )

    def sequence_flops(self, tokens: int) -> int:
        """Matrix-product FLOPs of one sequence of ``tokens`` tokens through every layer (see the module docstring)."""
        h, i = self.hidden, self.intermediate
        return self.layers * (2 * tokens * (4 * h * h + 2 * h * i) + 2 * 2 * tokens * tokens * h)


# --- the peak ------------------------------------------------------------------------------------------


def cpu_facts() -> dict[str, Any]:
    import onnxruntime
    import torch

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "flags": {flag: flag in flags for flag in CPU_FLAGS},
        "native_bf16": cpu_has_native_bf16(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }


def gemm_shapes(shape: ModelShape) -> list[tuple[str, int, int, int]]:
    """(name, M, K, N) of the products timed: the model's, with one ONNX batch of full chunks as M, and a square."""
    rows = BATCH_SIZE * DEFAULT_MODEL_CHUNK_TOKENS
    h, i = shape.hidden, shape.intermediate
    return [
        ("projection (Q, K, V, output)", rows, h, h),
        ("feed-forward up", rows, h, i),
        ("feed-forward down", rows, i, h),
        ("square", SQUARE, SQUARE, SQUARE),
    ]


def _best_seconds(product: Callable[[], object], repeats: int, budget_s: float) -> tuple[float, int]:
    """The fastest of up to ``repeats`` timed calls (at least two, fewer past ``budget_s``), after an untimed one."""
    product()  # untimed: allocation, kernel choice, packing
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (len(times) < 2 or time.perf_counter() - started < budget_s):
        begun = time.perf_counter()
        product()
        times.append(time.perf_counter() - begun)
    return min(times), len(times)


def _torch_product(dtype_name: str, m: int, k: int, n: int, linear_layout: bool) -> Callable[[], object]:
    import torch

    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(SEED)
    a = torch.randn(m, k, generator=generator).to(dtype)
    # nn.Linear keeps its weight as [out, in] and multiplies by its transpose, a view: the model's layout.
    b = torch.randn(n, k, generator=generator).to(dtype).t() if linear_layout else torch.randn(k, n).to(dtype)
    return lambda: torch.matmul(a, b)


def _onnx_product(precision: str, m: int, k: int, n: int) -> Callable[[], object]:
    import numpy as np
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    a: Any
    b: Any
    if precision == "float32":
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        operator, a_type, out_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
    else:
        a_dtype = np.uint8 if precision == "int8 u8s8" else np.int8
        info = np.iinfo(a_dtype)
        a = rng.integers(info.min, info.max, (m, k), dtype=a_dtype, endpoint=True)
        b = rng.integers(-128, 127, (k, n), dtype=np.int8, endpoint=True)
        operator, out_type = "MatMulInteger", TensorProto.INT32
        a_type = TensorProto.UINT8 if a_dtype is np.uint8 else TensorProto.INT8
    graph = helper.make_graph(
        [helper.make_node(operator, ["A", "B"], ["Y"])],
        "gemm",
        [helper.make_tensor_value_info("A", a_type, [m, k])],
        [helper.make_tensor_value_info("Y", out_type, [m, n])],
        initializer=[numpy_helper.from_array(b, name="B")],  # a constant, as the model's weights are
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return lambda: session.run(None, {"A": a})


def measure_peak(shape: ModelShape, repeats: int, case_budget_s: float) -> dict[str, Any]:
    cells: list[dict[str, Any]] = []

    def time_cell(name: str, m: int, k: int, n: int, library: str, precision: str, layout: str) -> None:
        if library == "torch":
            product = _torch_product(precision, m, k, n, linear_layout=layout == "linear")
        else:
            product = _onnx_product(precision, m, k, n)
        seconds, timed = _best_seconds(product, repeats, case_budget_s)
        gflop_s = 2 * m * n * k / seconds / 1e9
        cells.append(
            {"shape": name, "m": m, "k": k, "n": n, "library": library, "precision": precision, "layout": layout}
            | {"seconds": seconds, "timed": timed, "gflop_s": gflop_s}
        )
        log(f"  {library} {precision} {name} {m}x{k}x{n} ({layout} B): {gflop_s:.1f} GFLOP/s")

    shapes = gemm_shapes(shape)
    for name, m, k, n in shapes:
        for library, precision in GEMMS:
            time_cell(name, m, k, n, library, precision, "linear" if library == "torch" else "constant")
    # The same product with a row-major [K, N] B: which kernel torch picks depends on the layout.
    name, m, k, n = shapes[1]
    for precision in ("float32", "bfloat16"):
        time_cell(name, m, k, n, "torch", precision, "row-major")
    peaks: dict[str, dict[str, Any]] = {}
    for cell in cells:
        family = cell["precision"].split()[0]  # int8 u8s8 and int8 s8s8 are both int8
        if family not in peaks or cell["gflop_s"] > peaks[family]["gflop_s"]:
            peaks[family] = {key: cell[key] for key in ("gflop_s", "library", "precision", "shape", "layout")}
    return {"cells": cells, "peaks": peaks, "repeats": repeats, "case_budget_s": case_budget_s}


# --- the model ------------------------------------------------------------------------------------------


def chunk_sample(count: int) -> tuple[list[str], list[str], dict[str, Any]]:
    """``count`` chunk texts of this repository's own files, by the project's chunker, in a seeded random order;
    and WARM_TEXTS others to warm each path with."""
    listed = subprocess.run(
        ["git", "ls-files", *SOURCE_GLOBS], cwd=common.REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    budget = default_token_budget()
    texts: list[str] = []
    for name in sorted(listed):
        path = common.REPO / name
        if not path.is_file():
            continue
        chunked = chunk_text(path.read_text(errors="surrogateescape"), name, tokens=budget)
        texts.extend(piece.text for piece in chunked.chunks if piece.text.strip())  # as pipeline/sync/write.py keeps
    random.Random(SEED).shuffle(texts)
    warm = texts[count : count + WARM_TEXTS] or texts[:WARM_TEXTS]
    return texts[:count], warm, {"files": len(listed), "chunks": len(texts), "chunk_tokens": budget.max_tokens}


def _onnx_batches(texts: Sequence[str], tokens: Sequence[int]) -> list[tuple[int, int]]:
    """(texts, padded length) of each batch onnx_minilm.encode runs for one call with ``texts``."""
    return [(len(batch), max(tokens[index] for index in batch)) for batch in embedding.batches(tokens)]


def _token_sorted_waste(tokens: Sequence[int], groups: Sequence[range], shape: ModelShape, batch_size: int) -> float:
    """Padding waste if each group's texts were batched by token count instead of characters (counted, not run)."""
    useful = computed = 0
    for group in groups:
        lengths = sorted(tokens[index] for index in group)
        for start in range(0, len(lengths), batch_size):
            batch = lengths[start : start + batch_size]
            useful += sum(shape.sequence_flops(length) for length in batch)
            computed += len(batch) * shape.sequence_flops(max(batch))
    return 1 - useful / computed


def _cosines(a: Sequence[Any], b: Sequence[Any]) -> float:
    import numpy as np

    left, right = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    products = (left * right).sum(axis=1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1))
    return float(products.min())


def measure_paths(texts: list[str], warm: list[str], shape: ModelShape, budget_s: float) -> dict[str, Any]:
    counter = TokenCounter(str(Path(bundled_model_path()) / "tokenizer.json"))
    tokens = [min(count, MAX_TOKENS) for count in counter.count(texts)]
    flops = [shape.sequence_flops(count) for count in tokens]
    group_size = BATCH_CHUNKS
    groups = [range(start, min(start + group_size, len(texts))) for start in range(0, len(texts), group_size)]
    ensure_default_model()  # the ONNX files (made offline if missing), outside any timing
    recorded_shapes: list[tuple[int, int]] = []
    functions: dict[str, ChromaDefaultFunction] = {}
    warm_s: dict[str, float] = {}
    for label, runtime, precision in PATHS:
        functions[label] = ChromaDefaultFunction(runtime=runtime, precision=precision)
        begun = time.perf_counter()
        functions[label](warm)  # untimed: model load, kernel set-up
        warm_s[label] = time.perf_counter() - begun
    import torch

    # The padded shapes sentence-transformers really runs, from the model the torch paths loaded (one for both).
    model = load_model(bundled_model_path(), "cpu")
    transformer: torch.nn.Module = model[0]
    transformer.register_forward_pre_hook(
        lambda _module, args: recorded_shapes.append(tuple(args[0]["input_ids"].shape))
    )
    # Group by group, each path in turn: load from other work on the machine falls on every path alike.
    done: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in PATHS}
    first_vectors: dict[str, Any] = {}
    load_avg = [os.getloadavg()[0]]
    for group in groups:
        group_texts = [texts[index] for index in group]
        for label, runtime, precision in PATHS:
            path_groups = done[label]
            if path_groups and sum(g["seconds"] for g in path_groups) + path_groups[-1]["seconds"] > budget_s:
                continue  # its next group would take it past the budget
            recorded_shapes.clear()
            begun = time.perf_counter()
            vectors = functions[label](group_texts)
            seconds = time.perf_counter() - begun
            if precision == "int8":  # each text alone: no padding
                batches = [(1, tokens[index]) for index in group]
            elif runtime == "onnx":
                batches = _onnx_batches(group_texts, [tokens[index] for index in group])
            else:
                batches = [(rows, length) for rows, length in recorded_shapes]
            first_vectors.setdefault(label, vectors)
            path_groups.append(
                {
                    "texts": len(group),
                    "seconds": seconds,
                    "tokens": sum(tokens[index] for index in group),
                    "useful_flops": sum(flops[index] for index in group),
                    "computed_flops": sum(rows * shape.sequence_flops(length) for rows, length in batches),
                    "batches": len(batches),
                }
            )
            log(f"  {label}: {len(group)} texts in {seconds:.1f} s")
        load_avg.append(os.getloadavg()[0])
    runs: list[dict[str, Any]] = []
    for label, runtime, precision in PATHS:
        run = {"label": label, "runtime": runtime, "precision": precision, **_summarise(done[label])}
        runs.append(run | {"groups": done[label], "warm_s": warm_s[label]})
        log(
            f"  {label}: {run['texts']} texts in {run['seconds']:.1f} s, {run['texts_s']:.1f} texts/s, "
            f"{run['useful_gflop_s']:.1f} useful GFLOP/s, padding waste {run['padding_waste'] * 100:.1f}%"
        )
    reference = PATHS[0][0]
    for run in runs:
        run["min_cosine_to_onnx_first_group"] = _cosines(first_vectors[run["label"]], first_vectors[reference])
    common_groups = min(len(run["groups"]) for run in runs)
    return {
        "texts": len(texts),
        "group_size": group_size,
        "budget_s": budget_s,
        "tokens_mean": sum(tokens) / len(tokens),
        "tokens_max": max(tokens),
        "share_at_least_120_tokens": sum(count >= 120 for count in tokens) / len(tokens),
        "runs": runs,
        "load_avg_by_group": load_avg,
        "waste_if_sorted_by_tokens": {
            str(size): _token_sorted_waste(tokens, groups, shape, size)
            for size in (BATCH_SIZE, functions["torch float32"].batch_size)
        },
        "common": {
            "groups": common_groups,
            "texts": sum(len(group) for group in groups[:common_groups]),
            "by_path": {run["label"]: _summarise(run["groups"][:common_groups]) for run in runs},
        },
    }


def _summarise(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals and rates over some of a path's timed groups."""
    seconds = sum(group["seconds"] for group in groups)
    useful = sum(group["useful_flops"] for group in groups)
    computed = sum(group["computed_flops"] for group in groups)
    texts = sum(group["texts"] for group in groups)
    return {
        "texts": texts,
        "seconds": seconds,
        "tokens": sum(group["tokens"] for group in groups),
        "useful_flops": useful,
        "computed_flops": computed,
        "texts_s": texts / seconds if seconds else 0.0,
        "useful_gflop_s": useful / seconds / 1e9 if seconds else 0.0,
        "computed_gflop_s": computed / seconds / 1e9 if seconds else 0.0,
        "padding_waste": 1 - useful / computed if computed else 0.0,
    }


# ONNX Runtime's operators that are matrix products (FusedMatMul: a product with a transpose or scale folded in).
PRODUCT_OPS = ("MatMul", "FusedMatMul", "Gemm", "MatMulInteger")


def _product_flops(a: Sequence[int], out: Sequence[int]) -> int:
    """FLOPs of one product node, [..., M, K] x [..., K, N] -> [..., M, N], from A's shape and the output's."""
    import math

    return 2 * math.prod(out) * a[-1]


def onnx_inside(texts: list[str]) -> dict[str, Any]:
    """The ONNX path's first group again: the whole path and its session alone on batches tokenized beforehand,
    timed, then under ONNX Runtime's profiler (same model and options, one untimed run first), its kernel time
    by operator."""
    import tempfile

    import onnxruntime

    folder = ensure_default_model()
    session, tokenizer = load_session(folder)  # the very session and tokenizer the path ran
    feeds = [feed for _batch, feed in batch_feeds(tokenizer, texts)]
    path_s, session_s = float("inf"), float("inf")
    for _round in range(2):  # alternating, the best of two each: load from other work falls on both alike
        begun = time.perf_counter()
        encode(folder, texts)
        path_s = min(path_s, time.perf_counter() - begun)
        begun = time.perf_counter()
        for feed in feeds:
            session.run(["last_hidden_state"], feed)
        session_s = min(session_s, time.perf_counter() - begun)

    with tempfile.TemporaryDirectory() as scratch:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as onnx_minilm's session
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        profiled = onnxruntime.InferenceSession(
            str(folder / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        profiled.run(["last_hidden_state"], feeds[0])  # untimed, left out below
        for feed in feeds:
            profiled.run(["last_hidden_state"], feed)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    runs = sorted(event["ts"] for event in events if event.get("name") == "model_run")
    kinds: dict[str, dict[str, float]] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < runs[1]:
            continue
        op = event["args"]["op_name"]
        kind, flops = op, 0
        if op in PRODUCT_OPS:
            inputs = [next(iter(shape.values())) for shape in event["args"]["input_type_shape"]]
            # The profiler lists no constant input: a weight, packed at load; attention multiplies two activations.
            kind = "weight products" if len(inputs) == 1 else "attention products"
            flops = _product_flops(inputs[0], next(iter(event["args"]["output_type_shape"][0].values())))
        entry = kinds.setdefault(kind, {"seconds": 0.0, "flops": 0})
        entry["seconds"] += event["dur"] / 1e6
        entry["flops"] += flops
    kernel_s = sum(entry["seconds"] for entry in kinds.values())
    for entry in kinds.values():
        entry["share"] = entry["seconds"] / kernel_s
        entry["gflop_s"] = entry["flops"] / entry["seconds"] / 1e9 if entry["flops"] else 0.0
    ordered = dict(sorted(kinds.items(), key=lambda item: -item[1]["seconds"]))
    return {"texts": len(texts), "path_s": path_s, "session_s": session_s, "kernel_s": kernel_s, "kinds": ordered}


def default_path() -> str:
    """Which path a bulk sync with the `default` function takes on this machine (embed.ChromaDefaultFunction, auto)."""
    if resolve_precision("auto", "cpu") == "bfloat16":
        return (
            f"ONNX Runtime float32 for a process's first {TORCH_AFTER_TEXTS:,} texts, then torch bfloat16 "
            "(this CPU has native bfloat16)"
        )
    return "ONNX Runtime float32 throughout (this CPU has no native bfloat16, so `auto` never turns to torch)"


def measure(texts_count: int, budget_s: float, repeats: int, case_budget_s: float) -> dict[str, Any]:
    shape = ModelShape.bundled()
    facts = cpu_facts()
    log(f"CPU: {common.machine()['cpu']}; flags {', '.join(f for f, on in facts['flags'].items() if on)}")
    load_before = os.getloadavg()[0]
    log("peak: matrix products of the model's shapes")
    peak = measure_peak(shape, repeats, case_budget_s)
    log(f"chunking this repository's files into {texts_count} texts")
    texts, warm, corpus = chunk_sample(texts_count)
    log(f"the model on each path ({len(texts)} texts, groups of {BATCH_CHUNKS}, {budget_s:.0f} s a path at most)")
    model = measure_paths(texts, warm, shape, budget_s)
    log("inside the ONNX Runtime path: its first group again, the session alone and profiled")
    first_group = texts[:BATCH_CHUNKS]
    inside = onnx_inside(first_group)
    for run in model["runs"]:
        family = run["precision"] if run["precision"] in ("bfloat16", "int8") else "float32"
        run["peak_gflop_s"] = peak["peaks"][family]["gflop_s"]
        run["useful_to_peak"] = run["useful_gflop_s"] / run["peak_gflop_s"]
        run["computed_to_peak"] = run["computed_gflop_s"] / run["peak_gflop_s"]
    return {
        "measured": common.machine(),
        "command": f"python -m benchmarks.sync.flops --texts {texts_count} --budget-s {budget_s:g} --repeats {repeats}",
        "cpu": facts,
        "model_shape": shape.__dict__,
        "peak": peak,
        "corpus": corpus,
        "model": model,
        "onnx_inside": inside,
        "default_path": default_path(),
        "load_avg": {"before": load_before, "after": os.getloadavg()[0]},
    }


# --- the section ------------------------------------------------------------------------------------------


def _range(values: Sequence[float]) -> str:
    return f"{min(values):.1f} to {max(values):.1f}"


def section_markdown(figures: dict[str, Any], number: int = SECTION_NUMBER) -> str:
    measured, cpu, peak, model = figures["measured"], figures["cpu"], figures["peak"], figures["model"]
    flags = ", ".join(f"{flag} {'yes' if on else 'no'}" for flag, on in cpu["flags"].items())
    load = figures["load_avg"]
    lines = [
        f"## {number}. {SECTION_TITLE}",
        "",
        f"Measured {measured['date']} at commit {measured['commit']} with `{figures['command']}`: {measured['cpu']}, "
        f"torch {cpu['torch']} ({cpu['torch_threads']} threads), ONNX Runtime {cpu['onnxruntime']}, all in one "
        f"process. CPU flags: {flags}. Load average {load['before']:.1f} before the run, {load['after']:.1f} after "
        f"({cpu['cores']} cores, which the run itself keeps busy: above {cpu['cores']}, something else ran too).",
        "",
        "### The peak: matrix products of the model's shapes",
        "",
        f"GFLOP/s = 2MNK / s, the best of up to {peak['repeats']} timed products after an untimed one. torch's B is "
        "laid out as `nn.Linear` keeps its weight (the transpose of a row-major [N, K]) except in the row-major "
        "row; ONNX Runtime's B is a constant, packed once, as the model's weights are. torch has no public int8 "
        "GEMM on CPU (`torch._int_mm` is private; `torch.ao.quantization` is deprecated): int8 is ONNX Runtime's "
        "MatMulInteger.",
        "",
        "| product | M x K x N | " + " | ".join(COLUMN_NAMES[gemm] for gemm in GEMMS) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in GEMMS) + " |",
    ]
    rows: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
    dims: dict[tuple[str, str], str] = {}
    for cell in peak["cells"]:
        row = (cell["shape"], "row-major B" if cell["layout"] == "row-major" else "")
        rows.setdefault(row, {})[(cell["library"], cell["precision"])] = cell["gflop_s"]
        dims[row] = f"{cell['m']} x {cell['k']} x {cell['n']}"
    for (name, note), values in rows.items():
        cells = [f"{values[gemm]:.1f}" if gemm in values else "" for gemm in GEMMS]
        lines.append(f"| {name}{f', {note}' if note else ''} | {dims[(name, note)]} | " + " | ".join(cells) + " |")
    peaks = peak["peaks"]
    lines += [
        "",
        "Peak: "
        + "; ".join(
            f"{family} **{found['gflop_s']:.1f} GFLOP/s** ({COLUMN_NAMES[(found['library'], found['precision'])]}, "
            f"{found['shape']})"
            for family, found in peaks.items()
        )
        + ".",
    ]
    if not cpu["native_bf16"]:
        lines[-1] += (
            " This CPU has no bfloat16 instructions (no avx512_bf16, no amx_bf16): torch's bfloat16 products run a "
            "software kernel, so the bfloat16 peak is that kernel's, not the hardware's."
        )
    corpus = figures["corpus"]
    runs = model["runs"]
    lines += [
        "",
        "### The model on each path",
        "",
        f"{model['texts']:,} chunks drawn at random (fixed seed) from the {corpus['chunks']:,} that the project's "
        f"chunker cuts from this repository's {corpus['files']} .py and .md files at its default "
        f"{corpus['chunk_tokens']}-token budget: {model['tokens_mean']:.0f} tokens a text on average, "
        f"{model['share_at_least_120_tokens'] * 100:.0f}% at 120 or more. Each path embeds them in the engine's "
        f"write groups of {model['group_size']}, after an untimed warm-up, the paths taking each group in turn "
        f"(load average after each round: {_range(model['load_avg_by_group'])}); a path skips the groups that "
        f"would take it past {model['budget_s']:.0f} s. Useful GFLOP/s counts each text at its own length, "
        "computed GFLOP/s at its batch's padded length (module docstring: the formula).",
        "",
        "| path | texts | s | texts/s | useful GFLOP/s | padding waste | useful / peak | computed GFLOP/s | "
        "computed / peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        lines.append(
            f"| {run['label']} | {run['texts']:,} | {run['seconds']:.1f} | {run['texts_s']:.1f} | "
            f"{run['useful_gflop_s']:.1f} | {run['padding_waste'] * 100:.1f}% | {run['useful_to_peak'] * 100:.0f}% | "
            f"{run['computed_gflop_s']:.1f} | {run['computed_to_peak'] * 100:.0f}% |"
        )
    waste = model.get("waste_if_sorted_by_tokens") or {}
    if waste:
        lines += [
            "",
            "The ONNX Runtime path batches each call's texts by token count; torch's (sentence-transformers) by "
            "characters. By token count, the same groups waste "
            + " and ".join(f"{share * 100:.1f}% ({size} a batch)" for size, share in waste.items())
            + " (counted).",
        ]
    common_figures = model["common"]
    by_path = common_figures["by_path"]
    reference = by_path[runs[0]["label"]]
    ratios = ", ".join(
        f"{label} {figures_of['texts_s'] / reference['texts_s']:.2f}x"
        for label, figures_of in list(by_path.items())[1:]
    )
    cosines = ", ".join(f"{run['label']} {run['min_cosine_to_onnx_first_group']:.5f}" for run in runs[1:])
    which = (
        f"the same {common_figures['texts']:,} texts"
        if common_figures["texts"] == model["texts"]
        else f"the first {common_figures['texts']:,} texts, which every path embedded"
    )
    lines += [
        "",
        f"On {which}, texts/s against {runs[0]['label']}'s: {ratios}. Lowest cosine to ONNX Runtime's vectors on "
        f"the first group: {cosines}.",
    ]
    inside = figures.get("onnx_inside")
    if inside:
        kinds = inside["kinds"]
        products = [
            f"{kind} {entry['share'] * 100:.0f}% at {entry['gflop_s']:.1f} GFLOP/s"
            for kind, entry in kinds.items()
            if entry["flops"]
        ]
        others = [
            f"{kind} {entry['share'] * 100:.1f}%"
            for kind, entry in kinds.items()
            if not entry["flops"] and entry["share"] >= 0.005
        ]
        lines += [
            "",
            f"Inside the ONNX Runtime path, on its first group again ({inside['texts']} texts; the best of two, "
            f"alternating): the whole path takes {inside['path_s']:.2f} s (in the rounds above, "
            f"{runs[0]['groups'][0]['seconds']:.2f} s), `session.run` alone on the same batches tokenized "
            f"beforehand {inside['session_s']:.2f} s, so tokenizing, pooling and Python take "
            f"{max(0.0, 1 - inside['session_s'] / inside['path_s']) * 100:.0f}% of it. ONNX Runtime's profiler on "
            f"those batches, shares of the kernel time ({inside['kernel_s']:.2f} s; products at their padded shapes): "
            + ", ".join(products)
            + "; then "
            + ", ".join(others)
            + ".",
        ]
    int8 = by_path.get("ONNX Runtime int8")
    if int8:
        run8 = next(run for run in runs if run["label"] == "ONNX Runtime int8")
        lines += [
            "",
            f"**int8 (`embedding.precision: int8`, issue 39)** on {which}: {int8['texts_s']:.1f} texts/s against "
            f"ONNX Runtime float32's {reference['texts_s']:.1f}, **{int8['texts_s'] / reference['texts_s']:.2f}x** "
            f"(goal >= 1.8x); {run8['useful_gflop_s']:.1f} useful GFLOP/s, {run8['useful_to_peak'] * 100:.0f}% of the "
            f"int8 peak ({run8['peak_gflop_s']:.1f}). It runs each text alone (no padding, and no vector depends on "
            "its batch-mates: ONNX Runtime quantises a product's activations with one scale per batch), the cores "
            "sharing the texts, each on a session of one thread: its products are one text's rows, not the peak's "
            "2,048.",
        ]
    lines += ["", f"A bulk sync's default function here: {figures['default_path']}."]
    if figures.get("remarks"):
        lines += ["", figures["remarks"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sync.flops", description=__doc__)
    parser.add_argument("part", nargs="?", choices=["measure", "section"], default="measure")
    parser.add_argument("--json", default=str(JSON_FILE), help="where the figures go (section: read from)")
    parser.add_argument("--texts", type=int, default=1000, help="chunk texts each path embeds")
    parser.add_argument("--budget-s", type=float, default=90.0, help="seconds of embedding a path may spend")
    parser.add_argument("--repeats", type=int, default=10, help="timed products per peak cell")
    parser.add_argument("--case-budget-s", type=float, default=2.0, help="a peak cell's repeats stop past this")
    parser.add_argument("--number", type=int, default=SECTION_NUMBER, help="the section's number in RESULTS.md")
    args = parser.parse_args(argv)
    json_file = Path(args.json)
    if args.part == "measure":
        figures = measure(args.texts, args.budget_s, args.repeats, args.case_budget_s)
        json_file.write_text(json.dumps(figures, indent=2, default=str))
        log(f"wrote {json_file}")
    figures = json.loads(json_file.read_text())
    print(section_markdown(figures, args.number))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
