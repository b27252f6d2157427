"""Byte-offset cut arithmetic for chunking: what one chunk may hold, chunking by lines, mending the cuts."""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Final

import numpy as np
import numpy.typing as npt

from s3sync_dagster.pipeline.chunking.tokens import TokenCounter

__all__ = ["Limits", "cuts_to_line_ends", "fit_tokens", "line_ends", "merge_blank", "normalise"]


# --- line stage -------------------------------------------------------------------


def _char_floor(data: bytes, pos: int, low: int) -> int:
    """Move ``pos`` back to the start of the UTF-8 character it falls in."""
    start = pos
    while pos > low and pos < len(data) and data[pos] & 0xC0 == 0x80:
        pos -= 1
    # Only malformed input has no lead byte within reach; cut where asked then.
    return pos if pos > low else start


class Limits:
    """What one chunk may hold: UTF-8 bytes, and the embedding model's tokens where its tokenizer is here.

    Token counts come from one tokenization of the whole text: a range holds the tokens that start in
    it. That is exact at the cuts the chunker makes (line ends, node and word boundaries); a cut inside
    a word can make a piece tokenize differently alone, which `fit_tokens` checks and mends.
    """

    def __init__(self, max_bytes: int, token_starts: npt.NDArray[np.int64] | None = None, max_tokens: int = 0) -> None:
        self.max_bytes = max_bytes
        self._starts = token_starts
        self._max_tokens = max_tokens

    def tokens(self, start: int, end: int) -> int:
        if self._starts is None:
            return 0
        return int(np.searchsorted(self._starts, end) - np.searchsorted(self._starts, start))

    def fits(self, start: int, end: int) -> bool:
        if end - start > self.max_bytes:
            return False
        return self._starts is None or self.tokens(start, end) <= self._max_tokens

    def reach(self, start: int) -> int:
        """The furthest end a chunk starting at ``start`` may have (before snapping to a character)."""
        end = start + self.max_bytes
        if self._starts is not None:
            first = int(np.searchsorted(self._starts, start))
            if first + self._max_tokens < len(self._starts):
                end = min(end, int(self._starts[first + self._max_tokens]))
        return end

    def last_token_start(self, start: int, end: int) -> int | None:
        """The last token start in (start, end], if the tokens are known and one lies there."""
        if self._starts is None:
            return None
        index = int(np.searchsorted(self._starts, end, side="right")) - 1
        if index >= 0 and self._starts[index] > start:
            return int(self._starts[index])
        return None


# Where a line too long for one chunk is cut: after a sentence, else after a space, else at a token.
_SENTENCE_END: Final = re.compile(rb"(?:[.!?][\"')\]]*|\xe3\x80\x82)[ \t]+")
_SPACES: Final = re.compile(rb"[ \t]+")


