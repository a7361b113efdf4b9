"""Host side of family mixed (SPEC 9: prefill and decode requests of one batch over one paged
cache). The dispatcher offers two ways to run such a point, so a sweep times them side by side:

- `persistent-<tile>` (the dispatcher's pick: provider `fmha`): a tensor-core forward kernel
  (fmha_fwd_wgmma.hip on sm_90a, first; fmha_fwd_mma.hip on sm_80+) built with FMHA_PERSISTENT
  launches a fixed grid (`persistent_blocks`: PERSISTENT_BLOCKS_PER_SM blocks per
  SM, fewer where two do not fit) whose blocks walk a work plan (mixed_plan.py) held in a device
  buffer; then fmha_combine.hip's fmha_merge_items, also a fixed grid, merges the rows whose keys
  the plan split. Neither launch's shape nor its argument bytes depend on the batch composition
  (`mixed_args` leaves the length scalars out; lengths come from seqstart_q and the page tables),
  so one captured graph replays for any batch whose plan, tables and partials fit the buffers.
  Prefill points of families fwd and paged get the same launch as a candidate
  (`prefill_persistent_candidates`, the warp-specialised tiles only, plans without splits, so no
  merge; dispatch.PERSISTENT_MAX_KEY_TILES says when it goes first).
- `separate` (provider `fmha:separate`, under --all-instances): the decode-like requests and the
  prefill requests, each part as a family paged problem through the dispatcher's own pick, in two
  launches on one stream over the same buffers: a part's FmhaParams is the batch's with the
  per-request table pointers moved to its first request (`part_args`). Each part must be one
  contiguous run of requests, as serving engines order batches (vLLM puts the decodes first).

A request is decode-like when its rows per KV head (query tokens x Hq/Hk) are at most
dispatch.DECODE_ROWS, the rule by which the dispatcher gives decode points its small row tile.
"""
from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Union

from . import archs, kernel_params, kernels, kernels_mma, kernels_wgmma
from .build.instance import KernelSpec
from .inputs import Inputs
from .mixed_plan import MixedPlan, make_plan
from .problem import Problem, ProblemError

SEPARATE_TAG = "separate"
# Two blocks per SM let one block's loads overlap the other's math and halve the tail of a wave.
PERSISTENT_BLOCKS_PER_SM = 2
# Residency limits of sm_80 .. sm_90a: a block of T threads may take 255 registers each out of the
# SM's 65536, and the driver reserves 1 KiB of shared memory per resident block (the per-block
# opt-in limit of arch_specs.json is the SM's shared memory minus that reserve).
REGISTERS_PER_SM, MAX_REGISTERS_PER_THREAD, SHARED_RESERVED_PER_BLOCK = 65536, 255, 1024
MIXED_ARG_POINTERS = ("plan", "o_part", "lse_part")   # after FmhaParams in FmhaMixedArgs (fmha_work_plan.h)
PERSISTENT_ENTRIES = {kernels_wgmma.WGMMA_SOURCE: "fmha_fwd_wgmma_persistent",
                      kernels_mma.MMA_SOURCE: "fmha_fwd_mma_persistent"}


