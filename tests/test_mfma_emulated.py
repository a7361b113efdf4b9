"""The AMD matrix-core forward kernel (kernel_src/fmha_fwd_mfma.hip) compiled for the CPU, one
instruction family at a time (MFMA 32x32x8 and 16x16x16 of CDNA, WMMA of gfx11 and of gfx12, all
emulated lane by lane by fmha_amd_matrix.h, checked in test_amd_matrix_emulated.py), against
the NumPy reference. No AMD GPU ever ran this kernel; these tests are what says it is right.

They check each family's fragment loads, the transposed products (S^T = K Q^T, O^T = V^T P^T),
the C -> B reuse of P^T, the cross-lane softmax, masks, GQA, varlen, paged tables (NaN page in
front of the pool: a -1 entry read shows up as NaN), LSE, sink and soft cap. Tiles are small
(one or two waves) so the emulation stays fast and tiny problems still span several tiles.
"""
from __future__ import annotations

import dataclasses

import pytest
from test_kernels_emulated import CXX, host_buffers_with_nan_page, kernel_libraries, run_emulated
from test_mma_emulated import Emulated, _assert_matches, paged

from fmha_bench import archs, dtypes
from fmha_bench.kernels import kernel_args
from fmha_bench.kernels_mfma import matrix_family, mfma_candidates, mfma_launch_config
from fmha_bench.problem import Problem

pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")

# arch -> small tiles: several row tiles per wave or several waves, several key tiles per block.
FAMILIES = {
    "gfx942": {"block_q": 32, "block_k": 32, "waves": 1, "m": 32},      # mfma32: 64 lanes, one C tile of keys
    "gfx90a": {"block_q": 32, "block_k": 32, "waves": 2, "m": 16},      # mfma16: two waves, two key tiles
    "gfx1100": {"block_q": 32, "block_k": 16, "waves": 1, "m": 16},     # wmma gfx11: two query tiles per wave
    "gfx1201": {"block_q": 32, "block_k": 32, "waves": 2, "m": 16},     # wmma gfx12
}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return kernel_libraries(tmp_path_factory.mktemp("mfma_emulated"), "a", threads="fmha::kThreads")


@pytest.fixture(scope="module")
def emulate(library):
    """emulate(problem, arch, tile=FAMILIES[arch], stages=None) -> Emulated: one launch of the
    arch's first candidate with that tile (and its stage count unless given) over poisoned outputs."""

    def run(problem: Problem, arch: str, tile: dict | None = None, stages: int | None = None) -> Emulated:
        tile = tile or FAMILIES[arch]
        candidates = mfma_candidates(problem, arch)
        assert not isinstance(candidates, str), candidates
        spec = candidates[0][1]
        defines = {**dict(spec.defines), "FMHA_BLOCK_Q": str(tile["block_q"]), "FMHA_BLOCK_K": str(tile["block_k"]),
                   "FMHA_WAVES": str(tile["waves"]), "FMHA_MATRIX": matrix_family(archs.get_arch(arch), tile)}
        if stages is not None:
            defines["FMHA_STAGES"] = str(stages)
        spec = dataclasses.replace(spec, defines=tuple(defines.items()))
        x = problem.make_inputs(seed=1)
        host, ptrs = host_buffers_with_nan_page(problem, x)
        grid, block, shared = mfma_launch_config(spec, problem)
        assert block == (tile["waves"] * archs.get_arch(arch)["wave_size"], 1, 1) and shared == 0
        run_emulated(library(spec), kernel_args(problem, x, ptrs, 1), grid)
        return Emulated(dtypes.decode(host["o"], problem.out_dt), host["lse"], x)

    return run


ARCHS = list(FAMILIES)
# Features that do not touch the fragment layouts more than the dense cases run on two families:
# one wave64 MFMA and one wave32 WMMA, alternating so every family sees some of them.
PAIRS = [("gfx90a", "gfx1100"), ("gfx942", "gfx1201")]


