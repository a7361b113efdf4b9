"""The wgmma forward kernel (kernel_src/fmha_fwd_wgmma.hip) compiled for the CPU against the NumPy
reference: every GPU thread a fiber (fmha_cpu_emulation.h), wgmma from
kernel_src/fmha_wgmma_emulation.h (fmha_wgmma.h's own descriptor encoders, the documented operand
and fragment layouts, e4m3 k32 included), cp.async and the 16-bit packs from fmha_mma_sync.h's
emulation.

This checks the kernel's descriptors, swizzled and staged loads, the fp8 V transpose and its key
permutation against P's fragment, the P scale, masks, GQA, varlen, page tables, LSE, sink and
soft cap, for the shipped tiles (two warpgroups; one in decode's tiles; a producer warpgroup beside
two consumers in the warp-specialised ones). Whether the instruction model is
the GPU's is for the GPU tests (tests/test_gpu_kernels.py).
"""
from __future__ import annotations

import ctypes
import dataclasses

import numpy as np
import pytest
from test_kernels_emulated import CXX, DRIVER, _compile, host_buffers_with_nan_page, kernel_libraries, run_emulated
from test_mma_emulated import Emulated as Unsplit
from test_mma_emulated import _assert_matches, paged
from emulated_backend import emulated_tensor_map

from fmha_bench import archs, dtypes
from fmha_bench.kernels import combine_launch_config, kernel_args, select_combine
from fmha_bench.kernels_wgmma import (shared_bytes, spec_tile, tma_arguments, tma_refusal, uses_tma,
                                     wgmma_candidates, wgmma_launch_config)
from fmha_bench.problem import Problem
from fmha_bench.reference import split_partials

pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")

