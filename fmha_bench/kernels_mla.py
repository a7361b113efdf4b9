"""Host side of the MLA decode kernel (kernel_src/fmha_mla_decode.hip: NVIDIA mma.sync, sm_80 and
newer): its candidate instances for a problem of family mla, and its launch shape.

It takes the same FmhaParams as the other kernels (kernels.kernel_args); V is read from the
latent (K) cache, so the v fields are unused and V's descale is K's. Grid: (row tiles of
BLOCK_Q rows of the Sq x Hq rows of a sequence, times num_splits; 1; sequences); 256 threads;
dynamic shared memory (`shared_bytes`, the kernel's kSmemBytes). With num_splits != 1 it writes
fp32 partials like the portable kernel and the same combine (kernels.select_combine) merges them.

Tiles: BLOCK_Q 64 rows keeps the O accumulator (64 x 512 fp32) at half the register file, so
Hq x qo_len >= 64 runs 64-row tiles; fewer rows per sequence run 32- or 16-row tiles, which do
not compute empty rows (and the 16-row one fits two blocks per SM). Why the kernel has this
shape, and what bounds it: the comment at the top of the kernel source.
"""
from __future__ import annotations

import math
from typing import Union

from . import archs, kernels
from .build.instance import KernelSpec
from .problem import Problem

MLA_SOURCE, MLA_ENTRY = "fmha_mla_decode.hip", "fmha_mla_decode"
MLA_DTYPES = ("fp16", "bf16", "fp8_e4m3fn")
THREADS, SLICES = 256, 4   # the kernel's kThreads and kSlices (k-slices of S = Q K^T)
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


def _row_tiles(problem: Problem, block_q: int) -> int:
    return max(1, math.ceil(max(problem.seqlens_q()) * problem.nhead_q / block_q))


def mla_candidates(problem: Problem, arch: str) -> Union[list, str]:
    """[(tag, KernelSpec)] in the dispatcher's order for a valid problem of family mla, or the
    reason the MLA kernel cannot run it. A split problem also needs the combine."""
    tiles = mla_tiles(problem, arch)
    if isinstance(tiles, str):
        return tiles
    if problem.num_splits != 1 and kernels.select_combine(problem, arch) is None:
        return "num_splits != 1: no split-KV combine instance for this problem"
    return [(tile_tag(t), mla_spec(arch, problem, t)) for t in tiles]


def mla_tiles(problem: Problem, arch: str) -> Union[list, str]:
    """The tiles that run a valid problem of family mla on `arch`, preferred first, or the reason
    there is none."""
    spec = archs.get_arch(arch)
    if problem.family != "mla":
        return f"family {problem.family}: the MLA kernel reads V from the latent K cache (family mla only)"
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
    defines = dict(spec.defines)
    tile = {"block_q": int(defines["FMHA_BLOCK_Q"]), "block_k": int(defines["FMHA_BLOCK_K"]),
            "stages": int(defines["FMHA_STAGES"])}
    grid = (_row_tiles(problem, tile["block_q"]) * num_splits, 1, problem.batch)
    return grid, (THREADS, 1, 1), shared_bytes(problem.hdim_q, problem.dtype, tile)
