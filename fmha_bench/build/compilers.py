"""Compiler drivers: turn a KernelSpec into a code object file (.cubin for NVIDIA, .co for AMD),
and the choice of driver per arch.

Preference per vendor (the first that is present and knows the arch wins):
  NVIDIA: nvcc (PATH, then $CUDA_HOME/bin), then NVRTC through cuda-bindings.
  AMD:    a ROCm install's clang (amdclang++ / clang++ / hipcc) under FMHA_BENCH_ROCM_PATH,
          ROCM_PATH or /opt/rocm; else each distribution clang++-NN on PATH, newest first,
          pointed at unpacked HIP headers and device libraries (what .ci/setup-toolchains.sh
          prepares in .toolchain/; a checkout's .toolchain/ is found without
          FMHA_BENCH_ROCM_PATH). Device code only: compiling needs no HIP runtime and no GPU.
Commands are argument lists, never shell strings: defines and paths cannot inject anything.
"""
from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path

from .. import config
from .arch import ARCHS, Arch
from .instance import KernelSpec, instance_name

COMPILE_TIMEOUT_S = 600
# Upstream clang learned these arches late; older ones reject the --offload-arch.
_MIN_UPSTREAM_CLANG = {"gfx950": 20, "gfx1201": 18}
_OLDEST_USABLE_CLANG = 17
# The unpacked toolchain is Debian's HIP 5.2 (headers and device libraries, 2022). A newer upstream
# clang dropped three things those files rely on; from the clang major named, it gets them back:
_COV5_FROM = 21       # clang 21 defaults to code object v6 (LLVM #130963), whose ABI library
                      # (oclc_abi_version_600.bc) the HIP 5.2 device libraries lack: ask for v5,
                      # what clang 19 emits by default
_HIP_BC_FROM = 20     # clang 22 no longer links hip.bc, where HIP 5.2's __syncthreads barrier
                      # lives; 20 and 21 are untested and get it too (a second link is harmless)
_WAVE_MACRO_FROM = 22  # clang 22 removed __AMDGCN_WAVEFRONT_SIZE (LLVM #157463), which HIP 5.2
                       # defines warpSize from
_DEVICE_LIB_DIRS = ("lib/x86_64-linux-gnu/amdgcn/bitcode", "amdgcn/bitcode", "lib/amdgcn/bitcode")
CHECKOUT_TOOLCHAIN = Path(__file__).resolve().parents[2] / ".toolchain" / "hip" / "usr"


class CompileError(Exception):
    """A compiler rejected an instance. The message carries the instance name, the command and
    the compiler's own diagnostics, so a failing build explains itself."""


class Compiler(ABC):
    name: str

    @abstractmethod
    def identity(self) -> str:
        """Everything about the compiler that changes its output (path, full version text)."""

    @abstractmethod
    def version(self) -> str:
        """Short version for tables: 13.0.88, 19.1.7."""

    @abstractmethod
    def available(self) -> str | None:
        """None when the compiler can run here, else why not."""

    @abstractmethod
    def supports(self, arch: Arch) -> str | None:
        """None when the compiler can target `arch`, else why not."""

    @abstractmethod
    def flags(self, arch: Arch) -> list[str]:
        """The fixed flags for `arch` (no paths: those differ between installs)."""

    @abstractmethod
    def compile(self, spec: KernelSpec, out_path: Path) -> None:
        """Write the code object for `spec` to `out_path` or raise CompileError."""

    def location(self) -> str:
        return ""

    def _error(self, spec: KernelSpec, command: str, diagnostics: str) -> CompileError:
        return CompileError(f"{instance_name(spec, self)}: {self.name} failed\n"
                            f"$ {command}\n{diagnostics.rstrip()}")


