import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import synthetic_runs as synth
from fmha_bench import report
from fmha_bench.cli import cli
from fmha_bench.errors import EXIT_POINT_FAILED, EXIT_USAGE
from fmha_bench.store import load_run

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE, BASELINE = str(FIXTURES / "run_example"), str(FIXTURES / "run_baseline")


def invoke(*args):
    return CliRunner().invoke(cli, ["report", *map(str, args)])


def example_rows():
    return [json.loads(line) for line in (FIXTURES / "run_example" / "results.jsonl").read_text().splitlines()]


def test_help_describes_the_options_and_exit_codes():
    result = invoke("--help")
    assert result.exit_code == 0
    for text in ("--baseline", "--fail-on-regression", "--csv", "--markdown", "--columns", "--pivot",
                 "--baseline-provider", "--plots", "Exit code"):
        assert text in result.output


def test_terminal_table_shows_every_row_with_status_and_reason():
    result = invoke(EXAMPLE)
    assert result.exit_code == 0, result.output
    for row in example_rows():
        assert row["name"] in result.output
        assert row["reason"] in result.output
    for status in ("ok", "skipped", "mismatch", "failed"):
        assert f" {status} " in result.output
    assert "run run_example" in result.output and "NVIDIA H100 80GB HBM3" in result.output


def test_failed_points_do_not_change_the_exit_code():
    assert {row["status"] for row in example_rows()} >= {"failed", "mismatch"}
    assert invoke(EXAMPLE).exit_code == 0


def test_csv_has_one_row_per_result_in_display_units(tmp_path):
    out = tmp_path / "table.csv"
    assert invoke(EXAMPLE, "--csv", out).exit_code == 0
    table = pd.read_csv(out)
    rows = example_rows()
    assert list(table.columns) == list(report.DEFAULT_COLUMNS)
    assert list(table["provider"]) == [row["provider"] for row in rows]
    ok = [row["status"] == "ok" for row in rows]
    assert table["median_ms"][ok].tolist() == pytest.approx([row["time_s_median"] * 1e3 for row in rows if row["status"] == "ok"])
    assert table["noise_pct"][ok].tolist() == pytest.approx([row["rel_noise"] * 100 for row in rows if row["status"] == "ok"])
    assert table["median_ms"][[not o for o in ok]].isna().sum() == 3  # skipped and failed rows have no time


def test_markdown_table_has_a_header_a_rule_and_one_line_per_row(tmp_path):
    out = tmp_path / "table.md"
    assert invoke(EXAMPLE, "--markdown", out).exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "| " + " | ".join(report.COLUMNS[c].header for c in report.DEFAULT_COLUMNS) + " |"
    assert lines[1] == "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    assert len(lines) == 2 + len(example_rows())
    assert all(line.count(" | ") == len(report.DEFAULT_COLUMNS) - 1 for line in lines[2:])  # '|' in a reason escaped
    assert "rtol*\\|ref\\|" in out.read_text()


def test_percent_of_peak_is_the_larger_of_the_flops_and_bandwidth_fractions():
    column = report.COLUMNS["pct_peak"]
    assert column.value({"pct_peak_flops": 12.0, "pct_peak_bw": 80.0}) == 80.0
    assert column.value({"pct_peak_flops": None, "pct_peak_bw": None}) is None


def test_bound_names_the_roof_with_the_larger_fraction_of_peak():
    column = report.COLUMNS["bound"]
    assert column.value({"pct_peak_flops": 0.4, "pct_peak_bw": 30.0}) == "memory"
    assert column.value({"pct_peak_flops": 10.0, "pct_peak_bw": 0.6}) == "compute"
    assert column.value({"pct_peak_flops": None, "pct_peak_bw": 0.6}) is None


@pytest.mark.parametrize("value, text", [(0.0123456, "0.01235"), (1.05, "1.050"), (1234.5, "1234"), (None, "")])
def test_times_print_with_four_significant_digits(value, text):
    assert report.COLUMNS["median_ms"].fmt(value) == text


