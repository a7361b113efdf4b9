"""Family mixed on a real GPU against the NumPy reference (run on the device machine: pytest -m gpu):
the persistent launch (the dispatcher's pick: wgmma's warp-specialised tile on sm_90a; and wgmma's
all-threads and decode tiles and the mma.sync tiles forced) and the separate launches, validated in
full with outputs poisoned before the launch."""
from __future__ import annotations

import pytest
from gpu_support import open_gpu

from fmha_bench.problem import Problem
from fmha_bench.timing import MeasureSettings

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["persistent", "persistent-q128k128", "persistent-q64k64b2", "persistent-q64k128",
                                        "persistent-q64k64w4", "persistent-q128k64w8", "persistent-q128k32w4", "separate"])
def gpu(request):
    backend, device = open_gpu()
    from fmha_bench.providers.fmha import FmhaProvider
    tag = None if request.param == "persistent" else request.param
    return backend, device, FmhaProvider(tag)


def _check(gpu, problem, measure=None):
    from fmha_bench.point_runner import run_once
    backend, device, provider = gpu
    reason = provider.supports(problem, device)
    if reason:
        pytest.skip(reason)
    row = run_once(problem, provider, backend, device, measure=measure)
    assert row.status == "ok", f"{problem.name()}: {row.status}: {row.reason}"
    assert row.val_mode == "full"
    return row


def mixed(**fields) -> Problem:
    """Decodes of 1..4 tokens over uneven caches, then a prefill chunk; GQA 32:8, hdim 128."""
    base = dict(family="mixed", mode="group", batch=5, seqlen_q=[1, 1, 4, 1, 300], seqlen_k=[2000, 37, 900, 1, 700],
                nhead_q=32, nhead_k=8, hdim_q=128, dtype="bf16", mask="b", page_size=16, lse=True)
    return Problem(**{**base, **fields})


@pytest.mark.parametrize("problem", [
    mixed(),
    mixed(dtype="fp16", sink=True, soft_cap=30.0),
    mixed(mask="b:255,0,4", page_table="sglang", page_size=1, kv_layout="nhd"),
    mixed(page_table="headwise", page_size=64, swa_heads=(0, 2, 4, 6), swa_window=256, swa_sink=4, sink=True),
    mixed(batch=3, seqlen_q=[1, 1, 1], seqlen_k=[32771, 5, 4000]),        # decode only: the long one splits
    mixed(batch=1, seqlen_q=[1000], seqlen_k=[1000], mask="0"),            # prefill only
    mixed(batch=3, seqlen_q=[0, 1, 90], seqlen_k=[10, 0, 40], nhead_q=8, nhead_k=2),  # empty, no keys, Sq > Sk
    mixed(hdim_q=64, mask="xb:100"),                                      # wgmma's two-blocks-per-SM tile
    mixed(dtype="fp8_e4m3fn", sink=True),                                 # wgmma only
], ids=lambda p: p.name())
def test_mixed_batches_match_reference(gpu, problem):
    _check(gpu, problem)


@pytest.mark.parametrize("problem", [
    mixed(page_order="address"),
    mixed(mask="b:255,0,4", page_table="sglang", page_size=1, kv_layout="nhd", page_order="address"),
    mixed(batch=3, seqlen_q=[1, 1, 1], seqlen_k=[32771, 5, 4000], page_order="address"),
], ids=lambda p: p.name())
def test_address_page_order(gpu, problem):
    row = _check(gpu, problem)
    assert any(note.startswith("page order address: ") for note in row.notes), row.notes


def test_graph_timing_captures_the_launches(gpu):
    row = _check(gpu, mixed(), MeasureSettings(warmup=1, min_samples=3, max_samples=3, l2_flush=False, graphs="on"))
    assert row.timing_mode == "graph"
