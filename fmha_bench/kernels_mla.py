"""Host side of the MLA decode kernels: their candidate instances for a problem of family mla,
and their launch shapes.
- kernel_src/fmha_mla_wgmma.hip: Hopper wgmma (sm_90a), 64 rows and 64 keys per step, two
  warpgroups; first where it runs the problem.
- kernel_src/fmha_mla_decode.hip: NVIDIA mma.sync (sm_80 and newer), TILES.

Both take the same FmhaParams as the other kernels (kernels.kernel_args); V is read from the
latent (K) cache, so the v fields are unused and V's descale is K's. Both honour every field a
valid mla problem sets (masks, headwise sliding windows, learned sink, soft cap, LSE, varlen,
the three page tables, fp8 descales, split-KV). Grid: (row tiles of BLOCK_Q rows of the Sq x Hq
rows of a sequence, times num_splits; 1; sequences); 256 threads; dynamic shared memory (the
kernel's kSmemBytes, plus 1 KB of alignment slack for the wgmma kernel). With num_splits != 1
they write fp32 partials like the portable kernel and the same combine (kernels.select_combine)
merges them.

mma.sync tiles: BLOCK_Q 64 rows keeps the O accumulator (64 x 512 fp32) at half the register
file, so Hq x qo_len >= 64 runs 64-row tiles; fewer rows per sequence run 32- or 16-row tiles,
which do not compute empty rows (and the 16-row one fits two blocks per SM). The wgmma kernel
always computes 64 rows (one wgmma M). Why each kernel has its shape, and what bounds it: the
comment at the top of each kernel source.
"""
from __future__ import annotations

import math
from typing import Union

from . import archs, kernels
from .build.instance import KernelSpec
from .problem import Problem

MLA_SOURCE, MLA_ENTRY = "fmha_mla_decode.hip", "fmha_mla_decode"
MLA_WGMMA_SOURCE, MLA_WGMMA_ENTRY = "fmha_mla_wgmma.hip", "fmha_mla_wgmma"
MLA_SOURCES = (MLA_SOURCE, MLA_WGMMA_SOURCE)
MLA_DTYPES = ("fp16", "bf16", "fp8_e4m3fn")
THREADS, SLICES = 256, 4   # the kernels' kThreads; the mma kernel's kSlices (k-slices of S = Q K^T)
# The wgmma kernel: rows and keys per step, V head dims (half of O per warpgroup: one wgmma N of
# 64, 128 or 256), the tiles' alignment slack, its tag (`fmha:mla-wgmma-q64k64s2`).
WGMMA_BLOCK_Q, WGMMA_BLOCK_K, WGMMA_HDIM_V, ALIGN_SLACK = 64, 64, (128, 256, 512), 1024
WGMMA_TAG = f"mla-wgmma-q{WGMMA_BLOCK_Q}k{WGMMA_BLOCK_K}s2"
# Candidate tiles; among those with the preferred row count (`preferred_block_q`) the first wins.
# 64x32 with 3 stages needs 216 KiB (sm_90a); 64x16 fits sm_80's 163 KiB.
TILES = (
    {"block_q": 64, "block_k": 32, "stages": 3},
    {"block_q": 64, "block_k": 32, "stages": 2},
    {"block_q": 64, "block_k": 16, "stages": 3},
    {"block_q": 32, "block_k": 32, "stages": 3},
    {"block_q": 16, "block_k": 32, "stages": 2},
)


def shared_bytes(hdim_q: int, dtype: str, tile: dict) -> int:
    """The kernel's kSmemBytes: Q (16-bit), the stages as stored, the widened bf16 tile (fp8),
    the fp32 partial S of each k-slice (rows padded by 4 floats), a float per row."""
    item = 1 if dtype.startswith("fp8") else 2
    bm, bn = tile["block_q"], tile["block_k"]
    wide = bn * hdim_q * 2 if item == 1 else 0
    return bm * hdim_q * 2 + tile["stages"] * bn * hdim_q * item + wide + SLICES * bm * (bn + 4) * 4 + bm * 4


