"""The mixed batch's work plan (mixed_plan.py) and the host side of its launches
(kernels_mixed.py): coverage of every visible (row, key) exactly once, partial slots and merge
tasks, cost balance, determinism, the device image, a launch shape and argument bytes that do not
depend on the batch composition, and the separate launches' parts."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fmha_provider import RecordingBackend, no_compiler  # noqa: F401 (a fixture)

from fmha_bench.kernel_params import FmhaParams, unpack
from fmha_bench.kernels import MERGE_ITEMS_ENTRY, attention_problem, kernel_args
from fmha_bench.kernels_mixed import (MIXED_ARG_POINTERS, PERSISTENT_ENTRIES, SEPARATE_TAG, merge_launch_config,
                                      mixed_args, mixed_candidates, part_args, persistent_blocks,
                                      persistent_launch_config, plan_for, separate_parts)
from fmha_bench.dispatch import candidates
from fmha_bench.kernels_mma import MMA_SOURCE
from fmha_bench.kernels_wgmma import WGMMA_SOURCE, uses_tma
from fmha_bench.mixed_plan import ITEM_FIELDS, L2_WINDOW_BYTES, MERGE_FIELDS, PLAN_HEADER_WORDS, make_plan
from fmha_bench.problem import Problem
from fmha_bench.providers.fmha import FmhaProvider
from fmha_bench.session import PointSession

MASKS = ["0", "b", "t", "b:9,0", "t:3,5", "b:-1,0,4", "t:8,-1,2", "xb:20"]


def _coverage(problem: Problem, plan) -> None:
    """Every row of every (request, KV head) lies in exactly one row tile, has at least one item,
    and every key it sees lies in exactly one of its items' key ranges."""
    G = problem.group_size
    for seq, (sq, sk) in enumerate(zip(problem.seqlens_q(), problem.seqlens_k())):
        for kv_head in range(problem.nhead_k):
            visible = np.repeat(problem.mask_for_kv_head(kv_head).dense(sq, sk), G, axis=0)
            covered = np.zeros((sq * G, sk), np.int64)
            tiles = np.zeros(sq * G, np.int64)
            mine = [i for i in plan.items() if (i.seq, i.kv_head) == (seq, kv_head)]
            for item in mine:
                covered[item.row_begin:item.row_end, item.key_begin:item.key_end] += 1
            for row_range in {(i.row_begin, i.row_end) for i in mine}:
                tiles[slice(*row_range)] += 1
            assert (tiles == 1).all(), f"request {seq} head {kv_head}: rows not in exactly one row tile"
            assert (covered[visible] == 1).all() and covered.max(initial=0) <= 1, f"request {seq} head {kv_head}"


def _slots_and_merges(plan) -> None:
    """Split row tiles write consecutive, distinct slots and have one merge task each; the
    others write the output themselves."""
    by_tile = {}
    for item in plan.items():
        by_tile.setdefault((item.seq, item.kv_head, item.row_begin, item.row_end), []).append(item)
    tasks = {(t.seq, t.kv_head, t.row_begin, t.row_end): t for t in plan.merges}
    assert len(tasks) == len(plan.merges)
    for tile, items in by_tile.items():
        slots = sorted(item.slot for item in items)
        if len(items) == 1:
            assert slots == [-1] and tile not in tasks
        else:
            task = tasks[tile]
            assert slots == list(range(task.slot_begin, task.slot_begin + task.slot_count))
    every = [item.slot for item in plan.items() if item.slot >= 0]
    assert sorted(every) == list(range(plan.slots()))
    assert all(item.row_end - item.row_begin <= plan.block_q for item in plan.items())


@st.composite
def mixed_problems(draw):
    batch = draw(st.integers(1, 5))
    nhead_k = draw(st.sampled_from([1, 2]))
    fields = dict(family="mixed", mode="group", batch=batch, page_size=16, hdim_q=64,
                  seqlen_q=draw(st.lists(st.integers(0, 40), min_size=batch, max_size=batch)),
                  seqlen_k=draw(st.lists(st.integers(0, 200), min_size=batch, max_size=batch)),
                  nhead_k=nhead_k, nhead_q=nhead_k * draw(st.sampled_from([1, 2, 4])), mask=draw(st.sampled_from(MASKS)))
    if draw(st.booleans()):
        fields.update(page_table="headwise", swa_heads=(0,), swa_window=draw(st.integers(1, 50)),
                      swa_sink=draw(st.integers(0, 5)))
    return Problem(**fields)


