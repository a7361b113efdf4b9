"""The wgmma MLA decode kernel (kernel_src/fmha_mla_wgmma.hip) compiled for the CPU against the
NumPy reference: every GPU thread a fiber (fmha_cpu_emulation.h), wgmma from
kernel_src/fmha_wgmma_emulation.h (fmha_wgmma.h's own descriptor encoders, the documented
operand and fragment layouts), cp.async and the pack from fmha_mma_sync.h's emulation.

This checks the kernel's descriptors and swizzled loads, the split of S = Q K^T between the
warpgroups and the exchanges of logits, row maxima and P, masks, page tables, LSE, sink, soft
cap, fp8 widening and split-KV partials. Whether the descriptor model is the GPU's is for the
GPU tests (tests/test_gpu_mla.py). Most cases use head dims 192/128 (fewer k-steps, cheaper to
emulate); a few use DeepSeek's 576/512.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_kernels_emulated import CXX, DRIVER, host_buffers, kernel_libraries, run_emulated
from test_mla_emulated import DEEPSEEK, Emulated, _assert_matches, _tolerance, mla

from fmha_bench import dtypes
from fmha_bench.kernels import kernel_args
from fmha_bench.kernels_mla import mla_launch_config, mla_wgmma_spec, wgmma_refusal, wgmma_shared_bytes
from fmha_bench.problem import Problem
from fmha_bench.reference import split_partials

pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")

SMEM_EXTRA = r"""
extern "C" int smem_bytes() { return fmha::kSmemBytes; }
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return kernel_libraries(tmp_path_factory.mktemp("mla_wgmma_emulated"), "w", DRIVER + SMEM_EXTRA, "fmha::kThreads")


@pytest.fixture(scope="module")
def emulate(library):
    """emulate(problem, num_splits=1) -> Emulated: one launch of the wgmma instance over
    NaN-poisoned outputs and workspaces."""

    def run(problem: Problem, num_splits: int = 1) -> Emulated:
        assert wgmma_refusal(problem, "sm_90a") is None, wgmma_refusal(problem, "sm_90a")
        spec = mla_wgmma_spec("sm_90a", problem)
        x = problem.make_inputs(seed=1)
        host = host_buffers(problem, x, num_splits)
        args = kernel_args(problem, x, {k: v.ctypes.data for k, v in host.items()}, num_splits)
        grid, block, shared = mla_launch_config(spec, problem, num_splits)
        lib = library(spec)
        assert block == (256, 1, 1) and lib.smem_bytes() + 1024 == shared
        run_emulated(lib, args, grid)
        return Emulated(dtypes.decode(host["o"], problem.out_dt), host["lse"], host.get("o_acc"), host.get("lse_acc"),
                        x)

    return run


# ----------------------------------------------------------------------------- DeepSeek shapes
@pytest.mark.parametrize("dtype", ["bf16", "fp8_e4m3fn"])
def test_deepseek_head_dims_over_two_key_tiles(emulate, dtype):
    p = Problem(**{**DEEPSEEK, "dtype": dtype}, batch=1, seqlen_q=1, seqlen_k=100, nhead_q=64)
    _assert_matches(p, emulate(p))


def test_two_row_tiles_of_128_heads_with_two_new_tokens(emulate):
    p = mla(batch=1, seqlen_q=2, seqlen_k=130, nhead_q=128)
    _assert_matches(p, emulate(p))


# ----------------------------------------------------------------------------- axes of the decode
@pytest.mark.parametrize("nhead_q,seqlen_q", [(16, 1), (16, 4), (32, 2), (64, 3)])
def test_heads_and_bottom_right_causal_query_lengths(emulate, nhead_q, seqlen_q):
    """16..192 rows: part-filled and several 64-row tiles, several query positions in one tile."""
    p = mla(batch=2, seqlen_q=seqlen_q, seqlen_k=75, nhead_q=nhead_q)
    _assert_matches(p, emulate(p))