FP8 = "fp8_e4m3fn"
SMEM_EXTRA = r"""
extern "C" int smem_bytes() { return fmha::kSmemBytes; }
extern "C" int threads() { return fmha::kThreads; }
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return kernel_libraries(tmp_path_factory.mktemp("wgmma_emulated"), "w", DRIVER + SMEM_EXTRA, "fmha::kThreads")


@dataclasses.dataclass
class Emulated(Unsplit):
    lse_acc: np.ndarray | None = None   # split-KV partial LSEs [num_splits, *LSE shape] (None when unsplit)


@pytest.fixture(scope="module")
def combine_library(tmp_path_factory):
    return kernel_libraries(tmp_path_factory.mktemp("wgmma_combine"), "c")


@pytest.fixture(scope="module")
def emulate(library, combine_library):
    """emulate(problem, block_k=None, tag=None, early_copies=False) -> Emulated: one launch of the
    problem's default wgmma instance (or that instance with another BLOCK_K, or the candidate tagged
    `tag`; its copies landing when issued with `early_copies`) over NaN-poisoned outputs."""

    def run(problem: Problem, block_k: int = None, tag: str = None, early_copies: bool = False) -> Emulated:
        found = wgmma_candidates(problem, "sm_90a")
        assert not isinstance(found, str), found
        spec = found[0][1] if tag is None else dict(found)[tag]
        spec = spec if block_k is None else with_block_k(spec, block_k)
        if early_copies:
            spec = dataclasses.replace(spec, defines=spec.defines + (("FMHA_EMU_EARLY_COPIES", "1"),))
        x = problem.make_inputs(seed=1)
        splits = problem.num_splits
        host, ptrs = host_buffers_with_nan_page(problem, x, splits)
        grid, block, shared = wgmma_launch_config(spec, problem, splits)
        lib = library(spec)
        assert block == (lib.threads(), 1, 1) and lib.smem_bytes() + 1024 == shared
        return launch_and_combine(lib, spec, combine_library, problem, x, host, ptrs, grid, splits)

    return run


def launch_and_combine(lib, spec, combine_library, problem: Problem, x, host: dict, ptrs: dict, grid,
                       splits: int) -> Emulated:
    """One emulated launch of `lib`'s forward kernel (instance `spec`) over `grid`, then (splits > 1)
    the combine."""
    args = kernel_args(problem, x, ptrs, splits)
    if uses_tma(spec):
        args = tma_arguments(args, problem, spec, emulated_tensor_map, x.k.shape[0] if problem.is_paged else 0)
    run_emulated(lib, args, grid)
    if splits > 1:
        combine = select_combine(problem, "sm_90a")
        run_emulated(combine_library(combine), args, combine_launch_config(combine, problem)[0])
    return Emulated(dtypes.decode(host["o"], problem.out_dt), host["lse"], x, host.get("lse_acc"))


def with_block_k(spec, block_k: int):
    return dataclasses.replace(spec, defines=tuple({**dict(spec.defines), "FMHA_BLOCK_K": str(block_k)}.items()))


def fwd(**fields) -> Problem:
    base = dict(batch=1, seqlen_q=37, seqlen_k=150, nhead_q=4, nhead_k=2, hdim_q=128, dtype=FP8, mask="b", lse=True)
    return Problem(**{**base, **fields})


# ----------------------------------------------------------------------------- fp8, dense K/V
@pytest.mark.parametrize("problem", [
    fwd(),                                                                    # two key tiles, the second partial
    fwd(hdim_q=64, seqlen_q=40, seqlen_k=300, mask="t:3,5", nhead_q=8, nhead_k=1),
    fwd(hdim_q=256, seqlen_q=20, seqlen_k=200, mask="0", nhead_q=2, nhead_k=2),   # BLOCK_K 64: V^T stages share lines
    fwd(seqlen_q=90, seqlen_k=40, nhead_q=2, nhead_k=1),                      # bottom-right: first rows see no key
    fwd(seqlen_q=70, seqlen_k=260, mask="xb:20", nhead_q=4, nhead_k=1),       # sliding window + sink tokens
], ids=lambda p: p.name())
def test_fp8_dense_masks_gqa_and_head_dims_match_reference(emulate, problem):
    _assert_matches(problem, emulate(problem))


def test_fp8_soft_cap_and_learned_sink_match_reference(emulate):
    """The sink joins the denominator at P's 2^8 scale; LSE removes the scale."""
    p = fwd(seqlen_q=33, seqlen_k=140, soft_cap=5.0, sink=True)
    _assert_matches(p, emulate(p))


def test_fp8_varlen_with_empty_sequences_matches_reference(emulate):
    p = fwd(mode="group", batch=4, seqlen_q=[19, 0, 1, 33], seqlen_k=[130, 0, 1, 70], nhead_q=4, nhead_k=2,
            sink=True)
    _assert_matches(p, emulate(p))


@pytest.mark.parametrize("hdim,block_k", [(64, 64), (128, 64), (256, 128)])
def test_fp8_other_key_tiles_match_reference(emulate, hdim, block_k):
    """The staging swizzle and transposer for 4 or 8 key groups per tile and one or two passes."""
    p = fwd(hdim_q=hdim, seqlen_q=20, seqlen_k=200, nhead_q=2, nhead_k=1)
    _assert_matches(p, emulate(p, block_k))


# ----------------------------------------------------------------------------- fp8, paged K/V
@pytest.mark.parametrize("problem", [
    paged(dtype=FP8, hdim_q=128, page_size=16, page_table="vllm", kv_layout="hnd", seqlen_k=[150, 17, 44]),
    paged(dtype=FP8, hdim_q=128, page_size=5, page_table="sglang", kv_layout="nhd", mask="b:9,0,2"),
    paged(dtype=FP8, hdim_q=64, page_size=1, page_table="vllm", kv_layout="nhd", seqlen_k=[140, 3, 64]),
], ids=lambda p: f"{p.name()} {p.kv_layout}")
def test_fp8_paged_tables_match_reference(emulate, problem):
    """Part-filled last pages, spare pages and the table entries past a sequence all hold NaN."""
    _assert_matches(problem, emulate(problem))