# ----------------------------------------------------------------------------- candidates
def mixed_candidates(problem: Problem, arch: str) -> Union[list, str]:
    """[(tag, KernelSpec)] for a family mixed problem, the dispatcher's pick first: the persistent
    instance of each wgmma tile in the table's order (sm_90a: prefill rows run twice as fast as on
    mma.sync, and decode rows read K/V faster through its 128-key stages; the warp-specialised tile
    first: its producer loads the next item while the consumers finish one, H100 session 10: 7-15%
    faster than the all-threads tile on mixed batches), then of each mma.sync tile (the smallest row
    tile first: decode rows waste least of it), then `separate` (its spec: the first part's
    instance) when the batch splits into parts (so arches without either kernel run the point
    too; first when the batch has prefill requests only); or the reasons none runs it."""
    try:
        problem.validate()
    except ProblemError as e:
        return f"invalid problem: {e}"
    refusal = kernels.swa_heads_refusal(problem)
    if refusal:
        return refusal
    if max(problem.seqlens_q()) * problem.group_size > kernels.INT32_MAX:
        return "query rows per KV head exceed the plan's 32-bit row index"
    found, reasons = [], []
    for family, prefix in ((kernels_wgmma.wgmma_candidates, "wgmma-"), (kernels_mma.mma_candidates, "mma-")):
        tiles = family(problem, arch)
        if isinstance(tiles, str):
            reasons.append(f"persistent kernel: {tiles}")
            continue
        persistent = [persistent_candidate(tag, spec) for tag, spec in tiles]
        if prefix == "mma-":
            persistent.sort(key=lambda item: persistent_shape(item[1]).block_q)
        found += persistent
    parts = separate_parts(problem, arch)
    if not isinstance(parts, str):
        # Prefill requests only: `separate` is one grid launch of the warp-specialised tile, as fast
        # as its persistent launch (H100, one 4k prefill: 0.2800 vs 0.2795 ms, session 10) and faster
        # where no warp-specialised tile exists (all-threads persistent: 0.342 ms, session 9).
        prefill_only = len(parts) == 1 and not decode_like(problem)[0]
        found.insert(0 if prefill_only else len(found), (SEPARATE_TAG, parts[0].spec))
    return found or "; ".join([*reasons, f"separate launches: {parts}"])


def prefill_persistent_candidates(problem: Problem, found: list) -> list:
    """[(tag, KernelSpec)]: the persistent instance of each warp-specialised wgmma tile among a
    family fwd / paged point's grid candidates `found`. Its producer copies the next item's Q and
    first K/V tiles while the consumers finish the last one, which a grid block (one item, then
    exit) cannot overlap; the plan also spreads causal row tiles of unequal length over the blocks."""
    return [persistent_candidate(tag, spec) for tag, spec in found
            if spec.source == kernels_wgmma.WGMMA_SOURCE and kernels_wgmma.spec_tile(spec)["warp_specialized"]
            and not kernels_wgmma.uses_tma(spec)]   # the TMA tiles have no persistent launch


def is_persistent(tag: str) -> bool:
    return tag.startswith("persistent-")


def grid_candidates(found: list) -> list:
    """The candidates that are one grid launch over FmhaParams (what a part of `separate` or the
    attention after an append runs; a TMA tile's argument adds its tensor maps): all but the
    persistent ones."""
    return [(tag, spec) for tag, spec in found if not is_persistent(tag)]


def candidate_instances(problem: Problem, arch: str, tag: str, spec: KernelSpec) -> list:
    """The instances candidate (tag, spec) launches: the persistent kernel and (family mixed, whose
    plans split rows) the merge, each part's instance (`separate`), or the instance itself."""
    if tag == SEPARATE_TAG:
        parts = separate_parts(problem, arch)
        return [] if isinstance(parts, str) else list(dict.fromkeys(part.spec for part in parts))
    if is_persistent(tag) and problem.family == "mixed":
        return [spec, kernels.merge_items_spec(problem, arch)]
    return [spec]


def every_instance(problem: Problem, arch: str) -> list:
    """Every instance any candidate of the point launches (what a build must compile)."""
    found = mixed_candidates(problem, arch)
    if isinstance(found, str):
        return []
    return list(dict.fromkeys(spec for tag, candidate in found
                              for spec in candidate_instances(problem, arch, tag, candidate)))


# ----------------------------------------------------------------------------- persistent launch
def persistent_candidate(tag: str, spec: KernelSpec) -> tuple[str, KernelSpec]:
    """(`persistent-<tile>`, instance) of a tensor-core grid candidate (`wgmma-q128k128ws`,
    `mma-q64k64w4`): the same tile and flags, the FMHA_PERSISTENT entry; a warp-specialised wgmma
    tile takes kernels_wgmma.PERSISTENT_KV_STAGES K/V stages where they fit (`persistent-q128k128s3ws`)."""
    if spec.source == kernels_wgmma.WGMMA_SOURCE:
        tag, spec = kernels_wgmma.with_persistent_stages(spec)
    return f"persistent-{tag.split('-', 1)[1]}", dataclasses.replace(
        spec, entry=PERSISTENT_ENTRIES[spec.source], defines=spec.defines + (("FMHA_PERSISTENT", "1"),),
        label=f"{spec.label}_persistent")


