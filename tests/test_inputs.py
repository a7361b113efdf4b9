import numpy as np

from fmha_bench import dtypes
from fmha_bench.problem import Problem


def _paged(**kw):
    base = dict(family="paged", mode="group", batch=3, seqlen_q=[2, 1, 3], seqlen_k=[37, 0, 16], nhead_q=4,
                nhead_k=2, hdim_q=16, mask="b", page_size=8)
    base.update(kw)
    return Problem(**base)


def test_inputs_are_deterministic_and_non_zero():
    p = Problem(batch=2, seqlen_q=16, nhead_q=2, hdim_q=32, dtype="bf16")
    a, b = p.make_inputs(3), p.make_inputs(3)
    assert np.array_equal(a.q, b.q) and np.array_equal(a.k, b.k)
    assert not np.array_equal(a.q, p.make_inputs(4).q)
    assert np.count_nonzero(a.decoded("v")) > 0.99 * a.v.size


def test_page_tables_agree_and_pages_are_shuffled():
    x = _paged().make_inputs(0)
    t = x.tables
    assert t.kv_indptr.tolist() == [0, 5, 5, 7]
    assert t.kv_last_page_len.tolist() == [5, 0, 8]  # 37 = 4*8 + 5; empty; full last page
    for b, ids in enumerate(t.pages):
        assert t.block_table[b, :len(ids)].tolist() == ids
        assert (t.block_table[b, len(ids):] == -1).all()
        assert t.kv_page_indices[t.kv_indptr[b]:t.kv_indptr[b + 1]].tolist() == ids
    assert t.pages[0] != sorted(t.pages[0]) or t.pages[2] != sorted(t.pages[2])


def test_cache_slots_without_tokens_are_nan():
    x = _paged().make_inputs(0)
    k = x.decoded("k")  # [pages, Hk, P, D]
    last = x.tables.pages[0][-1]
    assert np.isfinite(k[last, :, :5]).all() and np.isnan(k[last, :, 5:]).all()
    used = {p for ids in x.tables.pages for p in ids}
    spare = [p for p in range(x.tables.num_pages) if p not in used]
    assert spare and np.isnan(k[spare]).all()


def test_headwise_swa_heads_recycle_blocks_outside_sink_and_window():
    p = _paged(mode="batch", batch=1, seqlen_q=1, seqlen_k=100, page_table="headwise", swa_heads=[1],
               swa_window=10, swa_sink=3)
    t = p.make_inputs(0).tables
    full, swa = t.block_tables_headwise[0], t.block_tables_headwise[1]
    assert (full[:13] >= 0).all()
    # the window [90, 99] lives in blocks 11 and 12, the sink in block 0
    assert [i for i, v in enumerate(swa[:13]) if v >= 0] == [0, 11, 12]


def test_fp8_inputs_use_the_format_range_with_a_descale():
    x = Problem(batch=1, seqlen_q=64, nhead_q=2, hdim_q=64, dtype="fp8_e4m3fnuz").make_inputs(0)
    q = dtypes.decode(x.q, dtypes.E4M3FNUZ)
    assert np.abs(q).max() == 240.0 and 0 < x.q_descale < 1


def test_nhd_layout_transposes_the_cache():
    hnd = _paged().make_inputs(0)
    nhd = _paged(kv_layout="nhd").make_inputs(0)
    assert np.array_equal(hnd.k.transpose(0, 2, 1, 3), nhd.k, equal_nan=True)
