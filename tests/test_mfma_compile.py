"""The AMD matrix-core kernel (kernel_src/fmha_fwd_mfma.hip) compiles for every AMD arch the
build can target here (gfx950 needs clang >= 20), with the instruction family the dispatcher
names for it, without register spills, and with the LDS that kernels_mfma counts; so do its fp8
instances (both fp8 MFMA families) for gfx942 and gfx950. A family built for an arch without its
instructions must not compile, nor an fp8 instance whose format is not the arch's. Without a HIP
compiler these tests skip (in CI, CI_REQUIRE_COMPILERS=1 turns the skip into a failure).
Nothing here runs a kernel.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess

import pytest
from build_support import real_compiler

from fmha_bench.build.arch import get_arch as build_arch
from fmha_bench.build.compilers import CompileError
from fmha_bench.build.elfcheck import check_code_object
from fmha_bench.kernels_mfma import lds_bytes, mfma_candidates
from fmha_bench.problem import Problem

AMD_ARCHS = ["gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1201"]
REPRESENTATIVE = [
    Problem(hdim_q=128, dtype="bf16", mask="b", lse=True),
    Problem(family="paged", page_size=16, hdim_q=64, dtype="fp16", page_table="sglang", soft_cap=30.0, sink=True),
]
FP8_GFX942 = [
    Problem(hdim_q=128, dtype="fp8_e4m3fnuz", mask="b", lse=True),
    Problem(family="paged", page_size=16, hdim_q=64, dtype="fp8_e4m3fnuz", page_table="vllm", soft_cap=30.0, sink=True),
]
FP8_GFX950 = [dataclasses.replace(p, dtype="fp8_e4m3fn") for p in FP8_GFX942]  # OCP e4m3 on CDNA4


def _usage(remarks: str, key: str) -> int:
    return int(re.search(rf"{re.escape(key)}: (\d+)", remarks).group(1))


def _assert_compiles_without_spills_within_its_lds(tmp_path, arch: str, problem: Problem, tag: str, spec):
    compiler = real_compiler(build_arch(arch))
    out = tmp_path / "k.co"
    run = subprocess.run([*compiler.command(spec, out), "-Rpass-analysis=kernel-resource-usage"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert check_code_object(out, build_arch(arch)) is None
    defines = dict(spec.defines)
    tile = {"block_k": int(defines["FMHA_BLOCK_K"])}
    assert _usage(run.stderr, "LDS Size [bytes/block]") == lds_bytes(problem.hdim_q, problem.hdim_v, tile,
                                                                      int(defines["FMHA_STAGES"]), problem.dt.itemsize)
    assert _usage(run.stderr, "ScratchSize [bytes/lane]") == 0, f"{tag} spills on {arch}"


@pytest.mark.parametrize("problem", REPRESENTATIVE, ids=lambda p: p.name())
@pytest.mark.parametrize("arch", AMD_ARCHS)
def test_default_instance_compiles_without_spills_within_its_lds(tmp_path, arch, problem):
    _assert_compiles_without_spills_within_its_lds(tmp_path, arch, problem, *mfma_candidates(problem, arch)[0])


@pytest.mark.parametrize("family", ["mfma32_fp8", "mfma16_fp8"])
@pytest.mark.parametrize("problem", FP8_GFX942, ids=lambda p: p.name())
def test_fp8_instances_compile_for_gfx942_without_spills_within_their_lds(tmp_path, problem, family):
    tag, spec = next((tag, spec) for tag, spec in mfma_candidates(problem, "gfx942")
                     if dict(spec.defines)["FMHA_MATRIX"] == family)
    _assert_compiles_without_spills_within_its_lds(tmp_path, "gfx942", problem, tag, spec)


@pytest.mark.parametrize("family", ["mfma32_fp8", "mfma16_fp8"])
@pytest.mark.parametrize("problem", FP8_GFX950, ids=lambda p: p.name())
def test_fp8_instances_compile_for_gfx950_without_spills_within_their_lds(tmp_path, problem, family):
    tag, spec = next((tag, spec) for tag, spec in mfma_candidates(problem, "gfx950")
                     if dict(spec.defines)["FMHA_MATRIX"] == family)
    _assert_compiles_without_spills_within_its_lds(tmp_path, "gfx950", problem, tag, spec)


@pytest.mark.parametrize("arch, family", [("gfx1100", "wmma_gfx12"), ("gfx1201", "mfma16"), ("gfx942", "wmma_gfx11")])
def test_a_family_built_for_an_arch_without_its_instructions_fails(tmp_path, arch, family):
    compiler = real_compiler(build_arch(arch))
    _, spec = mfma_candidates(REPRESENTATIVE[0], arch)[0]
    spec = dataclasses.replace(spec, defines=tuple({**dict(spec.defines), "FMHA_MATRIX": family}.items()))
    with pytest.raises(CompileError, match="is not available on this arch"):
        compiler.compile(spec, tmp_path / "k.co")


@pytest.mark.parametrize("arch, dtype, message", [
    ("gfx942", "fp8_e4m3fn", "is not the arch's"),          # gfx942's fp8 MFMA reads e4m3fnuz
    ("gfx950", "fp8_e4m3fnuz", "is not the arch's"),        # gfx950's reads OCP e4m3fn
    ("gfx90a", "fp8_e4m3fnuz", "is not available on this arch"),   # CDNA2 has no fp8 MFMA
])
def test_an_fp8_instance_for_an_arch_without_that_format_fails(tmp_path, arch, dtype, message):
    compiler = real_compiler(build_arch(arch))
    _, spec = mfma_candidates(FP8_GFX942[0], "gfx942")[0]
    spec = dataclasses.replace(spec, arch=arch, defines=tuple({**dict(spec.defines), "FMHA_DTYPE": dtype}.items()))
    with pytest.raises(CompileError, match=message):
        compiler.compile(spec, tmp_path / "k.co")
