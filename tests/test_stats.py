import pytest

from fmha_bench import stats
from fmha_bench.stats import FASTER, MISSING, NOT_COMPARABLE, SAME, SLOWER, compare, summarize


def row(time_s, noise=0.0, kernel_version="k1", status="ok", l2_flush=True):
    return {"time_s_median": time_s, "rel_noise": noise, "kernel_version": kernel_version, "status": status,
            "l2_flush": l2_flush}


def test_summarize_reports_median_min_quartiles_and_relative_iqr():
    summary = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert summary == {"time_s_median": 3.0, "time_s_min": 1.0, "time_s_q1": 2.0, "time_s_q3": 4.0,
                       "samples": 5, "rel_noise": pytest.approx(2.0 / 3.0)}


def test_summarize_of_identical_samples_has_zero_noise():
    assert summarize([2e-3] * 10)["rel_noise"] == 0.0


def test_summarize_refuses_an_empty_sample_list():
    with pytest.raises(ValueError):
        summarize([])


def test_change_beyond_the_noise_floor_is_slower():
    verdict = compare(row(1.03), row(1.0))
    assert verdict.verdict == SLOWER
    assert verdict.ratio == pytest.approx(1.03)


def test_change_within_the_noise_floor_is_same():
    assert compare(row(1.015), row(1.0)).verdict == SAME


def test_noisy_measurements_widen_the_same_band():
    # 5% slower: a difference for quiet runs, within 2 * hypot(2%, 2%) = 5.7% for noisy ones.
    assert compare(row(1.05), row(1.0)).verdict == SLOWER
    assert compare(row(1.05, noise=0.02), row(1.0, noise=0.02)).verdict == SAME


def test_unknown_noise_counts_as_zero_so_the_floor_applies():
    assert stats.tolerance(None, None) == stats.NOISE_FLOOR
    assert compare(row(1.03, noise=None), row(1.0, noise=None)).verdict == SLOWER


@pytest.mark.parametrize("new, base", [(1.0, 1.2), (1.0, 1.03), (1.0, 1.01), (2.0, 1.0)])
def test_swapping_the_runs_swaps_faster_and_slower(new, base):
    mirror = {SLOWER: FASTER, FASTER: SLOWER, SAME: SAME}
    assert compare(row(base), row(new)).verdict == mirror[compare(row(new), row(base)).verdict]


def test_changed_kernel_version_is_not_comparable_but_keeps_the_ratio():
    verdict = compare(row(2.0, kernel_version="k2"), row(1.0, kernel_version="k1"))
    assert verdict.verdict == NOT_COMPARABLE
    assert verdict.ratio == pytest.approx(2.0)
    assert "kernel_version" in verdict.reason


@pytest.mark.parametrize("new_status, base_status", [("failed", "ok"), ("ok", "skipped"), ("mismatch", "mismatch")])
def test_a_side_that_did_not_run_ok_is_not_comparable(new_status, base_status):
    verdict = compare(row(1.0, status=new_status), row(1.0, status=base_status))
    assert verdict.verdict == NOT_COMPARABLE
    assert verdict.ratio is None


def test_a_side_without_a_time_is_not_comparable():
    assert compare(row(None), row(1.0)).verdict == NOT_COMPARABLE


def test_different_l2_flush_settings_are_not_comparable():
    assert compare(row(1.0, l2_flush=False), row(1.0, l2_flush=True)).verdict == NOT_COMPARABLE


def test_a_point_without_counterpart_is_missing():
    assert compare(row(1.0), None).verdict == MISSING
    assert compare(None, row(1.0)).verdict == MISSING
