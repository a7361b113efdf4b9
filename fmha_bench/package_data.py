"""Where the shipped kernel sources and sweeps are: the installed sub-packages
fmha_bench.kernel_src / fmha_bench.sweeps, or, in a source checkout that was never installed,
the kernel_src/ and sweeps/ folders beside the package."""
from __future__ import annotations

import importlib.resources
from pathlib import Path


def _package_dir(package: str, folder: str) -> Path:
    try:
        return Path(importlib.resources.files(f"fmha_bench.{package}"))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / folder


def kernel_src_dir() -> Path:
    return _package_dir("kernel_src", "kernel_src")


def sweeps_dir() -> Path:
    return _package_dir("sweeps", "sweeps")
