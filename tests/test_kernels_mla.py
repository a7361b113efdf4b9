"""The MLA kernels' host side (kernels_mla) and their place in the dispatcher, without a GPU; and
their instances compile for sm_80 / sm_90a within registers (no spills; wgmma not serialised)
when nvcc is present."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from fmha_bench import dispatch, kernels
from fmha_bench.archs import get_arch
from fmha_bench.dispatch import candidates, instances_for, launch_config, p_precision
from fmha_bench.kernel_params import repo_header_path
from fmha_bench.kernels_mla import (MLA_SOURCE, MLA_SOURCES, MLA_WGMMA_SOURCE, TILES, WGMMA_TAG, mla_candidates,
                                    mla_launch_config, mla_spec, mla_wgmma_spec, shared_bytes, tile_tag,
                                    wgmma_refusal, wgmma_shared_bytes)
from fmha_bench.problem import Problem

KERNEL_SRC = repo_header_path().parent


def mla(**fields) -> Problem:
    base = dict(family="mla", batch=64, seqlen_q=1, seqlen_k=8192, nhead_q=128, nhead_k=1, hdim_q=576, hdim_v=512,
                dtype="bf16", mask="b", page_size=64, kv_layout="nhd")
    return Problem(**{**base, **fields})


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp8_e4m3fn"])
def test_hopper_decode_prefers_the_wgmma_kernel_then_the_mma_tiles_then_the_portable_kernel(dtype):
    found = candidates(mla(dtype=dtype), "sm_90a")
    sources = [spec.source for _, spec in found]
    mma = sources.count(MLA_SOURCE)
    assert found[0][0] == WGMMA_TAG == "mla-wgmma-q64k64s2" and found[1][0] == "mla-q64k32s3"
    assert sources[:1 + mma] == [MLA_WGMMA_SOURCE] + [MLA_SOURCE] * mma and mma == len(TILES)
    assert all(tag.startswith("portable-") for tag, _ in found[1 + mma:])


@pytest.mark.parametrize("nhead_q,seqlen_q,first", [(16, 1, "mla-q16k32s2"), (16, 2, "mla-q32k32s3"),
                                                    (32, 2, "mla-q64k32s3"), (128, 4, "mla-q64k32s3")])
def test_the_mma_row_tile_follows_the_rows_of_a_sequence_behind_the_64_row_wgmma_kernel(nhead_q, seqlen_q, first):
    tags = [tag for tag, _ in candidates(mla(nhead_q=nhead_q, seqlen_q=seqlen_q), "sm_90a")]
    assert tags[:2] == [WGMMA_TAG, first]


def test_sm_80_gets_the_tiles_within_its_shared_memory_no_wgmma_and_no_fp8():
    tags = [tag for tag, _ in candidates(mla(), "sm_80")]
    assert tags[0] == "mla-q64k16s3" and "mla-q64k32s3" not in tags and WGMMA_TAG not in tags
    limit = get_arch("sm_80")["shared_bytes_optin"]
    assert all(shared_bytes(576, "bf16", t) <= limit for t in TILES if tile_tag(t) in tags)
    assert "fp8_e4m3fn" in mla_candidates(mla(dtype="fp8_e4m3fn"), "sm_80")
    assert "no wgmma" in wgmma_refusal(mla(), "sm_80")


def test_v_head_dims_the_wgmma_kernel_cannot_split_over_two_warpgroups_leave_the_mma_tiles():
    """O's columns are split in halves of one wgmma N (64, 128 or 256): hdim_v 384 is refused."""
    problem = mla(hdim_q=576, hdim_v=384)
    assert "hdim_v in (128, 256, 512)" in wgmma_refusal(problem, "sm_90a")
    assert candidates(problem, "sm_90a")[0][0] == "mla-q64k32s3"
    assert wgmma_refusal(mla(hdim_q=192, hdim_v=128), "sm_90a") is None


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


