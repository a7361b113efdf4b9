"""Random command lines never produce a traceback: every command exits 0, 1 or 2, and on exit 2
the last line of its error output is the one-line message.

argv is drawn from each command's real option names (plus one that does not exist) with, in
half the examples, plausible values (so commands also get to succeed) and, in the other half,
odd ones as well: negative, huge, empty, unicode, shell syntax, missing paths, a file where a
directory is expected. Nothing here can start GPU work or a compiler: `sweep` always gets
--dry-run, `parity` always gets a sweep file that cannot load, and `build` a kernel cache that
cannot be created (build fails on it before any compiler runs).
"""
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fmha_bench.cli import cli

FIXTURES = Path(__file__).parent / "fixtures"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

ODD = st.one_of(
    st.sampled_from(["", " ", "-1", "0", "-", "--", "=", ",", "99999999999999999999", "1e3", "nan", "-inf", "é☃",
                     "ｆｍｈａ", "x" * 300, "../..", "/", "a b; touch PWNED", "$(id)", "@file", "@file/below",
                     "@missing", "@dir"]),
    # random text can spell a help flag, which rightly exits 0: not an odd input
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00\n\r"), max_size=6).filter(
        lambda text: text not in ("--help", "-h")))
FLAG = None  # an option without a value


def words(*values):
    return st.sampled_from(values)


# Paths are written @name[/more] and resolved in the sandbox (see `paths`).
RUN_OPTIONS = {
    "--providers": words("fmha", "fmha,ck", "torch-sdpa:flash", "nope", "binary:x"),
    "--device": words("0", "1", "-1"),
    "--validate": words("full", "sampled", "auto", "off"),
    "--run-id": words("r1", "a/b", "run_example"),
    "--results-dir": words("@results", "@dir", "@file", "@missing/deeper"),
    "--kernel": words("fmha_fwd", "q128k64w8"),
    "--all-instances": FLAG,
    "--ck-binary": words("@missing", "@file", "@dir"),
    "--seed": words("0", "7", "-3"),
    "--filter": words("mask=causal", "hdim_q=128", "paged", "nosuch=1", "hdim_q=abc", "mask=t:9999999999,0",
                      "seqlen_q=[1, 2", "dtype=fp64"),
    "--limit": words("1", "3", "0"),
    # options the lead adds this session; "no such option" (exit 2) until they exist
    "--devices": words("all", "0", "0,1", "0,0", "-1", "1,,2", "a"),
    "--shard": words("0/1", "1/2", "2/2", "0/0", "-1/2", "a/b", "1", "1/-1"),
    "--timeout": words("1", "60", "0", "-5", "nan", "inf", "abc"),
    "--resume": words("run_example", "nosuchrun", "@run", "@file", "@dir"),
    "--graphs": words("on", "off", "auto", "maybe"),
}
OUTPUT_PATHS = words("@dir/out", "@file/below", "@missing/out", "@dir", "@file")
REPORT_OPTIONS = {
    "--baseline": words("@run", "@baseline", "run_example", "nosuchrun", "@file"),
    "--fail-on-regression": FLAG,
    "--csv": OUTPUT_PATHS,
    "--markdown": OUTPUT_PATHS,
    "--columns": words("name,status", "seqlen_q,tflops", "speedup", ",", "bogus", "name,,tflops"),
    "--pivot": FLAG,
    "--baseline-provider": words("fmha", "nope"),
    "--plots": words("@file", "@file/below"),  # a directory it can draw into would make this slow
}
PARITY_OPTIONS = {**RUN_OPTIONS,
                  **{name: REPORT_OPTIONS[name] for name in ("--baseline-provider", "--csv", "--markdown")}}
BUILD_OPTIONS = {
    "--arch": words("sm_90a", "gfx942", "sm_90a,gfx942", "sm_90a,,", ",", "nope", "SM_90A"),
    "--jobs": words("1", "4", "0", "-2"),
    "--force": FLAG,
    "--check": FLAG,
}
DOCTOR_OPTIONS = {"--device": words("0", "1", "-1", "99999999999999999999")}
RUNS = words("@run", "@baseline", "run_example", "nosuchrun", "@file", "@dir", "@missing")
SWEEP_FILES = words(None, "quick", "prefill", "quick.yaml", "@good_sweep", "@bad_sweep", "@missing", "@dir",
                    "nosuchsweep")
UNLOADABLE_SWEEPS = words("@missing", "@bad_sweep", "@dir", "@file", "@file/below", "nosuchsweep")
SECTIONS = words("families", "masks", "dtypes", "layouts", "archs", "providers", "sweeps", "all", "FAMILIES")


@st.composite
def options(draw, vocabulary: dict, max_options: int = 4) -> list:
    """argv tokens: a few options of `vocabulary` with plausible values, or (half the time) with
    odd values mixed in and now and then an option that does not exist."""
    odd = draw(st.booleans())
    names = sorted(vocabulary) + (["--no-such-option"] if odd else [])
    argv = []
    for name in draw(st.lists(st.sampled_from(names), max_size=max_options)):
        argv.append(name)
        values = vocabulary.get(name, ODD)
        if values is not FLAG:
            argv.append(draw(st.one_of(values, ODD) if odd else values))
    return argv


