"""Bad input, end to end: each gets a clear message naming what to fix, exit code 2 (or, for a
missing compiler or upstream binary, the failed instance or point says why), never a traceback;
and nothing the user passes is handed to a shell."""
import ast
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fake_tools import MI300X, QUICK, write_tool
from fmha_bench import __version__
from fmha_bench.build import compilers
from fmha_bench.cli import cli
from fmha_bench.problem import Problem
from fmha_bench.providers.binary import BinaryProvider
from fmha_bench.providers.ck import CkProvider
from fmha_bench.schema import SCHEMA_VERSION
from fmha_bench.sweep import load_sweep

FIXTURES = Path(__file__).parent / "fixtures"
PACKAGE = Path(__file__).parent.parent / "fmha_bench"
AS_ROOT = os.geteuid() == 0  # root ignores file permissions


def invoke(argv, **env):
    return CliRunner().invoke(cli, [str(a) for a in argv], env=env)


def one_error_line(result) -> str:
    """The message of a run that must exit 2 with exactly one line on stderr."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr.rstrip("\n")


@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "results" / "r1"
    shutil.copytree(FIXTURES / "run_example", path)
    return path


# ----------------------------------------------------------------------------- results that are not a run
@pytest.mark.parametrize("kind", ["empty directory", "file"])
def test_report_on_a_directory_or_file_that_is_not_a_run_names_it(tmp_path, kind):
    target = tmp_path / "target"
    target.mkdir() if kind == "empty directory" else target.write_text("hello\n")
    assert one_error_line(invoke(["report", target])) == (
        f"error: {target}: not a run directory (a run holds meta.json and results.jsonl)")


def test_report_on_a_missing_run_says_where_run_ids_are_looked_for(tmp_path):
    results = tmp_path / "results"
    assert one_error_line(invoke(["report", "nosuchrun"], FMHA_BENCH_RESULTS=str(results))) == (
        f"error: nosuchrun: no such run (not a directory, nor a run id under {results}; "
        "FMHA_BENCH_RESULTS sets that directory)")


def test_report_on_a_name_too_long_for_the_file_system_is_one_line_naming_it(tmp_path):
    name = "x" * 300
    message = one_error_line(invoke(["report", name], FMHA_BENCH_RESULTS=str(tmp_path)))
    assert message in (f"error: {name}: cannot read this run (File name too long)",
                       f"error: {name}: no such run (not a directory, nor a run id under {tmp_path}; "
                       "FMHA_BENCH_RESULTS sets that directory)")


@pytest.mark.skipif(AS_ROOT, reason="root reads files whatever their permissions")
def test_report_on_an_unreadable_run_names_it(run_dir):
    (run_dir / "meta.json").chmod(0)
    assert one_error_line(invoke(["report", run_dir])) == f"error: {run_dir}: cannot read this run (Permission denied)"


def test_sweep_resume_of_a_directory_that_is_not_a_run_names_it(tmp_path):
    assert one_error_line(invoke(["sweep", "--dry-run", "--resume", tmp_path])) == (
        f"error: {tmp_path}: not a run directory (a run holds meta.json and results.jsonl)")


def test_a_run_whose_meta_is_not_json_names_the_file(run_dir):
    (run_dir / "meta.json").write_text("{oops")
    assert one_error_line(invoke(["report", run_dir])).startswith(f"error: {run_dir / 'meta.json'}: not valid JSON (")


def test_sweep_resume_of_a_name_too_long_for_the_file_system_is_one_line_naming_it(tmp_path):
    name = "x" * 300
    message = one_error_line(invoke(["sweep", "--dry-run", "--resume", name], FMHA_BENCH_RESULTS=str(tmp_path)))
    assert message.startswith(f"error: {name}: ")


def test_a_value_with_a_line_break_still_makes_a_one_line_error(tmp_path):
    name = "two\nlines"
    assert one_error_line(invoke(["report", name], FMHA_BENCH_RESULTS=str(tmp_path))).startswith("error: two")


def test_devices_with_a_digit_that_is_not_ascii_is_a_one_line_error():
    message = one_error_line(invoke(["sweep", "--dry-run", "--devices", "²"]))
    assert message.startswith("error: --devices: ")


# ----------------------------------------------------------------------------- runs from a newer fmha-bench
def test_a_run_from_a_newer_schema_asks_for_an_upgrade(run_dir):
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, "schema": SCHEMA_VERSION + 1}))
    assert one_error_line(invoke(["report", run_dir])) == (
        f"error: {run_dir / 'meta.json'}: written with result schema {SCHEMA_VERSION + 1}, this fmha-bench "
        f"{__version__} reads schema <= {SCHEMA_VERSION}; upgrade fmha-bench")


def test_a_row_from_a_newer_schema_names_its_line(run_dir):
    rows = (run_dir / "results.jsonl").read_text().splitlines()
    rows[1] = json.dumps({**json.loads(rows[1]), "schema": SCHEMA_VERSION + 1})
    (run_dir / "results.jsonl").write_text("\n".join(rows) + "\n")
    assert one_error_line(invoke(["report", run_dir])) == (
        f"error: {run_dir / 'results.jsonl'}:2: written with result schema {SCHEMA_VERSION + 1}, this fmha-bench "
        f"{__version__} reads schema <= {SCHEMA_VERSION}; upgrade fmha-bench")


def test_a_truncated_last_row_is_a_warning_and_the_rest_is_reported(run_dir):
    rows_path = run_dir / "results.jsonl"
    complete = len(rows_path.read_text().splitlines())
    with open(rows_path, "a") as rows:
        rows.write('{"point_id": "cut sho')  # a crash in the middle of a write
    result = invoke(["report", run_dir, "--columns", "point_id"])
    assert result.exit_code == 0, result.output
    warning = f"warning: {rows_path}:{complete + 1}: skipped a truncated last line (the run was interrupted)"
    assert warning in result.stdout
    assert result.stderr == ""


# ----------------------------------------------------------------------------- missing upstream binaries
def test_a_ck_binary_pointing_nowhere_fails_its_points_saying_where_it_came_from_and_how_to_set_it(tmp_path):
    missing = tmp_path / "nowhere" / "tile_example_fmha_fwd"
    run = CkProvider(str(missing)).run_external(Problem().validate(), MI300X, QUICK)
    assert run.status == "failed" and run.reason == (
        f"{missing}: no such file; it came from --ck-binary; set it with --ck-binary PATH, `ck: {{binary: PATH}}` "
        "in the sweep file, or FMHA_BENCH_CK_BINARY")


def test_list_providers_shows_why_a_missing_ck_binary_cannot_run(tmp_path):
    missing = tmp_path / "ck"
    result = invoke(["list", "providers"], FMHA_BENCH_CK_BINARY=str(missing))
    assert result.exit_code == 0, result.output
    reason = f"no: {missing}: no such file; it came from FMHA_BENCH_CK_BINARY; set it with --ck-binary PATH"
    assert reason in result.output


def test_a_declared_binary_whose_program_depends_on_the_point_fails_naming_the_declaration(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("binaries:\n  fa:\n    command: ['./fa_{dtype}', '--b={batch}']\n    time: 't=(\\S+)'\n")
    provider = BinaryProvider(load_sweep(sweep).binaries["fa"])
    assert provider.available() is None  # which program runs is known per point only
    run = provider.run_external(Problem(dtype="bf16").validate(), MI300X, QUICK)
    assert run.status == "failed" and run.reason == (
        f"./fa_bf16: no such file; fix command[0] of binaries: fa ({sweep}:2); a relative path is looked for in "
        f"{tmp_path}, then on PATH")


# ----------------------------------------------------------------------------- the kernel cache and compilers
def test_build_into_a_cache_below_a_file_names_the_directory_and_fmha_bench_cache(tmp_path):
    (tmp_path / "file").write_text("")
    cache = tmp_path / "file" / "cache"
    message = one_error_line(invoke(["build", "--arch", "sm_90a"], FMHA_BENCH_CACHE=str(cache)))
    assert message == (f"error: kernel cache directory {cache / f'v{__version__}'} is not writable (Not a directory); "
                       "set FMHA_BENCH_CACHE to a writable directory")


@pytest.mark.skipif(AS_ROOT, reason="root writes whatever the permissions")
def test_build_into_a_read_only_cache_names_the_directory_and_fmha_bench_cache(tmp_path):
    cache = tmp_path / "cache"
    (cache / f"v{__version__}").mkdir(parents=True)
    (cache / f"v{__version__}").chmod(0o500)
    message = one_error_line(invoke(["build", "--arch", "sm_90a"], FMHA_BENCH_CACHE=str(cache)))
    assert message == (f"error: kernel cache directory {cache / f'v{__version__}'} is not writable "
                       "(Permission denied); set FMHA_BENCH_CACHE to a writable directory")


@pytest.fixture
def no_compilers(monkeypatch, tmp_path):
    """A machine without nvcc, NVRTC, ROCm or clang."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for name in ("CUDA_HOME", "CUDA_PATH", "ROCM_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FMHA_BENCH_ROCM_PATH", str(tmp_path / "no-rocm"))
    monkeypatch.setattr(compilers, "CHECKOUT_TOOLCHAIN", tmp_path / "no-toolchain")
    monkeypatch.setattr(compilers, "SYSTEM_ROCM", str(tmp_path / "no-opt-rocm"))
    monkeypatch.setattr(compilers, "_nvrtc_setup", lambda: "cuda-bindings is not installed")
    return tmp_path