@settings(max_examples=120, deadline=None)
@given(problem=mixed_problems(), block_q=st.sampled_from([16, 32, 64]), block_k=st.sampled_from([16, 32, 64]),
       num_blocks=st.integers(1, 24), chunk_tiles=st.sampled_from([None, 1, 2, 5]))
def test_every_visible_row_and_key_is_covered_exactly_once(problem, block_q, block_k, num_blocks, chunk_tiles):
    plan = make_plan(problem, block_q, block_k, num_blocks, chunk_tiles and chunk_tiles * block_k)
    _coverage(problem, plan)
    _slots_and_merges(plan)
    costs, item_costs = plan.block_costs(), [item.cost for item in plan.items()]
    # longest processing time first: the fullest block got its last item when it was the emptiest
    assert max(costs) <= sum(costs) / num_blocks + max(item_costs, default=0)
    assert len(plan.blocks) == num_blocks


def serving(prefill: list, decode_keys: list, **fields) -> Problem:
    """Prefill requests (tokens = keys) then one-token decodes over caches of `decode_keys`."""
    base = dict(family="mixed", mode="group", batch=len(prefill) + len(decode_keys), nhead_q=32, nhead_k=8,
                hdim_q=128, dtype="bf16", mask="b", page_size=16, seqlen_q=prefill + [1] * len(decode_keys),
                seqlen_k=prefill + decode_keys)
    return Problem(**{**base, **fields})


@pytest.mark.parametrize("problem,most", [
    (serving([], [8192] * 64), 1.04),                                   # 512 items on 264 blocks: 2 or 1 each
    (serving([4096], [2048, 4096, 8192, 6000] * 8), 1.02),
    (serving([2048, 3000], [4096] * 48), 1.02),
    (serving([], [32768]), 1.04),                                       # one request: its keys must split
], ids=["decode64x8k", "prefill4k+32", "2prefill+48", "decode1x32k"])
def test_serving_mixes_balance_within_a_few_percent(problem, most):
    plan = make_plan(problem, 64, 64, 264)
    costs = plan.block_costs()
    assert max(costs) / (sum(costs) / len(costs)) <= most, plan.summary()


def test_a_lone_long_decode_is_split_and_a_full_batch_is_not():
    lone = make_plan(serving([], [32768]), 64, 64, 264)
    assert lone.chunk_keys < 32768 and len(lone.merges) == 8 and len(lone.items()) >= 200
    full = make_plan(serving([], [8192] * 64), 64, 64, 264)
    assert not full.merges and len(full.items()) == 64 * 8


def test_plan_is_deterministic_and_its_image_is_the_documented_layout():
    problem = serving([300], [500, 2000, 70])
    plan = make_plan(problem, 64, 64, 7, chunk_keys=256)
    assert make_plan(problem, 64, 64, 7, chunk_keys=256) == plan
    words = plan.words()
    counts = [len(block) for block in plan.blocks]
    assert list(words[:PLAN_HEADER_WORDS]) == [7, sum(counts), len(plan.merges), 64]
    begin = words[PLAN_HEADER_WORDS:PLAN_HEADER_WORDS + 8]
    assert list(begin) == [0, *np.cumsum(counts)]
    items = words[PLAN_HEADER_WORDS + 8:PLAN_HEADER_WORDS + 8 + len(ITEM_FIELDS) * sum(counts)]
    assert items.reshape(-1, len(ITEM_FIELDS)).tolist() == [[getattr(i, f) for f in ITEM_FIELDS] for i in plan.items()]
    merges = words[len(words) - len(MERGE_FIELDS) * len(plan.merges):]
    assert merges.reshape(-1, len(MERGE_FIELDS)).tolist() == [[getattr(t, f) for f in MERGE_FIELDS]
                                                                for t in plan.merges]


def test_summary_reports_items_per_block_imbalance_and_merged_splits():
    plan = make_plan(serving([], [32768]), 64, 64, 264)
    text = plan.summary()
    assert text.startswith("persistent plan: 264 blocks, items per block 0/0.97/1 (min/mean/max), imbalance 1.031")
    assert f"{len(plan.merges)} row tiles split into {plan.slots()} partials merged" in text


