"""Split-KV partial results and their LSE combine (SPEC section 6).

Partials are laid out row-major with a leading split axis: O `[num_splits, *O layout]` and LSE
`[num_splits, *O layout[:-1]]`, i.e. `[num_splits,B,Hq,Sq]` in batch mode and
`[num_splits,total_q,Hq]` in group mode (the transpose of the final group LSE `[Hq,total_q]`),
so that `combine` needs no layout knowledge. Partials leave the learned sink out: a sink is one
more partial with lse = s_h and o = 0, to be appended before combining.
"""
from __future__ import annotations

import numpy as np

from ..inputs import Inputs
from ..problem import Problem
from .engine import Engine
from .layout import output_shapes, rows_view


def split_partials(problem: Problem, inputs: Inputs, num_splits: int, *, accum=np.float32) -> tuple:
    """(o_s, lse_s) float32: split s covers keys [s*X, min(Sk,(s+1)*X)), X = ceil(Sk/num_splits),
    per sequence; an empty split (or one whose keys are all masked) has lse -inf and o 0."""
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    engine = Engine(problem, inputs, accum=accum)
    o_shape, _ = output_shapes(problem)
    o_s = np.zeros((num_splits,) + o_shape, np.float32)
    lse_s = np.full((num_splits,) + o_shape[:-1], -np.inf, np.float32)
    G = problem.group_size
    for b, (sq, sk) in enumerate(zip(problem.seqlens_q(), problem.seqlens_k())):
        width = -(-sk // num_splits)
        rows = np.arange(sq)
        for kv_head in range(problem.nhead_k):
            heads = slice(kv_head * G, (kv_head + 1) * G)
            for s in range(num_splits):
                lo, hi = s * width, min(sk, (s + 1) * width)
                if lo >= hi:
                    continue
                o, lse = engine.attend(b, kv_head, heads, rows, cols=(lo, hi), with_sink=False)
                rows_view(problem, o_s[s], b, heads)[...] = o
                rows_view(problem, lse_s[s], b, heads)[...] = lse
    return o_s, lse_s


def combine(o_s: np.ndarray, lse_s: np.ndarray) -> tuple:
    """Merge partials along axis 0: M = max lse_s, L = M + ln sum exp(lse_s - M) (-inf when all
    are empty), O = sum exp(lse_s - L) o_s. lse_s.shape must be o_s.shape[:-1]."""
    if lse_s.shape != o_s.shape[:-1]:
        raise ValueError(f"lse_s shape {lse_s.shape} must be o_s shape {o_s.shape} minus the last axis")
    m = lse_s.max(axis=0)
    m = np.where(np.isfinite(m), m, 0)
    total = np.exp(lse_s - m).sum(axis=0)
    with np.errstate(divide="ignore"):
        lse = m + np.log(total)
    weights = np.exp(lse_s - np.where(np.isfinite(lse), lse, 0))
    o = (weights[..., None] * o_s).sum(axis=0)
    return o.astype(np.float32), lse.astype(np.float32)
