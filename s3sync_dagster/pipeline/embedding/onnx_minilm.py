"""Chroma's default model (all-MiniLM-L6-v2) on ONNX Runtime, as chromadb computes it, padded per batch.

chromadb's own function pads every text to 256 tokens; padding a batch only to its longest text (texts
sorted by their token counts, so neighbours are alike) gives the same vectors (masked mean pooling ignores
padding; tested) at a fraction of the work. Sorted by characters instead, 20% of the model's work was padding;
by tokens, 4% (benchmarks/RESULTS.md, section 11). The session loads in well under a second, where torch and
sentence-transformers take 5-8 s here: what a run that embeds a few chunks waits for (docs/sources.md,
"Embedding functions"; benchmarks/RESULTS.md, section 9).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

MAX_TOKENS = 256  # what chromadb's ONNX function truncates at, [CLS] and [SEP] included
BATCH_SIZE = 16  # larger batches pad more and gain nothing on two cores (measured)

_lock = threading.Lock()
# (model folder, threads a run: 0 for ONNX Runtime's default, one per core) -> (session, tokenizer), one per process
_loaded: dict[tuple[str, int], tuple[Any, Any]] = {}


def load_session(folder: Path, threads: int = 0) -> tuple[Any, Any]:
    with _lock:
        if (str(folder), threads) not in _loaded:
            import onnxruntime
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            tokenizer.no_padding()  # encode pads each batch itself, to its longest text
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            # Chroma's own threads share the cores inside a run: ONNX Runtime's workers must sleep while they
            # wait, not spin (as OMP_WAIT_POLICY=PASSIVE does for torch; pipeline/embedding/runtimes.py).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if threads:
                options.intra_op_num_threads = threads
            session = onnxruntime.InferenceSession(
                str(folder / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
            )
            _loaded[(str(folder), threads)] = (session, tokenizer)
        return _loaded[(str(folder), threads)]


def batches(token_counts: Sequence[int], batch_size: int = BATCH_SIZE) -> list[list[int]]:
    """The texts' indices in the batches `encode` runs: sorted by token count, `batch_size` at a time."""
    order = sorted(range(len(token_counts)), key=lambda index: token_counts[index])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def batch_feeds(tokenizer: Any, texts: list[str], batch_size: int = BATCH_SIZE) -> Iterator[tuple[list[int], Any]]:
    """Each batch `encode` runs: its texts' indices and the model's inputs, padded to its longest text."""
    import numpy as np

    token_ids = [encoded.ids for encoded in tokenizer.encode_batch(texts)]
    for batch in batches([len(ids) for ids in token_ids], batch_size):
        width = max(len(token_ids[i]) for i in batch)
        input_ids = np.zeros((len(batch), width), dtype=np.int64)  # [PAD] is id 0
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, index in enumerate(batch):
            input_ids[row, : len(token_ids[index])] = token_ids[index]
            attention_mask[row, : len(token_ids[index])] = 1
        yield (
            batch,
            {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)},
        )


def encode(folder: Path, texts: list[str], batch_size: int = BATCH_SIZE) -> list[Any]:
    """Unit-length float32 vectors of texts, in their order."""
    import numpy as np

    session, tokenizer = load_session(folder)
    vectors: list[Any] = [None] * len(texts)
    for batch, feed in batch_feeds(tokenizer, texts, batch_size):
        (hidden,) = session.run(["last_hidden_state"], feed)
        pooled = _pooled(hidden, feed["attention_mask"])
        for position, index in enumerate(batch):
            vectors[index] = pooled[position].astype(np.float32)
    return vectors


def _pooled(hidden: Any, mask: Any) -> Any:
    import numpy as np

    mask = mask[..., None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return pooled


def encode_each(folder: Path, texts: list[str]) -> list[Any]:
    """Unit-length float32 vectors of texts, in their order, each text run through the model alone.

    For a model whose vector of a text must not depend on the texts beside it: the int8 model, whose products
    quantise their activations with one scale for the whole batch. One text is a small product, which one core
    runs as fast as two: the texts are shared out over the cores instead, each on a session of one thread, which
    embeds as many texts a second as batches of 16 (measured: benchmarks/RESULTS.md, section 11)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    session, tokenizer = load_session(folder, threads=1)
    encoded = tokenizer.encode_batch(texts)

    def one(ids: list[int]) -> Any:
        input_ids = np.array([ids], dtype=np.int64)
        feed = {
            "input_ids": input_ids,
            "attention_mask": np.ones_like(input_ids),
            "token_type_ids": np.zeros_like(input_ids),
        }
        (hidden,) = session.run(["last_hidden_state"], feed)  # ONNX Runtime's sessions run calls in parallel
        return _pooled(hidden, feed["attention_mask"])[0].astype(np.float32)

    workers = max(1, min(len(os.sched_getaffinity(0)), len(texts)))
    if workers == 1:
        return [one(item.ids) for item in encoded]
    with ThreadPoolExecutor(workers, thread_name_prefix="s3sync-embed") as pool:
        return list(pool.map(lambda item: one(item.ids), encoded))
