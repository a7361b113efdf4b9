"""The AMD matrix-core forward kernel (kernel_src/fmha_fwd_mfma.hip) compiled for the CPU, one
instruction family at a time (MFMA 32x32x8 and 16x16x16 of CDNA, WMMA of gfx11 and of gfx12, all
emulated lane by lane by fmha_amd_matrix.h, checked in test_amd_matrix_emulated.py), against
the NumPy reference. No AMD GPU ever ran this kernel; these tests are what says it is right.

They check each family's fragment loads, the transposed products (S^T = K Q^T, O^T = V^T P^T),
the C -> B reuse of P^T, the cross-lane softmax, masks, GQA, varlen, paged tables (NaN page in
front of the pool: a -1 entry read shows up as NaN), LSE, sink and soft cap. Tiles are small
(one or two waves) so the emulation stays fast and tiny problems still span several tiles.

fp8 (the fp8 MFMA families on gfx942 e4m3fnuz and gfx950 e4m3fn) is judged per element against
the dequantised reference with P in fp32 (SPEC 5), within the error that rounding P to e4m3
can add (see _assert_fp8_matches): sharper than the runner's bound, which it implies.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_kernels_emulated import CXX, host_buffers_with_nan_page, kernel_libraries, run_emulated
from test_mma_emulated import Emulated, _assert_matches, paged

from fmha_bench import archs, dtypes
from fmha_bench.kernels import kernel_args
from fmha_bench.kernels_mfma import matrix_family, mfma_candidates, mfma_launch_config
from fmha_bench.problem import Problem
from fmha_bench.reference import attention

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
                   "FMHA_WAVES": str(tile["waves"]),
                   "FMHA_MATRIX": matrix_family(archs.get_arch(arch), tile, problem.dtype)}
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


# ----------------------------------------------------------------------------- fp8
# One MFMA32 wave (a 32-key tile is two k-steps of 32x32x16) and two MFMA16 waves over 64 keys
# (two k-steps of 16x16x32, each spanning two S^T tiles).
FP8_TILES = {32: {"block_q": 32, "block_k": 32, "waves": 1, "m": 32},
             16: {"block_q": 32, "block_k": 64, "waves": 2, "m": 16}}
FP8_OF = {"gfx942": "fp8_e4m3fnuz", "gfx950": "fp8_e4m3fn"}
P_FP8_UNIT_ROUNDOFF = 2.0 ** -4
# P below 2^-14 (scaled into e4m3's subnormals) is off by at most 2^-18 absolute, whatever the format.
P_FP8_SUBNORMAL_ERROR = 2.0 ** -18


def _assert_fp8_matches(problem: Problem, run):
    """Per element: |O - O_ref| <= 2^-4 (P|V|) + Sk 2^-18 max|V| + bf16 rounding of O, where
    O_ref is the dequantised reference with P in fp32 and P|V| the same reference run on |V|:
    the kernel rounds each P (relative to its running max, <= 1) to e4m3 once, so each term
    p_j v_j / l moves by at most 2^-4 p_j |v_j| / l, plus the subnormal floor."""
    x, v = run.inputs, run.inputs.decoded("v")
    ref = attention(problem, x)
    p_abs_v = attention(problem, dataclasses.replace(x, v=dtypes.encode(np.abs(v), problem.dt))).o
    floor = P_FP8_SUBNORMAL_ERROR * max(problem.seqlens_k()) * float(np.abs(v[np.isfinite(v)]).max()) * x.v_descale
    bound = P_FP8_UNIT_ROUNDOFF * p_abs_v + problem.out_dt.eps * np.abs(ref.o) + floor + 1e-6
    assert not np.isnan(run.o).any(), "unwritten or NaN output elements (a poisoned slot was read?)"
    error = np.abs(run.o - ref.o)
    assert (error <= bound).all(), f"{(error > bound).sum()} of {error.size} off, worst {(error / bound).max():.2f}x"
    if problem.lse:
        np.testing.assert_array_equal(np.isinf(run.lse), np.isinf(ref.lse))
        np.testing.assert_allclose(run.lse, ref.lse, atol=1e-4, rtol=0)
    else:
        assert np.isnan(run.lse).all(), "LSE written although the problem asks for none"


def _fp8(arch: str, **fields) -> Problem:
    return Problem(**{**fields, "dtype": FP8_OF[arch]})


@pytest.mark.parametrize("arch, m, problem", [
    ("gfx942", 32, _fp8("gfx942", batch=2, seqlen_q=37, seqlen_k=70, nhead_q=4, nhead_k=2, hdim_q=64, mask="b",
                        lse=True, sink=True)),
    ("gfx942", 16, _fp8("gfx942", batch=1, seqlen_q=40, seqlen_k=90, nhead_q=8, nhead_k=1, hdim_q=128,
                        mask="t:3,5")),
    ("gfx950", 32, _fp8("gfx950", batch=1, seqlen_q=45, seqlen_k=20, nhead_q=2, hdim_q=64, mask="b", lse=True)),
    ("gfx950", 16, _fp8("gfx950", batch=1, seqlen_q=30, seqlen_k=75, nhead_q=4, nhead_k=2, hdim_q=128, hdim_v=64,
                        mask="xb:20", soft_cap=5.0, lse=True)),
], ids=lambda x: x.name() if isinstance(x, Problem) else str(x))
def test_fp8_dense_masks_gqa_and_head_dims_match_the_dequantized_reference(emulate, arch, m, problem):
    """Causal GQA with a sink, a window, Sq > Sk (rows that see nothing), Dv != Dq with soft cap:
    Q K^T and P V both on the fp8 MFMA, descales applied."""
    _assert_fp8_matches(problem, emulate(problem, arch, FP8_TILES[m]))


@pytest.mark.parametrize("arch, m, problem", [
    ("gfx942", 16, _fp8("gfx942", mode="group", batch=4, seqlen_q=[19, 0, 1, 33], seqlen_k=[30, 0, 1, 70],
                        nhead_q=4, nhead_k=2, hdim_q=64, mask="b", lse=True, sink=True)),
    ("gfx942", 32, paged(page_size=16, page_table="sglang", kv_layout="hnd", hdim_q=128, mask="b:9,0,2",
                         dtype="fp8_e4m3fnuz")),
    ("gfx950", 16, paged(page_size=5, page_table="vllm", kv_layout="nhd", dtype="fp8_e4m3fn")),
], ids=lambda x: f"{x.name()} {x.kv_layout}" if isinstance(x, Problem) else str(x))
def test_fp8_varlen_and_paged_match_the_dequantized_reference(emulate, arch, m, problem):
    """Empty sequences; part-filled last pages and NaN slots around them (fp8 NaN codes)."""
    _assert_fp8_matches(problem, emulate(problem, arch, FP8_TILES[m]))


@pytest.mark.parametrize("arch", list(FP8_OF))
def test_fp8_shipped_default_tile_on_a_paged_decode_matches_the_dequantized_reference(emulate, arch):
    p = Problem(family="paged", mode="group", batch=2, seqlen_q=[1, 2], seqlen_k=[200, 77], nhead_q=8, nhead_k=2,
                hdim_q=128, dtype=FP8_OF[arch], mask="b", page_size=16, page_table="vllm", kv_layout="hnd", lse=True)
    tile = archs.kernel_tile_candidates(arch, "amd_matrix", 128, 128)[0]
    _assert_fp8_matches(p, emulate(p, arch, tile))
