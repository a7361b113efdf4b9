"""Host side of the Hopper tensor-core forward kernel (kernel_src/fmha_fwd_wgmma.hip: wgmma,
sm_90a only; dense or paged K/V; fp16, bf16, fp8 e4m3fn): its candidate instances for a problem
and its launch shape.

Same FmhaParams (kernels.kernel_args) and grid (tile of query rows, KV head, sequence) as the
other forward kernels; 64 query rows per computing warpgroup, two per block (one in decode's
tiles, three in hdim 64's warp-specialised 192-row tile), plus the producer warpgroup of a
warp-specialised tile. Candidates come from the arch's `wgmma_tiles` in kernel_src/arch_specs.json, the default
first; a tile serves the dtypes its `dtypes` list names (fp16 and bf16 when it names none).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

from . import archs, kernel_params
from .build.instance import KernelSpec
from .kernels_mma import tensor_core_refusal
from .problem import Problem

WGMMA_SOURCE, WGMMA_ENTRY = "fmha_fwd_wgmma.hip", "fmha_fwd_wgmma"
WGMMA_DTYPES = ("fp16", "bf16", "fp8_e4m3fn")   # e4m3fnuz is AMD's
TILE_DTYPES = ("fp16", "bf16")                   # a tile without a `dtypes` list
ROWS_PER_WARPGROUP, THREADS_PER_WARPGROUP = 64, 128
ALIGN_SLACK = 1024   # the kernel aligns its tiles to the 1024-byte swizzle atom
PIPELINE_BYTES = 128   # kPipelineBytes: a warp-specialised tile's mbarriers


def _line_bytes(values: int, itemsize: int) -> int:
    """A swizzled row: whole 128-byte lines."""
    return -(-values * itemsize // 128) * 128


def block_q(tile: dict) -> int:
    return ROWS_PER_WARPGROUP * tile.get("warpgroups", 2)


def kv_stages(tile: dict) -> int:
    """K/V stages (FMHA_KV_STAGES): 2, or 3 on a warp-specialised tile that asks for them."""
    return tile.get("stages", 2)


def threads(tile: dict) -> int:
    """Consumer warpgroups, plus the producer warpgroup of a warp-specialised tile."""
    return THREADS_PER_WARPGROUP * (tile.get("warpgroups", 2) + (1 if tile.get("warp_specialized") else 0))


def shared_bytes(hdim_q: int, hdim_v: int, tile: dict, dtype: str = "fp16") -> int:
    """Dynamic shared memory (kSmemBytes in the kernel) plus the alignment slack: the Q tile and
    the stages of K and V tiles (two unless the tile says `stages`), rows in whole 128-byte lines;
    fp8 adds V^T (two stages); a warp-specialised tile adds its pipeline barriers (128 bytes)."""
    itemsize, block_k, stages = (1 if dtype.startswith("fp8") else 2), tile["block_k"], kv_stages(tile)
    q_k = (block_q(tile) + stages * block_k) * _line_bytes(hdim_q, itemsize)
    v = stages * block_k * _line_bytes(hdim_v, itemsize) + (hdim_v * 2 * block_k if itemsize == 1 else 0)
    return q_k + v + (PIPELINE_BYTES if tile.get("warp_specialized") else 0) + ALIGN_SLACK


def static_shared_bytes(tile: dict, paged: bool) -> int:
    """The paged instances' row table (PagedRowTable in fmha_fwd_wgmma.hip): K and V offsets
    (8 bytes each) of three tiles' rows, beside the dynamic tiles (TMA tiles have none)."""
    return 3 * 2 * 8 * tile["block_k"] if paged and not tile.get("tma") else 0


def tile_tag(tile: dict) -> str:
    blocks = tile.get("blocks_per_sm", 1)
    return (f"wgmma-q{block_q(tile)}k{tile['block_k']}" + (f"b{blocks}" if blocks > 1 else "")
            + (f"s{kv_stages(tile)}" if kv_stages(tile) != 2 else "")
            + ("ws" if tile.get("warp_specialized") else "") + ("-tma" if tile.get("tma") else ""))


