"""The dispatcher: candidates per problem and arch, their order, tags and launch shapes."""
from __future__ import annotations

import dataclasses

from fmha_bench.dispatch import PERSISTENT_MAX_KEY_TILES, candidates, instances_for, launch_config, num_splits_for
from fmha_bench.kernels_mixed import persistent_candidate
from fmha_bench.kernels_mma import MMA_SOURCE, shared_bytes
from fmha_bench.kernels_wgmma import WGMMA_SOURCE
from fmha_bench.kernels_wgmma import shared_bytes as wgmma_shared_bytes
from fmha_bench.mixed_plan import computed_area
from fmha_bench.problem import Problem


def test_hopper_fp16_prefill_prefers_wgmma_then_mma_sync_then_the_portable_kernel():
    found = candidates(Problem(hdim_q=128), "sm_90a")
    tags = [tag for tag, _ in found]
    assert tags[:6] == ["persistent-q128k128s3ws", "wgmma-q128k128ws-tma", "wgmma-q128k128ws", "wgmma-q128k128",
                        "wgmma-q64k64b2", "mma-q128k64w8"]
    assert tags[-1].startswith("portable-")
    assert [spec.source for _, spec in found[:-1]] == [WGMMA_SOURCE] * 5 + [MMA_SOURCE] * (len(found) - 6)
    assert found[0][1] == persistent_candidate(*found[2])[1]   # the cp.async warp-specialised tile over a plan


def test_ampere_has_no_wgmma_candidate():
    assert [tag for tag, _ in candidates(Problem(hdim_q=128), "sm_80")][0] == "mma-q128k64w8"


def test_amd_points_prefer_the_matrix_core_kernel():
    for arch, family in (("gfx942", "mfma"), ("gfx90a", "mfma"), ("gfx1100", "wmma"), ("gfx1201", "wmma")):
        tags = [tag for tag, _ in candidates(Problem(), arch)]
        assert tags[0].startswith(family) and tags[-1].startswith("portable-"), (arch, tags)


def test_split_kv_points_have_the_wgmma_kernel_then_only_the_portable_kernel():
    """Of the tensor-core kernels only wgmma writes split partials."""
    hopper = candidates(Problem(family="splitkv", num_splits=4), "sm_90a")
    assert [tag.split("-")[0] for tag, _ in hopper] == ["wgmma", "wgmma", "wgmma", "wgmma", "portable"]
    for arch in ("sm_80", "gfx942"):
        found = candidates(Problem(family="splitkv", num_splits=4), arch)
        assert [tag.split("-")[0] for tag, _ in found] == ["portable"], arch


def test_split_counts_follow_each_instance_s_row_tile():
    auto = Problem(family="paged", page_size=16, batch=2, seqlen_q=1, seqlen_k=32768, nhead_q=32, nhead_k=8,
                   hdim_q=128, mask="b", num_splits=0)
    found = dict(candidates(auto, "sm_90a"))
    # 16 blocks: ceil(2 * 132 / 16) = 17 splits for either wgmma tile (each holds the 4 rows in one tile)
    assert num_splits_for(auto, found["wgmma-q64k64b2"], 132) == num_splits_for(auto, found["wgmma-q128k128"], 132) == 17
    grid = launch_config(found["wgmma-q64k64b2"], auto, 17)[0]
    assert grid == (17, 8, 2)
    assert num_splits_for(dataclasses.replace(auto, num_splits=5), found["wgmma-q64k64b2"], 132) == 5


