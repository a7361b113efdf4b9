"""Real compilers on the tiny fixture kernels, and how compilers are found.

Compile tests skip when a compiler is missing, except in CI (CI_REQUIRE_COMPILERS=1), where
.ci/run has installed clang-22 + the unpacked HIP toolchain and nvcc/NVRTC are present. How an
upstream clang is paired with the HIP 5.2 files is checked on fake clangs, needing none installed.
"""
import os
import stat

import pytest

from build_support import FIXTURES, real_compiler, tiny_spec
from fmha_bench import archs
from fmha_bench.build import compilers
from fmha_bench.build.arch import ARCHS, get_arch
from fmha_bench.build.cache import build_instance
from fmha_bench.build.compilers import HipClang, Nvcc, Nvrtc, candidates, compiler_for
from fmha_bench.build.elfcheck import check_code_object

CI_ARCHS = ["gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1201", "sm_80", "sm_90a"]


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
    ("GATE_MFMA_GFX950", "gfx950", "gfx942", "needs target feature"),
    ("GATE_WMMA_GFX12", "gfx1201", "gfx1100", "needs target feature"),
    ("GATE_WGMMA", "sm_90a", "sm_80", "wgmma"),
])
def test_arch_specific_instruction_builds_only_for_its_arch(gate, good, bad, diagnostic, tmp_path):
    """One compiler, the good arch's, builds both: the refusal comes from the arch flag alone."""
    compiler = real_compiler(get_arch(good))

    def gated(arch):
        spec = tiny_spec(arch, FIXTURES / "arch_gated.hip", label="gated", defines=((gate, "1"),))
        return build_with(compiler, spec, tmp_path)

    assert gated(good).status == "built", gated(good).error
    rejected = gated(bad)
    assert rejected.status == "failed" and diagnostic in rejected.error


def test_gfx950_only_mfma_does_not_build_for_gfx942_with_any_clang(tmp_path):
    """clang >= 20 refuses it for a missing target feature (above); clang 19 does not know it."""
    spec = tiny_spec("gfx942", FIXTURES / "arch_gated.hip", label="gated",
                     defines=(("GATE_MFMA_GFX950", "1"),))
    rejected = build_with(real_compiler(spec.target), spec, tmp_path)
    assert rejected.status == "failed" and "mfma_f32_16x16x32_f16" in rejected.error


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


def _fake_tool(path, *version_lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in version_lines))
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


def _hip52_toolchain(tmp_path, monkeypatch, majors=(), without_lld=()):
    """The only AMD toolchain seen: an unpacked HIP 5.2 one (headers, device libraries with
    hip.bc and the v4/v5 ABI libraries, an isa file per AMD arch) and a fake Debian clang++-NN
    on PATH for each of `majors`, with an ld.lld in its InstalledDir unless the major is in
    `without_lld`. Returns the bitcode dir."""
    root = tmp_path / "hip/usr"
    (root / "include/hip").mkdir(parents=True)
    (root / "include/hip/hip_runtime.h").write_text("")
    bitcode = root / "lib/x86_64-linux-gnu/amdgcn/bitcode"
    bitcode.mkdir(parents=True)
    for name in ["hip", "oclc_abi_version_400", "oclc_abi_version_500",
                 *(f"oclc_isa_version_{a.isa_version}" for a in ARCHS.values() if a.vendor == "amd")]:
        (bitcode / f"{name}.bc").write_text("")
    for major in majors:
        installed = tmp_path / f"llvm-{major}/bin"
        _fake_tool(tmp_path / f"bin/clang++-{major}", f"Debian clang version {major}.1.8",
                   f"InstalledDir: {installed}")
        if major not in without_lld:
            _fake_tool(installed / "ld.lld", "LLD")
    monkeypatch.setattr(compilers, "CHECKOUT_TOOLCHAIN", tmp_path / "no-checkout-toolchain")
    monkeypatch.setenv("FMHA_BENCH_ROCM_PATH", str(root))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return bitcode


def _upstream(major):
    return next(c for c in candidates("amd") if c.name == f"clang++-{major}")