def test_baseline_gives_each_point_its_verdict_with_regressions_first(tmp_path):
    out = tmp_path / "table.csv"
    assert invoke(EXAMPLE, "--baseline", BASELINE, "--csv", out).exit_code == 0
    table = pd.read_csv(out)
    verdicts = {(r.name, r.provider): r.verdict for r in table.itertuples()}
    by_problem = {name: verdict for (name, provider), verdict in verdicts.items() if provider == "fmha"}
    assert table["verdict"].iloc[0] == "SLOWER"
    assert by_problem["fwd b4 h16/16 s2048/2048 d64 bf16"] == "SLOWER"
    assert by_problem["fwd b2 h32/8 s4096/4096 d128 fp16 m:b"] == "FASTER"
    assert by_problem["paged b64 h32/8 s1/8192 d128 fp16 m:b p16:vllm"] == "SAME"
    assert verdicts[("fwd b2 h32/8 s4096/4096 d128 fp16 m:b", "torch-sdpa:cudnn")] == "SAME"
    assert by_problem["fwd b3 h8/8 s[512,0,1500]/[512,0,1500] d128 fp16 m:b"] == "NOT_COMPARABLE"
    assert by_problem["splitkv b1 h32/8 s1/32768 d128 fp16 split4"] == "NOT_COMPARABLE"  # mismatches now
    assert by_problem["mla b32 h128/1 s1/4096 d576/512 bf16 p64:vllm"] == "MISSING"
    changed = table[table["name"].str.startswith("fwd b3")].iloc[0]
    assert changed["verdict_reason"] == "kernel_version changed"
    assert (table["verdict"] == "SLOWER").sum() == 1


def test_baseline_points_absent_from_the_new_run_are_counted_under_the_table():
    result = invoke(EXAMPLE, "--baseline", BASELINE)
    assert "1 point(s) of baseline run_baseline are absent" in result.output


def test_fail_on_regression_exits_1_when_a_point_is_slower():
    result = invoke(EXAMPLE, "--baseline", BASELINE, "--fail-on-regression")
    assert result.exit_code == EXIT_POINT_FAILED
    assert "1 point(s) slower than baseline run_baseline" in result.output


def test_fail_on_regression_exits_0_without_a_slower_point():
    assert invoke(EXAMPLE, "--baseline", EXAMPLE, "--fail-on-regression").exit_code == 0


def test_fail_on_regression_without_a_baseline_is_a_usage_error():
    result = invoke(EXAMPLE, "--fail-on-regression")
    assert result.exit_code == EXIT_USAGE
    assert "--fail-on-regression" in result.output


def test_several_runs_merge_into_one_table_with_a_run_column(tmp_path):
    out = tmp_path / "table.csv"
    assert invoke(EXAMPLE, BASELINE, "--csv", out).exit_code == 0
    table = pd.read_csv(out)
    assert table.columns[0] == "run_id"
    assert table["run_id"].value_counts().to_dict() == {"run_example": 9, "run_baseline": 9}


def test_columns_option_picks_report_columns_and_problem_fields(tmp_path):
    out = tmp_path / "table.csv"
    assert invoke(EXAMPLE, "--columns", "name, seqlen_q,median_ms", "--csv", out).exit_code == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["name", "seqlen_q", "median_ms"]
    assert table["seqlen_q"].iloc[4] == "[512, 0, 1500]"


def test_an_unknown_column_is_a_usage_error_naming_the_flag():
    result = invoke(EXAMPLE, "--columns", "name,speed")
    assert result.exit_code == EXIT_USAGE
    assert "--columns: unknown column 'speed'" in result.output


def test_a_directory_that_is_not_a_run_is_a_usage_error(tmp_path):
    result = invoke(tmp_path)
    assert result.exit_code == EXIT_USAGE
    assert "not a run directory" in result.output


