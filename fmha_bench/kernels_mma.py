"""Host side of the tensor-core forward kernel (kernel_src/fmha_fwd_mma.hip: NVIDIA mma.sync,
sm_80 and newer): its candidate instances for a problem, and its launch shape.

It takes the same FmhaParams as the portable kernel (kernels.kernel_args) and the same grid
(tile of query rows, KV head, sequence); only the tile and the dynamic shared memory differ.
Candidates come from the arch's `mma_tiles` in kernel_src/arch_specs.json, the default first;
tiles whose shared memory exceeds what the arch lets a block opt in to are left out.
kernels_mixed.persistent_candidate turns a candidate into its persistent instance (FMHA_PERSISTENT:
a fixed grid walking a work plan, family mixed).
"""
from __future__ import annotations

import math
from typing import Union

from . import archs
from .build.instance import KernelSpec
from .problem import Problem

MMA_SOURCE, MMA_ENTRY = "fmha_fwd_mma.hip", "fmha_fwd_mma"
MMA_DTYPES = ("fp16", "bf16")


def shared_bytes(hdim_q: int, hdim_v: int, tile: dict) -> int:
    """Dynamic shared memory: Q tile plus two stages of K and V tiles, 16-bit elements."""
    return 2 * (tile["block_q"] * hdim_q + 2 * tile["block_k"] * (hdim_q + hdim_v))


def static_shared_bytes(tile: dict, paged: bool) -> int:
    """The paged instances' row table (PagedRows in fmha_fwd_mma.hip): K and V offsets (8 bytes)
    of two tiles' rows, beside the dynamic tiles."""
    return 2 * 2 * 8 * tile["block_k"] if paged else 0


def tile_tag(tile: dict) -> str:
    return f"mma-q{tile['block_q']}k{tile['block_k']}w{tile['warps']}"


def _spec(arch: str, dtype: str, hdim_q: int, hdim_v: int, kv_source: str, soft_cap: bool, tile: dict) -> KernelSpec:
    dims = f"hd{hdim_q}" if hdim_q == hdim_v else f"hd{hdim_q}x{hdim_v}"
    label = f"fwd_{kv_source}_{dtype}_{dims}{'_cap' if soft_cap else ''}_{tile_tag(tile).replace('-', '_')}"
    defines = (("FMHA_DTYPE", dtype), ("FMHA_HDIM_Q", str(hdim_q)), ("FMHA_HDIM_V", str(hdim_v)),
               ("FMHA_KV_SOURCE", kv_source), ("FMHA_BLOCK_Q", str(tile["block_q"])),
               ("FMHA_BLOCK_K", str(tile["block_k"])), ("FMHA_WARPS", str(tile["warps"])),
               ("FMHA_SOFT_CAP", "1" if soft_cap else "0"))
    return KernelSpec(source=MMA_SOURCE, entry=MMA_ENTRY, defines=defines, arch=arch, label=label)


def tensor_core_refusal(problem: Problem, arch_spec: dict, feature: str, name: str,
                        dtypes: tuple = MMA_DTYPES) -> str | None:
    """Why an NVIDIA tensor-core kernel (the arch `feature`, shown as `name`, taking `dtypes`)
    cannot run the problem at all, before its tiles are looked at; None when it may."""
    if feature not in arch_spec.get("features", ()):
        return f"{arch_spec['name']} has no {name}"
    if problem.dtype not in dtypes:
        return f"{problem.dtype}: the {name} kernel takes {'/'.join(dtypes)}"
    if problem.softmax_scale <= 0:
        return f"softmax scale <= 0: the {name} kernel folds a positive scale into its running max"
    return None


def mma_candidates(problem: Problem, arch: str) -> Union[list, str]:
    """[(tag, KernelSpec)] in the dispatcher's order for an already valid fwd/paged problem
    with one split, or the reason the tensor-core kernel cannot run it."""
    spec = archs.get_arch(arch)
    refusal = tensor_core_refusal(problem, spec, "mma_sync", "mma.sync")
    if refusal:
        return refusal
    tiles = archs.mma_tile_candidates(arch, problem.hdim_q, problem.hdim_v)
    if not tiles:
        return f"hdim {problem.hdim_q}/{problem.hdim_v} has no mma.sync tile"
    limit = spec.get("shared_bytes_optin", spec["shared_bytes_per_block"])
    kv_source = "paged" if problem.is_paged else "dense"
    fitting = [t for t in tiles if shared_bytes(problem.hdim_q, problem.hdim_v, t)
               + static_shared_bytes(t, problem.is_paged) <= limit]
    if not fitting:
        return f"hdim {problem.hdim_q}/{problem.hdim_v}: no mma.sync tile fits {limit} bytes of shared memory"
    cap = problem.soft_cap > 0
    return [(tile_tag(t), _spec(arch, problem.dtype, problem.hdim_q, problem.hdim_v, kv_source, cap, t))
            for t in fitting]


def spec_tile(spec: KernelSpec) -> dict:
    """The tile an instance was built with (the arch_specs.json form)."""
    defines = dict(spec.defines)
    return {"block_q": int(defines["FMHA_BLOCK_Q"]), "block_k": int(defines["FMHA_BLOCK_K"]),
            "warps": int(defines["FMHA_WARPS"])}


def mma_launch_config(spec: KernelSpec, problem: Problem) -> tuple[tuple, tuple, int]:
    tile = spec_tile(spec)
    rows = max(problem.seqlens_q()) * problem.group_size
    grid = (max(1, math.ceil(rows / tile["block_q"])), problem.nhead_k, problem.batch)
    return grid, (32 * tile["warps"], 1, 1), shared_bytes(problem.hdim_q, problem.hdim_v, tile)
