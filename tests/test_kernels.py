"""Host side of the portable kernels: instance selection, launch shapes and FmhaParams contents."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fmha_bench import archs
from fmha_bench.build.instance import KernelSpec
from fmha_bench.errors import UserError
from fmha_bench.kernel_params import MASK_ALIGN, PAGE_TABLE, unpack
from fmha_bench.dispatch import num_splits_for
from fmha_bench.kernels import (MAX_AUTO_SPLITS, MIN_KEYS_PER_SPLIT, choose_num_splits, combine_launch_config,
                                kernel_args, launch_config, select_combine,
                                select_kernel, shipped_instances, split_workspace_bytes)
from fmha_bench.problem import Problem

ALL_POINTERS = ("q", "k", "v", "o", "lse", "seqstart_q", "seqstart_k", "seqlen_k", "block_table",
                "kv_indptr", "kv_page_indices", "kv_last_page_len", "block_tables_headwise", "sink_logits",
                "o_acc", "lse_acc")


def _ptrs():
    return {name: 0x1000 * (i + 1) for i, name in enumerate(ALL_POINTERS)}


def _args(problem, seed=0):
    return unpack(kernel_args(problem, problem.make_inputs(seed), _ptrs()))


# ----------------------------------------------------------------------------- selection
def test_dense_problem_gets_a_dense_instance_with_its_tile():
    spec = select_kernel(Problem(hdim_q=128, dtype="bf16"), "sm_90a")
    assert isinstance(spec, KernelSpec)
    defines = dict(spec.defines)
    tile = archs.tile_config("sm_90a", 128, 128)
    assert defines == {"FMHA_DTYPE": "bf16", "FMHA_HDIM_Q": "128", "FMHA_HDIM_V": "128", "FMHA_KV_SOURCE": "dense",
                       "FMHA_SPLIT_KV": "0", "FMHA_BLOCK_Q": str(tile["block_q"]),
                       "FMHA_BLOCK_K": str(tile["block_k"]), "FMHA_THREADS": str(tile["threads"])}
    assert (spec.source, spec.entry, spec.arch) == ("fmha_fwd.hip", "fmha_fwd", "sm_90a")


def test_paged_problem_gets_a_paged_instance_with_unequal_head_dims():
    spec = select_kernel(Problem(family="paged", page_size=16, hdim_q=192, hdim_v=128), "gfx942")
    assert dict(spec.defines)["FMHA_KV_SOURCE"] == "paged"
    assert "hd192x128" in spec.label


@pytest.mark.parametrize("problem,arch,reason", [
    (Problem(dtype="fp8_e4m3fnuz"), "sm_90a", "needs gfx90a/gfx942"),
    (Problem(dtype="fp8_e4m3fn"), "sm_80", "fp8_e4m3fn is not supported on sm_80"),
    (Problem(hdim_q=96), "sm_90a", "hdim 96/96 has no instance"),
    (Problem(family="mixed", mode="group", batch=2, seqlen_q=[1, 64], seqlen_k=[100, 64], page_size=16), "sm_90a",
     "family mixed has no kernel yet"),
    (Problem(family="splitkv", num_splits=2 ** 30, seqlen_q=4096, hdim_q=64), "sm_90a", "grid x"),
    (Problem(nhead_q=6, nhead_k=4), "sm_90a", "invalid problem: nhead_k"),
])
def test_unsupported_problems_get_a_reason(problem, arch, reason):
    got = select_kernel(problem, arch)
    assert isinstance(got, str) and reason in got


def test_unknown_arch_is_a_user_error_listing_the_known_ones():
    with pytest.raises(UserError, match="known: .*sm_90a"):
        select_kernel(Problem(), "sm_75")


@pytest.mark.parametrize("problem", [
    Problem(family="splitkv", num_splits=4, hdim_q=64),
    Problem(family="splitkv", num_splits=0, page_size=16, page_table="sglang", hdim_q=64),
    Problem(family="paged", page_size=16, num_splits=2, hdim_q=64),
], ids=lambda p: p.name())
def test_split_problems_run_the_forward_instance_then_a_combine(problem):
    spec, combine = select_kernel(problem, "sm_90a"), select_combine(problem, "sm_90a")
    defines = dict(spec.defines)
    assert spec.entry == "fmha_fwd" and defines["FMHA_KV_SOURCE"] == ("paged" if problem.page_size else "dense")
    assert defines["FMHA_SPLIT_KV"] == "1" and spec.label.endswith("_splitkv")
    assert (combine.source, combine.entry, combine.arch) == ("fmha_combine.hip", "fmha_combine", "sm_90a")
    assert dict(combine.defines)["FMHA_HDIM_V"] == "64"


def test_combine_is_specialised_on_the_output_dtype_and_v_head_dim():
    fp8 = Problem(family="splitkv", num_splits=2, hdim_q=128, hdim_v=64, dtype="fp8_e4m3fn")
    defines = dict(select_combine(fp8, "sm_90a").defines)
    assert (defines["FMHA_OUT_DTYPE"], defines["FMHA_HDIM_V"]) == ("bf16", "64")  # fp8 writes bf16


def test_unsplit_or_unsupported_problems_need_no_combine():
    assert select_combine(Problem(family="paged", page_size=16), "sm_90a") is None
    assert select_combine(Problem(family="splitkv", num_splits=2, hdim_q=96), "sm_90a") is None


def test_shipped_instances_cover_every_dtype_tile_kv_source_and_split_switch():
    specs = shipped_instances("sm_90a")
    spec = archs.get_arch("sm_90a")
    assert len(specs) == len(set(specs)) == len(spec["dtypes"]) * len(spec["tiles"]) * 2 * 2
    assert select_kernel(Problem(family="splitkv", num_splits=2, hdim_q=128), "sm_90a") in specs
    assert all(isinstance(select_kernel(Problem(dtype=d, hdim_q=128), "sm_90a"), KernelSpec) for d in spec["dtypes"])


# ----------------------------------------------------------------------------- launch shapes
def test_launch_grid_stacks_the_query_heads_of_a_kv_head_into_rows():
    p = Problem(batch=3, seqlen_q=5, seqlen_k=300, nhead_q=32, nhead_k=4, hdim_q=128)
    spec = select_kernel(p, "sm_90a")
    block_q = int(dict(spec.defines)["FMHA_BLOCK_Q"])
    grid, block, shared = launch_config(spec, p)
    assert grid == (math.ceil(5 * 8 / block_q), 4, 3)
    assert block == (int(dict(spec.defines)["FMHA_THREADS"]), 1, 1) and shared == 0


def test_launch_grid_of_group_mode_follows_the_longest_sequence_and_is_never_empty():
    p = Problem(mode="group", batch=3, seqlen_q=[3, 100, 0], seqlen_k=[5, 7, 0], nhead_q=2, hdim_q=64)
    spec = select_kernel(p, "sm_90a")
    block_q = int(dict(spec.defines)["FMHA_BLOCK_Q"])
    assert launch_config(spec, p)[0] == (math.ceil(100 / block_q), 2, 3)
    empty = Problem(mode="group", batch=2, seqlen_q=[0, 0], seqlen_k=[0, 0], hdim_q=64)
    assert launch_config(select_kernel(empty, "sm_90a"), empty)[0][0] == 1


def test_split_grid_is_num_splits_times_wider():
    p = Problem(family="splitkv", batch=3, seqlen_q=5, seqlen_k=300, nhead_q=32, nhead_k=4, hdim_q=128, num_splits=7)
    spec = select_kernel(p, "sm_90a")
    unsplit, block, _ = launch_config(spec, p)
    assert launch_config(spec, p, 7) == ((unsplit[0] * 7, 4, 3), block, 0)


@pytest.mark.parametrize("problem,rows", [
    (Problem(family="splitkv", batch=3, seqlen_q=5, nhead_q=8, nhead_k=2, hdim_q=64, num_splits=2), 3 * 5 * 8),
    (Problem(family="splitkv", mode="group", batch=3, seqlen_q=[4, 0, 9], seqlen_k=[7, 3, 0], nhead_q=2, hdim_q=64,
             num_splits=3), 13 * 2),
    (Problem(family="splitkv", mode="group", batch=2, seqlen_q=[0, 0], seqlen_k=[5, 5], hdim_q=64, num_splits=2), 0),
])
def test_combine_grid_covers_every_output_row_in_blocks_of_its_rows(problem, rows):
    spec = select_combine(problem, "sm_90a")
    per_block, threads = int(dict(spec.defines)["FMHA_ROWS"]), int(dict(spec.defines)["FMHA_THREADS"])
    grid, block, shared = combine_launch_config(spec, problem)
    assert grid == (max(1, math.ceil(rows / per_block)), 1, 1) and block == (threads, 1, 1) and shared == 0


# ----------------------------------------------------------------------------- split count (num_splits 0)
def _decode(batch, seqlen_k=8192, nhead_k=8, seqlen_q=1, num_splits=0):
    return Problem(family="paged", page_size=16, batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nhead_q=32,
                   nhead_k=nhead_k, hdim_q=128, num_splits=num_splits)


def test_auto_splits_stay_at_one_when_the_grid_fills_the_gpu():
    assert choose_num_splits(_decode(batch=64), num_sms=132, block_q=32) == 1      # 512 blocks
    assert choose_num_splits(_decode(batch=17), num_sms=132, block_q=32) == 1      # 136 blocks


def test_auto_splits_aim_at_two_waves():
    # 8 blocks (batch 1 x 8 KV heads, 4 rows each fit one tile): ceil(2 * 132 / 8) = 33
    assert choose_num_splits(_decode(batch=1, seqlen_k=32768), num_sms=132, block_q=32) == 33
    # 64 blocks: ceil(264 / 64) = 5
    assert choose_num_splits(_decode(batch=8), num_sms=132, block_q=32) == 5
    # more query rows, more row tiles: 4 tiles x 8 heads = 32 blocks -> ceil(264 / 32) = 9
    assert choose_num_splits(_decode(batch=1, seqlen_q=32), num_sms=132, block_q=32) == 9


def test_auto_splits_keep_enough_keys_per_split_and_a_ceiling():
    assert choose_num_splits(_decode(batch=1, seqlen_k=2000), num_sms=132, block_q=32) == 2000 // MIN_KEYS_PER_SPLIT
    assert choose_num_splits(_decode(batch=1, seqlen_k=200), num_sms=132, block_q=32) == 1
    assert choose_num_splits(_decode(batch=1, nhead_k=1, seqlen_k=1 << 20), num_sms=132, block_q=32) == \
        MAX_AUTO_SPLITS


def test_auto_splits_count_each_sequences_own_row_tiles_in_group_mode():
    p = Problem(family="paged", page_size=16, mode="group", batch=3, seqlen_q=[1, 0, 40], seqlen_k=[9000, 5, 9000],
                nhead_q=8, nhead_k=8, hdim_q=128, num_splits=0)
    # (1 + 0 + 2) tiles x 8 heads = 24 blocks on 16 SMs: full already; on 100 SMs ceil(200 / 24) = 9
    assert choose_num_splits(p, num_sms=16, block_q=32) == 1
    assert choose_num_splits(p, num_sms=100, block_q=32) == 9


def test_a_given_split_count_is_used_as_is_and_auto_uses_the_instance_tile():
    given, auto = _decode(batch=1, num_splits=3), _decode(batch=1)
    assert num_splits_for(given, select_kernel(given, "sm_90a"), num_sms=132) == 3
    spec = select_kernel(auto, "sm_90a")
    block_q = int(dict(spec.defines)["FMHA_BLOCK_Q"])
    assert num_splits_for(auto, spec, num_sms=132) == choose_num_splits(auto, 132, block_q)


# ----------------------------------------------------------------------------- strides
def _offset(args, tensor, b=0, h=0, row=0, page=0):
    return (b * args[f"{tensor}_batch_stride"] + h * args[f"{tensor}_head_stride"] + row * args[f"{tensor}_row_stride"]
            + page * args.get(f"{tensor}_page_stride", 0))


def test_batch_mode_strides_address_the_bhsd_arrays():
    p = Problem(batch=2, seqlen_q=5, seqlen_k=7, nhead_q=4, nhead_k=2, hdim_q=64, hdim_v=32, lse=True)
    x = p.make_inputs()
    args = unpack(kernel_args(p, x, _ptrs()))
    for name, arr in (("q", x.q), ("k", x.k), ("v", x.v)):
        assert _offset(args, name, b=1, h=1, row=3) == np.ravel_multi_index((1, 1, 3, 0), arr.shape)
    assert _offset(args, "o", b=1, h=3, row=4) == np.ravel_multi_index((1, 3, 4, 0), (2, 4, 5, 32))
    assert 1 * args["lse_batch_stride"] + 3 * args["lse_head_stride"] + 4 == np.ravel_multi_index((1, 3, 4), (2, 4, 5))
    assert args["max_seqlen_q"] == 5 and args["max_seqlen_k"] == 7 and args["group_mode"] == 0


def test_group_mode_strides_address_the_token_major_arrays():
    p = Problem(mode="group", batch=2, seqlen_q=[3, 4], seqlen_k=[6, 2], nhead_q=4, nhead_k=2, hdim_q=64, lse=True)
    x = p.make_inputs()
    args = unpack(kernel_args(p, x, _ptrs()))
    # token 1 of sequence 1: rows are offset by seqstart in the kernel, so batch strides are 0
    assert args["q_batch_stride"] == args["k_batch_stride"] == args["o_batch_stride"] == args["lse_batch_stride"] == 0
    assert _offset(args, "q", h=2, row=3 + 1) == np.ravel_multi_index((4, 2, 0), x.q.shape)
    assert _offset(args, "k", h=1, row=6 + 1) == np.ravel_multi_index((7, 1, 0), x.k.shape)
    assert 2 * args["lse_head_stride"] + 4 == np.ravel_multi_index((2, 4), (4, 7))
    assert args["group_mode"] == 1 and args["seqstart_q"] and args["seqstart_k"]


@pytest.mark.parametrize("kv_layout", ["hnd", "nhd"])
def test_paged_strides_address_a_token_inside_a_page(kv_layout):
    p = Problem(family="paged", batch=2, seqlen_q=1, seqlen_k=40, nhead_q=4, nhead_k=2, hdim_q=64, page_size=16,
                kv_layout=kv_layout)
    x = p.make_inputs()
    args = unpack(kernel_args(p, x, _ptrs()))
    index = (5, 1, 9, 0) if kv_layout == "hnd" else (5, 9, 1, 0)  # page 5, KV head 1, slot 9
    for name, arr in (("k", x.k), ("v", x.v)):
        assert args[f"{name}_batch_stride"] == 0
        assert _offset(args, name, h=1, row=9, page=5) == np.ravel_multi_index(index, arr.shape)
    assert args["page_size"] == 16 and args["max_pages"] == x.tables.block_table.shape[1]


# ----------------------------------------------------------------------------- other fields
@pytest.mark.parametrize("mask,expected", [
    ("0", ("none", -1, -1, 0)),
    ("b", ("bottom_right", -1, 0, 0)),
    ("t:3,5", ("top_left", 3, 5, 0)),
    ("b:-1,0,4", ("bottom_right", -1, 0, 4)),
    ("xt:33", ("top_left", 16, 16, 0)),
    ("t:99999999999,0", ("top_left", 2 ** 31 - 1, 0, 0)),
])
def test_mask_fields_mirror_the_parsed_mask(mask, expected):
    args = _args(Problem(hdim_q=64, mask=mask))
    align, left, right, sink = expected
    assert (args["mask_align"], args["mask_left"], args["mask_right"], args["mask_sink"]) == \
        (MASK_ALIGN[align], left, right, sink)


def test_headwise_tables_pass_their_table_and_sliding_window_heads():
    p = Problem(family="paged", batch=2, seqlen_q=4, seqlen_k=200, nhead_q=8, nhead_k=4, hdim_q=64, mask="b",
                page_size=16, page_table="headwise", swa_heads=(1, 3), swa_window=64, swa_sink=16)
    args = _args(p)
    assert args["block_table"] == _ptrs()["block_tables_headwise"]
    assert args["page_table"] == PAGE_TABLE["headwise"] and args["seqlen_k"] == _ptrs()["seqlen_k"]
    assert args["swa_heads"] == [0b1010, 0, 0, 0] and (args["swa_left"], args["swa_sink"]) == (63, 16)


def test_sglang_tables_pass_the_csr_arrays_and_no_block_table():
    p = Problem(family="paged", batch=2, seqlen_q=1, seqlen_k=50, hdim_q=64, page_size=16, page_table="sglang")
    args = _args(p)
    assert args["page_table"] == PAGE_TABLE["sglang"] and args["block_table"] == 0
    assert [args[n] for n in ("kv_indptr", "kv_page_indices", "kv_last_page_len")] == \
        [_ptrs()[n] for n in ("kv_indptr", "kv_page_indices", "kv_last_page_len")]


def test_unused_buffers_are_passed_as_null():
    args = _args(Problem(hdim_q=64))
    assert args["lse"] == args["sink_logits"] == args["seqstart_q"] == args["block_table"] == 0
    assert args["has_lse"] == args["has_sink"] == 0


def test_fp8_descales_fold_into_the_base2_scale():
    p = Problem(hdim_q=64, dtype="fp8_e4m3fn", soft_cap=30.0, sink=True, lse=True)
    x = p.make_inputs()
    args = unpack(kernel_args(p, x, _ptrs()))
    expected = p.softmax_scale * x.q_descale * x.k_descale * math.log2(math.e)
    assert args["scale_log2"] == pytest.approx(expected, rel=1e-6)
    assert args["v_descale"] == pytest.approx(x.v_descale, rel=1e-6) and x.v_descale != 1.0
    assert args["soft_cap"] == 30.0 and args["has_sink"] == 1 and args["has_lse"] == 1


def test_split_arguments_point_at_the_workspaces_with_their_split_strides():
    p = Problem(family="splitkv", mode="group", batch=2, seqlen_q=[3, 4], seqlen_k=[6, 2], nhead_q=4, nhead_k=2,
                hdim_q=64, hdim_v=32, num_splits=5)
    args = unpack(kernel_args(p, p.make_inputs(), _ptrs(), 5))
    assert (args["num_splits"], args["o_acc"], args["lse_acc"]) == (5, _ptrs()["o_acc"], _ptrs()["lse_acc"])
    assert (args["o_acc_split_stride"], args["lse_acc_split_stride"]) == (7 * 4 * 32, 7 * 4)
    assert split_workspace_bytes(p, 5) == {"o_acc": 5 * 7 * 4 * 32 * 4, "lse_acc": 5 * 7 * 4 * 4}


def test_unsplit_arguments_say_one_split_and_need_no_workspace():
    args = _args(Problem(family="splitkv", num_splits=4, hdim_q=64))  # kernel_args' default: one split
    assert args["num_splits"] == 1 and args["o_acc"] == args["lse_acc"] == 0


def test_split_arguments_need_a_resolved_count_and_the_workspaces():
    p = Problem(family="splitkv", num_splits=0, hdim_q=64)
    with pytest.raises(ValueError, match="resolved"):
        kernel_args(p, p.make_inputs(), _ptrs(), 0)
    ptrs = _ptrs()
    del ptrs["o_acc"]
    with pytest.raises(ValueError, match="o_acc"):
        kernel_args(p, p.make_inputs(), ptrs, 2)


def test_missing_device_pointer_is_named():
    p = Problem(family="paged", seqlen_q=1, seqlen_k=50, hdim_q=64, page_size=16, lse=True)
    ptrs = _ptrs()
    del ptrs["block_table"], ptrs["lse"]
    with pytest.raises(ValueError, match="block_table, lse"):
        kernel_args(p, p.make_inputs(), ptrs)
