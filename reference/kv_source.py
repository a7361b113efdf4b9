"""K/V of one (sequence, KV head) as float32 rows, read only where the mask needs them.

Dense K/V are sliced. A paged cache is read through the table the problem names (SPEC
section 4): only the blocks covering the requested key ranges are touched, so recycled (-1)
blocks and unowned NaN slabs are never read; a -1 entry for a needed block is a ValueError.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import dtypes
from ..inputs import Inputs
from ..problem import Problem


def _table_row(problem: Problem, inputs: Inputs, b: int, kv_head: int) -> np.ndarray:
    """Page ids of sequence b (KV head kv_head for headwise tables), in logical block order."""
    t = inputs.tables
    if problem.page_table == "vllm":
        return t.block_table[b]
    if problem.page_table == "sglang":
        return t.kv_page_indices[t.kv_indptr[b]:t.kv_indptr[b + 1]]
    return t.block_tables_headwise[b * problem.nhead_k + kv_head]


def page_ids(problem: Problem, inputs: Inputs, b: int, kv_head: int, first: int, last: int) -> np.ndarray:
    """Page ids of logical blocks first..last (inclusive); ValueError if one is absent or -1."""
    row = _table_row(problem, inputs, b, kv_head)
    where = f"{problem.page_table} page table, sequence {b}, KV head {kv_head}"
    if last >= len(row):
        raise ValueError(f"{where}: logical block {last} is needed but the table has {len(row)} entries")
    ids = np.asarray(row[first:last + 1], dtype=np.int64)
    missing = np.flatnonzero(ids < 0)
    if missing.size:
        raise ValueError(f"{where}: logical block {first + int(missing[0])} is needed but its entry is -1")
    return ids


class KVSource:
    """Reads key/value rows of a problem's K/V (dense or paged). `k_cache`/`v_cache` replace the
    inputs' caches with float32 ones (appendkv's updated cache)."""

    def __init__(self, problem: Problem, inputs: Inputs,
                 k_cache: Optional[np.ndarray] = None, v_cache: Optional[np.ndarray] = None):
        self.problem, self.inputs = problem, inputs
        replaced = k_cache is not None
        self.k = k_cache if replaced else inputs.k
        self.v = v_cache if replaced else inputs.v
        self.dt = dtypes.FP32 if replaced else problem.dt
        self.starts_k = np.concatenate([[0], np.cumsum(problem.seqlens_k())]).astype(np.int64)

    def rows(self, b: int, kv_head: int, ranges) -> tuple:
        """K [W,Dq] and V [W,Dv] float32 of the key ranges [(start, end), ...] concatenated."""
        p = self.problem
        ks, vs = [], []
        for start, end in ranges:
            k = self._read(self.k, b, kv_head, start, end)
            ks.append(k)
            # MLA stores no V: it is the first hdim_v columns of the latent row.
            vs.append(k[:, :p.hdim_v] if p.family == "mla" else self._read(self.v, b, kv_head, start, end))
        if not ks:
            return (np.zeros((0, p.hdim_q), np.float32), np.zeros((0, p.hdim_v), np.float32))
        return np.concatenate(ks), np.concatenate(vs)

    def _read(self, array: np.ndarray, b: int, h: int, start: int, end: int) -> np.ndarray:
        p = self.problem
        if not p.is_paged:
            if p.mode == "group":
                base = self.starts_k[b]
                bits = array[base + start:base + end, h]
            else:
                bits = array[b, h, start:end]
            return dtypes.decode(bits, self.dt)
        P = p.page_size
        first, last = start // P, (end - 1) // P
        ids = page_ids(p, self.inputs, b, h, first, last)
        slabs = array[ids, h] if p.kv_layout == "hnd" else array[ids, :, h]   # [blocks, P, D]
        flat = slabs.reshape(-1, slabs.shape[-1])
        return dtypes.decode(flat[start - first * P:end - first * P], self.dt)
