"""The provider capability matrix of `fmha-bench list providers`: for each provider, which
families, dtypes, masks and KV layouts it runs on a device, and the reason where it does not.

Each cell asks the provider's own `supports()` about one small representative problem that
differs from a plain fp16 causal GQA prefill in that one axis only, so the answer is the
provider's, not a table kept beside it.
"""
from __future__ import annotations

from .problem import Problem

BASE = dict(batch=1, seqlen_q=128, seqlen_k=256, nhead_q=8, nhead_k=2, hdim_q=128, mask="b")
PROBES = {  # axis -> {value: fields over BASE}
    "family": {"fwd": {}, "paged": {"family": "paged", "page_size": 16},
               "splitkv": {"family": "splitkv", "num_splits": 4},
               "appendkv": {"family": "appendkv", "page_size": 16, "rotary_dim": 64},
               "mla": {"family": "mla", "hdim_q": 576, "hdim_v": 512, "nhead_k": 1, "page_size": 64,
                       "seqlen_q": 1, "kv_layout": "nhd"},
               "mixed": {"family": "mixed", "page_size": 16, "mode": "group", "batch": 2, "seqlen_q": [1, 128],
                         "seqlen_k": [300, 256]}},
    "dtype": {name: {"dtype": name} for name in ("fp16", "bf16", "fp8_e4m3fn", "fp8_e4m3fnuz")},
    "mask": {"none": {"mask": "0"}, "causal": {}, "causal top-left": {"mask": "t"},
             "window": {"mask": "b:64,0"}, "sink prefix": {"mask": "b:63,0,4"}},
    "layout": {"dense": {}, "varlen": {"mode": "group", "batch": 2, "seqlen_q": [100, 128], "seqlen_k": [200, 256]},
               **{f"paged {t}": {"family": "paged", "page_size": 16, "page_table": t}
                  for t in ("vllm", "sglang", "headwise")},
               "paged nhd": {"family": "paged", "page_size": 16, "kv_layout": "nhd"}},
}


def capability_matrix(providers, device) -> list[tuple[str, str, str, str | None]]:
    """(provider, axis, value, None or the reason it is not supported) for every probe."""
    cells = []
    for provider in providers:
        unavailable = provider.available()
        for axis, values in PROBES.items():
            for value, fields in values.items():
                reason = unavailable or provider.supports(Problem(**{**BASE, **fields}), device)
                cells.append((provider.name, axis, value, reason))
    return cells
