"""Splitting a sweep's points: between the jobs of a cluster job array (`--shard I/N`) and between
the GPUs of one host (`--devices`), balanced by an estimate of what each point costs in wall time.

Cost model (`estimate_cost_s`, seconds; constants calibrated below). A point costs

    inputs      INPUT_S_PER_VALUE x input values (Q + K + V)                     make_inputs + upload
  + reference   REF_S_PER_KV_VALUE x K/V values the masks touch                  decode to fp32, once
              + REF_S_PER_PAIR_DIM x computed (row, key) pairs x (hdim_q + hdim_v)
                  full: the visible pairs of every query head; sampled: min(rows, Sq) rows per
                  (sequence, query head) x the keys its mask touches; validate off: no reference
  + per provider
                launches: (warmup + 2 validated) x t + sampling, sampling = min(max_samples x t,
                  max(min_samples x t, time_budget_s)) (the loop may stop earlier on its noise
                  bound; this is its upper bound)
                t = max(flops / peak, bytes / bandwidth) / GPU_EFFICIENCY + SAMPLE_OVERHEAD_S
              + 2 x (OUTPUT_S_PER_VALUE x output values      O downloaded and scanned for NaN,
                     + COMPARE_S_PER_VALUE x values checked)  compared, before and after timing
              + PROVIDER_OVERHEAD_S
  + cross-check COMPARE_S_PER_VALUE x output values x providers x (providers - 1) / 2
  + POINT_OVERHEAD_S;   a skipped point (no problem) costs SKIPPED_POINT_S.

Only the ranking of points and the sums per shard matter, so a factor of two either way is fine.
The CPU side (inputs, reference, compares) dominates everything but the largest GPU loops.

A shard's points must be the same on every machine of a job array: the partition uses one fixed
arch (SHARD_COST_ARCH, never the local GPU's), IEEE float arithmetic in a fixed order, and breaks
ties by point id, so it depends only on the point list, the shard count and this module's code.
"""
from __future__ import annotations

import dataclasses
import heapq
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

from . import archs
from .errors import UserError
from .point_runner import FULL_VALIDATION_LIMIT
from .timing import MeasureSettings

SHARD_COST_ARCH = "sm_90a"  # the partition's arch on every machine, whatever GPU a job lands on

# Calibration (NOTES.md measurements, 2-core dev box, OpenBLAS; session 3 re-measured on that box):
# - make_inputs: 5.2 ns/value at B=64 decode (1.08 G values, 5.6 s), 5.6-6.3 ns at 50-100 M fp16
#   values, 2.7-3.5 ns for bf16/fp8; the upload to the GPU is < 10% of that.
# - reference, 4k x 4k x 32 heads hdim 128: full non-causal 3 s = 137 G pair-dims x 2.2e-11;
#   causal 1.9 s (69 G pair-dims plus per-chunk masks); sampled 64 rows 0.14 s = 34 M K/V values x
#   4e-9 + 2.1 G pair-dims x 2.2e-11. Decode B=64 8k sampled 5 s: 1.08 G K/V values x 4e-9 (the
#   gather and decode of the paged cache dominate). 32k causal sampled 1.4 s: 0.27 G x 4e-9 + 17 G x 2.2e-11.
# - validate.compare: 0.5 s per 16 M values (float64 temporaries); NaN scan of O 1 ns/value.
# - whole runs on the H100 host (results/examples, build time excluded), measured (estimated): quick
#   8 s (4.5), varlen 15 (13), splitkv 17 (25), prefill 213 (163), parity 4 providers 100 (64),
#   perf_prefill 3 providers 530 (359; the cross-check dominates), perf_paged 7 providers 403 (348).
# - GPU: the mma kernel reaches 22% of the fp16 peak in prefill and 86% of HBM in decode.
INPUT_S_PER_VALUE = 5e-9
REF_S_PER_KV_VALUE = 4e-9
REF_S_PER_PAIR_DIM = 2.2e-11
COMPARE_S_PER_VALUE = 3e-8
OUTPUT_S_PER_VALUE = 2e-9
GPU_EFFICIENCY = 0.25
SAMPLE_OVERHEAD_S = 50e-6     # launch, events, the L2 flush memset
PROVIDER_OVERHEAD_S = 0.02    # prepare, poison, row bookkeeping
POINT_OVERHEAD_S = 0.02       # device buffers, the row written and fsync'd
SKIPPED_POINT_S = 1e-3        # a row written; non-zero so skipped points spread over shards too
VALIDATED_LAUNCHES = 2        # one before the timing loop, one after

_SHARD = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*\Z")


@dataclasses.dataclass(frozen=True)
class CostSettings:
    """The sweep settings a point's cost depends on (the sweep's `measure` and `validate`)."""
    measure: MeasureSettings = dataclasses.field(default_factory=MeasureSettings)
    validate: str = "sampled"      # full | sampled | auto | off
    rows_per_head: int = 64


