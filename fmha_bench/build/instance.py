"""A kernel instance: one source compiled with one set of defines for one arch, and its name.

The name is readable and content-addressed: f"{label}_{arch}-{hash8}", where the hash covers
everything that changes the code object (the source and every header beside it, the defines,
the compiler's identity and flags, the arch). Changed code therefore gets a new name and never
reuses a stale cache entry.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..package_data import kernel_src_dir
from .arch import Arch, get_arch

if TYPE_CHECKING:
    from .compilers import Compiler

HEADER_GLOB = "*.h"
_LABEL = re.compile(r"[A-Za-z0-9_.]+")
_DEFINE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# nvcc hands -D values to its sub-tools through a shell ($(...) in a value runs), so values are
# limited to what kernel specialisation needs: numbers, identifiers, C++ scoped names.
_DEFINE_VALUE = re.compile(r"[A-Za-z0-9_.:+\-]*")


@dataclass(frozen=True)
class KernelSpec:
    source: str                           # file in kernel_src/, or an absolute path (tests)
    entry: str                            # the extern "C" kernel symbol to launch
    defines: tuple[tuple[str, str], ...]  # preprocessor macros that specialise the source
    arch: str                             # gfx942, sm_90a, ... (see build.arch.ARCHS)
    label: str                            # readable part of the instance name

    def __post_init__(self):
        if not _LABEL.fullmatch(self.label):
            raise ValueError(f"kernel label {self.label!r} must match {_LABEL.pattern}")
        for name, value in self.defines:
            if not _DEFINE_NAME.fullmatch(name):
                raise ValueError(f"define name {name!r} is not a C identifier")
            if not _DEFINE_VALUE.fullmatch(value):
                raise ValueError(f"define {name}={value!r}: value must match {_DEFINE_VALUE.pattern}")

    @property
    def target(self) -> Arch:
        return get_arch(self.arch)

    def source_path(self) -> Path:
        if Path(self.source).is_absolute():
            return Path(self.source)
        return kernel_src_dir() / self.source

    def include_dir(self) -> Path:
        return self.source_path().parent

    def define_flags(self) -> list[str]:
        return [f"-D{name}={value}" for name, value in sorted(self.defines)]


def source_files(spec: KernelSpec) -> list[Path]:
    """The files whose contents the instance depends on: the source and every header beside it
    (over-approximating the include graph costs a rebuild at worst, never a stale object)."""
    headers = sorted(spec.include_dir().glob(HEADER_GLOB))
    return [spec.source_path(), *(h for h in headers if h != spec.source_path())]


def content_hash(spec: KernelSpec, compiler: Compiler) -> str:
    h = hashlib.sha256()

    def field(tag: str, value: bytes | str):
        data = value.encode() if isinstance(value, str) else value
        h.update(f"{tag}:{len(data)}:".encode())
        h.update(data)

    for path in source_files(spec):
        field("file", path.name)
        field("contents", path.read_bytes())
    for flag in spec.define_flags():
        field("define", flag)
    field("compiler", compiler.identity())
    for flag in compiler.flags(spec.target):
        field("flag", flag)
    field("arch", spec.arch)
    return h.hexdigest()


def instance_name(spec: KernelSpec, compiler: Compiler | None = None) -> str:
    """The instance's cache name; `compiler` defaults to the one that would build it here."""
    if compiler is None:
        from .compilers import CompileError, compiler_for
        compiler = compiler_for(spec.target)
        if isinstance(compiler, str):
            raise CompileError(compiler)
    return f"{spec.label}_{spec.arch}-{content_hash(spec, compiler)[:8]}"