def _cut_long_line(data: bytes, start: int, limit: int, limits: Limits) -> int:
    """Where to end a chunk inside one line that runs past ``limit``: the last sentence end in the
    second half of the room, else the last space in its last three quarters, else the last token start,
    else the last character boundary."""
    room = limit - start
    best = None
    for match in _SENTENCE_END.finditer(data, start + room // 2, limit):
        best = match.end()
    if best is None:
        for match in _SPACES.finditer(data, start + room // 4, limit):
            best = match.end()
    if best is not None and best < limit:
        return best
    token = limits.last_token_start(start, limit)
    if token is not None and token < limit:
        return token
    return _char_floor(data, limit, start)


def line_ends(data: bytes, start: int, end: int, limits: Limits, max_lines: int) -> list[int]:
    """End offsets of line chunks covering ``data[start:end]``."""
    ends: list[int] = []
    pos = start
    while pos < end:
        limit = min(end, limits.reach(pos))
        after_newline = pos
        newlines = 0
        # Bounded by ``limit`` so a megabyte-long line costs O(max_bytes) per chunk.
        while newlines < max_lines:
            found = data.find(b"\n", after_newline, limit)
            if found < 0:
                break
            after_newline = found + 1
            newlines += 1
        if newlines == max_lines:
            cut = after_newline
        elif limit == end:
            cut = end
        elif newlines:
            cut = after_newline
        else:
            cut = _cut_long_line(data, pos, limit, limits)
        ends.append(cut)
        pos = cut
    return ends


# --- mending the cuts -------------------------------------------------------------


def cuts_to_line_ends(data: bytes, cuts: list[int], limits: Limits) -> None:
    """Move cuts that fall inside a line to a line boundary wherever the limits allow.

    Packing nodes greedily can end a chunk inside a statement (``maybe.append(name`` | ``)``) or after a
    line's indentation; only a line too long for one chunk should be cut inside. Such a cut moves to the
    end of its line when the chunk before can take the rest of it, else back to the line's start when
    the chunk after can take its head, so chunks start and end with whole lines.
    """
    for index in range(1, len(cuts) - 1):
        before, cut, after = cuts[index - 1], cuts[index], cuts[index + 1]
        line_start = data.rfind(b"\n", before, cut) + 1
        if line_start == cut or (line_start == 0 and before > 0) or data[cut - 1 : cut] == b"\n":
            continue
        line_end = data.find(b"\n", cut, after) + 1
        indentation_only = not data[line_start:cut].strip(b" \t")
        if 0 < line_end < after and not indentation_only and limits.fits(before, line_end):
            cuts[index] = line_end
        elif line_start > before and limits.fits(line_start, after):
            cuts[index] = line_start


def normalise(data: bytes, cuts: list[int], limits: Limits, max_lines: int) -> list[int]:
    """Safety net for the invariants: increasing cuts on character boundaries,
    no piece over the limits (re-split by lines if one ever is)."""
    size = len(data)
    fixed = [0]
    for cut in cuts[1:]:
        cut = size if cut >= size else _char_floor(data, cut, fixed[-1])
        if cut <= fixed[-1]:
            continue
        if not limits.fits(fixed[-1], cut):
            fixed.extend(line_ends(data, fixed[-1], cut, limits, max_lines))
        else:
            fixed.append(cut)
    if fixed[-1] != size:
        fixed.extend(line_ends(data, fixed[-1], size, limits, max_lines))
    return fixed


def _line_span(data: bytes, start: int, end: int) -> int:
    """Lines a non-empty piece touches; a final "\n" ends its line, it opens none."""
    return data.count(b"\n", start, end) - (data[end - 1 : end] == b"\n") + 1


def _blank_split(
    data: bytes, before_start: int, blank: tuple[int, int], after_end: int, limits: Limits, max_lines: int | None
) -> int | None:
    """Where to cut the whitespace ``data[blank]`` so its head joins the piece before and its tail the one after.

    Prefers the cut that leaves the piece before ending a line and gives it as much as it can take
    (trailing whitespace reads as the end of what it follows).
    """
    blank_start, blank_end = blank
    before_newlines = data.count(b"\n", before_start, blank_start)
    blank_newlines = data.count(b"\n", blank_start, blank_end)
    after_span = _line_span(data, blank_end, after_end)
    best: int | None = None
    best_at_line_end: int | None = None
    cut = blank_start
    head_newlines = 0
    for char in data[blank_start:blank_end].decode("utf-8", "surrogatepass")[:-1]:
        cut += len(char.encode("utf-8", "surrogatepass"))
        head_newlines += char == "\n"
        if not limits.fits(before_start, cut):
            break
        if max_lines is not None and before_newlines + head_newlines - (char == "\n") + 1 > max_lines:
            break
        if not limits.fits(cut, after_end):
            continue
        if max_lines is not None and blank_newlines - head_newlines + after_span > max_lines:
            continue
        best = cut
        if char == "\n":
            best_at_line_end = cut
    return best_at_line_end if best_at_line_end is not None else best


def merge_blank(data: bytes, cuts: list[int], limits: Limits, max_lines: int | None) -> list[int]:
    """Fold whitespace-only pieces into their neighbours where the limits allow.

    A blank piece wastes an embedding, so it goes whole to the piece before, else whole to the piece
    after, else is shared between the two; only a blank that none of these fit stays.
    """

    def fits(start: int, end: int) -> bool:
        return limits.fits(start, end) and (max_lines is None or _line_span(data, start, end) <= max_lines)

    pieces = [[start, end] for start, end in pairwise(cuts)]
    out: list[list[int]] = []
    for index, (start, end) in enumerate(pieces):
        if not data[start:end].decode("utf-8", "surrogatepass").isspace():
            out.append([start, end])
            continue
        if out and fits(out[-1][0], end):
            out[-1][1] = end
            continue
        if index + 1 < len(pieces):
            following = pieces[index + 1]
            if fits(start, following[1]):
                # The next piece is visited later, so it may take further blanks.
                following[0] = start
                continue
            cut = _blank_split(data, out[-1][0], (start, end), following[1], limits, max_lines) if out else None
            if cut is not None:
                out[-1][1] = following[0] = cut
                continue
        out.append([start, end])
    return [cuts[0], *(end for _start, end in out)]


def fit_tokens(data: bytes, cuts: list[int], counter: TokenCounter, max_tokens: int, max_lines: int) -> list[int]:
    """Count every piece alone, as the model will receive it, and re-split any that is over budget.

    The chunker counts tokens on the whole text; a piece that starts or ends inside a word can cost
    more alone. Such a piece is cut again with its own tokenization, until every piece fits.
    """
    content = max_tokens - counter.special_tokens
    while True:
        texts = [data[start:end].decode("utf-8", "surrogatepass") for start, end in pairwise(cuts)]
        over = {index for index, count in enumerate(counter.count(texts)) if count > max_tokens}
        if not over:
            return cuts
        fixed = [cuts[0]]
        for index, (start, end) in enumerate(pairwise(cuts)):
            if index not in over:
                fixed.append(end)
                continue
            own = Limits(end - start, start + counter.token_starts(texts[index]), content)
            ends = line_ends(data, start, end, own, max_lines)
            if len(ends) == 1:  # counted to fit by its own tokens yet over: cut it in two by bytes
                ends = [_char_floor(data, start + (end - start) // 2, start), end]
            fixed.extend(cut for cut in ends if cut > fixed[-1])
        cuts = fixed
