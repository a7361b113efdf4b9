"""Parity of the providers of one run, point by point.

A point's verdict:
- `mismatch`: a provider's output disagrees with the NumPy reference (status mismatch, which
  for a self-checking binary means it printed valid:n), or two providers' outputs disagree with
  each other beyond the sum of their tolerances (the rows' `cross` entries, runner._cross_check);
- `status`: providers that both support the point end differently: one ok, another failed,
  crashed or timed out (a provider that does not support a point is skipped, which is not a
  disagreement);
- `agree`: at least two providers ran it and none of the above;
- `single`: fewer than two providers ran it, so there was nothing to compare.
`mismatch` and `status` fail the parity run (exit code 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

FAILING = ("mismatch", "status")
BROKEN = ("failed", "crashed", "timeout")


@dataclass
class Verdict:
    point_id: str
    name: str
    verdict: str
    details: list = field(default_factory=list)
    max_cross_abs: float | None = None


def judge(rows) -> list[Verdict]:
    """One verdict per point, in the order the points first appear in `rows` (Result objects)."""
    by_point = {}
    for row in rows:
        by_point.setdefault(row.point_id, []).append(row)
    return [_judge_point(point_rows) for point_rows in by_point.values()]


def _judge_point(rows) -> Verdict:
    ran = [r for r in rows if r.status != "skipped"]
    verdict = Verdict(rows[0].point_id, rows[0].name, "agree")
    for r in ran:
        if r.status == "mismatch":
            verdict.details.append(f"{r.provider}: {r.reason}")
    seen = set()
    for r in ran:
        for other, entry in sorted(r.cross.items()):
            pair = tuple(sorted((r.provider, other)))
            if pair in seen:
                continue
            seen.add(pair)
            abs_diff = entry.get("max_abs")
            if abs_diff is not None:
                verdict.max_cross_abs = max(verdict.max_cross_abs or 0.0, abs_diff)
            if not entry.get("ok", False):
                verdict.details.append(f"{pair[0]} vs {pair[1]}: max abs {abs_diff:.3e}, "
                                       f"{entry.get('mismatch_frac', 0.0):.2%} of elements outside tolerance")
    if verdict.details:
        verdict.verdict = "mismatch"
        return verdict
    ok = [r.provider for r in ran if r.status == "ok"]
    broken = [r for r in ran if r.status in BROKEN]
    if ok and broken:
        verdict.verdict = "status"
        verdict.details = [f"{', '.join(ok)} ok; " + "; ".join(f"{r.provider} {r.status}: {r.reason}" for r in broken)]
    elif len(ran) < 2:
        verdict.verdict = "single"
    return verdict


def failing(verdicts) -> list[Verdict]:
    return [v for v in verdicts if v.verdict in FAILING]


VERDICT_STYLES = {"agree": "green", "single": "dim", "mismatch": "bold red", "status": "bold red"}


def build_parity_report(run, baseline_provider: str | None = None):
    """The parity table of a run (store.Run): the provider pivot (status, time, TFLOPS or TB/s,
    speedup vs the baseline provider per provider) plus each point's verdict, the largest
    difference between two providers' outputs and what disagreed. Returns (report.Report,
    the failing verdicts)."""
    from . import pivot, report
    from .schema import Result
    merged = pivot.merge_runs([run])
    verdicts = judge([Result.from_json(r) for r in merged.rows])
    table = pivot.build_pivot_report(merged, baseline_provider=baseline_provider)
    frame = table.frame.copy()   # one row per point, in first-appearance order like `verdicts`
    frame["verdict"] = [v.verdict for v in verdicts]
    frame["max_cross_abs"] = [v.max_cross_abs for v in verdicts]
    frame["details"] = ["; ".join(v.details) for v in verdicts]
    specs = list(table.specs) + [
        report.Column("verdict", lambda row: row.get("verdict"), numeric=False, styles=VERDICT_STYLES),
        replace(report.column("max_abs"), header="max |a-b|\nbetween providers",
                value=lambda row: row.get("max_cross_abs")),
        report.Column("what disagreed", lambda row: row.get("details"), numeric=False, wraps=True),
    ]
    counts = {}
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    notes = (*table.notes, "verdicts: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    return report.Report(frame, notes=notes, specs=specs), failing(verdicts)
