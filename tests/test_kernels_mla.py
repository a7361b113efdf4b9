"""The MLA kernel's host side (kernels_mla) and its place in the dispatcher, without a GPU; and its
instances compile for sm_80 / sm_90a within registers (no spills) when nvcc is present."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from fmha_bench import kernels
from fmha_bench.archs import get_arch
from fmha_bench.dispatch import candidates, instances_for, launch_config, p_precision
from fmha_bench.kernel_params import repo_header_path
from fmha_bench.kernels_mla import MLA_SOURCE, TILES, mla_candidates, mla_spec, shared_bytes, tile_tag
from fmha_bench.problem import Problem

KERNEL_SRC = repo_header_path().parent


def mla(**fields) -> Problem:
    base = dict(family="mla", batch=64, seqlen_q=1, seqlen_k=8192, nhead_q=128, nhead_k=1, hdim_q=576, hdim_v=512,
                dtype="bf16", mask="b", page_size=64, kv_layout="nhd")
    return Problem(**{**base, **fields})


def test_deepseek_decode_prefers_the_mla_kernel_and_keeps_the_portable_kernel_last():
    found = candidates(mla(), "sm_90a")
    assert found[0][0] == "mla-q64k32s3"
    mla_specs = [spec for _, spec in found if spec.source == MLA_SOURCE]
    assert found[:len(mla_specs)] == [(tag, spec) for tag, spec in found if spec.source == MLA_SOURCE]
    assert all(tag.startswith("portable-") for tag, _ in found[len(mla_specs):])


@pytest.mark.parametrize("nhead_q,seqlen_q,first", [(16, 1, "mla-q16k32s2"), (16, 2, "mla-q32k32s3"),
                                                    (32, 2, "mla-q64k32s3"), (128, 4, "mla-q64k32s3")])
def test_the_row_tile_follows_the_rows_of_a_sequence(nhead_q, seqlen_q, first):
    assert candidates(mla(nhead_q=nhead_q, seqlen_q=seqlen_q), "sm_90a")[0][0] == first


def test_sm_80_gets_the_tiles_within_its_shared_memory_and_no_fp8():
    tags = [tag for tag, _ in candidates(mla(), "sm_80")]
    assert tags[0] == "mla-q64k16s3" and "mla-q64k32s3" not in tags
    limit = get_arch("sm_80")["shared_bytes_optin"]
    assert all(shared_bytes(576, "bf16", t) <= limit for t in TILES if tile_tag(t) in tags)
    assert "fp8_e4m3fn" in mla_candidates(mla(dtype="fp8_e4m3fn"), "sm_80")
    assert candidates(mla(dtype="fp8_e4m3fn"), "sm_90a")[0][0] == "mla-q64k32s3"


@pytest.mark.parametrize("arch", ["gfx90a", "gfx942", "gfx1100", "gfx1201"])
def test_amd_archs_never_get_the_nvidia_only_source(arch):
    found = candidates(mla(), arch)
    assert isinstance(found, str) or all(spec.source != MLA_SOURCE for _, spec in found)
    assert "no mma.sync" in mla_candidates(mla(), arch)


def test_other_families_never_get_the_mla_kernel():
    paged = Problem(family="paged", batch=4, seqlen_q=1, seqlen_k=1000, nhead_q=16, nhead_k=1, hdim_q=128,
                    page_size=16)
    assert all(spec.source != MLA_SOURCE for _, spec in candidates(paged, "sm_90a"))
    assert "family mla only" in mla_candidates(paged, "sm_90a")


def test_head_dims_the_kernel_cannot_tile_give_the_reason():
    reason = candidates(mla(hdim_q=200, hdim_v=128), "sm_90a")
    assert isinstance(reason, str) and "hdim_q % 64" in reason


def test_an_invalid_problem_gives_the_reason():
    assert candidates(mla(kv_layout="hnd"), "sm_90a").startswith("invalid problem: kv_layout")


def test_split_problems_need_the_combine(monkeypatch):
    monkeypatch.setattr(kernels, "select_combine", lambda problem, arch: None)
    assert "combine" in mla_candidates(mla(num_splits=4), "sm_90a")
    combine = kernels._combine_spec("sm_90a", "bf16", 512)
    monkeypatch.setattr(kernels, "select_combine", lambda problem, arch: combine)
    found = mla_candidates(mla(num_splits=0), "sm_90a")
    assert all(dict(spec.defines)["FMHA_SPLIT_KV"] == "1" for _, spec in found)
    assert dict(mla_candidates(mla(), "sm_90a")[0][1].defines)["FMHA_SPLIT_KV"] == "0"


def test_target_point_shared_memory_and_launch_shape():
    problem = mla()
    spec = dict(candidates(problem, "sm_90a"))["mla-q64k32s3"]
    # Q 64x576 + 3 stages of 32x576 (16-bit) + 4 k-slices of 64 x 36 fp32 + a float per row
    assert launch_config(spec, problem) == ((2, 1, 64), (256, 1, 1), 221_440)
    assert launch_config(spec, problem, num_splits=3)[0] == (6, 1, 64)
    group = mla(mode="group", batch=3, seqlen_q=[1, 2, 0], seqlen_k=[5, 700, 9], nhead_q=64)
    assert launch_config(spec, group)[0] == (2, 1, 3)
    assert shared_bytes(576, "fp8_e4m3fn", TILES[0]) == 221_440 - 3 * 32 * 576 + 32 * 576 * 2


def test_tensor_core_kernels_round_p_to_the_input_type_and_the_portable_kernel_does_not():
    assert p_precision(mla_spec("sm_90a", mla(), TILES[0])) == "input"
    portable = candidates(Problem(family="paged", page_size=16, seqlen_q=1, seqlen_k=100), "sm_90a")[-1][1]
    assert p_precision(portable) == "fp32"


def test_instances_for_builds_every_mla_tile_of_a_sweep_point():
    assert {mla_spec("sm_90a", mla(), t) for t in TILES} <= set(instances_for([mla()], ["sm_90a"]))


# ----------------------------------------------------------------------------- nvcc resources
_USAGE = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch,problem,tag", [
    ("sm_90a", mla(), "mla-q64k32s3"),
    ("sm_90a", mla(dtype="fp8_e4m3fn"), "mla-q64k32s3"),
    ("sm_90a", mla(nhead_q=16), "mla-q16k32s2"),
    ("sm_80", mla(dtype="fp16"), "mla-q64k16s3"),
], ids=lambda v: v if isinstance(v, str) else v.dtype)
def test_nvcc_compiles_the_default_tiles_without_spilling_registers(tmp_path, arch, problem, tag):
    spec = dict(candidates(problem, arch))[tag]
    sm = arch[len("sm_"):]
    run = subprocess.run(["nvcc", "-x", "cu", "-cubin", f"-gencode=arch=compute_{sm},code=sm_{sm}", "-O3", "-std=c++17",
                          "--resource-usage", f"-I{KERNEL_SRC}", *spec.define_flags(), str(KERNEL_SRC / spec.source),
                          "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert _USAGE.search(log) and _SPILL.search(log).groups() == ("0", "0"), log
