"""Our kernels on a real GPU against the NumPy reference (run on the device machine: pytest -m gpu).

Every case is validated in full (every output row) with outputs poisoned before the launch.
"""
from __future__ import annotations

import dataclasses
import itertools

import pytest
from gpu_support import open_gpu

from fmha_bench.problem import Problem

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["dispatcher", "wgmma", "wgmma-decode", "wgmma-ws", "wgmma-ws3", "wgmma-tma",
                                        "wgmma-persistent", "pages", "mma", "portable"])
def gpu(request):
    """Every case runs with the dispatcher's pick and with each kernel family forced: wgmma
    (sm_90a; its first grid tile, its first one-warpgroup decode tile at any query length, its
    first cp.async warp-specialised grid tile: tags ending in `ws`, the three-consumer one of hdim
    64, the first TMA tile (dense K/V through tensor maps), and the persistent launch of a warp-specialised tile over a plan: prefill points), the whole-page
    decode kernel (paged points with <= 16 rows per KV head), mma.sync, portable (skipped where the
    forced family does not run the case)."""
    backend, device = open_gpu()
    from fmha_bench.providers.fmha import FmhaProvider
    provider = FmhaProvider()
    forced = {"wgmma": "wgmma-*", "wgmma-decode": "wgmma-q64", "wgmma-ws": "wgmma-*ws", "wgmma-ws3": "wgmma-q192*ws",
              "wgmma-tma": "wgmma-*-tma",
              "wgmma-persistent": "persistent-", "pages": "pages-*", "mma": "mma-*",
              "portable": "portable"}.get(request.param)
    if forced:
        provider.force_kernel(forced)
    return backend, device, provider


def _check(gpu, problem):
    from fmha_bench.point_runner import run_once
    backend, device, provider = gpu
    reason = provider.supports(problem, device)
    if reason:
        pytest.skip(reason)
    row = run_once(problem, provider, backend, device)
    assert row.status == "ok", f"{problem.name()}: {row.status}: {row.reason}"
    assert row.val_mode == "full"
    return row


MASKS = ["0", "t", "b", "t:3,5", "b:16,0", "b:-1,0,4", "t:8,-1,2", "xt:33", "xb:20"]
DTYPES = ["fp16", "bf16", "fp8_e4m3fn"]


@pytest.mark.parametrize("dtype,mask", list(itertools.product(DTYPES, MASKS)))
def test_every_mask_and_dtype_matches_reference(gpu, dtype, mask):
    _check(gpu, Problem(batch=2, seqlen_q=77, seqlen_k=130, nhead_q=4, nhead_k=2, hdim_q=128, dtype=dtype, mask=mask,
                        lse=True))