def test_fp8_goes_to_the_matrix_core_kernel_of_its_format_then_the_portable_kernel():
    # the one-warpgroup tile first (H100 fp8 2k / 8k, both masks: hdim 128 +0.9..5.6%, NOTES.md session
    # 12; hdim 64 +4.3..7.3%, session 13)
    for hdim, portable in ((128, "portable-q32k32t128"), (64, "portable-q64k32t256")):
        assert [tag for tag, _ in candidates(Problem(dtype="fp8_e4m3fn", hdim_q=hdim), "sm_90a")] == [
            "wgmma-q64k128", "wgmma-q128k128", portable]
    amd = [tag for tag, _ in candidates(Problem(dtype="fp8_e4m3fnuz"), "gfx942")]
    assert amd[0].startswith("mfma32_fp8-") and amd[-1].startswith("portable-")
    assert "not supported on gfx942" in candidates(Problem(dtype="fp8_e4m3fn"), "gfx942")


def test_soft_cap_gets_its_own_instance():
    plain, = [spec for tag, spec in candidates(Problem(), "sm_90a") if tag == "mma-q128k64w8"]
    capped, = [spec for tag, spec in candidates(Problem(soft_cap=30.0), "sm_90a") if tag == "mma-q128k64w8"]
    assert dict(plain.defines)["FMHA_SOFT_CAP"] == "0" and dict(capped.defines)["FMHA_SOFT_CAP"] == "1"


def test_tiles_over_the_arch_shared_memory_limit_are_left_out():
    big = {"block_q": 128, "block_k": 64, "warps": 8}
    assert shared_bytes(256, 256, big) > 166912                    # sm_80's opt-in limit
    tags_80 = [tag for tag, _ in candidates(Problem(hdim_q=256), "sm_80")]
    tags_90 = [tag for tag, _ in candidates(Problem(hdim_q=256), "sm_90a")]
    assert "mma-q128k64w8" not in tags_80 and "mma-q128k64w8" in tags_90


def test_an_unsupported_problem_gives_the_reason():
    assert "hdim 96" in candidates(Problem(hdim_q=96), "sm_90a")


