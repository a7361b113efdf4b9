"""The dispatcher: which forward instance runs a problem on an arch, and every candidate it
chose from (for `--all-instances`).

Candidates, in preference order: the Hopper wgmma kernel's tiles (kernels_wgmma; sm_90a, dense or
paged, fp16/bf16/fp8, split-KV too), the whole-page decode kernel's tiles (kernels_pages; NVIDIA
sm_80+, paged points with <= 16 rows per KV head, split-KV too; after the mma.sync tiles where its
grid fills the GPU worse), the mma.sync kernel's tiles (kernels_mma; NVIDIA sm_80+,
fp16/bf16, one split) with the arch's default tile first, the AMD matrix-core kernel's tiles
(kernels_mfma; MFMA on gfx90a/gfx942/gfx950, WMMA on gfx1100/gfx1201; compiled and CPU-emulated
here, never run on AMD hardware) (prefill: within each kernel, a tile computing much more padded or
masked area than the next gives way to it; decode-like points: the tiles whose grid fills its waves
of resident blocks best, then the smallest row tile), then the portable kernel (kernels),
which runs everything the project supports. Family mla has its own tensor-core kernel
(kernels_mla; NVIDIA sm_80+, fp16/bf16/fp8, split-KV too) first, then the portable kernel where
that runs it. Each candidate carries a short tag (`mma-q128k64w8`, `mla-q64k32s3`,
`portable-q32k32t128`) that names provider `fmha:<tag>` under --all-instances.
The default order comes from measurements recorded in NOTES.md (issue #5) and the tile table in
kernel_src/arch_specs.json.
"""
from __future__ import annotations

from typing import Union

from . import archs, kernels, kernels_mfma, kernels_mla, kernels_mma, kernels_pages, kernels_wgmma
from .build.instance import KernelSpec
from .kernels_mixed import candidate_instances, every_instance, mixed_candidates, prefill_persistent_candidates
from .mixed_plan import computed_area, visited_key_tiles
from .problem import Problem, ProblemError


def portable_tag(spec: KernelSpec) -> str:
    d = dict(spec.defines)
    return f"portable-q{d['FMHA_BLOCK_Q']}k{d['FMHA_BLOCK_K']}t{d['FMHA_THREADS']}"


def candidates(problem: Problem, arch: str) -> Union[list, str]:
    """[(tag, KernelSpec)] best first, or the reason no instance runs the problem."""
    # ---- family mixed (helper "mixed"): the persistent work-list launch, then `separate` (kernels_mixed.py)
    if problem.family == "mixed":
        return mixed_candidates(problem, arch)
    # ---- end family mixed
    portable = kernels.select_kernel(problem, arch)
    if problem.family == "mla":
        return _mla_candidates(problem, arch, portable)
    if isinstance(portable, str):
        return portable
    found = []
    # of the tensor-core kernels wgmma and the whole-page decode kernel split K/V
    families = (kernels_wgmma.wgmma_candidates, kernels_pages.pages_candidates, kernels_mma.mma_candidates,
                kernels_mfma.mfma_candidates)
    for family in families if problem.num_splits == 1 else families[:2]:
        tiles = family(problem, arch)
        if not isinstance(tiles, str):
            tiles = _decode_first(problem, arch, _least_waste_first(problem, tiles))
            before, after = _persistent_first(problem, tiles)
            found += before + tiles + after
    return _place_whole_pages(problem, arch, found) + [(portable_tag(portable), portable)]


# Prefill points whose row tiles visit at most this many key tiles on average take the persistent
# launch of a warp-specialised tile first (kernels_mixed.prefill_persistent_candidates): its producer
# loads an item's Q and first K/V while the consumers finish the last item, a saving per item that
# short items feel. H100 fp16, against the grid launch of the same tile (NOTES.md, session 11, with
# three K/V stages; hdim 256 session 10, two): 4..32.5 key tiles per row tile (non-causal 512..4k
# with 128-key tiles, causal up to 8k) +1.3..+20%; 64 (non-causal 8k, causal 16k; hdim 256's
# 64-key tiles at non-causal 4k, causal 8k) -2.7..+2.0%; 128 (non-causal 16k) -9..+1.3%.
PERSISTENT_MAX_KEY_TILES = 40


def _persistent_first(problem: Problem, tiles: list) -> tuple[list, list]:
    """(before, after) `tiles`: prefill points (one split) list the persistent instance of each
    warp-specialised tile among them, in their order, before them when its row tiles visit at most
    PERSISTENT_MAX_KEY_TILES key tiles on average, after them otherwise; other points have none."""
    if max(problem.seqlens_q()) * problem.group_size <= DECODE_ROWS or problem.num_splits != 1:
        return [], []
    before, after = [], []
    for tag, spec in prefill_persistent_candidates(problem, tiles):
        visited, row_tiles = visited_key_tiles(problem, _block_q(spec), _block_k(spec))
        (before if visited <= PERSISTENT_MAX_KEY_TILES * row_tiles else after).append((tag, spec))
    return before, after


