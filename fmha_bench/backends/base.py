"""The GPU runtime interface. Implementations (`cuda`, `hip`) are the only modules that import
vendor APIs; everything above them (argument packing, timing, validation) is shared.

A backend speaks in raw device pointers (ints) and bytes, which is all a kernel launch needs.
"""
from __future__ import annotations

import ctypes
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

import numpy as np


class BackendError(RuntimeError):
    """A failed runtime call. `sticky` means the context is unusable afterwards (illegal
    address, assertion): the point is `crashed`, not merely `failed`."""

    def __init__(self, message: str, sticky: bool = False):
        super().__init__(message)
        self.sticky = sticky


class BackendUnavailable(RuntimeError):
    """No driver, no device, or no bindings: a reason to print, not a bug."""


@dataclass
class DeviceInfo:
    backend: str
    index: int
    name: str
    arch: str                  # sm_90a, gfx942, ... (the arch_specs.json key)
    arch_detail: str           # compute capability or full gcnArchName
    sm_count: int
    l2_bytes: int
    memory_bytes: int
    clock_mhz: int = 0
    memory_clock_mhz: int = 0
    memory_bus_bits: int = 0
    driver_version: str = ""
    runtime_version: str = ""
    pci_bus_id: str = ""       # domain:bus:device.function: names the GPU to NVML / amdsmi, whose
                               # indices count every GPU (the backend's ordinal follows *_VISIBLE_DEVICES)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class DeviceBuffer:
    ptr: int
    nbytes: int


class Backend(ABC):
    name: str = ""

    # ------------------------------------------------------------------ device
    @abstractmethod
    def device_info(self) -> DeviceInfo: ...

    def device_count(self) -> int:
        """GPUs this runtime sees (what `--devices all` means); a backend that cannot tell sees its own."""
        return 1

    # ------------------------------------------------------------------ memory
    @abstractmethod
    def alloc(self, nbytes: int) -> DeviceBuffer: ...

    @abstractmethod
    def free(self, buf: DeviceBuffer) -> None: ...

    @abstractmethod
    def copy_to_device(self, buf: DeviceBuffer, host: np.ndarray) -> None: ...

    @abstractmethod
    def copy_to_host(self, buf: DeviceBuffer, host: np.ndarray) -> None: ...

    @abstractmethod
    def memset(self, buf: DeviceBuffer, byte: int, stream=None) -> None:
        """Asynchronous on `stream` (the default stream when None)."""

    def upload(self, host: np.ndarray) -> DeviceBuffer:
        host = np.ascontiguousarray(host)
        buf = self.alloc(max(host.nbytes, 1))
        if host.nbytes:
            self.copy_to_device(buf, host)
        return buf

    def download(self, buf: DeviceBuffer, shape, dtype) -> np.ndarray:
        host = np.empty(shape, dtype=dtype)
        if host.nbytes:
            self.copy_to_host(buf, host)
        return host

    def duplicate(self, buf: DeviceBuffer) -> DeviceBuffer:
        """A new buffer holding a copy of `buf` (through the host here; GPU backends copy on the device)."""
        return self.upload(self.download(buf, (buf.nbytes,), np.uint8))

    # ------------------------------------------------------------------ code
    @abstractmethod
    def load_module(self, image: bytes): ...

    @abstractmethod
    def get_function(self, module, name: str): ...

    @abstractmethod
    def set_dynamic_shared(self, function, nbytes: int) -> None:
        """Allow `nbytes` of dynamic shared memory (needed above 48 KiB on NVIDIA)."""

    @abstractmethod
    def launch(self, function, grid, block, shared_bytes: int, args: "KernelArguments", stream=None) -> None:
        """Launch with one by-value struct argument (`KernelArguments`, built once per point so
        nothing is packed between the timing events)."""

    def encode_tensor_map(self, dtype: str, geometry) -> bytes:
        """The 128-byte tensor map (TMA descriptor) of a 16-bit tensor, `geometry` a
        kernels_wgmma.TensorGeometry: 128-byte swizzled boxes, zeros out of bounds."""
        raise BackendError(f"the {self.name} backend has no tensor maps (NVIDIA sm_90+ only)")

    # ------------------------------------------------------------------ sync and timing
    @abstractmethod
    def synchronize(self) -> None:
        """Wait for the device; raises BackendError (sticky when the context is lost)."""

    @abstractmethod
    def create_event(self): ...

    @abstractmethod
    def record_event(self, event, stream=None) -> None: ...

    @abstractmethod
    def elapsed_s(self, start, end) -> float: ...

    @abstractmethod
    def destroy_event(self, event) -> None: ...

    # ------------------------------------------------------------------ graphs
    # Capture records what the launches enqueue on the backend's capture stream (launches,
    # memsets and event records with stream=None go there between begin and end) into a graph
    # that replays with one launch call: no per-kernel launch overhead, for timing tiny kernels.
    graphs: bool = False

    def begin_capture(self) -> None:
        raise NotImplementedError(f"the {self.name} backend cannot capture graphs")

    def end_capture(self):
        """The captured graph; raises BackendError when the capture was invalidated."""
        raise NotImplementedError(f"the {self.name} backend cannot capture graphs")

    def graph_kernel_count(self, graph) -> int:
        raise NotImplementedError(f"the {self.name} backend cannot capture graphs")

    def instantiate_graph(self, graph):
        raise NotImplementedError(f"the {self.name} backend cannot capture graphs")

    def launch_graph(self, graph_exec, stream=None) -> None:
        raise NotImplementedError(f"the {self.name} backend cannot capture graphs")

    def destroy_graph(self, graph, graph_exec=None) -> None:
        raise NotImplementedError(f"the {self.name} backend cannot capture graphs")

    def close(self) -> None:
        """Release the context (optional)."""


class KernelArguments:
    """The void** array a launch API wants for a kernel taking one by-value struct; `address`
    stays valid as long as this object lives."""

    def __init__(self, struct_bytes: bytes):
        self._blob = ctypes.create_string_buffer(struct_bytes, len(struct_bytes))
        self._pointers = (ctypes.c_void_p * 1)(ctypes.addressof(self._blob))
        self.address = ctypes.addressof(self._pointers)
