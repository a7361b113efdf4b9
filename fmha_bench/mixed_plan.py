"""The work plan of the persistent launch for a mixed prefill + decode batch (family mixed,
SPEC 9; FlashInfer's "holistic" scheduling idea), computed on the host, run from a device buffer.

Items. The rows of request b and KV head h are its query positions times the G = Hq/Hk query
heads sharing h, packed as the kernels pack them (row m: position m // G, head h*G + m % G). They
are cut into row tiles of at most `block_q` rows: a decode-like request (few positions) is one
tile of its few rows, a prefill request many full tiles. A row tile visits the key tiles
(`block_k` keys) that the kernel's KeyTiles visits for its first and last positions (the sink
prefix tiles, then the window tiles). Keys are cut into chunks of `chunk_keys` on the absolute key
axis; a row tile gets one item per chunk that holds a visited key tile, or one item without keys
when it sees nothing (it still writes O = 0 and its LSE).

Cost. cost(item) = 2 * block_q + keys, SPEC 9's `2 * tile_q + chunk_len`, with keys = the item's
visited key tiles x block_k, in units of one key row of K and V. Every visited key tile costs the
kernel the same whatever the item's rows (one K/V tile load and one BLOCK_Q-row mma step), and
every item pays its BLOCK_Q-row tile once: the Q tile, the pipeline fill before its first K/V tile
(not overlapped with math), the epilogue; a split row tile pays it once per chunk, with its
partials and their merge.

Chunk length. Candidates: the longest visited key range (no split), then halving multiples of
block_k down to MIN_CHUNK_KEYS (shorter chunks do not pay for their partials' traffic). Each is
assigned as below; a shorter chunk replaces the best so far only when it lowers the maximum block
cost by more than MIN_SPLIT_GAIN (the cost model is an estimate, and more partials are more
memory traffic for sure).

Assignment. Items by decreasing cost (ties: creation order) to the block with the least cost so
far (a min-heap; ties: the lower block index): longest processing time first, whose maximum is
within 4/3 of the best possible. Each block runs its items in that order. Deterministic. Without
splits (prefill points: many row tiles) the order is longest first only within windows of
consecutive (request, KV head)s whose K and V fit L2_WINDOW_BYTES: the blocks running at one time
then read a few heads' K/V, which L2 holds, as a grid launch's blocks do. Sorted by cost over the
whole batch, a causal prefill's concurrent items read as many heads' K/V as there are blocks (H100,
fp16 hdim 128 causal 2k: 316 TFLOPS vs 418 for the grid launch, session 10).

Splits. A row tile with more than one item writes one fp32 partial per item (O normalised, LSE
without the sink) into consecutive slots of block_q rows, and gets one merge task, which combines
them with the LSE rule of SPEC 6 and adds the sink once (fmha_combine.hip, fmha_merge_items).
"""
from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass

import numpy as np

from .problem import Problem

MIN_CHUNK_KEYS = 256
MIN_SPLIT_GAIN = 0.02
L2_WINDOW_BYTES = 24 << 20   # about half of an H100's 50 MB L2 (the K/V of the heads in flight)
PLAN_HEADER_WORDS = 4  # num_blocks, num_items, num_merges, slot_rows (kernel_src/fmha_work_plan.h)
ITEM_FIELDS = ("seq", "kv_head", "row_begin", "row_end", "key_begin", "key_end", "slot")
MERGE_FIELDS = ("seq", "kv_head", "row_begin", "row_end", "slot_begin", "slot_count")


@dataclass(frozen=True)
class WorkItem:
    seq: int
    kv_head: int
    row_begin: int
    row_end: int
    key_begin: int
    key_end: int
    slot: int    # -1: the item writes the final O/LSE of its rows
    cost: int


@dataclass(frozen=True)
class MergeTask:
    seq: int
    kv_head: int
    row_begin: int
    row_end: int
    slot_begin: int
    slot_count: int


@dataclass(frozen=True)
class RowTile:
    """Rows [row_begin, row_end) of (seq, kv_head) and the key tiles they visit: [0, sink_tiles)
    then [window_begin, window_end) (in block_k units; the window may be empty)."""
    seq: int
    kv_head: int
    row_begin: int
    row_end: int
    sink_tiles: int
    window_begin: int
    window_end: int

    def tiles_in(self, first: int, end: int) -> int:
        """Visited key tiles in the tile range [first, end)."""
        return max(0, min(end, self.sink_tiles) - first) + \
            max(0, min(end, self.window_end) - max(first, self.window_begin))

    def extent(self) -> int:
        """One past the last visited key tile."""
        return max(self.sink_tiles, self.window_end)


