"""PNG figures of the ok rows of one or more runs (`fmha-bench report --plots DIR`).

    tflops-<family>-<dtype>.png  TFLOPS vs seqlen_k, a line per provider, a subplot per group
                                 of the other swept fields
    speedup.png                  each point's speedup vs the baseline provider, 1.0 marked
    tbps-<family>-<dtype>.png    TB/s vs page size for the paged families, when page size varies

A figure holds at most MAX_SUBPLOTS subplots (MAX_BARS points for speedup); the rest go to
`<name>-2.png`, `<name>-3.png`, ... Names depend only on the rows, so a re-run overwrites.

matplotlib is optional (the `plot` extra) and imported only here, inside the functions; figures
are drawn on the Agg canvas directly, without pyplot's global state.
"""
from __future__ import annotations

import dataclasses
import math
import textwrap
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import UserError
from .pivot import SPEEDUP, choose_baseline, ordered_providers, pivot_by_provider, provider_column
from .problem import PAGED_FAMILIES, PROBLEM_FIELDS, Problem
from .store import csv_value

MAX_SUBPLOTS = 12
MAX_BARS = 40
_COLUMNS = 3
_DEFAULTS = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default  # as rows store them
             for f in dataclasses.fields(Problem)}


def require_matplotlib() -> None:
    """A UserError, before any work, when the `plot` extra is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("needs matplotlib: pip install 'fmha-bench[plot]'", where="--plots") from None


@dataclasses.dataclass
class _Panel:
    title: str
    lines: dict          # provider -> [(x, y)] sorted by x


@dataclasses.dataclass
class _Curves:
    """One (family, dtype) set of points drawn as y vs x, a subplot per group."""
    stem: str
    title: str
    xlabel: str
    ylabel: str
    panels: list


def _determined(field: str, by: Sequence[str], problems: Sequence[dict]) -> bool:
    """True when problems that agree on the `by` fields always agree on `field` too."""
    seen = {}
    for p in problems:
        key = tuple(csv_value(p.get(f)) for f in by)
        if seen.setdefault(key, csv_value(p.get(field))) != csv_value(p.get(field)):
            return False
    return True


def _label(fields: Sequence[str], problem: dict) -> str:
    return " ".join(f"{f}={csv_value(problem.get(f))}" for f in fields)


def _curves(rows: list, metric: str, x_field: str, stem: str, ylabel: str, xlabel: str,
            keep: Callable[[dict], bool], device: str) -> list[_Curves]:
    """Split the rows with a number in `metric` and a positive scalar `x_field` by (family, dtype);
    within each, a subplot per value of the swept fields that do not follow x, a line per provider."""
    subsets: dict = {}
    for row in rows:
        problem = row.get("problem") or {}
        x = problem.get(x_field)
        if keep(problem) and isinstance(x, (int, float)) and x > 0 and row.get(metric) is not None:
            subsets.setdefault((problem.get("family"), problem.get("dtype")), []).append(row)
    figures = []
    for (family, dtype), subset in subsets.items():
        problems = list({row["point_id"]: row["problem"] for row in subset}.values())
        swept = [f for f in PROBLEM_FIELDS if f not in ("family", "dtype", x_field)
                 and len({csv_value(p.get(f)) for p in problems}) > 1]
        follow_x = [f for f in swept if _determined(f, [x_field], problems)]
        # head dims before head counts: when one follows the other, the dims name the group better
        groups = sorted((f for f in swept if f not in follow_x), key=lambda f: f not in ("hdim_q", "hdim_v"))
        # a group field that follows the earlier ones adds no group: leave it out of the titles
        shown = [f for i, f in enumerate(groups) if not _determined(f, groups[:i], problems)] if groups else []
        panels: dict = {}
        for row in subset:
            key = tuple(csv_value(row["problem"].get(f)) for f in groups)
            panel = panels.setdefault(key, _Panel(_label(shown, row["problem"]), {}))
            panel.lines.setdefault(row.get("provider"), []).append((row["problem"][x_field], row[metric]))
        for panel in panels.values():
            for points in panel.lines.values():
                points.sort()
        panels = [p for p in panels.values() if len({x for pts in p.lines.values() for x, _ in pts}) > 1]
        if not panels:
            continue
        fixed = [f for f in PROBLEM_FIELDS if f not in swept and f not in ("family", "dtype", x_field)
                 and problems[0].get(f) != _DEFAULTS[f]]
        title = f"{ylabel} vs {x_field}: {family} {dtype} on {device}"
        if fixed:
            title += f"\nfixed: {_label(fixed, problems[0])}"
        if follow_x:
            title += f"\nvarying with {x_field}: {', '.join(follow_x)}"
        figures.append(_Curves(f"{stem}-{family}-{dtype}", title, xlabel, ylabel, panels))
    return figures


def _pages(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _page_path(out_dir: Path, stem: str, page: int) -> Path:
    return out_dir / (f"{stem}.png" if page == 0 else f"{stem}-{page + 1}.png")


def _colors(providers: Sequence[str]) -> dict:
    """The same color for a provider in every figure."""
    from matplotlib import colormaps
    cycle = colormaps["tab10"].colors
    return {p: cycle[i % len(cycle)] for i, p in enumerate(providers)}


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    try:
        figure.savefig(path, dpi=100)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}", where="--plots") from None
    return path


def _draw_curves(curves: _Curves, colors: dict, out_dir: Path) -> list[Path]:
    paths = []
    for page, panels in enumerate(_pages(curves.panels, MAX_SUBPLOTS)):
        ncols = min(_COLUMNS, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        figure = _new_figure(4.8 * ncols, 3.6 * nrows + 0.8)
        figure.suptitle("\n".join(textwrap.fill(line, 50 * ncols) for line in curves.title.split("\n")),
                        fontsize=10)
        for index, panel in enumerate(panels):
            axes = figure.add_subplot(nrows, ncols, index + 1)
            for provider in (p for p in colors if p in panel.lines):  # the same legend order everywhere
                xs, ys = zip(*panel.lines[provider])
                axes.plot(xs, ys, marker="o", label=provider, color=colors[provider])
            axes.set_xscale("log", base=2)
            axes.set_title(textwrap.fill(panel.title, 48), fontsize=8)
            axes.set_xlabel(curves.xlabel, fontsize=8)
            axes.set_ylabel(curves.ylabel, fontsize=8)
            axes.set_ylim(bottom=0)
            axes.grid(True, alpha=0.3)
            axes.legend(fontsize=7)
        paths.append(_save(figure, _page_path(out_dir, curves.stem, page)))
    return paths


def _draw_speedups(rows: list, base: str, providers: list, colors: dict, device: str,
                   out_dir: Path) -> list[Path]:
    """Horizontal bars, a group per point (those with a speedup), a bar per other provider."""
    others = [p for p in providers if p != base]
    speedup_ids = [provider_column(p, SPEEDUP) for p in others]
    frame = pivot_by_provider(rows, base, providers, metrics=())
    frame = frame[frame[speedup_ids].notna().any(axis=1)]
    height = 0.8 / len(others)
    paths = []
    for page, start in enumerate(range(0, len(frame), MAX_BARS)):
        chunk = frame.iloc[start:start + MAX_BARS]
        figure = _new_figure(10, 1.6 + 0.3 * len(chunk) * len(others))
        axes = figure.add_subplot()
        for i, (provider, column_id) in enumerate(zip(others, speedup_ids)):
            offsets = [y + (i - (len(others) - 1) / 2) * height for y in range(len(chunk))]
            axes.barh(offsets, chunk[column_id].fillna(0).tolist(), height=height, label=provider,
                      color=colors[provider])
        axes.axvline(1.0, color="black", linestyle="--", linewidth=1)
        axes.set_yticks(range(len(chunk)), chunk["name"].tolist(), fontsize=7)
        axes.invert_yaxis()
        axes.set_xlabel(f"speedup vs {base} ({base} median time / provider median time; > 1 = faster)")
        axes.set_title(f"speedup vs {base} on {device}", fontsize=10)
        axes.grid(True, axis="x", alpha=0.3)
        axes.legend(fontsize=7)
        paths.append(_save(figure, _page_path(out_dir, "speedup", page)))
    return paths


def write_plots(rows: Sequence[dict], out_dir, baseline_provider: Optional[str] = None,
                providers: Optional[Sequence[str]] = None) -> list[Path]:
    """Draw the ok rows of `rows` (results.jsonl dicts, one per point and provider) into PNGs
    under `out_dir` (created if needed); returns their paths. `baseline_provider` and
    `providers` (preferred order) as in `pivot.pivot_by_provider`."""
    order = ordered_providers(rows, providers or ())
    base = choose_baseline(order, baseline_provider)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out_dir}: {e.strerror}", where="--plots") from None
    ok = [row for row in rows if row.get("status") == "ok"]
    device = ", ".join(dict.fromkeys(row.get("device") or "unknown device" for row in ok))
    colors = _colors(order)
    figures = _curves(ok, "tflops", "seqlen_k", "tflops", "TFLOPS", "seqlen_k (keys per sequence)",
                      lambda problem: True, device)
    figures += _curves(ok, "tbps", "page_size", "tbps", "TB/s", "page size (tokens)",
                       lambda problem: problem.get("family") in PAGED_FAMILIES, device)
    paths = [path for curves in figures for path in _draw_curves(curves, colors, out_dir)]
    if len(order) > 1:
        paths += _draw_speedups(rows, base, order, colors, device, out_dir)
    return paths
