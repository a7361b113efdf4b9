"""The whole-page decode kernel (kernel_src/fmha_decode_pages.hip) compiled for the CPU against the
NumPy reference: every GPU thread a fiber (fmha_cpu_emulation.h), ldmatrix / mma.sync / cp.async
from fmha_mma_sync.h's emulation.

This checks the copies of several KV heads per block (both cache layouts, the vLLM and SGLang
tables, partial last pages, spare pages: the pools hold NaN wherever no token lives, and one NaN
page sits in front of page 0), the row table over many tiles and stages, warps sharing a head
and their merge, idle head slots (Hk not a multiple of the block's heads), masks of speculative
decode, sink, soft cap, LSE, and split-KV partials with the combine. Whether the instruction
model is the GPU's is for the GPU tests (tests/test_gpu_kernels.py).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_kernels_emulated import CXX, DRIVER, host_buffers_with_nan_page, kernel_libraries
from test_mma_emulated import _assert_matches
from test_wgmma_emulated import Emulated, launch_and_combine

from fmha_bench.dispatch import num_splits_for
from fmha_bench.kernels_pages import pages_candidates, pages_launch_config, shared_bytes, spec_tile
from fmha_bench.problem import Problem
from fmha_bench.reference import split_partials

pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")

SMEM_EXTRA = r"""
extern "C" int smem_bytes() { return fmha::kSmemBytes; }
extern "C" int threads() { return fmha::kThreads; }
"""
# Small tiles keep the emulation quick and put many tiles into short sequences: two heads a block,
# two warps a head (16 tokens each of a 32-token tile), or one warp a head.
TWO_WARPS_A_HEAD = {"kv_heads": 2, "block_k": 32, "warps": 4, "stages": 3}
ONE_WARP_A_HEAD = {"kv_heads": 2, "block_k": 16, "warps": 2, "stages": 2}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return kernel_libraries(tmp_path_factory.mktemp("pages_emulated"), "p", DRIVER + SMEM_EXTRA, "fmha::kThreads")


@pytest.fixture(scope="module")
def combine_library(tmp_path_factory):
    return kernel_libraries(tmp_path_factory.mktemp("pages_combine"), "c")


def with_tile(spec, tile: dict):
    defines = {**dict(spec.defines), "FMHA_KV_HEADS": str(tile["kv_heads"]), "FMHA_BLOCK_K": str(tile["block_k"]),
               "FMHA_WARPS": str(tile["warps"]), "FMHA_KV_STAGES": str(tile["stages"])}
    return dataclasses.replace(spec, defines=tuple(defines.items()))


@pytest.fixture(scope="module")
def emulate(library, combine_library):
    """emulate(problem, tile=None) -> Emulated: one launch of the problem's default whole-page
    instance (or that instance with `tile`) over NaN-poisoned outputs, then the combine when the
    problem splits (num_splits 0: the count the provider would pick on 132 SMs)."""

    def run(problem: Problem, tile: dict = None) -> Emulated:
        found = pages_candidates(problem, "sm_90a")
        assert not isinstance(found, str), found
        spec = found[0][1] if tile is None else with_tile(found[0][1], tile)
        splits = num_splits_for(problem, spec, 132)
        x = problem.make_inputs(seed=1)
        host, ptrs = host_buffers_with_nan_page(problem, x, splits)
        grid, block, shared = pages_launch_config(spec, problem, splits)
        lib = library(spec)
        assert block == (lib.threads(), 1, 1) and lib.smem_bytes() == shared
        return launch_and_combine(lib, spec, combine_library, problem, x, host, ptrs, grid, splits)

    return run


def decode(**fields) -> Problem:
    base = dict(family="paged", mode="group", batch=3, seqlen_q=[1, 1, 1], seqlen_k=[300, 17, 129], nhead_q=8,
                nhead_k=2, hdim_q=64, dtype="fp16", mask="b", page_size=1, page_table="vllm", kv_layout="hnd",
                lse=True)
    return Problem(**{**base, **fields})


# ----------------------------------------------------------------------------- page tables, layouts, tiles
@pytest.mark.parametrize("problem,tile", [
    (decode(), TWO_WARPS_A_HEAD),
    (decode(kv_layout="nhd", dtype="bf16"), TWO_WARPS_A_HEAD),
    (decode(page_size=3, page_table="sglang", kv_layout="nhd"), ONE_WARP_A_HEAD),
    (decode(page_size=16, page_table="sglang", kv_layout="hnd", seqlen_k=[500, 0, 40]), TWO_WARPS_A_HEAD),
    (decode(page_size=5, nhead_q=12, nhead_k=3, seqlen_k=[200, 33, 1]), TWO_WARPS_A_HEAD),   # an idle head slot
    (decode(hdim_q=128, page_size=1, nhead_q=16, nhead_k=4, seqlen_k=[260, 90, 3]), None),   # the shipped tile
    (decode(hdim_q=128, page_size=16, page_table="sglang", kv_layout="nhd", nhead_q=4, nhead_k=4, dtype="bf16",
            seqlen_k=[300, 5, 64]), None),
], ids=lambda x: (x.name() + " " + x.kv_layout) if isinstance(x, Problem) else str(x))
def test_tables_layouts_and_tiles_match_reference(emulate, problem, tile):
    _assert_matches(problem, emulate(problem, tile))


# ----------------------------------------------------------------------------- masks and extras
@pytest.mark.parametrize("problem", [
    decode(seqlen_q=[2, 4, 3], seqlen_k=[300, 4, 130]),                              # speculative: bottom-right causal
    decode(seqlen_q=[4, 1, 2], seqlen_k=[400, 60, 2], mask="xb:20"),                 # sliding window + sink tokens
    decode(seqlen_q=[1, 3, 1], mask="b:-1,0,40"),                                    # StreamingLLM sink columns
    decode(seqlen_q=[2, 1, 1], soft_cap=5.0, sink=True, dtype="bf16"),
    decode(mode="batch", batch=2, seqlen_q=2, seqlen_k=150, mask="0", sink=True),
    decode(seqlen_q=[0, 1, 2], seqlen_k=[40, 0, 70], sink=True),                     # empty queries and keys
], ids=lambda p: p.name())
def test_masks_sink_and_soft_cap_match_reference(emulate, problem):
    _assert_matches(problem, emulate(problem, TWO_WARPS_A_HEAD))


def test_growing_row_maxima_rescale_o_on_both_warps_of_a_head(emulate):
    """Scores of standard deviation ~20 (log2 units): both warps' running maxima move on later
    tiles, and the end-of-loop merge rescales two different maxima."""
    p = decode(scale=2.0, seqlen_k=[600, 200, 90])
    _assert_matches(p, emulate(p, TWO_WARPS_A_HEAD))


# ----------------------------------------------------------------------------- split-KV
@pytest.mark.parametrize("problem", [
    decode(num_splits=3, sink=True),                                                # split edges inside tiles
    decode(num_splits=5, seqlen_q=[2, 1, 4], mask="xb:40", page_size=16),           # splits the window hides
    decode(num_splits=64, seqlen_k=[40, 3, 90]),                                     # empty splits
], ids=lambda p: p.name())
def test_splits_write_the_spec_partials_and_combine_to_the_reference(emulate, problem):
    run = emulate(problem, TWO_WARPS_A_HEAD)
    _assert_matches(problem, run)
    _, lse_s = split_partials(problem, run.inputs, problem.num_splits)
    lse_s = lse_s.transpose(0, 2, 1)   # group mode: the reference keeps partial LSEs as [S, total_q, Hq]
    np.testing.assert_array_equal(np.isneginf(run.lse_acc), np.isneginf(lse_s))
    np.testing.assert_allclose(run.lse_acc, lse_s, atol=1e-4, rtol=0)


def test_auto_splits_fill_the_gpu_and_combine_to_the_reference(emulate):
    p = decode(num_splits=0, batch=1, seqlen_q=[1], seqlen_k=[3000])
    spec = pages_candidates(p, "sm_90a")[0][1]
    assert num_splits_for(p, spec, 132) > 1
    _assert_matches(p, emulate(p))


# ----------------------------------------------------------------------------- host mirrors
@pytest.mark.parametrize("hdim", [64, 128])
def test_host_shared_bytes_mirror_every_shipped_tile(library, hdim):
    found = pages_candidates(decode(hdim_q=hdim), "sm_90a")
    assert len(found) >= 2, found
    for tag, spec in found:
        assert library(spec).smem_bytes() == shared_bytes(hdim, hdim, spec_tile(spec)), tag