def test_bad_chunk_or_block_count_is_refused():
    problem = serving([], [100])
    with pytest.raises(ValueError, match="num_blocks"):
        make_plan(problem, 64, 64, 0)
    with pytest.raises(ValueError, match="chunk_keys"):
        make_plan(problem, 64, 64, 4, chunk_keys=100)


# ----------------------------------------------------------------------------- launches
def _fake_pointers() -> dict:
    names = ["q", "k", "v", "o", "lse", "seqstart_q", "seqstart_k", "seqlen_k", "sink_logits", "block_table",
             "kv_indptr", "kv_page_indices", "kv_last_page_len", "block_tables_headwise", *MIXED_ARG_POINTERS]
    return {name: 0x1000 * (i + 1) for i, name in enumerate(names)}


@pytest.mark.parametrize("page_table", ["vllm", "sglang", "headwise"])
def test_launch_shapes_and_argument_bytes_do_not_depend_on_the_composition(page_table):
    """Two batches over buffers of one geometry (103 query tokens: Q, O and the LSE's row pitch;
    page tables as wide as 5000 keys need): one captured graph serves both."""
    compositions = [serving([100], [700, 5000, 12], page_table=page_table, lse=True, sink=True),
                    serving([40, 57], [5000, 3, 900, 4000, 1, 77], page_table=page_table, lse=True, sink=True)]
    spec = mixed_candidates(compositions[0], "sm_90a")[0][1]
    assert spec == mixed_candidates(compositions[1], "sm_90a")[0][1]
    args = {mixed_args(p, p.make_inputs(0), _fake_pointers()) for p in compositions}
    assert len(args) == 1
    grid, block, shared = persistent_launch_config(spec, "sm_90a", 132)
    # wgmma warp-specialised: a producer and two consumer warpgroups, 128-key stages and the pipeline's
    # barriers: one block per SM
    assert (grid, block, shared) == ((132, 1, 1), (384, 1, 1), 164992)
    assert merge_launch_config(grid[0]) == ((132, 1, 1), (128, 1, 1), 0)
    blob = args.pop()
    assert len(blob) == ctypes.sizeof(FmhaParams) + 8 * len(MIXED_ARG_POINTERS)
    tail = np.frombuffer(blob[ctypes.sizeof(FmhaParams):], np.uint64).tolist()
    assert tail == [_fake_pointers()[name] for name in MIXED_ARG_POINTERS]


@pytest.mark.parametrize("arch,tile,hdim,per_sm", [
    ("sm_90a", "persistent-q64k64w4", 128, 2),    # 2 x (80 KiB + 2 KiB table + 1 KiB) fit 228 KiB
    ("sm_80", "persistent-q64k64w4", 128, 1),     # ... but not A100's 164 KiB
    ("sm_90a", "persistent-q128k64w8", 128, 1),   # 256 threads at up to 255 registers fill the register file
    ("sm_90a", "persistent-q128k128", 128, 1),    # wgmma: 161 KiB of tiles
    ("sm_90a", "persistent-q128k64b2", 64, 2),    # wgmma built for two blocks per SM (128 registers)
    ("sm_90a", "persistent-q128k64", 64, 1),      # ... and the same tile built for one
])
def test_persistent_grid_is_what_fits_on_an_sm_up_to_two_blocks(arch, tile, hdim, per_sm):
    problem = serving([100], [700], hdim_q=hdim)
    spec = dict(mixed_candidates(problem, arch))[tile]
    assert persistent_blocks(spec, arch, 10) == 10 * per_sm


def test_candidates_put_wgmma_first_then_the_smallest_mma_tile_and_separate_last():
    """wgmma's tiles in the table's order (its warp-specialised tile, whose producer runs into the
    next item while the consumers finish one, then the all-threads and decode tiles), then mma.sync's."""
    found = mixed_candidates(serving([100], [700, 80]), "sm_90a")
    assert [tag for tag, _ in found] == ["persistent-q128k128ws", "persistent-q128k128", "persistent-q64k64b2",
                                         "persistent-q64k64w4", "persistent-q128k64w8", "persistent-q128k32w4",
                                         SEPARATE_TAG]
    assert all(spec.entry == PERSISTENT_ENTRIES[spec.source] and ("FMHA_PERSISTENT", "1") in spec.defines
               for tag, spec in found if tag != SEPARATE_TAG)
    assert [spec.source for _, spec in found[:4]] == [WGMMA_SOURCE] * 3 + [MMA_SOURCE]
    assert [tag for tag, _ in mixed_candidates(serving([100], [700, 80]), "sm_80")][0] == "persistent-q64k64w4"


