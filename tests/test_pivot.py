import pandas as pd
import pytest
from click.testing import CliRunner

import synthetic_runs as synth
from fmha_bench import pivot, report
from fmha_bench.cli import cli
from fmha_bench.errors import EXIT_USAGE, UserError
from fmha_bench.store import load_run

CUDNN = "torch-sdpa:cudnn"


def invoke(*args):
    return CliRunner().invoke(cli, ["report", *map(str, args)])


def rows_of(*providers):
    return [row.to_json() for provider in providers for row in synth.provider_rows(provider)]


@pytest.fixture
def three(tmp_path):
    """One run of fmha, cudnn and ck; its meta lists cudnn first."""
    return synth.write_three_provider_run(tmp_path / "results")


def by_name(frame):
    return frame.set_index("name")


def test_pivot_has_one_row_per_point_and_the_baseline_provider_first():
    frame = pivot.pivot_by_provider(rows_of(CUDNN, "fmha", "ck"), providers=[CUDNN, "fmha", "ck"])
    assert list(frame["point_id"]) == [p.key() for p in synth.PREFILL + synth.DECODE]
    provider_columns = [c for c in frame.columns if ":" in c]
    assert provider_columns == [f"{p}:{m}" for p in ("fmha", CUDNN, "ck")
                                for m in (*pivot.METRICS, *(["speedup"] if p != "fmha" else []))]


def test_speedup_is_baseline_time_over_provider_time():
    frame = by_name(pivot.pivot_by_provider(rows_of("fmha", CUDNN, "ck")))
    prefill, decode = synth.PREFILL[0].name(), synth.DECODE[1].name()
    assert frame.loc[prefill, f"{CUDNN}:speedup"] == pytest.approx(synth.PREFILL_SPEEDUP)
    assert frame.loc[decode, f"{CUDNN}:speedup"] == pytest.approx(synth.DECODE_SPEEDUP)
    assert frame.loc[decode, "ck:speedup"] == pytest.approx(0.5)  # ck is 2x slower than fmha there


def test_speedup_is_empty_unless_both_rows_ran_ok():
    frame = by_name(pivot.pivot_by_provider(rows_of("fmha", "ck")))
    failed, mismatch = synth.DECODE[0].name(), synth.DECODE[2].name()
    assert frame.loc[failed, "ck:status"] == "failed"
    assert frame.loc[mismatch, "ck:median_ms"] == pytest.approx(synth.fmha_time(synth.DECODE[2]) * 1e3)
    assert frame["ck:speedup"].isna().sum() == len(frame) - 1  # only the ok page-16 point has one


def test_provider_columns_carry_status_time_throughput_and_max_abs_in_display_units():
    frame = by_name(pivot.pivot_by_provider(rows_of("fmha", "ck")))
    point = synth.DECODE[2]
    row = frame.loc[point.name()]
    assert row["fmha:status"] == "ok"
    assert row["fmha:median_ms"] == pytest.approx(synth.fmha_time(point) * 1e3)
    assert row["fmha:tbps"] == pytest.approx(1.0)
    assert row["fmha:max_abs"] == 2e-3 and row["ck:max_abs"] == 0.5
    assert row["bound"] == "memory"
    assert frame.loc[synth.PREFILL[0].name(), "bound"] == "compute"


def test_swept_fields_are_the_problem_fields_that_vary():
    frame = pivot.pivot_by_provider(rows_of("fmha"))
    fields = [c for c in frame.columns if c not in pivot.POINT_COLUMNS and ":" not in c]
    assert fields == ["family", "batch", "seqlen_q", "seqlen_k", "nhead_q", "nhead_k", "hdim_q", "hdim_v",
                      "dtype", "mask", "page_size"]
    only_decode = [row for row in rows_of("fmha") if row["problem"]["family"] == "paged"]
    assert [c for c in pivot.pivot_by_provider(only_decode).columns if c not in pivot.POINT_COLUMNS
            and ":" not in c] == ["page_size"]


