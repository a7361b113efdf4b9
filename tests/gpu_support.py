"""What the GPU tests (tests/test_gpu_*.py, marked gpu) share: opening the device or skipping."""
from __future__ import annotations

import pytest


def open_gpu():
    """(backend, DeviceInfo) of GPU 0, or skip the test with the reason no GPU is usable."""
    from fmha_bench.backends import BackendUnavailable, open_backend
    try:
        backend = open_backend(0)
    except BackendUnavailable as e:
        pytest.skip(f"no GPU: {e}")
    return backend, backend.device_info()
