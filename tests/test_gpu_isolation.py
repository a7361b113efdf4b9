"""On a real GPU: the test-only selftest kernels fault, trap, hang and abort, and each costs one
row while fmha's rows stay ok (the worker is restarted around them)."""
import pytest

pytestmark = pytest.mark.gpu


def test_selftest_kernels_cost_one_row_each_and_fmha_rows_stay_ok(tmp_path):
    from fmha_bench.backends import BackendUnavailable, open_backend
    from fmha_bench.runner import run_sweep
    from fmha_bench.sweep import SweepOptions, load_sweep
    try:
        open_backend(0)
    except BackendUnavailable as e:
        pytest.skip(str(e))
    sweep_file = tmp_path / "iso.yaml"
    sweep_file.write_text("defaults: {batch: 1, seqlen_q: 256, nhead_q: 4, hdim_q: 64}\n"
                          "axes: {mask: [none, causal]}\n"
                          "measure: {warmup: 1, min_samples: 3, max_samples: 3, l2_flush: false}\n")
    sweep = load_sweep(sweep_file)
    options = SweepOptions(providers="fmha,selftest:fault,selftest:trap,selftest:hang,selftest:abort",
                           results_dir=tmp_path / "runs", timeout=15)
    outcome = run_sweep(sweep, sweep.expansion().points, options, show_table=False)
    statuses = {(row["name"], row["provider"]): (row["status"], row["reason"]) for row in outcome.rows}
    assert outcome.complete and len(statuses) == 10
    for (name, provider), (status, reason) in statuses.items():
        expected = {"fmha": "ok", "selftest:hang": "timeout"}.get(provider, "crashed")
        assert status == expected, (name, provider, reason)
    fault = [reason for (_, provider), (_, reason) in statuses.items() if provider == "selftest:fault"]
    assert all("ILLEGAL_ADDRESS" in reason for reason in fault), fault