def estimate_cost_s(problem, arch: str, providers: int = 1, settings: Optional[CostSettings] = None) -> float:
    """Estimated wall seconds of one point in a sweep (the formula in the module docstring)."""
    return _CostModel(arch, providers, settings or CostSettings()).seconds(problem)


class _CostModel:
    def __init__(self, arch: str, providers: int, settings: CostSettings):
        spec = archs.get_arch(arch)
        self.peaks = spec["peak_tflops"]
        self.bandwidth = spec["peak_tbps"] * 1e12
        self.providers, self.settings = providers, settings

    def seconds(self, problem) -> float:
        if problem is None:
            return SKIPPED_POINT_S
        p, s = problem, self.settings
        total_q, total_k = sum(p.seqlens_q()), sum(p.seqlens_k())
        dims = p.hdim_q + p.hdim_v
        inputs = INPUT_S_PER_VALUE * (total_q * p.nhead_q * p.hdim_q + total_k * p.nhead_k * dims)
        mode = s.validate
        if mode == "auto":  # the runner's rule
            mode = "full" if int(p.areas().sum()) * p.group_size <= FULL_VALIDATION_LIMIT else "sampled"
        outputs = total_q * p.nhead_q * p.hdim_v
        reference, checked = 0.0, 0
        if mode != "off":
            keys = p.keys_read()  # [batch, kv_head]
            if mode == "full":
                pairs = int(p.areas().sum()) * p.group_size
                checked = outputs
            else:
                rows = [min(s.rows_per_head, sq) for sq in p.seqlens_q()]
                pairs = sum(r * int(keys[b].sum()) for b, r in enumerate(rows)) * p.group_size
                checked = sum(rows) * p.nhead_q * p.hdim_v
            reference = REF_S_PER_KV_VALUE * int(keys.sum()) * dims + REF_S_PER_PAIR_DIM * pairs * dims
        provider = (self._launches_s(p) + PROVIDER_OVERHEAD_S
                    + VALIDATED_LAUNCHES * (OUTPUT_S_PER_VALUE * outputs + COMPARE_S_PER_VALUE * checked))
        cross_check = COMPARE_S_PER_VALUE * outputs * self.providers * (self.providers - 1) / 2
        return POINT_OVERHEAD_S + inputs + reference + self.providers * provider + cross_check

    def _launches_s(self, p) -> float:
        m = self.settings.measure
        # A dtype without a matrix-unit peak on this arch runs no faster than the slowest listed one.
        peak = self.peaks.get(p.dtype, min(self.peaks.values())) * 1e12
        t = max(p.flops() / peak, p.bytes() / self.bandwidth) / GPU_EFFICIENCY + SAMPLE_OVERHEAD_S
        sampling = min(m.max_samples * t, max(m.min_samples * t, m.time_budget_s))
        return (m.warmup + VALIDATED_LAUNCHES) * t + sampling


def point_costs(points: Sequence, arch: str, providers: int = 1,
                settings: Optional[CostSettings] = None) -> list[float]:
    """estimate_cost_s of each point (a sweep.Point; skipped ones have problem None)."""
    model = _CostModel(arch, providers, settings or CostSettings())
    return [model.seconds(point.problem) for point in points]


# ----------------------------------------------------------------------------- --shard I/N
def parse_shard(text: str) -> tuple[int, int]:
    """`--shard I/N` as (I, N): shard I (counting from 0) of N."""
    match = _SHARD.match(text or "")
    if not match:
        raise UserError(f"expected I/N, shard I of N counting from 0 (e.g. 0/4), got {text!r}", where="--shard")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise UserError(f"the number of shards must be >= 1, got {text!r}", where="--shard")
    if index >= count:
        raise UserError(f"shard {index} does not exist: {count} shard(s) are numbered 0..{count - 1}", where="--shard")
    return index, count


def partition(points: Sequence, count: int, arch: str = SHARD_COST_ARCH, providers: int = 1,
              settings: Optional[CostSettings] = None) -> list[int]:
    """The shard of each point (in the points' order). Longest processing time first: points by
    decreasing cost (ties: point id), each to the shard with the least cost so far (ties: the
    lowest shard index). No shard ends more than one point's cost above the mean."""
    costs = point_costs(points, arch, providers, settings)
    shards = [(0.0, index) for index in range(count)]  # a heap of (load, shard index)
    assignment = [0] * len(points)
    for position in sorted(range(len(points)), key=lambda i: (-costs[i], points[i].id)):
        load, index = heapq.heappop(shards)
        assignment[position] = index
        heapq.heappush(shards, (load + costs[position], index))
    return assignment


def shard_points(points: Sequence, index: int, count: int, arch: str = SHARD_COST_ARCH, providers: int = 1,
                 settings: Optional[CostSettings] = None) -> list:
    """Shard `index` of `count`: its points in the sweep's order (see `partition`)."""
    assignment = partition(points, count, arch, providers, settings)
    return [point for point, shard in zip(points, assignment) if shard == index]


