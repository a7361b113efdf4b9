"""Shared pieces of the build-system tests: the tiny fixture kernels, a fake compiler, and the
rule that a missing real compiler skips a test, except in CI, where .ci/run installs them all
and sets CI_REQUIRE_COMPILERS=1 so a skipped compile check cannot pass for a green one."""
from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from fmha_bench.build.arch import Arch
from fmha_bench.build.compilers import Compiler, compiler_for
from fmha_bench.build.instance import KernelSpec

FIXTURES = Path(__file__).parent / "fixtures" / "build"
TINY = FIXTURES / "tiny.hip"


def tiny_spec(arch: str = "gfx942", source: Path = TINY, label: str = "tiny",
              defines: tuple = ()) -> KernelSpec:
    return KernelSpec(str(source), "tiny_scale", tuple(defines), arch, label)


def real_compiler(arch: Arch) -> Compiler:
    chosen = compiler_for(arch)
    if isinstance(chosen, str):
        if os.environ.get("CI_REQUIRE_COMPILERS") == "1":
            pytest.fail(chosen)
        pytest.skip(chosen)
    return chosen


def elf_header(machine: int, flags: int, abi_version: int = 0) -> bytes:
    """The first 64 bytes of a little-endian ELF64 file, as GPU code objects start."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0, abi_version]) + bytes(7)
    return ident + struct.pack("<HHIQQQIHHHHHH", 1, machine, 1, 0, 0, 0, flags,
                               64, 0, 0, 64, 0, 0)


class FakeCompiler(Compiler):
    """Writes an AMD ELF header instead of compiling, and logs each compile as a line in
    `log` (a file, so several processes can share the count)."""

    name = "fake"

    def __init__(self, log: Path, version: str = "1.0", delay_s: float = 0.0,
                 fail_labels: tuple = ()):
        self.log, self._version, self.delay_s, self.fail_labels = log, version, delay_s, fail_labels

    def identity(self) -> str:
        return f"fake {self._version}"

    def version(self) -> str:
        return self._version

    def available(self):
        return None

    def supports(self, arch):
        return None

    def flags(self, arch):
        return ["-O3"]

    def compile(self, spec, out_path):
        with open(self.log, "a") as log:
            log.write(f"{spec.label} {spec.arch}\n")
        time.sleep(self.delay_s)
        if spec.label in self.fail_labels:
            raise self._error(spec, "fake-cc", f"error: {spec.label} is broken")
        out_path.write_bytes(elf_header(224, 0x4C) + b"code")

    def compiles(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0
