import pytest
from click.testing import CliRunner

import synthetic_runs as synth
from fmha_bench import plots
from fmha_bench.cli import cli

pytest.importorskip("matplotlib")

CUDNN = "torch-sdpa:cudnn"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return CliRunner().invoke(cli, ["report", *map(str, args)])


def rows_of(*providers):
    return [row.to_json() for provider in providers for row in synth.provider_rows(provider)]


def assert_real_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000, f"{path.name} is only {len(data)} bytes"


def test_three_providers_give_tflops_bandwidth_and_speedup_figures(tmp_path):
    paths = plots.write_plots(rows_of("fmha", CUDNN, "ck"), tmp_path / "figs")
    assert [p.name for p in paths] == ["tflops-fwd-fp16.png", "tbps-paged-bf16.png", "speedup.png"]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(p.name for p in paths)
    for path in paths:
        assert_real_png(path)


def test_one_provider_gets_no_speedup_figure(tmp_path):
    assert [p.name for p in plots.write_plots(rows_of("fmha"), tmp_path)] == ["tflops-fwd-fp16.png",
                                                                              "tbps-paged-bf16.png"]


def test_no_bandwidth_figure_when_the_page_size_does_not_vary(tmp_path):
    rows = [row for row in rows_of("fmha") if row["problem"]["page_size"] in (0, 16)]
    assert [p.name for p in plots.write_plots(rows, tmp_path)] == ["tflops-fwd-fp16.png"]


def test_tflops_curves_have_a_subplot_per_head_dim_and_a_line_per_provider_sorted_by_seqlen():
    rows = [row for row in rows_of(CUDNN, "fmha") if row["problem"]["family"] == "fwd"]
    [curves] = plots._curves(rows, "tflops", "seqlen_k", "tflops", "TFLOPS", "seqlen_k", lambda p: True, "H100")
    assert curves.stem == "tflops-fwd-fp16"
    assert [panel.title for panel in curves.panels] == ["hdim_q=64", "hdim_q=128"]
    assert "varying with seqlen_k: batch, seqlen_q" in curves.title and "H100" in curves.title
    line = curves.panels[0].lines["fmha"]
    assert [x for x, _ in line] == [1024, 2048, 4096]
    assert [y for _, y in line] == pytest.approx([100.0] * 3)


def test_only_ok_rows_are_drawn(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "_draw_curves", lambda curves, colors, out_dir: drawn.append(curves) or [])
    plots.write_plots(rows_of("fmha", "ck"), tmp_path)
    [bandwidth] = [c for c in drawn if c.stem == "tbps-paged-bf16"]
    assert bandwidth.panels[0].lines["ck"] == [(16, pytest.approx(0.5))]  # failed (page 1), mismatch (page 64) left out
    assert all("ck" not in panel.lines for c in drawn if c.stem.startswith("tflops") for panel in c.panels)


def test_figures_beyond_the_subplot_limit_go_to_numbered_files(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "MAX_SUBPLOTS", 1)
    names = [p.name for p in plots.write_plots(rows_of("fmha"), tmp_path)]
    assert names == ["tflops-fwd-fp16.png", "tflops-fwd-fp16-2.png", "tbps-paged-bf16.png"]


def test_speedup_bars_beyond_the_limit_go_to_numbered_files(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "MAX_BARS", 4)
    names = [p.name for p in plots.write_plots(rows_of("fmha", CUDNN), tmp_path) if p.name.startswith("speedup")]
    assert names == ["speedup.png", "speedup-2.png", "speedup-3.png"]  # 9 points


def test_cli_plots_print_each_path_beside_the_table(tmp_path):
    run = synth.write_three_provider_run(tmp_path / "results")
    out = tmp_path / "figs"
    result = invoke(run, "--plots", out, "--baseline-provider", CUDNN)
    assert result.exit_code == 0, result.output
    for name in ("tflops-fwd-fp16.png", "tbps-paged-bf16.png", "speedup.png"):
        assert str(out / name) in result.output
        assert_real_png(out / name)
    assert "run three" in result.output


def test_cli_plots_merge_several_runs(tmp_path):
    runs = [synth.write_run(tmp_path, p.replace(":", "-"), synth.provider_rows(p), [p]) for p in ("fmha", CUDNN)]
    result = invoke(*runs, "--plots", tmp_path / "figs")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figs" / "speedup.png").is_file()  # needs both runs' providers