@dataclass(frozen=True)
class PersistentShape:
    block_q: int           # rows per work item (and per partial slot)
    block_k: int           # keys per tile: plans cut keys at its multiples
    threads: int
    max_blocks_per_sm: int  # what the instance's registers allow
    dynamic_shared: int
    static_shared: int


def persistent_shape(spec: KernelSpec) -> PersistentShape:
    """Tile, threads and shared memory of a persistent instance (of either kernel)."""
    defines = dict(spec.defines)
    hdim_q, hdim_v, paged = int(defines["FMHA_HDIM_Q"]), int(defines["FMHA_HDIM_V"]), defines["FMHA_KV_SOURCE"] == "paged"
    if spec.source == kernels_wgmma.WGMMA_SOURCE:
        tile = kernels_wgmma.spec_tile(spec)
        # __launch_bounds__(threads, FMHA_BLOCKS_PER_SM) sizes the registers for exactly that many blocks
        return PersistentShape(tile["block_q"], tile["block_k"], kernels_wgmma.threads(tile), tile["blocks_per_sm"],
                               kernels_wgmma.shared_bytes(hdim_q, hdim_v, tile, defines["FMHA_DTYPE"]),
                               kernels_wgmma.static_shared_bytes(tile, paged))
    tile = kernels_mma.spec_tile(spec)
    threads = 32 * tile["warps"]
    return PersistentShape(tile["block_q"], tile["block_k"], threads,
                           REGISTERS_PER_SM // (threads * MAX_REGISTERS_PER_THREAD),
                           kernels_mma.shared_bytes(hdim_q, hdim_v, tile), kernels_mma.static_shared_bytes(tile, paged))


def persistent_blocks(spec: KernelSpec, arch: str, sm_count: int) -> int:
    """The persistent grid: PERSISTENT_BLOCKS_PER_SM per SM, or as many as the instance's
    registers and shared memory let reside on one SM (at least one)."""
    shape = persistent_shape(spec)
    limits = archs.get_arch(arch)
    sm_shared = limits.get("shared_bytes_optin", limits["shared_bytes_per_block"]) + SHARED_RESERVED_PER_BLOCK
    by_shared = sm_shared // (shape.dynamic_shared + shape.static_shared + SHARED_RESERVED_PER_BLOCK)
    return sm_count * max(1, min(PERSISTENT_BLOCKS_PER_SM, shape.max_blocks_per_sm, by_shared))


def persistent_launch_config(spec: KernelSpec, arch: str, sm_count: int) -> tuple[tuple, tuple, int]:
    """(grid, block, dynamic shared bytes) of the persistent kernel: a function of the instance and
    the device only."""
    shape = persistent_shape(spec)
    return (persistent_blocks(spec, arch, sm_count), 1, 1), (shape.threads, 1, 1), shape.dynamic_shared


def merge_launch_config(num_blocks: int) -> tuple[tuple, tuple, int]:
    """(grid, block, dynamic shared bytes) of fmha_merge_items: as many blocks as the persistent
    grid, each walking merge rows COMBINE_ROWS at a time; no shared memory."""
    return (num_blocks, 1, 1), (kernels.COMBINE_THREADS, 1, 1), 0


def plan_for(problem: Problem, spec: KernelSpec, arch: str, sm_count: int) -> MixedPlan:
    """The work plan of `problem` for the persistent grid of `spec` on a device of `sm_count` SMs.
    Only family mixed splits rows (a prefill point's row tiles are many and even enough; the merge
    kernel addresses group-mode rows only)."""
    shape = persistent_shape(spec)
    return make_plan(problem, shape.block_q, shape.block_k, persistent_blocks(spec, arch, sm_count),
                     split=problem.family == "mixed")


