"""Representative instances of the portable kernel compile for NVIDIA (nvcc) and AMD (the build's
HIP compiler) within the shared-memory budget. Every shipped instance: tools/check_fwd_instances.py."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import pytest

from fmha_bench.build.arch import get_arch as build_arch
from fmha_bench.build.compilers import compiler_for
from fmha_bench.kernel_params import repo_header_path
from fmha_bench.kernels import select_kernel
from fmha_bench.problem import Problem

KERNEL_SRC = repo_header_path().parent
REPRESENTATIVE = [
    Problem(hdim_q=128, dtype="bf16", mask="b"),
    Problem(family="paged", page_size=16, hdim_q=256, dtype="fp16", page_table="headwise"),
]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("problem", REPRESENTATIVE, ids=lambda p: p.name())
def test_nvcc_compiles_within_48_kib_of_shared_memory(tmp_path, arch, problem):
    spec = select_kernel(problem, arch)
    sm = arch[len("sm_"):]
    run = subprocess.run(["nvcc", "-x", "cu", "-cubin", f"-gencode=arch=compute_{sm},code=sm_{sm}", "-O3",
                          "--resource-usage", f"-I{KERNEL_SRC}", *spec.define_flags(), str(KERNEL_SRC / spec.source),
                          "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    smem = int(re.search(r"(\d+) bytes smem", run.stdout + run.stderr).group(1))
    assert 0 < smem <= 48 * 1024


@pytest.mark.parametrize("arch", ["gfx90a", "gfx1100"])  # wave64 and wave32
def test_hip_compiles_for_amd(tmp_path, arch):
    compiler = compiler_for(build_arch(arch))
    if isinstance(compiler, str):
        pytest.skip(compiler)
    spec = select_kernel(Problem(family="paged", page_size=16, hdim_q=128, dtype="fp16", page_table="sglang"), arch)
    spec = dataclasses.replace(spec, source=str(KERNEL_SRC / spec.source))
    compiler.compile(spec, tmp_path / "k.co")
    assert (tmp_path / "k.co").read_bytes()[:4] == b"\x7fELF"