# ----------------------------------------------------------------------------- 16-bit (the shared code paths)
@pytest.mark.parametrize("problem,tag", [
    (fwd(dtype="fp16", seqlen_k=300), "wgmma-q128k128"),
    (fwd(dtype="bf16", hdim_q=256, seqlen_q=20, seqlen_k=140, mask="t:8,-1,2", sink=True), "wgmma-q128k64"),
    (paged(dtype="bf16", hdim_q=64, page_size=16, page_table="sglang", kv_layout="hnd"), "wgmma-q128k64b2"),
], ids=lambda x: x if isinstance(x, str) else x.name())
def test_sixteen_bit_instances_match_reference(emulate, problem, tag):
    _assert_matches(problem, emulate(problem, tag=tag))


# ----------------------------------------------------------------------------- warp-specialised tiles
@pytest.mark.parametrize("problem", [
    fwd(dtype="fp16", seqlen_q=140, seqlen_k=700, nhead_q=2, nhead_k=1),                # both stages reused
    fwd(dtype="bf16", seqlen_q=150, seqlen_k=530, mask="t:8,-1,2", sink=True, soft_cap=5.0),
    fwd(dtype="fp16", hdim_q=64, seqlen_q=70, seqlen_k=600, mask="xb:40", nhead_q=8, nhead_k=2),
    fwd(dtype="bf16", mode="group", batch=4, seqlen_q=[19, 0, 1, 133], seqlen_k=[530, 0, 1, 270], nhead_q=4,
        nhead_k=2),                                                                     # empty tile lists
    paged(dtype="fp16", hdim_q=128, page_size=1, page_table="vllm", kv_layout="nhd", seqlen_k=[700, 3, 260]),
    paged(dtype="bf16", hdim_q=64, page_size=16, page_table="sglang", kv_layout="hnd", seqlen_k=[600, 17, 129]),
    fwd(family="splitkv", dtype="fp16", seqlen_q=70, seqlen_k=900, mask="t:8,-1,2", num_splits=3),
    fwd(dtype="bf16", hdim_q=256, seqlen_q=150, seqlen_k=330, mask="b", sink=True),   # 4-row copier step
    paged(dtype="fp16", hdim_q=256, page_size=16, page_table="vllm", kv_layout="nhd", seqlen_k=[300, 5, 129]),
], ids=lambda p: p.name())
def test_warp_specialised_tiles_match_reference(emulate, problem):
    """The producer warpgroup's copies and row table, the full/empty mbarrier phases over many
    tiles, and the consumers released stage by stage (the dispatcher's default 16-bit tile)."""
    found = wgmma_candidates(problem, "sm_90a")
    assert spec_tile(found[0][1])["warp_specialized"], found[0][0]
    _assert_matches(problem, emulate(problem))


@pytest.mark.parametrize("problem", [
    fwd(dtype="fp16", seqlen_q=130, seqlen_k=1100, scale=1.5),
    fwd(dtype="bf16", hdim_q=64, seqlen_q=200, seqlen_k=900, scale=2.0, mask="b", nhead_q=4, nhead_k=2),
], ids=lambda p: p.name())
def test_running_max_growing_past_the_slack_rescales_o(emulate, problem):
    """Scores of standard deviation 16-23 (log2 units): rows' maxima keep growing by more than the
    8 the running max may lag, so O's conditional rescale runs on later tiles too."""
    _assert_matches(problem, emulate(problem))