def plan_workspace_bytes(plan: MixedPlan, hdim_v: int) -> dict[str, int]:
    """Device bytes by MIXED_ARG_POINTERS name: the plan words, fp32 partial O and LSE of its slots."""
    rows = plan.slots() * plan.block_q
    return {"plan": plan.words().nbytes, "o_part": rows * hdim_v * 4, "lse_part": rows * 4}


def mixed_args(problem: Problem, inputs: Inputs, ptrs: dict) -> bytes:
    """The packed FmhaMixedArgs: the point's FmhaParams, then the plan and partial pointers of
    `ptrs`. Family mixed leaves out the scalars that follow the composition (batch and the longest
    lengths: the persistent kernels read every length from device data; the split-KV strides:
    unused), so what is left describes the buffers (pointers, strides, table width) and the bytes
    are those of any other batch over the same buffers. Other families (batch mode reads its
    lengths from these scalars) keep them."""
    values = kernel_params.unpack(kernels.kernel_args(problem, inputs, ptrs))
    if problem.family == "mixed":
        values.update(batch=0, max_seqlen_q=0, max_seqlen_k=0, o_acc_split_stride=0, lse_acc_split_stride=0)
    return kernel_params.pack(**values) + struct.pack(f"<{len(MIXED_ARG_POINTERS)}Q",
                                                      *(ptrs[name] for name in MIXED_ARG_POINTERS))


# ----------------------------------------------------------------------------- separate launches
@dataclass(frozen=True)
class Part:
    first: int          # requests [first, end) of the batch
    end: int
    problem: Problem    # those requests as a family paged problem
    tag: str            # the dispatcher's pick for it
    spec: KernelSpec


def decode_like(problem: Problem) -> list[bool]:
    """Per request: does it take the decode part (rows per KV head <= dispatch.DECODE_ROWS)?"""
    from .dispatch import DECODE_ROWS
    return [sq * problem.group_size <= DECODE_ROWS for sq in problem.seqlens_q()]


def separate_parts(problem: Problem, arch: str) -> Union[list, str]:
    """The batch's decode-like and prefill parts (one part when all requests are alike), each with
    the dispatcher's pick, or why the batch does not split into them."""
    from .dispatch import candidates
    kinds = decode_like(problem)
    cuts = [0] + [b for b in range(1, problem.batch) if kinds[b] != kinds[b - 1]] + [problem.batch]
    if len(cuts) > 3:
        return ("the decode requests and the prefill requests are not each one contiguous run of the batch "
                "(serving engines put the decodes first)")
    parts = []
    for first, end in zip(cuts, cuts[1:]):
        part = part_problem(problem, first, end)
        found = candidates(part, arch)
        if isinstance(found, str):
            return f"{'decode' if kinds[first] else 'prefill'} part: {found}"
        parts.append(Part(first, end, part, *grid_candidates(found)[0]))
    return parts


def part_problem(problem: Problem, first: int, end: int) -> Problem:
    """Requests [first, end) of a mixed batch as a family paged problem."""
    fields = {**problem.fields(), "family": "paged", "batch": end - first,
              "seqlen_q": problem.seqlens_q()[first:end], "seqlen_k": problem.seqlens_k()[first:end]}
    return Problem(**fields)


def part_args(problem: Problem, inputs: Inputs, ptrs: dict, part: Part) -> bytes:
    """The batch's FmhaParams narrowed to one part: the per-request arrays (seqstart_q, lengths,
    page-table rows, sglang indptr) start at its first request, so request b of the part reads
    the batch's request first + b, whose absolute token offsets still address the batch's Q, O
    and LSE."""
    values = kernel_params.unpack(kernels.kernel_args(problem, inputs, ptrs))
    table_row = values["max_pages"] * (problem.nhead_k if problem.page_table == "headwise" else 1)
    for name, per_request in (("seqstart_q", 1), ("seqlen_k", 1), ("kv_indptr", 1), ("kv_last_page_len", 1),
                              ("block_table", table_row)):
        if values[name]:
            values[name] += 4 * per_request * part.first   # int32 arrays
    values.update(batch=part.end - part.first, max_seqlen_q=max(part.problem.seqlens_q()),
                  max_seqlen_k=max(part.problem.seqlens_k()))
    return kernel_params.pack(**values)
