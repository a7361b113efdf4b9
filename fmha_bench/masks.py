"""Attention masks in Composable Kernel's grammar (SPEC section 2).

A mask is parsed once into a `Mask` (alignment, window left/right, sink prefix). Everything
that needs to know which (row, column) pairs are visible goes through `Mask.row_bounds`, so
the FLOP count, the reference and the kernels' parameters agree by construction.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

NONE, TOP_LEFT, BOTTOM_RIGHT = "none", "top_left", "bottom_right"

ALIASES = {
    "0": "0", "n": "0", "none": "0", "no": "0",
    "causal": "b", "causal_br": "b", "causal_bottom_right": "b",
    "causal_tl": "t", "causal_top_left": "t",
}
GRAMMAR = ("'0'/'n'/'none', 't', 'b', 't:l,r', 'b:l,r', 't:l,r,s', 'b:l,r,s', 'xt:w', 'xb:w', "
           "'causal' (= b), 'causal_tl' (= t), 'window:l,r' (= b:l,r)")
_WINDOW = re.compile(r"^([tb]):(-?\d+),(-?\d+)(?:,(\d+))?$")
_XFORMERS = re.compile(r"^x([tb]):(-?\d+)$")
_READABLE_WINDOW = re.compile(r"^window:(-?\d+),(-?\d+)(?:,(\d+))?$")


MAX_WINDOW = (1 << 31) - 1  # window sizes and sink lengths are int32 kernel parameters


class MaskError(ValueError):
    """A mask string outside the grammar."""


@dataclass(frozen=True)
class Mask:
    align: str = NONE      # none | top_left | bottom_right
    left: int = -1         # keys to the left of the diagonal; < 0 = unlimited
    right: int = -1        # keys to the right of the diagonal; < 0 = unlimited
    sink: int = 0          # first `sink` columns stay visible (StreamingLLM)

    @property
    def is_none(self) -> bool:
        return self.align == NONE

    @property
    def is_causal(self) -> bool:
        return self.align != NONE and self.left < 0 and self.right == 0 and self.sink == 0

    @property
    def is_window(self) -> bool:
        """A true local window (a limited left side), the variant some providers cannot run."""
        return self.align != NONE and self.left >= 0

    def canonical(self) -> str:
        if self.align == NONE:
            return "0"
        a = "t" if self.align == TOP_LEFT else "b"
        if self.is_causal:
            return a
        tail = f",{self.sink}" if self.sink else ""
        return f"{a}:{self.left},{self.right}{tail}"

    def row_bounds(self, seqlen_q: int, seqlen_k: int, rows=None):
        """Per query row: the window [lo, hi] (inclusive, clipped to [0, Sk-1]; empty when
        lo > hi) and the exclusive end of the visible sink prefix, `sink_end` (the sink columns
        visible are [0, sink_end) minus those already inside the window)."""
        i = np.arange(seqlen_q, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.align == NONE:
            lo = np.zeros_like(i)
            hi = np.full_like(i, seqlen_k - 1)
            return lo, hi, np.zeros_like(i)
        p = i if self.align == TOP_LEFT else i + (seqlen_k - seqlen_q)
        lo = p - self.left if self.left >= 0 else np.full_like(i, 0)
        hi = p + self.right if self.right >= 0 else np.full_like(i, seqlen_k - 1)
        lo = np.maximum(lo, 0)
        hi_clip = np.minimum(hi, seqlen_k - 1)
        # A sink column j < s is visible to a row whose window reaches at or past it (j <= hi).
        sink_end = np.clip(np.minimum(self.sink, hi_clip + 1), 0, None) if self.sink else np.zeros_like(i)
        return lo, hi_clip, sink_end

    def visible_counts(self, seqlen_q: int, seqlen_k: int) -> np.ndarray:
        """Exact number of visible keys per query row (int64 array of length seqlen_q)."""
        if seqlen_q == 0 or seqlen_k == 0:
            return np.zeros(seqlen_q, dtype=np.int64)
        lo, hi, sink_end = self.row_bounds(seqlen_q, seqlen_k)
        window = np.clip(hi - lo + 1, 0, None)
        # Sink columns not already counted in the window: [0, min(sink_end, lo)) when the window is non-empty.
        extra = np.where(window > 0, np.clip(np.minimum(sink_end, lo), 0, None), sink_end)
        return window + extra

    def area(self, seqlen_q: int, seqlen_k: int) -> int:
        return int(self.visible_counts(seqlen_q, seqlen_k).sum())

    def touched_ranges(self, seqlen_q: int, seqlen_k: int) -> list:
        """Disjoint sorted [start, end) column ranges that at least one row sees. Windows of
        consecutive rows overlap, so the window part is one range; the sink prefix is another."""
        if seqlen_q == 0 or seqlen_k == 0:
            return []
        lo, hi, sink_end = self.row_bounds(seqlen_q, seqlen_k)
        nonempty = hi >= lo
        ranges = []
        if nonempty.any():
            ranges.append((int(lo[nonempty].min()), int(hi[nonempty].max()) + 1))
        if sink_end.max() > 0:
            ranges.append((0, int(sink_end.max())))
        return merge_ranges(ranges)

    def dense(self, seqlen_q: int, seqlen_k: int) -> np.ndarray:
        """Boolean [Sq, Sk] keep-matrix. For small shapes only (tests, kernels' debugging)."""
        lo, hi, sink_end = self.row_bounds(seqlen_q, seqlen_k)
        j = np.arange(seqlen_k)[None, :]
        return ((j >= lo[:, None]) & (j <= hi[:, None])) | (j < sink_end[:, None])


def merge_ranges(ranges) -> list:
    """Union of [start, end) ranges as a sorted list of disjoint ranges."""
    out = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def parse_mask(text) -> Mask:
    """Parse CK's mask grammar or a readable alias. Raises MaskError naming the grammar."""
    s = str(text).strip().lower()
    s = ALIASES.get(s, s)
    if s == "0":
        return Mask()
    if s in ("t", "b"):
        return Mask(TOP_LEFT if s == "t" else BOTTOM_RIGHT, -1, 0, 0)
    m = _READABLE_WINDOW.match(s)
    if m:
        s = f"b:{m.group(1)},{m.group(2)}" + (f",{m.group(3)}" if m.group(3) else "")
    m = _WINDOW.match(s)
    if m:
        align = TOP_LEFT if m.group(1) == "t" else BOTTOM_RIGHT
        left, right, sink = (_clipped(g) for g in (m.group(2), m.group(3), m.group(4) or "0"))
        if left < 0 and right < 0 and sink == 0:
            return Mask()  # unlimited on both sides is no mask at all
        return Mask(align, max(left, -1), max(right, -1), sink)  # every negative is "unlimited": one spelling
    m = _XFORMERS.match(s)
    if m:
        align = TOP_LEFT if m.group(1) == "t" else BOTTOM_RIGHT
        w = _clipped(m.group(2))
        if w < 0:
            return Mask(align, -1, 0, 0)
        if w == 0:
            raise MaskError(f"mask {_shown(text)}: an xformers window needs w > 0 (or w < 0 for causal)")
        left = w // 2
        return Mask(align, left, w - 1 - left, 0)
    raise MaskError(f"mask {_shown(text)} is not in the grammar: {GRAMMAR}")


def _clipped(number: str) -> int:
    """A number of a mask string, clipped to MAX_WINDOW: a wider window or sink covers every
    supported sequence alike (and int() refuses thousands of digits, hence the length test)."""
    if len(number.lstrip("-").lstrip("0")) > len(str(MAX_WINDOW)):
        return -1 if number.startswith("-") else MAX_WINDOW  # any negative means unlimited
    return min(int(number), MAX_WINDOW)


def _shown(text) -> str:
    """The mask as typed, cut short for a one-line message."""
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:37] + "..."
