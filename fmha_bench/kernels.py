"""Host side of this project's kernels: which instance runs a problem, how it is launched, and
the bytes of its one argument (`FmhaParams`, see kernel_params.py).

The portable forward kernel (kernel_src/fmha_fwd.hip) serves families fwd, paged and splitkv;
the tile sizes come from kernel_src/arch_specs.json. Layouts are those of fmha_bench/inputs.py.

Split-KV (num_splits != 1; SPEC 6) is two launches sharing one FmhaParams: the forward instance
with a grid num_splits times wider writes fp32 partials into a workspace
(`split_workspace_bytes`), then the combine instance (kernel_src/fmha_combine.hip) merges them
into O and LSE and adds the learned sink. num_splits 0 means `choose_num_splits` decides.

Append-KV (family appendkv; SPEC 7) is two launches sharing one FmhaParams too: the append
instance (kernel_src/fmha_append_kv.hip) rotates the new keys and the queries and writes the new
K/V into the paged cache, then the forward instance of `attention_problem(problem)` attends over
the updated cache, reading the rotated queries from a workspace (`append_workspace_bytes`).

Family mixed (SPEC 9) has no portable instance: kernels_mixed.py runs it on the tensor-core
kernel's persistent instances, whose split rows fmha_combine.hip's second entry merges
(`merge_items_spec`), or as separate launches of the instances chosen here and in dispatch.py.
"""
from __future__ import annotations

import math
from typing import Union

from . import archs, kernel_params
from .build.instance import KernelSpec
from .inputs import Inputs
from .problem import Problem, ProblemError

FWD_SOURCE, FWD_ENTRY = "fmha_fwd.hip", "fmha_fwd"
COMBINE_SOURCE, COMBINE_ENTRY = "fmha_combine.hip", "fmha_combine"
MERGE_ITEMS_ENTRY = "fmha_merge_items"   # the same source's merge of a persistent plan's partials (kernels_mixed)
APPEND_SOURCE, APPEND_ENTRY = "fmha_append_kv.hip", "fmha_append_kv"
FWD_FAMILIES = ("fwd", "paged", "splitkv", "mla")
KV_SOURCES = ("dense", "paged")
GRID_X_MAX = 2 ** 31 - 1  # CUDA's limit on gridDim.x
INT32_MAX = 2 ** 31 - 1
GRID_YZ_MAX = 65535  # CUDA's limit on gridDim.y / gridDim.z (HIP's is larger)
# The combine: 4 output rows of 32 lanes per block (a row's lanes read 128 consecutive bytes).
COMBINE_ROWS, COMBINE_THREADS = 4, 128
# choose_num_splits (num_splits 0): aim for this many blocks per SM, keep at least this many
# keys in each split (shorter splits do not pay for the partials' traffic), and at most
# this many splits.
TARGET_WAVES, MIN_KEYS_PER_SPLIT, MAX_AUTO_SPLITS = 2, 256, 64
# The append: one thread per 16-byte chunk (8 fp16/bf16 values) of a new token's Q, K or V row.
APPEND_THREADS, APPEND_CHUNK_ELEMENTS = 128, 8


def _fwd_spec(arch: str, dtype: str, hdim_q: int, hdim_v: int, kv_source: str, split_kv: bool,
              tile: dict) -> KernelSpec:
    dims = f"hd{hdim_q}" if hdim_q == hdim_v else f"hd{hdim_q}x{hdim_v}"
    label = f"fwd_{kv_source}_{dtype}_{dims}_q{tile['block_q']}k{tile['block_k']}t{tile['threads']}"
    label += "_splitkv" if split_kv else ""
    defines = (("FMHA_DTYPE", dtype), ("FMHA_HDIM_Q", str(hdim_q)), ("FMHA_HDIM_V", str(hdim_v)),
               ("FMHA_KV_SOURCE", kv_source), ("FMHA_SPLIT_KV", str(int(split_kv))),
               ("FMHA_BLOCK_Q", str(tile["block_q"])), ("FMHA_BLOCK_K", str(tile["block_k"])),
               ("FMHA_THREADS", str(tile["threads"])))
    return KernelSpec(source=FWD_SOURCE, entry=FWD_ENTRY, defines=defines, arch=arch, label=label)


