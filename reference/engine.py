"""Attention of chosen query rows of one (sequence, KV head group), in bounded memory.

The engine reads the K/V a KV head's mask can touch once per (sequence, KV head), then walks
the requested rows in chunks (`chunk.chunk_shape`); each chunk computes only the key columns
its rows can see: the union of their windows plus the sink prefix.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import dtypes
from ..inputs import Inputs
from ..masks import merge_ranges
from ..problem import Problem
from .chunk import SoftmaxParams, attend_chunk, chunk_shape
from .kv_source import KVSource
from .layout import rows_view
from .rope import append_kv

# Rounding P to fp8 (dtypes.round_to) goes through float64 temporaries, about 16x the bytes of S.
FP8_ROUNDING_OVERHEAD = 16


class Engine:
    def __init__(self, problem: Problem, inputs: Inputs, *, p_fp8: bool = False, accum=np.float32):
        problem.validate()
        if inputs.problem != problem:
            raise ValueError(f"inputs were made for {inputs.problem.name()}, not {problem.name()}")
        if p_fp8 and not problem.dt.is_fp8:
            raise ValueError(f"p_fp8 models an fp8 kernel; dtype is {problem.dtype}")
        self.problem = problem
        if problem.family == "appendkv":
            k_cache, v_cache, self.q = append_kv(problem, inputs)
            self.q_dt = dtypes.FP32
            self.kv = KVSource(problem, inputs, k_cache, v_cache)
        else:
            self.q, self.q_dt = inputs.q, problem.dt
            self.kv = KVSource(problem, inputs)
        # MLA's V is part of the latent (K) cache, so it shares K's descale.
        v_scale = inputs.k_descale if problem.family == "mla" else inputs.v_descale
        self.params = SoftmaxParams(scale=problem.softmax_scale * inputs.q_descale * inputs.k_descale,
                                    soft_cap=problem.soft_cap, v_scale=v_scale,
                                    p_dtype=problem.dt if p_fp8 else None, accum=np.dtype(accum).type)
        self.sink = inputs.sink_logits if problem.sink else None
        self._kv_key, self._kv = None, None

    def attend(self, b: int, kv_head: int, heads: slice, rows: np.ndarray,
               cols: Optional[tuple] = None, with_sink: bool = True) -> tuple:
        """(o [g,n,Dv], lse [g,n]) float32 of query heads `heads` (all reading kv_head) at rows
        `rows` of sequence b, over the key columns [cols[0], cols[1]) (default: all)."""
        p = self.problem
        sq, sk = p.seqlens_q()[b], p.seqlens_k()[b]
        mask = p.mask_for_kv_head(kv_head)
        col_lo, col_hi = (0, sk) if cols is None else cols
        ranges, k, v = self._touched_kv(b, kv_head, mask, sq, sk)
        q_seq = rows_view(p, self.q, b, heads)
        sink = self.sink[heads] if (with_sink and self.sink is not None) else None
        g, n = q_seq.shape[0], len(rows)
        o = np.zeros((g, n, p.hdim_v), np.float32)
        lse = np.full((g, n), -np.inf, np.float32)
        itemsize = np.dtype(self.params.accum).itemsize
        if self.params.p_dtype is not None:
            itemsize *= FP8_ROUNDING_OVERHEAD
        head_step, row_step = chunk_shape(g, n, len(k), itemsize)
        for h0 in range(0, g, head_step):
            hs = slice(h0, min(g, h0 + head_step))
            for r0 in range(0, n, row_step):
                r = rows[r0:r0 + row_step]
                lo, hi, sink_end = mask.row_bounds(sq, sk, r)
                want = _visible_ranges(lo, hi, sink_end, col_lo, col_hi)
                kc, vc, cols_idx = _select(ranges, k, v, want)
                qc = dtypes.decode(q_seq[hs][:, r], self.q_dt)
                o[hs, r0:r0 + len(r)], lse[hs, r0:r0 + len(r)] = attend_chunk(
                    qc, kc, vc, _keep(lo, hi, sink_end, cols_idx), None if sink is None else sink[hs], self.params)
        return o, lse

    def _touched_kv(self, b, kv_head, mask, sq, sk):
        """Every key range the mask lets some row of sequence b see, read once and kept for the
        next call on the same (sequence, KV head)."""
        if self._kv_key != (b, kv_head):
            ranges = mask.touched_ranges(sq, sk)
            self._kv = (ranges,) + self.kv.rows(b, kv_head, ranges)
            self._kv_key = (b, kv_head)
        return self._kv


def _visible_ranges(lo, hi, sink_end, col_lo, col_hi) -> list:
    """Key ranges some row of a chunk sees (window union + sink prefix), cut to [col_lo, col_hi)."""
    nonempty = hi >= lo
    ranges = []
    if nonempty.any():
        ranges.append((int(lo[nonempty].min()), int(hi[nonempty].max()) + 1))
    if len(sink_end) and sink_end.max() > 0:
        ranges.append((0, int(sink_end.max())))
    return merge_ranges([(max(a, col_lo), min(e, col_hi)) for a, e in ranges])


def _keep(lo, hi, sink_end, cols) -> Optional[np.ndarray]:
    """[n, W] keep-matrix of a chunk's rows over its columns; None when every row's window
    covers all of them (no mask to apply)."""
    if len(cols) and lo.max() <= cols[0] and hi.min() >= cols[-1]:
        return None
    j = cols[None, :]
    return ((j >= lo[:, None]) & (j <= hi[:, None])) | (j < sink_end[:, None])


def _select(ranges, k, v, want) -> tuple:
    """Rows of the gathered K/V (laid out as `ranges` back to back) for the key ranges `want`,
    each a subset of one gathered range. Returns (K, V, logical column ids)."""
    starts = np.cumsum([0] + [e - a for a, e in ranges])
    ks, vs, ids = [], [], []
    for a, e in want:
        i = next(i for i, (ra, re) in enumerate(ranges) if ra <= a and e <= re)
        off = starts[i] + a - ranges[i][0]
        ks.append(k[off:off + e - a])
        vs.append(v[off:off + e - a])
        ids.append(np.arange(a, e))
    if len(want) == 1:
        return ks[0], vs[0], ids[0]
    if not want:
        return k[:0], v[:0], np.zeros(0, np.int64)
    return np.concatenate(ks), np.concatenate(vs), np.concatenate(ids)