def order_for_workers(points: Sequence, arch: str, providers: int = 1,
                      settings: Optional[CostSettings] = None) -> list:
    """The points longest first (ties: point id), for a queue that several GPU workers take
    from as they go idle: the run then ends on short points, not on one long straggler."""
    costs = point_costs(points, arch, providers, settings)
    order = sorted(range(len(points)), key=lambda i: (-costs[i], points[i].id))
    return [points[i] for i in order]


# ----------------------------------------------------------------------------- meta.json and report
def shard_meta(index: int, count: int, points_total: int, points_in_shard: int,
               sweep_sha256: Optional[str] = None) -> dict:
    """meta.json's "shard" entry: which share of which point list this run holds."""
    return {"index": index, "count": count, "points_total": points_total, "points_in_shard": points_in_shard,
            "sweep_sha256": sweep_sha256, "cost_arch": SHARD_COST_ARCH}


def shard_warnings(runs: Sequence) -> list[str]:
    """One-line warnings about the shard runs among `runs` (store.Run; runs without a "shard"
    entry in meta.json are ignored): shards of a sweep missing, repeated, interrupted or cut from
    different point lists, and shards of one sweep file from different versions of it."""
    shards = [(run, info) for run in runs if (info := _shard_info(run)) is not None]
    groups = defaultdict(list)  # (sweep sha256, shard count) -> [(run, info)]
    for run, info in shards:
        groups[(info["sweep_sha256"], info["count"])].append((run, info))
    warnings = []
    for (sha, count), members in groups.items():
        warnings += _group_warnings(_sweep_label(members[0][0], sha), count, members)
    by_name = defaultdict(dict)  # sweep file stem -> {sha256: shard counts}
    for run, info in shards:
        by_name[_sweep_name(run)].setdefault(info["sweep_sha256"], set()).add(info["count"])
    for name, versions in by_name.items():
        if len(versions) > 1:
            shown = ", ".join(_short(sha) for sha in versions)
            warnings.append(f"shards of sweep {name} come from {len(versions)} versions of the file "
                            f"(sha256 {shown}): their points may not fit together")
        for sha, counts in versions.items():
            if len(counts) > 1:
                splits = " and in ".join(map(str, sorted(counts)))
                warnings.append(f"sweep {name} ({_short(sha)}) was split in {splits} shards: the splits overlap")
    return warnings


def _group_warnings(label: str, count: int, members: list) -> list[str]:
    warnings = []
    by_index = defaultdict(list)
    for run, info in members:
        by_index[info["index"]].append(run)
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        warnings.append(f"{label}, {count} shards: shard(s) {', '.join(map(str, missing))} missing, "
                        "so their points are not in the table")
    for index, repeated in sorted(by_index.items()):
        if len(repeated) > 1:
            warnings.append(f"{label}: shard {index}/{count} comes from {len(repeated)} runs "
                            f"({', '.join(run.run_id for run in repeated)}); the later run's rows are kept")
    totals = sorted({info["points_total"] for _, info in members})
    if len(totals) > 1:
        warnings.append(f"{label}: the shards were cut from point lists of {' and '.join(map(str, totals))} points "
                        "(other --filter or --limit): points may be missing or repeated")
    owners = defaultdict(set)  # point id -> shard indices with rows for it
    for run, info in members:
        ids = {row.get("point_id") for row in run.rows}
        for point_id in ids:
            owners[point_id].add(info["index"])
        if len(ids) < info["points_in_shard"]:
            warnings.append(f"{label}: shard {info['index']}/{count} ({run.run_id}) has rows for {len(ids)} of its "
                            f"{info['points_in_shard']} points (interrupted? `fmha-bench sweep --resume {run.path}`)")
    shared = sum(1 for indices in owners.values() if len(indices) > 1)
    if shared:
        warnings.append(f"{label}: {shared} point(s) have rows in more than one shard: the shards were cut "
                        "differently (another fmha-bench version or other options)")
    return warnings


def _shard_info(run) -> Optional[dict]:
    """The run's "shard" entry with its fields checked, or None when it has none (or a broken one)."""
    info = run.meta.get("shard")
    if not isinstance(info, dict):
        return None
    numbers = [info.get(key) for key in ("index", "count", "points_total", "points_in_shard")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        return None
    return {**info, "sweep_sha256": info.get("sweep_sha256") or run.meta.get("sweep_sha256")}


def _sweep_name(run) -> str:
    return Path(run.meta.get("sweep_file") or "?").stem


def _sweep_label(run, sha: Optional[str]) -> str:
    return f"sweep {_sweep_name(run)} ({_short(sha)})"


def _short(sha: Optional[str]) -> str:
    return sha[:12] if sha else "no sha256"
