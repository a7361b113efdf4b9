"""Every FMHA_BENCH_* environment variable, read here and only when asked for."""
from __future__ import annotations

import os
from pathlib import Path

VARIABLES = {
    "FMHA_BENCH_CACHE": "directory of compiled kernel instances (default: the user cache dir)",
    "FMHA_BENCH_RESULTS": "directory that holds run directories (default: ./results)",
    "FMHA_BENCH_CK_BINARY": "path of Composable Kernel's tile_example_fmha_fwd",
    "FMHA_BENCH_ROCM_PATH": "ROCm (or unpacked HIP headers + device libs) root for AMD builds",
    "FMHA_BENCH_JOBS": "parallel compiler processes (default: CPU count)",
    "CUDA_HOME / CUDA_PATH": "CUDA toolkit root, searched for nvcc after PATH",
}


def _get(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def cache_dir() -> Path:
    explicit = _get("FMHA_BENCH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = _get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fmha-bench"


def results_dir() -> Path:
    return Path(_get("FMHA_BENCH_RESULTS") or "results")


def ck_binary() -> str | None:
    return _get("FMHA_BENCH_CK_BINARY")


def rocm_path() -> str | None:
    return _get("FMHA_BENCH_ROCM_PATH") or _get("ROCM_PATH")


def jobs() -> int:
    value = _get("FMHA_BENCH_JOBS")
    return max(1, int(value)) if value and value.isdigit() else max(1, os.cpu_count() or 1)


def cuda_home() -> str | None:
    return _get("CUDA_HOME") or _get("CUDA_PATH")