def _combine_spec(arch: str, out_dtype: str, hdim_v: int, entry: str = COMBINE_ENTRY) -> KernelSpec:
    kind = "combine" if entry == COMBINE_ENTRY else "merge_items"
    label = f"{kind}_{out_dtype}_hd{hdim_v}_r{COMBINE_ROWS}t{COMBINE_THREADS}"
    defines = (("FMHA_OUT_DTYPE", out_dtype), ("FMHA_HDIM_V", str(hdim_v)), ("FMHA_ROWS", str(COMBINE_ROWS)),
               ("FMHA_THREADS", str(COMBINE_THREADS)))
    return KernelSpec(source=COMBINE_SOURCE, entry=entry, defines=defines, arch=arch, label=label)


def _append_spec(arch: str, dtype: str, hdim_q: int, hdim_v: int) -> KernelSpec:
    dims = f"hd{hdim_q}" if hdim_q == hdim_v else f"hd{hdim_q}x{hdim_v}"
    defines = (("FMHA_DTYPE", dtype), ("FMHA_HDIM_Q", str(hdim_q)), ("FMHA_HDIM_V", str(hdim_v)),
               ("FMHA_THREADS", str(APPEND_THREADS)))
    return KernelSpec(source=APPEND_SOURCE, entry=APPEND_ENTRY, defines=defines, arch=arch,
                      label=f"append_kv_{dtype}_{dims}_t{APPEND_THREADS}")


def attention_problem(problem: Problem) -> Problem:
    """The paged problem an appendkv problem's attention solves once its new tokens are in the
    cache: the same shapes, mask, page tables and lengths (seqlen_k counts the new tokens), no RoPE."""
    fields = {k: v for k, v in problem.fields().items() if k not in ("rotary_dim", "rotary_style")}
    return Problem(**{**fields, "family": "paged"})


def select_kernel(problem: Problem, arch: str) -> Union[KernelSpec, str]:
    """The forward instance that runs `problem` on `arch`, or the reason there is none. A problem
    that may split (num_splits != 1, auto included) gets the split-capable instance, which also
    runs one split; the others get the instance compiled without split logic. An appendkv
    problem gets the instance of its attention (`attention_problem`); `select_append` names the
    append launched before it."""
    try:
        problem.validate()
    except ProblemError as e:
        return f"invalid problem: {e}"
    if problem.family == "appendkv":
        chunks = max(problem.seqlens_q()) * _append_chunks_per_token(problem)
        if chunks > INT32_MAX:
            return f"appendkv: {chunks} 16-byte chunks of new tokens in one sequence exceed the append's 32-bit index"
        return select_kernel(attention_problem(problem), arch)
    spec = archs.get_arch(arch)
    if problem.family not in FWD_FAMILIES:
        return f"family {problem.family} has no kernel yet"
    if problem.dtype not in spec["dtypes"]:
        others = archs.archs_with_dtype(problem.dtype)
        return f"{problem.dtype} is not supported on {arch}" + (f" (needs {'/'.join(others)})" if others else "")
    tile = archs.tile_config(arch, problem.hdim_q, problem.hdim_v)
    if tile is None:
        shipped = ", ".join(spec["tiles"])
        return f"hdim {problem.hdim_q}/{problem.hdim_v} has no instance (instances: {shipped})"
    if problem.nhead_k > GRID_YZ_MAX or problem.batch > GRID_YZ_MAX:
        return f"nhead_k and batch must be <= {GRID_YZ_MAX} (one grid dimension each)"
    most_splits = problem.num_splits or MAX_AUTO_SPLITS
    if _row_tiles(problem, tile["block_q"]) * most_splits > GRID_X_MAX:
        return f"row tiles x num_splits ({most_splits}) must be <= {GRID_X_MAX} (grid x)"
    refusal = swa_heads_refusal(problem)
    if refusal:
        return refusal
    kv_source = "paged" if problem.is_paged else "dense"
    return _fwd_spec(arch, problem.dtype, problem.hdim_q, problem.hdim_v, kv_source, problem.num_splits != 1, tile)


def swa_heads_refusal(problem: Problem) -> str | None:
    """Why FmhaParams cannot carry the problem's sliding-window KV heads, or None."""
    swa_limit = 32 * kernel_params.SWA_HEAD_WORDS
    if problem.swa_heads and max(problem.swa_heads) >= swa_limit:
        return f"sliding-window KV heads must be < {swa_limit} (FmhaParams.swa_heads bitmask)"
    return None


def select_combine(problem: Problem, arch: str) -> KernelSpec | None:
    """The combine instance of `problem`'s split-KV pass: None when its keys are never split
    (num_splits 1) or no forward instance runs it. num_splits 0 (auto) may split, so it gets one."""
    if problem.num_splits == 1 or not isinstance(select_kernel(problem, arch), KernelSpec):
        return None
    return _combine_spec(arch, problem.out_dt.name, problem.hdim_v)


