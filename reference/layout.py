"""Where one sequence's rows live in the Q / O / LSE layouts (SPEC section 1).

Batch mode: Q/O `[B,Hq,Sq,D]`, LSE `[B,Hq,Sq]`. Group mode: Q/O `[total_q,Hq,D]`, LSE
`[Hq,total_q]`. The views returned here are heads-first (`[g, Sq_b, ...]`) whatever the layout,
and they are views, so writing into them fills the full array.
"""
from __future__ import annotations

import numpy as np

from ..problem import Problem


def seq_starts(problem: Problem) -> np.ndarray:
    """Cumulative query offsets [B+1] (group mode's seqstart_q)."""
    return np.concatenate([[0], np.cumsum(problem.seqlens_q())]).astype(np.int64)


def output_shapes(problem: Problem) -> tuple:
    """(O shape, LSE shape) of the full output."""
    Hq, Dv = problem.nhead_q, problem.hdim_v
    if problem.mode == "group":
        total = sum(problem.seqlens_q())
        return (total, Hq, Dv), (Hq, total)
    B, Sq = problem.batch, problem.seqlens_q()[0]
    return (B, Hq, Sq, Dv), (B, Hq, Sq)


def rows_view(problem: Problem, array: np.ndarray, b: int, heads: slice) -> np.ndarray:
    """Sequence b of a token-major array (Q, O, or a row-major per-row array such as split
    partial LSEs) as `[g, Sq_b, ...]`."""
    if problem.mode == "group":
        start = seq_starts(problem)
        return np.moveaxis(array[start[b]:start[b + 1], heads], 1, 0)
    return array[b, heads]


def lse_view(problem: Problem, lse: np.ndarray, b: int, heads: slice) -> np.ndarray:
    """Sequence b of a full LSE array as `[g, Sq_b]`."""
    if problem.mode == "group":
        start = seq_starts(problem)
        return lse[heads, start[b]:start[b + 1]]
    return lse[b, heads]