def test_an_interrupted_run_reports_its_finished_rows_and_warns(tmp_path):
    run = tmp_path / "cut"
    shutil.copytree(EXAMPLE, run)
    text = (run / "results.jsonl").read_text()
    (run / "results.jsonl").write_text(text[: len(text) - 200])  # the last row was being written
    out = tmp_path / "table.csv"
    result = invoke(run, "--csv", out)
    assert result.exit_code == 0
    assert "warning:" in result.output and "truncated last line" in result.output
    assert len(pd.read_csv(out)) == len(example_rows()) - 1


def test_a_run_id_is_found_under_the_results_directory(monkeypatch):
    monkeypatch.setenv("FMHA_BENCH_RESULTS", str(FIXTURES))
    result = invoke("run_example")
    assert result.exit_code == 0
    assert "run run_example" in result.output


def test_build_report_table_matches_the_fixture_run():
    run = load_run(EXAMPLE)
    built = report.build_report([run], ["name", "status"])
    assert built.frame.to_dict("records") == [{"name": r["name"], "status": r["status"]} for r in run.rows]
    assert built.slower == 0 and built.notes == ()


def regression_runs(tmp_path):
    """A baseline of fmha rows and a new run with two points slower (x1.2, x1.5), one faster, and
    one 3x slower but from a changed kernel."""
    base = synth.provider_rows("fmha")
    new = synth.provider_rows("fmha")
    for index, factor in ((0, 1.2), (1, 1.5), (2, 0.5), (6, 3.0)):
        new[index].time_s_median *= factor
    new[6].kernel_version = "changed"
    return (synth.write_run(tmp_path, "base", base, ["fmha"]), synth.write_run(tmp_path, "new", new, ["fmha"]))


def test_regressions_are_listed_first_worst_first(tmp_path):
    base, new = regression_runs(tmp_path)
    out = tmp_path / "table.csv"
    assert invoke(new, "--baseline", base, "--csv", out).exit_code == 0
    table = pd.read_csv(out)
    assert table["verdict"].tolist()[:3] == ["SLOWER", "SLOWER", "FASTER"]
    assert table["ratio"].tolist()[:2] == pytest.approx([1.5, 1.2])
    assert table["name"].tolist()[:2] == [synth.PREFILL[1].name(), synth.PREFILL[0].name()]
    assert dict(table["verdict"].value_counts()) == {"SAME": 5, "SLOWER": 2, "FASTER": 1, "NOT_COMPARABLE": 1}


def test_slower_points_exit_0_without_fail_on_regression(tmp_path):
    base, new = regression_runs(tmp_path)
    result = invoke(new, "--baseline", base)
    assert result.exit_code == 0
    assert "SLOWER" in result.output and "slower than baseline" not in result.output


def test_fail_on_regression_ignores_faster_and_not_comparable_points(tmp_path):
    base, new = regression_runs(tmp_path)
    assert invoke(new, "--baseline", base, "--fail-on-regression").exit_code == EXIT_POINT_FAILED
    rows = synth.provider_rows("fmha")
    rows[2].time_s_median *= 0.5
    rows[6].time_s_median *= 3.0
    rows[6].kernel_version = "changed"
    faster = synth.write_run(tmp_path, "faster", rows, ["fmha"])
    result = invoke(faster, "--baseline", base, "--fail-on-regression")
    assert result.exit_code == 0, result.output
    assert "FASTER" in result.output and "NOT_COMPARABLE" in result.output


def test_plots_without_matplotlib_ask_for_the_plot_extra_before_doing_anything(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    csv = tmp_path / "table.csv"
    result = invoke(tmp_path / "no-such-run", "--plots", tmp_path / "figs", "--csv", csv)
    assert result.exit_code == EXIT_USAGE
    assert "--plots: needs matplotlib: pip install 'fmha-bench[plot]'" in result.output
    assert not csv.exists() and not (tmp_path / "figs").exists()
