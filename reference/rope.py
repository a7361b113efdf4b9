"""Rotary position embedding and the append-KV step (SPEC section 7).

`append_kv` writes the new keys, rotated at their absolute positions `cache_len[b] + i` and
rounded to the cache dtype (the values a kernel then attends over), and the new values into a
float32 copy of the paged cache. Queries are rotated at the same positions and rounded to the
input dtype too, as a kernel that rotates Q on the fly feeds it to the matrix unit in that type.
A new token's slot must exist: a -1 table entry for its block is a ValueError.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes
from ..inputs import Inputs
from ..problem import ROTARY_STYLES, Problem
from .kv_source import page_ids
from .layout import rows_view


def apply_rope(x: np.ndarray, positions, cos: np.ndarray, sin: np.ndarray, rotary_dim: int,
               style: str) -> np.ndarray:
    """Rotate the first `rotary_dim` dims of x [..., D] (float32 copy). `positions` broadcasts to
    x.shape[:-1]; cos/sin are [max_pos, rotary_dim/2]. Style "interleaved" pairs (2k, 2k+1),
    "half" pairs (k, k + rotary_dim/2); dims >= rotary_dim pass through."""
    if style not in ROTARY_STYLES:
        raise ValueError(f"rotary style {style!r}; one of {', '.join(ROTARY_STYLES)}")
    out = np.array(x, dtype=np.float32, copy=True)
    if rotary_dim == 0:
        return out
    half = rotary_dim // 2
    positions = np.asarray(positions, dtype=np.int64)
    c, s = cos[positions, :half], sin[positions, :half]
    if style == "interleaved":
        a, b = out[..., 0:rotary_dim:2], out[..., 1:rotary_dim:2]
    else:
        a, b = out[..., :half], out[..., half:rotary_dim]
    a0, b0 = a.copy(), b.copy()
    a[...] = a0 * c - b0 * s
    b[...] = b0 * c + a0 * s
    return out


def _positions(problem: Problem, cache_len: np.ndarray) -> np.ndarray:
    """Absolute position of each new token, shaped to broadcast over the head axis."""
    if problem.mode == "group":
        pos = [c + np.arange(n) for c, n in zip(cache_len, problem.seqlens_q())]
        return np.concatenate(pos or [np.zeros(0, np.int64)]).astype(np.int64)[:, None]
    return (cache_len[:, None] + np.arange(problem.seqlens_q()[0]))[:, None, :].astype(np.int64)


def _rotate(problem: Problem, inputs: Inputs, x: np.ndarray, positions) -> np.ndarray:
    rotated = apply_rope(dtypes.decode(x, problem.dt), positions, inputs.rope_cos, inputs.rope_sin,
                         problem.rotary_dim, problem.rotary_style)
    return dtypes.round_to(rotated, problem.dt)


def append_kv(problem: Problem, inputs: Inputs) -> tuple:
    """(k_cache, v_cache, q_rotated): float32 copies of the paged caches (same layout as
    inputs.k / inputs.v) holding the appended tokens, and Q rotated (Q's layout)."""
    cache_len = np.asarray(inputs.cache_len, dtype=np.int64)
    positions = _positions(problem, cache_len)
    k_new = _rotate(problem, inputs, inputs.k_new, positions)
    v_new = dtypes.decode(inputs.v_new, problem.dt)
    q_rotated = _rotate(problem, inputs, inputs.q, positions)
    k_cache = np.array(dtypes.decode(inputs.k, problem.dt), copy=True)
    v_cache = np.array(dtypes.decode(inputs.v, problem.dt), copy=True)
    P = problem.page_size
    for b, n_new in enumerate(problem.seqlens_q()):
        if n_new == 0:
            continue
        tokens = cache_len[b] + np.arange(n_new)
        first = tokens[0] // P
        for h in range(problem.nhead_k):
            pages = page_ids(problem, inputs, b, h, first, tokens[-1] // P)[tokens // P - first]
            offsets = tokens % P
            for cache, new in ((k_cache, k_new), (v_cache, v_new)):
                values = rows_view(problem, new, b, slice(h, h + 1))[0]
                if problem.kv_layout == "hnd":
                    cache[pages, h, offsets] = values
                else:
                    cache[pages, offsets, h] = values
    return k_cache, v_cache, q_rotated
