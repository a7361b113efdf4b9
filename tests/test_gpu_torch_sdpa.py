"""torch SDPA providers on a real GPU (device machine: pytest -m gpu): each forced backend runs
on our device buffers, matches the NumPy reference, and agrees with our kernel point by point."""
from __future__ import annotations

import pytest
from gpu_support import open_gpu

from fmha_bench.problem import Problem

pytestmark = pytest.mark.gpu
BACKENDS = ["flash", "cudnn", "efficient", "math"]


@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("torch")
    return open_gpu()


def _provider(name):
    from fmha_bench.providers.torch_sdpa import TorchSdpaProvider
    return TorchSdpaProvider(name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("problem", [
    Problem(batch=2, seqlen_q=256, nhead_q=8, hdim_q=128, mask="0"),
    Problem(batch=2, seqlen_q=256, nhead_q=8, hdim_q=64, mask="b", dtype="bf16"),
    Problem(batch=1, seqlen_q=100, seqlen_k=300, nhead_q=8, nhead_k=2, hdim_q=128, mask="b"),   # lower-right, GQA
    Problem(batch=1, seqlen_q=100, seqlen_k=300, nhead_q=4, hdim_q=128, mask="t"),              # top-left
    Problem(batch=1, seqlen_q=200, seqlen_k=300, nhead_q=4, hdim_q=128, mask="b:32,8,4"),       # dense bool mask
    Problem(mode="group", batch=3, seqlen_q=[64, 64, 64], seqlen_k=[80, 80, 80], nhead_q=4, hdim_q=64, mask="b"),
], ids=lambda p: p.name())
def test_forced_backend_matches_reference_or_says_why_not(gpu, backend, problem):
    from fmha_bench.point_runner import run_once
    backend_rt, device = gpu
    provider = _provider(backend)
    reason = provider.supports(problem, device)
    if reason:
        assert provider.name in reason or "SDPA" in reason, reason   # a reason that names who refused
        pytest.skip(reason)
    row = run_once(problem, provider, backend_rt, device)
    assert row.status == "ok", f"{problem.name()}: {row.reason}"
    assert row.time_s_median and row.time_s_median > 0


def test_unsupported_features_are_skipped_with_a_reason(gpu):
    _, device = gpu
    provider = _provider("math")
    for problem, words in [(Problem(soft_cap=30.0), "soft cap"), (Problem(sink=True), "sink"),
                           (Problem(dtype="fp8_e4m3fn"), "fp8"), (Problem(seqlen_q=300, seqlen_k=200, mask="b"), "no visible key"),
                           (Problem(mode="group", batch=2, seqlen_q=[5, 7]), "unequal")]:
        reason = provider.supports(problem, device)
        assert reason and words in reason, (problem.name(), reason)


def test_sweep_with_our_kernel_and_sdpa_cross_checks_every_pair(gpu, tmp_path):
    """The runner compares each pair of providers' outputs on the same point (row.cross)."""
    from fmha_bench.runner import run_sweep
    from fmha_bench.store import load_run
    from fmha_bench.sweep import SweepOptions, load_sweep
    sweep_file = tmp_path / "pair.yaml"
    sweep_file.write_text("defaults: {batch: 1, seqlen_q: 512, nhead_q: 8, hdim_q: 128}\n"
                          "axes: {mask: [none, causal], dtype: [fp16, bf16]}\n"
                          "providers: [fmha, torch-sdpa:math, torch-sdpa:flash]\n"
                          "measure: {warmup: 1, min_samples: 3, max_samples: 3, l2_flush: false}\n")
    sweep = load_sweep(sweep_file)
    outcome = run_sweep(sweep, sweep.expansion().points, SweepOptions(results_dir=tmp_path / "runs", run_id="pair"))
    run = load_run(outcome.run_path)
    assert outcome.exit_code == 0
    assert len(run.rows) == 12
    for row in run.rows:
        assert row["status"] == "ok", row["reason"]
        assert set(row["cross"]) == {"fmha", "torch-sdpa:math", "torch-sdpa:flash"} - {row["provider"]}
        assert all(entry["ok"] for entry in row["cross"].values()), row["cross"]
