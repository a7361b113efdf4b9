"""`fmha-bench build`: table, totals, exit codes, --check (on fixture specs and a fake compiler;
the real kernels' build runs in .ci/run)."""
import pytest
from click.testing import CliRunner

from build_support import FakeCompiler, tiny_spec
from fmha_bench.build import cache
from fmha_bench.cli import build_cmd, cli


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("FMHA_BENCH_CACHE", str(tmp_path / "cache"))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("")
    compiler = FakeCompiler(tmp_path / "log", fail_labels=("bad",))
    monkeypatch.setattr(cache, "compiler_for", lambda arch: compiler)
    return sweep, compiler, monkeypatch


def run(*args):
    return CliRunner().invoke(cli, ["build", *args])


def use_specs(monkeypatch, specs):
    monkeypatch.setattr(build_cmd, "specs_for", lambda sweeps, archs: specs)


def test_unknown_arch_exits_2_with_one_line_listing_the_known_ones(env):
    sweep, _, _ = env
    result = run(str(sweep), "--arch", "gfx942,gfx9000")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "gfx9000" in result.output and "sm_90a" in result.output


def test_build_prints_each_instance_and_second_run_reports_all_cached(env):
    sweep, compiler, monkeypatch = env
    use_specs(monkeypatch, [tiny_spec("gfx942"), tiny_spec("gfx90a")])
    first = run(str(sweep), "--arch", "gfx942,gfx90a")
    assert first.exit_code == 0, first.output
    assert "tiny_gfx942-" in first.output and "tiny_gfx90a-" in first.output
    assert "2 instances: 2 built, 0 cached, 0 failed" in first.output
    second = run(str(sweep), "--arch", "gfx942,gfx90a")
    assert "2 instances: 0 built, 2 cached, 0 failed" in second.output
    assert compiler.compiles() == 2


def test_failed_instance_exits_1_and_shows_the_compiler_message(env):
    sweep, _, monkeypatch = env
    use_specs(monkeypatch, [tiny_spec(label="good"), tiny_spec(label="bad")])
    result = run(str(sweep), "--arch", "gfx942")
    assert result.exit_code == 1
    assert "1 built, 0 cached, 1 failed" in result.output and "error: bad is broken" in result.output


def test_check_fails_an_object_built_for_another_arch(env):
    sweep, _, monkeypatch = env  # the fake compiler always writes a gfx942 object
    use_specs(monkeypatch, [tiny_spec("gfx942"), tiny_spec("gfx90a")])
    result = run(str(sweep), "--arch", "gfx942,gfx90a", "--check")
    assert result.exit_code == 1
    assert "built for gfx942, expected gfx90a" in result.output
    assert "arch check: 1 ok, 1 wrong" in result.output


def test_force_rebuilds_cached_instances(env):
    sweep, compiler, monkeypatch = env
    use_specs(monkeypatch, [tiny_spec("gfx942")])
    run(str(sweep), "--arch", "gfx942")
    result = run(str(sweep), "--arch", "gfx942", "--force")
    assert "1 built, 0 cached" in result.output and compiler.compiles() == 2


def test_shipped_quick_sweep_needs_instances_on_every_ci_arch():
    specs = build_cmd.specs_for([build_cmd.default_sweep()], ["gfx942", "sm_90a"])
    assert {s.arch for s in specs} == {"gfx942", "sm_90a"}
    assert len(specs) == len(set(specs))
