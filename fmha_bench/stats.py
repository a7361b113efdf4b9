"""Timing statistics and the noise-aware verdict of one point against a baseline.

The verdict rule (documented in `compare`):

* NOT_COMPARABLE when either side did not run (status is not ok, or no median time), when the
  kernel source changed (`kernel_version` differs: a new kernel is not a regression of the old
  one, asv's rule), or when the two sides were timed differently (`l2_flush` differs).
* Otherwise `ratio = new median / base median` (above 1 = slower) and the tolerance is
  `tol = max(2 * sqrt(noise_new**2 + noise_base**2), NOISE_FLOOR)`, where noise is each side's
  relative interquartile range. SLOWER when `ratio > 1 + tol`, FASTER when `ratio < 1 / (1 + tol)`,
  SAME in between. The band is symmetric in log space, so swapping the runs swaps the verdict.
* MISSING when the point has no counterpart on the other side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

FASTER, SLOWER, SAME, NOT_COMPARABLE, MISSING = "FASTER", "SLOWER", "SAME", "NOT_COMPARABLE", "MISSING"
VERDICTS = (SLOWER, FASTER, SAME, NOT_COMPARABLE, MISSING)

NOISE_FLOOR = 0.02
"""Smallest relative change ever called a difference: clocks and thermals move medians this
much between runs even when the interquartile range of one run is tight."""


def summarize(times_s: list[float]) -> dict:
    """Median, min, quartiles and relative noise ((q3 - q1) / median) of timing samples."""
    if not times_s:
        raise ValueError("summarize needs at least one sample")
    samples = np.asarray(times_s, dtype=np.float64)
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {
        "time_s_median": float(median),
        "time_s_min": float(samples.min()),
        "time_s_q1": float(q1),
        "time_s_q3": float(q3),
        "samples": int(samples.size),
        "rel_noise": float((q3 - q1) / median) if median > 0 else None,
    }


@dataclass(frozen=True)
class Verdict:
    ratio: Optional[float]   # new median / base median; None when a side has no time
    verdict: str             # one of VERDICTS
    reason: str = ""         # why NOT_COMPARABLE / MISSING, or the tolerance that was applied


def tolerance(new_noise: Optional[float], base_noise: Optional[float]) -> float:
    """Relative change below which two medians are the SAME (an unknown noise counts as 0)."""
    combined = math.hypot(new_noise or 0.0, base_noise or 0.0)
    return max(2.0 * combined, NOISE_FLOOR)


def compare(new_row: Optional[dict], base_row: Optional[dict]) -> Verdict:
    """Verdict of one result row (a results.jsonl dict) against its baseline row."""
    if new_row is None or base_row is None:
        side = "baseline" if base_row is None else "new run"
        return Verdict(None, MISSING, f"point absent from the {side}")
    for side, row in (("new", new_row), ("baseline", base_row)):
        if row.get("status") != "ok":
            return Verdict(None, NOT_COMPARABLE, f"{side} status {row.get('status')}")
        if not row.get("time_s_median"):
            return Verdict(None, NOT_COMPARABLE, f"{side} has no time")
    ratio = new_row["time_s_median"] / base_row["time_s_median"]
    # The ratio stays visible for information, but it is never called a regression.
    if new_row.get("kernel_version") != base_row.get("kernel_version"):
        return Verdict(ratio, NOT_COMPARABLE, "kernel_version changed")
    if new_row.get("l2_flush") != base_row.get("l2_flush"):
        return Verdict(ratio, NOT_COMPARABLE, "l2_flush differs")
    tol = tolerance(new_row.get("rel_noise"), base_row.get("rel_noise"))
    if ratio > 1.0 + tol:
        verdict = SLOWER
    elif ratio < 1.0 / (1.0 + tol):
        verdict = FASTER
    else:
        verdict = SAME
    return Verdict(ratio, verdict, f"tolerance {tol:.1%}")
