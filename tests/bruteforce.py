"""Independent float64 plain-loop attention, for tests of the reference only.

Written apart from `reference/` on purpose: it shares no code with it (nor `Mask.row_bounds`),
re-deriving every rule from the spec: the keep-test of SPEC section 2 per (i, j), the page
tables of section 4 token by token, RoPE of section 7 pair by pair. Small shapes only.
"""
from __future__ import annotations

import math

import numpy as np

from fmha_bench import dtypes
from fmha_bench.masks import BOTTOM_RIGHT, NONE, Mask


def keep(mask: Mask, i: int, j: int, sq: int, sk: int) -> bool:
    """SPEC section 2, read literally."""
    if mask.align == NONE:
        return True
    p = i + sk - sq if mask.align == BOTTOM_RIGHT else i
    left_ok = mask.left < 0 or p - mask.left <= j
    right_ok = mask.right < 0 or j <= p + mask.right
    if left_ok and right_ok:
        return True
    return j < mask.sink and right_ok


def _cache_token(problem, inputs, cache, b, h, t):
    """Token t of sequence b, KV head h, read through the problem's page table; NaN when the
    block is recycled (-1), so using it anywhere poisons the result."""
    P, tables = problem.page_size, inputs.tables
    block = t // P
    if problem.page_table == "vllm":
        page = int(tables.block_table[b][block])
    elif problem.page_table == "sglang":
        page = int(tables.kv_page_indices[int(tables.kv_indptr[b]) + block])
    else:
        page = int(tables.block_tables_headwise[b * problem.nhead_k + h][block])
    if page < 0:
        return np.full(cache.shape[-1], np.nan)
    bits = cache[page, h, t % P] if problem.kv_layout == "hnd" else cache[page, t % P, h]
    return dtypes.decode(bits, problem.dt).astype(np.float64)


def rope_vector(x, pos, cos, sin, rotary_dim, style):
    """RoPE of one vector, pair by pair, in float32 like a kernel."""
    out = [np.float32(v) for v in x]
    half = rotary_dim // 2
    for k in range(half):
        a, b = (2 * k, 2 * k + 1) if style == "interleaved" else (k, k + half)
        c, s = np.float32(cos[pos][k]), np.float32(sin[pos][k])
        out[a] = np.float32(x[a] * c - x[b] * s)
        out[b] = np.float32(x[b] * c + x[a] * s)
    return np.array(out, dtype=np.float32)


def _query(problem, inputs, b, h, i):
    if problem.mode == "group":
        bits = inputs.q[int(inputs.seqstart_q[b]) + i, h]
    else:
        bits = inputs.q[b, h, i]
    q = dtypes.decode(bits, problem.dt)
    if problem.family == "appendkv" and problem.rotary_dim:
        q = dtypes.round_to(rope_vector(q, int(inputs.cache_len[b]) + i, inputs.rope_cos, inputs.rope_sin,
                                        problem.rotary_dim, problem.rotary_style), problem.dt)
    return q.astype(np.float64)


def _new_token(problem, inputs, b, h, i, which):
    arr = inputs.k_new if which == "k" else inputs.v_new
    if problem.mode == "group":
        bits = arr[int(np.sum(problem.seqlens_q()[:b])) + i, h]
    else:
        bits = arr[b, h, i]
    x = dtypes.decode(bits, problem.dt)
    if which == "k" and problem.rotary_dim:
        x = dtypes.round_to(rope_vector(x, int(inputs.cache_len[b]) + i, inputs.rope_cos, inputs.rope_sin,
                                        problem.rotary_dim, problem.rotary_style), problem.dt)
    return x.astype(np.float64)


def key_value(problem, inputs, b, h, t):
    """(k, v) float64 of token t (decoded, descales not applied)."""
    if not problem.is_paged:
        if problem.mode == "group":
            row = int(inputs.seqstart_k[b]) + t
            kb, vb = inputs.k[row, h], inputs.v[row, h]
        else:
            kb, vb = inputs.k[b, h, t], inputs.v[b, h, t]
        return (dtypes.decode(kb, problem.dt).astype(np.float64), dtypes.decode(vb, problem.dt).astype(np.float64))
    if problem.family == "appendkv" and t >= int(inputs.cache_len[b]):
        i = t - int(inputs.cache_len[b])
        return _new_token(problem, inputs, b, h, i, "k"), _new_token(problem, inputs, b, h, i, "v")
    k = _cache_token(problem, inputs, inputs.k, b, h, t)
    if problem.family == "mla":
        return k, k[:problem.hdim_v]
    return k, _cache_token(problem, inputs, inputs.v, b, h, t)


def brute_attention(problem, inputs, p_fp8=False):
    """(o, lse) float64 in the full layouts of SPEC section 1."""
    p = problem
    sqs, sks = p.seqlens_q(), p.seqlens_k()
    group = p.mode == "group"
    total_q = sum(sqs)
    o = np.zeros((total_q, p.nhead_q, p.hdim_v) if group else (p.batch, p.nhead_q, sqs[0], p.hdim_v))
    lse = np.zeros((p.nhead_q, total_q) if group else (p.batch, p.nhead_q, sqs[0]))
    scale = p.softmax_scale * inputs.q_descale * inputs.k_descale
    v_scale = inputs.k_descale if p.family == "mla" else inputs.v_descale
    start = 0
    for b in range(p.batch):
        sq, sk = sqs[b], sks[b]
        for h in range(p.nhead_q):
            kvh = h // (p.nhead_q // p.nhead_k)
            mask = p.mask_for_kv_head(kvh)
            kv = {}
            for i in range(sq):
                q = _query(p, inputs, b, h, i)
                logits, values = [], []
                for j in range(sk):
                    if not keep(mask, i, j, sq, sk):
                        continue
                    if j not in kv:
                        kv[j] = key_value(p, inputs, b, kvh, j)
                    s = float(np.dot(q, kv[j][0])) * scale
                    if p.soft_cap > 0:
                        s = p.soft_cap * math.tanh(s / p.soft_cap)
                    logits.append(s)
                    values.append(kv[j][1])
                sink = float(inputs.sink_logits[h]) if p.sink else None
                candidates = logits + ([sink] if sink is not None else [])
                if not candidates:
                    out_o, out_lse = np.zeros(p.hdim_v), -math.inf
                else:
                    m = max(candidates)
                    weights = [math.exp(s - m) for s in logits]
                    denom = sum(weights) + (math.exp(sink - m) if sink is not None else 0.0)
                    if p_fp8 and weights:
                        weights = list(dtypes.round_to(np.array(weights, dtype=np.float32), p.dt).astype(np.float64))
                    acc = np.zeros(p.hdim_v)
                    for w, v in zip(weights, values):
                        acc = acc + w * v
                    out_o, out_lse = acc / denom * v_scale, m + math.log(denom)
                if group:
                    o[start + i, h], lse[h, start + i] = out_o, out_lse
                else:
                    o[b, h, i], lse[b, h, i] = out_o, out_lse
        start += sq
    return o, lse


def assert_matches(o, lse, o_ref, lse_ref, atol=2e-5, rtol=1e-4):
    """O within atol + rtol*|ref|; LSE within atol with the same -inf positions; NaN never passes."""
    assert o.shape == o_ref.shape and lse.shape == lse_ref.shape
    np.testing.assert_allclose(o, o_ref, atol=atol, rtol=rtol, equal_nan=False)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(lse_ref))
    np.testing.assert_allclose(lse, lse_ref, atol=atol, rtol=0, equal_nan=False)