def test_prefill_only_batches_take_the_separate_launch_first():
    """One grid launch of the prefill part (the warp-specialised tile) ahead of the persistent kernel."""
    assert mixed_candidates(serving([4096], []), "sm_90a")[0][0] == SEPARATE_TAG
    assert mixed_candidates(serving([4096, 300], []), "sm_90a")[0][0] == SEPARATE_TAG
    assert mixed_candidates(serving([], [4096] * 8), "sm_90a")[0][0] == "persistent-q128k128ws"   # decodes only


def test_arches_without_mma_run_the_separate_launches_and_fp8_runs_only_on_wgmma():
    assert [tag for tag, _ in mixed_candidates(serving([100], [700]), "gfx942")] == [SEPARATE_TAG]
    interleaved_fp8 = serving([100], [700, 9], dtype="fp8_e4m3fn", seqlen_q=[1, 100, 1], seqlen_k=[700, 100, 9])
    assert [tag for tag, _ in mixed_candidates(interleaved_fp8, "sm_90a")] == ["persistent-q64k128",
                                                                               "persistent-q128k128"]   # wgmma fp8
    reason = mixed_candidates(interleaved_fp8, "sm_80")
    assert "sm_80 has no wgmma" in reason and "mma.sync kernel takes fp16/bf16" in reason and "contiguous" in reason


def test_separate_parts_are_the_decode_run_and_the_prefill_run():
    parts = separate_parts(serving([], [70, 80], seqlen_q=[1, 16, 17, 300], seqlen_k=[70, 80, 90, 300],
                                   batch=4), "sm_90a")
    assert [(p.first, p.end) for p in parts] == [(0, 2), (2, 4)]   # 16 tokens x 4 heads = 64 rows: decode-like
    assert [p.problem.family for p in parts] == ["paged", "paged"]
    assert parts[1].problem.seqlens_q() == [17, 300]
    assert "contiguous" in separate_parts(serving([100], [70], seqlen_q=[1, 100, 1], seqlen_k=[70, 100, 9],
                                                  batch=3), "sm_90a")


@pytest.mark.parametrize("page_table,moved", [
    ("vllm", {"seqstart_q": 4, "seqlen_k": 4, "block_table": 4}),
    ("sglang", {"seqstart_q": 4, "kv_indptr": 4, "kv_last_page_len": 4}),
    ("headwise", {"seqstart_q": 4, "seqlen_k": 4, "block_table": 4 * 8}),
])
def test_a_part_reads_the_batch_arrays_from_its_first_request(page_table, moved):
    problem = serving([], [300, 90], seqlen_q=[1, 1, 200], seqlen_k=[300, 90, 200], batch=3, page_table=page_table)
    inputs = problem.make_inputs(0)
    ptrs = _fake_pointers()
    whole = unpack(kernel_args(problem, inputs, ptrs))
    prefill = separate_parts(problem, "sm_90a")[1]
    values = unpack(part_args(problem, inputs, ptrs, prefill))
    max_pages = whole["max_pages"]
    for name, row_bytes in moved.items():
        step = row_bytes * (max_pages if name == "block_table" else 1)
        assert values[name] == whole[name] + step * prefill.first, name
    assert (values["batch"], values["max_seqlen_q"], values["max_seqlen_k"]) == (1, 200, 200)
    untouched = set(whole) - set(moved) - {"batch", "max_seqlen_q", "max_seqlen_k"}
    assert {name: values[name] for name in untouched} == {name: whole[name] for name in untouched}


# ----------------------------------------------------------------------------- the provider's launches
def _launches(problem: Problem):
    """(the recorded launches of one timed launch(), the Prepared) of provider fmha on a fake sm_90a of 4 SMs."""
    backend = RecordingBackend(sm_count=4)
    session = PointSession(backend, backend.device_info(), problem, problem.make_inputs(0))
    prepared = FmhaProvider().prepare(problem, session)
    backend.calls.clear()
    prepared.launch()
    return backend.calls, prepared, session