@pytest.mark.parametrize("arch, reasons, install", [
    ("sm_90a", "nvcc: not on PATH and CUDA_HOME is not set; nvrtc: cuda-bindings is not installed",
     compilers.INSTALL_NVIDIA),
    ("gfx942", "FMHA_BENCH_ROCM_PATH / ROCM_PATH {tmp}/no-rocm: no such directory; no ROCm install "
               "({tmp}/no-opt-rocm) and no unpacked HIP toolchain (.toolchain/) found", compilers.INSTALL_AMD),
])
def test_build_without_a_compiler_says_once_what_to_install_or_set(no_compilers, arch, reasons, install):
    result = invoke(["build", "--arch", arch], FMHA_BENCH_CACHE=str(no_compilers / "cache"))
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    message = f"no compiler for {arch}: {reasons.format(tmp=no_compilers)}. To fix: {install}"
    flat = " ".join(result.output.split())  # the console may wrap long lines
    assert flat.count(message) == 1, result.output


def test_doctor_lists_each_missing_compiler_and_what_to_install(no_compilers):
    rows = compilers.compiler_report()
    assert ("nvidia", False, "nvcc: not on PATH and CUDA_HOME is not set") in rows
    assert ("nvidia", False, f"none usable; {compilers.INSTALL_NVIDIA}") in rows
    assert ("amd", False, f"none usable; {compilers.INSTALL_AMD}") in rows