def _spec(arch: str, dtype: str, hdim_q: int, hdim_v: int, kv_source: str, soft_cap: bool, split_kv: bool,
          tile: dict) -> KernelSpec:
    dims = f"hd{hdim_q}" if hdim_q == hdim_v else f"hd{hdim_q}x{hdim_v}"
    label = (f"fwd_{kv_source}_{dtype}_{dims}{'_cap' if soft_cap else ''}_{tile_tag(tile).replace('-', '_')}"
             + ("_splitkv" if split_kv else ""))
    defines = (("FMHA_DTYPE", dtype), ("FMHA_HDIM_Q", str(hdim_q)), ("FMHA_HDIM_V", str(hdim_v)),
               ("FMHA_KV_SOURCE", kv_source), ("FMHA_BLOCK_K", str(tile["block_k"])),
               ("FMHA_SOFT_CAP", "1" if soft_cap else "0"),
               ("FMHA_BLOCKS_PER_SM", str(tile.get("blocks_per_sm", 1))),
               ("FMHA_WARPGROUPS", str(tile.get("warpgroups", 2))), ("FMHA_SPLIT_KV", "1" if split_kv else "0"))
    if tile.get("warp_specialized"):
        defines += (("FMHA_WARP_SPECIALIZED", "1"),)
    if tile.get("tma"):
        defines += (("FMHA_KV_TMA", "1"),)
    if kv_stages(tile) != 2:
        defines += (("FMHA_KV_STAGES", str(kv_stages(tile))),)
    return KernelSpec(source=WGMMA_SOURCE, entry=WGMMA_ENTRY, defines=defines, arch=arch, label=label)


def wgmma_candidates(problem: Problem, arch: str) -> Union[list, str]:
    """[(tag, KernelSpec)] in the dispatcher's order for an already valid fwd problem (any split
    count: splits write fp32 partials for the combine kernel), or the reason the wgmma kernel
    cannot run it."""
    spec = archs.get_arch(arch)
    refusal = tensor_core_refusal(problem, spec, "wgmma", "wgmma", WGMMA_DTYPES)
    if refusal:
        return refusal
    tiles = [t for t in archs.kernel_tile_candidates(arch, "wgmma", problem.hdim_q, problem.hdim_v)
             if problem.dtype in t.get("dtypes", TILE_DTYPES) and not (t.get("tma") and tma_refusal(problem, t))]
    if not tiles:
        return f"hdim {problem.hdim_q}/{problem.hdim_v} has no {problem.dtype} wgmma tile"
    fitting = [t for t in tiles if _fits(arch, problem.hdim_q, problem.hdim_v, t, problem.dtype, problem.is_paged)]
    if not fitting:
        return f"hdim {problem.hdim_q}/{problem.hdim_v}: no wgmma tile fits {_shared_limit(arch)} bytes of shared memory"
    cap, kv_source, split = problem.soft_cap > 0, "paged" if problem.is_paged else "dense", problem.num_splits != 1
    return [(tile_tag(t), _spec(arch, problem.dtype, problem.hdim_q, problem.hdim_v, kv_source, cap, split, t))
            for t in fitting]


def _shared_limit(arch: str) -> int:
    spec = archs.get_arch(arch)
    return spec.get("shared_bytes_optin", spec["shared_bytes_per_block"])


def _fits(arch: str, hdim_q: int, hdim_v: int, tile: dict, dtype: str, paged: bool) -> bool:
    """Blocks sharing an SM (blocks_per_sm) share its shared memory: the per-block opt-in limit plus
    the 1 KB the hardware reserves per block is the SM's capacity."""
    per_block = shared_bytes(hdim_q, hdim_v, tile, dtype) + static_shared_bytes(tile, paged) + 1024
    return tile.get("blocks_per_sm", 1) * per_block <= _shared_limit(arch) + 1024


