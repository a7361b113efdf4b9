"""The CI scripts: valid bash, and the toolchain setup is a no-op once done."""
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / ".ci" / "setup-toolchains.sh"


@pytest.mark.parametrize("script", [".ci/run", ".ci/setup-toolchains.sh"])
def test_script_parses_as_bash(script):
    subprocess.run(["bash", "-n", str(REPO / script)], check=True)


def test_ci_run_is_executable_and_strict():
    run = REPO / ".ci" / "run"
    assert os.access(run, os.X_OK)
    assert "set -euo pipefail" in run.read_text()


def test_generated_isa_versions_follow_major_minor_stepping():
    """gfx942 -> 9402: the ISA version is major*1000 + minor*100 + stepping."""
    pairs = re.findall(r"(\d+):(\d+)", re.search(r"for pair in ([\d: ]+);", SETUP.read_text()).group(1))
    assert {isa for isa, _ in pairs} == {"942", "1100", "1201"}
    for isa, value in pairs:
        major, minor, stepping = int(isa[:-2]), int(isa[-2]), int(isa[-1])
        assert int(value) == major * 1000 + minor * 100 + stepping


def _tool(path: Path, body: str):
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_setup_done_once_returns_without_apt_and_exports_the_toolchain(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    (repo / ".ci" / "setup-toolchains.sh").write_text(SETUP.read_text())
    stamp = re.search(r'stamp="\$toolchain/([^"]+)"', SETUP.read_text()).group(1)
    (repo / ".toolchain" / "hip").mkdir(parents=True)
    (repo / ".toolchain" / "hip" / stamp).write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("clang++-19", "ld.lld-19"):
        _tool(bin_dir / name, "exit 0")
    for name in ("apt-get", "dpkg-deb", "sudo"):
        _tool(bin_dir / name, f"echo called >> {tmp_path / 'package-manager'}; exit 1")
    script = 'source .ci/setup-toolchains.sh && echo "ROOT=$FMHA_BENCH_ROCM_PATH"'
    done = subprocess.run(["bash", "-c", script], cwd=repo, capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert f"ROOT={repo / '.toolchain' / 'hip' / 'usr'}" in done.stdout
    assert not (tmp_path / "package-manager").exists()