@dataclass(frozen=True)
class MixedPlan:
    num_blocks: int
    block_q: int                 # rows per partial slot (the kernel's BLOCK_Q)
    chunk_keys: int
    blocks: tuple                # blocks[x]: the WorkItems block x runs, in order
    merges: tuple                # MergeTasks, one per split row tile

    def items(self) -> list:
        return [item for block in self.blocks for item in block]

    def slots(self) -> int:
        return sum(task.slot_count for task in self.merges)

    def block_costs(self) -> list:
        return [sum(item.cost for item in block) for block in self.blocks]

    def words(self) -> np.ndarray:
        """The int32 device image (kernel_src/fmha_work_plan.h)."""
        counts = [len(block) for block in self.blocks]
        header = [self.num_blocks, sum(counts), len(self.merges), self.block_q]
        begin = np.concatenate([[0], np.cumsum(counts)]) if counts else [0]
        items = [getattr(item, f) for item in self.items() for f in ITEM_FIELDS]
        merges = [getattr(task, f) for task in self.merges for f in MERGE_FIELDS]
        return np.array([*header, *begin, *items, *merges], dtype=np.int32)

    def summary(self) -> str:
        """One line for a result row's notes: how the work was spread."""
        counts = [len(block) for block in self.blocks]
        costs = self.block_costs()
        mean = sum(costs) / self.num_blocks
        imbalance = max(costs) / mean if mean else 1.0
        return (f"persistent plan: {self.num_blocks} blocks, items per block {min(counts)}/"
                f"{sum(counts) / self.num_blocks:.2f}/{max(counts)} (min/mean/max), imbalance {imbalance:.3f} "
                f"(max block cost / mean), chunk {self.chunk_keys} keys, {len(self.merges)} row tiles split "
                f"into {self.slots()} partials merged")


