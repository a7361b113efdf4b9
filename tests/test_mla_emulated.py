"""The two MLA decode kernels compiled for the CPU against the NumPy reference: fmha_mla_decode.hip
(mma.sync: fmha_mma_sync.h emulates ldmatrix, mma.sync and cp.async with the PTX fragment
layouts) and fmha_mla_wgmma.hip (wgmma from fmha_wgmma_emulation.h: fmha_wgmma.h's own descriptor
encoders, the documented operand and fragment layouts); fmha_cpu_emulation.h runs every GPU
thread as a fiber. The decode cases run on both kernels (fixture `emulate`).

This checks fragment indexing, the k-slice reduction (mma) and the split of S between the
warpgroups (wgmma), masks, page tables, LSE, sink, soft cap, fp8 widening and split-KV partials
without a GPU; whether the descriptor model is the GPU's is for tests/test_gpu_mla.py. Most cases
use head dims 192/128 (fewer k-steps, cheaper to emulate); a few use DeepSeek's 576/512. Key
lengths span several 64-key tiles (the wgmma kernel's) and so several of the mma kernel's 32.
"""
from __future__ import annotations

import ctypes
import dataclasses

import numpy as np
import pytest
from test_kernels_emulated import CXX, DRIVER, assert_matches_with_rounded_p, host_buffers, kernel_libraries, run_emulated

from fmha_bench import dtypes
from fmha_bench.kernels import kernel_args
from fmha_bench.kernels_mla import (TILES, mla_launch_config, mla_spec, mla_tiles, mla_wgmma_spec, tile_tag,
                                    wgmma_refusal, wgmma_shared_bytes)
from fmha_bench.problem import Problem
from fmha_bench.reference import split_partials
from fmha_bench.validate import tolerance_for

pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")

# Beside DRIVER's fmha_emulate: the instance's shared memory (and the mma kernel's fp8 widening).
SMEM_BYTES = r"""
extern "C" int smem_bytes() { return fmha::kSmemBytes; }
"""
MLA_EXTRAS = SMEM_BYTES + r"""
extern "C" void widen_fp8(const unsigned char* codes, unsigned short* out)
{
    fmha::widen_fp8_chunk<fmha::Mma>(out, out + 8, codes);   /* to the kernel's 16-bit type */
}
"""

LATENT = dict(family="mla", nhead_k=1, kv_layout="nhd", hdim_q=192, hdim_v=128, dtype="bf16", page_size=16, mask="b",
              lse=True)
DEEPSEEK = dict(LATENT, hdim_q=576, hdim_v=512, page_size=64)


def mla(**fields) -> Problem:
    return Problem(**{**LATENT, **fields})


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """library(spec) -> the spec's instance compiled for the CPU (cached per define set)."""
    return kernel_libraries(tmp_path_factory.mktemp("mla_emulated"), "d", DRIVER + MLA_EXTRAS, "fmha::kThreads")


@dataclasses.dataclass
class Emulated:
    o: np.ndarray                  # float32, decoded from the output dtype (NaN where unwritten)
    lse: np.ndarray
    o_acc: np.ndarray | None       # split partials [num_splits, *O shape]
    lse_acc: np.ndarray | None
    inputs: object


@pytest.fixture(scope="module")
def emulate_mma(library):
    """emulate_mma(problem, tag=None, num_splits=1) -> Emulated: one launch of the mma MLA
    instance `tag` (default: the first mma tile) over NaN-poisoned outputs and workspaces."""

    def run(problem: Problem, tag: str | None = None, num_splits: int = 1) -> Emulated:
        tiles = mla_tiles(problem, "sm_90a")
        assert not isinstance(tiles, str), tiles
        spec = mla_spec("sm_90a", problem, next(t for t in tiles if tag in (None, tile_tag(t))))
        grid, _, shared = mla_launch_config(spec, problem, num_splits)
        assert library(spec).smem_bytes() == shared
        return _launch(library(spec), problem, num_splits, grid)

    return run


@pytest.fixture(scope="module")
def wgmma_library(tmp_path_factory):
    return kernel_libraries(tmp_path_factory.mktemp("mla_wgmma_emulated"), "w", DRIVER + SMEM_BYTES, "fmha::kThreads")


@pytest.fixture(scope="module")
def emulate_wgmma(wgmma_library):
    """emulate_wgmma(problem, num_splits=1) -> Emulated: one launch of the wgmma MLA instance."""

    def run(problem: Problem, num_splits: int = 1) -> Emulated:
        assert wgmma_refusal(problem, "sm_90a") is None, wgmma_refusal(problem, "sm_90a")
        spec = mla_wgmma_spec("sm_90a", problem)
        grid, block, shared = mla_launch_config(spec, problem, num_splits)
        assert block == (256, 1, 1) and wgmma_library(spec).smem_bytes() + 1024 == shared
        return _launch(wgmma_library(spec), problem, num_splits, grid)

    return run


