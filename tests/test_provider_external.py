"""Running self-timed tools: argv without a shell, timeouts that kill the process group, and the
classification of every way a run can end."""
import json
import os
import re
import time
from types import SimpleNamespace

import pytest

from fake_tools import alive, printing_tool, write_tool
from fmha_bench.providers.external import (Reported, binary_version, device_env, output_tail, parse_number,
                                           repeat_count, resolve_program, run_tool)
from fmha_bench.timing import MeasureSettings


def simple_parse(output: str) -> Reported:
    """time=<ms> and check=<y|n> anywhere in the output."""
    time_ms = re.search(r"time=(\S+)", output)
    check = re.search(r"check=(\w)", output)
    return Reported(time_s=float(time_ms.group(1)) / 1e3 if time_ms else None,
                    valid={"y": True, "n": False}[check.group(1)] if check else None)


def run(path, **kwargs):
    kwargs.setdefault("timeout_s", 30)
    return run_tool([str(path), *kwargs.pop("args", [])], simple_parse, **kwargs)


# ----------------------------------------------------------------------------- outcomes
def test_a_good_run_is_ok_with_what_the_tool_reported(tmp_path):
    tool = printing_tool(tmp_path, "good", "warming up\ntime=0.5 check=y\n")
    result = run(tool, args=["-x=1"])
    assert result.status == "ok" and result.reason == ""
    assert result.time_s == pytest.approx(0.5e-3)
    assert result.valid is True and result.exit_code == 0
    assert result.command == [str(tool), "-x=1"]


def test_the_tools_own_failed_check_is_a_mismatch_even_with_a_nonzero_exit(tmp_path):
    tool = printing_tool(tmp_path, "bad", "time=0.5 check=n\n", exit_code=254)
    result = run(tool)
    assert result.status == "mismatch"
    assert "own check failed" in result.reason and "check=n" in result.reason
    assert result.exit_code == 254 and result.time_s == pytest.approx(0.5e-3)


def test_an_unexpected_exit_code_fails_with_the_code_and_the_output_tail(tmp_path):
    tool = write_tool(tmp_path, "crash", """
        import sys
        print("time=0.5")
        print("hipErrorOutOfMemory", file=sys.stderr)
        sys.exit(254)
    """)
    result = run(tool)
    assert result.status == "failed" and result.exit_code == 254
    assert result.reason.startswith("exit code 254 (= -2)")
    assert "hipErrorOutOfMemory" in result.reason  # stderr is captured with stdout


def test_an_exit_code_declared_as_expected_is_ok(tmp_path):
    tool = printing_tool(tmp_path, "three", "time=1\n", exit_code=3)
    assert run(tool, exit_codes=(0, 3)).status == "ok"
    assert run(tool).status == "failed"


def test_a_tool_killed_by_a_signal_says_which(tmp_path):
    tool = write_tool(tmp_path, "segv", "echo time=1\nkill -SEGV $$\n", python=False)
    result = run(tool)
    assert result.status == "failed"
    assert result.reason.startswith("killed by signal SIGSEGV")


def test_output_without_a_result_fails_naming_the_tail(tmp_path):
    tool = printing_tool(tmp_path, "garbage", "lorem ipsum\ndolor sit amet\n")
    result = run(tool)
    assert result.status == "failed"
    assert result.reason == "no result line in output: lorem ipsum | dolor sit amet"


def test_silence_is_no_result_either(tmp_path):
    result = run(printing_tool(tmp_path, "quiet", ""))
    assert result.status == "failed" and result.reason == "no result line in output: (no output)"


def test_a_hanging_tool_times_out_and_its_whole_process_group_is_killed(tmp_path):
    pids = tmp_path / "pids"
    tool = write_tool(tmp_path, "hang", f"""
        sleep 60 &
        echo $$ $! > {pids}
        echo started
        wait
    """, python=False)
    start = time.monotonic()
    result = run(tool, timeout_s=1)
    assert time.monotonic() - start < 10
    assert result.status == "timeout"
    assert result.reason.startswith("no result after 1 s, killed") and "started" in result.reason
    shell, child = map(int, pids.read_text().split())
    assert not alive(shell) and not alive(child)


def test_a_missing_program_fails_naming_the_path_and_how_to_set_it(tmp_path):
    missing = tmp_path / "nope"
    result = run(missing, how_to_set="set it with --ck-binary PATH")
    assert result.status == "failed" and result.exit_code is None
    assert result.reason == f"{missing}: no such file; set it with --ck-binary PATH"


