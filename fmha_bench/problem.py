"""`Problem`: every axis of one attention call (SPEC sections 1-9). No GPU imports.

A Problem is frozen and normalised on construction (aliases resolved, lists turned into
tuples, defaults derived), so two spellings of the same call have the same `key()`.
`validate()` raises `ProblemError` naming the offending field.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np

from . import dtypes
from .masks import BOTTOM_RIGHT, MAX_WINDOW, Mask, MaskError, merge_ranges, parse_mask

FAMILIES = {
    "fwd": "dense forward (batch or group/varlen mode)",
    "paged": "paged-KV prefill or decode (vllm, sglang or headwise page tables)",
    "splitkv": "forward with the keys split into num_splits partial passes plus an LSE combine",
    "appendkv": "append new K/V (RoPE-rotated) into a paged cache, then attend over it",
    "mla": "DeepSeek MLA decode over a latent paged cache (576 = 512 latent + 64 rope, one KV head)",
    "mixed": "prefill and decode requests in one persistent launch over a paged cache",
}
MODES = ("batch", "group")
PAGE_TABLES = {
    "vllm": "2-D block_table[B, max_pages] + seqlen_k[B], unused entries -1",
    "sglang": "1-D CSR kv_indptr[B+1], kv_page_indices, kv_last_page_lens[B]",
    "headwise": "per-KV-head tables [B*Hk, max_pages] with per-head local ids; -1 = recycled (SWA)",
}
KV_LAYOUTS = ("hnd", "nhd")
PAGE_ORDERS = {
    "table": "the fmha kernels visit a sequence's pages in table order",
    "address": "the pages every query row sees in full are visited in ascending page id (fmha_bench.page_order)",
}
ROTARY_STYLES = ("interleaved", "half")
PAGED_FAMILIES = ("paged", "appendkv", "mla", "mixed")

MAX_BATCH, MAX_SEQLEN, MAX_HEADS = 1 << 16, 1 << 22, 1024  # guards against typos, far above real serving shapes

SeqLens = Union[int, Tuple[int, ...]]


class ProblemError(ValueError):
    """An impossible problem. `field` names the axis to change."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


INT_FIELDS = ("batch", "nhead_q", "nhead_k", "hdim_q", "hdim_v", "page_size", "num_splits", "rotary_dim",
              "swa_window", "swa_sink")
STR_FIELDS = ("family", "mode", "dtype", "page_table", "kv_layout", "rotary_style", "page_order")


def _show(value) -> str:
    """A value for a one-line message: repr, cut short (a typo can be a huge number or a long list)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _int(name: str, value) -> int:
    if not _is_int(value):
        raise ProblemError(name, f"expected an integer, got {_show(value)}")
    return int(value)


def _ints(name: str, value) -> Tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ProblemError(name, f"expected a list of integers, got {_show(value)}")
    for item in value:
        if not _is_int(item):
            raise ProblemError(name, f"expected a list of integers, got {_show(item)} in {_show(value)}")
    return tuple(int(v) for v in value)


def _seqlens(name: str, value) -> SeqLens:
    if isinstance(value, (list, tuple)):
        return _ints(name, value)
    if not _is_int(value):
        raise ProblemError(name, f"expected an integer or (mode: group) a list of integers, got {_show(value)}")
    return int(value)


def _number(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ProblemError(name, f"expected a number, got {_show(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ProblemError(name, f"{_show(value)} is too large for a float") from None


def _flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ProblemError(name, f"expected true or false, got {_show(value)}")
    return bool(value)


def _text(name: str, value) -> str:
    if not isinstance(value, str):
        raise ProblemError(name, f"expected a string, got {_show(value)}")
    return value.lower()


def _mask(name: str, value) -> str:
    """A mask string (an integer 0 is the no-mask spelling YAML hands over) in canonical form."""
    if not isinstance(value, str) and not _is_int(value):
        raise ProblemError(name, f"expected a mask string, got {_show(value)}")
    try:
        return parse_mask(value).canonical()
    except MaskError as e:
        raise ProblemError(name, str(e)) from None


_NORMALISERS = {**{name: _int for name in INT_FIELDS}, **{name: _text for name in STR_FIELDS},
                "seqlen_q": _seqlens, "seqlen_k": _seqlens, "swa_heads": lambda name, v: tuple(sorted(_ints(name, v))),
                "mask": _mask, "scale": _number, "soft_cap": _number, "sink": _flag, "lse": _flag}
DERIVED_DEFAULTS = {"seqlen_k": "seqlen_q", "nhead_k": "nhead_q", "hdim_v": "hdim_q"}  # None: same as the other


def normalise_field(name: str, value):
    """One field's value type-checked and normalised as Problem stores it. Raises ProblemError
    naming the field; ranges and combinations are Problem.validate()'s job."""
    if value is None and (name in DERIVED_DEFAULTS or name == "scale"):
        return None
    return _NORMALISERS[name](name, value)


