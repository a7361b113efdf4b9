"""Which points a run covers, and how `--resume RUN` gets the same points back.

A run records its sweep file (absolute path and sha256) and the options that chose its points
and providers (`run_options` in meta.json). Resuming reloads the file, refuses it when it
changed, selects the points again the same way (filters, limit, shard) and reopens the store;
the runner then runs only the points that lack rows.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .errors import UserError
from .sweep import SweepOptions, find_sweep, load_sweep, select_points

# Options that decide the points or the providers: a resumed run keeps the run's own.
RUN_DEFINING = {"providers": "--providers", "validate": "--validate", "run_id": "--run-id", "kernel": "--kernel",
                "all_instances": "--all-instances", "ck_binary": "--ck-binary", "seed": "--seed",
                "filters": "--filter", "limit": "--limit", "shard": "--shard"}


def run_points(sweep, filters=(), limit=None, shard=None) -> list:
    """The sweep's points after --filter and --limit, then this shard's share of them."""
    points = select_points(sweep.expansion().points, filters, limit)
    if shard is None:
        return points
    from .shards import SHARD_COST_ARCH, parse_shard, shard_points
    index, count = parse_shard(shard)
    return shard_points(points, index, count, SHARD_COST_ARCH)


def shard_record(sweep, options, points) -> dict | None:
    """meta.json's `shard` entry of a --shard run (what `report` checks when merging shards)."""
    if options.shard is None:
        return None
    from .shards import parse_shard, shard_meta
    index, count = parse_shard(options.shard)
    selected = select_points(sweep.expansion().points, options.filters, options.limit)
    return shard_meta(index, count, len(selected), len(points), sweep_sha256=sweep.sha256)


def resume_plan(run_name: str, options: SweepOptions, sweep_file=None, reopen: bool = True):
    """(sweep, points, options, store) to go on with run `run_name`. `options` are the command
    line's: only --devices/--device, --timeout and --results-dir may be given with --resume.
    With reopen=False (a dry run) the store is left untouched and None."""
    from .store import RunStore, find_run, load_run
    defaults = SweepOptions()
    for name, flag in RUN_DEFINING.items():
        if getattr(options, name) != getattr(defaults, name):
            raise UserError(f"a resumed run keeps its own settings; drop {flag}", where="--resume")
    path = find_run(run_name, options.results_dir)
    meta = load_run(path).meta
    saved = meta.get("run_options")
    if not isinstance(saved, dict) or not meta.get("sweep_file"):
        raise UserError(f"{path}: this run did not record its options (made by an older fmha-bench); "
                        "start a new run", where="--resume")
    sweep = load_sweep(Path(meta["sweep_file"]))
    if sweep.sha256 != meta.get("sweep_sha256"):
        raise UserError(f"{meta['sweep_file']} changed since run {meta.get('run_id')} started; resuming needs the "
                        "file as it was (or start a new run)", where="--resume")
    if sweep_file is not None and Path(find_sweep(sweep_file)).resolve() != Path(meta["sweep_file"]).resolve():
        raise UserError(f"run {meta.get('run_id')} ran {meta['sweep_file']}, not {sweep_file}; "
                        "give --resume alone", where="--resume")
    fields = {f.name for f in dataclasses.fields(SweepOptions)}
    restored = {k: v for k, v in saved.items() if k in fields}
    restored["filters"] = tuple(restored.get("filters") or ())
    if options.devices is not None or options.device != defaults.device:
        restored.update(devices=options.devices, device=options.device)
    if options.timeout is not None:
        restored["timeout"] = options.timeout
    resumed = dataclasses.replace(options, **restored, run_id=meta.get("run_id"), results_dir=Path(path).parent)
    points = run_points(sweep, resumed.filters, resumed.limit, resumed.shard)
    if meta.get("points_total") not in (None, len(points)):
        raise UserError(f"{path}: the run had {meta['points_total']} points, the sweep now selects {len(points)}",
                        where="--resume")
    return sweep, points, resumed, RunStore.reopen(path) if reopen else None
