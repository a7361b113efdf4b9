"""`fmha-bench report`: tables of finished (or interrupted) runs, comparison with a baseline run,
providers side by side (--pivot) and figures (--plots)."""
from __future__ import annotations

import os
import sys

import click

from ..errors import EXIT_POINT_FAILED, UserError


@click.command("report")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--baseline", metavar="RUN", help="Compare every point with this run (noise-aware verdicts).")
@click.option("--fail-on-regression", is_flag=True,
              help="Exit 1 when a point is SLOWER than the baseline (needs --baseline).")
@click.option("--csv", "csv_path", metavar="PATH", type=click.Path(dir_okay=False),
              help="Also write the table as CSV (full precision, units in the column names).")
@click.option("--markdown", "markdown_path", metavar="PATH", type=click.Path(dir_okay=False),
              help="Also write the table as Markdown.")
@click.option("--columns", metavar="ID,...",
              help="Comma-separated column ids replacing the default set, e.g. "
                   "name,provider,status,median_ms,tflops; problem fields (seqlen_q, ...) work too. "
                   "With --pivot: point columns (name, point_id, bound, problem fields) and "
                   "per-provider ones (status, median_ms, tflops, tbps, max_abs, speedup, ...).")
@click.option("--pivot", is_flag=True,
              help="One row per point with the providers side by side: status, median ms, "
                   "TFLOPS / TB/s and speedup vs the baseline provider.")
@click.option("--baseline-provider", metavar="NAME",
              help="Provider that --pivot and --plots speedups are relative to (default: fmha when "
                   "it has rows, else the first provider of the run).")
@click.option("--plots", "plots_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Also write PNG figures into DIR: TFLOPS vs seqlen_k, speedup vs the baseline "
                   "provider, TB/s vs page size (needs matplotlib: pip install 'fmha-bench[plot]').")
def report(runs, baseline, fail_on_regression, csv_path, markdown_path, columns, pivot, baseline_provider,
           plots_dir):
    """Print one table of RUN... (run directories, or run ids under the results directory).

    One row per point and provider: status with the reason of skips and failures, median time,
    noise, throughput, % of the roofline peak and validation errors. Several runs merge into
    one table with a run column.

    With --baseline each point gets base time, ratio (new / base) and a verdict, regressions
    listed first: SLOWER / FASTER when the medians differ by more than
    max(2 x combined relative IQR, 2%), SAME otherwise; NOT_COMPARABLE when either side did not
    run ok or the kernel's source changed (kernel_version); MISSING when the baseline lacks it.

    With --pivot one row per point: the swept problem fields, then per provider its status
    (when a point did not run ok), median time, TFLOPS (compute-bound points) and TB/s
    (memory-bound points) and speedup = baseline provider's median / its median (> 1: faster).
    Rows of one point from several runs (shards, a run per provider) share a row; a provider
    met twice for a point keeps the row of the run named later.

    --plots draws the ok rows into DIR (tflops-<family>-<dtype>.png, tbps-<family>-<dtype>.png,
    speedup.png; -2, -3, ... when a figure overflows) and prints each path.

    Exit code 0, also when points failed (`sweep` reports those); 1 only with
    --fail-on-regression and a SLOWER point; 2 for bad usage.
    """
    # here, not at the top: pandas would slow every --help
    from .. import plots, report as tables
    from ..pivot import build_pivot_report, choose_baseline, merge_runs

    if plots_dir:
        plots.require_matplotlib()
    if fail_on_regression and not baseline:
        raise UserError("needs --baseline RUN to compare against", where="--fail-on-regression")
    if pivot and baseline:
        raise UserError("compares providers within the runs; --baseline compares runs: use one", where="--pivot")
    if baseline_provider and not (pivot or plots_dir):
        raise UserError("only applies with --pivot or --plots", where="--baseline-provider")
    loaded = [_load_run(name) for name in runs]
    base = _load_run(baseline) if baseline else None
    console = tables.make_console()
    from ..shards import shard_warnings
    for note in shard_warnings(loaded):   # shards of one sweep: missing, repeated, interrupted, mixed
        console.print(f"warning: {note}", style="yellow", highlight=False)
    merged = merge_runs(loaded) if pivot or plots_dir else None
    if merged is not None:
        baseline_provider = choose_baseline(merged.providers, baseline_provider)
        for note in merged.notes:
            console.print(f"warning: {note}", style="yellow", highlight=False)
    if pivot:
        result = build_pivot_report(merged, columns, baseline_provider)
    else:
        chosen = tables.choose_columns(columns, several_runs=len(loaded) > 1, with_baseline=base is not None)
        result = tables.build_report(loaded, chosen, base)
    tables.print_report(result, loaded, console, base)
    if csv_path:
        tables.write_csv(result.frame, csv_path)
    if markdown_path:
        tables.write_markdown(result.frame, markdown_path, result.specs)
    if plots_dir:
        for path in plots.write_plots(merged.rows, plots_dir, baseline_provider, merged.providers):
            console.print(str(path), highlight=False)
    if fail_on_regression and result.slower:
        click.secho(f"{result.slower} point(s) slower than baseline {base.run_id}", fg="red", err=True)
        sys.exit(EXIT_POINT_FAILED)


def _load_run(name: str):
    """The run `name` (a path, or a run id under the results directory). A missing or unreadable
    one (no permission, a name too long for the file system) is bad input, not a bug."""
    from .. import config
    from ..store import find_run, load_run
    results_dir = config.results_dir()
    try:
        path = find_run(name, results_dir)
        if not os.path.exists(path):
            raise UserError(f"{name}: no such run (not a directory, nor a run id under {results_dir}; "
                            "FMHA_BENCH_RESULTS sets that directory)")
        return load_run(path)
    except OSError as e:
        raise UserError(f"{name}: cannot read this run ({e.strerror or e})") from None


COMMANDS = [report]