# ----------------------------------------------------------------------------- TMA tiles: K/V through tensor maps
@pytest.mark.parametrize("problem,early_copies", [
    (fwd(dtype="fp16", seqlen_q=150, seqlen_k=530, mask="b"), False),     # the last, partial tile by cp.async
    (fwd(dtype="bf16", batch=2, seqlen_q=100, seqlen_k=512, mask="0", nhead_q=4, nhead_k=1, sink=True), False),
    (fwd(dtype="fp16", hdim_q=64, seqlen_q=200, seqlen_k=700, mask="t:8,-1,2", nhead_q=8, nhead_k=2), False),
    (fwd(dtype="bf16", hdim_q=256, seqlen_q=150, seqlen_k=330, mask="xb:40", soft_cap=5.0), False),
    (fwd(dtype="bf16", mode="group", batch=4, seqlen_q=[19, 0, 1, 133], seqlen_k=[530, 0, 1, 270], nhead_q=4,
         nhead_k=2), False),                                              # packed rows: the sequence's first row
    (fwd(family="splitkv", dtype="fp16", seqlen_q=70, seqlen_k=900, mask="t:8,-1,2", num_splits=3), False),
    (fwd(dtype="fp16", batch=2, seqlen_q=150, seqlen_k=640, mask="0"), True),   # a box landing at once
    (paged(dtype="fp16", hdim_q=128, page_size=128, page_table="vllm", kv_layout="nhd", seqlen_k=[300, 5, 129]),
     False),                                                              # a tile per page
    (paged(dtype="bf16", hdim_q=128, page_size=256, page_table="sglang", kv_layout="hnd", seqlen_k=[600, 17, 529]),
     False),                                                              # a tile's part of a page
    (paged(dtype="bf16", hdim_q=256, page_size=64, page_table="vllm", kv_layout="hnd", seqlen_k=[300, 70, 129],
           sink=True), False),                                            # 64-key tiles
    (paged(dtype="fp16", hdim_q=128, page_size=16, page_table="vllm", kv_layout="nhd", seqlen_k=[300, 5, 129]),
     False),                                                              # a box per page: 8 parts per tile
    (paged(dtype="bf16", hdim_q=256, page_size=32, page_table="sglang", kv_layout="hnd", seqlen_k=[300, 70, 129],
           sink=True), True),                                             # 64-key tiles of two pages
    (paged(dtype="fp16", hdim_q=64, page_size=64, page_table="vllm", kv_layout="hnd", seqlen_k=[400, 3, 200]),
     False),                                                              # 128-key tiles of two pages
    (paged(dtype="fp16", hdim_q=64, page_size=256, page_table="vllm", kv_layout="nhd", seqlen_k=[600, 3, 300]),
     True),
], ids=lambda x: x.name() if isinstance(x, Problem) else ("early" if x else "late"))
def test_tma_tiles_match_reference(emulate, problem, early_copies):
    """The producer's tensor copies (box coordinates of sequence or page, KV head and row; one box
    per 128-byte column and page part, issued by the lanes of one warp after lane 0 made the
    mbarrier expect the tile's bytes) beside its cp.async for partial tiles (paged: rows located
    on the spot, the NaN page -1 never read)."""
    tag = next(tag for tag, _ in wgmma_candidates(problem, "sm_90a") if tag.endswith("-tma"))
    _assert_matches(problem, emulate(problem, tag=tag, early_copies=early_copies))


@pytest.mark.parametrize("fields,reason", [
    (dict(page_size=8, page_table="vllm"), "page size 8"),
    (dict(page_size=48, page_table="vllm"), "page size 48"),
    (dict(page_size=192, page_table="vllm"), "page size 192"),
    (dict(page_size=128, page_table="headwise"), "one page table"),
], ids=lambda x: str(x))
def test_tma_tiles_refuse_pages_they_cannot_box(fields, reason):
    problem = paged(dtype="fp16", hdim_q=128, kv_layout="nhd", seqlen_k=[300, 5, 129], **fields)
    found = wgmma_candidates(problem, "sm_90a")
    assert found and not any(tag.endswith("-tma") for tag, _ in found), found
    tile = next(t for t in archs.kernel_tile_candidates("sm_90a", "wgmma", 128, 128) if t.get("tma"))
    assert reason in tma_refusal(problem, tile)


