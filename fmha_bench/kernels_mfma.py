"""Host side of the AMD matrix-core forward kernel (kernel_src/fmha_fwd_mfma.hip: MFMA on CDNA
gfx90a/gfx942/gfx950, WMMA on RDNA gfx11/gfx12): its candidate instances for a problem, and its
launch shape. The kernel never ran on an AMD GPU (none is available to the project): it is
compiled for gfx90a/gfx942/gfx1100/gfx1201 and checked on a CPU emulation of the instructions.

fp8 runs on the fp8 MFMA (families mfma32_fp8 / mfma16_fp8) of the archs whose features list
`fp8_mfma`, in that arch's own e4m3 flavour (arch_specs.json `fp8`: e4m3fnuz on gfx942, e4m3fn
on gfx950); other fp8 problems are refused with the reason.

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
# LDS rows are padded by these many bytes (kKRow, kVRow in fmha_fwd_mfma.hip).
K_ROW_PAD_BYTES, VT_ROW_PAD_BYTES = 8, 4


def lds_bytes(hdim_q: int, hdim_v: int, tile: dict, stages: int, itemsize: int = 2) -> int:
    """Static LDS of an instance: per stage a K tile [block_k][hdim_q] and a V^T tile
    [hdim_v][block_k] of `itemsize`-byte elements, rows padded by 8 and 4 bytes."""
    block_k = tile["block_k"]
    return stages * (block_k * (hdim_q * itemsize + K_ROW_PAD_BYTES) + hdim_v * (block_k * itemsize + VT_ROW_PAD_BYTES))


def matrix_family(arch_spec: dict, tile: dict, dtype: str = "fp16") -> str:
    """The FMHA_MATRIX define: mfma32 / mfma16 on CDNA (mfma32_fp8 / mfma16_fp8 for fp8), the
    arch's WMMA flavour on RDNA."""
    family = arch_spec["amd_matrix"]
    if family != "mfma":
        return family
    return f"mfma{tile['m']}_fp8" if dtype.startswith("fp8") else f"mfma{tile['m']}"


def _dtype_refusal(problem: Problem, arch: str, spec: dict) -> str | None:
    """Why the kernel cannot take the problem's dtype on this arch, or None."""
    dtype, features = problem.dtype, spec["features"]
    if dtype in MFMA_DTYPES:
        return None
    if not problem.dt.is_fp8:
        return f"{dtype}: the AMD matrix-core kernel takes fp16/bf16/fp8"
    if "fp8_wmma" in features:
        return (f"{dtype} on {arch} needs its fp8 WMMA, which the AMD matrix-core kernel does not implement "
                "(its fp8 runs on the fp8 MFMA of gfx942/gfx950)")
    if "fp8_mfma" not in features:
        return f"{dtype}: {arch} has no fp8 matrix instruction (the kernel's fp8 needs the fp8 MFMA of gfx942/gfx950)"
    if dtype != f"fp8_{spec['fp8']}":
        return f"{dtype} is not {arch}'s fp8 format: its fp8 MFMA reads fp8_{spec['fp8']}"
    return None


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
    refusal = _dtype_refusal(problem, arch, spec)
    if refusal:
        return refusal
    tiles = archs.kernel_tile_candidates(arch, "amd_matrix", problem.hdim_q, problem.hdim_v)
    if not tiles:
        return f"hdim {problem.hdim_q}/{problem.hdim_v} has no AMD matrix-core tile"
    limit, itemsize = spec["shared_bytes_per_block"], problem.dt.itemsize
    found = []
    for tile in tiles:
        stages = next((s for s in (2, 1)
                       if lds_bytes(problem.hdim_q, problem.hdim_v, tile, s, itemsize) <= limit), None)
        if stages is not None:
            family = matrix_family(spec, tile, problem.dtype)
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
