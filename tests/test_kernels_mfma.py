"""Host side of the AMD matrix-core kernel (fmha_bench/kernels_mfma.py): which instances a problem
gets on which arch (fp8 only on the fp8 MFMA archs, in their own format), their LDS stages and
launch shape, and that every tile in arch_specs.json meets the kernel's compile-time rules (so a
bad tile fails here, not in a build)."""
from __future__ import annotations

import pytest

from fmha_bench import archs
from fmha_bench.kernels_mfma import lds_bytes, matrix_family, mfma_candidates, mfma_launch_config
from fmha_bench.problem import Problem

AMD = ["gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1201"]
FAMILY_SHAPES = {"mfma32": (64, 32, 8), "mfma16": (64, 16, 16), "wmma_gfx11": (32, 16, 16),
                 "wmma_gfx12": (32, 16, 16), "mfma32_fp8": (64, 32, 16),
                 "mfma16_fp8": (64, 16, 32)}   # wave, M = N, K (fmha_amd_matrix.h)
FP8_MFMA = {"gfx942": "fp8_e4m3fnuz", "gfx950": "fp8_e4m3fn"}


@pytest.mark.parametrize("arch", AMD)
def test_every_tile_meets_the_kernels_static_rules(arch):
    spec = archs.get_arch(arch)
    dtypes = ["fp16"] + ([FP8_MFMA[arch]] if arch in FP8_MFMA else [])
    for dims in spec["tiles"]:   # every head-dim pair the project ships
        hdim_q, hdim_v = map(int, dims.split("/"))
        for tile in archs.kernel_tile_candidates(arch, "amd_matrix", hdim_q, hdim_v):
            for dtype in dtypes:
                wave, m, k = FAMILY_SHAPES[matrix_family(spec, tile, dtype)]
                assert wave == spec["wave_size"]
                assert tile["block_q"] % (tile["waves"] * m) == 0, (dims, tile)
                # a k-step of V^T P^T takes k keys: whole S^T tiles of m keys, or parts of one
                assert tile["block_k"] % max(m, k) == 0 and hdim_v % m == 0 and hdim_q % k == 0, (dims, tile, dtype)
                assert lds_bytes(hdim_q, hdim_v, tile, 1) <= spec["shared_bytes_per_block"], (dims, tile)


@pytest.mark.parametrize("arch, family", [("gfx90a", "mfma32"), ("gfx942", "mfma32"), ("gfx950", "mfma32"),
                                          ("gfx1100", "wmma_gfx11"), ("gfx1201", "wmma_gfx12")])
def test_default_instance_uses_the_arch_family_and_fits_its_lds(arch, family):
    problem = Problem(hdim_q=128, dtype="bf16", mask="b")
    tag, spec = mfma_candidates(problem, arch)[0]
    defines = dict(spec.defines)
    assert defines["FMHA_MATRIX"] == family and spec.arch == arch and tag.startswith(family[:4])
    tile = {"block_k": int(defines["FMHA_BLOCK_K"])}
    assert lds_bytes(128, 128, tile, int(defines["FMHA_STAGES"])) <= archs.get_arch(arch)["shared_bytes_per_block"]


def test_two_lds_stages_where_they_fit_else_one():
    problem = Problem(hdim_q=128)
    stages = {arch: [tag[-2:] for tag, _ in mfma_candidates(problem, arch)] for arch in ("gfx942", "gfx950")}
    # q128k64 at hdim 128: 33792 bytes a stage, two exceed gfx942's 64 KiB but not gfx950's 160 KiB
    assert stages == {"gfx942": ["s1", "s2", "s1"], "gfx950": ["s2", "s2", "s2"]}


@pytest.mark.parametrize("arch, dtype", FP8_MFMA.items())
def test_fp8_on_the_fp8_mfma_archs_uses_the_fp8_families_in_the_archs_format(arch, dtype):
    problem = Problem(hdim_q=128, dtype=dtype, mask="b")
    found = mfma_candidates(problem, arch)
    fp16 = mfma_candidates(Problem(hdim_q=128, mask="b"), arch)
    assert [dict(s.defines)["FMHA_MATRIX"] for _, s in found] == [f"{dict(s.defines)['FMHA_MATRIX']}_fp8"
                                                                 for _, s in fp16]
    assert all(dict(s.defines)["FMHA_DTYPE"] == dtype and s.arch == arch for _, s in found)
    # one-byte elements halve the LDS: two stages of every hdim-128 tile fit gfx942's 64 KiB
    assert [tag[-2:] for tag, _ in found] == ["s2", "s2", "s2"]


def test_fp8_lds_counts_one_byte_elements_and_the_same_row_padding():
    tile = {"block_k": 64}
    assert lds_bytes(128, 128, tile, 2, itemsize=1) == 2 * (64 * (128 + 8) + 128 * (64 + 4))
    assert lds_bytes(128, 128, tile, 2) == 2 * 2 * (64 * (128 + 4) + 128 * (64 + 2))


@pytest.mark.parametrize("problem, arch, reason", [
    (Problem(), "sm_90a", "sm_90a has no AMD matrix instructions"),
    (Problem(dtype="fp8_e4m3fn"), "gfx942", "fp8_e4m3fn is not gfx942's fp8 format: its fp8 MFMA reads fp8_e4m3fnuz"),
    (Problem(dtype="fp8_e4m3fnuz"), "gfx950", "fp8_e4m3fnuz is not gfx950's fp8 format: its fp8 MFMA reads fp8_e4m3fn"),
    (Problem(dtype="fp8_e4m3fnuz"), "gfx90a", "gfx90a has no fp8 matrix instruction"),
    (Problem(dtype="fp8_e4m3fn"), "gfx1100", "gfx1100 has no fp8 matrix instruction"),
    (Problem(dtype="fp8_e4m3fn"), "gfx1201", "needs its fp8 WMMA, which the AMD matrix-core kernel does not implement"),
    (Problem(hdim_q=256), "gfx1100", "hdim 256/256 has no AMD matrix-core tile"),
])
def test_problems_the_kernel_cannot_run_get_a_reason(problem, arch, reason):
    assert reason in mfma_candidates(problem, arch)


@pytest.mark.parametrize("arch, threads", [("gfx942", 256), ("gfx1201", 128)])
def test_launch_has_the_mma_grid_waves_of_the_arch_and_static_lds(arch, threads):
    problem = Problem(mode="group", batch=3, seqlen_q=[5, 300, 7], seqlen_k=[9, 400, 7], nhead_q=8, nhead_k=2)
    _, spec = mfma_candidates(problem, arch)[0]
    block_q = int(dict(spec.defines)["FMHA_BLOCK_Q"])
    grid, block, shared = mfma_launch_config(spec, problem)
    assert grid == (-(-300 * 4 // block_q), 2, 3) and block == (threads, 1, 1) and shared == 0
