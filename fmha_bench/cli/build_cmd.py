"""`fmha-bench build`: compile every kernel instance some sweeps need, for some arches, with no
GPU. CI runs it over every shipped sweep to prove the kernels compile for each target."""
from __future__ import annotations

import sys
import time
from collections import Counter

import click

from ..package_data import sweeps_dir
from ..errors import EXIT_POINT_FAILED

_STATUS_STYLE = {"built": "green", "cached": "cyan", "failed": "red"}


def default_sweep() -> str:
    return str(sweeps_dir() / "quick.yaml")


def specs_for(sweep_paths, arch_names: list[str]) -> list:
    """The kernel instances the points of these sweeps need on these arches (union, in order)."""
    from ..dispatch import instances_for
    from ..sweep import load_sweep
    problems = [point.problem for path in sweep_paths for point in load_sweep(path).expand()
                if point.problem is not None]
    return list(dict.fromkeys(instances_for(problems, arch_names)))


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1024:.1f} KiB" if n_bytes else "-"


def print_results(console, results: list, checks: dict | None, seconds: float) -> None:
    from rich.table import Table
    table = Table(show_edge=False, pad_edge=False)
    for column, justify in (("instance", "left"), ("arch", "left"), ("compiler", "left"),
                            ("status", "left"), ("seconds", "right"), ("size", "right")):
        table.add_column(column, justify=justify, overflow="fold")
    if checks is not None:
        table.add_column("arch check", overflow="fold")
    for r in results:
        row = [r.name, r.spec.arch, r.compiler,
               f"[{_STATUS_STYLE[r.status]}]{r.status}[/]", f"{r.seconds:.2f}", _size(r.size_bytes)]
        if checks is not None:
            problem = checks.get(r.name)
            row.append("-" if not r.ok else "[green]ok[/]" if problem is None else f"[red]{problem}[/]")
        table.add_row(*row)
    console.print(table)
    failures: dict[str, list[str]] = {}  # error -> instances: an arch without a compiler fails all alike
    for r in results:
        if not r.ok:
            failures.setdefault(r.error, []).append(r.name)
    for error, names in failures.items():
        console.print(f"\n[red]failed[/] {', '.join(names)}:", highlight=False)
        console.print(error, markup=False, highlight=False)
    counts = Counter(r.status for r in results)
    summary = (f"{len(results)} instances: {counts['built']} built, {counts['cached']} cached, "
               f"{counts['failed']} failed")
    if checks is not None:
        bad = sum(problem is not None for problem in checks.values())
        summary += f"; arch check: {len(checks) - bad} ok, {bad} wrong"
    console.print(f"{summary} ({seconds:.1f} s)", highlight=False)


@click.command("build")
@click.argument("sweeps", nargs=-1, metavar="[SWEEP]...",
                type=click.Path(exists=True, dir_okay=False))
@click.option("--arch", "arch_list", required=True, metavar="ARCH,...",
              help="Targets, comma-separated: gfx90a,gfx942,gfx950,gfx1100,gfx1201,sm_80,sm_90a, ...")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Compilers run at once (default: FMHA_BENCH_JOBS or the CPU count).")
@click.option("--force", is_flag=True, help="Recompile instances already in the cache.")
@click.option("--check", is_flag=True,
              help="Read each code object's ELF header and fail when it is not for its arch.")
def build(sweeps, arch_list, jobs, force, check):
    """Compile the kernel instances that the points of SWEEP... need (default: the packaged
    quick.yaml) for each --arch, into the kernel cache (FMHA_BENCH_CACHE).

    Instances already in the cache are reused (their names hash sources, defines, compiler and
    flags). Exit code 0 when every instance built, 1 when one failed to compile or (--check)
    was built for the wrong arch, 2 for bad usage.
    """
    from ..build import build_all, check_code_object, parse_arch_list
    from ..report import make_console
    archs = parse_arch_list(arch_list)
    console = make_console()
    specs = specs_for(sweeps or [default_sweep()], [a.name for a in archs])
    start = time.perf_counter()
    with console.status(f"building {len(specs)} kernel instances"):
        results = list(build_all(specs, jobs=jobs, force=force).values())
    checks = ({r.name: check_code_object(r.path, r.spec.target) for r in results if r.ok}
              if check else None)
    print_results(console, results, checks, time.perf_counter() - start)
    failed = any(not r.ok for r in results) or any(checks.values() if checks else ())
    sys.exit(EXIT_POINT_FAILED if failed else 0)


COMMANDS = [build]