def _mla_candidates(problem: Problem, arch: str, portable) -> Union[list, str]:
    """The MLA kernel's tiles, then the portable kernel when it runs the problem."""
    try:
        problem.validate()
    except ProblemError as e:
        return f"invalid problem: {e}"
    mla = kernels_mla.mla_candidates(problem, arch)
    found = [] if isinstance(mla, str) else mla
    if not isinstance(portable, str):
        found = found + [(portable_tag(portable), portable)]
    return found or f"MLA kernel: {mla}; portable kernel: {portable}"


# Rows per (sequence, KV head) at or under which a point is decode-like: a kernel's smallest row
# tile wastes the least work and, with more blocks, reads K/V with more parallelism (H100, B=64
# decode over 8k keys: mma.sync's 64-row tile moves 2.88 TB/s where its 128-row default moves
# 1.73; H200, wgmma's one-warpgroup tile 4.2-4.3 TB/s paged where its two-warpgroup default moves
# 3.4). The wgmma kernel stays ahead of mma.sync there (H200, B=64 paged decode: 2.4-2.7 TB/s on
# mma.sync). Unless the grid leaves the small tile's block slots emptier: B=16 decode over 32k
# keys is 128 blocks, half of the 264 slots of two one-warpgroup blocks per SM, one per SM of the
# two-warpgroup tile (H200: 0.715 vs 0.607 ms). The rule misses at 16-32 blocks (NOTES.md).
DECODE_ROWS = 64


def _block_q(spec: KernelSpec) -> int:
    if spec.source == kernels_wgmma.WGMMA_SOURCE:
        return kernels_wgmma.spec_tile(spec)["block_q"]
    if spec.source == kernels_pages.PAGES_SOURCE:
        return kernels_pages.ROWS_PER_HEAD
    return int(dict(spec.defines)["FMHA_BLOCK_Q"])


def _block_k(spec: KernelSpec) -> int:
    if spec.source == kernels_wgmma.WGMMA_SOURCE:
        return kernels_wgmma.spec_tile(spec)["block_k"]
    return int(dict(spec.defines)["FMHA_BLOCK_K"])


def _resident_blocks(spec: KernelSpec) -> int:
    """Blocks of the instance one SM holds at once (as its tile declares; 1 when it declares none)."""
    return kernels_wgmma.spec_tile(spec)["blocks_per_sm"] if spec.source == kernels_wgmma.WGMMA_SOURCE else 1


# A tile listed before another (measured faster per computed element) gives way to it when it computes
# more than this much more padded or masked area (mixed_plan.computed_area). H100, fp16 hdim 64: the
# 192-row tile does 1.18-1.23x the 128-row tile's work per second, and loses on causal 512 and 1k,
# whose diagonal it pads 1.69x and 1.33x as much (119 vs 126, 185 vs 200 TFLOPS), and wins on causal
# 2k at 1.11x (288 vs 279) and non-causal 512 at 1.125x (239 vs 228; NOTES.md, session 9).
AREA_SLACK = 0.15


def _least_waste_first(problem: Problem, found: list) -> list:
    """Prefill: one pass moving each tile below the next one when it computes more than
    AREA_SLACK more area (a demoted tile may keep sinking past several)."""
    if max(problem.seqlens_q()) * problem.group_size <= DECODE_ROWS or problem.num_splits != 1:
        return found   # decode-like points: _decode_first; splits: their own grid
    order = list(found)
    tiles = {(_block_q(spec), _block_k(spec)) for _, spec in order}
    area = {tile: computed_area(problem, *tile) for tile in tiles}
    for i in range(len(order) - 1):
        mine, next_one = (area[(_block_q(spec), _block_k(spec))] for _, spec in order[i:i + 2])
        if mine > (1 + AREA_SLACK) * next_one:
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


