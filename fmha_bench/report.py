"""Tables of one or more runs, optionally compared with a baseline run.

One DataFrame feeds every output: its columns are column ids with units in their names
(`median_ms`, `noise_pct`) holding raw numbers in display units; the terminal and Markdown
format them, the CSV keeps full precision. Rows stay SI in the run store; only here do seconds
become milliseconds and fractions percents.
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import stats
from .errors import UserError
from .problem import PROBLEM_FIELDS
from .store import Run, csv_value, load_run


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value) -> str:
    return "" if _missing(value) else str(value)


def _significant(value) -> str:
    """4 significant digits without an exponent: 0.01234, 1.234, 1234."""
    if _missing(value):
        return ""
    if value == 0:
        return "0"
    decimals = max(0, 3 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _fixed(decimals: int) -> Callable:
    return lambda value: "" if _missing(value) else f"{value:.{decimals}f}"


def _integer(value) -> str:
    return "" if _missing(value) else str(int(value))


def _general(value) -> str:
    return "" if _missing(value) else f"{value:.3g}"


def _scientific(value) -> str:
    return "" if _missing(value) else f"{value:.2e}"


def _field(key: str, factor: float = 1.0) -> Callable[[dict], Optional[float]]:
    def get(row: dict):
        value = row.get(key)
        return None if value is None else value * factor
    return get


def _pct_of_roofline(row: dict) -> Optional[float]:
    """The roofline's time bound is max(flops / peak_flops, bytes / peak_bw), so the fraction of
    it achieved is the larger of the two percentages."""
    parts = [row.get("pct_peak_flops"), row.get("pct_peak_bw")]
    parts = [p for p in parts if p is not None]
    return max(parts) if parts else None


def _bound(row: dict) -> Optional[str]:
    """Which roof limits the point on the row's device: "memory" when moving its bytes at peak
    bandwidth takes longer than its FLOPs at peak compute (so TB/s is the number to read)."""
    flops, bw = row.get("pct_peak_flops"), row.get("pct_peak_bw")
    if flops is None or bw is None:
        return None
    return "memory" if bw > flops else "compute"


@dataclass(frozen=True)
class Column:
    header: str                              # terminal and Markdown heading
    value: Callable[[dict], object]          # row -> value in display units
    fmt: Callable[[object], str] = _text
    numeric: bool = True                     # right-aligned
    styles: Optional[dict] = None            # cell text -> rich style
    wraps: bool = False                      # may wrap on a narrow terminal (long prose)


STATUS_STYLES = {"ok": "green", "skipped": "yellow", "mismatch": "bold red", "failed": "red",
                 "crashed": "bold magenta", "timeout": "magenta"}
VERDICT_STYLES = {stats.SLOWER: "bold red", stats.FASTER: "green", stats.NOT_COMPARABLE: "yellow",
                  stats.MISSING: "dim"}


def _text_column(header: str, key: str, styles: Optional[dict] = None, wraps: bool = False) -> Column:
    return Column(header, lambda row: row.get(key), numeric=False, styles=styles, wraps=wraps)


COLUMNS = {
    "run_id": _text_column("run", "run_id"),
    "name": _text_column("name", "name", wraps=True),
    "provider": _text_column("provider", "provider"),
    "status": _text_column("status", "status", STATUS_STYLES),
    "reason": _text_column("reason", "reason", wraps=True),
    "median_ms": Column("median ms", _field("time_s_median", 1e3), _significant),
    "min_ms": Column("min ms", _field("time_s_min", 1e3), _significant),
    "samples": Column("samples", _field("samples"), _integer),
    "noise_pct": Column("noise %", _field("rel_noise", 100.0), _fixed(1)),
    "tflops": Column("TFLOPS", _field("tflops"), _fixed(1)),
    "tbps": Column("TB/s", _field("tbps"), _fixed(2)),
    "pct_peak": Column("% peak", _pct_of_roofline, _fixed(1)),
    "pct_peak_flops": Column("% peak FLOPS", _field("pct_peak_flops"), _fixed(1)),
    "pct_peak_bw": Column("% peak BW", _field("pct_peak_bw"), _fixed(1)),
    "bound": Column("bound", _bound, numeric=False),
    "max_abs": Column("max_abs err", _field("val_max_abs"), _scientific),
    "max_rel": Column("max_rel err", _field("val_max_rel"), _scientific),
    "lse_max_abs": Column("LSE max_abs", _field("val_lse_max_abs"), _scientific),
    "mismatch_pct": Column("mismatch %", _field("val_mismatch_frac", 100.0), _general),
    "atol": Column("atol", _field("val_atol"), _general),
    "rtol": Column("rtol", _field("val_rtol"), _general),
    "kernel": _text_column("kernel", "kernel"),
    "kernel_version": _text_column("kernel version", "kernel_version"),
    "point_id": _text_column("point", "point_id"),
    "device": _text_column("device", "device"),
    "arch": _text_column("arch", "arch"),
    # filled in by the baseline comparison
    "base_ms": Column("base ms", _field("base_time_s", 1e3), _significant),
    "ratio": Column("ratio", _field("ratio"), _fixed(3)),
    "verdict": _text_column("verdict", "verdict", VERDICT_STYLES),
    "verdict_reason": _text_column("why", "verdict_reason", wraps=True),
}
DEFAULT_COLUMNS = ("name", "provider", "status", "reason", "median_ms", "noise_pct", "tflops", "tbps",
                   "pct_peak", "max_abs", "mismatch_pct")
BASELINE_COLUMNS = ("base_ms", "ratio", "verdict", "verdict_reason")
SPEEDUP = Column("speedup", _field("speedup"), _fixed(2))  # provider pivots (pivot.py): base time / time


def _problem_column(name: str) -> Column:
    return Column(name, lambda row: csv_value((row.get("problem") or {}).get(name)), numeric=False)


def column(column_id: str) -> Column:
    """The column `column_id`: one of COLUMNS or a Problem field (e.g. seqlen_q)."""
    if column_id in COLUMNS:
        return COLUMNS[column_id]
    if column_id in PROBLEM_FIELDS:
        return _problem_column(column_id)
    raise UserError(f"unknown column {column_id!r}; known: {', '.join(COLUMNS)} "
                    f"and the problem fields {', '.join(PROBLEM_FIELDS)}", where="--columns")


def choose_columns(requested: Optional[str], several_runs: bool, with_baseline: bool) -> list[str]:
    """`requested` (comma-separated ids) replaces the defaults; the run id (several runs) and the
    comparison columns (a baseline) are added unless named."""
    chosen = [c.strip() for c in requested.split(",") if c.strip()] if requested else list(DEFAULT_COLUMNS)
    if not chosen:
        raise UserError("name at least one column", where="--columns")
    for column_id in chosen:
        column(column_id)
    if several_runs and "run_id" not in chosen:
        chosen.insert(0, "run_id")
    if with_baseline:
        chosen += [c for c in BASELINE_COLUMNS if c not in chosen]
    return chosen


@dataclass
class Report:
    frame: pd.DataFrame       # one row per (run, point, provider); columns are column ids
    slower: int = 0           # points SLOWER than the baseline
    notes: tuple = ()         # one-line remarks for under the table
    specs: Optional[list] = None  # Column per frame column; None: `column(id)` of each


def _compare_rows(rows: list, baseline: Run) -> tuple[list, int, list]:
    """Attach base time, ratio and verdict to each row; regressions first, worst first."""
    base = {(row.get("point_id"), row.get("provider")): row for row in baseline.rows}
    seen = set()
    compared = []
    for row in rows:
        key = (row.get("point_id"), row.get("provider"))
        seen.add(key)
        base_row = base.get(key)
        verdict = stats.compare(row, base_row)
        compared.append({**row, "base_time_s": (base_row or {}).get("time_s_median"), "ratio": verdict.ratio,
                         "verdict": verdict.verdict, "verdict_reason": verdict.reason})
    compared.sort(key=lambda r: (0, -r["ratio"]) if r["verdict"] == stats.SLOWER else (1, 0))
    slower = sum(r["verdict"] == stats.SLOWER for r in compared)
    gone = len(set(base) - seen)
    notes = [f"{gone} point(s) of baseline {baseline.run_id} are absent from the new run(s)"] if gone else []
    return compared, slower, notes


def build_report(runs: list[Run], columns: list[str], baseline: Optional[Run] = None) -> Report:
    rows = [{**row, "run_id": run.run_id} for run in runs for row in run.rows]
    slower, notes = 0, []
    if baseline is not None:
        rows, slower, notes = _compare_rows(rows, baseline)
    specs = [column(c) for c in columns]
    data = {c: [spec.value(row) for row in rows] for c, spec in zip(columns, specs)}
    return Report(pd.DataFrame(data, columns=columns), slower, tuple(notes))


def describe_run(run: Run) -> str:
    """One line: which run, on what, from which code, and how its points ended."""
    meta = run.meta
    device = meta.get("device")
    device = device.get("name", "") if isinstance(device, dict) else (device or "")
    git = meta.get("git_sha")
    git = f"git {git[:10]}{'+dirty' if meta.get('git_dirty') else ''}" if git else "no git"
    counts = Counter(row.get("status") for row in run.rows)
    tally = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no rows"
    parts = [f"run {run.run_id}", device, f"fmha-bench {meta.get('tool_version', '?')}", git,
             meta.get("started_utc") or "", tally]
    return "  ".join(p for p in parts if p)


def make_console() -> Console:
    # Piped output keeps whole rows instead of wrapping them at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=400)


def print_report(result: Report, runs: list[Run], console: Console, baseline: Optional[Run] = None) -> None:
    """Load warnings, one line per run (and the baseline), the table, then the notes."""
    for run in runs + ([baseline] if baseline else []):
        for warning in run.warnings:
            console.print(f"warning: {warning}", style="yellow", highlight=False)
    for run in runs:
        console.print(describe_run(run), style="dim", highlight=False)
    if baseline:
        console.print(f"baseline {describe_run(baseline)}", style="dim", highlight=False)
    render_terminal(result.frame, console, result.specs)
    for note in result.notes:
        console.print(note, style="yellow", highlight=False)


def print_runs(paths: list) -> None:
    """The default table of the runs at `paths` (what `sweep` shows when it ends)."""
    runs = [load_run(path) for path in paths]
    print_report(build_report(runs, choose_columns(None, len(runs) > 1, False)), runs, make_console())


def _specs(frame: pd.DataFrame, specs: Optional[list]) -> list[Column]:
    return specs if specs is not None else [column(c) for c in frame.columns]


def render_terminal(frame: pd.DataFrame, console: Console, specs: Optional[list] = None) -> None:
    table = Table(show_lines=False, header_style="bold")
    specs = _specs(frame, specs)
    for spec in specs:
        table.add_column(spec.header, justify="right" if spec.numeric else "left", no_wrap=not spec.wraps,
                         overflow="fold" if spec.wraps else "ellipsis", min_width=12 if spec.wraps else None)
    for values in frame.itertuples(index=False):
        cells = []
        for spec, value in zip(specs, values):
            text = spec.fmt(value)
            cells.append(Text(text, style=(spec.styles or {}).get(text, "")))
        table.add_row(*cells)
    console.print(table)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, specs: Optional[list] = None) -> str:
    """A GitHub-flavoured Markdown table with the terminal's headings and number formats."""
    specs = _specs(frame, specs)
    lines = ["| " + " | ".join(_markdown_cell(s.header) for s in specs) + " |",
             "|" + "|".join("---:" if s.numeric else "---" for s in specs) + "|"]
    for values in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_markdown_cell(s.fmt(v)) for s, v in zip(specs, values)) + " |")
    return "\n".join(lines) + "\n"


def write_csv(frame: pd.DataFrame, path) -> None:
    try:
        frame.to_csv(path, index=False)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}", where="--csv") from None


def write_markdown(frame: pd.DataFrame, path, specs: Optional[list] = None) -> None:
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(markdown_table(frame, specs))
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}", where="--markdown") from None