@pytest.mark.parametrize("hdim_q,hdim_v", [(64, 64), (128, 128), (256, 256), (128, 64), (192, 128)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_head_dims_match_reference(gpu, hdim_q, hdim_v, dtype):
    _check(gpu, Problem(batch=1, seqlen_q=100, seqlen_k=100, nhead_q=2, hdim_q=hdim_q, hdim_v=hdim_v, dtype=dtype,
                        mask="b"))


@pytest.mark.parametrize("seqlen", [1, 7, 1000, 4097])
def test_odd_sequence_lengths(gpu, seqlen):
    _check(gpu, Problem(batch=1, seqlen_q=seqlen, seqlen_k=seqlen, nhead_q=2, hdim_q=64, mask="b", lse=True))


def test_bottom_right_causal_with_more_queries_than_keys_masks_first_rows(gpu):
    _check(gpu, Problem(batch=2, seqlen_q=90, seqlen_k=40, nhead_q=2, hdim_q=64, mask="b", lse=True))


@pytest.mark.parametrize("ratio", [1, 4, 7, 16])
def test_gqa_ratios(gpu, ratio):
    _check(gpu, Problem(batch=2, seqlen_q=65, seqlen_k=200, nhead_q=ratio * 2, nhead_k=2, hdim_q=128, mask="b"))


def test_varlen_with_empty_and_one_token_sequences(gpu):
    _check(gpu, Problem(mode="group", batch=4, seqlen_q=[33, 0, 1, 130], seqlen_k=[50, 0, 1, 129], nhead_q=4,
                        nhead_k=1, hdim_q=128, mask="b", lse=True))


@pytest.mark.parametrize("softcap,sink", [(30.0, False), (0.0, True), (20.0, True)])
def test_soft_cap_and_learned_sink(gpu, softcap, sink):
    _check(gpu, Problem(batch=2, seqlen_q=64, seqlen_k=300, nhead_q=4, nhead_k=4, hdim_q=128, mask="b",
                        soft_cap=softcap, sink=sink, lse=True))


def test_fp8_e4m3fn_with_descales(gpu):
    _check(gpu, Problem(batch=2, seqlen_q=256, seqlen_k=256, nhead_q=4, nhead_k=2, hdim_q=128, dtype="fp8_e4m3fn",
                        mask="t", lse=True))


@pytest.mark.parametrize("problem", [
    Problem(family="paged", mode="group", batch=3, seqlen_q=[5, 1, 40], seqlen_k=[300, 17, 40], nhead_q=8, nhead_k=2,
            hdim_q=128, mask="b", page_size=16, page_table="vllm", kv_layout="hnd", dtype="fp8_e4m3fn", lse=True),
    Problem(family="paged", mode="group", batch=3, seqlen_q=[5, 1, 40], seqlen_k=[300, 17, 40], nhead_q=8, nhead_k=2,
            hdim_q=64, mask="b", page_size=1, page_table="sglang", kv_layout="nhd", dtype="fp8_e4m3fn", lse=True),
    Problem(mode="group", batch=4, seqlen_q=[33, 0, 1, 130], seqlen_k=[50, 0, 1, 129], nhead_q=14, nhead_k=2,
            hdim_q=256, mask="b", soft_cap=20.0, sink=True, dtype="fp8_e4m3fn", lse=True),
    Problem(batch=2, seqlen_q=300, seqlen_k=1000, nhead_q=16, nhead_k=1, hdim_q=128, mask="xb:64", sink=True,
            dtype="fp8_e4m3fn", lse=True),
], ids=lambda p: p.name())
def test_fp8_paged_varlen_gqa_soft_cap_and_sink(gpu, problem):
    """fp8 on the tensor-core kernels: V transposed into shared memory, P rounded to e4m3 at 2^8."""
    _check(gpu, problem)


@pytest.mark.parametrize("page_size", [1, 16, 256])
@pytest.mark.parametrize("table", ["vllm", "sglang"])
@pytest.mark.parametrize("kv_layout", ["hnd", "nhd"])
def test_paged_kv_with_shuffled_pages_and_partial_last_page(gpu, page_size, table, kv_layout):
    _check(gpu, Problem(family="paged", mode="group", batch=3, seqlen_q=[5, 1, 40], seqlen_k=[300, 17, 40],
                        nhead_q=8, nhead_k=2, hdim_q=128, mask="b", page_size=page_size, page_table=table,
                        kv_layout=kv_layout, lse=True))


def test_paged_decode_batch_mode(gpu):
    _check(gpu, Problem(family="paged", batch=4, seqlen_q=1, seqlen_k=1000, nhead_q=32, nhead_k=8, hdim_q=128,
                        mask="b", page_size=16))


@pytest.mark.parametrize("problem", [
    Problem(family="paged", batch=8, seqlen_q=1, seqlen_k=3000, nhead_q=32, nhead_k=8, hdim_q=128, mask="b",
            page_size=1, lse=True),
    Problem(family="paged", mode="group", batch=3, seqlen_q=[4, 1, 2], seqlen_k=[900, 0, 17], nhead_q=8, nhead_k=2,
            hdim_q=64, mask="xb:20", page_size=3, page_table="sglang", kv_layout="nhd", lse=True),
    Problem(family="paged", mode="group", batch=3, seqlen_q=[2, 1, 1], seqlen_k=[700, 40, 129], nhead_q=12,
            nhead_k=6, hdim_q=128, mask="b", page_size=16, kv_layout="nhd", dtype="bf16", soft_cap=20.0, sink=True,
            lse=True),
    Problem(family="paged", batch=4, seqlen_q=1, seqlen_k=2049, nhead_q=16, nhead_k=16, hdim_q=128, mask="0",
            page_size=64, lse=True),
], ids=lambda p: p.name())
def test_decode_over_pages_of_several_kv_heads(gpu, problem):
    """Decode shapes the whole-page kernel takes (<= 16 rows per KV head): page 1 and partial pages,
    both layouts and tables, speculative queries under windows, idle head slots (6 KV heads)."""
    _check(gpu, problem)


def _check_address_order(gpu, problem):
    """The row ran over the visit plan's table, which moved some of the shuffled pages."""
    row = _check(gpu, problem)
    note = next(n for n in row.notes if n.startswith("page order address: "))
    assert int(note.split(": ")[1].split(" of ")[0]) > 0, note
    return row


@pytest.mark.parametrize("problem", [
    Problem(family="paged", batch=8, seqlen_q=1, seqlen_k=3001, nhead_q=32, nhead_k=8, hdim_q=128, mask="b",
            page_size=1, lse=True),
    Problem(family="paged", batch=4, seqlen_q=4, seqlen_k=2000, nhead_q=32, nhead_k=8, hdim_q=128, mask="b",
            page_size=16, page_table="sglang", dtype="bf16", num_splits=0, lse=True),
    Problem(family="paged", mode="group", batch=3, seqlen_q=[3, 1, 2], seqlen_k=[900, 40, 1500], nhead_q=8,
            nhead_k=2, hdim_q=64, mask="b:255,0,16", page_size=8, kv_layout="nhd", lse=True),
    Problem(family="paged", batch=2, seqlen_q=300, seqlen_k=2100, nhead_q=16, nhead_k=4, hdim_q=128, mask="b",
            page_size=16, dtype="bf16", lse=True),
], ids=lambda p: p.name())
def test_address_page_order_matches_reference(gpu, problem):
    """page_order address: decode at page 1, speculative rows with auto splits over an sglang
    table, a window with a sink, and a prefill chunk over a cached prefix."""
    _check_address_order(gpu, dataclasses.replace(problem, page_order="address"))


def test_headwise_tables_never_read_recycled_blocks(gpu):
    _check(gpu, Problem(family="paged", batch=2, seqlen_q=4, seqlen_k=700, nhead_q=8, nhead_k=4, hdim_q=128,
                        mask="b", page_size=16, page_table="headwise", swa_heads=(1, 3), swa_window=64, swa_sink=16))


# ----------------------------------------------------------------------------- split-KV (forward + combine)
def _check_split(gpu, problem, num_splits):
    """The row ran the split path with `num_splits` splits and the combine."""
    row = _check(gpu, problem)
    assert f" split{num_splits} + combine_" in row.kernel, row.kernel


def _splitkv(**fields) -> Problem:
    defaults = dict(family="splitkv", batch=2, seqlen_q=7, seqlen_k=1000, nhead_q=8, nhead_k=2, hdim_q=128, mask="b",
                    lse=True)
    return Problem(**{**defaults, **fields})


@pytest.mark.parametrize("num_splits", [2, 3, 16, 64, 1500])  # 1500 > 1000 keys: empty splits
@pytest.mark.parametrize("dtype", DTYPES)
def test_split_counts_match_reference(gpu, num_splits, dtype):
    _check_split(gpu, _splitkv(num_splits=num_splits, dtype=dtype), num_splits)


@pytest.mark.parametrize("mask", MASKS)
def test_split_every_mask_matches_reference(gpu, mask):
    _check_split(gpu, _splitkv(seqlen_q=77, seqlen_k=1300, mask=mask, num_splits=5), 5)


@pytest.mark.parametrize("seqlen_q", [1, 2, 3, 4])
@pytest.mark.parametrize("table", ["vllm", "sglang"])
def test_split_causal_decode_over_a_paged_cache(gpu, seqlen_q, table):
    _check_split(gpu, Problem(family="paged", batch=4, seqlen_q=seqlen_q, seqlen_k=3001, nhead_q=32, nhead_k=8,
                              hdim_q=128, mask="b", page_size=16, page_table=table, lse=True, num_splits=6), 6)


def test_split_paged_varlen_with_page_size_one_and_nhd(gpu):
    _check_split(gpu, Problem(family="paged", mode="group", batch=3, seqlen_q=[5, 1, 0], seqlen_k=[300, 17, 40],
                              nhead_q=8, nhead_k=2, hdim_q=128, mask="b", page_size=1, kv_layout="nhd", lse=True,
                              num_splits=4), 4)


def test_split_headwise_sliding_window_heads_skip_recycled_blocks(gpu):
    _check_split(gpu, Problem(family="paged", batch=2, seqlen_q=4, seqlen_k=700, nhead_q=8, nhead_k=4, hdim_q=128,
                              mask="b", page_size=16, page_table="headwise", swa_heads=(1, 3), swa_window=64,
                              swa_sink=16, lse=True, num_splits=8), 8)


@pytest.mark.parametrize("problem", [
    # Sq > Sk: the first rows see no key; their LSE is the sink logit
    _splitkv(seqlen_q=90, seqlen_k=40, nhead_q=4, sink=True, soft_cap=20.0, num_splits=3),
    _splitkv(mode="group", batch=5, seqlen_q=[33, 0, 1, 130, 4], seqlen_k=[50, 0, 1, 0, 900], nhead_q=4, nhead_k=1,
             sink=True, num_splits=7),
    _splitkv(mode="group", batch=3, seqlen_q=[3, 0, 7], seqlen_k=[410, 5, 0], nhead_q=4, nhead_k=4, lse=False,
             num_splits=5),
    _splitkv(hdim_q=192, hdim_v=128, dtype="bf16", num_splits=4),
    _splitkv(hdim_q=64, num_splits=4, nhead_q=16, nhead_k=1),
], ids=lambda p: p.name())
def test_split_sink_varlen_and_head_dims_match_reference(gpu, problem):
    _check_split(gpu, problem, problem.num_splits)


@pytest.mark.parametrize("batch,expect_split", [(1, True), (64, False)])
def test_auto_split_count_follows_the_sm_count(gpu, batch, expect_split):
    row = _check(gpu, Problem(family="paged", batch=batch, seqlen_q=1, seqlen_k=8195, nhead_q=32, nhead_k=8,
                              hdim_q=128, mask="b", page_size=16, page_table="sglang", lse=True, num_splits=0))
    assert (" split" in row.kernel) == expect_split, row.kernel
