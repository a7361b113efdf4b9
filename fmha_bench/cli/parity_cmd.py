"""`fmha-bench parity`: every point through several providers on identical inputs, outputs
cross-checked, statuses compared, speed side by side."""
from __future__ import annotations

import sys

import click

from ..errors import EXIT_OK, EXIT_POINT_FAILED
from .sweep_cmd import plan_run, run_options, sweep_options

EXAMPLES = """\b
Examples:
  fmha-bench parity parity --providers fmha,torch-sdpa:flash,torch-sdpa:cudnn,torch-sdpa:math
  fmha-bench parity my.yaml --providers fmha,ck --ck-binary ./tile_example_fmha_fwd --baseline-provider ck
"""


@click.command("parity", epilog=EXAMPLES)
@run_options
@click.option("--baseline-provider", metavar="NAME", help="Speedups are relative to this provider (default: fmha).")
@click.option("--csv", "csv_path", metavar="PATH", type=click.Path(dir_okay=False),
              help="Also write the parity table as CSV (it is always written into the run directory too).")
@click.option("--markdown", "markdown_path", metavar="PATH", type=click.Path(dir_okay=False),
              help="Also write the parity table as Markdown.")
def parity(sweep_file, baseline_provider, csv_path, markdown_path, resume, **run_settings):
    """Run every point of FILE through every provider that supports it and compare them.

    Tensor providers (fmha, torch-sdpa:*) read the same device buffers; each output is checked
    against the NumPy reference and against every other provider's (max abs and rel difference,
    fraction outside the sum of both tolerances). Self-timed binaries (ck, binary:NAME) make
    their own inputs: for them parity is status, their own validity check and speed. Speed is
    shown side by side under one FLOP count with the speedup against --baseline-provider.

    Verdicts per point: agree; mismatch (an output off the reference or off another provider);
    status (one provider ok where another failed, crashed or timed out); single (fewer than two
    providers ran it). The table goes to the terminal and to parity.csv / parity.md in the run
    directory. Exit code 1 on any mismatch or status disagreement (the points are listed), 2 on
    bad input.
    """
    loaded, points, options, store = plan_run(sweep_file, resume, sweep_options(command="parity", **run_settings))
    from ..runner import run_sweep  # the run path pulls in the GPU side
    outcome = run_sweep(loaded, points, options, show_table=False, store=store)
    code = show_parity(outcome.run_path, baseline_provider, csv_path, markdown_path)
    sys.exit(code if outcome.complete else EXIT_POINT_FAILED)


def show_parity(run_path, baseline_provider, csv_path=None, markdown_path=None) -> int:
    """Print (and write) the parity table of a finished run; the exit code its verdicts call for."""
    from .. import report
    from ..parity import build_parity_report
    from ..store import load_run
    run = load_run(run_path)
    result, failing = build_parity_report(run, baseline_provider)
    console = report.make_console()
    report.render_terminal(result.frame, console, result.specs)
    for note in result.notes:
        console.print(note, highlight=False)
    targets = [(run.path / "parity.csv", run.path / "parity.md")] + [(csv_path, markdown_path)]
    for csv_target, markdown_target in targets:
        if csv_target:
            report.write_csv(result.frame, csv_target)
        if markdown_target:
            report.write_markdown(result.frame, markdown_target, result.specs)
    if failing:
        click.secho(f"{len(failing)} point(s) disagree:", fg="red", err=True)
        for verdict in failing:
            click.echo(f"  {verdict.name} [{verdict.point_id}]: {verdict.verdict}: {'; '.join(verdict.details)}",
                       err=True)
        return EXIT_POINT_FAILED
    return EXIT_OK


COMMANDS = [parity]
