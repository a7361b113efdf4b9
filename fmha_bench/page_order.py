"""`page_order: address`: the fmha provider's page visit plan for a paged cache.

A serving engine's page table (and the benchmark's, SPEC 4: shuffled ids) names a sequence's pages
in pool order, so at any moment the blocks of a decode launch read from all over the pool. The plan
hands the kernels a copy of the table in which the pages every query row sees in full are listed in
ascending page id: then every block walks the pool from low to high addresses, and the blocks
running together read from a narrow span of it. H100, session 16 (decode b64 x 8k, GQA 32:8,
fp16 and bf16, TB/s): page 1 2.93-2.94 -> 2.99-3.00, page 16 3.00 -> 3.03-3.04; cuDNN on the dense
equivalent 2.96-2.98. Ids sorted only into 2 MiB address buckets gave the same, 128 MiB buckets
half the gain: what the order buys is the span of the pool the running blocks touch at once
(address-translation reach, my reading), not DRAM row locality (NOTES.md session 16).

Why the output does not change: a page whose every token every query row sees enters the softmax
the same from any slot of the table (S depends on a key's position only through the mask), so
those pages may trade slots. Pages at the mask's edges keep theirs: the part-filled last page, the
diagonal of speculative (qo > 1) rows, a window's first keys, a sink prefix. Split-KV still splits
slot ranges (SPEC 6); a split's partial is over the pages its slots name after the reordering.

A serving engine builds the table once per step for all layers (its metadata / plan step), which
is where this sort belongs; the provider does it while preparing a point (outside the timed
region) and notes the host time it took.
"""
from __future__ import annotations

import numpy as np

from .inputs import PageTables, page_tables
from .masks import Mask
from .problem import Problem


def fully_visible_pages(mask: Mask, seqlen_q: int, seqlen_k: int, page_size: int) -> tuple[int, int]:
    """[first, end) of the logical pages whose every token each of the seqlen_q rows sees (empty:
    first == end). The sink prefix is left out: it is short and its edge is a mask edge too."""
    if seqlen_q == 0 or seqlen_k == 0:
        return 0, 0
    lo, hi, _ = mask.row_bounds(seqlen_q, seqlen_k)
    first_key, end_key = int(lo.max()), int(hi.min()) + 1   # the keys of every row's window
    first = -(-first_key // page_size)
    return first, max(first, end_key // page_size)


def address_ordered(problem: Problem, tables: PageTables) -> PageTables:
    """The problem's vllm / sglang tables with each sequence's fully visible pages in ascending id."""
    if problem.page_table not in ("vllm", "sglang"):
        raise ValueError(f"address order needs a vllm or sglang table, not {problem.page_table}")
    mask, pages = problem.mask_spec, []
    for ids, sq, sk in zip(tables.pages, problem.seqlens_q(), problem.seqlens_k()):
        first, end = fully_visible_pages(mask, sq, sk, problem.page_size)
        ordered = np.array(ids, dtype=np.int32)
        ordered[first:end].sort()
        pages.append(ordered.tolist())
    return page_tables(problem, pages, tables.num_pages)


def device_table(problem: Problem, tables: PageTables) -> tuple[str, np.ndarray]:
    """(FmhaParams pointer field, int32 array) of the table a kernel reads for this problem."""
    if problem.page_table == "sglang":
        return "kv_page_indices", tables.kv_page_indices
    return "block_table", tables.block_table
