"""Timing on a fake backend with a virtual device clock: event timing with the L2 flush, graph
timing (capture checks, K, rotation over replicas, per-launch division), and the self-checks
(flush size, noise, rotation) that become row warnings."""
from __future__ import annotations

import pytest

from fake_backend import ClockBackend, failing, kernel
from fmha_bench.backends.base import BackendError
from fmha_bench.errors import UserError
from fmha_bench.sweep import load_sweep
from fmha_bench.timing import (GRAPH_REPLAY_TARGET_S, MAX_GRAPH_LAUNCHES, MAX_REPLICAS, GraphTimingError,
                               MeasureSettings, Timer, Timing, graph_timing_wanted, launches_per_replay)

QUICK = MeasureSettings(warmup=1, min_samples=5, max_samples=5)


def _timer(**kw):
    backend = ClockBackend(**kw)
    return backend, Timer(backend, backend.l2_bytes)


# ----------------------------------------------------------------------------- event timing
def test_event_timing_flushes_the_l2_before_every_sample_and_times_launch_overhead_and_kernel():
    backend, timer = _timer(kernel_s=2e-6, launch_s=5e-6)
    poisons = []
    timing = timer.measure(kernel(backend, "k"), QUICK, before_each=lambda: poisons.append(1))
    assert timing.times_s == pytest.approx([7e-6] * 5)
    assert [ptr for ptr, _ in backend.memsets] == [timer.flush.ptr] * 5   # samples only, not warmup
    assert len(poisons) == 1 + 5
    assert timing.summary()["timing_mode"] == "events" and timing.summary()["l2_flush"] is True


def test_event_timing_without_flush_says_so_in_the_row_fields():
    backend, timer = _timer()
    timing = timer.measure(kernel(backend, "k"), MeasureSettings(warmup=0, min_samples=3, max_samples=3,
                                                                 l2_flush=False))
    assert backend.memsets == [] and timing.flush_bytes == 0 and timing.summary()["l2_flush"] is False


# ----------------------------------------------------------------------------- graph timing
def test_graph_time_per_launch_is_the_replay_divided_by_k_without_the_launch_overhead():
    backend, timer = _timer(kernel_s=2e-6, launch_s=5e-6)
    timing = timer.measure_graph([kernel(backend, "r0")], QUICK)
    k = timing.launches_per_replay
    assert k == launches_per_replay(7e-6, 1)   # estimated from a one-launch replay: launch cost + kernel
    assert timing.times_s == pytest.approx([(5e-6 + k * 2e-6) / k] * 5)   # one launch cost per replay of k kernels
    assert (timing.mode, timing.replicas, timing.flush_bytes) == ("graph", 1, 0)
    summary = timing.summary()
    assert summary["timing_mode"] == "graph" and summary["l2_flush"] is False
    assert f"{k} launches per replay" in timing.note() and "1 input replica" in timing.note()