def test_head_dims_no_kernel_can_tile_give_the_reason():
    reason = candidates(mla(hdim_q=200, hdim_v=128), "sm_90a")
    assert isinstance(reason, str) and "hdim_q % 64" in reason
    assert "hdim_q % 64" in wgmma_refusal(mla(hdim_q=200, hdim_v=128), "sm_90a")


def test_an_invalid_problem_gives_the_reason():
    assert candidates(mla(kv_layout="hnd"), "sm_90a").startswith("invalid problem: kv_layout")


def test_split_problems_need_the_combine(monkeypatch):
    monkeypatch.setattr(kernels, "select_combine", lambda problem, arch: None)
    assert "combine" in mla_candidates(mla(num_splits=4), "sm_90a")
    combine = kernels._combine_spec("sm_90a", "bf16", 512)
    monkeypatch.setattr(kernels, "select_combine", lambda problem, arch: combine)
    found = mla_candidates(mla(num_splits=0), "sm_90a")
    assert found[0][0] == WGMMA_TAG and all(dict(spec.defines)["FMHA_SPLIT_KV"] == "1" for _, spec in found)
    assert all(dict(spec.defines)["FMHA_SPLIT_KV"] == "0" for _, spec in mla_candidates(mla(), "sm_90a"))


def test_auto_split_count_of_the_wgmma_instance_fills_the_hopper_sms():
    """num_splits 0: the 64-row tile's blocks (2 per sequence at Hq 128) against 132 SMs."""
    spec = mla_wgmma_spec("sm_90a", mla(num_splits=0))
    assert dispatch.num_splits_for(mla(num_splits=0), spec, 132) == 3
    assert dispatch.num_splits_for(mla(num_splits=0, batch=2, nhead_q=64), spec, 132) == 32


def test_target_point_shared_memory_and_launch_shape():
    problem = mla()
    spec = dict(candidates(problem, "sm_90a"))["mla-q64k32s3"]
    # Q 64x576 + 3 stages of 32x576 (16-bit) + 4 k-slices of 64 x 36 fp32 + a float per row
    assert launch_config(spec, problem) == ((2, 1, 64), (256, 1, 1), 221_440)
    assert launch_config(spec, problem, num_splits=3)[0] == (6, 1, 64)
    group = mla(mode="group", batch=3, seqlen_q=[1, 2, 0], seqlen_k=[5, 700, 9], nhead_q=64)
    assert launch_config(spec, group)[0] == (2, 1, 3)
    assert shared_bytes(576, "fp8_e4m3fn", TILES[0]) == 221_440 - 3 * 32 * 576 + 32 * 576 * 2


def test_wgmma_shared_memory_mirrors_the_kernel_and_fits_the_hopper_limit():
    # Q 64x576 16-bit + 2 stages of 64x576 (as stored) [+ the fp16 tile of fp8] + 8 KB exchange + 2 x 64 floats
    # + 1 KB alignment slack
    assert wgmma_shared_bytes(576, "bf16") == 73_728 + 2 * 73_728 + 8_192 + 512 + 1_024 == 230_912
    assert wgmma_shared_bytes(576, "fp8_e4m3fn") == 73_728 + 2 * 36_864 + 73_728 + 8_192 + 512 + 1_024
    assert wgmma_shared_bytes(576, "fp16") <= get_arch("sm_90a")["shared_bytes_optin"] < wgmma_shared_bytes(640, "bf16")
    assert "shared memory" in wgmma_refusal(mla(hdim_q=640, hdim_v=512), "sm_90a")


def test_wgmma_launch_is_two_warpgroups_per_64_rows_and_splits_widen_the_grid():
    spec = mla_wgmma_spec("sm_90a", mla())
    assert mla_launch_config(spec, mla()) == ((2, 1, 64), (256, 1, 1), 230_912)
    assert mla_launch_config(spec, mla(), num_splits=3)[0] == (6, 1, 64)
    group = mla(mode="group", batch=3, seqlen_q=[1, 2, 0], seqlen_k=[5, 700, 9], nhead_q=64)
    assert mla_launch_config(spec, group)[0] == (2, 1, 3)
    assert mla_launch_config(spec, mla(nhead_q=16))[0] == (1, 1, 64)


