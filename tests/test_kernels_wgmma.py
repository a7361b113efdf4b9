"""Host side of the wgmma forward kernel (fmha_bench/kernels_wgmma.py: fp8 tiles, the TMA tiles'
tensor geometry) and the generated e4m3 k32 wrappers it compiles against
(kernel_src/fmha_wgmma_ops.h)."""
from __future__ import annotations

import json
import re

import pytest

from test_wgmma_ops import _generator

from fmha_bench import archs
from fmha_bench.kernels_wgmma import block_q, shared_bytes, wgmma_candidates, wgmma_launch_config
from fmha_bench.problem import Problem

HOPPER_OPTIN = 232448


def test_fp8_e4m3fn_gets_its_own_tiles_per_head_dim_dense_and_paged():
    """hdim 64 and 128: the one-warpgroup tile first (faster at prefill too: NOTES.md sessions 12-13),
    then the two-warpgroup tile; hdim 256: one tile."""
    for hdim, tags in ((64, ["wgmma-q64k128", "wgmma-q128k128"]), (128, ["wgmma-q64k128", "wgmma-q128k128"]),
                       (256, ["wgmma-q128k64"])):
        for extra in ({}, {"family": "paged", "page_size": 16}):
            found = wgmma_candidates(Problem(dtype="fp8_e4m3fn", hdim_q=hdim, **extra), "sm_90a")
            assert [t for t, _ in found] == tags, (hdim, extra, found)
            assert {dict(spec.defines)["FMHA_DTYPE"] for _, spec in found} == {"fp8_e4m3fn"}


def test_sixteen_bit_problems_never_get_the_fp8_tiles():
    found = wgmma_candidates(Problem(dtype="bf16", hdim_q=128), "sm_90a")
    assert [t for t, _ in found] == ["wgmma-q128k128ws-tma", "wgmma-q128k128ws", "wgmma-q128k128", "wgmma-q64k64b2"]


def test_decode_tiles_are_one_warpgroup_of_64_rows():
    found = dict(wgmma_candidates(Problem(dtype="fp16", hdim_q=128), "sm_90a"))
    defines = dict(found["wgmma-q64k64b2"].defines)
    assert (defines["FMHA_WARPGROUPS"], defines["FMHA_BLOCK_K"], defines["FMHA_BLOCKS_PER_SM"]) == ("1", "64", "2")
    assert wgmma_launch_config(found["wgmma-q64k64b2"], Problem(seqlen_q=100, nhead_q=8, nhead_k=2))[:2] == (
        (7, 2, 1), (128, 1, 1))   # 400 rows in tiles of 64; 128 threads
    # 64 Q rows + 2 x 64 K rows + 2 x 64 V rows, 256 bytes each, + 1 KB slack: two blocks per SM fit
    assert shared_bytes(128, 128, {"block_k": 64, "warpgroups": 1}) == (64 + 4 * 64) * 256 + 1024


def test_amd_fp8_flavour_is_refused_with_the_dtypes_the_kernel_takes():
    reason = wgmma_candidates(Problem(dtype="fp8_e4m3fnuz", hdim_q=128), "sm_90a")
    assert isinstance(reason, str) and "fp8_e4m3fnuz" in reason and "fp8_e4m3fn" in reason.split("takes")[1]


def test_fp8_shared_memory_holds_q_k_v_staging_and_both_v_transposes():
    # hdim 128, 128 keys: Q 16 KB, K 2 x 16 KB, staged V 2 x 16 KB, V^T 128 x 256 B, + 1 KB alignment slack
    assert shared_bytes(128, 128, {"block_k": 128}, "fp8_e4m3fn") == 16384 + 32768 + 32768 + 32768 + 1024
    # hdim 64: rows padded to a 128-byte line
    assert shared_bytes(64, 64, {"block_k": 128}, "fp8_e4m3fn") == 16384 + 32768 + 32768 + 16384 + 1024
    assert shared_bytes(128, 128, {"block_k": 128}) == 2 * (128 * 128 + 2 * 128 * 256) + 1024   # fp16 unchanged
    assert shared_bytes(256, 256, {"block_k": 64}, "fp8_e4m3fn") + 3 * 2 * 8 * 64 <= HOPPER_OPTIN


