"""The on-disk cache of compiled kernel instances, and building what it lacks.

Layout: <FMHA_BENCH_CACHE or ~/.cache/fmha-bench>/v<tool version>/<arch>/<instance>.<co|cubin>.
An instance's name hashes everything that changes its code object, so a present file is
always current. Several processes may build at once: each instance is compiled under its own
file lock, with a second look after the lock is taken (so a waiter reuses what the holder
built), into a temporary file that is renamed into place (so no reader sees half a file).
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import __version__, config
from ..errors import UserError
from .arch import Arch, get_arch
from .compilers import CompileError, Compiler, compiler_for
from .instance import KernelSpec, instance_name

@dataclass(frozen=True)
class BuildResult:
    spec: KernelSpec
    name: str                 # the instance name (label_arch when no compiler could name it)
    compiler: str             # compiler name, "-" when none was found
    status: str               # "cached" | "built" | "failed"
    seconds: float
    path: Path | None = None  # the code object, when status != "failed"
    error: str | None = None  # why it failed, compiler diagnostics included

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path else 0


def cache_root() -> Path:
    return config.cache_dir() / f"v{__version__}"


def object_path(root: Path, spec: KernelSpec, name: str) -> Path:
    return root / spec.arch / f"{name}.{spec.target.suffix}"


def ensure_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        raise UserError(f"kernel cache directory {root} is not writable ({e.strerror or e}); "
                        "set FMHA_BENCH_CACHE to a writable directory") from None


@contextmanager
def _exclusive(lock_path: Path):
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def build_instance(spec: KernelSpec, compiler: Compiler, root: Path,
                   force: bool = False) -> BuildResult:
    """Compile `spec` into the cache at `root` unless it is there already."""
    start = time.perf_counter()
    name = instance_name(spec, compiler)
    path = object_path(root, spec, name)

    def result(status: str, error: str | None = None) -> BuildResult:
        return BuildResult(spec, name, compiler.name, status, time.perf_counter() - start,
                           None if error else path, error)

    if path.is_file() and not force:
        return result("cached")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.with_name(f"{name}.lock")):
        if path.is_file() and not force:
            return result("cached")  # built by another process while this one waited
        partial = path.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.partial")
        try:
            compiler.compile(spec, partial)
            os.replace(partial, path)
        except CompileError as e:
            return result("failed", str(e))
        finally:
            partial.unlink(missing_ok=True)
    return result("built")


def _unbuildable(spec: KernelSpec, reason: str) -> BuildResult:
    return BuildResult(spec, f"{spec.label}_{spec.arch}", "-", "failed", 0.0, error=reason)


def build_all(specs: Iterable[KernelSpec], *, jobs: int | None = None, force: bool = False,
              root: Path | None = None,
              choose: Callable[[Arch], Compiler | str] | None = None) -> dict[str, BuildResult]:
    """Build every instance of `specs` that the cache lacks, `jobs` compilers at a time.

    Returns {instance name: BuildResult} in the order of `specs` (repeats merged). A compile
    error fails only its own instance. `choose(arch) -> Compiler | reason` picks the compiler
    of each arch (default: compiler_for).
    """
    choose = choose or compiler_for
    root = root or cache_root()
    ensure_writable(root)
    specs = list(specs)
    compilers = {arch: choose(get_arch(arch)) for arch in dict.fromkeys(s.arch for s in specs)}
    results: dict[str, BuildResult | None] = {}
    todo: dict[str, tuple[KernelSpec, Compiler]] = {}
    for spec in specs:
        compiler = compilers[spec.arch]
        if isinstance(compiler, str):
            failed = _unbuildable(spec, compiler)
            results.setdefault(failed.name, failed)
        else:
            name = instance_name(spec, compiler)
            results.setdefault(name, None)  # keeps the order of `specs`
            todo.setdefault(name, (spec, compiler))
    # Keyed by the name taken above: a kernel source edited during the build gives the built
    # instance another name (build_instance hashes the source again), and its slot must not stay empty.
    with ThreadPoolExecutor(max_workers=jobs or config.jobs()) as pool:
        for name, done in zip(todo, pool.map(lambda job: build_instance(*job, root, force), todo.values())):
            results[name] = done
    return results


def build(spec: KernelSpec, *, force: bool = False) -> BuildResult:
    """Build (or find) one instance with the preferred compiler for its arch."""
    (result,) = build_all([spec], jobs=1, force=force).values()
    return result