def test_the_dispatcher_launches_both_mla_kernels_with_their_own_shapes():
    """Needs dispatch.launch_config to route every kernels_mla.MLA_SOURCES source to mla_launch_config."""
    spec = mla_wgmma_spec("sm_90a", mla())
    assert launch_config(spec, mla(), num_splits=3) == mla_launch_config(spec, mla(), num_splits=3)


def test_tensor_core_kernels_round_p_to_the_input_type_and_the_portable_kernel_does_not():
    """Needs dispatch.p_precision to count every kernels_mla.MLA_SOURCES source as a tensor-core kernel."""
    assert p_precision(mla_spec("sm_90a", mla(), TILES[0])) == "input"
    assert p_precision(mla_wgmma_spec("sm_90a", mla())) == "input" and len(MLA_SOURCES) == 2
    portable = candidates(Problem(family="paged", page_size=16, seqlen_q=1, seqlen_k=100), "sm_90a")[-1][1]
    assert p_precision(portable) == "fp32"


def test_instances_for_builds_every_mla_candidate_of_a_sweep_point():
    built = set(instances_for([mla()], ["sm_90a"]))
    assert {mla_spec("sm_90a", mla(), t) for t in TILES} | {mla_wgmma_spec("sm_90a", mla())} <= built


# ----------------------------------------------------------------------------- nvcc resources
_USAGE = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch,problem,tag", [
    ("sm_90a", mla(), "mla-q64k32s3"),
    ("sm_90a", mla(dtype="fp8_e4m3fn"), "mla-q64k32s3"),
    ("sm_90a", mla(nhead_q=16), "mla-q16k32s2"),
    ("sm_80", mla(dtype="fp16"), "mla-q64k16s3"),
    ("sm_90a", mla(), WGMMA_TAG),
    ("sm_90a", mla(dtype="fp8_e4m3fn"), WGMMA_TAG),
    ("sm_90a", mla(dtype="fp16", num_splits=4), WGMMA_TAG),
], ids=lambda v: v if isinstance(v, str) else f"{v.dtype}{'-split' if v.num_splits != 1 else ''}")
def test_nvcc_compiles_the_default_tiles_without_spilling_registers(tmp_path, arch, problem, tag):
    """And ptxas keeps the wgmma kernel's wgmma asynchronous (it warns when it serialises them)."""
    spec = dict(candidates(problem, arch))[tag]
    sm = arch[len("sm_"):]
    run = subprocess.run(["nvcc", "-x", "cu", "-cubin", f"-gencode=arch=compute_{sm},code=sm_{sm}", "-O3", "-std=c++17",
                          "--resource-usage", f"-I{KERNEL_SRC}", *spec.define_flags(), str(KERNEL_SRC / spec.source),
                          "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert _USAGE.search(log) and _SPILL.search(log).groups() == ("0", "0"), log
    assert "warning" not in log.lower(), log


def test_the_gpu_tests_force_each_mla_kernel_by_its_substring():
    from test_gpu_mla import FORCED

    from fmha_bench.providers.fmha import FmhaProvider

    def forced(name, arch="sm_90a", problem=mla(nhead_q=16, seqlen_q=2)):
        provider = FmhaProvider()
        provider.force_kernel(FORCED[name])
        picked, reason = provider._select(problem, arch)
        return reason if picked is None else picked[1].source

    assert forced("wgmma") == MLA_WGMMA_SOURCE and forced("mma") == MLA_SOURCE
    assert forced("portable") == kernels.FWD_SOURCE
    assert "no candidate matches" in forced("wgmma", arch="sm_80")