def merge_items_spec(problem: Problem, arch: str) -> KernelSpec:
    """The instance of fmha_combine.hip whose fmha_merge_items merges the partials of a persistent
    launch's split rows (family mixed, kernels_mixed.py)."""
    return _combine_spec(arch, problem.out_dt.name, problem.hdim_v, MERGE_ITEMS_ENTRY)


def select_append(problem: Problem, arch: str) -> KernelSpec | None:
    """The append instance of an appendkv problem: None for other families and when no forward
    instance attends over its cache."""
    if problem.family != "appendkv" or not isinstance(select_kernel(problem, arch), KernelSpec):
        return None
    return _append_spec(arch, problem.dtype, problem.hdim_q, problem.hdim_v)


def shipped_instances(arch: str) -> list[KernelSpec]:
    """Every forward instance the arch's specs allow: dtypes x tile configurations x K/V sources x
    (unsplit, split-capable)."""
    spec = archs.get_arch(arch)
    out = []
    for dtype in spec["dtypes"]:
        for dims, tile in spec["tiles"].items():
            hdim_q, hdim_v = (int(d) for d in dims.split("/"))
            out += [_fwd_spec(arch, dtype, hdim_q, hdim_v, kv, split, tile) for kv in KV_SOURCES
                    for split in (False, True)]
    return out