@dataclass(frozen=True)
class Problem:
    family: str = "fwd"
    mode: str = "batch"
    batch: int = 1
    seqlen_q: SeqLens = 128
    seqlen_k: Optional[SeqLens] = None          # None: same as seqlen_q
    nhead_q: int = 8
    nhead_k: Optional[int] = None               # None: nhead_q (MHA)
    hdim_q: int = 128
    hdim_v: Optional[int] = None                # None: hdim_q
    dtype: str = "fp16"
    mask: str = "0"
    scale: Optional[float] = None               # None: 1/sqrt(hdim_q)
    soft_cap: float = 0.0
    sink: bool = False                          # learned per-head sink logit
    lse: bool = False
    page_size: int = 0                          # 0: contiguous K/V
    page_table: str = "vllm"
    kv_layout: str = "hnd"
    swa_heads: Tuple[int, ...] = ()             # headwise: KV heads that use a sliding window
    swa_window: int = 0                         # W keys including self (FA left = W-1)
    swa_sink: int = 0                           # first tokens always kept by SWA heads
    num_splits: int = 1                         # 0: chosen by a heuristic
    rotary_dim: int = 0
    rotary_style: str = "interleaved"
    page_order: str = "table"                   # the fmha provider's page visit plan (PAGE_ORDERS)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for f in dataclasses.fields(self):
            set_(f.name, normalise_field(f.name, getattr(self, f.name)))
        for name, source in DERIVED_DEFAULTS.items():
            if getattr(self, name) is None:
                set_(name, getattr(self, source))

    # ------------------------------------------------------------------ derived values
    @property
    def mask_spec(self) -> Mask:
        return parse_mask(self.mask)

    @property
    def dt(self) -> dtypes.DType:
        return dtypes.get(self.dtype)

    @property
    def out_dt(self) -> dtypes.DType:
        return dtypes.output_dtype(self.dt)

    @property
    def softmax_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.hdim_q)

    @property
    def is_paged(self) -> bool:
        return self.page_size > 0

    @property
    def group_size(self) -> int:
        return self.nhead_q // self.nhead_k

    def seqlens_q(self) -> list[int]:
        return list(self.seqlen_q) if isinstance(self.seqlen_q, tuple) else [self.seqlen_q] * self.batch

    def seqlens_k(self) -> list[int]:
        return list(self.seqlen_k) if isinstance(self.seqlen_k, tuple) else [self.seqlen_k] * self.batch

    def cache_lens(self) -> list[int]:
        """appendkv: tokens already in the cache before the new ones (seqlen_k - seqlen_q)."""
        return [sk - sq for sq, sk in zip(self.seqlens_q(), self.seqlens_k())]

    def mask_for_kv_head(self, kv_head: int) -> Mask:
        """Headwise SWA heads see a bottom-right window of swa_window keys plus a sink prefix."""
        if self.page_table == "headwise" and kv_head in self.swa_heads:
            return Mask(BOTTOM_RIGHT, self.swa_window - 1, 0, self.swa_sink)
        return self.mask_spec

    def kv_head_masks(self) -> list[Mask]:
        return [self.mask_for_kv_head(h) for h in range(self.nhead_k)]

    def validate(self) -> "Problem":
        def need(cond, name, msg):
            if not cond:
                raise ProblemError(name, msg)

        need(self.family in FAMILIES, "family", f"unknown family {_show(self.family)}; one of {', '.join(FAMILIES)}")
        need(self.mode in MODES, "mode", f"unknown mode {_show(self.mode)}; one of {', '.join(MODES)}")
        need(1 <= self.batch <= MAX_BATCH, "batch", f"must be in 1..{MAX_BATCH}, got {_show(self.batch)}")
        need(self.dtype in dtypes.DTYPES, "dtype", f"unknown dtype {_show(self.dtype)}; one of {', '.join(dtypes.DTYPES)}")
        for name in ("seqlen_q", "seqlen_k"):
            value = getattr(self, name)
            need(max(value if isinstance(value, tuple) else (value,), default=0) <= MAX_SEQLEN, name,
                 f"lengths above {MAX_SEQLEN} are not supported")
            if isinstance(value, tuple):
                need(self.mode == "group", name, "per-sequence lists need mode: group")
                need(len(value) == self.batch, name, f"has {len(value)} entries for batch {_show(self.batch)}")
                need(all(v >= 0 for v in value), name, "lengths must be >= 0")
            elif self.mode == "group":
                need(value >= 0, name, f"must be >= 0, got {_show(value)}")
            else:
                need(value >= 1, name, f"must be >= 1 in batch mode, got {_show(value)} (use mode: group for empty sequences)")
        need(1 <= self.nhead_q <= MAX_HEADS, "nhead_q", f"must be in 1..{MAX_HEADS}, got {_show(self.nhead_q)}")
        need(self.nhead_k >= 1 and self.nhead_q % self.nhead_k == 0, "nhead_k",
             f"nhead_q ({_show(self.nhead_q)}) must be a multiple of nhead_k ({_show(self.nhead_k)})")
        need(1 <= self.hdim_q <= 1024, "hdim_q", f"must be in 1..1024, got {_show(self.hdim_q)}")
        need(1 <= self.hdim_v <= 1024, "hdim_v", f"must be in 1..1024, got {_show(self.hdim_v)}")
        need(self.scale is None or 0 < self.scale < math.inf, "scale", f"must be > 0 and finite, got {_show(self.scale)}")
        need(self.soft_cap >= 0 and math.isfinite(self.soft_cap), "soft_cap", f"must be >= 0, got {_show(self.soft_cap)}")
        need(self.num_splits >= 0, "num_splits", f"must be >= 0 (0 = auto), got {_show(self.num_splits)}")
        need(self.kv_layout in KV_LAYOUTS, "kv_layout", f"one of {', '.join(KV_LAYOUTS)}")
        need(self.page_table in PAGE_TABLES, "page_table", f"unknown page table {_show(self.page_table)}; one of {', '.join(PAGE_TABLES)}")
        need(0 <= self.page_size <= MAX_SEQLEN, "page_size", f"must be in 0..{MAX_SEQLEN}, got {_show(self.page_size)}")
        need(self.rotary_style in ROTARY_STYLES, "rotary_style", f"one of {', '.join(ROTARY_STYLES)}")
        need(self.page_order in PAGE_ORDERS, "page_order", f"one of {', '.join(PAGE_ORDERS)}")
        if self.page_order != "table":
            need(self.family in ("paged", "mla", "mixed"), "page_order",
                 f"address order is planned for families paged, mla and mixed, not {self.family}")
            need(self.page_table in ("vllm", "sglang"), "page_order",
                 "address order needs a vllm or sglang table (headwise tables are per KV head)")

        if self.family in PAGED_FAMILIES:
            need(self.page_size >= 1, "page_size", f"family {self.family} needs a paged cache (page_size >= 1)")
        if self.family == "fwd":
            need(self.page_size == 0, "page_size", "family fwd is dense; use family: paged for a paged cache")
        if self.family == "splitkv":
            need(self.num_splits != 1, "num_splits", "family splitkv needs num_splits 0 (auto) or >= 2")
        elif self.num_splits != 1:
            need(self.family in ("paged", "mla"), "num_splits", f"family {self.family} does not split the keys")
        if self.page_table == "headwise" and self.is_paged:
            need(all(0 <= h < self.nhead_k for h in self.swa_heads), "swa_heads", f"KV head ids must be in 0..{self.nhead_k - 1}")
            need(not self.swa_heads or self.swa_window >= 1, "swa_window", "SWA heads need swa_window >= 1")
            need(self.swa_window <= MAX_WINDOW, "swa_window", f"must be <= {MAX_WINDOW}, got {_show(self.swa_window)}")
            need(0 <= self.swa_sink <= MAX_WINDOW, "swa_sink", f"must be in 0..{MAX_WINDOW}, got {_show(self.swa_sink)}")
        else:
            need(not self.swa_heads, "swa_heads", "per-head sliding windows need page_table: headwise")
        if self.family == "appendkv":
            need(self.rotary_dim % 2 == 0 and 0 <= self.rotary_dim <= self.hdim_q, "rotary_dim",
                 f"must be even and <= hdim_q ({self.hdim_q}), got {_show(self.rotary_dim)}")
            need(all(sk >= sq for sq, sk in zip(self.seqlens_q(), self.seqlens_k())), "seqlen_k",
                 "appendkv: seqlen_k (cache after the append) must be >= seqlen_q (new tokens)")
        else:
            need(self.rotary_dim == 0, "rotary_dim", "RoPE is applied by family appendkv only")
        if self.family == "mla":
            need(self.nhead_k == 1, "nhead_k", "MLA has one latent KV head")
            need(self.hdim_v < self.hdim_q, "hdim_v", "MLA reads V as the first hdim_v values of each cache row (hdim_v < hdim_q)")
            need(self.kv_layout == "nhd", "kv_layout", "MLA's latent cache is [pages, page_size, hdim_q] (kv_layout nhd)")
        if self.family == "mixed":
            need(self.mode == "group", "mode", "a mixed batch is a list of requests (mode: group)")
        if self.dt.is_fp8:
            need(self.family not in ("appendkv",), "dtype", "appendkv writes rotated K/V; fp8 caches are not defined for it")
        return self

    # ------------------------------------------------------------------ cost model
    def _per_sequence_and_kv_head(self, count) -> np.ndarray:
        """count(mask, seqlen_q, seqlen_k) per [batch, kv_head], each distinct (lengths, mask) counted
        once: batch mode repeats one pair of lengths, and the KV heads share one or two masks."""
        lens, masks = list(zip(self.seqlens_q(), self.seqlens_k())), self.kv_head_masks()
        len_ids, mask_ids = _ids(lens), _ids(masks)
        table = np.array([[count(m, sq, sk) for m in mask_ids] for sq, sk in len_ids],
                         dtype=np.int64).reshape(len(len_ids), len(mask_ids))
        return table[np.ix_([len_ids[pair] for pair in lens], [mask_ids[m] for m in masks])]

    def _total(self, count) -> int:
        """The sum of _per_sequence_and_kv_head(count) as an exact Python int, without the
        [batch, kv_head] array (64k sequences x 1k heads of long sequences overflow int64)."""
        lens, masks = Counter(zip(self.seqlens_q(), self.seqlens_k())), Counter(self.kv_head_masks())
        return sum(count(m, sq, sk) * n_lens * n_masks
                   for (sq, sk), n_lens in lens.items() for m, n_masks in masks.items())

    def areas(self) -> np.ndarray:
        """Exact unmasked (row, key) pairs per [batch, kv_head] (each query head of the group counts it)."""
        return self._per_sequence_and_kv_head(Mask.area)

    def flops(self) -> int:
        """2 * A * (Dq + Dv) summed over sequences and query heads (SPEC section 3)."""
        return self._total(Mask.area) * self.group_size * 2 * (self.hdim_q + self.hdim_v)

    def keys_read(self) -> np.ndarray:
        """Keys each [batch, kv_head] must read at least once: the union of visible columns,
        rounded up to whole pages when the cache is paged."""
        return self._per_sequence_and_kv_head(functools.partial(_keys_touched, page_size=self.page_size))

    def bytes(self) -> int:
        """Minimal device-memory traffic: Q + K + V actually read + O (+ LSE) (+ appended K/V)."""
        in_b, out_b = self.dt.itemsize, self.out_dt.itemsize
        total_q = sum(self.seqlens_q())
        keys = self._total(functools.partial(_keys_touched, page_size=self.page_size))
        q = total_q * self.nhead_q * self.hdim_q * in_b
        if self.family == "mla":  # V is the first hdim_v columns of the same latent row
            kv = keys * self.hdim_q * in_b
        else:
            kv = keys * (self.hdim_q + self.hdim_v) * in_b
        o = total_q * self.nhead_q * self.hdim_v * out_b
        lse = total_q * self.nhead_q * 4 if self.lse else 0
        appended = 0
        if self.family == "appendkv":  # read new K/V once, write them into the cache once
            appended = 2 * total_q * self.nhead_k * (self.hdim_q + self.hdim_v) * in_b
        return q + kv + o + lse + appended

    # ------------------------------------------------------------------ identity
    def fields(self) -> dict:
        """The problem's axes minus those at their default (derived defaults included), so
        adding an axis later, or spelling a default out, keeps keys stable."""
        derived = {"seqlen_k": self.seqlen_q, "nhead_k": self.nhead_q, "hdim_v": self.hdim_q}
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == derived.get(f.name, f.default):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def all_fields(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    def key(self) -> str:
        """Stable id: a hash of the canonical, default-free field dict."""
        blob = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def name(self) -> str:
        """Short readable label for tables."""
        def lens(v):
            return str(v) if not isinstance(v, tuple) else "[" + ",".join(map(str, v[:4])) + (",..]" if len(v) > 4 else "]")
        parts = [self.family, f"b{self.batch}", f"h{self.nhead_q}/{self.nhead_k}",
                 f"s{lens(self.seqlen_q)}/{lens(self.seqlen_k)}"]
        parts.append(f"d{self.hdim_q}" if self.hdim_q == self.hdim_v else f"d{self.hdim_q}/{self.hdim_v}")
        parts.append(self.dtype)
        if self.mask != "0":
            parts.append(f"m:{self.mask}")
        if self.is_paged:
            parts.append(f"p{self.page_size}:{self.page_table}")
        if self.page_order != "table":
            parts.append(f"order:{self.page_order}")
        if self.swa_heads:
            parts.append(f"swa{len(self.swa_heads)}w{self.swa_window}s{self.swa_sink}")
        if self.num_splits != 1:
            parts.append(f"split{self.num_splits}")
        if self.soft_cap:
            parts.append(f"cap{self.soft_cap:g}")
        if self.sink:
            parts.append("sink")
        if self.lse:
            parts.append("lse")
        if self.rotary_dim:
            parts.append(f"rope{self.rotary_dim}{self.rotary_style[0]}")
        return " ".join(parts)

    def make_inputs(self, seed: int = 0):
        """Deterministic, non-zero inputs for this problem (see `fmha_bench.inputs`)."""
        from .inputs import make_inputs
        return make_inputs(self, seed)

    @classmethod
    def from_dict(cls, data: dict) -> "Problem":
        """A Problem from a mapping of field names (a sweep, a result row, JSON): unknown names,
        wrong types and malformed values raise ProblemError naming the field."""
        if not isinstance(data, dict):
            raise ProblemError("problem", f"expected a mapping of problem fields, got {_show(data)}")
        unknown = sorted((name for name in data if name not in PROBLEM_FIELDS), key=str)
        if unknown:
            name = unknown[0]
            label = name if isinstance(name, str) and name.isidentifier() else _show(name)
            raise ProblemError(label, f"unknown problem field; known fields: {', '.join(sorted(PROBLEM_FIELDS))}")
        return cls(**data)


PROBLEM_FIELDS = tuple(f.name for f in dataclasses.fields(Problem))


def _ids(values: list) -> dict:
    """Each distinct value -> its index, in order of first appearance."""
    return {value: index for index, value in enumerate(dict.fromkeys(values))}


def _keys_touched(mask: Mask, seqlen_q: int, seqlen_k: int, page_size: int) -> int:
    ranges = mask.touched_ranges(seqlen_q, seqlen_k)
    if page_size > 0:  # whole pages are read
        ranges = merge_ranges([(a // page_size * page_size, min(-(-b // page_size) * page_size, seqlen_k))
                               for a, b in ranges])
    return sum(b - a for a, b in ranges)
