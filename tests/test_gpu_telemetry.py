"""Telemetry and graph timing on a real GPU (run on the device machine: pytest -m gpu)."""
from __future__ import annotations

import numpy as np
import pytest
from gpu_support import open_gpu

from fmha_bench.problem import Problem

pytestmark = pytest.mark.gpu

DECODE = Problem(batch=8, seqlen_q=1, seqlen_k=1024, nhead_q=16, nhead_k=2, hdim_q=128, dtype="bf16")
SPLIT = Problem(family="paged", batch=2, seqlen_q=1, seqlen_k=4096, nhead_q=8, nhead_k=2, hdim_q=128, mask="b",
                page_size=16, lse=True, num_splits=3)


@pytest.fixture(scope="module")
def gpu():
    return open_gpu()


@pytest.fixture
def point(gpu):
    """(backend, device, provider, problem -> (session, prepared)), sessions closed afterwards."""
    from fmha_bench.providers.fmha import FmhaProvider
    from fmha_bench.session import PointSession
    backend, device = gpu
    provider, sessions = FmhaProvider(), []

    def prepare(problem):
        reason = provider.supports(problem, device)
        if reason:
            pytest.skip(reason)
        session = PointSession(backend, device, problem, problem.make_inputs(0))
        sessions.append(session)
        return session, provider.prepare(problem, session)

    yield backend, device, provider, prepare
    for session in sessions:
        session.close()


def test_the_backend_reports_a_bus_id_that_telemetry_finds(gpu):
    from fmha_bench.telemetry import assess, open_telemetry
    _, device = gpu
    assert device.pci_bus_id.count(":") == 2, device.pci_bus_id
    reasons = []
    source = open_telemetry(device, reasons)
    assert source is not None, reasons
    sample = source.sample()
    assert "error" not in sample, sample
    assert sample["sm_clock_mhz"] > 0 and sample["max_sm_clock_mhz"] >= 500
    assert 5 <= sample["temperature_c"] <= 110 and sample["power_limit_w"] > 50
    assert isinstance(sample["throttle"], list)
    assert isinstance(assess(sample, source.sample()), list)
    source.close()


def test_nvidia_smi_fallback_reads_the_same_gpu(gpu):
    from fmha_bench import telemetry
    _, device = gpu
    if device.backend != "cuda":
        pytest.skip("NVIDIA only")
    try:
        source = telemetry.NvidiaSmiTelemetry(telemetry._find_tool("nvidia-smi"), device.pci_bus_id)
    except telemetry.TelemetryError as e:
        pytest.skip(str(e))
    sample = source.sample()
    assert "error" not in sample and sample["sm_clock_mhz"] > 0 and isinstance(sample["throttle"], list), sample


@pytest.mark.parametrize("problem,kernels", [(DECODE, 1), (SPLIT, 2)])
def test_capturing_one_fmha_launch_holds_its_kernels(point, problem, kernels):
    backend, _, _, prepare = point
    _, prepared = prepare(problem)
    assert prepared.graph_safe
    backend.begin_capture()
    prepared.launch()
    graph = backend.end_capture()
    try:
        assert backend.graph_kernel_count(graph) == kernels
    finally:
        backend.destroy_graph(graph)


def test_graph_timed_decode_is_close_to_event_timed_and_writes_the_same_output(point):
    from fmha_bench.timing import MeasureSettings, Timer
    backend, device, provider, prepare = point
    session, prepared = prepare(DECODE)
    settings = MeasureSettings(warmup=3, min_samples=20, max_samples=200)
    timer = Timer(backend, device.l2_bytes)
    replicas = []
    try:
        session.poison_outputs()
        prepared.launch()
        backend.synchronize()
        expected = session.download_outputs()["o"]
        events = timer.measure(prepared.launch, settings, before_each=session.poison_outputs)
        count = timer.replicas_for(session.input_bytes(), settings)
        replicas = [session.replica() for _ in range(count - 1)]
        launches = [prepared.launch] + [provider.prepare(DECODE, r).launch for r in replicas]
        session.poison_outputs()
        graph = timer.measure_graph(launches, settings)
        backend.synchronize()
        assert np.array_equal(session.download_outputs()["o"], expected)
    finally:
        for replica in replicas:
            replica.close()
        timer.close()
    ratio = graph.summary()["time_s_median"] / events.summary()["time_s_median"]
    print(f"graph {graph.summary()['time_s_median'] * 1e6:.2f} us (K {graph.launches_per_replay}, "
          f"{graph.replicas} replicas) vs events {events.summary()['time_s_median'] * 1e6:.2f} us: {ratio:.2f}")
    assert graph.mode == "graph" and graph.launches_per_replay % graph.replicas == 0
    assert 0.2 < ratio < 1.5
