"""Parity verdicts (parity.judge) and the runner's pairwise output comparison, without a GPU."""
from __future__ import annotations

import numpy as np

from fmha_bench.parity import failing, judge
from fmha_bench.point_runner import _cross_check
from fmha_bench.schema import Result
from fmha_bench.validate import Tolerance


def _row(provider, status="ok", point="p1", reason="", cross=None):
    return Result(point_id=point, name=f"point {point}", problem={}, provider=provider, status=status, reason=reason,
                  cross=cross or {})


def test_cross_check_fills_both_rows_of_each_pair():
    a, b, c = _row("a"), _row("b"), _row("c")
    o = np.linspace(-1, 1, 64, dtype=np.float32)
    tol = Tolerance(atol=1e-3, rtol=0.0)
    _cross_check({"a": (a, (o, tol)), "b": (b, (o + 5e-4, tol)), "c": (c, (o + 0.1, tol))})
    assert a.cross["b"]["ok"] and b.cross["a"]["ok"]            # 5e-4 within 1e-3 + 1e-3
    assert not a.cross["c"]["ok"] and not c.cross["b"]["ok"]    # 0.1 is not
    assert np.isclose(c.cross["a"]["max_abs"], 0.1, rtol=1e-5)
    assert c.cross["a"]["mismatch_frac"] == 1.0


def test_cross_check_treats_nan_as_disagreement():
    a, b = _row("a"), _row("b")
    o = np.zeros(8, dtype=np.float32)
    bad = o.copy()
    bad[3] = np.nan
    _cross_check({"a": (a, (o, Tolerance(1e-3, 0))), "b": (b, (bad, Tolerance(1e-3, 0)))})
    assert not a.cross["b"]["ok"]


def test_agreeing_providers_agree():
    cross = {"ok": True, "max_abs": 1e-4, "max_rel": 1e-3, "mismatch_frac": 0.0}
    verdicts = judge([_row("a", cross={"b": cross}), _row("b", cross={"a": cross})])
    assert [v.verdict for v in verdicts] == ["agree"]
    assert verdicts[0].max_cross_abs == 1e-4
    assert not failing(verdicts)


def test_output_disagreement_between_providers_is_a_mismatch():
    bad = {"ok": False, "max_abs": 0.5, "max_rel": 1.0, "mismatch_frac": 0.25}
    verdicts = judge([_row("a", cross={"b": bad}), _row("b", cross={"a": bad})])
    assert verdicts[0].verdict == "mismatch"
    assert len(verdicts[0].details) == 1 and "a vs b" in verdicts[0].details[0]   # one line per pair, not two


def test_reference_mismatch_of_one_provider_fails_the_point():
    verdicts = judge([_row("a"), _row("b", status="mismatch", reason="O: 3/10 outside")])
    assert verdicts[0].verdict == "mismatch" and "b: O: 3/10" in verdicts[0].details[0]
    assert failing(verdicts) == verdicts


def test_one_ok_and_one_failed_is_a_status_disagreement():
    verdicts = judge([_row("a"), _row("ck", status="failed", reason="exit code 1")])
    assert verdicts[0].verdict == "status"
    assert "ck failed: exit code 1" in verdicts[0].details[0]


def test_unsupported_provider_is_not_a_disagreement():
    verdicts = judge([_row("a"), _row("b", status="skipped", reason="soft cap")])
    assert verdicts[0].verdict == "single"
    assert not failing(verdicts)


def test_verdicts_follow_point_order():
    rows = [_row("a", point="p2"), _row("a", point="p1"), _row("b", point="p2")]
    assert [v.point_id for v in judge(rows)] == ["p2", "p1"]


# ----------------------------------------------------------------------------- the parity table
def test_parity_table_lists_verdicts_and_exit_code_flags_disagreements(tmp_path, capsys):
    from fmha_bench.cli.parity_cmd import show_parity
    from synthetic_runs import write_three_provider_run
    run = write_three_provider_run(tmp_path)
    code = show_parity(run, "fmha", csv_path=tmp_path / "p.csv", markdown_path=tmp_path / "p.md")
    assert code == 1                                   # ck failed on one decode point, mismatched on another
    err = capsys.readouterr().err
    assert "2 point(s) disagree" in err and "ck failed: exit code 1" in err
    markdown = (run / "parity.md").read_text()
    assert "verdict" in markdown and "status" in markdown and "mismatch" in markdown and "agree" in markdown
    assert (tmp_path / "p.md").read_text() == markdown
    import pandas as pd
    frame = pd.read_csv(tmp_path / "p.csv")
    assert list(frame["verdict"]).count("agree") == 7  # 6 prefill (fmha + cudnn) and the ck-ok decode point
    assert "torch-sdpa:cudnn:speedup" in frame.columns


def test_parity_of_agreeing_providers_exits_zero(tmp_path):
    from fmha_bench.cli.parity_cmd import show_parity
    from synthetic_runs import write_three_provider_run
    run = write_three_provider_run(tmp_path, providers=("fmha", "torch-sdpa:cudnn"))
    assert show_parity(run, None) == 0


def test_torch_refusal_warnings_become_one_readable_reason():
    from fmha_bench.providers.torch_sdpa import _refusal_reasons
    said = _refusal_reasons([
        "Memory efficient kernel not used because: (Triggered internally at /pytorch/aten/sdp_utils.cpp:123.)",
        "Memory Efficient attention has been runtime disabled. (Triggered internally at /x.cpp:1.)",
        "Flash attention kernel not used because: (Triggered internally at /x.cpp:2.)",
        "Flash attention does not support head dims that differ (Triggered internally at /x.cpp:3.)",
    ])
    assert said == "Flash attention does not support head dims that differ"
