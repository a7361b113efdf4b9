"""Host side of this project's kernels: which instance runs a problem, how it is launched, and
the bytes of its one argument (`FmhaParams`, see kernel_params.py).

The portable forward kernel (kernel_src/fmha_fwd.hip) serves families fwd and paged; the
tile sizes come from kernel_src/arch_specs.json. Layouts are those of fmha_bench/inputs.py.
"""
from __future__ import annotations

import math
from typing import Union

from . import archs, kernel_params
from .build.instance import KernelSpec
from .inputs import Inputs
from .problem import Problem, ProblemError

FWD_SOURCE, FWD_ENTRY = "fmha_fwd.hip", "fmha_fwd"
FWD_FAMILIES = ("fwd", "paged")
KV_SOURCES = ("dense", "paged")
GRID_YZ_MAX = 65535  # CUDA's limit on gridDim.y / gridDim.z (HIP's is larger)


def _fwd_spec(arch: str, dtype: str, hdim_q: int, hdim_v: int, kv_source: str, tile: dict) -> KernelSpec:
    dims = f"hd{hdim_q}" if hdim_q == hdim_v else f"hd{hdim_q}x{hdim_v}"
    label = f"fwd_{kv_source}_{dtype}_{dims}_q{tile['block_q']}k{tile['block_k']}t{tile['threads']}"
    defines = (("FMHA_DTYPE", dtype), ("FMHA_HDIM_Q", str(hdim_q)), ("FMHA_HDIM_V", str(hdim_v)),
               ("FMHA_KV_SOURCE", kv_source), ("FMHA_BLOCK_Q", str(tile["block_q"])),
               ("FMHA_BLOCK_K", str(tile["block_k"])), ("FMHA_THREADS", str(tile["threads"])))
    return KernelSpec(source=FWD_SOURCE, entry=FWD_ENTRY, defines=defines, arch=arch, label=label)


def select_kernel(problem: Problem, arch: str) -> Union[KernelSpec, str]:
    """The instance that runs `problem` on `arch`, or the reason there is none."""
    try:
        problem.validate()
    except ProblemError as e:
        return f"invalid problem: {e}"
    spec = archs.get_arch(arch)
    if problem.family not in FWD_FAMILIES:
        return f"family {problem.family} has no kernel yet"
    if problem.num_splits != 1:
        return f"num_splits {problem.num_splits}: split-KV has no kernel yet"
    if problem.dtype not in spec["dtypes"]:
        others = archs.archs_with_dtype(problem.dtype)
        return f"{problem.dtype} is not supported on {arch}" + (f" (needs {'/'.join(others)})" if others else "")
    tile = archs.tile_config(arch, problem.hdim_q, problem.hdim_v)
    if tile is None:
        shipped = ", ".join(spec["tiles"])
        return f"hdim {problem.hdim_q}/{problem.hdim_v} has no instance (instances: {shipped})"
    if problem.nhead_k > GRID_YZ_MAX or problem.batch > GRID_YZ_MAX:
        return f"nhead_k and batch must be <= {GRID_YZ_MAX} (one grid dimension each)"
    swa_limit = 32 * kernel_params.SWA_HEAD_WORDS
    if problem.swa_heads and max(problem.swa_heads) >= swa_limit:
        return f"sliding-window KV heads must be < {swa_limit} (FmhaParams.swa_heads bitmask)"
    kv_source = "paged" if problem.is_paged else "dense"
    return _fwd_spec(arch, problem.dtype, problem.hdim_q, problem.hdim_v, kv_source, tile)


def instances_for(problems, arch_names) -> list[KernelSpec]:
    """The distinct instances these problems need on these arches (problems without one are skipped)."""
    found = {}
    for arch in arch_names:
        for problem in problems:
            spec = select_kernel(problem, arch)
            if isinstance(spec, KernelSpec):
                found[spec] = True
    return list(found)


def shipped_instances(arch: str) -> list[KernelSpec]:
    """Every instance the arch's specs allow: dtypes x tile configurations x K/V sources."""
    spec = archs.get_arch(arch)
    out = []
    for dtype in spec["dtypes"]:
        for dims, tile in spec["tiles"].items():
            hdim_q, hdim_v = (int(d) for d in dims.split("/"))
            out += [_fwd_spec(arch, dtype, hdim_q, hdim_v, kv, tile) for kv in KV_SOURCES]
    return out


def launch_config(spec: KernelSpec, problem: Problem) -> tuple[tuple, tuple, int]:
    """(grid, block, dynamic shared bytes). Block (x, y, z) = (tile of BLOCK_Q rows of the
    query heads sharing a KV head, KV head, sequence); shared memory is static."""
    defines = dict(spec.defines)
    block_q, threads = int(defines["FMHA_BLOCK_Q"]), int(defines["FMHA_THREADS"])
    rows = max(problem.seqlens_q()) * problem.group_size
    return (max(1, math.ceil(rows / block_q)), problem.nhead_k, problem.batch), (threads, 1, 1), 0


# ----------------------------------------------------------------------------- kernel arguments
def _row_major(shape) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    return strides


def _strides(shape, axes: str) -> dict:
    """Element strides of a row-major tensor by axis role: axes names each dimension, b(atch),
    h(ead), r(ow / token), p(age), d(im); roles absent from the tensor have stride 0."""
    by_role = dict(zip(axes, _row_major(shape)))
    return {role: by_role.get(role, 0) for role in "bhrp"}