def test_every_clang_on_path_is_a_candidate_newest_first_and_gfx950_gets_the_new_one(monkeypatch, tmp_path):
    _hip52_toolchain(tmp_path, monkeypatch, majors=(19, 22))
    (tmp_path / "bin/clang++").symlink_to(tmp_path / "bin/clang++-19")  # one compiler, listed once
    assert [c.name for c in candidates("amd")] == ["clang++-22", "clang++-19"]
    assert compiler_for(get_arch("gfx950")).name == "clang++-22"


def test_with_only_clang_19_gfx950_has_no_compiler_and_says_why(monkeypatch, tmp_path):
    _hip52_toolchain(tmp_path, monkeypatch, majors=(19,))
    assert compiler_for(get_arch("gfx942")).name == "clang++-19"
    reason = compiler_for(get_arch("gfx950"))
    assert reason.startswith("no compiler for gfx950: ")
    assert "clang++-19 19.1.8 does not know gfx950 (needs clang >= 20)" in reason
    assert "clang-22" in reason  # what to install


def test_upstream_clang_without_its_lld_is_passed_over_for_the_next_one(monkeypatch, tmp_path):
    _hip52_toolchain(tmp_path, monkeypatch, majors=(19, 22), without_lld=(22,))
    assert "install lld-22" in _upstream(22).available()
    assert compiler_for(get_arch("gfx942")).name == "clang++-19"
    assert "install lld-22" in compiler_for(get_arch("gfx950"))
    _fake_tool(tmp_path / "bin/ld.lld", "LLD")  # an ld.lld on PATH serves too
    assert _upstream(22).available() is None


def test_clang_19_builds_the_hip52_toolchain_with_no_extra_flags(monkeypatch, tmp_path):
    _hip52_toolchain(tmp_path, monkeypatch, majors=(19,))
    clang = _upstream(19)
    spec = tiny_spec("gfx942")
    assert clang.flags(get_arch("gfx942"))[-1] == "-c"
    assert "-mlink-builtin-bitcode" not in clang.command(spec, tmp_path / "k.co")


@pytest.mark.parametrize("arch, wave", [("gfx942", 64), ("gfx950", 64), ("gfx1100", 32), ("gfx1201", 32)])
def test_clang_22_gets_code_object_v5_the_wave_size_macro_and_hip_bc(monkeypatch, tmp_path, arch, wave):
    bitcode = _hip52_toolchain(tmp_path, monkeypatch, majors=(22,))
    clang = _upstream(22)
    assert clang.flags(get_arch(arch))[-2:] == ["-mcode-object-version=5", f"-D__AMDGCN_WAVEFRONT_SIZE={wave}"]
    command = clang.command(tiny_spec(arch), tmp_path / "k.co")
    link = command.index("-mlink-builtin-bitcode")
    assert command[link - 1: link + 3] == ["-Xclang", "-mlink-builtin-bitcode", "-Xclang", str(bitcode / "hip.bc")]


def test_clang_22_keeps_its_code_object_version_where_the_device_libraries_have_v6(monkeypatch, tmp_path):
    bitcode = _hip52_toolchain(tmp_path, monkeypatch, majors=(22,))
    (bitcode / "oclc_abi_version_600.bc").write_text("")
    (bitcode / "hip.bc").unlink()  # newer device libraries: nothing to link by hand either
    clang = _upstream(22)
    assert not any(f.startswith("-mcode-object-version") for f in clang.flags(get_arch("gfx942")))
    assert "-mlink-builtin-bitcode" not in clang.command(tiny_spec("gfx942"), tmp_path / "k.co")


def test_rocm_clang_gets_no_hip52_flags_whatever_its_version(monkeypatch, tmp_path):
    _fake_tool(tmp_path / "rocm/llvm/bin/amdclang++", "AMD clang version 22.0.0git")
    monkeypatch.setenv("FMHA_BENCH_ROCM_PATH", str(tmp_path / "rocm"))
    chosen = compiler_for(get_arch("gfx942"))
    assert chosen.name == "amdclang++" and chosen.flags(get_arch("gfx942"))[-1] == "-c"
    assert "-mlink-builtin-bitcode" not in chosen.command(tiny_spec("gfx942"), tmp_path / "k.co")


def test_build_wave_size_agrees_with_the_arch_specs():
    for arch in ARCHS.values():
        if arch.vendor == "amd":
            assert arch.wave_size == archs.get_arch(arch.name)["wave_size"], arch.name


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
