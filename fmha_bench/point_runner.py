"""One point through its providers, inside one process that owns the GPU (a sweep worker).

Per point: inputs made once and uploaded once, the NumPy reference computed before any provider
starts (so a per-provider timeout measures GPU work, not the CPU reference); for each provider:
outputs poisoned, one launch, validated; then timed (timing.py); the output is validated again
after the timing loop (a race that only shows under repetition fails the point). Every pair of
providers' outputs is cross-checked. A provider that loses the GPU context ends the point: its
row is `crashed` and the rows after it are not run (the worker is restarted by the coordinator).
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .schema import Result
from .timing import MeasureSettings, Timer, graph_timing_wanted
from .validate import compare, tolerance_for

FULL_VALIDATION_LIMIT = 1 << 26   # visible (row, key) pairs x query heads under which `auto` checks every row


@dataclass
class PointSettings:
    """How every point of a run is measured and checked."""
    measure: MeasureSettings
    validate_mode: str
    rows_per_head: int
    seed: int


@dataclass
class Instruments:
    """What a worker sets up once and every point uses: the GPU, its timer (flush buffer and
    events) and its telemetry (None when no source works, `telemetry_missing` says why)."""
    backend: object
    device: object
    timer: Timer
    telemetry: object = None
    telemetry_missing: str = ""

    @classmethod
    def open(cls, backend) -> "Instruments":
        from .telemetry import open_telemetry
        device = backend.device_info()
        reasons = []
        telemetry = open_telemetry(device, reasons)
        return cls(backend, device, Timer(backend, device.l2_bytes), telemetry, "; ".join(reasons))

    def sample(self):
        return self.telemetry.sample() if self.telemetry else None

    def record(self, row: Result, before) -> None:
        """The GPU's clocks, temperature and power around a provider's run, and what they warn of."""
        from .telemetry import assess
        if self.telemetry is None:
            row.telemetry = {"unavailable": self.telemetry_missing or "no telemetry source"}
            return
        after = self.sample()
        row.telemetry = {"before": before, "after": after}
        row.warnings += assess(before, after)

    def close(self) -> None:
        self.timer.close()
        if self.telemetry is not None:
            self.telemetry.close()


def point_row(point, provider_name: str, device, seed: int, status: str = "ok", reason: str = "") -> Result:
    """A row of `point` for one provider with the point's identity filled in (and its FLOPs and
    bytes when the point is a valid problem)."""
    problem = point.problem
    if problem is None:
        row = Result(point_id=point.id, name=point.name, problem=dict(point.resolved), provider=provider_name)
    else:
        row = Result(point_id=problem.key(), name=problem.name(), problem=problem.all_fields(),
                     provider=provider_name, flops=problem.flops(), bytes=problem.bytes())
    row.device, row.device_index, row.arch, row.seed = device.name, device.index, device.arch, seed
    row.status, row.reason = status, reason
    return row


def run_point(point, providers, tools: Instruments, settings: PointSettings,
              on_start: Optional[Callable[[str], None]] = None) -> list:
    """The point's rows, one per provider in order. `on_start(provider name)` is called before
    each provider touches the GPU (the coordinator's timeout clock)."""
    seed, measure, device = settings.seed, settings.measure, tools.device
    if point.problem is None:
        return [point_row(point, p.name, device, seed, "skipped", point.skip_reason) for p in providers]
    problem = point.problem
    reasons = {p.name: p.supports(problem, device) for p in providers}
    session = reference = None
    if any(p.takes_tensors and not reasons[p.name] for p in providers):
        from .session import PointSession
        inputs = problem.make_inputs(seed)
        reference = _Reference(problem, inputs, settings.validate_mode, settings.rows_per_head)
        reference.get()
        session = PointSession(tools.backend, device, problem, inputs)
    rows, outputs = [], {}
    try:
        for provider in providers:
            if reasons[provider.name]:
                rows.append(point_row(point, provider.name, device, seed, "skipped", reasons[provider.name]))
                continue
            if on_start:
                on_start(provider.name)
            before = tools.sample()
            if not provider.takes_tensors:
                row, output = _run_external(point, provider, device, measure, seed), None
            else:
                row, output = _run_provider(point, provider, session, reference, tools.timer, measure, seed)
            tools.record(row, before)
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


def _run_external(point, provider, device, measure, seed) -> Result:
    """A self-timed upstream binary: its own inputs, its own timing and its own check."""
    problem = point.problem
    row = point_row(point, provider.name, device, seed)
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
        self._qk_norm_product = None
        self.seconds = None

    def get(self):
        if self._out is None:
            from .reference import attention
            start = time.perf_counter()
            self._out = attention(self.problem, self.inputs, sampled_rows=self.rows or None)
            self.seconds = time.perf_counter() - start
        return self._out

    def v_abs_max(self) -> float:
        x = self.inputs
        v = x.decoded("v") if x.v is not None else x.decoded("k")[..., :self.problem.hdim_v]
        finite = v[np.isfinite(v)]
        return float(np.abs(finite).max()) * x.v_descale if finite.size else 1.0

    def qk_norm_product(self) -> float:
        """Largest dequantised query row norm times largest key row norm (validate.tolerance_for),
        computed once per point."""
        if self._qk_norm_product is None:
            x = self.inputs
            q, k = x.decoded("q"), x.decoded("k")[..., :self.problem.hdim_q]
            self._qk_norm_product = _largest_row_norm(q) * x.q_descale * _largest_row_norm(k) * x.k_descale
        return self._qk_norm_product


def _largest_row_norm(values: np.ndarray) -> float:
    """Largest Euclidean norm along the last axis over rows without NaN (unused cache slots);
    float32 sums, no float64 copy of a cache of GBs (a tolerance bound needs no more)."""
    norms = np.sqrt(np.einsum("...d,...d->...", values, values))
    finite = norms[np.isfinite(norms)]
    return float(finite.max()) if finite.size else 0.0


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


def _run_provider(point, provider, session, reference, timer, measure, seed):
    """One tensor provider on the point: (row, (O, tolerance)) with O None when it produced none."""
    from .backends.base import BackendError
    problem, device = point.problem, session.device
    row = point_row(point, provider.name, device, seed)
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
        row.val_ref_s = reference.seconds
        tol = tolerance_for(problem, reference.v_abs_max(), prepared.p_precision,
                            reference.qk_norm_product() if problem.dt.is_fp8 else 0.0)
        check, lse_abs, ok, reason = _check_outputs(problem, outputs, reference, tol, with_lse)
        output = (outputs["o"], tol)
        row.val_mode, row.val_rows = reference.mode, reference.rows
        row.val_max_abs, row.val_max_rel = check.max_abs, check.max_rel
        row.val_mismatch_frac, row.val_atol, row.val_rtol = check.mismatch_frac, check.atol, check.rtol
        row.val_lse_max_abs = lse_abs
        timing = timer.measure(prepared.launch, measure, before_each=session.poison_outputs)
        if graph_timing_wanted(measure, prepared.graph_safe, timing):
            timing = _graph_timing(provider, problem, prepared, session, timer, measure, timing, row)
        row.__dict__.update(timing.summary())
        _throughput(row, problem, device)
        row.warnings += [w for w in (timing.noise_warning(measure),
                                     timer.flush_warning(measure) if timing.mode == "events" else None) if w]
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


def _graph_timing(provider, problem, prepared, session, timer, measure, event_timing, row):
    """The point timed as a captured graph of launches over rotating copies of its inputs (tiny
    decode-like points, where launch overhead and a warm L2 would dominate events); the event
    timing stands, with a warning, when the graph cannot be captured or lacks the kernel."""
    from .timing import GraphTimingError
    count, replicas = timer.replicas_for(session.input_bytes(), measure), []
    event_us = event_timing.summary()["time_s_median"] * 1e6
    try:
        replicas = [session.replica() for _ in range(count - 1)]
        launches = [prepared.launch] + [provider.prepare(problem, replica).launch for replica in replicas]
        session.poison_outputs()          # the re-validation after timing reads what the graph wrote
        timing = timer.measure_graph(launches, measure)
        row.notes.append(f"{timing.note()}; event-timed median {event_us:.2f} us")
        rotation = timer.rotation_warning(session.input_bytes(), count, measure)
        if rotation:
            row.warnings.append(rotation)
        return timing
    except GraphTimingError as e:
        row.warnings.append(f"graph timing not used: {e}")
        return event_timing
    finally:
        for replica in replicas:
            replica.close()


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




def run_once(problem, provider, backend, device, seed: int = 0, validate: str = "full", rows_per_head: int = 64,
             measure: MeasureSettings | None = None) -> Result:
    """One point through one provider (validation + a short timing), for tests and notebooks."""
    from .session import PointSession
    from .sweep import Point
    measure = measure or MeasureSettings(warmup=1, min_samples=3, max_samples=3, l2_flush=False)
    inputs = problem.make_inputs(seed)
    session = PointSession(backend, device, problem, inputs)
    timer = Timer(backend, device.l2_bytes)
    point = Point(problem.key(), problem.name(), {}, problem.all_fields(), problem, None, "run_once")
    try:
        row, _ = _run_provider(point, provider, session, _Reference(problem, inputs, validate, rows_per_head),
                               timer, measure, seed)
        return row
    finally:
        timer.close()
        session.close()
