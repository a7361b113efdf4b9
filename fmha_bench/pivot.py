"""Providers side by side: one row per point, one group of columns per provider.

`pivot_by_provider` returns a DataFrame with these column ids (numbers in display units, as in
report.py; a cell is empty where the provider has no row for the point):

    point_id, name        the point (Problem.key(), Problem.name())
    bound                 "memory" or "compute": the roof that limits the point (report's `bound`)
    <field>               each Problem field whose value differs between the points (the swept
                          axes), or the fields asked for; lists as JSON text
    <provider>:<metric>   per provider, each of `metrics` (report column ids); by default status,
                          median_ms, tflops, tbps and max_abs (the row's val_max_abs)
    <provider>:speedup    every provider but the baseline: baseline median time / provider median
                          time (> 1: faster than the baseline); empty unless both rows are ok

Provider names may hold ':' (torch-sdpa:cudnn): split a column id at its last ':'. The
baseline's columns come first. `build_pivot_report` picks what `fmha-bench report --pivot` shows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence, Union

import pandas as pd

from . import report
from .errors import UserError
from .problem import PROBLEM_FIELDS
from .store import Run, csv_value

METRICS = ("status", "median_ms", "tflops", "tbps", "max_abs")
SPEEDUP = "speedup"
POINT_COLUMNS = ("point_id", "name", "bound")
# Report columns that describe a comparison of runs or a point, not one provider's row.
_NOT_METRICS = set(POINT_COLUMNS) | set(report.BASELINE_COLUMNS)


def provider_column(provider: str, metric: str) -> str:
    return f"{provider}:{metric}"


@dataclass
class Merged:
    """The rows of several runs (shards, or a run per provider) ready to pivot."""
    rows: list         # one per (point, provider), each with its run_id
    providers: list    # providers with rows: the runs' meta "providers" in order, then the others
    notes: tuple = ()  # one-line warnings


def merge_runs(runs: Sequence[Run]) -> Merged:
    """One row per (point, provider): a pair met again in a later run (later on the command
    line) replaces the earlier row, with one warning for all such pairs."""
    latest = {}
    for run in runs:
        for row in run.rows:
            latest[(row.get("point_id"), row.get("provider"))] = {**row, "run_id": run.run_id}
    replaced = sum(len(run.rows) for run in runs) - len(latest)
    notes = (f"{replaced} (point, provider) row(s) appear more than once; the later run's row is kept",) \
        if replaced else ()
    rows = list(latest.values())
    listed = [p for run in runs for p in run.meta.get("providers") or []]
    return Merged(rows, ordered_providers(rows, listed), notes)


def ordered_providers(rows: Iterable[dict], listed: Sequence[str] = ()) -> list[str]:
    """Providers that have rows: those in `listed` first in its order, then the rest as they appear."""
    present = dict.fromkeys(row.get("provider") for row in rows)
    return [p for p in dict.fromkeys(listed) if p in present] + [p for p in present if p not in listed]


def choose_baseline(providers: Sequence[str], requested: Optional[str] = None) -> Optional[str]:
    """`requested`, else fmha when it has rows, else the first of `providers` (None without any)."""
    if requested is not None:
        if requested not in providers:
            raise UserError(f"provider {requested!r} has no rows; providers with rows: "
                            f"{', '.join(providers) or 'none'}", where="--baseline-provider")
        return requested
    return "fmha" if "fmha" in providers else next(iter(providers), None)


def _baseline_first(providers: Sequence[str], base: Optional[str]) -> list[str]:
    return sorted(providers, key=lambda p: p != base)  # sorted is stable: the others keep their order


def speedup(base_row: Optional[dict], row: Optional[dict]) -> Optional[float]:
    """Baseline median / provider median when both rows ran ok; None otherwise."""
    def timed(r):
        return r is not None and r.get("status") == "ok" and bool(r.get("time_s_median"))
    return base_row["time_s_median"] / row["time_s_median"] if timed(base_row) and timed(row) else None


def swept_fields(problems: Sequence[dict]) -> list[str]:
    """Problem fields whose value differs between `problems` (field dicts), in Problem's order."""
    return [f for f in PROBLEM_FIELDS if len({csv_value(p.get(f)) for p in problems}) > 1]


def _records(rows) -> list[dict]:
    """Row dicts from results.jsonl dicts, or from a frame of rows (store.rows_frame: problem
    fields in `problem.<name>` columns, NaN where a value is missing)."""
    if not isinstance(rows, pd.DataFrame):
        return list(rows)
    records = []
    for flat in rows.to_dict("records"):
        row = {"problem": {}}
        for key, value in flat.items():
            value = None if isinstance(value, float) and math.isnan(value) else value
            if key.startswith("problem."):
                row["problem"][key[len("problem."):]] = value
            else:
                row[key] = value
        records.append(row)
    return records


