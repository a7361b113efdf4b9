"""`fmha-bench report`: tables of finished (or interrupted) runs, and comparison with a baseline."""
from __future__ import annotations

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
                   "name,provider,status,median_ms,tflops; problem fields (seqlen_q, ...) work too.")
def report(runs, baseline, fail_on_regression, csv_path, markdown_path, columns):
    """Print one table of RUN... (run directories, or run ids under the results directory).

    One row per point and provider: status with the reason of skips and failures, median time,
    noise, throughput, % of the roofline peak and validation errors. Several runs merge into
    one table with a run column.

    With --baseline each point gets base time, ratio (new / base) and a verdict, regressions
    listed first: SLOWER / FASTER when the medians differ by more than
    max(2 x combined relative IQR, 2%), SAME otherwise; NOT_COMPARABLE when either side did not
    run ok or the kernel's source changed (kernel_version); MISSING when the baseline lacks it.

    Exit code 0, also when points failed (`sweep` reports those); 1 only with
    --fail-on-regression and a SLOWER point; 2 for bad usage.
    """
    from .. import config, report as tables  # here, not at the top: pandas would slow every --help
    from ..store import find_run, load_run

    if fail_on_regression and not baseline:
        raise UserError("needs --baseline RUN to compare against", where="--fail-on-regression")
    loaded = [load_run(find_run(name, config.results_dir())) for name in runs]
    base = load_run(find_run(baseline, config.results_dir())) if baseline else None
    chosen = tables.choose_columns(columns, several_runs=len(loaded) > 1, with_baseline=base is not None)
    result = tables.build_report(loaded, chosen, base)
    tables.print_report(result, loaded, tables.make_console(), base)
    if csv_path:
        tables.write_csv(result.frame, csv_path)
    if markdown_path:
        tables.write_markdown(result.frame, markdown_path)
    if fail_on_regression and result.slower:
        click.secho(f"{result.slower} point(s) slower than baseline {base.run_id}", fg="red", err=True)
        sys.exit(EXIT_POINT_FAILED)


COMMANDS = [report]
