"""`fmha-bench sweep`: expand a sweep file, then run it, or with --dry-run show what would run."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click

from .. import config
from ..errors import UserError
from ..sweep import VALIDATE_MODES, Expansion, Sweep, SweepOptions, find_sweep, load_sweep

EXAMPLES = """\b
Examples:
  fmha-bench sweep --dry-run                  the packaged quick sweep's points, no GPU needed
  fmha-bench sweep                            run the quick sweep (under a minute)
  fmha-bench sweep prefill --providers fmha   a packaged sweep by name (`fmha-bench list sweeps`)
  fmha-bench sweep my.yaml --filter mask=causal --filter hdim_q=128 --limit 5
  fmha-bench sweep decode --filter paged --validate off --run-id decode-baseline
  fmha-bench sweep prefill --devices all      one worker per GPU
  fmha-bench sweep --resume decode-baseline   go on after Ctrl-C, a kill or a crash
"""


def run_options(command):
    """The options `sweep` and `parity` share: which points, which providers, where results go."""
    options = [
        click.argument("sweep_file", required=False, metavar="[FILE]"),
        click.option("--providers", metavar="A,B",
                     help="Comma-separated providers, replacing the sweep's list (fmha:<tag>: one candidate "
                          "instance, as --all-instances names them)."),
        click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="GPU index."),
        click.option("--validate", "validate_mode", type=click.Choice(VALIDATE_MODES),
                     help="Validation against the reference, replacing the sweep's mode."),
        click.option("--run-id", metavar="ID", help="Name of the run directory (default: a timestamp)."),
        click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Where run directories go (default: $FMHA_BENCH_RESULTS or ./results)."),
        click.option("--kernel", metavar="NAME",
                     help="Use only this kernel instance of provider fmha: the first candidate whose tag or "
                          "instance name contains NAME (with * ? [ ]: matches one whole, e.g. 'wgmma-*ws')."),
        click.option("--all-instances", is_flag=True,
                     help="Also run every candidate instance of each point as provider fmha:<tile>, beside the "
                          "dispatcher's pick (provider fmha)."),
        click.option("--ck-binary", metavar="PATH",
                     help="Composable Kernel's tile_example_fmha_fwd for provider ck (else the sweep's ck: binary, "
                          "else $FMHA_BENCH_CK_BINARY)."),
        click.option("--seed", type=int, help="Input seed, replacing the sweep's."),
        click.option("--filter", "filters", multiple=True, metavar="TEXT",
                     help="Keep points where FIELD=VALUE (`mask=causal`, `hdim_q=128`) or whose name, id or source "
                          "contains TEXT. Repeatable: every filter must match."),
        click.option("--limit", type=click.IntRange(min=1), help="Keep the first N points (after --filter)."),
        click.option("--devices", metavar="LIST|all",
                     help="Run on these GPUs (0,1,...) or on every GPU of the machine, one worker process each; "
                          "points go to the next free GPU, longest first."),
        click.option("--shard", metavar="I/N",
                     help="Run only shard I of N (0-based) of the selected points: a deterministic, cost-balanced "
                          "split for job arrays; `fmha-bench report` merges the shards' runs."),
        click.option("--timeout", type=click.FloatRange(min=1), metavar="SECONDS",
                     help="A provider still running a point after this long is recorded as `timeout`, its worker "
                          "killed and restarted (default 300)."),
        click.option("--resume", metavar="RUN",
                     help="Go on with an interrupted run (its directory or id): only the points without rows run, "
                          "with the run's own sweep file and settings."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def sweep_options(providers, device, validate_mode, run_id, results_dir, kernel, all_instances, ck_binary, seed,
                  filters, limit, devices, shard, timeout, command="sweep") -> SweepOptions:
    options = SweepOptions(providers=providers, device=device, validate=validate_mode, run_id=run_id,
                           results_dir=results_dir or config.results_dir(), kernel=kernel, all_instances=all_instances,
                           ck_binary=ck_binary, seed=seed, filters=tuple(filters), limit=limit, argv=tuple(sys.argv),
                           devices=devices, shard=shard, timeout=timeout, command=command)
    if devices is not None and device != 0:
        raise UserError("give either --device or --devices", where="--devices")
    options.device_list()  # a bad --devices fails here, before anything runs
    return options


def plan_run(sweep_file, resume, options: SweepOptions, dry_run: bool = False):
    """(sweep, points, options, store or None): a new run's points, or --resume's."""
    from ..resume import resume_plan, run_points
    if resume:
        return resume_plan(resume, options, sweep_file, reopen=not dry_run)
    loaded = load_sweep(find_sweep(sweep_file))
    return loaded, run_points(loaded, options.filters, options.limit, options.shard), options, None


@click.command("sweep", epilog=EXAMPLES)
@run_options
@click.option("--dry-run", is_flag=True, help="Show the expanded points and exit (no GPU needed).")
def sweep(sweep_file, dry_run, resume, **run_settings):
    """Run the points of a sweep FILE through its providers and record the results.

    FILE is a sweep YAML file or the name of a packaged sweep (`fmha-bench list sweeps`);
    without it, the packaged quick sweep. The format is described in `fmha_bench/sweep.py` and
    the README. Points that are not valid problems are listed as skipped, with the reason.
    """
    loaded, points, options, store = plan_run(sweep_file, resume, sweep_options(**run_settings), dry_run)
    if dry_run:
        _show_plan(loaded, loaded.expansion(), points)
        return
    from ..runner import run_sweep  # here, not at the top: the run path pulls in the GPU side
    outcome = run_sweep(loaded, points, options, store=store)
    sys.exit(outcome.exit_code)


def _show_plan(loaded: Sweep, expansion: Expansion, points: list) -> None:
    from rich.table import Table
    from rich.text import Text

    from ..report import make_console
    console = make_console()
    console.print(f"sweep [bold]{loaded.name}[/]: {loaded.description}", highlight=False)
    m, v = loaded.measure, loaded.validate
    console.print(f"file {loaded.path} (sha256 {loaded.sha256[:12]}); providers {', '.join(loaded.providers)}; "
                  f"validate {v.mode} ({v.rows} rows); measure: warmup {m.warmup}, {m.min_samples}..{m.max_samples} "
                  f"samples, noise {m.max_noise:g}, budget {m.time_budget_s:g} s, L2 flush {'on' if m.l2_flush else 'off'}",
                  style="dim", highlight=False)
    table = Table(show_edge=False)
    for header, justify in (("#", "right"), ("id", "left"), ("name", "left"), ("GFLOP", "right"),
                            ("MB", "right"), ("from", "left"), ("skip reason", "left")):
        table.add_column(header, justify=justify)
    for index, point in enumerate(points):
        problem = point.problem
        gflop = f"{problem.flops() / 1e9:.4g}" if problem else ""
        mbytes = f"{problem.bytes() / 1e6:.4g}" if problem else ""
        cells = (str(index), point.id, point.name, gflop, mbytes, point.source, point.skip_reason or "")
        table.add_row(*map(Text, cells), style="dim" if problem is None else None)  # Text: no markup, no emoji
    console.print(table)
    for line in _summary(expansion, points):
        console.print(line, highlight=False)


def _summary(expansion: Expansion, points: list) -> list:
    skipped = Counter(p.skip_reason for p in points if p.problem is None)
    selected = "" if len(points) == len(expansion.points) else f" (selected from {len(expansion.points)})"
    lines = [f"{len(points)} points{selected}: {len(points) - sum(skipped.values())} to run, "
             f"{sum(skipped.values())} skipped"]
    lines += [f"  skipped {count} x {reason}" for reason, count in skipped.most_common()]
    lines += [f"  excluded {count} by exclude[{rule}]" for rule, count in enumerate(expansion.excluded) if count]
    lines += [f"  collapsed {', '.join(p.duplicates)} into {p.id} ({p.source}): same problem"
              for p in points if p.duplicates]
    return lines


COMMANDS = [sweep]