# K/V stages of a persistent warp-specialised instance where its shared memory holds them: the
# producer runs on into the next item's tiles while the consumers finish an item, and a third stage
# lets it go a tile further. H100 fp16 causal prefill, persistent launch of the same tile with 3 vs 2
# stages: hdim 128 +0.0..+3.0% (512..16k), hdim 64 (192-row tile) +0.0..+3.4% (NOTES.md, session 11);
# the grid launch gains nothing from it (hdim 128 8k 650.6 vs 652.5 TFLOPS, hdim 64 521 vs 527).
PERSISTENT_KV_STAGES = 3


def with_persistent_stages(spec: KernelSpec) -> tuple[str, KernelSpec]:
    """(tag, instance) of a grid candidate with PERSISTENT_KV_STAGES K/V stages when it is
    warp-specialised and they fit; else the candidate's own tag and instance."""
    tile, defines = spec_tile(spec), dict(spec.defines)
    deeper = {**tile, "stages": PERSISTENT_KV_STAGES}
    if not tile["warp_specialized"] or not _fits(spec.arch, int(defines["FMHA_HDIM_Q"]), int(defines["FMHA_HDIM_V"]),
                                                 deeper, defines["FMHA_DTYPE"], defines["FMHA_KV_SOURCE"] == "paged"):
        return tile_tag(tile), spec
    return tile_tag(deeper), _spec(spec.arch, defines["FMHA_DTYPE"], int(defines["FMHA_HDIM_Q"]),
                                   int(defines["FMHA_HDIM_V"]), defines["FMHA_KV_SOURCE"], defines["FMHA_SOFT_CAP"] == "1",
                                   defines["FMHA_SPLIT_KV"] == "1", deeper)


def spec_tile(spec: KernelSpec) -> dict:
    """The tile an instance was built with (the arch_specs.json form)."""
    defines = dict(spec.defines)
    warpgroups = int(defines.get("FMHA_WARPGROUPS", 2))
    return {"block_q": ROWS_PER_WARPGROUP * warpgroups, "block_k": int(defines["FMHA_BLOCK_K"]),
            "warpgroups": warpgroups,
            "blocks_per_sm": int(defines.get("FMHA_BLOCKS_PER_SM", 1)),
            "warp_specialized": defines.get("FMHA_WARP_SPECIALIZED") == "1",
            "tma": defines.get("FMHA_KV_TMA") == "1",
            "stages": int(defines.get("FMHA_KV_STAGES", 2))}


def wgmma_launch_config(spec: KernelSpec, problem: Problem, num_splits: int = 1) -> tuple[tuple, tuple, int]:
    """Block x = row tile * num_splits + split, y = KV head, z = sequence."""
    tile = spec_tile(spec)
    rows = max(problem.seqlens_q()) * problem.group_size
    grid = (max(1, math.ceil(rows / block_q(tile))) * num_splits, problem.nhead_k, problem.batch)
    return grid, (threads(tile), 1, 1), shared_bytes(problem.hdim_q, problem.hdim_v, tile, problem.dtype)


# ----------------------------------------------------------------------------- tensor maps (FMHA_KV_TMA)
# A TMA tile's producer copies whole K/V tiles as boxes of the driver's tensor maps (dense: dims
# head dim, rows, KV heads, sequences; paged: head dim, page rows, KV heads, pages), one box = one
# 128-byte swizzle line of BLOCK_K rows (paged: of min(page size, BLOCK_K) rows).
TMA_BOX_BYTES = 128
TMA_MAX_STRIDE = 1 << 40


def uses_tma(spec: KernelSpec) -> bool:
    return dict(spec.defines).get("FMHA_KV_TMA") == "1"


TMA_MIN_PAGE = 16   # a paged box starts on a 1024-byte swizzle atom; a tile has at most BLOCK_K / 16 of them


