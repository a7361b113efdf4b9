"""Backends without a GPU: vendor imports stay inside the backend/compiler modules, errors are clear."""
import ast
import pathlib

import pytest

from fmha_bench.backends import BackendUnavailable, open_backend
from fmha_bench.backends.hip import versions_match

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fmha_bench"
VENDOR_MODULES = ("cuda", "hip", "pynvml", "torch")
ALLOWED = {"backends/cuda.py", "backends/hip.py", "build/compilers.py", "cli/doctor_cmd.py", "telemetry.py"}


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_vendor_apis_are_imported_only_by_backends_and_compiler_drivers():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ALLOWED or rel.startswith("providers/torch"):
            continue
        for name in _imports(path):
            if name.split(".")[0] in VENDOR_MODULES:
                offenders.append(f"{rel}: {name}")
    assert not offenders


def test_no_gpu_gives_a_reason_per_runtime(monkeypatch):
    from fmha_bench.backends import cuda, hip

    def unavailable(why):
        def init(self, index):
            raise BackendUnavailable(why)
        return init
    monkeypatch.setattr(cuda.CudaBackend, "__init__", unavailable("no NVIDIA driver"))
    monkeypatch.setattr(hip.HipBackend, "__init__", unavailable("no ROCm runtime"))
    with pytest.raises(BackendUnavailable) as e:
        open_backend(0)
    assert "cuda: no NVIDIA driver" in str(e.value) and "hip: no ROCm runtime" in str(e.value)


@pytest.mark.parametrize("hp,runtime,ok", [("6.4.4.555.40", 60443483, True), ("6.4.4.555.40", 60200000, False),
                                           ("7.2.0.562.43", 70251831, True), ("10.0.0.0.1.2", 70251831, False),
                                           ("garbage", 60443483, False)])
def test_hip_python_version_must_match_the_rocm_runtime(hp, runtime, ok):
    assert versions_match(hp, runtime) is ok


def test_kernel_arguments_point_at_one_copy_of_the_struct_bytes():
    import ctypes

    from fmha_bench.backends.base import KernelArguments
    args = KernelArguments(b"\x01\x02\x03\x04")
    struct_address = ctypes.c_void_p.from_address(args.address).value
    assert ctypes.string_at(struct_address, 4) == b"\x01\x02\x03\x04"