def test_a_provider_without_a_row_for_a_point_leaves_its_cells_empty():
    rows = rows_of("fmha") + [synth.ok(synth.PREFILL[0], CUDNN, 1e-3).to_json()]
    frame = by_name(pivot.pivot_by_provider(rows))
    assert frame[f"{CUDNN}:median_ms"].notna().sum() == 1
    assert pd.isna(frame.loc[synth.PREFILL[1].name(), f"{CUDNN}:status"])


def test_default_baseline_is_fmha_else_the_first_listed_provider():
    assert pivot.choose_baseline([CUDNN, "fmha", "ck"]) == "fmha"
    assert pivot.choose_baseline(["ck", CUDNN]) == "ck"
    frame = pivot.pivot_by_provider(rows_of(CUDNN, "ck"), providers=["ck", CUDNN])
    assert f"{CUDNN}:speedup" in frame.columns and "ck:speedup" not in frame.columns


def test_an_unknown_baseline_provider_is_a_user_error_naming_the_flag():
    with pytest.raises(UserError, match="--baseline-provider: provider 'cudnn' has no rows"):
        pivot.pivot_by_provider(rows_of("fmha"), baseline_provider="cudnn")


def test_a_flattened_rows_frame_pivots_like_the_row_dicts(three):
    run = load_run(three)
    from_dicts = pivot.pivot_by_provider(run.rows, providers=run.meta["providers"])
    from_frame = pivot.pivot_by_provider(run.frame(), providers=run.meta["providers"])
    pd.testing.assert_frame_equal(from_frame, from_dicts, check_dtype=False)


def test_runs_of_one_provider_each_merge_into_one_row_per_point(tmp_path):
    paths = [synth.write_run(tmp_path, p.replace(":", "-"), synth.provider_rows(p), [p]) for p in ("fmha", CUDNN)]
    merged = pivot.merge_runs([load_run(path) for path in paths])
    assert merged.providers == ["fmha", CUDNN] and merged.notes == ()
    frame = pivot.pivot_by_provider(merged.rows, providers=merged.providers)
    assert len(frame) == len(synth.PREFILL + synth.DECODE)
    assert frame[f"{CUDNN}:speedup"].notna().all()


def test_a_point_and_provider_met_in_two_runs_keeps_the_later_run_and_warns_once(tmp_path):
    old = synth.write_run(tmp_path, "old", synth.provider_rows("fmha"), ["fmha"])
    rerun = [synth.ok(p, "fmha", synth.fmha_time(p) / 2) for p in synth.DECODE]
    new = synth.write_run(tmp_path, "new", rerun, ["fmha"])
    merged = pivot.merge_runs([load_run(old), load_run(new)])
    assert merged.notes == ("3 (point, provider) row(s) appear more than once; the later run's row is kept",)
    frame = by_name(pivot.pivot_by_provider(merged.rows))
    assert frame.loc[synth.DECODE[0].name(), "fmha:tbps"] == pytest.approx(2.0)
    assert frame.loc[synth.PREFILL[0].name(), "fmha:tflops"] == pytest.approx(100.0)
    assert {row["run_id"] for row in merged.rows} == {"old", "new"}