def test_graph_launches_rotate_round_robin_over_the_replicas_in_whole_rounds():
    backend, timer = _timer(kernel_s=3e-6, launch_s=0.0)
    timing = timer.measure_graph([kernel(backend, f"r{i}") for i in range(3)], QUICK)
    k = timing.launches_per_replay
    assert k % 3 == 0 and k * 3e-6 >= GRAPH_REPLAY_TARGET_S
    replay = backend.ran[-k:]
    assert replay == ["r0", "r1", "r2"] * (k // 3)
    assert timing.replicas == 3


def test_graph_timing_frees_every_graph_it_made():
    backend, timer = _timer()
    timer.measure_graph([kernel(backend, "a"), kernel(backend, "b")], QUICK)
    assert backend.graphs_made == 2 and not backend.live_graphs and not backend.live_execs


@pytest.mark.parametrize("launch_s,replicas,expected", [
    (2e-6, 1, 100),                       # 200 us / 2 us
    (2e-6, 7, 105),                       # rounded up to whole rounds over 7 replicas
    (1e-3, 4, 4),                         # one long launch per replica: one round
    (1e-9, 1, MAX_GRAPH_LAUNCHES),        # capped
    (1e-9, 100, 100 * (MAX_GRAPH_LAUNCHES // 100)),   # capped to whole rounds
])
def test_launches_per_replay_aims_at_the_replay_target_in_whole_rounds(launch_s, replicas, expected):
    assert launches_per_replay(launch_s, replicas) == expected


def test_a_launch_that_captures_no_kernel_is_refused_not_timed():
    backend, timer = _timer()
    with pytest.raises(GraphTimingError, match="did not contain the kernel"):
        timer.measure_graph([kernel(backend, "k", stream="side")], QUICK)   # launches on its own stream
    assert backend.capture is None and not backend.live_graphs


def test_a_graph_whose_kernel_count_is_not_k_times_one_launch_is_refused():
    backend, timer = _timer()

    def two_kernels():
        backend.launch("a", (1, 1, 1), (1, 1, 1), 0, None)
        backend.launch("b", (1, 1, 1), (1, 1, 1), 0, None)

    with pytest.raises(GraphTimingError, match=r"holds \d+ kernels, not \d+ x 1"):
        timer.measure_graph([kernel(backend, "a"), two_kernels], QUICK)   # replica 1 launches twice as many
    assert not backend.live_graphs and not backend.live_execs


def test_a_runtime_refusing_the_capture_becomes_a_graph_timing_error_and_ends_the_capture():
    backend, timer = _timer()
    with pytest.raises(GraphTimingError, match="graph timing failed: .*operation not permitted when capturing"):
        timer.measure_graph([failing(BackendError("cuMemcpy: operation not permitted when capturing"))], QUICK)
    assert backend.capture is None and not backend.live_graphs


def test_a_lost_context_during_graph_timing_stays_a_sticky_backend_error():
    backend, timer = _timer()
    with pytest.raises(BackendError) as e:
        timer.measure_graph([failing(BackendError("illegal address", sticky=True))], QUICK)
    assert e.value.sticky and not isinstance(e.value, GraphTimingError)


def test_a_backend_without_graphs_is_a_graph_timing_error():
    backend, timer = _timer(graphs=False)
    with pytest.raises(GraphTimingError, match="cannot capture graphs"):
        timer.measure_graph([kernel(backend, "k")], QUICK)


@pytest.mark.parametrize("mode,graph_safe,median_s,wanted", [
    ("off", True, 1e-6, False), ("on", True, 1e-3, True), ("on", False, 1e-6, False),
    ("auto", True, 5e-6, True), ("auto", True, 50e-6, False), ("auto", False, 5e-6, False),
])
def test_graph_timing_is_wanted_per_mode_for_graph_safe_launches(mode, graph_safe, median_s, wanted):
    events = Timing([median_s] * 5, "noise", 1 << 20)
    assert graph_timing_wanted(MeasureSettings(graphs=mode), graph_safe, events) is wanted


# ----------------------------------------------------------------------------- self-checks
def test_noise_above_the_bound_is_reported_whatever_stopped_the_loop():
    noisy = [1.0, 1.0, 1.5, 2.0, 2.0]
    settings = MeasureSettings(max_noise=0.03)
    assert "max_samples reached after 5 samples" in Timing(noisy, "max_samples", 0).noise_warning(settings)
    assert "time budget reached" in Timing(noisy, "budget", 0).noise_warning(settings)
    assert Timing([1.0] * 5, "noise", 0).noise_warning(settings) is None
    assert Timing(noisy, "max_samples", 0).noise_warning(MeasureSettings(max_noise=2.0)) is None


def test_flush_warning_when_the_l2_size_is_unknown_or_the_buffer_does_not_exceed_it():
    _, timer = _timer(l2_bytes=0)
    assert "L2 size unknown" in timer.flush_warning(MeasureSettings())
    _, timer = _timer(l2_bytes=40 << 20)
    assert timer.flush_warning(MeasureSettings()) is None
    assert timer.flush.nbytes == 80 << 20
    _, timer = _timer(l2_bytes=40 << 20, short_alloc=41 << 20)   # the allocator handed back less than asked
    assert "not larger than the L2" in timer.flush_warning(MeasureSettings())
    assert timer.flush_warning(MeasureSettings(l2_flush=False)) is None


def test_replicas_together_exceed_twice_the_l2_unless_capped_which_is_a_warning():
    _, timer = _timer(l2_bytes=40 << 20)
    settings = MeasureSettings()
    replicas = timer.replicas_for(1 << 20, settings)
    assert replicas == 81 and replicas * (1 << 20) > 2 * (40 << 20)
    assert timer.rotation_warning(1 << 20, replicas, settings) is None
    assert timer.replicas_for(1 << 30, settings) == 1     # one input set is already larger than the L2
    small = timer.replicas_for(16 << 10, settings)
    assert small == MAX_REPLICAS
    assert "may read inputs from the L2" in timer.rotation_warning(16 << 10, small, settings)


def test_rotate_bytes_overrides_the_rotation_target():
    _, timer = _timer(l2_bytes=40 << 20)
    assert timer.replicas_for(1 << 20, MeasureSettings(rotate_bytes=4 << 20)) == 5


# ----------------------------------------------------------------------------- sweep settings
def test_sweep_measure_section_reads_graph_settings(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("measure: {graphs: auto, rotate_bytes: 1048576}\n")
    measure = load_sweep(path).measure
    assert (measure.graphs, measure.rotate_bytes) == ("auto", 1 << 20)


@pytest.mark.parametrize("text,message", [
    ("graphs: sometimes", "measure: graphs: unknown mode 'sometimes'; one of off, on, auto"),
    ("rotate_bytes: -1", "measure: rotate_bytes: must be >= 0"),
])
def test_sweep_rejects_bad_graph_settings_on_their_line(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: x\nmeasure:\n  {text}\n")
    with pytest.raises(UserError) as e:
        load_sweep(path)
    assert message in str(e.value) and f"{path}:3" in str(e.value)
