"""AMD runtime on hip-python (`from hip import hip`).

Not run on AMD hardware by this project (no AMD GPU is available to it): the calls mirror the
CUDA backend one for one, and the tests check the error paths and version matching without a GPU.
"""
from __future__ import annotations

import ctypes

import numpy as np

from .base import Backend, BackendError, BackendUnavailable, DeviceBuffer, DeviceInfo

_STICKY = {"hipErrorIllegalAddress", "hipErrorAssert", "hipErrorLaunchFailure", "hipErrorIllegalState",
           "hipErrorLaunchTimeOut", "hipErrorMemoryAllocation"}
AMD_LDS_BYTES = 64 * 1024


def _import_hip():
    try:
        from hip import hip
    except ImportError as e:
        raise BackendUnavailable(f"hip-python is not installed ({e}); pip install 'fmha-bench[rocm]'") from None
    return hip


def hip_python_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("hip-python")
    except Exception:  # not installed
        return None


def versions_match(hip_python: str, runtime_version: int) -> bool:
    """hip-python's version is the ROCm release it was built for (6.4.x <-> HIP 6.4);
    hipRuntimeGetVersion encodes major*10^7 + minor*10^5 + patch."""
    parts = hip_python.split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return False
    return (int(parts[0]), int(parts[1])) == (runtime_version // 10_000_000, runtime_version // 100_000 % 100)


class HipBackend(Backend):
    name = "hip"
    graphs = True

    def __init__(self, device_index: int = 0):
        self.hip = _import_hip()
        try:
            self._check(self.hip.hipInit(0), "hipInit")
            count = self._check(self.hip.hipGetDeviceCount(), "hipGetDeviceCount")
        except BackendError as e:
            raise BackendUnavailable(f"no usable AMD GPU: {e}") from None
        except RuntimeError as e:  # libamdhip64.so missing
            raise BackendUnavailable(f"no ROCm runtime: {e}") from None
        if count == 0:
            raise BackendUnavailable("the HIP runtime sees no GPU")
        if not 0 <= device_index < count:
            raise BackendUnavailable(f"--device {device_index}: only {count} AMD GPU(s) (0..{count - 1})")
        self.index, self.count = device_index, count
        self._check(self.hip.hipSetDevice(device_index), "hipSetDevice")
        # stream=None means the null stream, except while a graph is being captured (see cuda.py).
        self._stream = None
        self._capture_stream = None

    def _on(self, stream):
        return self._stream if stream is None else stream

    def _check(self, result, what: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = self.hip.hipGetErrorName(err)
            name = name[0] if isinstance(name, tuple) else name
            name = name.decode() if isinstance(name, bytes) else str(name)
            raise BackendError(f"{what}: {name}", sticky=name in _STICKY)
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def device_count(self) -> int:
        return self.count

    def device_info(self) -> DeviceInfo:
        from ..archs import arch_from_device
        props = self.hip.hipDeviceProp_t()
        self._check(self.hip.hipGetDeviceProperties(props, self.index), "hipGetDeviceProperties")
        gcn = props.gcnArchName
        gcn = gcn.decode() if isinstance(gcn, bytes) else str(gcn)
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        runtime = int(self._check(self.hip.hipRuntimeGetVersion(), "hipRuntimeGetVersion"))
        driver = int(self._check(self.hip.hipDriverGetVersion(), "hipDriverGetVersion"))
        hp = hip_python_version() or "?"
        bus_id = self._check(self.hip.hipDeviceGetPCIBusId(64, self.index), "hipDeviceGetPCIBusId")
        return DeviceInfo(
            backend="hip", index=self.index, name=name.split("\0", 1)[0],
            arch=arch_from_device("amd", gcn_arch_name=gcn), arch_detail=gcn,
            sm_count=int(props.multiProcessorCount), l2_bytes=int(props.l2CacheSize),
            memory_bytes=int(props.totalGlobalMem), clock_mhz=int(props.clockRate) // 1000,
            memory_clock_mhz=int(props.memoryClockRate) // 1000, memory_bus_bits=int(props.memoryBusWidth),
            driver_version=str(driver), runtime_version=f"HIP {runtime}, hip-python {hp}",
            pci_bus_id=str(bus_id).split("\0", 1)[0],
            extra={"hip_python_matches_runtime": versions_match(hp, runtime)},
        )

    def alloc(self, nbytes: int) -> DeviceBuffer:
        ptr = self._check(self.hip.hipMalloc(max(int(nbytes), 1)), f"hipMalloc({nbytes})")
        return DeviceBuffer(int(ptr), int(nbytes))

    def free(self, buf: DeviceBuffer) -> None:
        self._check(self.hip.hipFree(buf.ptr), "hipFree")

    def copy_to_device(self, buf: DeviceBuffer, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        kind = self.hip.hipMemcpyKind.hipMemcpyHostToDevice
        self._check(self.hip.hipMemcpy(buf.ptr, host.ctypes.data, host.nbytes, kind), "hipMemcpy H2D")

    def copy_to_host(self, buf: DeviceBuffer, host: np.ndarray) -> None:
        kind = self.hip.hipMemcpyKind.hipMemcpyDeviceToHost
        self._check(self.hip.hipMemcpy(host.ctypes.data, buf.ptr, host.nbytes, kind), "hipMemcpy D2H")

    def memset(self, buf: DeviceBuffer, byte: int, stream=None) -> None:
        self._check(self.hip.hipMemsetD8Async(buf.ptr, byte & 0xFF, buf.nbytes, self._on(stream)), "hipMemsetD8Async")

    def duplicate(self, buf: DeviceBuffer) -> DeviceBuffer:
        copy = self.alloc(buf.nbytes)
        self._check(self.hip.hipMemcpyDtoD(copy.ptr, buf.ptr, buf.nbytes), "hipMemcpyDtoD")
        return copy

    def load_module(self, image: bytes):
        return self._check(self.hip.hipModuleLoadData(image), "hipModuleLoadData")

    def get_function(self, module, name: str):
        return self._check(self.hip.hipModuleGetFunction(module, name.encode()), f"hipModuleGetFunction({name})")

    def set_dynamic_shared(self, function, nbytes: int) -> None:
        # AMD needs no opt-in; LDS is the hard limit.
        if nbytes > AMD_LDS_BYTES:
            raise BackendError(f"{nbytes} bytes of shared memory exceed the {AMD_LDS_BYTES}-byte LDS")

    def launch(self, function, grid, block, shared_bytes: int, args, stream=None) -> None:
        self._check(self.hip.hipModuleLaunchKernel(function, *grid, *block, int(shared_bytes), self._on(stream),
                                                   args.address, None), "hipModuleLaunchKernel")

    def synchronize(self) -> None:
        self._check(self.hip.hipDeviceSynchronize(), "kernel execution (hipDeviceSynchronize)")

    def create_event(self):
        return self._check(self.hip.hipEventCreate(), "hipEventCreate")

    def record_event(self, event, stream=None) -> None:
        self._check(self.hip.hipEventRecord(event, self._on(stream)), "hipEventRecord")

    def elapsed_s(self, start, end) -> float:
        self._check(self.hip.hipEventSynchronize(end), "hipEventSynchronize")
        return float(self._check(self.hip.hipEventElapsedTime(start, end), "hipEventElapsedTime")) * 1e-3

    def destroy_event(self, event) -> None:
        self._check(self.hip.hipEventDestroy(event), "hipEventDestroy")

    # ------------------------------------------------------------------ graphs
    def begin_capture(self) -> None:
        if self._capture_stream is None:
            self._capture_stream = self._check(self.hip.hipStreamCreateWithFlags(self.hip.hipStreamNonBlocking),
                                               "hipStreamCreateWithFlags")
        mode = self.hip.hipStreamCaptureMode.hipStreamCaptureModeThreadLocal
        self._check(self.hip.hipStreamBeginCapture(self._capture_stream, mode), "hipStreamBeginCapture")
        self._stream = self._capture_stream

    def end_capture(self):
        self._stream = None
        return self._check(self.hip.hipStreamEndCapture(self._capture_stream), "hipStreamEndCapture")

    def graph_kernel_count(self, graph) -> int:
        # hip-python's hipGraphGetNodes passes an uninitialised count and room for one node, so
        # the two-call protocol goes to the runtime hip-python itself loaded (same soname).
        lib = ctypes.CDLL("libamdhip64.so")

        def call(name, *args):
            self._check(self.hip.hipError_t(getattr(lib, name)(*args)), name)

        handle, count = ctypes.c_void_p(int(graph)), ctypes.c_size_t(0)
        call("hipGraphGetNodes", handle, None, ctypes.byref(count))
        nodes = (ctypes.c_void_p * count.value)()
        call("hipGraphGetNodes", handle, nodes, ctypes.byref(count))
        kernel, node_type = int(self.hip.hipGraphNodeType.hipGraphNodeTypeKernel), ctypes.c_int(0)
        kernels = 0
        for node in nodes[:count.value]:
            call("hipGraphNodeGetType", ctypes.c_void_p(node), ctypes.byref(node_type))
            kernels += node_type.value == kernel
        return kernels

    def instantiate_graph(self, graph):
        return self._check(self.hip.hipGraphInstantiateWithFlags(graph, 0), "hipGraphInstantiateWithFlags")

    def launch_graph(self, graph_exec, stream=None) -> None:
        self._check(self.hip.hipGraphLaunch(graph_exec, self._on(stream)), "hipGraphLaunch")

    def destroy_graph(self, graph, graph_exec=None) -> None:
        if graph_exec is not None:
            self._check(self.hip.hipGraphExecDestroy(graph_exec), "hipGraphExecDestroy")
        self._check(self.hip.hipGraphDestroy(graph), "hipGraphDestroy")

    def close(self) -> None:
        if self._capture_stream is not None:
            self._check(self.hip.hipStreamDestroy(self._capture_stream), "hipStreamDestroy")
