"""`fmha-bench sweep` without --dry-run: every point through every provider on one GPU.

Per point: inputs made once and uploaded once; for each provider: outputs poisoned, one launch,
validated against the NumPy reference; then timed (timing.py); the output is validated again
after the timing loop (a race that only shows under repetition fails the point); the row is
appended to the run store at once.
"""
from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .errors import EXIT_OK, EXIT_POINT_FAILED, UserError
from .schema import Result
from .timing import MeasureSettings, Timer
from .validate import compare, tolerance_for

BAD_STATUSES = ("failed", "mismatch", "crashed", "timeout")
FULL_VALIDATION_LIMIT = 1 << 26   # visible (row, key) pairs x query heads under which `auto` checks every row


@dataclass
class SweepOutcome:
    exit_code: int          # EXIT_OK, or EXIT_POINT_FAILED when a row failed, mismatched, crashed or timed out
    run_path: Path
    rows: list


def run_sweep(sweep, points, options, show_table: bool = True) -> SweepOutcome:
    from .backends import BackendUnavailable, open_backend
    from .providers import get_providers
    from .store import RunStore

    providers = get_providers(_provider_names(sweep, options), sweep=sweep, ck_binary=options.ck_binary)
    try:
        backend = open_backend(options.device or 0)
    except BackendUnavailable as e:
        raise UserError(f"{e}. Use --dry-run to expand the sweep without a GPU.") from None
    device = backend.device_info()
    measure = sweep.measure
    validate_mode = options.validate or sweep.validate.mode
    rows_per_head = sweep.validate.rows
    seed = options.seed if options.seed is not None else sweep.seed
    for p in providers:
        if options.kernel and hasattr(p, "force_kernel"):
            p.force_kernel(options.kernel)

    runnable = [pt.problem for pt in points if pt.problem is not None]
    if options.all_instances:
        providers = _with_every_instance(providers, runnable, device)
    for p in providers:
        if hasattr(p, "build"):
            p.build([q for q in runnable if p.supports(q, device) is None], device)

    store = RunStore.create(options.results_dir, options.run_id, meta={
        "argv": list(options.argv or sys.argv), "sweep_file": str(sweep.path), "sweep_sha256": sweep.sha256,
        "device": device.to_json(), "providers": [p.name for p in providers],
        "settings": {"measure": vars(measure), "validate": validate_mode, "validate_rows": rows_per_head,
                     "seed": seed}, "compilers": _compiler_versions(), "tool_version": __version__,
    })
    timer = Timer(backend, device.l2_bytes)
    context_lost = None
    counts = {}
    rows = []
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), transient=False)
    try:
        with progress:
            task = progress.add_task("sweep", total=len(points) * len(providers))
            for point in points:
                point_rows = _run_point(point, providers, backend, device, timer, measure, validate_mode,
                                        rows_per_head, seed, context_lost)
                for row in point_rows:
                    store.append(row)
                    rows.append(row)
                    counts[row.status] = counts.get(row.status, 0) + 1
                    if row.status == "crashed" and context_lost is None:
                        context_lost = row.name
                progress.update(task, advance=len(providers), description=_counts_text(counts))
    except KeyboardInterrupt:
        print(f"interrupted: {len(rows)} rows kept in {store.path}", file=sys.stderr)
    finally:
        store.finish()
        timer.close()
    if show_table:
        _print_table(store.path)
    print(f"run {store.run_id}: {len(rows)} rows in {store.path}")
    code = EXIT_POINT_FAILED if any(r.status in BAD_STATUSES for r in rows) else EXIT_OK
    return SweepOutcome(code, store.path, rows)


def _with_every_instance(providers, problems, device) -> list:
    """--all-instances: after `fmha` (the dispatcher's pick), one `fmha:<tag>` provider per
    candidate instance any of the points has, so each candidate is timed beside the pick."""
    from .dispatch import candidates
    from .providers.fmha import FmhaProvider
    tags = {}
    for problem in problems:
        found = candidates(problem, device.arch)
        if not isinstance(found, str):
            tags.update((tag, True) for tag, _ in found)
    out = []
    for provider in providers:
        out.append(provider)
        if provider.name == "fmha":
            out += [FmhaProvider(tag) for tag in tags]
    return out


def _provider_names(sweep, options) -> list[str]:
    if options.providers:
        return [n.strip() for n in options.providers.split(",") if n.strip()]
    return list(sweep.providers or ["fmha"])


def _compiler_versions() -> dict:
    try:
        from .build import compiler_versions
        return compiler_versions()
    except Exception as e:  # informational: never fail a run over it
        return {"error": str(e)}