@pytest.fixture(params=["mma", "wgmma"])
def emulate(request, emulate_mma, emulate_wgmma):
    """emulate(problem, num_splits=1) on each MLA kernel in turn."""
    if request.param == "mma":
        return lambda problem, num_splits=1: emulate_mma(problem, num_splits=num_splits)
    return emulate_wgmma


def _launch(lib, problem: Problem, num_splits: int, grid) -> Emulated:
    x = problem.make_inputs(seed=1)
    host = host_buffers(problem, x, num_splits)
    run_emulated(lib, kernel_args(problem, x, {k: v.ctypes.data for k, v in host.items()}, num_splits), grid)
    return Emulated(dtypes.decode(host["o"], problem.out_dt), host["lse"], host.get("o_acc"), host.get("lse_acc"), x)


def _v_abs_max(problem: Problem, inputs) -> float:
    """V is the first hdim_v columns of the latent cache, with K's descale."""
    v = inputs.decoded("k")[..., :problem.hdim_v]
    return float(np.abs(v[np.isfinite(v)]).max()) * inputs.k_descale


def _assert_matches(problem: Problem, run: Emulated):
    assert_matches_with_rounded_p(problem, run.o, run.lse, run.inputs, _v_abs_max(problem, run.inputs))


# ----------------------------------------------------------------------------- DeepSeek shapes
@pytest.mark.parametrize("tile", TILES, ids=tile_tag)
def test_every_mma_tile_matches_reference_at_deepseek_head_dims(emulate_mma, tile):
    p = Problem(**DEEPSEEK, batch=1, seqlen_q=1, seqlen_k=80, nhead_q=64)
    _assert_matches(p, emulate_mma(p, tile_tag(tile)))


@pytest.mark.parametrize("dtype", ["bf16", "fp8_e4m3fn"])
def test_wgmma_kernel_at_deepseek_head_dims_over_two_key_tiles(emulate_wgmma, dtype):
    p = Problem(**{**DEEPSEEK, "dtype": dtype}, batch=1, seqlen_q=1, seqlen_k=100, nhead_q=64)
    _assert_matches(p, emulate_wgmma(p))


def test_two_row_tiles_of_128_heads_with_two_new_tokens(emulate):
    p = mla(batch=1, seqlen_q=2, seqlen_k=130, nhead_q=128)
    _assert_matches(p, emulate(p))


@pytest.mark.parametrize("dtype", ["bf16", "fp8_e4m3fn"])
def test_wgmma_host_shared_bytes_mirror_the_kernel(wgmma_library, dtype):
    p = Problem(**{**DEEPSEEK, "dtype": dtype}, batch=1, seqlen_q=1, seqlen_k=10, nhead_q=64)
    assert wgmma_library(mla_wgmma_spec("sm_90a", p)).smem_bytes() + 1024 == wgmma_shared_bytes(576, dtype)


# ----------------------------------------------------------------------------- axes of the decode
@pytest.mark.parametrize("nhead_q,seqlen_q", [(16, 1), (16, 4), (32, 2), (64, 3)])
def test_heads_and_bottom_right_causal_query_lengths(emulate, nhead_q, seqlen_q):
    """16..192 rows: the mma kernel's 16-, 32- and 64-row tiles, part-filled and several 64-row
    tiles of the wgmma kernel; rows of several query positions in one tile."""
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
    mla(batch=1, seqlen_q=1, seqlen_k=37, nhead_q=64, num_splits=64),   # most splits hold no key
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
    np.testing.assert_allclose(run.o_acc, o_s, atol=tolerance_for(problem, _v_abs_max(problem, run.inputs), "input").atol,
                               rtol=0)
    assert np.isnan(run.o).all() and np.isnan(run.lse).all(), "a split pass writes partials only"


# ----------------------------------------------------------------------------- fp8 widening
def test_fp8_codes_widen_to_the_exact_bf16_value(library):
    lib = library(mla_spec("sm_90a", mla(dtype="fp8_e4m3fn"), TILES[0]))
    codes = np.array([c for c in range(256) if c & 0x7F != 0x7F], np.uint8)   # every code but the NaNs
    codes = np.concatenate([codes, codes[:16 - codes.size % 16]])
    out = np.zeros(codes.size, np.uint16)
    for i in range(0, codes.size, 16):
        lib.widen_fp8(codes[i:].ctypes.data_as(ctypes.c_void_p), out[i:].ctypes.data_as(ctypes.c_void_p))
    expected = dtypes.encode(dtypes.decode(codes, dtypes.E4M3FN), dtypes.BF16)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(dtypes.decode(out, dtypes.BF16), dtypes.decode(codes, dtypes.E4M3FN))