def test_mma_launch_uses_the_row_tiles_of_the_grouped_heads_and_dynamic_shared_memory():
    problem = Problem(batch=3, seqlen_q=1000, nhead_q=16, nhead_k=4, hdim_q=128)
    _, spec = candidates(problem, "sm_80")[0]
    grid, block, shared = launch_config(spec, problem)
    assert grid == (-(-1000 * 4 // 128), 4, 3) and block == (256, 1, 1)
    assert shared == 2 * (128 * 128 + 2 * 64 * 256)


def test_wgmma_launch_has_two_warpgroups_and_aligned_shared_memory_within_the_hopper_limit():
    problem = Problem(batch=3, seqlen_q=1000, nhead_q=16, nhead_k=4, hdim_q=128)
    found = dict(candidates(problem, "sm_90a"))
    grid, block, shared = launch_config(found["wgmma-q128k128"], problem)
    assert grid == (-(-1000 * 4 // 128), 4, 3) and block == (256, 1, 1)
    assert shared == 2 * (128 * 128 + 2 * 128 * 256) + 1024
    # the warp-specialised tile: a producer warpgroup beside the two consumers, its mbarriers after the tiles
    ws_grid, ws_block, ws_shared = launch_config(found["wgmma-q128k128ws"], problem)
    assert ws_grid == grid and ws_block == (384, 1, 1) and ws_shared == shared + 128
    assert dict(found["wgmma-q128k128ws"].defines)["FMHA_WARP_SPECIALIZED"] == "1"
    for hdim, block_k in ((64, 128), (128, 128), (256, 64)):
        assert wgmma_shared_bytes(hdim, hdim, {"block_k": block_k}) <= 232448


def test_instances_for_lists_every_candidate_once_and_skips_unsupported():
    problems = [Problem(seqlen_q=s) for s in (64, 128, 256)] + [Problem(hdim_q=96)]
    specs = instances_for(problems, ["sm_80", "sm_90a"])
    assert len(specs) == len(set(specs))
    for arch in ("sm_80", "sm_90a"):
        assert {s for s in specs if s.arch == arch} == {spec for p in problems[:3] for _, spec in candidates(p, arch)}


def test_instances_for_adds_the_split_instances_and_one_combine_per_arch():
    problems = [Problem(family="paged", page_size=16, seqlen_k=s, num_splits=n) for s, n in ((300, 0), (900, 4))]
    specs = instances_for(problems, ["gfx942", "sm_90a"])
    kinds = [(s.entry, dict(s.defines).get("FMHA_SPLIT_KV"), s.arch) for s in specs]
    assert kinds == [("fmha_fwd", "1", "gfx942"), ("fmha_combine", None, "gfx942"),
                     *[("fmha_fwd_wgmma", "1", "sm_90a")] * 4,   # TMA ws, cp.async ws, all-threads, decode tile
                     ("fmha_fwd", "1", "sm_90a"), ("fmha_combine", None, "sm_90a")]


def test_decode_like_points_take_each_family_s_smallest_row_tile_first_wgmma_ahead():
    decode = Problem(batch=64, seqlen_q=1, seqlen_k=8192, nhead_q=32, nhead_k=4, hdim_q=128, mask="b")
    prefill = Problem(batch=4, seqlen_q=2048, seqlen_k=8192, nhead_q=32, nhead_k=4, hdim_q=128, mask="b")
    assert [tag for tag, _ in candidates(decode, "sm_90a")][:5] == ["wgmma-q64k64b2", "wgmma-q128k128ws-tma",
                                                                    "wgmma-q128k128ws", "wgmma-q128k128", "mma-q64k64w4"]
    assert [tag for tag, _ in candidates(prefill, "sm_90a")][:5] == ["wgmma-q128k128ws-tma", "wgmma-q128k128ws",
                                                                     "wgmma-q128k128", "wgmma-q64k64b2",
                                                                     "persistent-q128k128s3ws"]
    assert candidates(decode, "sm_80")[0][0] == "mma-q64k64w4"
    fp8 = Problem(family="paged", page_size=16, batch=64, seqlen_q=1, seqlen_k=8192, nhead_q=32, nhead_k=8,
                  hdim_q=64, mask="b", dtype="fp8_e4m3fn")
    assert [tag for tag, _ in candidates(fp8, "sm_90a")][:2] == ["wgmma-q64k128", "wgmma-q128k128"]


def test_decode_tiles_that_would_leave_most_block_slots_empty_go_after_the_default():
    """B=16 x 8 KV heads = 128 blocks: half a wave of two one-warpgroup blocks per SM on 132 SMs,
    nearly a wave of one two-warpgroup block per SM; B=64: two and four waves, both 97% full."""
    def decode(batch):
        return Problem(family="paged", page_size=64, batch=batch, seqlen_q=1, seqlen_k=32768, nhead_q=32, nhead_k=8,
                       hdim_q=128, mask="b")
    assert [tag for tag, _ in candidates(decode(16), "sm_90a")][:4] == ["wgmma-q128k128ws-tma", "wgmma-q128k128ws",
                                                                        "wgmma-q128k128", "wgmma-q64k64b2"]
    assert [tag for tag, _ in candidates(decode(64), "sm_90a")][:2] == ["wgmma-q64k64b2", "wgmma-q128k128ws-tma"]


def test_paged_mma_tiles_count_their_row_table_in_the_shared_memory_fit(monkeypatch):
    from fmha_bench import archs, kernels_mma
    tile = {"block_q": 64, "block_k": 64, "warps": 4}
    assert kernels_mma.static_shared_bytes(tile, paged=True) == 2048
    assert kernels_mma.static_shared_bytes(tile, paged=False) == 0
    dynamic = kernels_mma.shared_bytes(256, 256, tile)
    spec = dict(archs.get_arch("sm_80"), shared_bytes_optin=dynamic + 1024)   # the tiles fit, the table not
    monkeypatch.setattr(archs, "get_arch", lambda arch: spec)
    monkeypatch.setattr(archs, "mma_tile_candidates", lambda arch, dq, dv: [tile])
    dense = Problem(hdim_q=256, dtype="bf16")
    paged = Problem(family="paged", hdim_q=256, dtype="bf16", page_size=16)
    assert not isinstance(kernels_mma.mma_candidates(dense, "sm_80"), str)
    assert "no mma.sync tile fits" in kernels_mma.mma_candidates(paged, "sm_80")


def test_computed_area_counts_padded_rows_and_the_visited_part_of_causal_diagonals():
    plain = Problem(hdim_q=64, nhead_q=2, batch=3, seqlen_q=512, seqlen_k=512, mask="none")
    assert computed_area(plain, 192, 128) == 3 * 2 * 576 * 512          # 3 row tiles, the last padded
    causal = dataclasses.replace(plain, mask="causal")
    # 128-row tiles visit 1..4 key tiles of 128; 192-row tiles visit 2, 3 and 4
    assert computed_area(causal, 128, 128) == 3 * 2 * (1 + 2 + 3 + 4) * 128 * 128
    assert computed_area(causal, 192, 128) == 3 * 2 * (2 + 3 + 4) * 192 * 128
    grouped = Problem(hdim_q=64, nhead_q=8, nhead_k=2, seqlen_q=100, seqlen_k=300, mask="b")
    # 400 rows (positions x 4 heads) in 4 tiles; bottom-right: positions 0..31 see keys up to 231 (2 key
    # tiles), the later ones reach into the third
    assert computed_area(grouped, 128, 128) == 2 * (2 + 3 + 3 + 3) * 128 * 128


def test_prefill_tiles_that_pad_far_more_than_the_next_give_way_to_it():
    """hdim 64: the 192-row tile leads, except on causal diagonals it pads > AREA_SLACK more."""
    def first(seqlen, mask):
        problem = Problem(hdim_q=64, nhead_q=32, batch=16384 // seqlen, seqlen_q=seqlen, seqlen_k=seqlen, mask=mask)
        return candidates(problem, "sm_90a")[0][0]
    assert [first(s, "none") for s in (512, 1024, 8192)] == ["persistent-q192k128s3ws"] * 2 + ["wgmma-q192k128ws-tma"]
    assert [first(s, "causal") for s in (512, 1024)] == ["persistent-q128k128s3ws"] * 2    # 1.69x, 1.33x the area
    assert [first(s, "causal") for s in (2048, 8192)] == ["persistent-q192k128s3ws"] * 2  # 1.11x, 1.01x


def test_prefill_points_of_short_row_tiles_take_the_persistent_launch_of_the_warp_specialised_tile_first():
    """Up to PERSISTENT_MAX_KEY_TILES key tiles per row tile on average (128-key tiles: non-causal
    4k, causal 8k), the persistent launch leads; longer row tiles keep it after every wgmma tile."""
    def tags(**fields):
        return [tag for tag, _ in candidates(Problem(**{"hdim_q": 128, **fields}), "sm_90a")]
    assert 32.5 <= PERSISTENT_MAX_KEY_TILES < 64   # between the measured wins and losses
    assert tags(seqlen_q=4096, seqlen_k=4096)[:2] == ["persistent-q128k128s3ws", "wgmma-q128k128ws-tma"]   # 32 tiles
    assert tags(seqlen_q=8192, seqlen_k=8192, mask="causal")[0] == "persistent-q128k128s3ws"          # 32.5 on average
    for longer in (tags(seqlen_q=8192, seqlen_k=8192),                                              # 64 tiles
                   tags(seqlen_q=16384, seqlen_k=16384, mask="causal"),                              # 64.5
                   tags(seqlen_q=1024, seqlen_k=8192)):                                              # 64: keys decide
        assert longer[0] == "wgmma-q128k128ws-tma" and longer.index("persistent-q128k128s3ws") > longer.index("wgmma-q128k128")
    hd256 = [tag for tag, _ in candidates(Problem(hdim_q=256, seqlen_q=8192, mask="causal"), "sm_90a")]
    assert hd256[0] == "wgmma-q128k64ws-tma" and "persistent-q128k64ws" in hd256   # 64-key tiles: 64.5; no room for 3 stages
    assert not any(t.startswith("persistent-") for t in tags(seqlen_q=1, seqlen_k=2048, batch=64))  # decode-like
    assert not any(t.startswith("persistent-") for t in tags(family="splitkv", seqlen_q=512, num_splits=2))
    assert not any(t.startswith("persistent-") for t in tags(seqlen_q=512, dtype="fp8_e4m3fn"))   # no fp8 ws tile


# ----------------------------------------------------------------------------- the whole-page decode kernel
def _paged_decode(**fields) -> Problem:
    base = dict(family="paged", page_size=1, batch=64, seqlen_q=1, seqlen_k=8192, nhead_q=32, nhead_k=8, hdim_q=128,
                mask="b")
    return Problem(**{**base, **fields})


def test_whole_page_decode_tiles_follow_wgmma_and_lead_mma_sync_where_they_fill_the_gpu_as_well():
    hopper = [tag for tag, _ in candidates(_paged_decode(), "sm_90a")]
    assert [tag.split("-")[0] for tag in hopper[:6]] == ["wgmma"] * 3 + ["pages"] * 2 + ["mma"]
    # 128 blocks on 132 SMs vs mma.sync's 512 64-row blocks: 0.97 of their waves either way
    assert hopper[hopper.index("pages-h4k32w8s3") + 2] == "mma-q64k64w4"
    # b16: 32 blocks of 4 heads fill a quarter of the SMs, mma.sync's 128 blocks nearly all
    small = [tag.split("-")[0] for tag, _ in candidates(_paged_decode(batch=16), "sm_90a")]
    assert small.index("mma") < small.index("pages")


def test_whole_page_decode_kernel_refuses_what_it_cannot_read_whole():
    from fmha_bench.kernels_pages import pages_candidates
    assert "dense" in pages_candidates(_paged_decode(family="fwd", page_size=0), "sm_90a")
    assert "headwise" in pages_candidates(_paged_decode(page_table="headwise", page_size=16), "sm_90a")
    assert "20 query rows" in pages_candidates(_paged_decode(seqlen_q=5), "sm_90a")   # 5 positions x 4 heads
    assert "fp8" in pages_candidates(_paged_decode(dtype="fp8_e4m3fn"), "sm_90a")
    assert "no mma.sync" in pages_candidates(_paged_decode(), "gfx942")
    assert "no whole-page decode tile" in pages_candidates(_paged_decode(hdim_q=256), "sm_90a")


def test_whole_page_decode_grid_and_auto_splits():
    found = dict(candidates(_paged_decode(num_splits=0), "sm_90a"))
    four, eight = found["pages-h4k32w8s3"], found["pages-h8k16w8s3"]
    grid, block, shared = launch_config(four, _paged_decode(), 3)
    assert grid == (3, 2, 64) and block == (256, 1, 1) and shared == 2 * 3 * 4 * 32 * 256
    # 128 blocks nearly fill 132 SMs: unsplit; 64 blocks of 8 heads: one wave holds 132 // 64 = 2 splits
    assert num_splits_for(_paged_decode(num_splits=0), four, 132) == 1
    assert num_splits_for(_paged_decode(num_splits=0), eight, 132) == 2
    # 1 block (b1): one wave would hold 132 splits, 8192 keys allow 32 (>= 256 keys each)
    assert num_splits_for(_paged_decode(num_splits=0, batch=1, seqlen_k=8192), eight, 132) == 32
    assert ("pages-h4k32w8s3" in dict(candidates(_paged_decode(num_splits=4), "sm_90a")))   # splits: partials


def test_whole_page_decode_instances_are_built_with_the_combine():
    specs = instances_for([_paged_decode(num_splits=0)], ["sm_90a", "sm_80"])
    sources = {spec.source for spec in specs}
    assert {"fmha_decode_pages.hip", "fmha_combine.hip"} <= sources
