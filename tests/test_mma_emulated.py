"""The mma.sync forward kernel (kernel_src/fmha_fwd_mma.hip) compiled for the CPU
(fmha_cpu_emulation.h runs every GPU thread as a fiber; fmha_mma_sync.h emulates ldmatrix, mma.sync
and cp.async with the PTX fragment layouts) against the NumPy reference.

This checks the kernel's tile loader (dense rows, the three page tables, both cache layouts,
partial last pages, absent pages), masks, GQA, varlen, LSE, sink and soft cap without a GPU.
Small tiles (one or two warps) keep the emulation fast and put several key tiles into tiny
problems; one case runs a shipped tile.

Paged caches get one NaN page in front of the pool: a kernel that dereferences a -1 page-table
entry (past a sequence, or a recycled headwise block) reads it and the output shows NaN.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_kernels_emulated import (CXX, assert_matches_with_rounded_p, host_buffers_with_nan_page, kernel_libraries,
                                   run_emulated)

from fmha_bench import dtypes
from fmha_bench.kernels import kernel_args
from fmha_bench.kernels_mma import mma_candidates, mma_launch_config
from fmha_bench.problem import Problem

pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")

# Two warps of 16 rows, 32 keys a tile: several row and key tiles in small problems, a loader
# pass of one row per thread. ONE_WARP: 32 rows per warp (two m16 tiles), 64 keys for 32 threads.
SMALL = {"block_q": 32, "block_k": 32, "warps": 2}
ONE_WARP = {"block_q": 32, "block_k": 64, "warps": 1}
SHIPPED = {"block_q": 64, "block_k": 64, "warps": 4}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """library(spec) -> the instance compiled for the CPU (cached per define set)."""
    return kernel_libraries(tmp_path_factory.mktemp("mma_emulated"), "m", threads="fmha::kThreads")


@dataclasses.dataclass
class Emulated:
    o: np.ndarray      # float32, decoded from the output dtype (NaN where unwritten)
    lse: np.ndarray
    inputs: object


@pytest.fixture(scope="module")
def emulate(library):
    """emulate(problem, tile) -> Emulated: one launch of the mma instance with that tile over
    NaN-poisoned outputs."""

    def run(problem: Problem, tile: dict) -> Emulated:
        candidates = mma_candidates(problem, "sm_90a")
        assert not isinstance(candidates, str), candidates
        defines = {**dict(candidates[0][1].defines), "FMHA_BLOCK_Q": str(tile["block_q"]),
                   "FMHA_BLOCK_K": str(tile["block_k"]), "FMHA_WARPS": str(tile["warps"])}
        spec = dataclasses.replace(candidates[0][1], defines=tuple(defines.items()))
        x = problem.make_inputs(seed=1)
        host, ptrs = host_buffers_with_nan_page(problem, x)
        args = kernel_args(problem, x, ptrs, 1)
        grid, block, _ = mma_launch_config(spec, problem)
        assert block == (32 * tile["warps"], 1, 1)
        run_emulated(library(spec), args, grid)
        return Emulated(dtypes.decode(host["o"], problem.out_dt), host["lse"], x)

    return run


def _assert_matches(problem: Problem, run: Emulated):
    v = run.inputs.decoded("v")
    assert_matches_with_rounded_p(problem, run.o, run.lse, run.inputs,
                                  float(np.abs(v[np.isfinite(v)]).max()) * run.inputs.v_descale)


# ----------------------------------------------------------------------------- dense K/V
@pytest.mark.parametrize("problem", [
    Problem(batch=2, seqlen_q=37, seqlen_k=70, nhead_q=4, nhead_k=2, hdim_q=64, mask="0", lse=True),
    Problem(batch=1, seqlen_q=37, seqlen_k=70, nhead_q=4, nhead_k=2, hdim_q=64, mask="b", dtype="bf16", lse=True),
    Problem(batch=1, seqlen_q=40, seqlen_k=90, nhead_q=8, nhead_k=1, hdim_q=128, mask="t:3,5", dtype="bf16"),
    Problem(batch=1, seqlen_q=45, seqlen_k=20, nhead_q=2, hdim_q=128, mask="b", lse=True, sink=True),
    Problem(batch=1, seqlen_q=30, seqlen_k=75, nhead_q=4, nhead_k=2, hdim_q=64, mask="xb:20", lse=True),
], ids=lambda p: p.name())
def test_dense_masks_gqa_and_head_dims_match_reference(emulate, problem):
    _assert_matches(problem, emulate(problem, SMALL))


def test_dense_varlen_with_empty_sequences_matches_reference(emulate):
    p = Problem(mode="group", batch=4, seqlen_q=[19, 0, 1, 33], seqlen_k=[30, 0, 1, 70], nhead_q=4, nhead_k=2,
                hdim_q=64, mask="b", lse=True, sink=True)
    _assert_matches(p, emulate(p, SMALL))


def test_soft_cap_instance_matches_reference(emulate):
    p = Problem(batch=1, seqlen_q=20, seqlen_k=60, nhead_q=2, hdim_q=64, mask="t", soft_cap=5.0, lse=True)
    _assert_matches(p, emulate(p, SMALL))


# ----------------------------------------------------------------------------- paged K/V
def paged(**fields) -> Problem:
    base = dict(family="paged", mode="group", batch=3, seqlen_q=[5, 1, 20], seqlen_k=[70, 17, 44], nhead_q=4,
                nhead_k=2, hdim_q=64, mask="b", lse=True)
    return Problem(**{**base, **fields})


@pytest.mark.parametrize("problem", [
    paged(page_size=1, page_table="vllm", kv_layout="hnd"),
    paged(page_size=5, page_table="sglang", kv_layout="nhd", dtype="bf16"),
    paged(page_size=16, page_table="vllm", kv_layout="nhd", hdim_q=128, mask="0"),
    paged(page_size=16, page_table="sglang", kv_layout="hnd", mask="b:9,0,2"),
    paged(page_size=64, page_table="vllm", kv_layout="hnd", dtype="bf16", hdim_q=128, nhead_q=8, nhead_k=1),
    paged(page_size=64, page_table="sglang", kv_layout="nhd", mask="t"),
], ids=lambda p: f"{p.name()} {p.kv_layout}")
def test_paged_tables_page_sizes_and_layouts_match_reference(emulate, problem):
    """Part-filled last pages, spare pages and the table entries past a sequence all hold NaN."""
    _assert_matches(problem, emulate(problem, SMALL))


@pytest.mark.parametrize("layout", ["hnd", "nhd"])
def test_headwise_table_never_reads_recycled_blocks(emulate, layout):
    p = Problem(family="paged", batch=2, seqlen_q=3, seqlen_k=150, nhead_q=8, nhead_k=4, hdim_q=64, mask="b",
                page_size=7, page_table="headwise", swa_heads=(1, 2), swa_window=20, swa_sink=3, kv_layout=layout,
                lse=True)
    run = emulate(p, SMALL)
    assert (run.inputs.tables.block_tables_headwise[:, :150 // 7] == -1).any(), "no recycled block to step over"
    _assert_matches(p, run)


@pytest.mark.parametrize("problem", [
    paged(page_size=5, page_table="vllm", kv_layout="nhd", seqlen_k=[130, 3, 64]),
    paged(page_size=16, page_table="headwise", kv_layout="hnd", batch=2, seqlen_q=[2, 9], seqlen_k=[150, 90],
          swa_heads=(0,), swa_window=30, swa_sink=2, dtype="bf16"),
], ids=lambda p: f"{p.name()} {p.kv_layout}")
def test_paged_loader_with_more_key_rows_than_threads(emulate, problem):
    """32 threads resolve 64 key rows per tile; each warp holds two m16 row tiles."""
    _assert_matches(problem, emulate(problem, ONE_WARP))


def test_shipped_tile_on_a_paged_decode(emulate):
    p = Problem(family="paged", batch=2, seqlen_q=1, seqlen_k=[200, 77], mode="group", nhead_q=8, nhead_k=2,
                hdim_q=128, dtype="bf16", mask="b", page_size=16, page_table="vllm", kv_layout="hnd", lse=True)
    _assert_matches(p, emulate(p, SHIPPED))