def tma_refusal(problem: Problem, tile: dict) -> str:
    """Why a TMA tile cannot run the problem ("" when it can): only the grid launch passes tensor
    maps (not the persistent one of family mixed, nor appendkv's); paged, a box lies in one page of
    one KV head (one table for every head; pages of 16-row multiples that tile BLOCK_K or that it
    tiles)."""
    if problem.family in ("mixed", "appendkv"):
        return f"the TMA tiles run the grid launch, not family {problem.family}'s"
    if problem.is_paged:
        page, block_k = problem.page_size, tile["block_k"]
        if problem.page_table == "headwise":
            return "the TMA tiles read one page table for every KV head"
        if page % TMA_MIN_PAGE or (block_k % page and page % block_k):
            return f"page size {page}: the TMA tiles take multiples of {TMA_MIN_PAGE} that tile {block_k} keys"
    return ""


@dataclass(frozen=True)
class TensorGeometry:
    """What cuTensorMapEncodeTiled takes for one tensor (dims innermost first)."""
    address: int
    dims: tuple     # elements
    strides: tuple  # bytes, of dims 1..
    box: tuple      # elements


def kv_geometry(problem: Problem, params: dict, block_k: int, pool_pages: int = 0) -> tuple[TensorGeometry,
                                                                                             TensorGeometry]:
    """K's and V's geometry from the packed FmhaParams' pointers and strides. Dense: rows are a
    sequence's tokens (batch mode; its sequences a fourth dim) or every sequence's (group mode: one
    packed run, the kernel adds the sequence's first row). Paged: a page's rows, KV heads, the
    cache's `pool_pages` pages. Raises ValueError where TMA cannot address them."""
    itemsize = 2   # 16-bit tiles only
    group = params["group_mode"] == 1
    rows = sum(problem.seqlens_k()) if group else params["max_seqlen_k"]
    found = []
    for name, hdim in (("k", problem.hdim_q), ("v", problem.hdim_v)):
        row, head = params[f"{name}_row_stride"] * itemsize, params[f"{name}_head_stride"] * itemsize
        if problem.is_paged:
            dims = (hdim, problem.page_size, problem.nhead_k, pool_pages)
            strides, box_rows = (row, head, params[f"{name}_page_stride"] * itemsize), min(problem.page_size, block_k)
        else:
            # a group-mode tensor has one "sequence": its stride only needs to be a valid one
            batch = max(row * rows, head * problem.nhead_k) if group else params[f"{name}_batch_stride"] * itemsize
            dims = (hdim, max(rows, 1), problem.nhead_k, 1 if group else problem.batch)
            strides, box_rows = (row, head, batch), block_k
        address = params[name]
        if address % 16 or any(s % 16 or not 0 < s < TMA_MAX_STRIDE for s in strides) or not dims[3]:
            raise ValueError(f"{name.upper()} at {address:#x}, dims {dims}, strides {strides} bytes: TMA needs "
                             "16-byte multiples and a non-empty tensor")
        found.append(TensorGeometry(address, dims, strides, (TMA_BOX_BYTES // itemsize, box_rows, 1, 1)))
    return found[0], found[1]


def tma_arguments(params: bytes, problem: Problem, spec: KernelSpec, encode: Callable[[str, TensorGeometry], bytes],
                  pool_pages: int = 0) -> bytes:
    """The launch argument of a TMA instance (FmhaTmaArgs): the packed FmhaParams, padded to 64 bytes,
    then K's and V's tensor maps as `encode(dtype, geometry)` (the backend's) writes them (paged:
    over a cache of `pool_pages` pages)."""
    k, v = kv_geometry(problem, kernel_params.unpack(params), int(dict(spec.defines)["FMHA_BLOCK_K"]), pool_pages)
    maps = [encode(problem.dtype, g) for g in (k, v)]
    assert all(len(m) == 128 for m in maps), "a tensor map is 128 bytes"
    return params + bytes(-len(params) % 64) + b"".join(maps)