def wgmma_shared_bytes(hdim_q: int, dtype: str) -> int:
    """The wgmma kernel's kSmemBytes plus ALIGN_SLACK: Q (16-bit), two stages as stored, the
    widened fp16 tile (fp8), the exchange buffer (a warpgroup's partial logits: 128 threads x 16
    fp32 = P's 64 x 64 16-bit), a float per row and warpgroup."""
    item = 1 if dtype.startswith("fp8") else 2
    bm, bn = WGMMA_BLOCK_Q, WGMMA_BLOCK_K
    wide = bn * hdim_q * 2 if item == 1 else 0
    return bm * hdim_q * 2 + 2 * bn * hdim_q * item + wide + 128 * (bn // 4) * 4 + 2 * bm * 4 + ALIGN_SLACK


def tile_tag(tile: dict) -> str:
    return f"mla-q{tile['block_q']}k{tile['block_k']}s{tile['stages']}"


def preferred_block_q(problem: Problem) -> int:
    """The row tile that wastes no rows: 16 or 32 when a sequence has that few rows, else 64."""
    rows = max(problem.seqlens_q()) * problem.nhead_q
    return 16 if rows <= 16 else 32 if rows <= 32 else 64


def mla_spec(arch: str, problem: Problem, tile: dict) -> KernelSpec:
    """The instance of `tile` for `problem` (split-capable when num_splits != 1)."""
    split = problem.num_splits != 1
    label = (f"mla_{problem.dtype}_hd{problem.hdim_q}x{problem.hdim_v}_{tile_tag(tile).replace('-', '_')}"
             + ("_splitkv" if split else ""))
    defines = (("FMHA_DTYPE", problem.dtype), ("FMHA_HDIM_Q", str(problem.hdim_q)),
               ("FMHA_HDIM_V", str(problem.hdim_v)), ("FMHA_BLOCK_Q", str(tile["block_q"])),
               ("FMHA_BLOCK_K", str(tile["block_k"])), ("FMHA_STAGES", str(tile["stages"])),
               ("FMHA_SPLIT_KV", str(int(split))))
    return KernelSpec(source=MLA_SOURCE, entry=MLA_ENTRY, defines=defines, arch=arch, label=label)


def mla_wgmma_spec(arch: str, problem: Problem) -> KernelSpec:
    """The wgmma instance for `problem` (split-capable when num_splits != 1)."""
    split = problem.num_splits != 1
    label = (f"mla_wgmma_{problem.dtype}_hd{problem.hdim_q}x{problem.hdim_v}_q{WGMMA_BLOCK_Q}k{WGMMA_BLOCK_K}"
             + ("_splitkv" if split else ""))
    defines = (("FMHA_DTYPE", problem.dtype), ("FMHA_HDIM_Q", str(problem.hdim_q)),
               ("FMHA_HDIM_V", str(problem.hdim_v)), ("FMHA_BLOCK_Q", str(WGMMA_BLOCK_Q)),
               ("FMHA_SPLIT_KV", str(int(split))))
    return KernelSpec(source=MLA_WGMMA_SOURCE, entry=MLA_WGMMA_ENTRY, defines=defines, arch=arch, label=label)


def _row_tiles(problem: Problem, block_q: int) -> int:
    return max(1, math.ceil(max(problem.seqlens_q()) * problem.nhead_q / block_q))


def mla_candidates(problem: Problem, arch: str) -> Union[list, str]:
    """[(tag, KernelSpec)] in the dispatcher's order for a valid problem of family mla: the wgmma
    instance where it runs the problem, then the mma.sync tiles; or the reason neither runs it
    (the mma.sync kernel's, the more general one). A split problem also needs the combine."""
    tiles = mla_tiles(problem, arch)
    wgmma = wgmma_refusal(problem, arch)
    if isinstance(tiles, str) and wgmma is not None:
        return tiles
    if problem.num_splits != 1 and kernels.select_combine(problem, arch) is None:
        return "num_splits != 1: no split-KV combine instance for this problem"
    found = [] if wgmma is not None else [(WGMMA_TAG, mla_wgmma_spec(arch, problem))]
    return found + ([] if isinstance(tiles, str) else [(tile_tag(t), mla_spec(arch, problem, t)) for t in tiles])


def _family_refusal(problem: Problem) -> Union[str, None]:
    if problem.family != "mla":
        return f"family {problem.family}: the MLA kernel reads V from the latent K cache (family mla only)"
    return None


def wgmma_refusal(problem: Problem, arch: str) -> Union[str, None]:
    """Why the wgmma MLA kernel cannot run a valid problem of family mla on `arch`, or None."""
    spec = archs.get_arch(arch)
    if refusal := _family_refusal(problem):
        return refusal
    if "wgmma" not in spec.get("features", ()):
        return f"{arch} has no wgmma (sm_90a)"
    if problem.dtype not in MLA_DTYPES or problem.dtype not in spec["dtypes"]:
        return f"{problem.dtype} on {arch}: the wgmma MLA kernel takes {'/'.join(MLA_DTYPES)}"
    if problem.hdim_q % 64 or problem.hdim_v not in WGMMA_HDIM_V:
        return (f"hdim {problem.hdim_q}/{problem.hdim_v}: the wgmma MLA kernel needs hdim_q % 64 == 0 and "
                f"hdim_v in {WGMMA_HDIM_V}")
    if problem.batch > kernels.GRID_YZ_MAX:
        return f"batch must be <= {kernels.GRID_YZ_MAX} (grid z)"
    limit = spec.get("shared_bytes_optin", spec["shared_bytes_per_block"])
    if wgmma_shared_bytes(problem.hdim_q, problem.dtype) > limit:
        return f"hdim {problem.hdim_q}: the wgmma MLA kernel needs more than {limit} bytes of shared memory"
    if _row_tiles(problem, WGMMA_BLOCK_Q) * (problem.num_splits or kernels.MAX_AUTO_SPLITS) > kernels.GRID_X_MAX:
        return f"row tiles x num_splits must be <= {kernels.GRID_X_MAX} (grid x)"
    return None


def mla_tiles(problem: Problem, arch: str) -> Union[list, str]:
    """The tiles that run a valid problem of family mla on `arch`, preferred first, or the reason
    there is none."""
    spec = archs.get_arch(arch)
    if refusal := _family_refusal(problem):
        return refusal
    if "mma_sync" not in spec.get("features", ()):
        return f"{arch} has no mma.sync"
    if problem.dtype not in MLA_DTYPES or problem.dtype not in spec["dtypes"]:
        takes = "/".join(d for d in MLA_DTYPES if d in spec["dtypes"])
        return f"{problem.dtype} on {arch}: the MLA kernel takes {takes}"
    if problem.hdim_q % 64 or problem.hdim_v % 128:
        return f"hdim {problem.hdim_q}/{problem.hdim_v}: the MLA kernel needs hdim_q % 64 == 0 and hdim_v % 128 == 0"
    if problem.batch > kernels.GRID_YZ_MAX:
        return f"batch must be <= {kernels.GRID_YZ_MAX} (grid z)"
    most_splits = problem.num_splits or kernels.MAX_AUTO_SPLITS
    limit = spec.get("shared_bytes_optin", spec["shared_bytes_per_block"])
    fitting = [t for t in TILES if shared_bytes(problem.hdim_q, problem.dtype, t) <= limit
               and _row_tiles(problem, t["block_q"]) * most_splits <= kernels.GRID_X_MAX]
    if not fitting:
        return f"hdim {problem.hdim_q}: no MLA tile fits {limit} bytes of shared memory and the grid"
    preferred = preferred_block_q(problem)
    return sorted(fitting, key=lambda t: t["block_q"] != preferred)   # stable: TILES order within


def mla_launch_config(spec: KernelSpec, problem: Problem, num_splits: int = 1) -> tuple[tuple, tuple, int]:
    """(grid, block, dynamic shared bytes) of either MLA kernel's instance `spec`."""
    if spec.source == MLA_WGMMA_SOURCE:
        grid = (_row_tiles(problem, WGMMA_BLOCK_Q) * num_splits, 1, problem.batch)
        return grid, (THREADS, 1, 1), wgmma_shared_bytes(problem.hdim_q, problem.dtype)
    defines = dict(spec.defines)
    tile = {"block_q": int(defines["FMHA_BLOCK_Q"]), "block_k": int(defines["FMHA_BLOCK_K"]),
            "stages": int(defines["FMHA_STAGES"])}
    grid = (_row_tiles(problem, tile["block_q"]) * num_splits, 1, problem.batch)
    return grid, (THREADS, 1, 1), shared_bytes(problem.hdim_q, problem.dtype, tile)
