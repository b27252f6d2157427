"""Token budgets: how many tokens the embedding model reads, and where a text's tokens start, by its own tokenizer.

A chunk is only findable by what reaches the embedding: a model truncates at its window (all-MiniLM-L6-v2
reads 256 tokens, [CLS] and [SEP] included), so the chunker cuts by tokens as well as by bytes. Counting
uses the model's own fast tokenizer (Hugging Face `tokenizers`, no torch), which runs at a few MB/s.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import tokenizers

__all__ = ["BYTE_BOUND_RESERVE", "TokenBudget", "TokenCounter"]

# Without the model's tokenizer at hand (a model behind an API), a token is counted as at least one
# UTF-8 byte, which holds for byte-level BPE, WordPiece and SentencePiece vocabularies alike; these
# tokens are kept free for the special tokens and instructions such a model adds to a text.
BYTE_BOUND_RESERVE: Final = 16

# The text is tokenized in pieces of about this many characters, cut after a newline (no token spans
# one in the vocabularies we meet), so a 200 MB object never holds all its token objects at once.
_SEGMENT_CHARS: Final = 64 * 1024
_SEGMENTS_PER_BATCH: Final = 16  # tokenized together (the tokenizer's threads share a batch)
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


class TokenCounter:
    """A model's tokenizer, for counting: no truncation, no padding, thread-safe for reading."""

    def __init__(self, tokenizer_file: str) -> None:
        from tokenizers import Tokenizer

        tokenizer: tokenizers.Tokenizer = Tokenizer.from_file(tokenizer_file)
        # A tokenizer.json may carry the training set-up's truncation (128 for all-MiniLM-L6-v2) and padding.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.tokenizer_file = tokenizer_file
        self.special_tokens = len(tokenizer.encode("", add_special_tokens=True).ids)

    def count(self, texts: Sequence[str]) -> list[int]:
        """Exact tokens of each text as the model receives it alone, special tokens included."""
        if not texts:
            return []
        encoded = self._tokenizer.encode_batch([_tokenizable(text) for text in texts], add_special_tokens=True)
        return [len(encoding.ids) for encoding in encoded]

    def token_starts(self, text: str) -> npt.NDArray[np.int64]:
        """UTF-8 byte offset (surrogatepass, as the chunker encodes) where each token of ``text`` starts."""
        segments = _segments(text)
        starts: list[npt.NDArray[np.int64]] = []
        byte_base = 0
        # A few segments at a time: a 200 MB object never holds all its token objects at once, only
        # one int64 per token.
        for first in range(0, len(segments), _SEGMENTS_PER_BATCH):
            batch = segments[first : first + _SEGMENTS_PER_BATCH]
            encoded = self._tokenizer.encode_batch(
                [_tokenizable(segment) for segment in batch], add_special_tokens=False
            )
            for segment, encoding in zip(batch, encoded, strict=True):
                char_starts = np.fromiter((start for start, _end in encoding.offsets), dtype=np.int64)
                byte_offsets = _byte_offsets(segment)
                starts.append(byte_base + (byte_offsets[char_starts] if byte_offsets is not None else char_starts))
                byte_base += len(segment) if byte_offsets is None else int(byte_offsets[-1])
        merged = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        # Offsets of word pieces of one word can repeat (a normaliser that expands a character); one start each.
        return np.unique(merged)


def _segments(text: str) -> list[str]:
    """Pieces of about _SEGMENT_CHARS, cut after a newline; a text with no newline for twice that long (a
    minified file) is cut after a space, else anywhere: a token there may count differently than in the
    whole text, which the chunker's final count of each piece catches."""
    segments: list[str] = []
    start = 0
    while start < len(text):
        limit = start + 2 * _SEGMENT_CHARS
        end = text.find("\n", start + _SEGMENT_CHARS, limit)
        if end < 0 and limit < len(text):
            end = text.rfind(" ", start + _SEGMENT_CHARS, limit)
            end = limit - 1 if end < 0 else end
        end = len(text) if end < 0 else end + 1
        segments.append(text[start:end])
        start = end
    return segments


def _tokenizable(text: str) -> str:
    # Text decoded with surrogateescape keeps lone surrogates, which the tokenizer refuses; one
    # replacement character each keeps every offset where it was.
    return _SURROGATE.sub("\ufffd", text) if not text.isascii() else text


def _byte_offsets(text: str) -> npt.NDArray[np.int64] | None:
    """Byte offset of each character (and of the end) in UTF-8; None when they equal the character offsets."""
    if text.isascii():
        return None
    code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    sizes = 1 + (code_points >= 0x80).astype(np.int64) + (code_points >= 0x800) + (code_points >= 0x10000)
    offsets = np.zeros(len(code_points) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return offsets


_counters: dict[str, TokenCounter] = {}
_counters_lock = threading.Lock()


def _counter(tokenizer_file: str) -> TokenCounter:
    with _counters_lock:
        counter = _counters.get(tokenizer_file)
        if counter is None:
            counter = _counters[tokenizer_file] = TokenCounter(tokenizer_file)
        return counter


@dataclass(frozen=True)
class TokenBudget:
    """The most tokens one chunk may cost the embedding model, and how to count them.

    ``max_tokens`` counts what the model receives, special tokens included (its maximum sequence
    length). With no ``tokenizer_file`` (a model behind an API) every UTF-8 byte counts as a token.
    ``window`` is the model's whole window (None: ``max_tokens``): what a chunk leaves of it, its context
    line may take (pipeline/chunking/context.py). It is not in the signature: a chunk's cuts do not depend on it.
    """

    max_tokens: int
    tokenizer_file: str | None = None
    model: str = ""  # what the tokens are of, for the sync signature and messages
    window: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.window is not None and self.window < self.max_tokens:
            raise ValueError(f"window {self.window} is smaller than max_tokens {self.max_tokens}")

    def counter(self) -> TokenCounter | None:
        return _counter(self.tokenizer_file) if self.tokenizer_file else None

    @property
    def signature(self) -> str:
        return f"{self.max_tokens}:{self.model or 'bytes'}"

    def byte_bound(self) -> int | None:
        """Without a tokenizer: the UTF-8 bytes a chunk may hold so that its tokens surely fit."""
        if self.tokenizer_file:
            return None
        return max(1, self.max_tokens - BYTE_BOUND_RESERVE)
