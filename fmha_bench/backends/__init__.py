"""GPU runtimes. `open_backend()` finds the GPU automatically: NVIDIA first, then AMD."""
from __future__ import annotations

from .base import Backend, BackendError, BackendUnavailable, DeviceBuffer, DeviceInfo

BACKENDS = ("cuda", "hip")


def open_backend(device_index: int = 0, prefer: str | None = None) -> Backend:
    """The first runtime that sees a GPU. Raises BackendUnavailable with every reason."""
    order = [prefer] if prefer else list(BACKENDS)
    reasons = []
    for name in order:
        try:
            if name == "cuda":
                from .cuda import CudaBackend
                return CudaBackend(device_index)
            if name == "hip":
                from .hip import HipBackend
                return HipBackend(device_index)
            raise BackendUnavailable(f"unknown backend {name!r}; one of {', '.join(BACKENDS)}")
        except BackendUnavailable as e:
            reasons.append(f"{name}: {e}")
    raise BackendUnavailable("no GPU found (" + "; ".join(reasons) + ")")


__all__ = ["Backend", "BackendError", "BackendUnavailable", "DeviceBuffer", "DeviceInfo", "open_backend"]
