"""`fmha-bench doctor`: what this machine has (GPUs, compilers, bindings, peers), each with
its version or the reason it is missing."""
from __future__ import annotations

import importlib.metadata
import sys

import click
from rich.console import Console
from rich.table import Table


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu_rows(device_index: int):
    from ..backends import BackendUnavailable
    from ..backends.cuda import CudaBackend
    from ..backends.hip import HipBackend, hip_python_version
    rows = []
    for label, cls in (("GPU (cuda)", CudaBackend), ("GPU (hip)", HipBackend)):
        try:
            backend = cls(device_index)
            info = backend.device_info()
            detail = (f"{info.name} [{info.arch_detail} -> {info.arch}], {info.sm_count} SMs/CUs, "
                      f"L2 {info.l2_bytes >> 20} MiB, {info.memory_bytes / 2**30:.0f} GiB, "
                      f"driver {info.driver_version}, {info.runtime_version}")
            rows.append((label, "ok", detail))
            if info.backend == "hip" and not info.extra.get("hip_python_matches_runtime", True):
                rows.append(("hip-python vs ROCm", "mismatch",
                             f"hip-python {hip_python_version()} does not match the HIP runtime ({info.runtime_version}); "
                             "install the hip-python release of your ROCm version"))
        except BackendUnavailable as e:
            rows.append((label, "missing", str(e)))
    return rows


def _compiler_rows():
    try:
        from ..build import compiler_report
    except ImportError as e:
        return [("compilers", "missing", f"build module unavailable: {e}")]
    return [(f"compiler {name}", "ok" if ok else "missing", detail) for name, ok, detail in compiler_report()]


def _package_rows():
    rows = []
    for pkg, why in (("cuda-bindings", "NVIDIA runtime + NVRTC (extra: cuda)"),
                     ("hip-python", "AMD runtime (extra: rocm)"),
                     ("nvidia-ml-py", "GPU clocks/temperature (extra: cuda)"),
                     ("torch", "peer providers torch-sdpa:* (extra: peers)"),
                     ("matplotlib", "plots (extra: plot)")):
        version = _package_version(pkg)
        rows.append((pkg, "ok" if version else "missing", version or f"not installed: {why}"))
    try:
        import torch
        cuda = torch.cuda.is_available()
        rows.append(("torch GPU", "ok" if cuda else "missing",
                     torch.cuda.get_device_name(0) if cuda else "torch sees no GPU"))
    except ImportError:
        pass
    except Exception as e:  # a broken torch install is worth a line, not a traceback
        rows.append(("torch GPU", "missing", f"{type(e).__name__}: {e}"))
    return rows


@click.command("doctor")
@click.option("--device", "device_index", type=click.IntRange(min=0), default=0, show_default=True,
              help="GPU index to inspect.")
def doctor(device_index):
    """Show GPUs, compilers, bindings and peers found, with versions or why they are missing.

    \b
    Examples:
      fmha-bench doctor
      fmha-bench doctor --device 1
    """
    table = Table(title=f"fmha-bench doctor (Python {sys.version.split()[0]})")
    table.add_column("component")
    table.add_column("status")
    table.add_column("version / reason", overflow="fold")
    colors = {"ok": "green", "missing": "yellow", "mismatch": "red"}
    for name, status, detail in _gpu_rows(device_index) + _compiler_rows() + _package_rows():
        table.add_row(name, f"[{colors.get(status, 'white')}]{status}[/]", detail)
    Console().print(table)


COMMANDS = [doctor]