def test_e4m3_wrappers_are_k32_with_no_transpose_immediates_and_list_their_operands_in_order():
    text = _generator().render()
    found = re.findall(r"m64n(\d+)k32\.f32\.e4m3\.e4m3 \"\s*\"\{([^}]*)\}, (\{[^}]*\}|%\d+), %(\d+), p, 1, 1;", text)
    assert sorted(int(n) for n, *_ in found) == [64, 64, 128, 128, 256, 256]   # ss and rs per width
    for n, accumulators, a_operand, b_operand in found:
        assert [a.strip() for a in accumulators.split(",")] == [f"%{i}" for i in range(int(n) // 2)]
        a_names = a_operand.strip("{}").split(", ")
        assert a_names == [f"%{int(n) // 2 + i}" for i in range(len(a_names))] and len(a_names) in (1, 4)
        assert int(b_operand) == int(n) // 2 + len(a_names)


def test_every_tile_in_the_table_names_the_rows_its_warpgroups_hold():
    """arch_specs.json's block_q is documentation; the kernel's rows are 64 per warpgroup."""
    raw = json.loads(archs._specs_text())
    tiles = [t for tile_set in raw["wgmma_tile_sets"].values() for per_hdim in tile_set.values() for t in per_hdim]
    assert tiles and all(t["block_q"] == block_q(t) == 64 * t["warpgroups"] for t in tiles)


def _packed(problem: Problem) -> dict:
    from fmha_bench.kernels import kernel_args
    from fmha_bench.kernel_params import unpack
    inputs = problem.make_inputs(0)
    names = ("q", "k", "v", "o", "lse", "seqstart_q", "seqstart_k", "seqlen_k", "block_table", "kv_indptr",
             "kv_page_indices", "kv_last_page_len", "sink_logits")
    return unpack(kernel_args(problem, inputs, {n: 0x100000 * (i + 1) for i, n in enumerate(names)})), inputs


def test_tma_geometry_of_group_mode_and_paged_layouts():
    """Group mode: one packed run of every sequence's rows ([total, Hk, D]); paged: a page's rows,
    KV heads and the pool's pages, strides from the cache layout (HND and NHD)."""
    from fmha_bench.kernels_wgmma import kv_geometry
    group = Problem(mode="group", batch=3, seqlen_q=[5, 0, 9], seqlen_k=[300, 0, 129], nhead_q=8, nhead_k=2)
    params, _ = _packed(group)
    k, v = kv_geometry(group, params, 128)
    assert k.dims == (128, 429, 2, 1) and k.strides[:2] == (2 * 128 * 2, 128 * 2) and k.box == (64, 128, 1, 1)
    assert v.address == params["v"] and v.strides[2] % 16 == 0
    for layout, row, head in (("hnd", 128 * 2, 256 * 128 * 2), ("nhd", 2 * 128 * 2, 128 * 2)):
        paged = Problem(family="paged", page_table="vllm", page_size=256, kv_layout=layout, batch=2, seqlen_q=4,
                        seqlen_k=700, nhead_q=8, nhead_k=2)
        params, inputs = _packed(paged)
        k, _ = kv_geometry(paged, params, 128, inputs.k.shape[0])
        assert k.dims == (128, 256, 2, inputs.k.shape[0]) and k.strides == (row, head, 2 * 256 * 128 * 2), layout
        assert k.box == (64, 128, 1, 1), layout   # a page of whole tiles: a box is a tile's column
    small = Problem(family="paged", page_table="vllm", page_size=32, batch=2, seqlen_q=4, seqlen_k=700, nhead_q=8,
                    nhead_k=2)
    params, inputs = _packed(small)
    k, _ = kv_geometry(small, params, 128, inputs.k.shape[0])
    assert k.dims == (128, 32, 2, inputs.k.shape[0]) and k.box == (64, 32, 1, 1)   # a box per page of a tile


def test_tma_geometry_refuses_strides_the_copies_cannot_address():
    from fmha_bench.kernels_wgmma import kv_geometry
    problem = Problem(batch=1, seqlen_q=64, seqlen_k=64, nhead_q=2, nhead_k=2, hdim_q=128)
    params, _ = _packed(problem)
    with pytest.raises(ValueError, match="16-byte multiples"):
        kv_geometry(problem, {**params, "k": params["k"] + 8}, 128)
