"""`fmha-bench sweep`: one-line errors with FILE:LINE for bad sweeps, the dry run, the hand-off
to the runner."""
import re
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from fmha_bench.cli import cli
from fmha_bench.sweep import SweepOptions, packaged_sweeps

BAD_SWEEPS = sorted((Path(__file__).parent / "bad_sweeps").glob("*.yaml"))
EXPECT = re.compile(r"^# expect (\d+): (.*)$")


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_there_are_bad_sweep_fixtures():
    assert len(BAD_SWEEPS) >= 30


@pytest.mark.parametrize("path", BAD_SWEEPS, ids=lambda p: p.stem)
def test_a_bad_sweep_exits_2_with_one_line_naming_file_and_line(path):
    """Each fixture's first line says `# expect LINE: message fragment`."""
    line, fragment = EXPECT.match(path.read_text().splitlines()[0]).groups()
    result = invoke("sweep", str(path), "--dry-run")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {path}:{line}: ")
    assert fragment in lines[0]


def test_a_missing_sweep_file_exits_2_naming_it(tmp_path):
    missing = tmp_path / "missing.yaml"
    result = invoke("sweep", str(missing), "--dry-run")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {missing}: no such sweep file"


def test_an_unknown_sweep_name_exits_2_listing_the_packaged_ones():
    result = invoke("sweep", "prefil", "--dry-run")
    assert result.exit_code == 2
    assert "error: prefil: no such file, and no packaged sweep of that name (packaged: " in result.stderr


def test_a_bad_filter_exits_2_naming_the_flag():
    result = invoke("sweep", "--dry-run", "--filter", "hdimq=64")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --filter: unknown problem field 'hdimq'; did you mean 'hdim_q'?"


@pytest.mark.parametrize("name", sorted(packaged_sweeps()))
def test_every_packaged_sweep_dry_runs_by_name(name):
    result = invoke("sweep", name, "--dry-run")
    assert result.exit_code == 0, result.output
    summary = re.search(r"^(\d+) points: (\d+) to run, 0 skipped$", result.stdout, re.M)
    assert summary and summary.group(1) == summary.group(2) and int(summary.group(1)) > 0


def test_sweep_without_a_file_dry_runs_the_quick_sweep():
    result = invoke("sweep", "--dry-run")
    assert result.exit_code == 0
    assert result.stdout.startswith("sweep quick: ")


def test_the_dry_run_lists_ids_names_costs_and_groups_skip_reasons(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("defaults: {nhead_q: 8}\naxes:\n  nhead_k: [1, 3, 8, 5]\n  hdim_q: [64]\n"
                    "cases:\n  - {nhead_k: 1, hdim_q: 64}\nexclude:\n  - {nhead_k: 8}\n")
    result = invoke("sweep", str(path), "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "fwd b1 h8/1 s128/128 d64 fp16" in out and " 0.03355 " in out  # 2 x 128*128 x 8 heads x (64+64) FLOP
    assert "3 points: 1 to run, 2 skipped" in out
    assert "skipped 1 x nhead_k: nhead_q (8) must be a multiple of nhead_k (3)" in out
    assert "skipped 1 x nhead_k: nhead_q (8) must be a multiple of nhead_k (5)" in out
    assert "excluded 1 by exclude[0]" in out
    assert re.search(r"collapsed cases\[0\] into [0-9a-f]{12} \(axes\)", out)


def test_the_dry_run_shows_filtered_points_out_of_the_total():
    result = invoke("sweep", "quick", "--dry-run", "--filter", "family=paged", "--limit", "2")
    assert result.exit_code == 0
    assert re.search(r"^2 points \(selected from \d+\): 2 to run, 0 skipped$", result.stdout, re.M)
    assert result.stdout.count(" paged b") == 2


def test_mask_specs_print_verbatim_not_as_markup_or_emoji(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text('cases:\n  - {mask: "b:64,64"}\n')
    result = invoke("sweep", str(path), "--dry-run")
    assert "m:b:64,64" in result.stdout


@pytest.fixture
def fake_runner(monkeypatch, tmp_path):
    calls = []

    def run_sweep(sweep, points, options, store=None):
        calls.append((sweep, points, options))
        return types.SimpleNamespace(exit_code=1, run_path=tmp_path, rows=[])

    monkeypatch.setitem(sys.modules, "fmha_bench.runner", types.SimpleNamespace(run_sweep=run_sweep))
    return calls


def test_without_dry_run_the_runner_gets_the_selected_points_and_options_and_sets_the_exit_code(fake_runner, tmp_path):
    result = invoke("sweep", "varlen", "--providers", "fmha,ck", "--device", "1", "--validate", "off",
                    "--run-id", "r1", "--results-dir", str(tmp_path), "--kernel", "fwd_x", "--seed", "5",
                    "--filter", "mask=causal", "--limit", "3")
    assert result.exit_code == 1
    (sweep, points, options), = fake_runner
    assert sweep.name == "varlen"
    assert len(points) == 3 and all(p.resolved["mask"] == "b" for p in points)
    assert options == SweepOptions(providers="fmha,ck", device=1, validate="off", run_id="r1", results_dir=tmp_path,
                                   kernel="fwd_x", seed=5, filters=("mask=causal",), limit=3, argv=options.argv,
                                   command="sweep")
    assert options.argv


def test_the_results_dir_defaults_to_the_configured_one(fake_runner, monkeypatch, tmp_path):
    monkeypatch.setenv("FMHA_BENCH_RESULTS", str(tmp_path / "runs"))
    invoke("sweep", "quick")
    assert fake_runner[0][2].results_dir == tmp_path / "runs"


def test_dry_run_never_calls_the_runner(fake_runner):
    assert invoke("sweep", "--dry-run").exit_code == 0
    assert fake_runner == []


@pytest.mark.parametrize("flags", [["--limit", "0"], ["--device", "-1"], ["--validate", "some"]])
def test_bad_flag_values_exit_2(flags):
    assert invoke("sweep", "--dry-run", *flags).exit_code == 2


def test_sweep_help_lists_the_options_and_examples():
    result = invoke("sweep", "--help")
    assert result.exit_code == 0
    for option in ("--dry-run", "--providers", "--device", "--validate", "--run-id", "--results-dir", "--kernel",
                   "--seed", "--filter", "--limit"):
        assert option in result.stdout
    assert "Examples:" in result.stdout and "fmha-bench sweep --dry-run" in result.stdout