# ----------------------------------------------------------------------------- decode tiles: one warpgroup
@pytest.mark.parametrize("problem,tag", [
    (fwd(dtype="fp16", seqlen_q=2, seqlen_k=900, nhead_q=8, nhead_k=2), "wgmma-q64k64b2"),
    (fwd(dtype="bf16", seqlen_q=1, seqlen_k=1000, nhead_q=8, nhead_k=2, sink=True), "wgmma-q64k64b2"),
    (fwd(dtype="fp16", seqlen_q=3, seqlen_k=150, nhead_q=8, nhead_k=2, mask="xb:20"), "wgmma-q64k64b2"),
    (fwd(seqlen_q=2, seqlen_k=700, nhead_q=8, nhead_k=2), "wgmma-q64k128"),                     # fp8: one warpgroup's transposer
    (fwd(seqlen_q=2, seqlen_k=300, nhead_q=8, nhead_k=2, mask="t:8,-1,2"), "wgmma-q64k128"),
    (fwd(hdim_q=64, seqlen_q=4, seqlen_k=600, nhead_q=16, nhead_k=2), "wgmma-q64k128"),
    (fwd(dtype="bf16", hdim_q=64, seqlen_q=40, seqlen_k=300, nhead_q=4, nhead_k=2, mask="t"), "wgmma-q64k128"),
    (paged(dtype="fp16", hdim_q=128, page_size=1, page_table="vllm", kv_layout="nhd", seqlen_q=[1, 2, 1],
           seqlen_k=[700, 3, 260]), "wgmma-q64k64b2"),
    (paged(dtype="bf16", hdim_q=128, page_size=16, page_table="sglang", kv_layout="hnd", seqlen_q=[2, 1, 1],
           seqlen_k=[500, 40, 129]), "wgmma-q64k64b2"),
    (paged(dtype=FP8, hdim_q=128, page_size=5, page_table="vllm", kv_layout="hnd", seqlen_q=[1, 1, 3],
           seqlen_k=[610, 17, 44]), "wgmma-q64k128"),
    (paged(dtype="fp16", hdim_q=64, page_size=3, page_table="sglang", kv_layout="nhd", seqlen_q=[1, 4, 2],
           seqlen_k=[300, 17, 90]), "wgmma-q64k128"),
], ids=lambda x: x if isinstance(x, str) else x.name())
def test_decode_tiles_match_reference(emulate, problem, tag):
    """One warpgroup's copiers, row table and (fp8) transposer passes, over several key tiles."""
    _assert_matches(problem, emulate(problem, tag=tag))


# ----------------------------------------------------------------------------- split-KV: partials and the combine
@pytest.mark.parametrize("problem,tag", [
    (paged(dtype="bf16", hdim_q=128, page_size=16, page_table="vllm", kv_layout="hnd", seqlen_q=[1, 2, 1],
           seqlen_k=[700, 3, 260], num_splits=3, sink=True), "wgmma-q64k64b2"),   # split edges inside tiles
    (fwd(family="splitkv", dtype="fp16", seqlen_q=2, seqlen_k=300, nhead_q=8, nhead_k=2, mask="xb:40", num_splits=5),
     "wgmma-q64k64b2"),
    (fwd(family="splitkv", dtype="fp16", seqlen_q=70, seqlen_k=260, mask="t:8,-1,2", num_splits=2), "wgmma-q128k128"),
    (fwd(family="splitkv", seqlen_q=1, seqlen_k=90, nhead_q=8, nhead_k=2, num_splits=4, sink=True),
     "wgmma-q64k128"),   # fp8
    (fwd(family="splitkv", dtype="bf16", seqlen_q=1, seqlen_k=40, nhead_q=8, nhead_k=2, num_splits=64),
     "wgmma-q64k64b2"),  # empty splits
], ids=lambda x: x if isinstance(x, str) else x.name())
def test_splits_write_the_spec_partials_and_combine_to_the_reference(emulate, problem, tag):
    """SPEC 6's key ranges (X = ceil(keys / num_splits), not whole tiles): the partial LSEs are the
    reference's (the same empty splits, values within the rounded-P tolerance), the combine's O
    and LSE match."""
    run = emulate(problem, tag=tag)
    _assert_matches(problem, run)
    _, lse_s = split_partials(problem, run.inputs, problem.num_splits)
    if problem.mode == "group":
        lse_s = lse_s.transpose(0, 2, 1)
    np.testing.assert_array_equal(np.isneginf(run.lse_acc), np.isneginf(lse_s))
    np.testing.assert_allclose(run.lse_acc, lse_s, atol=2e-3 if problem.dtype == FP8 else 1e-4, rtol=0)