def _counts_text(counts: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "sweep"


def _base_row(problem, provider, device, seed) -> Result:
    return Result(point_id=problem.key(), name=problem.name(), problem=problem.all_fields(), provider=provider.name,
                  flops=problem.flops(), bytes=problem.bytes(), device=device.name, arch=device.arch, seed=seed)


def _skipped_row(point, provider, device, seed, reason) -> Result:
    problem = point.problem
    if problem is None:
        return Result(point_id=point.id, name=point.name, problem=dict(point.resolved), provider=provider.name,
                      status="skipped", reason=reason, device=device.name, arch=device.arch, seed=seed)
    row = _base_row(problem, provider, device, seed)
    row.status, row.reason = "skipped", reason
    return row


def _run_point(point, providers, backend, device, timer, measure, validate_mode, rows_per_head, seed, context_lost):
    if point.problem is None:
        return [_skipped_row(point, p, device, seed, point.skip_reason) for p in providers]
    if context_lost:
        return [_skipped_row(point, p, device, seed, f"not run: the GPU context was lost at {context_lost!r}")
                for p in providers]
    problem = point.problem
    reasons = {p.name: p.supports(problem, device) for p in providers}
    session = reference = None
    if any(p.takes_tensors and not reasons[p.name] for p in providers):
        from .session import PointSession
        inputs = problem.make_inputs(seed)
        reference = _Reference(problem, inputs, validate_mode, rows_per_head)
        session = PointSession(backend, device, problem, inputs)
    rows, outputs = [], {}
    try:
        for provider in providers:
            if reasons[provider.name]:
                rows.append(_skipped_row(point, provider, device, seed, reasons[provider.name]))
            elif not provider.takes_tensors:
                rows.append(_run_external(problem, provider, device, measure, seed))
            else:
                row, output = _run_provider(problem, provider, session, reference, timer, measure, device, seed)
                rows.append(row)
                if output is not None:
                    outputs[provider.name] = (row, output)
                if row.status == "crashed":
                    break
    finally:
        if session is not None and (not rows or rows[-1].status != "crashed"):
            session.close()
    _cross_check(outputs)
    return rows


def _cross_check(outputs: dict) -> None:
    """Every pair of providers that produced O for the point: compared with the sum of their
    tolerances against the reference (each may be off by its own bound, in either direction)."""
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (row_a, (o_a, tol_a)), (row_b, (o_b, tol_b)) = outputs[a], outputs[b]
            check = compare(o_a, o_b, tol_a.atol + tol_b.atol, tol_a.rtol + tol_b.rtol)
            entry = {"max_abs": check.max_abs, "max_rel": check.max_rel, "mismatch_frac": check.mismatch_frac,
                     "ok": check.passed}
            row_a.cross[b] = entry
            row_b.cross[a] = dict(entry)


def _run_external(problem, provider, device, measure, seed) -> Result:
    """A self-timed upstream binary: its own inputs, its own timing and its own check."""
    row = _base_row(problem, provider, device, seed)
    run = provider.run_external(problem, device, measure)
    row.status, row.reason, row.exit_code = run.status, run.reason, run.exit_code
    row.kernel, row.kernel_version = run.kernel or provider.name, provider.version()
    row.reported_tflops, row.l2_flush = run.reported_tflops, False
    row.val_mode = "self" if run.valid is not None else "off"
    row.notes.append("inputs made and checked by the binary itself: time and validity are its own report")
    if run.command:
        row.notes.append("command: " + " ".join(run.command))
    if run.time_s:
        row.time_s_median = row.time_s_min = run.time_s
        row.samples = 1
        _throughput(row, problem, device)
    return row


class _Reference:
    """The point's reference output, computed once (lazily) and shared by its providers."""

    def __init__(self, problem, inputs, mode, rows_per_head):
        self.problem, self.inputs = problem, inputs
        pairs = int(problem.areas().sum()) * problem.group_size
        self.mode = mode if mode != "auto" else ("full" if pairs <= FULL_VALIDATION_LIMIT else "sampled")
        self.rows = rows_per_head if self.mode == "sampled" else 0
        self._out = None

    def get(self):
        if self._out is None:
            from .reference import attention
            self._out = attention(self.problem, self.inputs, sampled_rows=self.rows or None)
        return self._out

    def v_abs_max(self) -> float:
        x = self.inputs
        v = x.decoded("v") if x.v is not None else x.decoded("k")[..., :self.problem.hdim_v]
        finite = v[np.isfinite(v)]
        return float(np.abs(finite).max()) * x.v_descale if finite.size else 1.0


def _check_outputs(problem, outputs, reference, tol, with_lse):
    """Compare against the reference; returns (Check of O, lse max abs or None, ok, reason)."""
    from .reference import take_rows
    ref = reference.get()
    unwritten = int(np.isnan(outputs["o"]).sum())
    if ref.index is None:
        check = compare(outputs["o"], ref.o, tol.atol, tol.rtol)
    else:
        check = compare(take_rows(problem, outputs["o"], ref.index, "o"), ref.o_rows, tol.atol, tol.rtol)
    lse_abs, lse_ok = None, True
    if with_lse:
        if ref.index is None:
            lse_actual, lse_expected = outputs["lse"], ref.lse
        else:
            lse_actual, lse_expected = take_rows(problem, outputs["lse"], ref.index, "lse"), ref.lse_rows
        lse_check = compare(lse_actual, lse_expected, tol.lse_atol, tol.lse_rtol)
        lse_abs, lse_ok = lse_check.max_abs, lse_check.passed
    reasons = []
    if unwritten:
        reasons.append(f"{unwritten} output elements are NaN (unwritten or poisoned input read)")
    if not check.passed:
        reasons.append(f"O: {check.mismatches}/{check.count} outside atol {check.atol:.2e} + rtol {check.rtol:.1e}, "
                       f"max abs {check.max_abs:.3e}")
    if not lse_ok:
        reasons.append(f"LSE max abs {lse_abs:.3e}")
    return check, lse_abs, not reasons, "; ".join(reasons)


def _run_provider(problem, provider, session, reference, timer, measure, device, seed):
    """One tensor provider on the point: (row, (O, tolerance)) with O None when it produced none."""
    from .backends.base import BackendError
    row = _base_row(problem, provider, device, seed)
    backend = session.backend
    output = None
    try:
        prepared = provider.prepare(problem, session)
        row.kernel, row.kernel_version = prepared.kernel, prepared.kernel_version
        row.notes.extend(prepared.notes)
        with_lse = problem.lse and prepared.produces_lse

        def run_and_download():
            if prepared.collect:
                prepared.collect()
            backend.synchronize()
            return session.download_outputs()

        session.poison_outputs()
        prepared.launch()
        outputs = run_and_download()
        t0 = time.perf_counter()
        reference.get()
        row.val_ref_s = time.perf_counter() - t0
        tol = tolerance_for(problem, reference.v_abs_max(), prepared.p_precision)
        check, lse_abs, ok, reason = _check_outputs(problem, outputs, reference, tol, with_lse)
        output = (outputs["o"], tol)
        row.val_mode, row.val_rows = reference.mode, reference.rows
        row.val_max_abs, row.val_max_rel = check.max_abs, check.max_rel
        row.val_mismatch_frac, row.val_atol, row.val_rtol = check.mismatch_frac, check.atol, check.rtol
        row.val_lse_max_abs = lse_abs
        timing = timer.measure(prepared.launch, measure, before_each=session.poison_outputs)
        row.__dict__.update(timing.summary())
        row.l2_flush = measure.l2_flush
        _throughput(row, problem, device)
        if timing.stop_reason == "budget" and row.rel_noise and row.rel_noise > measure.max_noise:
            row.warnings.append(f"noise {row.rel_noise:.1%} above {measure.max_noise:.1%} (time budget reached)")
        after = run_and_download()
        _, _, ok_after, reason_after = _check_outputs(problem, after, reference, tol, with_lse)
        if not ok:
            row.status, row.reason = "mismatch", reason
        elif not ok_after:
            row.status, row.reason = "mismatch", f"after {row.samples} timed launches: {reason_after}"
    except BackendError as e:
        row.status = "crashed" if e.sticky else "failed"
        row.reason = str(e)
    except Exception as e:  # a provider bug or compile failure: keep the tail, go on with the sweep
        row.status = "failed"
        tail = traceback.format_exc().strip().splitlines()[-3:]
        row.reason = f"{type(e).__name__}: {e}" if type(e).__name__ == "CompileFailed" else " | ".join(tail)
    return row, output


def _throughput(row: Result, problem, device) -> None:
    from .archs import get_arch
    t = row.time_s_median
    if not t:
        return
    row.tflops = problem.flops() / t / 1e12
    row.tbps = problem.bytes() / t / 1e12
    spec = get_arch(device.arch)
    peak = spec.get("peak_tflops", {}).get(problem.dtype)
    if peak:
        row.pct_peak_flops = 100.0 * row.tflops / peak
    if spec.get("peak_tbps"):
        row.pct_peak_bw = 100.0 * row.tbps / spec["peak_tbps"]


def _print_table(run_path) -> None:
    from .report import print_runs
    print_runs([run_path])


def run_once(problem, provider, backend, device, seed: int = 0, validate: str = "full", rows_per_head: int = 64,
             measure: MeasureSettings | None = None) -> Result:
    """One point through one provider (validation + a short timing), for tests and notebooks."""
    from .session import PointSession
    from .timing import Timer
    measure = measure or MeasureSettings(warmup=1, min_samples=3, max_samples=3, l2_flush=False)
    inputs = problem.make_inputs(seed)
    session = PointSession(backend, device, problem, inputs)
    timer = Timer(backend, device.l2_bytes)
    try:
        row, _ = _run_provider(problem, provider, session, _Reference(problem, inputs, validate, rows_per_head),
                               timer, measure, device, seed)
        return row
    finally:
        timer.close()
        session.close()