# ----------------------------------------------------------------------------- dense K/V
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("problem", [
    Problem(batch=2, seqlen_q=37, seqlen_k=70, nhead_q=4, nhead_k=2, hdim_q=64, mask="b", lse=True, sink=True),
    Problem(batch=1, seqlen_q=40, seqlen_k=90, nhead_q=8, nhead_k=1, hdim_q=128, mask="t:3,5", dtype="bf16"),
    Problem(batch=1, seqlen_q=45, seqlen_k=20, nhead_q=2, hdim_q=64, mask="b", dtype="bf16", lse=True, sink=True),
    Problem(batch=1, seqlen_q=30, seqlen_k=75, nhead_q=4, nhead_k=2, hdim_q=128, hdim_v=64, mask="xb:20", lse=True),
], ids=lambda p: p.name())
def test_dense_masks_gqa_sinks_and_head_dims_match_reference(emulate, arch, problem):
    """Causal with GQA, a window, Sq > Sk (rows that see nothing), Dv != Dq."""
    _assert_matches(problem, emulate(problem, arch))


@pytest.mark.parametrize("arch", PAIRS[0])
def test_varlen_with_empty_sequences_matches_reference(emulate, arch):
    p = Problem(mode="group", batch=4, seqlen_q=[19, 0, 1, 33], seqlen_k=[30, 0, 1, 70], nhead_q=4, nhead_k=2,
                hdim_q=64, mask="b", lse=True, sink=True)
    _assert_matches(p, emulate(p, arch))


@pytest.mark.parametrize("arch", PAIRS[1])
def test_soft_cap_instance_matches_reference(emulate, arch):
    p = Problem(batch=1, seqlen_q=20, seqlen_k=60, nhead_q=2, hdim_q=64, mask="t", soft_cap=5.0, lse=True)
    _assert_matches(p, emulate(p, arch))


@pytest.mark.parametrize("stages", [1, 2])
def test_one_and_two_lds_stages_match_reference(emulate, stages):
    p = Problem(batch=1, seqlen_q=33, seqlen_k=100, nhead_q=2, hdim_q=64, mask="0", lse=True)
    _assert_matches(p, emulate(p, "gfx942", stages=stages))


# ----------------------------------------------------------------------------- paged K/V
@pytest.mark.parametrize("problem, arch", [
    (paged(page_size=5, page_table="vllm", kv_layout="nhd", dtype="bf16"), arch) for arch in PAIRS[0]] + [
    (paged(page_size=16, page_table="sglang", kv_layout="hnd", hdim_q=128, mask="b:9,0,2"), arch)
    for arch in PAIRS[1]] + [
    (paged(page_size=1, page_table="sglang", kv_layout="hnd", nhead_q=8, nhead_k=1), arch) for arch in ARCHS],
    ids=lambda x: f"{x.name()} {x.kv_layout}" if isinstance(x, Problem) else x)
def test_paged_tables_page_sizes_and_layouts_match_reference(emulate, arch, problem):
    """Part-filled last pages, spare pages and the table entries past a sequence all hold NaN."""
    _assert_matches(problem, emulate(problem, arch))


@pytest.mark.parametrize("arch", PAIRS[1])
def test_headwise_table_never_reads_recycled_blocks(emulate, arch):
    p = Problem(family="paged", batch=2, seqlen_q=3, seqlen_k=150, nhead_q=8, nhead_k=4, hdim_q=64, mask="b",
                page_size=7, page_table="headwise", swa_heads=(1, 2), swa_window=20, swa_sink=3, kv_layout="nhd",
                lse=True)
    run = emulate(p, arch)
    assert (run.inputs.tables.block_tables_headwise[:, :150 // 7] == -1).any(), "no recycled block to step over"
    _assert_matches(p, run)


# ----------------------------------------------------------------------------- shipped tiles
@pytest.mark.parametrize("arch", ["gfx942", "gfx1201"])
def test_shipped_default_tile_on_a_decode_matches_reference(emulate, arch):
    p = Problem(family="paged", mode="group", batch=2, seqlen_q=[1, 2], seqlen_k=[200, 77], nhead_q=8, nhead_k=2,
                hdim_q=128, dtype="bf16", mask="b", page_size=16, page_table="vllm", kv_layout="hnd", lse=True)
    tile = archs.kernel_tile_candidates(arch, "amd_matrix", 128, 128)[0]
    _assert_matches(p, emulate(p, arch, tile))