def _blocks(problem: Problem, spec: KernelSpec) -> int:
    """The instance's grid blocks for the point with the problem's split count (0 counts as 1)."""
    splits = max(problem.num_splits, 1)
    if spec.source == kernels_pages.PAGES_SOURCE:
        return kernels_pages.unsplit_blocks(spec, problem) * splits
    rows = max(problem.seqlens_q()) * problem.group_size
    return -(-rows // _block_q(spec)) * problem.nhead_k * problem.batch * splits


def _fill(problem: Problem, arch: str, spec: KernelSpec) -> float:
    """How well the grid fills its waves of resident blocks: blocks / (waves x block slots of the
    GPU); 1 where the arch names no SM count or the splits are auto (they fill the GPU themselves)."""
    units = archs.get_arch(arch).get("compute_units")
    if not units or problem.num_splits == 0:
        return 1.0
    blocks, slots = _blocks(problem, spec), units * _resident_blocks(spec)
    return blocks / (-(-blocks // slots) * slots)


def _decode_first(problem: Problem, arch: str, found: list) -> list:
    """Decode-like points: the tiles whose grid fills its waves of resident blocks best first, then
    the smallest row tile."""
    if max(problem.seqlens_q()) * problem.group_size > DECODE_ROWS:
        return found
    return sorted(found, key=lambda item: (-_fill(problem, arch, item[1]), _block_q(item[1])))


# The whole-page decode kernel (kernels_pages) goes after the wgmma tiles: on the H100 it ties with
# wgmma's decode tile (b64 8k GQA 32:8 hdim 128 fp16, TB/s pages-h4k32w8s3 / wgmma-q64k64b2: page 1
# 2.93-2.95 / 2.94, page 16 2.98-3.01 / 3.00-3.01), and it leads mma.sync's decode tile (2.11 / 2.50
# at page 1 / 16), the best decode kernel where there is no wgmma (sm_80) (NOTES.md, session 12).
def _place_whole_pages(problem: Problem, arch: str, found: list) -> list:
    """The whole-page decode tiles after the wgmma tiles, then before the other kernels' tiles when
    the best of them fills the GPU's block slots at least as well as the first of those."""
    pages = [item for item in found if item[1].source == kernels_pages.PAGES_SOURCE]
    if not pages:
        return found
    wgmma = [item for item in found if item[1].source == kernels_wgmma.WGMMA_SOURCE]
    rest = [item for item in found if item[1].source not in (kernels_wgmma.WGMMA_SOURCE, kernels_pages.PAGES_SOURCE)]
    if rest and _fill(problem, arch, pages[0][1]) < _fill(problem, arch, rest[0][1]):
        return wgmma + rest + pages
    return wgmma + pages + rest


def instances_for(problems, arch_names) -> list[KernelSpec]:
    """Every instance these problems may run on these arches: all their candidates (so
    --all-instances and forced kernels find them prebuilt) and their combine kernels."""
    found = {}
    for arch in arch_names:
        for problem in problems:
            # ---- family mixed (helper "mixed"): its candidates launch more than their own spec
            if problem.family == "mixed":
                found.update((spec, True) for spec in every_instance(problem, arch))
                continue
            # ---- end family mixed
            specs = candidates(problem, arch)
            if isinstance(specs, str):
                continue
            found.update((instance, True) for tag, spec in specs
                         for instance in candidate_instances(problem, arch, tag, spec))
            for companion in (kernels.select_combine(problem, arch), kernels.select_append(problem, arch)):
                if companion is not None:
                    found[companion] = True
    return list(found)


def num_splits_for(problem: Problem, spec: KernelSpec, num_sms: int) -> int:
    """The split count a launch of `spec` uses: the problem's own, or for 0 `kernels.choose_num_splits`
    with the instance's row tile and the device's SM (CU) count."""
    if problem.num_splits > 0:
        return problem.num_splits
    if spec.source == kernels_pages.PAGES_SOURCE:
        return kernels_pages.auto_splits(spec, problem, num_sms)
    return kernels.choose_num_splits(problem, num_sms, _block_q(spec))


def launch_config(spec: KernelSpec, problem: Problem, num_splits: int = 1) -> tuple[tuple, tuple, int]:
    if spec.source == kernels_wgmma.WGMMA_SOURCE:
        return kernels_wgmma.wgmma_launch_config(spec, problem, num_splits)
    if spec.source == kernels_mfma.MFMA_SOURCE:
        return kernels_mfma.mfma_launch_config(spec, problem)
    if spec.source == kernels_mma.MMA_SOURCE:
        return kernels_mma.mma_launch_config(spec, problem)
    if spec.source == kernels_pages.PAGES_SOURCE:
        return kernels_pages.pages_launch_config(spec, problem, num_splits)
    if spec.source in kernels_mla.MLA_SOURCES:
        return kernels_mla.mla_launch_config(spec, problem, num_splits)
    return kernels.launch_config(spec, problem, num_splits)


def p_precision(spec: KernelSpec) -> str:
    """What the forward instance rounds P to before P.V (validate.tolerance_for): the tensor-core
    kernels the input type (a 16-bit type for fp8 inputs: "input" allows fp8's coarser rounding),
    the portable kernel nothing (fp32). Split or not."""
    tensor_core = (kernels_wgmma.WGMMA_SOURCE, kernels_mma.MMA_SOURCE, kernels_pages.PAGES_SOURCE, *kernels_mla.MLA_SOURCES,
                   kernels_mfma.MFMA_SOURCE)
    return "input" if spec.source in tensor_core else "fp32"