def _visited_tiles(mask, sq: int, sk: int, group: int, block_q: int, block_k: int) -> tuple:
    """The row tiles of one (request, KV head), as arrays: row begins and ends, and the key tiles
    each visits (sink tiles, window begin and end, in block_k units)."""
    begins = np.arange(0, sq * group, block_q)
    ends = np.minimum(begins + block_q, sq * group)
    lo, _, _ = mask.row_bounds(sq, sk, begins // group)
    _, hi, sink_end = mask.row_bounds(sq, sk, (ends - 1) // group)
    sink_tiles = -(-sink_end // block_k)
    window_begin = np.maximum(lo // block_k, sink_tiles)
    window_end = np.where(hi >= lo, np.maximum(hi // block_k + 1, window_begin), window_begin)
    return begins, ends, sink_tiles, window_begin, window_end


def row_tiles(problem: Problem, block_q: int, block_k: int) -> list:
    """Every (request, KV head) row tile of a group-mode problem with the key tiles it visits."""
    out = []
    for seq, (sq, sk) in enumerate(zip(problem.seqlens_q(), problem.seqlens_k())):
        for kv_head in range(problem.nhead_k):
            visited = _visited_tiles(problem.mask_for_kv_head(kv_head), sq, sk, problem.group_size, block_q, block_k)
            out += [RowTile(seq, kv_head, *map(int, tile)) for tile in zip(*visited)]
    return out


def visited_key_tiles(problem: Problem, block_q: int, block_k: int) -> tuple[int, int]:
    """(key tiles visited summed over every row tile, row tiles) of a kernel with these tiles."""
    per_sequence = {}   # batch mode repeats one (lengths, mask) per request and KV head
    masks = [problem.mask_for_kv_head(kv_head) for kv_head in range(problem.nhead_k)]
    visited = row_tile_count = 0
    for sq, sk in zip(problem.seqlens_q(), problem.seqlens_k()):
        for mask in masks:
            key = (sq, sk, mask)
            if key not in per_sequence:
                begins, _, sink, begin, end = _visited_tiles(mask, sq, sk, problem.group_size, block_q, block_k)
                per_sequence[key] = (int((sink + end - begin).sum()), len(begins))
            visited += per_sequence[key][0]
            row_tile_count += per_sequence[key][1]
    return visited, row_tile_count


def computed_area(problem: Problem, block_q: int, block_k: int) -> int:
    """Query-row x key products a kernel with these tiles computes, padding and masked parts of
    its visited tiles included (the dispatcher's measure of a tile's waste)."""
    return visited_key_tiles(problem, block_q, block_k)[0] * block_q * block_k


def _items(tiles: list, chunk_tiles: int, block_q: int, block_k: int) -> list:
    """[(row tile index, WorkItem without a slot)]: each tile's chunks in key order."""
    out, item_cost = [], 2 * block_q
    for index, tile in enumerate(tiles):
        visited = [(c, tile.tiles_in(c * chunk_tiles, (c + 1) * chunk_tiles))
                   for c in range(-(-tile.extent() // chunk_tiles))]
        visited = [(c, n) for c, n in visited if n]
        if not visited:  # the rows see no key: one item still writes their O and LSE
            out.append((index, WorkItem(tile.seq, tile.kv_head, tile.row_begin, tile.row_end, 0, 0, -1, item_cost)))
        for c, n in visited:
            keys = (c * chunk_tiles * block_k, (c + 1) * chunk_tiles * block_k)
            out.append((index, WorkItem(tile.seq, tile.kv_head, tile.row_begin, tile.row_end, *keys, -1,
                                        item_cost + n * block_k)))
    return out


def _assign(costs: list, num_blocks: int, order: list) -> tuple:
    """(item indices per block in run order, each block's load): the items in `order`, each to
    the least loaded block (a min-heap on (load, block))."""
    heap = [(0, block) for block in range(num_blocks)]
    blocks = [[] for _ in range(num_blocks)]
    for i in order:
        load, block = heapq.heappop(heap)
        blocks[block].append(i)
        heapq.heappush(heap, (load + costs[i], block))
    loads = [0] * num_blocks
    for load, block in heap:
        loads[block] = load
    return blocks, loads


def _l2_windows(problem: Problem, items: list) -> list:
    """Per item (in creation order: by request, then KV head): its window, a run of consecutive
    (request, KV head)s whose K and V together fit L2_WINDOW_BYTES (at least one each)."""
    row_bytes = (problem.hdim_q + problem.hdim_v) * problem.dt.itemsize
    lengths = problem.seqlens_k()
    out, window, filled, last = [], 0, 0, None
    for item in items:
        head = (item.seq, item.kv_head)
        if head != last:
            size = lengths[item.seq] * row_bytes
            if last is not None and filled + size > L2_WINDOW_BYTES:
                window, filled = window + 1, 0
            filled, last = filled + size, head
        out.append(window)
    return out


def _chunk_candidates(tiles: list, block_k: int) -> list:
    """Chunk lengths in key tiles: the longest visited range (no split), then powers of two below
    it down to MIN_CHUNK_KEYS."""
    longest = max((tile.extent() for tile in tiles), default=1) or 1
    out = [longest]
    chunk = 1 << ((longest - 1).bit_length() - 1) if longest > 1 else 0  # the largest power of two < longest
    while chunk and chunk * block_k >= MIN_CHUNK_KEYS:
        out.append(chunk)
        chunk //= 2
    return out


def make_plan(problem: Problem, block_q: int, block_k: int, num_blocks: int,
              chunk_keys: int | None = None, split: bool = True) -> MixedPlan:
    """The plan of a valid problem for `num_blocks` persistent blocks of a kernel with `block_q` x
    `block_k` tiles; `chunk_keys` (a multiple of block_k) forces the chunk length; `split` False
    keeps every row tile whole whatever `chunk_keys` says (no partials: batch-mode problems, whose
    rows the merge kernel does not address)."""
    if num_blocks < 1:
        raise ValueError(f"make_plan: num_blocks must be >= 1, got {num_blocks}")
    if chunk_keys is not None and (chunk_keys < block_k or chunk_keys % block_k):
        raise ValueError(f"make_plan: chunk_keys must be a positive multiple of block_k ({block_k}), got {chunk_keys}")
    tiles = row_tiles(problem, block_q, block_k)
    best = None
    chunks = [chunk_keys // block_k] if chunk_keys and split else _chunk_candidates(tiles, block_k)
    for chunk in chunks if split else chunks[:1]:
        items = _items(tiles, chunk, block_q, block_k)
        costs = [item.cost for _, item in items]
        window = [0] * len(items) if split else _l2_windows(problem, [item for _, item in items])
        blocks, loads = _assign(costs, num_blocks, sorted(range(len(items)), key=lambda i: (window[i], -costs[i])))
        if best is None or max(loads) < best[0] * (1 - MIN_SPLIT_GAIN):
            best = (max(loads), chunk, items, blocks)
    _, chunk, items, blocks = best
    slots, merges = _slots(items)
    ordered = tuple(tuple(dataclasses.replace(items[i][1], slot=slots.get(i, -1)) for i in block) for block in blocks)
    return MixedPlan(num_blocks, block_q, chunk * block_k, ordered, tuple(merges))


def _slots(items: list) -> tuple:
    """({item index: partial slot}, merge tasks): the items of each split row tile write
    consecutive slots, one merge task per such tile."""
    per_tile = {}
    for i, (tile, _) in enumerate(items):
        per_tile.setdefault(tile, []).append(i)
    slots, merges = {}, []
    for indices in per_tile.values():
        if len(indices) < 2:
            continue
        first = items[indices[0]][1]
        slot_begin = len(slots)
        merges.append(MergeTask(first.seq, first.kv_head, first.row_begin, first.row_end, slot_begin, len(indices)))
        slots.update((i, slot_begin + k) for k, i in enumerate(indices))
    return slots, merges
