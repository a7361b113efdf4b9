"""`attention`: the reference output of any Problem, full or at sampled query rows."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..inputs import Inputs
from ..problem import Problem
from .engine import Engine
from .layout import lse_view, output_shapes, rows_view
from .sampling import plan_index, sample_plan


@dataclass
class RefOutput:
    o: Optional[np.ndarray]          # float32 full O (None when sampled)
    lse: Optional[np.ndarray]        # float32 full LSE, natural log (None when sampled)
    index: Optional[tuple]           # sampled (b, h, i) int64 arrays, or None
    o_rows: Optional[np.ndarray]     # [N, Dv] at the sampled rows
    lse_rows: Optional[np.ndarray]   # [N] at the sampled rows
    seconds: float                   # wall time of the call
    rows_computed: int               # (b, h, row) triples computed


def attention(problem: Problem, inputs: Inputs, *, sampled_rows: Optional[int] = None, sample_seed: int = 0,
              p_fp8: bool = False, accum=np.float32) -> RefOutput:
    """Reference attention of `problem` on `inputs` for every family (splitkv's combine is exact,
    so it is computed without splitting). With `sampled_rows`, only a deterministic subset of
    min(sampled_rows, Sq_b) rows per (sequence, query head) is computed: cost O(rows x Sk)."""
    start = time.perf_counter()
    engine = Engine(problem, inputs, p_fp8=p_fp8, accum=accum)
    if sampled_rows is None:
        o, lse = _full(problem, engine)
        rows = sum(problem.seqlens_q()) * problem.nhead_q
        return RefOutput(o, lse, None, None, None, time.perf_counter() - start, rows)
    plan = sample_plan(problem, sampled_rows, sample_seed)
    o_rows, lse_rows = _sampled(problem, engine, plan)
    index = plan_index(plan)
    return RefOutput(None, None, index, o_rows, lse_rows, time.perf_counter() - start, len(index[0]))


def _full(problem: Problem, engine: Engine) -> tuple:
    o_shape, lse_shape = output_shapes(problem)
    o = np.zeros(o_shape, np.float32)
    lse = np.full(lse_shape, -np.inf, np.float32)
    G = problem.group_size
    for b, sq in enumerate(problem.seqlens_q()):
        for kv_head in range(problem.nhead_k):
            heads = slice(kv_head * G, (kv_head + 1) * G)
            o_bh, lse_bh = engine.attend(b, kv_head, heads, np.arange(sq))
            rows_view(problem, o, b, heads)[...] = o_bh
            lse_view(problem, lse, b, heads)[...] = lse_bh
    return o, lse


def _sampled(problem: Problem, engine: Engine, plan: list) -> tuple:
    """Each (sequence, query head) has its own rows, so heads are computed one at a time."""
    o_parts, lse_parts = [np.zeros((0, problem.hdim_v), np.float32)], [np.zeros(0, np.float32)]
    for b, h, rows in plan:
        o, lse = engine.attend(b, h // problem.group_size, slice(h, h + 1), rows)
        o_parts.append(o[0])
        lse_parts.append(lse[0])
    return np.concatenate(o_parts), np.concatenate(lse_parts)
