"""Softmax attention of one chunk: a few query heads x a few rows against the visible keys.

Steps of SPEC section 1 in order: S = scale Q K^T, soft cap, mask, learned sink, LSE, O = P V.
Every key column of the chunk is present at once, so the row max is final and no online
rescaling is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import dtypes

CHUNK_BYTES = 64 << 20    # budget for one chunk's score matrix S
MAX_CHUNK_ROWS = 256      # short row chunks keep S in cache and let causal chunks skip columns


@dataclass(frozen=True)
class SoftmaxParams:
    scale: float                         # softmax scale, times q_descale * k_descale for fp8
    soft_cap: float                      # 0: off
    v_scale: float                       # v_descale for fp8, else 1
    p_dtype: Optional[dtypes.DType]      # round P to this fp8 type before P V, or None
    accum: type                          # dtype of the products and sums (np.float32 default)


def chunk_shape(heads: int, rows: int, width: int, itemsize: int, budget: Optional[int] = None) -> tuple:
    """(heads, rows) per chunk so that S = heads x rows x width stays within the budget;
    when even one row of every head is too wide, fewer heads per chunk."""
    budget = CHUNK_BYTES if budget is None else budget
    row_bytes = max(width, 1) * itemsize
    rows_fit = budget // (row_bytes * heads)
    if rows_fit >= 1:
        return heads, max(1, min(rows, rows_fit, MAX_CHUNK_ROWS))
    return max(1, budget // row_bytes), 1


def attend_chunk(q: np.ndarray, k: np.ndarray, v: np.ndarray, keep: Optional[np.ndarray],
                 sink: Optional[np.ndarray], params: SoftmaxParams) -> tuple:
    """q [g,n,Dq], k [W,Dq], v [W,Dv], keep [n,W] bool (None: all visible), sink [g] logits or
    None. Returns (o [g,n,Dv], lse [g,n]) float32; a row with nothing visible gets o = 0 and
    lse = -inf, or the sink logit."""
    g, n, dq = q.shape
    width, dv = k.shape[0], v.shape[1]
    acc = params.accum
    s = (q.reshape(g * n, dq).astype(acc, copy=False) @ k.astype(acc, copy=False).T).reshape(g, n, width)
    s *= params.scale
    if params.soft_cap > 0:
        s /= params.soft_cap
        np.tanh(s, out=s)
        s *= params.soft_cap
    if keep is not None:
        np.copyto(s, -np.inf, where=~keep)
    m = s.max(axis=-1) if width else np.full((g, n), -np.inf, dtype=acc)
    if sink is not None:
        m = np.maximum(m, sink.astype(acc)[:, None])
    shift = np.where(np.isfinite(m), m, 0).astype(acc)
    s -= shift[..., None]
    np.exp(s, out=s)
    denom = s.sum(axis=-1)
    if sink is not None:
        denom += np.exp(sink.astype(acc)[:, None] - shift)
    if params.p_dtype is not None:  # the denominator above keeps the unrounded P
        s = dtypes.round_to(s, params.p_dtype).astype(acc, copy=False)
    o = (s.reshape(g * n, width) @ v.astype(acc, copy=False)).reshape(g, n, dv)
    o /= np.where(denom > 0, denom, 1)[..., None]
    o *= params.v_scale
    with np.errstate(divide="ignore"):
        lse = shift + np.log(denom)
    return o.astype(np.float32, copy=False), lse.astype(np.float32)
