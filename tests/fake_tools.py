"""Shared pieces of the self-timed provider tests: fake benchmark programs written as small
scripts, fake devices, and a liveness check for processes a timeout must have killed."""
from __future__ import annotations

import stat
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

from fmha_bench.timing import MeasureSettings

MI300X = SimpleNamespace(backend="hip", index=0, name="AMD Instinct MI300X", arch="gfx942")
MI355X = SimpleNamespace(backend="hip", index=0, name="AMD Instinct MI355X", arch="gfx950")
H100 = SimpleNamespace(backend="cuda", index=0, name="NVIDIA H100 80GB HBM3", arch="sm_90a")
QUICK = MeasureSettings(warmup=2, min_samples=5, max_samples=50)


def write_tool(directory: Path, name: str, body: str, *, python: bool = True, executable: bool = True) -> Path:
    """A program at directory/name: a Python script (or /bin/sh with python=False)."""
    path = Path(directory) / name
    shebang = f"#!{sys.executable}" if python else "#!/bin/sh"
    path.write_text(shebang + "\n" + textwrap.dedent(body).lstrip("\n"))
    mode = path.stat().st_mode
    path.chmod(mode | stat.S_IXUSR if executable else mode & ~(stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    return path


def printing_tool(directory: Path, name: str, output: str, exit_code: int = 0) -> Path:
    """A program that prints `output` verbatim and exits with `exit_code`."""
    return write_tool(directory, name, f"""
        import sys
        sys.stdout.write({output!r})
        sys.exit({exit_code})
    """)


def alive(pid: int, wait_s: float = 3.0) -> bool:
    """Whether `pid` still runs after up to `wait_s` seconds (a zombie counts as dead)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state in ("Z", "X"):
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)
