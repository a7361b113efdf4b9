"""Deterministic, non-zero inputs for a Problem: the exact bytes a GPU kernel reads.

Layouts (row-major):
- batch mode: Q [B,Hq,Sq,Dq], dense K/V [B,Hk,Sk,D], O [B,Hq,Sq,Dv], LSE [B,Hq,Sq]
- group mode: Q [total_q,Hq,Dq], dense K/V [total_k,Hk,D], O [total_q,Hq,Dv], LSE [Hq,total_q]
- paged cache: [num_pages,Hk,P,D] (kv_layout hnd) or [num_pages,P,Hk,D] (nhd); MLA keeps one
  latent cache (Hk = 1, nhd) and no separate V: V is the first hdim_v columns of K.
Every cache slot that holds no token (spare pages, the tail of a part-filled last page,
headwise slabs nobody owns) is NaN, so a kernel or reference that reads one fails loudly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import dtypes
from .problem import Problem

SPARE_PAGES = 3  # unowned, NaN-filled pages in every pool


@dataclass
class PageTables:
    pages: list                                  # pages[b] (or pages[b][h] for headwise): ids in token order, -1 = recycled
    block_table: Optional[np.ndarray] = None     # vllm [B, max_pages] int32
    kv_indptr: Optional[np.ndarray] = None       # sglang [B+1] int32
    kv_page_indices: Optional[np.ndarray] = None # sglang [total_pages] int32
    kv_last_page_len: Optional[np.ndarray] = None  # sglang [B] int32
    block_tables_headwise: Optional[np.ndarray] = None  # headwise [B*Hk, max_pages] int32
    num_pages: int = 0


@dataclass
class Inputs:
    problem: Problem
    seed: int
    q: np.ndarray
    k: np.ndarray                       # dense K, or the paged K cache (the latent cache for MLA)
    v: Optional[np.ndarray]             # dense V, or the paged V cache; None for MLA
    seqstart_q: np.ndarray              # int32 [B+1]
    seqstart_k: np.ndarray              # int32 [B+1] (dense group mode; cumulative seqlen_k otherwise)
    seqlen_k: np.ndarray                # int32 [B]
    tables: Optional[PageTables] = None
    sink_logits: Optional[np.ndarray] = None   # fp32 [Hq]
    q_descale: float = 1.0
    k_descale: float = 1.0
    v_descale: float = 1.0
    k_new: Optional[np.ndarray] = None  # appendkv: [B,Hk,S_new,Dq] / [total_new,Hk,Dq]
    v_new: Optional[np.ndarray] = None
    cache_len: Optional[np.ndarray] = None     # appendkv: int32 [B]
    rope_cos: Optional[np.ndarray] = None      # fp32 [max_pos, rotary_dim/2]
    rope_sin: Optional[np.ndarray] = None
    extra: dict = field(default_factory=dict)

    def decoded(self, name: str) -> np.ndarray:
        """float32 values of a tensor input (exact for every dtype)."""
        return dtypes.decode(getattr(self, name), self.problem.dt)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in vars(self).values() if isinstance(a, np.ndarray))


# Tensors larger than this repeat a pool of this many normal values: drawing and encoding GBs of
# fresh randoms costs minutes on a CPU, and a prime period never lines up with a page, head or
# row stride, so a kernel that reads the wrong element still reads a different value.
VALUE_POOL = 1_048_573


def _random(rng, shape, dt: dtypes.DType):
    """Normal values stored as `dt`; fp8 gets a per-tensor descale that uses its full range."""
    n = int(np.prod(shape))
    pool = rng.standard_normal(min(n, VALUE_POOL), dtype=np.float32)
    descale = 1.0
    if dt.is_fp8 and pool.size:
        descale = float(np.abs(pool).max()) / dt.max or 1.0
    bits = dtypes.encode(pool / np.float32(descale), dt)
    return np.resize(bits, n).reshape(shape), descale


def _cumsum0(lens) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def make_inputs(problem: Problem, seed: int = 0) -> Inputs:
    p = problem.validate()
    rng = np.random.default_rng(seed)
    dt = p.dt
    sq, sk = p.seqlens_q(), p.seqlens_k()
    B, Hq, Hk, Dq, Dv = p.batch, p.nhead_q, p.nhead_k, p.hdim_q, p.hdim_v
    group = p.mode == "group"

    q_shape = (sum(sq), Hq, Dq) if group else (B, Hq, sq[0], Dq)
    q, q_descale = _random(rng, q_shape, dt)
    inputs = Inputs(problem=p, seed=seed, q=q, k=None, v=None, seqstart_q=_cumsum0(sq),
                    seqstart_k=_cumsum0(sk), seqlen_k=np.asarray(sk, dtype=np.int32), q_descale=q_descale)
    if p.sink:
        inputs.sink_logits = (rng.standard_normal(Hq).astype(np.float32) + 1.0)

    if not p.is_paged:
        k_shape = (sum(sk), Hk, Dq) if group else (B, Hk, sk[0], Dq)
        v_shape = k_shape[:-1] + (Dv,)
        inputs.k, inputs.k_descale = _random(rng, k_shape, dt)
        inputs.v, inputs.v_descale = _random(rng, v_shape, dt)
        return inputs

    # Paged: draw the whole cache at once, then NaN every slot that holds no token.
    tables = inputs.tables = _make_tables(p, rng)
    valid = _token_slots(p, tables)
    inputs.k, inputs.k_descale = _random(rng, (tables.num_pages, Hk, p.page_size, Dq), dt)
    if p.family != "mla":
        inputs.v, inputs.v_descale = _random(rng, (tables.num_pages, Hk, p.page_size, Dv), dt)
    else:  # V is the first hdim_v values of each latent row: K's values, K's scale
        inputs.v_descale = inputs.k_descale
    if p.family == "appendkv":
        _split_off_new_tokens(p, inputs, valid)
    for name in ("k", "v"):
        cache = getattr(inputs, name)
        if cache is not None:
            cache[~valid] = dtypes.poison((), dt)
            if p.kv_layout == "nhd":
                setattr(inputs, name, np.ascontiguousarray(cache.transpose(0, 2, 1, 3)))
    return inputs


def _kv_pages(p: Problem, tables: PageTables, b: int, kv_head: int) -> np.ndarray:
    ids = tables.pages[b][kv_head] if p.page_table == "headwise" else tables.pages[b]
    return np.asarray(ids, dtype=np.int64)


def _token_slots(p: Problem, tables: PageTables) -> np.ndarray:
    """bool [num_pages, Hk, P]: the cache slots that hold a token."""
    P = p.page_size
    valid = np.zeros((tables.num_pages, p.nhead_k, P), dtype=bool)
    heads = range(p.nhead_k) if p.page_table == "headwise" else [slice(None)]
    for b, n in enumerate(p.seqlens_k()):
        full, rest = divmod(n, P)
        for h in heads:
            ids = _kv_pages(p, tables, b, 0 if isinstance(h, slice) else h)
            whole = ids[:full]
            valid[whole[whole >= 0], h] = True
            if rest and ids[full] >= 0:
                valid[ids[full], h, :rest] = True
    return valid


def _split_off_new_tokens(p: Problem, inputs: Inputs, valid):
    """appendkv: the last seqlen_q tokens of each sequence arrive as new K/V (unrotated); their
    cache slots are emptied (NaN) until the append writes them."""
    P, cache_len = p.page_size, p.cache_lens()
    new_k, new_v = [], []
    for b, (c, n) in enumerate(zip(cache_len, p.seqlens_k())):
        positions = np.arange(c, n)
        slots = positions % P
        per_head_k, per_head_v = [], []
        for h in range(p.nhead_k):
            pages = _kv_pages(p, inputs.tables, b, h)[positions // P]
            per_head_k.append(inputs.k[pages, h, slots])
            per_head_v.append(inputs.v[pages, h, slots])
            valid[pages, h, slots] = False
        new_k.append(np.stack(per_head_k, axis=1))  # [S_new, Hk, D]
        new_v.append(np.stack(per_head_v, axis=1))
    if p.mode == "group":
        k_new, v_new = np.concatenate(new_k, axis=0), np.concatenate(new_v, axis=0)
    else:
        k_new = np.stack(new_k).transpose(0, 2, 1, 3)
        v_new = np.stack(new_v).transpose(0, 2, 1, 3)
    inputs.k_new, inputs.v_new = k_new, v_new
    inputs.cache_len = np.asarray(cache_len, dtype=np.int32)
    half = p.rotary_dim // 2
    if half:
        inv_freq = 10000.0 ** (-np.arange(half, dtype=np.float64) / half)
        angles = np.arange(max(p.seqlens_k()), dtype=np.float64)[:, None] * inv_freq[None, :]
        inputs.rope_cos = np.cos(angles).astype(np.float32)
        inputs.rope_sin = np.sin(angles).astype(np.float32)


def _make_tables(p: Problem, rng) -> PageTables:
    P = p.page_size
    n_pages = [-(-n // P) for n in p.seqlens_k()]
    if p.page_table == "headwise":
        return _make_headwise_tables(p, rng, n_pages, max(max(n_pages), 1))
    num_pages = sum(n_pages) + SPARE_PAGES
    pool = rng.permutation(num_pages).astype(np.int32)
    starts = _cumsum0(n_pages)
    pages = [[int(x) for x in pool[a:b]] for a, b in zip(starts, starts[1:])]
    return page_tables(p, pages, num_pages)


def page_tables(p: Problem, pages: list, num_pages: int) -> PageTables:
    """The vllm and sglang arrays of per-sequence page lists (`pages[b]`: ids in token order)."""
    n_pages = [len(ids) for ids in pages]
    t = PageTables(pages=pages, num_pages=num_pages)
    t.block_table = np.full((p.batch, max(max(n_pages), 1)), -1, dtype=np.int32)
    for b, ids in enumerate(pages):
        t.block_table[b, :len(ids)] = ids
    t.kv_indptr = _cumsum0(n_pages)
    t.kv_page_indices = np.concatenate([np.asarray(ids, dtype=np.int32) for ids in pages])
    t.kv_last_page_len = np.asarray([n - (np_ - 1) * p.page_size if np_ else 0
                                     for n, np_ in zip(p.seqlens_k(), n_pages)], dtype=np.int32)
    return t


def _make_headwise_tables(p: Problem, rng, n_pages, max_pages) -> PageTables:
    """Each KV head owns its own pool of slabs cache[id, h]; SWA heads keep only the blocks
    their sink and window touch, the others are recycled (-1)."""
    B, Hk = p.batch, p.nhead_k
    keep = [[_blocks_needed(p, b, h) for h in range(Hk)] for b in range(B)]
    per_head = [sum(len(keep[b][h]) for b in range(B)) for h in range(Hk)]
    num_pages = max(per_head) + SPARE_PAGES
    pages = [[None] * Hk for _ in range(B)]
    table = np.full((B * Hk, max_pages), -1, dtype=np.int32)
    for h in range(Hk):
        pool = iter(rng.permutation(num_pages).tolist())
        for b in range(B):
            ids = [-1] * n_pages[b]
            for blk in keep[b][h]:
                ids[blk] = next(pool)
            pages[b][h] = ids
            table[b * Hk + h, :len(ids)] = ids
    return PageTables(pages=pages, block_tables_headwise=table, num_pages=num_pages)


def _blocks_needed(p: Problem, b: int, kv_head: int) -> list:
    sq, sk = p.seqlens_q()[b], p.seqlens_k()[b]
    if kv_head not in p.swa_heads:
        return list(range(-(-sk // p.page_size)))
    P = p.page_size
    blocks = set()
    for start, end in p.mask_for_kv_head(kv_head).touched_ranges(sq, sk):
        blocks.update(range(start // P, (end - 1) // P + 1))
    return sorted(blocks)