def test_cli_pivot_csv_has_the_default_columns_and_speedups(three, tmp_path):
    out = tmp_path / "pivot.csv"
    result = invoke(three, "--pivot", "--csv", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert len(table) == len(synth.PREFILL + synth.DECODE)
    # every provider ran ok everywhere but ck: only ck has a status column; both bounds occur: TFLOPS and TB/s
    assert [c for c in table.columns if ":" in c] == [
        "fmha:median_ms", "fmha:tflops", "fmha:tbps",
        f"{CUDNN}:median_ms", f"{CUDNN}:tflops", f"{CUDNN}:tbps", f"{CUDNN}:speedup",
        "ck:status", "ck:median_ms", "ck:tflops", "ck:tbps", "ck:speedup"]
    assert table[f"{CUDNN}:speedup"].tolist() == pytest.approx([3.0] * 6 + [2.5] * 3)
    assert "hdim_v" not in table.columns  # equal to hdim_q at every point


def test_cli_pivot_shows_only_the_throughput_of_the_points_bound(tmp_path):
    decode = [row for p in ("fmha", CUDNN) for row in synth.provider_rows(p) if row.problem["family"] == "paged"]
    path = synth.write_run(tmp_path, "decode", decode, ["fmha", CUDNN])
    out = tmp_path / "pivot.csv"
    assert invoke(path, "--pivot", "--csv", out).exit_code == 0
    assert list(pd.read_csv(out).columns) == ["name", "page_size", "fmha:median_ms", "fmha:tbps",
                                              f"{CUDNN}:median_ms", f"{CUDNN}:tbps", f"{CUDNN}:speedup"]


def test_cli_baseline_provider_changes_the_reference_of_the_speedups(three, tmp_path):
    out = tmp_path / "pivot.csv"
    assert invoke(three, "--pivot", "--baseline-provider", CUDNN, "--csv", out).exit_code == 0
    table = pd.read_csv(out)
    assert [c for c in table.columns if ":" in c][0] == f"{CUDNN}:median_ms"
    assert table["fmha:speedup"].iloc[0] == pytest.approx(1 / synth.PREFILL_SPEEDUP)
    assert f"{CUDNN}:speedup" not in table.columns


def test_cli_pivot_markdown_and_terminal_name_the_provider_and_the_baseline(three, tmp_path):
    out = tmp_path / "pivot.md"
    result = invoke(three, "--pivot", "--markdown", out)
    assert result.exit_code == 0, result.output
    header = out.read_text().splitlines()[0]
    assert f"| {CUDNN} speedup vs fmha |" in header and "| fmha median ms |" in header
    assert "speedup vs fmha" in result.output and "3.00" in result.output
    assert "skipped" in result.output and "failed" in result.output


def test_cli_pivot_columns_pick_point_columns_and_per_provider_metrics(three, tmp_path):
    out = tmp_path / "pivot.csv"
    result = invoke(three, "--pivot", "--columns", "point_id,dtype,median_ms,speedup,run_id", "--csv", out)
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(out).columns) == [
        "point_id", "dtype", "fmha:median_ms", "fmha:run_id", f"{CUDNN}:median_ms", f"{CUDNN}:speedup",
        f"{CUDNN}:run_id", "ck:median_ms", "ck:speedup", "ck:run_id"]


def test_cli_pivot_rejects_an_unknown_column_naming_the_flag(three):
    result = invoke(three, "--pivot", "--columns", "name,speed")
    assert result.exit_code == EXIT_USAGE
    assert "--columns: unknown column 'speed' for --pivot" in result.output


@pytest.mark.parametrize("args, flag", [(["--pivot", "--baseline", "{run}"], "--pivot"),
                                        (["--baseline-provider", "fmha"], "--baseline-provider"),
                                        (["--pivot", "--baseline-provider", "nope"], "--baseline-provider")])
def test_cli_pivot_usage_errors_name_the_flag(three, args, flag):
    result = invoke(three, *[a.format(run=three) for a in args])
    assert result.exit_code == EXIT_USAGE
    assert f"error: {flag}:" in result.output


def test_cli_pivot_merges_runs_and_warns_about_repeated_rows(tmp_path):
    first = synth.write_run(tmp_path, "a", synth.provider_rows("fmha"), ["fmha"])
    second = synth.write_run(tmp_path, "b", synth.provider_rows("fmha")[:2] + synth.provider_rows(CUDNN), [CUDNN])
    out = tmp_path / "pivot.csv"
    result = invoke(first, second, "--pivot", "--csv", out)
    assert result.exit_code == 0, result.output
    assert result.output.count("appear more than once") == 1
    assert len(pd.read_csv(out)) == len(synth.PREFILL + synth.DECODE)


def test_pivot_specs_put_the_provider_above_the_metric_heading():
    spec = pivot.column_spec(f"{CUDNN}:speedup", "fmha")
    assert spec.header == f"{CUDNN}\nspeedup vs fmha" and spec.fmt(2.5) == "2.50"
    assert pivot.column_spec("fmha:median_ms", "fmha").header == "fmha\n" + report.COLUMNS["median_ms"].header