@pytest.mark.usefixtures("no_compiler")
def test_persistent_launch_enqueues_the_same_two_launches_for_any_composition():
    shapes = []
    for problem in (serving([300], [700, 5000, 12]), serving([], [5000, 3, 900, 4000, 1, 77])):
        calls, prepared, session = _launches(problem)
        assert [c[0] for c in calls] == ["launch", "launch"] and prepared.graph_safe   # nothing else is timed
        (_, fwd, grid, block, shared, args, stream), (_, merge, *merge_shape, merge_args, merge_stream) = calls
        assert (fwd, merge) == (PERSISTENT_ENTRIES[WGMMA_SOURCE], MERGE_ITEMS_ENTRY) and args is merge_args
        assert stream == merge_stream
        tail = ctypes.string_at(ctypes.c_void_p.from_address(args.address).value + ctypes.sizeof(FmhaParams), 24)
        assert np.frombuffer(tail, np.uint64).tolist() == [session.workspaces[n].ptr for n in MIXED_ARG_POINTERS]
        assert prepared.notes[0].startswith("persistent plan: 4 blocks")
        shapes.append((grid, block, shared, *merge_shape))
    assert shapes[0] == shapes[1] == ((4, 1, 1), (384, 1, 1), 164992, (4, 1, 1), (128, 1, 1), 0)


def test_prefill_plans_keep_row_tiles_whole_and_run_the_heads_of_one_l2_window_at_a_time():
    """Causal 2k prefill, 8 x 16 heads of 1 MB of K/V each: the items the 132 blocks start with
    read the 24 heads of one L2_WINDOW_BYTES window (longest first over the whole batch, family
    mixed's order, starts them on all 128), and the blocks' loads stay within 4% of the mean."""
    p = Problem(batch=8, seqlen_q=2048, seqlen_k=2048, nhead_q=16, hdim_q=128, mask="b")
    plan = make_plan(p, 128, 128, 132, split=False)
    assert not plan.merges and {item.slot for item in plan.items()} == {-1}
    assert make_plan(p, 128, 128, 132, chunk_keys=256, split=False) == plan   # whole row tiles regardless
    head_bytes = 2048 * (128 + 128) * 2
    assert len({(block[0].seq, block[0].kv_head) for block in plan.blocks}) == L2_WINDOW_BYTES // head_bytes == 24
    assert max(plan.block_costs()) <= 1.04 * sum(plan.block_costs()) / 132
    by_cost = make_plan(p, 128, 128, 132)
    assert len({(block[0].seq, block[0].kv_head) for block in by_cost.blocks}) == 128
    spec = next(spec for tag, spec in candidates(p, "sm_90a") if tag.startswith("persistent-"))
    assert plan_for(p, spec, "sm_90a", 132) == plan   # the provider's plan for the point


def test_separate_parts_are_grid_launches_even_where_the_dispatcher_picks_a_persistent_one():
    """A part is launched over FmhaParams on its grid: a 2k prefill part takes the warp-specialised
    grid tile (TMA), not the persistent launch the dispatcher puts first for it."""
    parts = separate_parts(serving([2048], [700]), "sm_90a")
    prefill = next(part for part in parts if part.problem.seqlens_q()[0] == 2048)
    assert candidates(prefill.problem, "sm_90a")[0][0] == "persistent-q128k128ws"
    assert prefill.tag == "wgmma-q128k128ws-tma" and prefill.spec.entry == "fmha_fwd_wgmma"


@pytest.mark.parametrize("page_size", [16, 128])
def test_separate_parts_and_the_attention_after_an_append_take_the_first_grid_tile_tma_included(page_size):
    """Both are grid launches whose argument carries a TMA tile's tensor maps (providers/fmha.py):
    the first grid candidate runs, the TMA tile where the dispatcher puts it first."""
    parts = separate_parts(serving([2048], [700], page_size=page_size), "sm_90a")
    prefill = next(part for part in parts if part.problem.seqlens_q()[0] == 2048)
    assert uses_tma(prefill.spec) and prefill.tag == "wgmma-q128k128ws-tma"
    append = Problem(family="appendkv", batch=2, seqlen_q=1024, seqlen_k=4096, nhead_q=32, nhead_k=8, hdim_q=128,
                     mask="b", page_size=page_size, rotary_dim=128)
    (tag, spec), _ = FmhaProvider()._select(append, "sm_90a")
    assert uses_tma(spec) and tag == "wgmma-q128k128ws-tma"
