"""Real compilers on the tiny fixture kernels, and how compilers are found.

Compile tests skip when a compiler is missing, except in CI (CI_REQUIRE_COMPILERS=1), where
.ci/run has installed clang-19 + the unpacked HIP toolchain and nvcc/NVRTC are present.
"""
import os
import stat

import pytest

from build_support import FIXTURES, real_compiler, tiny_spec
from fmha_bench.build import compilers
from fmha_bench.build.arch import get_arch
from fmha_bench.build.cache import build_instance
from fmha_bench.build.compilers import HipClang, Nvcc, Nvrtc, candidates, compiler_for
from fmha_bench.build.elfcheck import check_code_object

CI_ARCHS = ["gfx90a", "gfx942", "gfx1100", "gfx1201", "sm_80", "sm_90a"]


def build_with(compiler, spec, tmp_path):
    return build_instance(spec, compiler, tmp_path / "cache")


def nvrtc_or_skip():
    compiler = Nvrtc()
    reason = compiler.available()
    if reason:
        if os.environ.get("CI_REQUIRE_COMPILERS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return compiler


@pytest.mark.parametrize("arch", CI_ARCHS)
def test_tiny_kernel_compiles_to_a_code_object_for_its_arch(arch, tmp_path):
    spec = tiny_spec(arch)
    result = build_with(real_compiler(spec.target), spec, tmp_path)
    assert result.status == "built", result.error
    assert check_code_object(result.path, spec.target) is None


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
def test_nvrtc_compiles_the_tiny_kernel_to_a_cubin(arch, tmp_path):
    spec = tiny_spec(arch)
    result = build_with(nvrtc_or_skip(), spec, tmp_path)
    assert result.status == "built", result.error
    assert check_code_object(result.path, spec.target) is None


@pytest.mark.parametrize("arch", ["gfx942", "sm_80", "nvrtc:sm_80"])
def test_compile_error_names_the_instance_the_command_and_the_diagnostic(arch, tmp_path):
    use_nvrtc = arch.startswith("nvrtc:")
    spec = tiny_spec(arch.removeprefix("nvrtc:"), FIXTURES / "broken.hip", label="broken")
    compiler = nvrtc_or_skip() if use_nvrtc else real_compiler(spec.target)
    result = build_with(compiler, spec, tmp_path)
    assert result.status == "failed"
    assert result.error.startswith(result.name) and "broken.hip" in result.error
    assert "tiny_undeclared_symbol" in result.error


@pytest.mark.parametrize("gate, good, bad, diagnostic", [
    ("GATE_MFMA_FP8", "gfx942", "gfx90a", "needs target feature"),
    ("GATE_WMMA_GFX12", "gfx1201", "gfx1100", "needs target feature"),
    ("GATE_WGMMA", "sm_90a", "sm_80", "wgmma"),
])
def test_arch_specific_instruction_builds_only_for_its_arch(gate, good, bad, diagnostic, tmp_path):
    def gated(arch):
        spec = tiny_spec(arch, FIXTURES / "arch_gated.hip", label="gated", defines=((gate, "1"),))
        return build_with(real_compiler(spec.target), spec, tmp_path)

    assert gated(good).status == "built", gated(good).error
    rejected = gated(bad)
    assert rejected.status == "failed" and diagnostic in rejected.error


def test_gfx950_only_mfma_is_rejected_for_gfx942(tmp_path):
    """With a compiler that knows gfx950 the builtin must build there and be refused for gfx942
    as a missing target feature. clang-19 (CI) knows neither gfx950 nor its builtins, so there
    the gfx942 build fails on an undeclared name and gfx950 itself is not checked."""
    def spec(arch):
        return tiny_spec(arch, FIXTURES / "arch_gated.hip", label="gated",
                         defines=(("GATE_MFMA_GFX950", "1"),))

    rejected = build_with(real_compiler(get_arch("gfx942")), spec("gfx942"), tmp_path)
    assert rejected.status == "failed" and "mfma_f32_16x16x32_f16" in rejected.error
    gfx950 = compiler_for(get_arch("gfx950"))
    if not isinstance(gfx950, str):
        assert "needs target feature" in rejected.error
        assert build_with(gfx950, spec("gfx950"), tmp_path).status == "built"


def test_compile_past_the_timeout_fails_with_a_clear_message(monkeypatch, tmp_path):
    slow = tmp_path / "bin/nvcc"
    slow.parent.mkdir()
    slow.write_text('#!/bin/sh\n[ "$1" = --version ] && echo V13.0.88 && exit 0\nexec sleep 30\n')
    slow.chmod(0o755)
    monkeypatch.setattr(compilers, "COMPILE_TIMEOUT_S", 0.5)
    result = build_with(Nvcc(slow), tiny_spec("sm_80"), tmp_path)
    assert result.status == "failed" and "timed out after 0.5 s" in result.error


def test_define_values_reach_the_compiler(tmp_path):
    plain = build_with(real_compiler(get_arch("sm_80")), tiny_spec("sm_80"), tmp_path)
    scaled = build_with(real_compiler(get_arch("sm_80")),
                        tiny_spec("sm_80", defines=(("TINY_SCALE", "3.0f"),)), tmp_path)
    assert plain.ok and scaled.ok, (plain.error, scaled.error)
    assert plain.path.read_bytes() != scaled.path.read_bytes()


def _fake_tool(path, version_line):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_rocm_install_in_fmha_bench_rocm_path_is_preferred(monkeypatch, tmp_path):
    _fake_tool(tmp_path / "rocm/llvm/bin/amdclang++", "AMD clang version 19.0.0git")
    monkeypatch.setenv("FMHA_BENCH_ROCM_PATH", str(tmp_path / "rocm"))
    chosen = compiler_for(get_arch("gfx950"))
    assert isinstance(chosen, HipClang) and chosen.name == "amdclang++"
    assert chosen.executable == tmp_path / "rocm/llvm/bin/amdclang++"


def test_unpacked_toolchain_without_the_arch_isa_file_says_which_file_is_missing(monkeypatch, tmp_path):
    root = tmp_path / "hip/usr"
    (root / "include/hip").mkdir(parents=True)
    (root / "include/hip/hip_runtime.h").write_text("")
    (root / "lib/x86_64-linux-gnu/amdgcn/bitcode").mkdir(parents=True)
    _fake_tool(tmp_path / "bin/clang++-19", "Debian clang version 19.1.7")
    monkeypatch.setenv("FMHA_BENCH_ROCM_PATH", str(root))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    clang = candidates("amd")[0]
    assert isinstance(clang, HipClang) and clang.upstream and clang.version() == "19.1.7"
    assert "oclc_isa_version_942.bc is missing" in clang.supports(get_arch("gfx942"))
    assert "needs clang >= 20" in clang.supports(get_arch("gfx950"))


def test_nvcc_is_found_under_cuda_home_when_not_on_path(monkeypatch, tmp_path):
    _fake_tool(tmp_path / "cuda/bin/nvcc", "Cuda compilation tools, release 13.0, V13.0.88")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    first = candidates("nvidia")[0]
    assert isinstance(first, Nvcc) and first.version() == "13.0.88"
    assert first.executable == tmp_path / "cuda/bin/nvcc"


def test_nvcc_targets_arch_specific_sm_90a_with_gencode():
    flags = Nvcc("nvcc").flags(get_arch("sm_90a"))
    assert "-gencode=arch=compute_90a,code=sm_90a" in flags and "-cubin" in flags


def test_without_nvcc_nvidia_builds_fall_back_to_nvrtc(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert [type(c) for c in candidates("nvidia")] == [Nvrtc]