# ----------------------------------------------------------------------------- split count
def choose_num_splits(problem: Problem, num_sms: int, block_q: int) -> int:
    """Split count for num_splits 0 (auto) of a kernel whose unsplit grid has one block per
    `block_q` rows of each sequence's query heads sharing a KV head, per KV head
    (splits_to_fill)."""
    blocks = sum(-(-sq * problem.group_size // block_q) for sq in problem.seqlens_q()) * problem.nhead_k
    return splits_to_fill(problem, num_sms, blocks)


def splits_to_fill(problem: Problem, num_sms: int, blocks: int) -> int:
    """Split count for num_splits 0 (auto), from the shapes alone. `blocks` = the unsplit
    forward grid's useful blocks:
    - 1 when blocks >= num_sms (the grid already fills the GPU) or there is nothing to do;
    - else enough splits for ~TARGET_WAVES blocks per SM, ceil(TARGET_WAVES * num_sms / blocks),
      capped so that each split of the longest sequence keeps >= MIN_KEYS_PER_SPLIT keys, and
      at MAX_AUTO_SPLITS."""
    if blocks == 0 or blocks >= num_sms:
        return 1
    wanted = -(-TARGET_WAVES * num_sms // blocks)
    key_cap = max(problem.seqlens_k()) // MIN_KEYS_PER_SPLIT
    return max(1, min(wanted, key_cap, MAX_AUTO_SPLITS))


def append_workspace_bytes(problem: Problem) -> dict[str, int]:
    """Device bytes of appendkv's rotated queries, by kernel_args pointer name (Q's shape and dtype)."""
    return {"q_rotated": sum(problem.seqlens_q()) * problem.nhead_q * problem.hdim_q * problem.dt.itemsize}


def split_workspace_bytes(problem: Problem, num_splits: int) -> dict[str, int]:
    """Device bytes of the split-KV partials, by kernel_args pointer name: fp32 O and LSE of
    every split (`[num_splits, *O shape]`, `[num_splits, *LSE shape]`)."""
    o_elems, lse_elems = _output_elements(problem)
    return {"o_acc": num_splits * o_elems * 4, "lse_acc": num_splits * lse_elems * 4}


# ----------------------------------------------------------------------------- launch shapes
def _row_tiles(problem: Problem, block_q: int) -> int:
    return max(1, math.ceil(max(problem.seqlens_q()) * problem.group_size / block_q))


def _output_elements(problem: Problem) -> tuple[int, int]:
    """Elements of O and of LSE (the same count of query rows in both modes)."""
    rows = sum(problem.seqlens_q()) * problem.nhead_q
    return rows * problem.hdim_v, rows


def launch_config(spec: KernelSpec, problem: Problem, num_splits: int = 1) -> tuple[tuple, tuple, int]:
    """(grid, block, dynamic shared bytes) of the forward kernel. Block x = row tile * num_splits +
    split (a tile: BLOCK_Q rows of the query heads sharing a KV head), y = KV head, z = sequence;
    shared memory is static."""
    defines = dict(spec.defines)
    block_q, threads = int(defines["FMHA_BLOCK_Q"]), int(defines["FMHA_THREADS"])
    return (_row_tiles(problem, block_q) * num_splits, problem.nhead_k, problem.batch), (threads, 1, 1), 0


def _append_chunks_per_token(problem: Problem) -> int:
    """16-byte chunks of one new token: its Q rows (every query head), new K and new V rows."""
    p = problem
    return (p.nhead_q * p.hdim_q + p.nhead_k * (p.hdim_q + p.hdim_v)) // APPEND_CHUNK_ELEMENTS


def _append_blocks(problem: Problem) -> int:
    return max(1, math.ceil(max(problem.seqlens_q()) * _append_chunks_per_token(problem) / APPEND_THREADS))


def append_launch_config(spec: KernelSpec, problem: Problem) -> tuple[tuple, tuple, int]:
    """(grid, block, dynamic shared bytes) of the append: x = runs of FMHA_THREADS chunks of the
    longest sequence's new tokens, y = sequence; no shared memory."""
    return (_append_blocks(problem), problem.batch, 1), (int(dict(spec.defines)["FMHA_THREADS"]), 1, 1), 0


def combine_launch_config(spec: KernelSpec, problem: Problem) -> tuple[tuple, tuple, int]:
    """(grid, block, dynamic shared bytes) of the combine: FMHA_ROWS output rows per block."""
    defines = dict(spec.defines)
    rows_per_block, threads = int(defines["FMHA_ROWS"]), int(defines["FMHA_THREADS"])
    _, rows = _output_elements(problem)
    return (max(1, math.ceil(rows / rows_per_block)), 1, 1), (threads, 1, 1), 0


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
        k = _strides(shape + (Dq,), axes + "d")
        # MLA's V is the first hdim_v values of each latent (K) row: K's strides.
        v = k if p.family == "mla" else _strides(shape + (Dv,), axes + "d")
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
    if p.family == "appendkv":  # new K/V: Q's token layout with the KV heads
        for name, d in (("k_new", Dq), ("v_new", Dv)):
            s = _strides((total_q, Hk, d), "rhd") if p.mode == "group" else _strides((p.batch, Hk, sq, d), "bhrd")
            out.update({f"{name}_batch_stride": s["b"], f"{name}_head_stride": s["h"], f"{name}_row_stride": s["r"]})
    return out


def _pointer_names(problem: Problem) -> dict:
    """FmhaParams pointer field -> the Inputs-style buffer name this problem needs there."""
    p = problem
    names = {n: n for n in ("q", "k", "v", "o")}
    if p.family == "mla":  # V lives in the latent (K) cache
        names["v"] = "k"
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
    if p.family == "appendkv":  # attention reads the rotated queries the append writes
        names.update(q="q_rotated", q_unrotated="q", k_new="k_new", v_new="v_new", cache_len="cache_len")
        if p.rotary_dim:
            names.update(rope_cos="rope_cos", rope_sin="rope_sin")
    return names


def _int32(value: int) -> int:
    """Window bounds beyond any sequence length act alike; keep them inside int32."""
    return min(int(value), INT32_MAX)


def kernel_args(problem: Problem, inputs: Inputs, ptrs: dict, num_splits: int = 1) -> bytes:
    """The packed FmhaParams for `problem` with its device buffers `ptrs` (named like the Inputs
    fields, plus o and lse, with num_splits > 1 the workspaces o_acc and lse_acc, and for appendkv
    the workspace q_rotated)."""
    p = problem
    if num_splits < 1:
        raise ValueError(f"kernel_args: num_splits must be resolved to >= 1, got {num_splits}")
    names = _pointer_names(p)
    if num_splits > 1:
        names.update(o_acc="o_acc", lse_acc="lse_acc")
    missing = sorted(buf for buf in names.values() if buf not in ptrs)
    if missing:
        raise ValueError(f"kernel_args: device pointers missing for {p.name()}: {', '.join(missing)}")
    values = {field: int(ptrs[buf]) for field, buf in names.items()}
    values.update(_tensor_strides(p, inputs))
    o_elems, lse_elems = _output_elements(p)
    values.update(num_splits=num_splits, o_acc_split_stride=o_elems, lse_acc_split_stride=lse_elems)

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
    if p.family == "appendkv":
        values.update(rotary_dim=p.rotary_dim, rotary_style=kernel_params.ROTARY_STYLE[p.rotary_style])
    qk_descale = inputs.q_descale * inputs.k_descale
    values.update(scale=p.softmax_scale, scale_log2=p.softmax_scale * qk_descale * math.log2(math.e),
                  soft_cap=p.soft_cap, q_descale=inputs.q_descale, k_descale=inputs.k_descale,
                  v_descale=inputs.v_descale)
    return kernel_params.pack(**values)
