"""Running a self-timed upstream tool for one point, shared by the `ck` and `binary:*` providers.

The tool runs from an argv list, never through a shell, in a session of its own so a timeout
kills its whole process group. Its stdout and stderr are captured together, the provider's
`parse` reads the result out of them, and the run is classified, first match wins:

- the program is missing, a directory or not executable -> failed, naming the path and how to set it
- it ran past its timeout                                 -> timeout, with the output's tail
- the tool's own check said the output is wrong           -> mismatch (whatever the exit code:
                                                             CK exits non-zero then)
- the exit code is not an expected one                    -> failed, with the code (or signal) and tail
- the output holds no time                                -> failed ("no result line in output: <tail>")
- otherwise                                               -> ok
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .base import ExternalRun

MIN_REPEAT = 20     # timed launches asked of a self-timed tool at least (CK's own default)
TAIL_LINES = 8
TAIL_CHARS = 600
_DRAIN_S = 5.0   # after a kill, how long to wait for the pipe to close (a child may have escaped the group)


@dataclass
class Reported:
    """What a tool's output says about its run; None where it says nothing."""
    time_s: Optional[float] = None
    valid: Optional[bool] = None
    reported_tflops: Optional[float] = None
    kernel: str = ""
    refusal: str = ""          # the tool's own words for not running the point ("not supported yet")


def parse_number(text: Optional[str]) -> Optional[float]:
    """A finite number from a tool's output, else None ("nan ms" is no time)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def repeat_count(measure) -> int:
    """Timed launches to ask of a tool that averages them itself: at least our minimum sample
    count and MIN_REPEAT, within our maximum."""
    return max(1, min(max(measure.min_samples, MIN_REPEAT), measure.max_samples))


# ----------------------------------------------------------------------------- the program
def resolve_program(program: str, base_dir: Optional[Path] = None) -> str:
    """Where argv[0] points: `~` expanded; a relative path that exists under `base_dir` is taken
    from there; a bare name is looked up on PATH. Anything else comes back as given, so the
    missing-program message names what was asked for."""
    expanded = os.path.expanduser(program)
    if base_dir is not None and not os.path.isabs(expanded):
        candidate = Path(base_dir) / expanded
        if candidate.exists():
            return str(candidate)
    if os.sep not in expanded:
        found = shutil.which(expanded)
        if found:
            return found
    return expanded


def program_problem(path: str, how_to_set: str) -> Optional[str]:
    """Why `path` cannot be run (missing, a directory, not executable), or None."""
    hint = f"; {how_to_set}" if how_to_set else ""
    if not os.path.exists(path):
        return f"{path}: no such file{hint}"
    if os.path.isdir(path):
        return f"{path} is a directory, not a program{hint}"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable (chmod +x {path}){hint}"
    return None


_VERSIONS: dict = {}   # (path, mtime_ns, size) -> hash


def binary_version(path: str) -> str:
    """A short hash of the program's bytes, so a rebuilt binary changes kernel_version. Cached
    per path and modification time; "" when the file cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return ""
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
    if key not in _VERSIONS:
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            return ""
        _VERSIONS[key] = digest.hexdigest()[:12]
    return _VERSIONS[key]


def device_env(device) -> dict:
    """Environment overrides that leave the tool only the runner's GPU (it becomes its device 0).
    An existing list in the variable is narrowed, since the runner's index counts within it."""
    name = {"hip": "HIP_VISIBLE_DEVICES", "cuda": "CUDA_VISIBLE_DEVICES"}.get(getattr(device, "backend", ""))
    if name is None:
        return {}
    visible = [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]
    index = int(device.index)
    return {name: visible[index] if index < len(visible) else str(index)}


# ----------------------------------------------------------------------------- running and judging
def output_tail(text: str) -> str:
    """The last lines of a tool's output on one line (reasons are table cells)."""
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    tail = " | ".join(lines[-TAIL_LINES:])
    return tail if len(tail) <= TAIL_CHARS else "..." + tail[-(TAIL_CHARS - 3):]


def run_tool(argv: list, parse: Callable[[str], Reported], *, timeout_s: float, exit_codes=(0,),
             cwd: Optional[str] = None, env_overrides: Optional[dict] = None, how_to_set: str = "") -> ExternalRun:
    """Run `argv` once and classify what happened (see the module docstring)."""
    argv = [str(a) for a in argv]
    problem = program_problem(argv[0], how_to_set)
    if problem:
        return ExternalRun(status="failed", reason=problem, command=argv)
    env = {**os.environ, **env_overrides} if env_overrides else None
    try:
        exit_code, output, timed_out = _execute(argv, timeout_s, cwd, env)
    except OSError as e:
        return ExternalRun(status="failed", reason=f"cannot run {argv[0]}: {e.strerror or e}", command=argv)
    if timed_out:
        return ExternalRun(status="timeout", command=argv,
                           reason=f"no result after {timeout_s:g} s, killed; output tail: {output_tail(output) or '(none)'}")
    return classify(parse(output), exit_code, output, argv, exit_codes)


def classify(reported: Reported, exit_code: int, output: str, argv: list, exit_codes) -> ExternalRun:
    """The status of a run that finished, from what it reported and how it exited."""
    run = ExternalRun(status="ok", time_s=reported.time_s, valid=reported.valid, exit_code=exit_code,
                      reported_tflops=reported.reported_tflops, kernel=reported.kernel, command=argv)
    tail = output_tail(output) or "(no output)"
    if reported.valid is False:
        run.status, run.reason = "mismatch", f"the tool's own check failed; output tail: {tail}"
    elif exit_code not in exit_codes:
        said = f" ({reported.refusal})" if reported.refusal else ""
        run.status, run.reason = "failed", f"{_describe_exit(exit_code)}{said}; output tail: {tail}"
    elif reported.time_s is None:
        run.status, run.reason = "failed", f"no result line in output: {tail}"
    return run


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}" + (f" (= {code - 256})" if code > 127 else "")


def _execute(argv: list, timeout_s: float, cwd, env) -> tuple[int, str, bool]:
    """(exit code, stdout+stderr, timed out). On a timeout or an interrupt the whole process
    group is killed, so a tool's children do not outlive it."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=cwd, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, _decode(out), False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            out, _ = proc.communicate(timeout=_DRAIN_S)
        except subprocess.TimeoutExpired as e:  # a child that left the group holds the pipe: keep what came
            out = e.output
            proc.stdout.close()
        proc.wait()
        return proc.returncode, _decode(out), True
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _decode(data: Optional[bytes]) -> str:
    return (data or b"").decode("utf-8", errors="replace")