def test_a_program_that_is_not_executable_says_so(tmp_path):
    tool = printing_tool(tmp_path, "plain", "time=1\n")
    tool.chmod(0o644)
    result = run(tool)
    assert result.status == "failed"
    assert result.reason == f"{tool} is not executable (chmod +x {tool})"


def test_a_directory_is_not_a_program(tmp_path):
    result = run(tmp_path)
    assert result.status == "failed" and "is a directory, not a program" in result.reason


def test_a_script_without_an_interpreter_line_fails_cleanly(tmp_path):
    tool = tmp_path / "no_shebang"
    tool.write_bytes(b"\x7fELFgarbage")
    tool.chmod(0o755)
    result = run(tool)
    assert result.status == "failed" and result.reason.startswith(f"cannot run {tool}: ")


def test_arguments_reach_the_tool_verbatim_without_a_shell(tmp_path):
    seen = tmp_path / "argv.json"
    tool = write_tool(tmp_path, "echo_args", f"""
        import json, sys
        json.dump(sys.argv[1:], open({str(seen)!r}, "w"))
        print("time=1")
    """)
    args = ["-mask=b:1,0", "$(touch pwned)", "a b", ";", "*", "{batch}"]
    assert run(tool, args=args, cwd=str(tmp_path)).status == "ok"
    assert json.loads(seen.read_text()) == args
    assert not (tmp_path / "pwned").exists()


def test_environment_overrides_and_cwd_reach_the_tool(tmp_path):
    tool = write_tool(tmp_path, "env", """
        import os
        print("time=1", os.environ["HIP_VISIBLE_DEVICES"], os.getcwd())
        open("here", "w").close()
    """)
    work = tmp_path / "work"
    work.mkdir()
    assert run(tool, env_overrides={"HIP_VISIBLE_DEVICES": "3"}, cwd=str(work)).status == "ok"
    assert (work / "here").exists()


# ----------------------------------------------------------------------------- pieces
def test_the_output_tail_is_one_line_of_the_last_lines_and_bounded():
    text = "\n".join(f"line {i}" for i in range(100)) + "\n\n"
    tail = output_tail(text)
    assert tail.startswith("line 92 | ") and tail.endswith("line 99") and "\n" not in tail
    long = output_tail("x" * 5000)
    assert len(long) == 600 and long.startswith("...")


def test_numbers_from_output_must_be_finite():
    assert parse_number("0.123") == 0.123
    assert parse_number("-nan") is None and parse_number("inf") is None
    assert parse_number("abc") is None and parse_number(None) is None


@pytest.mark.parametrize("min_samples, max_samples, expected", [(10, 200, 20), (50, 200, 50), (3, 9, 9), (1, 1, 1)])
def test_the_repeat_count_is_at_least_twenty_within_the_sample_limits(min_samples, max_samples, expected):
    assert repeat_count(MeasureSettings(min_samples=min_samples, max_samples=max_samples)) == expected


def test_a_relative_program_is_found_next_to_the_sweep_then_on_path(tmp_path, monkeypatch):
    sweep_dir, bin_dir = tmp_path / "sweeps", tmp_path / "bin"
    sweep_dir.mkdir()
    bin_dir.mkdir()
    local = printing_tool(sweep_dir, "tool", "")
    on_path = printing_tool(bin_dir, "other", "")
    monkeypatch.setenv("PATH", str(bin_dir))
    assert resolve_program("./tool", sweep_dir) == str(local)
    assert resolve_program("tool", sweep_dir) == str(local)
    assert resolve_program("other", sweep_dir) == str(on_path)
    assert resolve_program("missing", sweep_dir) == "missing"
    assert resolve_program("~/x") == os.path.expanduser("~/x")


def test_a_rebuilt_binary_changes_its_version(tmp_path):
    tool = tmp_path / "tool"
    tool.write_bytes(b"build 1")
    first = binary_version(str(tool))
    assert len(first) == 12 and binary_version(str(tool)) == first
    tool.write_bytes(b"build two")
    assert binary_version(str(tool)) != first
    assert binary_version(str(tmp_path / "missing")) == ""


def test_the_tool_sees_only_the_runners_gpu(monkeypatch):
    monkeypatch.delenv("HIP_VISIBLE_DEVICES", raising=False)
    assert device_env(SimpleNamespace(backend="hip", index=1)) == {"HIP_VISIBLE_DEVICES": "1"}
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "4,6")  # the runner's index counts within this list
    assert device_env(SimpleNamespace(backend="hip", index=1)) == {"HIP_VISIBLE_DEVICES": "6"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_env(SimpleNamespace(backend="cuda", index=0)) == {"CUDA_VISIBLE_DEVICES": "0"}
    assert device_env(SimpleNamespace(backend="cpu", index=0)) == {}