# ----------------------------------------------------------------------------- host mirrors and pieces
@pytest.mark.parametrize("dtype,hdim,block_k", [(FP8, 64, 128), (FP8, 128, 128), (FP8, 256, 64), (FP8, 128, 64),
                                                ("fp16", 128, 128), ("bf16", 256, 64)])
def test_host_shared_bytes_mirror_the_kernel(library, dtype, hdim, block_k):
    spec = with_block_k(wgmma_candidates(Problem(dtype=dtype, hdim_q=hdim), "sm_90a")[0][1], block_k)
    assert library(spec).smem_bytes() + 1024 == shared_bytes(hdim, hdim, spec_tile(spec), dtype)


@pytest.mark.parametrize("dtype,hdim", [(FP8, 128), ("fp16", 128), (FP8, 64), ("bf16", 64)])
def test_host_shared_bytes_mirror_every_decode_tile(library, dtype, hdim):
    found = wgmma_candidates(Problem(dtype=dtype, hdim_q=hdim, seqlen_q=1), "sm_90a")
    decode = [(tag, spec) for tag, spec in found if tag.startswith("wgmma-q64")]
    assert decode, found
    for tag, spec in decode:
        tile = spec_tile(spec)
        assert library(spec).smem_bytes() + 1024 == shared_bytes(hdim, hdim, tile, dtype), tag


PIECES = r"""
#include "fmha_port.h"
#include "fmha_mma_sync.h"
#include "fmha_wgmma_emulation.h"
extern "C" void pack(const float* x, unsigned* out, int n)
{
    for (int i = 0; i < n; i += 4) out[i / 4] = fmha::wgmma_emu::pack_e4m3x4(x[i], x[i + 1], x[i + 2], x[i + 3]);
}
extern "C" unsigned perm(unsigned a, unsigned b, unsigned sel) { return fmha::wgmma_emu::byte_perm(a, b, sel); }
"""


@pytest.fixture(scope="module")
def pieces(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("wgmma_pieces"), "pieces", PIECES, [])


def test_emulated_e4m3_pack_rounds_to_nearest_even_and_saturates(pieces):
    """Against dtypes' encoder on every code's value (both signs), the midpoints between neighbours
    (ties go to the even code) and values past 448."""
    fn = dtypes.get(FP8)
    values = dtypes.decode(np.arange(0x7f, dtype=np.uint8), fn).astype(np.float64)
    mids = (values[:-1] + values[1:]) / 2
    x = np.concatenate([values, mids, -values[1:], [448.0, 500.0, 1e6, 2.0 ** -12]]).astype(np.float32)
    x = np.concatenate([x, np.zeros(-len(x) % 4, np.float32)])
    out = np.zeros(len(x) // 4, np.uint32)
    pieces.pack(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), len(x))
    codes = out.view(np.uint8)
    expect = dtypes.encode(x, fn)
    np.testing.assert_array_equal(codes, expect)
    assert codes[len(values)] % 2 == 0 and codes[len(values) + 1] % 2 == 0, "a tie went to an odd code"


def test_emulated_byte_perm_picks_bytes_of_the_pair(pieces):
    pieces.perm.restype = ctypes.c_uint
    a, b = 0x33221100, 0x77665544
    assert pieces.perm(a, b, 0x5140) == 0x55114400
    assert pieces.perm(a, b, 0x7362) == 0x77336622
    assert pieces.perm(a, b, 0x3210) == a and pieces.perm(a, b, 0x7654) == b
