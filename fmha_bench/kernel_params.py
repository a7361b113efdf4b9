"""`FmhaParams`, the one argument of every forward kernel: declared once, here.

The field list below generates both the C header the kernels include
(`kernel_src/fmha_params.h`, committed; regenerate with `python -m fmha_bench.kernel_params`)
and the ctypes structure the host packs, so the two layouts cannot drift apart. Fields are
plain C scalars (no stdint.h: NVRTC and hiprtc do not ship it) in natural alignment.
New kernel families append fields; the kernels read them by name.
"""
from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from pathlib import Path

HEADER_NAME = "fmha_params.h"

# C spelling and ctypes type of each field kind. Device pointers travel as 64-bit integers.
KINDS = {
    "ptr": ("unsigned long long", ctypes.c_uint64),
    "i64": ("long long", ctypes.c_int64),
    "i32": ("int", ctypes.c_int32),
    "u32": ("unsigned int", ctypes.c_uint32),
    "f32": ("float", ctypes.c_float),
}

# Enumerations the kernels switch on at run time (rendered as #defines).
MASK_ALIGN = {"none": 0, "top_left": 1, "bottom_right": 2}
PAGE_TABLE = {"vllm": 0, "sglang": 1, "headwise": 2}
ROTARY_STYLE = {"interleaved": 0, "half": 1}
SWA_HEAD_WORDS = 4  # bitmask words of headwise sliding-window KV heads: KV heads 0..127


@dataclass(frozen=True)
class Field:
    name: str
    kind: str
    doc: str
    count: int = 1  # > 1: a fixed-size array


FIELDS: tuple[Field, ...] = (
    # --- device pointers (0 when unused)
    Field("q", "ptr", "Q: [B,Hq,Sq,Dq] (batch mode) or [total_q,Hq,Dq] (group mode)"),
    Field("k", "ptr", "dense K [B,Hk,Sk,Dq] / [total_k,Hk,Dq], or the paged K cache"),
    Field("v", "ptr", "dense V [B,Hk,Sk,Dv] / [total_k,Hk,Dv], or the paged V cache"),
    Field("o", "ptr", "O: [B,Hq,Sq,Dv] or [total_q,Hq,Dv], output dtype"),
    Field("lse", "ptr", "fp32 LSE (natural log): [B,Hq,Sq] or [Hq,total_q]"),
    Field("seqstart_q", "ptr", "int32 [B+1] query offsets (group mode)"),
    Field("seqstart_k", "ptr", "int32 [B+1] key offsets (dense group mode)"),
    Field("seqlen_k", "ptr", "int32 [B] keys per sequence (paged vllm and headwise tables)"),
    Field("block_table", "ptr", "int32 vllm [B,max_pages] or headwise [B*Hk,max_pages] page ids"),
    Field("kv_indptr", "ptr", "int32 [B+1] sglang CSR offsets into kv_page_indices"),
    Field("kv_page_indices", "ptr", "int32 sglang page ids"),
    Field("kv_last_page_len", "ptr", "int32 [B] sglang tokens in each sequence's last page"),
    Field("sink_logits", "ptr", "fp32 [Hq] learned sink logit per query head"),
    # --- element strides (paged caches: batch stride 0, page stride used)
    Field("q_batch_stride", "i64", "Q elements between sequences (0 in group mode)"),
    Field("q_head_stride", "i64", "Q elements between heads"),
    Field("q_row_stride", "i64", "Q elements between tokens"),
    Field("k_batch_stride", "i64", "K elements between sequences (0 in group mode and paged)"),
    Field("k_head_stride", "i64", "K elements between KV heads"),
    Field("k_row_stride", "i64", "K elements between tokens (of one page when paged)"),
    Field("k_page_stride", "i64", "K cache elements between pages (0 when dense)"),
    Field("v_batch_stride", "i64", "V elements between sequences"),
    Field("v_head_stride", "i64", "V elements between KV heads"),
    Field("v_row_stride", "i64", "V elements between tokens"),
    Field("v_page_stride", "i64", "V cache elements between pages"),
    Field("o_batch_stride", "i64", "O elements between sequences"),
    Field("o_head_stride", "i64", "O elements between heads"),
    Field("o_row_stride", "i64", "O elements between tokens"),
    Field("lse_batch_stride", "i64", "LSE elements between sequences (0 in group mode)"),
    Field("lse_head_stride", "i64", "LSE elements between heads (rows are contiguous)"),
    # --- sizes and switches
    Field("batch", "i32", "sequences"),
    Field("nhead_q", "i32", "query heads"),
    Field("nhead_k", "i32", "KV heads (divides nhead_q)"),
    Field("max_seqlen_q", "i32", "the longest query sequence (batch mode: every sequence's length)"),
    Field("max_seqlen_k", "i32", "the longest key sequence (dense batch mode: every sequence's length)"),
    Field("group_mode", "i32", "1: lengths from seqstart_q (and seqstart_k when dense)"),
    Field("page_size", "i32", "tokens per page (paged)"),
    Field("max_pages", "i32", "columns of block_table (vllm, headwise)"),
    Field("page_table", "i32", "FMHA_PAGE_TABLE_*"),
    Field("mask_align", "i32", "FMHA_MASK_*: none, top-left or bottom-right aligned window"),
    Field("mask_left", "i32", "keys left of the diagonal; < 0 unlimited"),
    Field("mask_right", "i32", "keys right of the diagonal; < 0 unlimited"),
    Field("mask_sink", "i32", "first columns visible to every row reaching them (StreamingLLM)"),
    Field("swa_left", "i32", "headwise sliding-window heads: bottom-right window, left = W - 1, right 0"),
    Field("swa_sink", "i32", "headwise sliding-window heads: sink prefix"),
    Field("has_lse", "i32", "1: write LSE"),
    Field("has_sink", "i32", "1: sink_logits join the softmax denominator"),
    Field("swa_heads", "u32", "bit h set: KV head h uses the sliding window (headwise)", SWA_HEAD_WORDS),
    # --- scalars
    Field("scale", "f32", "softmax scale applied to Q.K"),
    Field("scale_log2", "f32", "scale * q_descale * k_descale * log2(e) (no soft cap)"),
    Field("soft_cap", "f32", "c > 0: S = c * tanh(S / c); 0 = off"),
    Field("q_descale", "f32", "fp8 per-tensor dequantisation factor of Q (1 otherwise)"),
    Field("k_descale", "f32", "fp8 per-tensor dequantisation factor of K (1 otherwise)"),
    Field("v_descale", "f32", "fp8 per-tensor dequantisation factor of V (1 otherwise)"),
    # --- split-KV (SPEC 6): fmha_fwd writes per-split fp32 partials, fmha_combine merges them
    Field("o_acc", "ptr", "fp32 partial O [num_splits, *O shape]; a split is addressed with O's strides"),
    Field("lse_acc", "ptr", "fp32 partial LSE [num_splits, *LSE shape] (natural log, sink left out)"),
    Field("o_acc_split_stride", "i64", "o_acc elements between splits"),
    Field("lse_acc_split_stride", "i64", "lse_acc elements between splits"),
    Field("num_splits", "i32", "1: fmha_fwd writes O/LSE; > 1: block x = row tile * num_splits + split"),
    # --- append-KV (SPEC 7): fmha_append_kv writes the rotated new tokens into the paged cache and
    # the rotated queries into q, then the forward kernel attends with the same FmhaParams
    Field("q_unrotated", "ptr", "appendkv: Q before RoPE (Q's layout and strides); q holds it rotated"),
    Field("k_new", "ptr", "appendkv: new K [B,Hk,S_new,Dq] / [total_new,Hk,Dq], S_new = seqlen_q"),
    Field("v_new", "ptr", "appendkv: new V [B,Hk,S_new,Dv] / [total_new,Hk,Dv]"),
    Field("cache_len", "ptr", "appendkv: int32 [B] tokens in the cache before the append"),
    Field("rope_cos", "ptr", "appendkv: fp32 [positions, rotary_dim/2] (0 when rotary_dim is 0)"),
    Field("rope_sin", "ptr", "appendkv: fp32 [positions, rotary_dim/2]"),
    Field("k_new_batch_stride", "i64", "k_new elements between sequences (0 in group mode)"),
    Field("k_new_head_stride", "i64", "k_new elements between KV heads"),
    Field("k_new_row_stride", "i64", "k_new elements between tokens"),
    Field("v_new_batch_stride", "i64", "v_new elements between sequences (0 in group mode)"),
    Field("v_new_head_stride", "i64", "v_new elements between KV heads"),
    Field("v_new_row_stride", "i64", "v_new elements between tokens"),
    Field("rotary_dim", "i32", "appendkv: leading dims of Q and K rotated (even, <= Dq; 0 = none)"),
    Field("rotary_style", "i32", "FMHA_ROTARY_*: pairs (2k, 2k+1) or (k, k + rotary_dim/2)"),
)


