"""MLA decode (family mla) on a real GPU against the NumPy reference: the dispatcher's pick, and
each kernel forced: the wgmma MLA kernel (fmha_mla_wgmma.hip, sm_90a), the mma.sync MLA kernel
(fmha_mla_decode.hip) and the portable kernel, each where it runs the problem. Run on the device
machine: `python3 -m pytest -q -m gpu tests/test_gpu_mla.py`.

Every case is validated in full (every output row) with outputs poisoned before the launch
(point_runner.run_once).
"""
from __future__ import annotations

import pytest
from gpu_support import open_gpu

from fmha_bench.kernels_mla import TILES, WGMMA_TAG, tile_tag
from fmha_bench.problem import Problem
from test_gpu_kernels import _check, _check_address_order

pytestmark = pytest.mark.gpu

# --kernel substrings: the wgmma kernel's tag, the mma.sync kernel's labels (`mla_<dtype>_..._mla_q64k32s3`),
# the portable kernel's tags.
FORCED = {"wgmma": "mla-wgmma", "mma": "_mla_q", "portable": "portable"}


@pytest.fixture(scope="module", params=["dispatcher", *FORCED])
def gpu(request):
    """Every case with the dispatcher's pick and with each kernel forced (skipped where the forced
    kernel does not run the case: the wgmma kernel off sm_90a, the portable kernel past its limits)."""
    backend, device = open_gpu()
    from fmha_bench.providers.fmha import FmhaProvider
    provider = FmhaProvider()
    if request.param in FORCED:
        provider.force_kernel(FORCED[request.param])
    return backend, device, provider

DEEPSEEK = dict(family="mla", nhead_k=1, hdim_q=576, hdim_v=512, kv_layout="nhd", dtype="bf16", mask="b",
                page_size=64, lse=True)


def mla(**fields) -> Problem:
    return Problem(**{**DEEPSEEK, **fields})


@pytest.mark.parametrize("nhead_q", [16, 64, 128])
@pytest.mark.parametrize("seqlen_q", [1, 2, 3, 4])
def test_heads_and_new_tokens_over_unequal_cache_lengths(gpu, nhead_q, seqlen_q):
    _check(gpu, mla(mode="group", batch=3, seqlen_q=[seqlen_q] * 3, seqlen_k=[1000, 5, 4097], nhead_q=nhead_q))


@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("table", ["vllm", "sglang"])
def test_page_sizes_and_tables_with_shuffled_pages_and_a_part_filled_last_page(gpu, page_size, table):
    _check(gpu, mla(batch=4, seqlen_q=2, seqlen_k=2049, nhead_q=64, page_size=page_size, page_table=table))


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp8_e4m3fn"])
@pytest.mark.parametrize("nhead_q", [16, 128])
def test_cache_dtypes(gpu, dtype, nhead_q):
    """fp8: Q and cache e4m3fn with per-tensor descales, bf16 output."""
    _check(gpu, mla(batch=4, seqlen_q=1, seqlen_k=3000, nhead_q=nhead_q, dtype=dtype))


@pytest.mark.parametrize("problem", [
    mla(batch=2, seqlen_q=2, seqlen_k=3000, nhead_q=32, page_table="headwise", swa_heads=(0,), swa_window=1024,
        swa_sink=4),
    mla(batch=2, seqlen_q=1, seqlen_k=3000, nhead_q=128, sink=True, soft_cap=30.0, scale=192 ** -0.5),
    mla(mode="group", batch=4, seqlen_q=[4, 0, 1, 2], seqlen_k=[2, 7, 0, 640], nhead_q=16, sink=True),
    mla(batch=4, seqlen_q=1, seqlen_k=8192, nhead_q=128, scale=192 ** -0.5),   # the target shape, 4 sequences
], ids=lambda p: p.name())
def test_windows_sinks_soft_cap_empty_sequences_and_the_target_shape(gpu, problem):
    _check(gpu, problem)


@pytest.mark.parametrize("page_size", [1, 64])
def test_address_page_order(gpu, page_size):
    _check_address_order(gpu, mla(batch=4, seqlen_q=2, seqlen_k=3000, nhead_q=64, page_size=page_size,
                                  page_order="address"))


@pytest.fixture(scope="module")
def device():
    return open_gpu()


@pytest.mark.parametrize("tag", [WGMMA_TAG] + [tile_tag(t) for t in TILES])
def test_every_mla_tile(device, tag):
    """Each tile as `fmha:<tag>` (--all-instances); tiles the GPU's shared memory cannot hold skip."""
    from fmha_bench.providers.fmha import FmhaProvider
    _check((*device, FmhaProvider(tag)), mla(batch=4, seqlen_q=1, seqlen_k=3001, nhead_q=64))


@pytest.mark.parametrize("num_splits,batch", [(2, 2), (5, 2), (0, 1)])
def test_split_kv_with_the_combine(gpu, num_splits, batch):
    row = _check(gpu, mla(batch=batch, seqlen_q=2, seqlen_k=20000, nhead_q=64, num_splits=num_splits, sink=True))
    assert " split" in row.kernel and "combine_" in row.kernel, row.kernel


@pytest.mark.parametrize("mask", ["0", "t", "b:100,0", "b:-1,0,8", "t:3,5", "xb:300"])
def test_masks_of_a_multi_token_decode(gpu, mask):
    """Windows and sink prefixes cut tiles inside and at the edges of the cache; 3 query positions
    of 64 heads: rows of several positions share a 64-row tile."""
    _check(gpu, mla(batch=2, seqlen_q=3, seqlen_k=1500, nhead_q=64, mask=mask))


@pytest.mark.parametrize("problem", [
    mla(batch=3, seqlen_q=4, seqlen_k=5000, nhead_q=128, num_splits=3, dtype="fp16", mask="b:700,0"),
    mla(batch=2, seqlen_q=1, seqlen_k=9000, nhead_q=16, num_splits=7, dtype="fp8_e4m3fn", page_size=16),
    mla(mode="group", batch=4, seqlen_q=[1, 3, 0, 2], seqlen_k=[3000, 10, 0, 4097], nhead_q=64, num_splits=4,
        page_size=1, page_table="sglang", sink=True, soft_cap=20.0),
    mla(batch=2, seqlen_q=2, seqlen_k=4000, nhead_q=128, lse=False),
], ids=lambda p: p.name())
def test_dtypes_heads_and_tables_split_and_unsplit_without_lse(gpu, problem):
    _check(gpu, problem)