# ----------------------------------------------------------------------------- no shell anywhere
def test_a_declared_binarys_arguments_reach_it_verbatim_without_a_shell(tmp_path):
    seen = tmp_path / "argv.json"
    write_tool(tmp_path, "echo_args", f"""
        import json, sys
        json.dump(sys.argv[1:], open({str(seen)!r}, "w"))
        print("time: 1.5 ms")
    """)
    sweep = tmp_path / "s.yaml"
    sweep.write_text("binaries:\n  evil:\n"
                     "    command: [./echo_args, '; touch PWNED', '$(touch PWNED)', '`touch PWNED`', 'a b', '|',\n"
                     "              '--b={batch}; touch PWNED', '&& touch PWNED', '*']\n"
                     "    time: 'time: (\\S+) ms'\n    cwd: .\n")
    run = BinaryProvider(load_sweep(sweep).binaries["evil"]).run_external(Problem(batch=3).validate(), MI300X, QUICK)
    assert run.status == "ok" and run.time_s == pytest.approx(1.5e-3), run.reason
    assert json.loads(seen.read_text()) == ["; touch PWNED", "$(touch PWNED)", "`touch PWNED`", "a b", "|",
                                            "--b=3; touch PWNED", "&& touch PWNED", "*"]
    assert not (tmp_path / "PWNED").exists()


def _shell_calls(tree: ast.AST) -> list:
    """Calls that would hand a string to a shell: shell=True, os.system / os.popen, or a
    subprocess function given a string (or f-string) command."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
               for k in node.keywords):
            found.append(f"{name}(shell=...)")
        elif name in ("os.system", "os.popen", "os.execl", "os.execlp", "os.spawnl", "os.spawnlp"):
            found.append(name)
        elif name.startswith("subprocess.") and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
            found.append(f"{name} with a string command")
    return found


def test_the_shell_audit_catches_what_it_looks_for():
    bad = ast.parse("import os, subprocess\nos.system('x')\nsubprocess.run(f'ls {d}')\n"
                    "subprocess.run(['ls'], shell=True)")
    assert _shell_calls(bad) == ["os.system", "subprocess.run with a string command", "subprocess.run(shell=...)"]


def test_no_module_of_the_package_runs_a_shell():
    found = {str(path.relative_to(PACKAGE)): calls for path in sorted(PACKAGE.rglob("*.py"))
             if (calls := _shell_calls(ast.parse(path.read_text(encoding="utf-8"))))}
    assert found == {}