@pytest.mark.parametrize("page_size,table", [(1, "vllm"), (16, "sglang"), (64, "vllm"), (5, "sglang")])
def test_page_sizes_and_tables_with_a_part_filled_last_page(emulate, page_size, table):
    """Slots past a sequence hold NaN: reading one would show."""
    p = mla(batch=2, seqlen_q=2, seqlen_k=150, nhead_q=32, page_size=page_size, page_table=table)
    _assert_matches(p, emulate(p))


def test_headwise_table_with_a_sliding_window_never_reads_recycled_pages(emulate):
    p = mla(batch=2, seqlen_q=3, seqlen_k=200, nhead_q=16, page_size=7, page_table="headwise", swa_heads=(0,),
            swa_window=20, swa_sink=3)
    _assert_matches(p, emulate(p))


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp8_e4m3fn"])
def test_dtypes_match_reference(emulate, dtype):
    """fp8: Q and cache widened to bf16 exactly, descales in S and in O (K's for V), bf16 output."""
    p = mla(batch=2, seqlen_q=2, seqlen_k=90, nhead_q=32, dtype=dtype)
    _assert_matches(p, emulate(p))


def test_unequal_cache_lengths_with_empty_sequences(emulate):
    p = mla(mode="group", batch=5, seqlen_q=[1, 2, 0, 1, 1], seqlen_k=[1, 130, 5, 0, 64], nhead_q=16, sink=True)
    _assert_matches(p, emulate(p))


@pytest.mark.parametrize("problem", [
    mla(batch=2, seqlen_q=4, seqlen_k=2, nhead_q=16, page_size=1, sink=True),         # rows that see no key
    mla(batch=2, seqlen_q=2, seqlen_k=140, nhead_q=32, mask="b:20,0,4", soft_cap=5.0, sink=True, dtype="fp16"),
    mla(batch=1, seqlen_q=4, seqlen_k=130, nhead_q=16, mask="t:3,5"),
    mla(batch=1, seqlen_q=2, seqlen_k=130, nhead_q=64, mask="0", lse=False, scale=192 ** -0.5),
], ids=lambda p: p.name())
def test_masks_sink_soft_cap_and_scale(emulate, problem):
    _assert_matches(problem, emulate(problem))


# ----------------------------------------------------------------------------- split-KV partials
@pytest.mark.parametrize("problem", [
    mla(batch=2, seqlen_q=2, seqlen_k=300, nhead_q=32, sink=True, num_splits=3),
    mla(batch=1, seqlen_q=1, seqlen_k=37, nhead_q=64, num_splits=8),   # most splits hold no key
    mla(mode="group", batch=3, seqlen_q=[1, 0, 2], seqlen_k=[150, 5, 0], nhead_q=16, dtype="fp8_e4m3fn",
        mask="b:9,0,2", page_size=5, page_table="sglang", num_splits=4),
], ids=lambda p: p.name())
def test_split_partials_match_reference_and_leave_o_to_the_combine(emulate, problem):
    num_splits = problem.num_splits
    run = emulate(problem, num_splits=num_splits)
    o_s, lse_s = split_partials(problem, run.inputs, num_splits)
    if problem.mode == "group":
        lse_s = lse_s.transpose(0, 2, 1)   # the reference keeps partial LSEs row-major: [S, total_q, Hq]
    np.testing.assert_array_equal(np.isneginf(run.lse_acc), np.isneginf(lse_s))
    np.testing.assert_allclose(run.lse_acc, lse_s, atol=1e-4, rtol=0)
    np.testing.assert_allclose(run.o_acc, o_s, atol=_tolerance(problem, run.inputs).atol, rtol=0)
    assert np.isnan(run.o).all() and np.isnan(run.lse).all(), "a split pass writes partials only"


@pytest.mark.parametrize("dtype", ["bf16", "fp8_e4m3fn"])
def test_host_shared_bytes_mirror_the_kernel(library, dtype):
    p = Problem(**{**DEEPSEEK, "dtype": dtype}, batch=1, seqlen_q=1, seqlen_k=10, nhead_q=64)
    assert library(mla_wgmma_spec("sm_90a", p)).smem_bytes() + 1024 == wgmma_shared_bytes(576, dtype)
