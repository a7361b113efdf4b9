"""Host side of the AMD matrix-core forward kernel (kernel_src/fmha_fwd_mfma.hip: MFMA on CDNA
gfx90a/gfx942/gfx950, WMMA on RDNA gfx11/gfx12): its candidate instances for a problem, and its
launch shape. The kernel never ran on an AMD GPU (none is available to the project): it is
compiled for gfx90a/gfx942/gfx1100/gfx1201 and checked on a CPU emulation of the instructions.

It takes the same FmhaParams as the portable kernel (kernels.kernel_args) and the same grid
(tile of query rows, KV head, sequence). The arch's `amd_matrix` key in kernel_src/arch_specs.json
names its instruction family (mfma, wmma_gfx11, wmma_gfx12); its `amd_matrix_tiles` names a set
of `amd_matrix_tile_sets` with candidate tiles per 'hdim_q/hdim_v', the default first. A tile is
{block_q, block_k, waves, m}: m is the instruction's row count (MFMA 32x32x8 or 16x16x16; WMMA
is always 16). K/V get two LDS stages where both fit the arch's LDS per block, else one.
"""
from __future__ import annotations

import math

from . import archs
from .build.instance import KernelSpec
from .problem import Problem

MFMA_SOURCE, MFMA_ENTRY = "fmha_fwd_mfma.hip", "fmha_fwd_mfma"
MFMA_DTYPES = ("fp16", "bf16")
# LDS rows are padded by these many 16-bit elements (kKRow, kVRow in fmha_fwd_mfma.hip).
K_ROW_PAD, VT_ROW_PAD = 4, 2


def lds_bytes(hdim_q: int, hdim_v: int, tile: dict, stages: int) -> int:
    """Static LDS of an instance: per stage a K tile [block_k][hdim_q + 4] and a V^T tile
    [hdim_v][block_k + 2] of 16-bit elements."""
    block_k = tile["block_k"]
    return stages * 2 * (block_k * (hdim_q + K_ROW_PAD) + hdim_v * (block_k + VT_ROW_PAD))


def matrix_family(arch_spec: dict, tile: dict) -> str:
    """The FMHA_MATRIX define: mfma32 / mfma16 on CDNA, the arch's WMMA flavour on RDNA."""
    family = arch_spec["amd_matrix"]
    return f"mfma{tile['m']}" if family == "mfma" else family


def tile_tag(family: str, tile: dict, stages: int) -> str:
    name = family if family.startswith("mfma") else "wmma"
    return f"{name}-q{tile['block_q']}k{tile['block_k']}w{tile['waves']}s{stages}"


def _spec(arch: str, family: str, problem: Problem, tile: dict, stages: int) -> KernelSpec:
    hdim_q, hdim_v = problem.hdim_q, problem.hdim_v
    kv_source = "paged" if problem.is_paged else "dense"
    cap = problem.soft_cap > 0
    dims = f"hd{hdim_q}" if hdim_q == hdim_v else f"hd{hdim_q}x{hdim_v}"
    tag = tile_tag(family, tile, stages)
    label = f"fwd_{kv_source}_{problem.dtype}_{dims}{'_cap' if cap else ''}_{family}_{tag.split('-', 1)[1]}"
    defines = (("FMHA_DTYPE", problem.dtype), ("FMHA_HDIM_Q", str(hdim_q)), ("FMHA_HDIM_V", str(hdim_v)),
               ("FMHA_KV_SOURCE", kv_source), ("FMHA_MATRIX", family), ("FMHA_BLOCK_Q", str(tile["block_q"])),
               ("FMHA_BLOCK_K", str(tile["block_k"])), ("FMHA_WAVES", str(tile["waves"])),
               ("FMHA_STAGES", str(stages)), ("FMHA_SOFT_CAP", "1" if cap else "0"))
    return KernelSpec(source=MFMA_SOURCE, entry=MFMA_ENTRY, defines=defines, arch=arch, label=label)


def mfma_candidates(problem: Problem, arch: str) -> list | str:
    """[(tag, KernelSpec)] in the dispatcher's order for an already valid fwd/paged problem
    with one split, or the reason the AMD matrix-core kernel cannot run it."""
    spec = archs.get_arch(arch)
    if "amd_matrix" not in spec:
        return f"{arch} has no AMD matrix instructions"
    if problem.dtype not in MFMA_DTYPES:
        return f"{problem.dtype}: the AMD matrix-core kernel takes fp16/bf16"
    tiles = archs.kernel_tile_candidates(arch, "amd_matrix", problem.hdim_q, problem.hdim_v)
    if not tiles:
        return f"hdim {problem.hdim_q}/{problem.hdim_v} has no AMD matrix-core tile"
    limit = spec["shared_bytes_per_block"]
    found = []
    for tile in tiles:
        stages = next((s for s in (2, 1) if lds_bytes(problem.hdim_q, problem.hdim_v, tile, s) <= limit), None)
        if stages is not None:
            family = matrix_family(spec, tile)
            found.append((tile_tag(family, tile, stages), _spec(arch, family, problem, tile, stages)))
    return found or f"hdim {problem.hdim_q}/{problem.hdim_v}: no AMD matrix-core tile fits {limit} bytes of LDS"


def mfma_launch_config(spec: KernelSpec, problem: Problem) -> tuple[tuple, tuple, int]:
    """(grid, block, dynamic shared bytes): the mma kernel's grid, waves x the arch's wave size
    threads, no dynamic LDS (the kernel's LDS is static)."""
    defines = dict(spec.defines)
    block_q, waves = int(defines["FMHA_BLOCK_Q"]), int(defines["FMHA_WAVES"])
    rows = max(problem.seqlens_q()) * problem.group_size
    grid = (max(1, math.ceil(rows / block_q)), problem.nhead_k, problem.batch)
    return grid, (waves * archs.get_arch(spec.arch)["wave_size"], 1, 1), 0
