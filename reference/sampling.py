"""Sampled query rows: which rows a cheap check computes, and picking them out of full outputs."""
from __future__ import annotations

import numpy as np

from ..problem import Problem
from .layout import seq_starts


def sample_rows(seqlen: int, count: int, seed: int, b: int, h: int) -> np.ndarray:
    """Sorted rows of one (sequence, query head): all rows when count >= seqlen, else row 0,
    the last row (edges catch most indexing bugs) and count-2 others drawn from (seed, b, h)."""
    if count >= seqlen:
        return np.arange(seqlen, dtype=np.int64)
    rng = np.random.default_rng([seed, b, h])
    middle = rng.choice(np.arange(1, seqlen - 1), size=count - 2, replace=False)
    return np.sort(np.concatenate([[0, seqlen - 1], middle])).astype(np.int64)


def sample_plan(problem: Problem, count: int, seed: int) -> list:
    """[(b, h, rows)] for every (sequence, query head), ordered by sequence then head."""
    if count < 2:
        raise ValueError(f"sampled_rows must be >= 2 (the first and last rows are always kept), got {count}")
    if seed < 0:
        raise ValueError(f"sample_seed must be >= 0, got {seed}")
    return [(b, h, sample_rows(sq, count, seed, b, h))
            for b, sq in enumerate(problem.seqlens_q()) for h in range(problem.nhead_q)]


def plan_index(plan: list) -> tuple:
    """The plan as (b, h, i) int64 arrays, one entry per sampled row."""
    parts = [(np.full(len(i), b), np.full(len(i), h), i) for b, h, i in plan] or [([], [], [])]
    return tuple(np.concatenate(column).astype(np.int64) for column in zip(*parts))


def take_rows(problem: Problem, array: np.ndarray, index: tuple, what: str = "o") -> np.ndarray:
    """The sampled rows of a FULL output (what="o": [N, Dv]) or LSE (what="lse": [N]) in the
    layouts of SPEC section 1."""
    b, h, i = index
    if what not in ("o", "lse"):
        raise ValueError(f"what must be 'o' or 'lse', got {what!r}")
    if problem.mode == "batch":
        return array[b, h, i]
    token = seq_starts(problem)[b] + i
    return array[token, h] if what == "o" else array[h, token]