def _ctypes_fields():
    out = []
    for f in FIELDS:
        ctype = KINDS[f.kind][1]
        out.append((f.name, ctype * f.count if f.count > 1 else ctype))
    return out


class FmhaParams(ctypes.Structure):
    """Host image of the C struct (same field order, natural alignment)."""
    _fields_ = _ctypes_fields()


def pack(**values) -> bytes:
    """The struct's bytes. Fields not given are 0; an unknown name is a bug (ValueError)."""
    known = {f.name: f for f in FIELDS}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown FmhaParams field(s): {', '.join(unknown)}")
    params = FmhaParams()
    for name, value in values.items():
        if known[name].count > 1:
            getattr(params, name)[:] = list(value)
        else:
            setattr(params, name, value)
    return bytes(params)


def unpack(blob: bytes) -> dict:
    """Field values of packed bytes (arrays as lists)."""
    params = FmhaParams.from_buffer_copy(blob)
    return {f.name: (list(getattr(params, f.name)) if f.count > 1 else getattr(params, f.name))
            for f in FIELDS}


def render_header() -> str:
    lines = [
        "/* Generated by fmha_bench/kernel_params.py: do not edit.",
        "   Regenerate with `python -m fmha_bench.kernel_params`. */",
        "#ifndef FMHA_PARAMS_H",
        "#define FMHA_PARAMS_H",
        "",
    ]
    for prefix, enum in (("FMHA_MASK_", MASK_ALIGN), ("FMHA_PAGE_TABLE_", PAGE_TABLE),
                         ("FMHA_ROTARY_", ROTARY_STYLE)):
        lines += [f"#define {prefix}{name.upper()} {value}" for name, value in enum.items()]
    lines += [f"#define FMHA_SWA_HEAD_WORDS {SWA_HEAD_WORDS}", "", "typedef struct FmhaParams {"]
    for f in FIELDS:
        decl = f"{KINDS[f.kind][0]} {f.name}" + (f"[{f.count}]" if f.count > 1 else "") + ";"
        lines.append(f"    {decl:<36} /* {f.doc} */")
    lines += ["} FmhaParams;", "", "#endif /* FMHA_PARAMS_H */", ""]
    return "\n".join(lines)


def repo_header_path() -> Path:
    return Path(__file__).resolve().parents[1] / "kernel_src" / HEADER_NAME


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else repo_header_path()
    target.write_text(render_header())
    print(f"wrote {target}")
