"""Host side of the whole-page decode kernel (kernel_src/fmha_decode_pages.hip: NVIDIA mma.sync,
sm_80 and newer; paged K/V; fp16, bf16): its candidate instances for a problem and its launch shape.

A block takes `kv_heads` KV heads of one sequence (and one key split), so the rows of those heads
in a page are copied together; each warp computes one m16 tile of query rows, so the kernel runs
only points with at most 16 rows per KV head (query heads per KV head x query positions: decode,
and short speculative runs). Same FmhaParams as the other forward kernels (kernels.kernel_args);
grid (split, group of kv_heads KV heads, sequence). Candidates come from the arch's `pages_tiles`
in kernel_src/arch_specs.json, the default first.
"""
from __future__ import annotations

import math
from typing import Union

from . import archs
from .build.instance import KernelSpec
from .kernels import splits_to_fill
from .kernels_mma import tensor_core_refusal
from .problem import Problem

PAGES_SOURCE, PAGES_ENTRY = "fmha_decode_pages.hip", "fmha_decode_pages"
PAGES_DTYPES = ("fp16", "bf16")
ROWS_PER_HEAD = 16   # one m16 tile per warp
OFFSET_BYTES = 8     # the row table's entries (i64 element offsets)


def shared_bytes(hdim_q: int, hdim_v: int, tile: dict) -> int:
    """Dynamic shared memory: the stages of K and V tiles of all the block's heads, 16-bit."""
    return 2 * tile["stages"] * tile["kv_heads"] * tile["block_k"] * (hdim_q + hdim_v)


def static_shared_bytes(tile: dict) -> int:
    """The row table (RowTable in the kernel): K and V offsets of stages + 1 tiles' tokens."""
    return 2 * OFFSET_BYTES * (tile["stages"] + 1) * tile["block_k"]


def tile_tag(tile: dict) -> str:
    return f"pages-h{tile['kv_heads']}k{tile['block_k']}w{tile['warps']}s{tile['stages']}"


def rows_per_kv_head(problem: Problem) -> int:
    return max(problem.seqlens_q()) * problem.group_size


def _spec(arch: str, dtype: str, hdim_q: int, hdim_v: int, soft_cap: bool, tile: dict) -> KernelSpec:
    dims = f"hd{hdim_q}" if hdim_q == hdim_v else f"hd{hdim_q}x{hdim_v}"
    label = f"decode_{dtype}_{dims}{'_cap' if soft_cap else ''}_{tile_tag(tile).replace('-', '_')}"
    defines = (("FMHA_DTYPE", dtype), ("FMHA_HDIM_Q", str(hdim_q)), ("FMHA_HDIM_V", str(hdim_v)),
               ("FMHA_KV_HEADS", str(tile["kv_heads"])), ("FMHA_BLOCK_K", str(tile["block_k"])),
               ("FMHA_WARPS", str(tile["warps"])), ("FMHA_KV_STAGES", str(tile["stages"])),
               ("FMHA_SOFT_CAP", "1" if soft_cap else "0"))
    return KernelSpec(source=PAGES_SOURCE, entry=PAGES_ENTRY, defines=defines, arch=arch, label=label)


def pages_candidates(problem: Problem, arch: str) -> Union[list, str]:
    """[(tag, KernelSpec)] in the dispatcher's order for an already valid fwd/paged problem (any
    split count: splits write fp32 partials for the combine kernel), or why this kernel cannot
    run it."""
    spec = archs.get_arch(arch)
    refusal = tensor_core_refusal(problem, spec, "mma_sync", "mma.sync", PAGES_DTYPES)
    if refusal:
        return refusal
    if not problem.is_paged:
        return "dense K/V: the whole-page decode kernel reads a paged cache"
    if problem.page_table == "headwise":
        return "headwise page tables: each KV head has its own pages, so there is no whole page to read"
    rows = rows_per_kv_head(problem)
    if rows > ROWS_PER_HEAD:
        return f"{rows} query rows per KV head: the whole-page decode kernel takes at most {ROWS_PER_HEAD}"
    tiles = archs.kernel_tile_candidates(arch, "pages", problem.hdim_q, problem.hdim_v)
    if not tiles:
        return f"hdim {problem.hdim_q}/{problem.hdim_v} has no whole-page decode tile"
    limit = spec.get("shared_bytes_optin", spec["shared_bytes_per_block"])
    fitting = [t for t in tiles if shared_bytes(problem.hdim_q, problem.hdim_v, t) + static_shared_bytes(t) <= limit]
    if not fitting:
        return f"hdim {problem.hdim_q}/{problem.hdim_v}: no whole-page decode tile fits {limit} bytes of shared memory"
    cap = problem.soft_cap > 0
    return [(tile_tag(t), _spec(arch, problem.dtype, problem.hdim_q, problem.hdim_v, cap, t)) for t in fitting]


def spec_tile(spec: KernelSpec) -> dict:
    """The tile an instance was built with (the arch_specs.json form)."""
    defines = dict(spec.defines)
    return {"kv_heads": int(defines["FMHA_KV_HEADS"]), "block_k": int(defines["FMHA_BLOCK_K"]),
            "warps": int(defines["FMHA_WARPS"]), "stages": int(defines["FMHA_KV_STAGES"])}


def unsplit_blocks(spec: KernelSpec, problem: Problem) -> int:
    """Blocks of one split: groups of kv_heads KV heads x sequences."""
    return math.ceil(problem.nhead_k / spec_tile(spec)["kv_heads"]) * problem.batch


# A grid of at least this share of one block per SM is left unsplit by num_splits 0: one block per SM
# holds the kernel's stages, and splitting adds partials and the combine. H100, b64 8k GQA 32:8 page 1,
# pages-h4k32w8s3 (128 blocks on 132 SMs): 2.93 TB/s unsplit, 2.92 with 2 splits, 2.90 with 3.
FULL_ENOUGH = 0.9


# A smaller grid is split into at most one wave of one block per SM: a second, partial wave idles
# SMs for its whole length. H100, same point, pages-h8k16w8s3 (64 blocks): 2.91 TB/s with 2 splits
# (128 blocks), 2.75 with the 5 of kernels.splits_to_fill's two-wave target (320 blocks; session 15).
def auto_splits(spec: KernelSpec, problem: Problem, num_sms: int) -> int:
    """num_splits 0: one split when the unsplit grid nearly fills the SMs, else as many as one wave
    holds (num_sms // blocks), within kernels.splits_to_fill's caps (keys per split, count)."""
    blocks = max(unsplit_blocks(spec, problem), 1)
    if blocks >= FULL_ENOUGH * num_sms:
        return 1
    return min(num_sms // blocks, splits_to_fill(problem, num_sms, blocks))


def pages_launch_config(spec: KernelSpec, problem: Problem, num_splits: int = 1) -> tuple[tuple, tuple, int]:
    """Block x = key split, y = group of kv_heads KV heads, z = sequence."""
    tile = spec_tile(spec)
    grid = (num_splits, math.ceil(problem.nhead_k / tile["kv_heads"]), problem.batch)
    return grid, (32 * tile["warps"], 1, 1), shared_bytes(problem.hdim_q, problem.hdim_v, tile)
