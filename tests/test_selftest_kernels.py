"""The test-only selftest kernels (they fault, trap and spin on purpose, issue #6) compile for
every CI arch, so a GPU machine of any of them can prove the sweep survives them."""
import pytest
from build_support import real_compiler

from fmha_bench.build.arch import get_arch
from fmha_bench.build.cache import build_instance
from fmha_bench.build.elfcheck import check_code_object
from fmha_bench.build.instance import KernelSpec
from fmha_bench.providers.selftest import BEHAVIOURS, SOURCE

KERNELS = [f"selftest_{b}" for b in BEHAVIOURS if b != "abort"]   # abort is the host's, no kernel


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a", "gfx90a", "gfx942", "gfx1100", "gfx1201"])
def test_selftest_kernels_compile_for_the_arch(tmp_path, arch):
    compiler = real_compiler(get_arch(arch))
    for entry in KERNELS:
        result = build_instance(KernelSpec(SOURCE, entry, (), arch, entry), compiler, tmp_path)
        assert result.ok, result.error
        assert check_code_object(result.path, get_arch(arch)) is None