def pivot_by_provider(rows: Union[Iterable[dict], pd.DataFrame], baseline_provider: Optional[str] = None,
                      providers: Optional[Sequence[str]] = None, metrics: Sequence[str] = METRICS,
                      fields: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """One row per point_id (in order of first appearance), columns as in the module docstring.

    rows: results.jsonl dicts (or a store.rows_frame); when a (point, provider) pair comes twice
          the later row wins (use `merge_runs` to merge runs with a warning).
    baseline_provider: the speedups' reference; None: fmha when it has rows, else the first
          provider. UserError (naming --baseline-provider) when it has no rows.
    providers: preferred column order (e.g. meta "providers"); others follow as they appear.
    metrics: report column ids to give per provider; fields: Problem fields to give per point
          (None: the swept ones).
    """
    rows = _records(rows)
    present = ordered_providers(rows, providers or ())
    base = choose_baseline(present, baseline_provider)
    order = _baseline_first(present, base)
    specs = {metric: report.column(metric) for metric in metrics}
    points: dict = {}
    for row in rows:
        points.setdefault(row.get("point_id"), {})[row.get("provider")] = row
    problems = [next(iter(by.values())).get("problem") or {} for by in points.values()]
    fields = swept_fields(problems) if fields is None else list(fields)
    bound = report.column("bound").value

    records = []
    for by_provider, problem in zip(points.values(), problems):
        first = next(iter(by_provider.values()))
        record = {"point_id": first.get("point_id"), "name": first.get("name"),
                  "bound": next((b for b in map(bound, by_provider.values()) if b), None)}
        record.update({f: csv_value(problem.get(f)) for f in fields})
        for provider in order:
            row = by_provider.get(provider)
            for metric, spec in specs.items():
                record[provider_column(provider, metric)] = None if row is None else spec.value(row)
            if provider != base:
                record[provider_column(provider, SPEEDUP)] = speedup(by_provider.get(base), row)
        records.append(record)
    columns = [*POINT_COLUMNS, *fields] + [provider_column(p, m) for p in order
                                           for m in (*metrics, *([SPEEDUP] if p != base else []))]
    return pd.DataFrame(records, columns=columns)


def _parse_request(requested: str) -> tuple[list, list]:
    """--columns in pivot mode: point columns (point_id, name, bound, Problem fields) and
    per-provider metrics (report column ids and `speedup`), each kept in the order given."""
    point, metrics = [], []
    for column_id in (c.strip() for c in requested.split(",")):
        if not column_id:
            continue
        if column_id in POINT_COLUMNS or column_id in PROBLEM_FIELDS:
            point.append(column_id)
        elif column_id == SPEEDUP or (column_id in report.COLUMNS and column_id not in _NOT_METRICS):
            metrics.append(column_id)
        else:
            known = [c for c in report.COLUMNS if c not in _NOT_METRICS] + [SPEEDUP]
            raise UserError(f"unknown column {column_id!r} for --pivot; per point: "
                            f"{', '.join(POINT_COLUMNS)} and the problem fields; per provider: "
                            f"{', '.join(known)}", where="--columns")
    if not point and not metrics:
        raise UserError("name at least one column", where="--columns")
    return point, metrics


def _default_columns(frame: pd.DataFrame, order: list, base: Optional[str]) -> list[str]:
    """name and the swept fields (less those equal to an earlier one at every point, e.g.
    seqlen_k = seqlen_q), then per provider: status (when any point is not ok), median time,
    TFLOPS for compute-bound and TB/s for memory-bound points, speedup."""
    memory = frame["bound"] == "memory"
    shown = ["name"]
    for field in (c for c in frame.columns if c in PROBLEM_FIELDS):
        if not any(frame[field].equals(frame[other]) for other in shown[1:]):
            shown.append(field)
    for provider in order:
        wanted = {"status": (frame[provider_column(provider, "status")] != "ok").any(), "median_ms": True,
                  "tflops": (~memory).any(), "tbps": memory.any(), SPEEDUP: provider != base}
        shown += [provider_column(provider, metric) for metric, show in wanted.items() if show]
    return shown


def column_spec(column_id: str, base: Optional[str]) -> report.Column:
    """Heading and format of a pivot column id (`<provider>:<metric>` or a point column)."""
    if ":" not in column_id:
        return report.column(column_id)
    provider, metric = column_id.rsplit(":", 1)
    spec = report.SPEEDUP if metric == SPEEDUP else report.column(metric)
    header = f"speedup vs {base}" if metric == SPEEDUP else spec.header
    return replace(spec, header=f"{provider}\n{header}")


def build_pivot_report(merged: Merged, requested: Optional[str] = None,
                       baseline_provider: Optional[str] = None) -> report.Report:
    """The table of `fmha-bench report --pivot`: the default columns, or those `requested`
    (comma-separated point columns and per-provider metrics, see `_parse_request`)."""
    base = choose_baseline(merged.providers, baseline_provider)
    order = _baseline_first(merged.providers, base)
    if requested is None:
        frame = pivot_by_provider(merged.rows, base, merged.providers)
        shown = _default_columns(frame, order, base)
    else:
        point, metrics = _parse_request(requested)
        fields = [c for c in point if c in PROBLEM_FIELDS]
        frame = pivot_by_provider(merged.rows, base, merged.providers,
                                  [m for m in metrics if m != SPEEDUP], fields)
        shown = point + [c for p in order for c in (provider_column(p, m) for m in metrics) if c in frame.columns]
    return report.Report(frame[shown], specs=[column_spec(c, base) for c in shown])