def _tensor_strides(problem: Problem, inputs: Inputs) -> dict:
    p = problem
    Hq, Hk, Dq, Dv = p.nhead_q, p.nhead_k, p.hdim_q, p.hdim_v
    total_q, sq, sk = sum(p.seqlens_q()), max(p.seqlens_q()), max(p.seqlens_k())
    if p.mode == "group":
        q, o = _strides((total_q, Hq, Dq), "rhd"), _strides((total_q, Hq, Dv), "rhd")
        lse = _strides((Hq, total_q), "hr")
    else:
        q, o = _strides((p.batch, Hq, sq, Dq), "bhrd"), _strides((p.batch, Hq, sq, Dv), "bhrd")
        lse = _strides((p.batch, Hq, sq), "bhr")
    if p.is_paged:
        pages, P = inputs.tables.num_pages, p.page_size
        shape, axes = ((pages, Hk, P), "phr") if p.kv_layout == "hnd" else ((pages, P, Hk), "prh")
        k, v = _strides(shape + (Dq,), axes + "d"), _strides(shape + (Dv,), axes + "d")
    elif p.mode == "group":
        total_k = sum(p.seqlens_k())
        k, v = _strides((total_k, Hk, Dq), "rhd"), _strides((total_k, Hk, Dv), "rhd")
    else:
        k, v = _strides((p.batch, Hk, sk, Dq), "bhrd"), _strides((p.batch, Hk, sk, Dv), "bhrd")
    out = {}
    for name, s in (("q", q), ("o", o)):
        out.update({f"{name}_batch_stride": s["b"], f"{name}_head_stride": s["h"], f"{name}_row_stride": s["r"]})
    for name, s in (("k", k), ("v", v)):
        out.update({f"{name}_batch_stride": s["b"], f"{name}_head_stride": s["h"], f"{name}_row_stride": s["r"],
                    f"{name}_page_stride": s["p"]})
    out.update(lse_batch_stride=lse["b"], lse_head_stride=lse["h"])
    return out


def _pointer_names(problem: Problem) -> dict:
    """FmhaParams pointer field -> the Inputs-style buffer name this problem needs there."""
    p = problem
    names = {n: n for n in ("q", "k", "v", "o")}
    if p.lse:
        names["lse"] = "lse"
    if p.sink:
        names["sink_logits"] = "sink_logits"
    if p.mode == "group":
        names["seqstart_q"] = "seqstart_q"
        if not p.is_paged:
            names["seqstart_k"] = "seqstart_k"
    if p.is_paged:
        if p.page_table == "sglang":
            names.update({n: n for n in ("kv_indptr", "kv_page_indices", "kv_last_page_len")})
        else:
            names["seqlen_k"] = "seqlen_k"
            names["block_table"] = "block_tables_headwise" if p.page_table == "headwise" else "block_table"
    return names


def _int32(value: int) -> int:
    """Window bounds beyond any sequence length act alike; keep them inside int32."""
    return min(int(value), 2 ** 31 - 1)


def kernel_args(problem: Problem, inputs: Inputs, ptrs: dict) -> bytes:
    """The packed FmhaParams for `problem` with its device buffers `ptrs` (named like the Inputs
    fields, plus o and lse)."""
    p = problem
    names = _pointer_names(p)
    missing = sorted(buf for buf in names.values() if buf not in ptrs)
    if missing:
        raise ValueError(f"kernel_args: device pointers missing for {p.name()}: {', '.join(missing)}")
    values = {field: int(ptrs[buf]) for field, buf in names.items()}
    values.update(_tensor_strides(p, inputs))

    mask = p.mask_spec
    values.update(mask_align=kernel_params.MASK_ALIGN[mask.align], mask_left=_int32(mask.left),
                  mask_right=_int32(mask.right), mask_sink=_int32(mask.sink))
    if p.is_paged and p.page_table == "headwise" and p.swa_heads:
        words = [0] * kernel_params.SWA_HEAD_WORDS
        for h in p.swa_heads:
            words[h // 32] |= 1 << (h % 32)
        values.update(swa_heads=words, swa_left=_int32(p.swa_window - 1), swa_sink=_int32(p.swa_sink))
    if p.is_paged:
        tables = inputs.tables
        table = {"vllm": tables.block_table, "headwise": tables.block_tables_headwise}.get(p.page_table)
        values.update(page_size=p.page_size, page_table=kernel_params.PAGE_TABLE[p.page_table],
                      max_pages=0 if table is None else table.shape[1])

    values.update(batch=p.batch, nhead_q=p.nhead_q, nhead_k=p.nhead_k, max_seqlen_q=max(p.seqlens_q()),
                  max_seqlen_k=max(p.seqlens_k()), group_mode=int(p.mode == "group"),
                  has_lse=int(p.lse), has_sink=int(p.sink))
    qk_descale = inputs.q_descale * inputs.k_descale
    values.update(scale=p.softmax_scale, scale_log2=p.softmax_scale * qk_descale * math.log2(math.e),
                  soft_cap=p.soft_cap, q_descale=inputs.q_descale, k_descale=inputs.k_descale,
                  v_descale=inputs.v_descale)
    return kernel_params.pack(**values)