def maybe_odd(values):
    return st.one_of(values, values, ODD)


@pytest.fixture
def sandbox(tmp_path):
    """A file, an empty directory, a finished run (also as run id `run_example` under the results
    directory), a sweep file that cannot load and a small one that can."""
    (tmp_path / "file").write_text("not a run, not a sweep\n")
    (tmp_path / "dir").mkdir()
    shutil.copytree(FIXTURES / "run_example", tmp_path / "results" / "run_example")
    (tmp_path / "bad_sweep.yaml").write_text("axes: [\n")
    (tmp_path / "good_sweep.yaml").write_text("defaults: {seqlen_q: 64, nhead_q: 2}\naxes: {mask: [none, causal]}\n")
    return tmp_path


def paths(sandbox: Path) -> dict:
    return {"@run": sandbox / "results" / "run_example", "@results": sandbox / "results",
            "@baseline": FIXTURES / "run_baseline", "@bad_sweep": sandbox / "bad_sweep.yaml",
            "@good_sweep": sandbox / "good_sweep.yaml", "@file": sandbox / "file", "@dir": sandbox / "dir",
            "@missing": sandbox / "missing"}


def resolve(sandbox: Path, argv: list) -> list:
    known = paths(sandbox)
    out = []
    for token in argv:
        if token is None:
            continue
        head, sep, tail = token.partition("/")
        if head in known:
            token = str(known[head] / tail) if sep else str(known[head])
        out.append(token)
    return out


def invoke(sandbox: Path, argv: list, cache: Path | None = None):
    env = {"FMHA_BENCH_RESULTS": str(sandbox / "results"), "FMHA_BENCH_CACHE": str(cache or sandbox / "cache"),
           "FMHA_BENCH_CK_BINARY": None}
    resolved = resolve(sandbox, argv)
    here = os.getcwd()
    os.chdir(sandbox)  # relative outputs (--csv, --plots, ...) land in the sandbox, not the checkout
    try:
        result = CliRunner().invoke(cli, resolved, env=env)
    finally:
        os.chdir(here)
    result.argv = resolved  # for failure messages
    return result


def assert_clean(result, allowed=(0, 1, 2)):
    """No traceback; an allowed exit code; exit 2 ends with the one-line message."""
    event(f"exit {result.exit_code}")  # --hypothesis-show-statistics: how often each exit code came up
    shown = f"argv {result.argv!r}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{result.exception!r}\n{shown}"
    assert result.exit_code in allowed, shown
    assert "Traceback" not in result.output, shown
    if result.exit_code == 2:
        lines = [line for line in result.stderr.split("\n") if line.strip()]  # not splitlines(): \x0c is no line break
        assert lines and lines[-1].startswith(("error: ", "Error: ")), shown


@FUZZ
@given(argv=options(RUN_OPTIONS), sweep_file=maybe_odd(SWEEP_FILES))
def test_sweep_dry_run_with_random_options_exits_cleanly(sandbox, argv, sweep_file):
    assert_clean(invoke(sandbox, ["sweep", "--dry-run", *argv, sweep_file]))


@FUZZ
@given(argv=options(PARITY_OPTIONS), sweep_file=UNLOADABLE_SWEEPS)
def test_parity_with_random_options_fails_before_any_run_with_one_line(sandbox, argv, sweep_file):
    assert_clean(invoke(sandbox, ["parity", *argv, sweep_file]), allowed=(2,))
    assert sorted(p.name for p in (sandbox / "results").iterdir()) == ["run_example"]  # no run was started


@FUZZ
@given(argv=options(REPORT_OPTIONS), runs=st.lists(maybe_odd(RUNS), min_size=1, max_size=2))
def test_report_with_random_runs_and_options_exits_cleanly(sandbox, argv, runs):
    assert_clean(invoke(sandbox, ["report", *argv, *runs]))


@settings(FUZZ, max_examples=30)
@given(what=st.lists(maybe_odd(SECTIONS), max_size=2))
def test_list_with_random_sections_exits_cleanly(sandbox, what):
    assert_clean(invoke(sandbox, ["list", *what]))


@FUZZ
@given(argv=options(BUILD_OPTIONS), sweeps=st.lists(maybe_odd(words("@good_sweep", "@bad_sweep", "@dir", "quick")),
                                                   max_size=2))
def test_build_with_random_options_fails_before_compiling_with_one_line(sandbox, argv, sweeps):
    assert_clean(invoke(sandbox, ["build", *argv, *sweeps], cache=sandbox / "file" / "cache"), allowed=(2,))


@settings(FUZZ, max_examples=20)
@given(argv=options(DOCTOR_OPTIONS, max_options=2))
def test_doctor_with_random_options_exits_cleanly(sandbox, argv):
    assert_clean(invoke(sandbox, ["doctor", *argv]))


@settings(FUZZ, max_examples=20)
@given(argv=st.lists(maybe_odd(words("--version", "--help", "-h", "nosuchcommand", "list", "report")), max_size=3))
def test_top_level_random_arguments_exit_cleanly(sandbox, argv):
    result = invoke(sandbox, argv)
    if not argv:  # click answers a bare `fmha-bench` with its help, exit 2
        assert result.exit_code == 2 and "Commands:" in result.stderr
        return
    assert_clean(result)