# ----------------------------------------------------------------------------- subprocess drivers
@functools.cache
def _version_output(executable: Path) -> str | None:
    """`executable --version`, asked once per process (compilers are looked up often)."""
    try:
        done = subprocess.run([str(executable), "--version"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


class _ToolCompiler(Compiler):
    """A compiler run as a subprocess, one process per instance."""

    version_pattern: str

    def __init__(self, executable: Path, name: str):
        self.executable = Path(executable)
        self.name = name

    def _version_text(self) -> str | None:
        return _version_output(self.executable)

    def identity(self) -> str:
        return f"{self.executable}\n{self._version_text()}"

    def version(self) -> str:
        match = re.search(self.version_pattern, self._version_text() or "")
        return match.group(1) if match else "?"

    def location(self) -> str:
        return str(self.executable)

    def available(self) -> str | None:
        return None if self._version_text() is not None else f"{self.executable} does not run"

    @abstractmethod
    def command(self, spec: KernelSpec, out_path: Path) -> list[str]:
        ...

    def compile(self, spec: KernelSpec, out_path: Path) -> None:
        command = self.command(spec, out_path)
        shown = shlex.join(command)
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=COMPILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise self._error(spec, shown, f"timed out after {COMPILE_TIMEOUT_S} s") from None
        except OSError as e:
            raise self._error(spec, shown, str(e)) from None
        if done.returncode != 0:
            raise self._error(spec, shown, f"exit {done.returncode}\n{done.stderr}{done.stdout}")
        if not out_path.is_file():
            raise self._error(spec, shown, "exit 0 but no output file")


class Nvcc(_ToolCompiler):
    version_pattern = r"V(\d+\.\d+\.\d+)"

    def __init__(self, executable: Path):
        super().__init__(executable, "nvcc")

    def supports(self, arch: Arch) -> str | None:
        return None if arch.vendor == "nvidia" else f"nvcc cannot target {arch.name}"

    def flags(self, arch: Arch) -> list[str]:
        # compute_90a + sm_90a: arch-specific instructions (wgmma, setmaxnreg) need both halves.
        sm = arch.name[len("sm_"):]
        return ["-x", "cu", "-cubin", f"-gencode=arch=compute_{sm},code=sm_{sm}",
                "-O3", "-std=c++17"]

    def command(self, spec: KernelSpec, out_path: Path) -> list[str]:
        return [str(self.executable), *self.flags(spec.target), f"-I{spec.include_dir()}",
                *spec.define_flags(), str(spec.source_path()), "-o", str(out_path)]


class HipClang(_ToolCompiler):
    """clang in HIP device-only mode: a ROCm clang, or an upstream clang (`upstream=True`)
    pointed at unpacked HIP headers (`rocm_path`) and device bitcode (`device_lib_dir`)."""

    version_pattern = r"clang version (\d+(?:\.\d+)*)"

    def __init__(self, executable: Path, name: str, rocm_path: Path,
                 device_lib_dir: Path | None = None, upstream: bool = False):
        super().__init__(executable, name)
        self.rocm_path = Path(rocm_path)
        self.device_lib_dir = device_lib_dir
        self.upstream = upstream

    def identity(self) -> str:
        return f"{super().identity()}\nrocm={self.rocm_path}\ndevice-libs={self.device_lib_dir}"

    def location(self) -> str:
        return f"{self.executable} (HIP headers: {self.rocm_path})"

    def _major(self) -> int:
        return int(self.version().split(".")[0]) if self.version() != "?" else 0

    def _linker_dir(self) -> Path:
        """Where clang looks for ld.lld first: its InstalledDir (Debian: /usr/lib/llvm-NN/bin)."""
        match = re.search(r"^InstalledDir: (.+)$", self._version_text() or "", re.MULTILINE)
        return Path(match.group(1)) if match else self.executable.resolve().parent

    def available(self) -> str | None:
        reason = super().available()
        if reason or not self.upstream:
            return reason  # a ROCm install ships its linker
        if not (self._linker_dir() / "ld.lld").is_file() and not shutil.which("ld.lld"):
            return (f"no ld.lld in {self._linker_dir()} or on PATH (AMD code objects are linked "
                    f"with lld: install lld-{self._major()})")
        return None

    def supports(self, arch: Arch) -> str | None:
        if arch.vendor != "amd":
            return f"{self.name} (HIP) cannot target {arch.name}"
        needed = _MIN_UPSTREAM_CLANG.get(arch.name, _OLDEST_USABLE_CLANG)
        if self.upstream and self._major() < needed:
            return f"{self.name} {self.version()} does not know {arch.name} (needs clang >= {needed})"
        if self.device_lib_dir is not None:
            isa = self.device_lib_dir / f"oclc_isa_version_{arch.isa_version}.bc"
            if not isa.is_file():
                return f"{isa} is missing (.ci/setup-toolchains.sh generates it)"
        return None

    def flags(self, arch: Arch) -> list[str]:
        return ["-x", "hip", "-std=c++17", f"--offload-arch={arch.name}", "--cuda-device-only",
                "--no-gpu-bundle-output", "-O3", "-c", *self._hip52_flags(arch)]

    def _hip52_flags(self, arch: Arch) -> list[str]:
        """What an upstream clang newer than the unpacked HIP 5.2 files needs to build against
        them (see _COV5_FROM); none for a ROCm clang, whose headers and libraries match it."""
        if not self.upstream:
            return []
        flags = []
        if (self._major() >= _COV5_FROM
                and not (self.device_lib_dir / "oclc_abi_version_600.bc").is_file()):
            flags.append("-mcode-object-version=5")
        if self._major() >= _WAVE_MACRO_FROM:
            flags.append(f"-D__AMDGCN_WAVEFRONT_SIZE={arch.wave_size}")
        return flags

    def _hip_bc_link(self) -> list[str]:
        """hip.bc linked by hand where clang no longer links it (see _HIP_BC_FROM)."""
        if not self.upstream or self._major() < _HIP_BC_FROM:
            return []
        hip_bc = self.device_lib_dir / "hip.bc"
        return ["-Xclang", "-mlink-builtin-bitcode", "-Xclang", str(hip_bc)] if hip_bc.is_file() else []

    def command(self, spec: KernelSpec, out_path: Path) -> list[str]:
        paths = [f"--rocm-path={self.rocm_path}"]
        if self.device_lib_dir is not None:
            paths.append(f"--rocm-device-lib-path={self.device_lib_dir}")
        paths += self._hip_bc_link()
        return [str(self.executable), *self.flags(spec.target), *paths, f"-I{spec.include_dir()}",
                *spec.define_flags(), str(spec.source_path()), "-o", str(out_path)]


# ----------------------------------------------------------------------------- NVRTC
@functools.cache
def _nvrtc_setup() -> tuple[str, str] | str:
    """(NVRTC version, CUDA header dir), or why NVRTC cannot be used."""
    try:
        from cuda.bindings import nvrtc
        from cuda.pathfinder import find_nvidia_header_directory
    except ImportError as e:
        return f"cuda-bindings is not installed ({e}); pip install 'fmha-bench[cuda]'"
    try:
        _, major, minor = nvrtc.nvrtcVersion()
    except (RuntimeError, OSError) as e:  # cuda.pathfinder's DynamicLibNotFoundError
        return f"libnvrtc cannot be loaded ({str(e).splitlines()[0]}); pip install nvidia-cuda-nvrtc"
    headers = find_nvidia_header_directory("cudart")
    if headers is None:
        return "CUDA runtime headers not found; pip install nvidia-cuda-runtime"
    return f"{major}.{minor}", headers


class Nvrtc(Compiler):
    """NVRTC through cuda-bindings: CUDA's compiler as a library, for machines without nvcc.
    It runs in-process, so COMPILE_TIMEOUT_S cannot interrupt it."""

    name = "nvrtc"

    def identity(self) -> str:
        version, headers = _nvrtc_setup()
        return f"nvrtc {version}\nheaders={headers}"

    def version(self) -> str:
        setup = _nvrtc_setup()
        return setup[0] if isinstance(setup, tuple) else "?"

    def location(self) -> str:
        setup = _nvrtc_setup()
        return f"cuda-bindings (headers: {setup[1]})" if isinstance(setup, tuple) else ""

    def available(self) -> str | None:
        setup = _nvrtc_setup()
        return setup if isinstance(setup, str) else None

    def supports(self, arch: Arch) -> str | None:
        return None if arch.vendor == "nvidia" else f"nvrtc cannot target {arch.name}"

    def flags(self, arch: Arch) -> list[str]:
        return [f"-arch={arch.name}", "-std=c++17"]  # a real sm_* arch makes NVRTC emit a cubin

    def compile(self, spec: KernelSpec, out_path: Path) -> None:
        from cuda.bindings import nvrtc
        _, headers = _nvrtc_setup()
        options = [*self.flags(spec.target), f"-I{spec.include_dir()}", f"-I{headers}",
                   *spec.define_flags()]
        source = spec.source_path()
        _, program = nvrtc.nvrtcCreateProgram(source.read_bytes(), str(source).encode(), 0, [], [])
        try:
            (result,) = nvrtc.nvrtcCompileProgram(program, len(options),
                                                  [o.encode() for o in options])
            if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
                _, size = nvrtc.nvrtcGetProgramLogSize(program)
                log = b" " * size
                nvrtc.nvrtcGetProgramLog(program, log)
                raise self._error(spec, f"nvrtc {shlex.join(options)} {source}",
                                  f"{result.name}\n{log.rstrip(bytes(1)).decode(errors='replace')}")
            _, size = nvrtc.nvrtcGetCUBINSize(program)
            cubin = b" " * size
            nvrtc.nvrtcGetCUBIN(program, cubin)
        finally:
            nvrtc.nvrtcDestroyProgram(program)
        out_path.write_bytes(cubin)


# ----------------------------------------------------------------------------- discovery
SYSTEM_ROCM = "/opt/rocm"
INSTALL_NVIDIA = "install the CUDA toolkit (nvcc) and set CUDA_HOME, or pip install 'fmha-bench[cuda]' (NVRTC)"
INSTALL_AMD = ("install ROCm and set FMHA_BENCH_ROCM_PATH, or run .ci/setup-toolchains.sh (a recent "
               "clang + lld, on Debian 12 clang-22 from bookworm-security, and unpacked HIP headers "
               "and device libraries)")


def _find_nvcc() -> Path | None:
    found = shutil.which("nvcc")
    if found:
        return Path(found)
    home = config.cuda_home()
    nvcc = Path(home) / "bin" / "nvcc" if home else None
    return nvcc if nvcc and nvcc.is_file() else None


def _find_upstream_clangs() -> list[tuple[Path, str]]:
    """Every clang++-NN on PATH, newest first, then plain clang++ unless it is one of those
    (HipClang.supports checks each one's age against the arch)."""
    found, seen = [], set()
    for name in [f"clang++-{n}" for n in range(30, _OLDEST_USABLE_CLANG - 1, -1)] + ["clang++"]:
        path = shutil.which(name)
        if path and Path(path).resolve() not in seen:
            seen.add(Path(path).resolve())
            found.append((Path(path), name))
    return found


def _rocm_roots() -> list[Path]:
    roots = [config.rocm_path(), str(CHECKOUT_TOOLCHAIN), SYSTEM_ROCM]
    return [Path(r) for r in dict.fromkeys(r for r in roots if r) if Path(r).is_dir()]


def _amd_compilers_at(root: Path) -> list[Compiler] | str:
    """A ROCm install's clang under `root`, or every upstream clang (newest first) if `root`
    holds unpacked HIP headers and device libraries; else why none."""
    for relative, name in (("llvm/bin/amdclang++", "amdclang++"), ("llvm/bin/clang++", "clang++"),
                           ("bin/hipcc", "hipcc")):
        if (root / relative).is_file():
            return [HipClang(root / relative, name, root)]
    device_libs = next((root / d for d in _DEVICE_LIB_DIRS if (root / d).is_dir()), None)
    if not (root / "include/hip/hip_runtime.h").is_file() or device_libs is None:
        return f"{root} holds no ROCm clang and no unpacked HIP headers + device libraries"
    clangs = _find_upstream_clangs()
    if not clangs:
        return f"{root} holds HIP headers but no clang++ is on PATH (install clang >= {_OLDEST_USABLE_CLANG})"
    return [HipClang(path, name, root, device_libs, upstream=True) for path, name in clangs]


def candidates(vendor: str) -> list[Compiler]:
    """Every compiler found for `vendor`, most preferred first."""
    if vendor == "amd":
        return [c for found in map(_amd_compilers_at, _rocm_roots()) if not isinstance(found, str)
                for c in found]
    nvcc = _find_nvcc()
    return ([Nvcc(nvcc)] if nvcc else []) + [Nvrtc()]


def _not_found(vendor: str) -> list[str]:
    """Why the compilers of `vendor` that were looked for are not there."""
    if vendor == "nvidia":
        home = config.cuda_home()
        where = f"nor at {home}/bin/nvcc (CUDA_HOME)" if home else "and CUDA_HOME is not set"
        return [] if _find_nvcc() else [f"nvcc: not on PATH {where}"]
    roots = _rocm_roots()
    reasons = [c for c in map(_amd_compilers_at, roots) if isinstance(c, str)]
    explicit = config.rocm_path()
    if explicit and not Path(explicit).is_dir():
        reasons.insert(0, f"FMHA_BENCH_ROCM_PATH / ROCM_PATH {explicit}: no such directory")
    if not roots:
        reasons.append(f"no ROCm install ({SYSTEM_ROCM}) and no unpacked HIP toolchain (.toolchain/) found")
    return reasons


def compiler_for(arch: Arch) -> Compiler | str:
    """The preferred compiler able to build for `arch`, or why there is none and what to install."""
    reasons = []
    for compiler in candidates(arch.vendor):
        reason = compiler.available() or compiler.supports(arch)
        if reason is None:
            return compiler
        reasons.append(f"{compiler.name}: {reason}")
    install = INSTALL_NVIDIA if arch.vendor == "nvidia" else INSTALL_AMD
    return f"no compiler for {arch.name}: " + "; ".join(_not_found(arch.vendor) + reasons) + f". To fix: {install}"


def compiler_versions() -> dict[str, str]:
    """{compiler name: version} of every usable compiler, for run metadata."""
    return {c.name: c.version() for vendor in ("nvidia", "amd") for c in candidates(vendor)
            if c.available() is None}


def compiler_report() -> list[tuple[str, bool, str]]:
    """(name, usable, detail) per compiler found, per one looked for and missing, and what to
    install for a vendor left without a usable one: for `fmha-bench doctor`."""
    rows = []
    for vendor in ("nvidia", "amd"):
        rows += [(vendor, False, reason) for reason in _not_found(vendor)]
        found = candidates(vendor)
        for compiler in found:
            reason = compiler.available()
            if reason:
                rows.append((compiler.name, False, reason))
                continue
            archs = [a for a in ARCHS.values() if a.vendor == vendor]
            cannot = [f"{a.name} ({why})" for a in archs if (why := compiler.supports(a))]
            detail = f"{compiler.version()} at {compiler.location()}"
            rows.append((compiler.name, True, detail + (f"; cannot build {', '.join(cannot)}"
                                                        if cannot else "")))
        if all(compiler.available() for compiler in found):
            rows.append((vendor, False, f"none usable; {INSTALL_NVIDIA if vendor == 'nvidia' else INSTALL_AMD}"))
    return rows
