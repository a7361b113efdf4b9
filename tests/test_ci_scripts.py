"""The CI scripts: valid bash, CI builds every AMD arch, and the toolchain setup installs clang-22
(else clang-19, saying gfx950 is lost), generates the isa files and is a no-op once done."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fmha_bench.build.arch import ARCHS

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
    assert {isa for isa, _ in pairs} == {"942", "950", "1100", "1201"}
    for isa, value in pairs:
        major, minor, stepping = int(isa[:-2]), int(isa[-2]), int(isa[-1])
        assert int(value) == major * 1000 + minor * 100 + stepping


def test_ci_builds_and_checks_every_amd_arch_the_build_knows():
    ci_archs = re.search(r"^ARCHS=(\S+)", (REPO / ".ci" / "run").read_text(), re.MULTILINE).group(1)
    assert {a.name for a in ARCHS.values() if a.vendor == "amd"} <= set(ci_archs.split(","))


def _tool(path: Path, body: str):
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


STAMP = re.search(r'stamp="\$toolchain/([^"]+)"', SETUP.read_text()).group(1)


def _machine(tmp_path, clangs=(), apt_has=("clang-22", "clang-19"), done=False):
    """A checkout holding the setup script (its recipe done or not) and a PATH of fakes only, so
    no real clang leaks in: clang++-NN, ld.lld-NN and clang-NN for each of `clangs`; apt-cache
    knowing the packages `apt_has`; apt-get whose install adds the fakes of the clang-NN it is
    given and whose download writes empty .debs; dpkg-deb unpacking an empty bitcode dir. The
    fake clang-NN writes its -o file. apt-get, apt-cache and clang-NN calls go to tmp_path/calls."""
    repo, bin_dir, calls = tmp_path / "repo", tmp_path / "bin", tmp_path / "calls"
    (repo / ".ci").mkdir(parents=True)
    (repo / ".ci" / "setup-toolchains.sh").write_text(SETUP.read_text())
    if done:
        (repo / ".toolchain" / "hip").mkdir(parents=True)
        (repo / ".toolchain" / "hip" / STAMP).write_text("")
    bin_dir.mkdir()
    for tool in ("basename", "chmod", "cp", "dirname", "id", "mkdir", "rm", "touch"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    _tool(bin_dir / "clang-stub", f'echo "$(basename "$0") $*" >> {calls}\n'
                                  'while [ "$1" != -o ]; do shift; done; : > "$2"')
    add_clang = (f'add_clang() {{ for t in clang++-$1 ld.lld-$1; do echo "exit 0" > {bin_dir}/$t; '
                 f'chmod +x {bin_dir}/$t; done; cp {bin_dir}/clang-stub {bin_dir}/clang-$1; }}\n')
    _tool(bin_dir / "apt-get", f'{add_clang}echo "apt-get $*" >> {calls}\n'
                               'case "$1" in download) for p in "$@"; do : > "$p.deb"; done;;\n'
                               '  install) for p in "$@"; do case "$p" in clang-*) add_clang "${p#clang-}";;\n'
                               '  esac; done;; esac')
    known = " ".join(apt_has)
    _tool(bin_dir / "apt-cache", f'echo "apt-cache $*" >> {calls}\n'
                                 f'case " {known} " in *" $2 "*) exit 0;; esac; exit 100')
    _tool(bin_dir / "dpkg-deb", 'mkdir -p "$3/usr/lib/x86_64-linux-gnu/amdgcn/bitcode"')
    _tool(bin_dir / "sudo", 'exec "$@"')
    for major in clangs:
        subprocess.run(["/bin/sh", "-c", f"{add_clang}add_clang {major}"], check=True)
    return repo, bin_dir


def _setup(repo, bin_dir, tmp_path):
    script = 'source .ci/setup-toolchains.sh && echo "ROOT=$FMHA_BENCH_ROCM_PATH"'
    done = subprocess.run(["/bin/bash", "-c", script], cwd=repo, capture_output=True, text=True,
                          check=False, env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
    calls = tmp_path / "calls"
    return done, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("clang", [22, 19])
def test_setup_done_once_returns_without_apt_and_exports_the_toolchain(tmp_path, clang):
    """Also with only clang-19: a machine whose apt has no clang-22 is not asked again each run."""
    repo, bin_dir = _machine(tmp_path, clangs=(clang,), done=True)
    done, calls = _setup(repo, bin_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"ROOT={repo / '.toolchain' / 'hip' / 'usr'}" in done.stdout
    assert f"clang-{clang};" in done.stdout and calls == []


def test_fresh_machine_gets_clang_22_which_generates_every_isa_file(tmp_path):
    repo, bin_dir = _machine(tmp_path)
    done, calls = _setup(repo, bin_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    installs = [c for c in calls if c.startswith("apt-get install")]
    assert len(installs) == 1 and installs[0].endswith("--no-install-recommends clang-22 lld-22")
    generated = [c.split()[-1] for c in calls if c.startswith("clang-22 ")]
    assert sorted(Path(g).name for g in generated) == [
        f"oclc_isa_version_{isa}.bc" for isa in ("1100", "1201", "942", "950")]
    assert all(Path(g).is_file() for g in generated)
    assert (repo / ".toolchain" / "hip" / STAMP).is_file()


def test_where_apt_has_no_clang_22_setup_installs_clang_19_and_says_gfx950_is_lost(tmp_path):
    repo, bin_dir = _machine(tmp_path, apt_has=("clang-19",))
    done, calls = _setup(repo, bin_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "clang-19, which cannot build gfx950" in done.stderr
    assert next(c for c in calls if c.startswith("apt-get install")).endswith("clang-19 lld-19")
    assert any(c.startswith("clang-19 ") for c in calls)


def test_new_recipe_on_a_clang_19_machine_asks_apt_for_clang_22_and_keeps_19_without_it(tmp_path):
    repo, bin_dir = _machine(tmp_path, clangs=(19,), apt_has=())
    done, calls = _setup(repo, bin_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "keeping clang-19" in done.stderr
    assert not any(c.startswith("apt-get install") for c in calls)
    assert any(c.startswith("apt-cache show clang-22") for c in calls)
