"""NVIDIA runtime on cuda-bindings' driver API (cuda.bindings.driver)."""
from __future__ import annotations

import ctypes

import numpy as np

from .base import Backend, BackendError, BackendUnavailable, DeviceBuffer, DeviceInfo

# Errors after which the context is unusable: the point crashed and the worker must restart.
_STICKY = {"CUDA_ERROR_ILLEGAL_ADDRESS", "CUDA_ERROR_ASSERT", "CUDA_ERROR_HARDWARE_STACK_ERROR",
           "CUDA_ERROR_ILLEGAL_INSTRUCTION", "CUDA_ERROR_MISALIGNED_ADDRESS", "CUDA_ERROR_INVALID_ADDRESS_SPACE",
           "CUDA_ERROR_INVALID_PC", "CUDA_ERROR_LAUNCH_FAILED", "CUDA_ERROR_LAUNCH_TIMEOUT"}


def _import_driver():
    try:
        from cuda.bindings import driver
    except ImportError as e:  # the `cuda` extra is not installed
        raise BackendUnavailable(f"cuda-bindings is not installed ({e}); pip install 'fmha-bench[cuda]'") from None
    return driver


class CudaBackend(Backend):
    name = "cuda"
    graphs = True

    def __init__(self, device_index: int = 0):
        self.cu = _import_driver()
        try:
            self._check(self.cu.cuInit(0), "cuInit")
        except BackendError as e:
            raise BackendUnavailable(f"no usable NVIDIA driver: {e}") from None
        except Exception as e:  # cuda-pathfinder raises when libcuda.so is absent
            raise BackendUnavailable(f"no NVIDIA driver: {type(e).__name__}: {e}") from None
        count = self._check(self.cu.cuDeviceGetCount(), "cuDeviceGetCount")
        if count == 0:
            raise BackendUnavailable("the NVIDIA driver sees no GPU")
        if not 0 <= device_index < count:
            raise BackendUnavailable(f"--device {device_index}: only {count} NVIDIA GPU(s) (0..{count - 1})")
        self.index, self.count = device_index, count
        self.device = self._check(self.cu.cuDeviceGet(device_index), "cuDeviceGet")
        self.context = self._check(self.cu.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        self._check(self.cu.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
        # stream=None means the legacy default stream, except while a graph is being captured:
        # then it means the capture stream (capture is impossible on the legacy stream).
        self._stream = 0
        self._capture_stream = None

    # ------------------------------------------------------------------ helpers
    def _check(self, result, what: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, name = self.cu.cuGetErrorName(err)
            _, text = self.cu.cuGetErrorString(err)
            name = name.decode() if isinstance(name, bytes) else str(name)
            text = text.decode() if isinstance(text, bytes) else str(text)
            raise BackendError(f"{what}: {name}: {text}", sticky=name in _STICKY)
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def _on(self, stream):
        return self._stream if stream is None else stream

    def _attr(self, name: str) -> int:
        attr = getattr(self.cu.CUdevice_attribute, name)
        return int(self._check(self.cu.cuDeviceGetAttribute(attr, self.device), name))

    # ------------------------------------------------------------------ device
    def device_count(self) -> int:
        return self.count

    def device_info(self) -> DeviceInfo:
        from ..archs import arch_from_device
        raw = self._check(self.cu.cuDeviceGetName(256, self.device), "cuDeviceGetName")
        name = raw.split(b"\0", 1)[0].decode()
        major = self._attr("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR")
        minor = self._attr("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR")
        total = int(self._check(self.cu.cuDeviceTotalMem(self.device), "cuDeviceTotalMem"))
        driver = int(self._check(self.cu.cuDriverGetVersion(), "cuDriverGetVersion"))
        bus_id = self._check(self.cu.cuDeviceGetPCIBusId(64, self.device), "cuDeviceGetPCIBusId")
        return DeviceInfo(
            backend="cuda", index=self.index, name=name,
            arch=arch_from_device("nvidia", major, minor), arch_detail=f"sm_{major}{minor}",
            sm_count=self._attr("CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT"),
            l2_bytes=self._attr("CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE"),
            memory_bytes=total,
            clock_mhz=self._attr("CU_DEVICE_ATTRIBUTE_CLOCK_RATE") // 1000,
            memory_clock_mhz=self._attr("CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE") // 1000,
            memory_bus_bits=self._attr("CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH"),
            driver_version=f"{driver // 1000}.{driver % 1000 // 10}",
            runtime_version=_bindings_version(),
            pci_bus_id=bus_id.split(b"\0", 1)[0].decode(),
        )

    # ------------------------------------------------------------------ memory
    def alloc(self, nbytes: int) -> DeviceBuffer:
        ptr = self._check(self.cu.cuMemAlloc(max(int(nbytes), 1)), f"cuMemAlloc({nbytes})")
        return DeviceBuffer(int(ptr), int(nbytes))

    def free(self, buf: DeviceBuffer) -> None:
        self._check(self.cu.cuMemFree(buf.ptr), "cuMemFree")

    def copy_to_device(self, buf: DeviceBuffer, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        self._check(self.cu.cuMemcpyHtoD(buf.ptr, host.ctypes.data, host.nbytes), "cuMemcpyHtoD")

    def copy_to_host(self, buf: DeviceBuffer, host: np.ndarray) -> None:
        assert host.flags.c_contiguous
        self._check(self.cu.cuMemcpyDtoH(host.ctypes.data, buf.ptr, host.nbytes), "cuMemcpyDtoH")

    def memset(self, buf: DeviceBuffer, byte: int, stream=None) -> None:
        self._check(self.cu.cuMemsetD8Async(buf.ptr, byte & 0xFF, buf.nbytes, self._on(stream)), "cuMemsetD8Async")

    def duplicate(self, buf: DeviceBuffer) -> DeviceBuffer:
        copy = self.alloc(buf.nbytes)
        self._check(self.cu.cuMemcpyDtoD(copy.ptr, buf.ptr, buf.nbytes), "cuMemcpyDtoD")
        return copy

    # ------------------------------------------------------------------ code
    def load_module(self, image: bytes):
        return self._check(self.cu.cuModuleLoadData(image), "cuModuleLoadData")

    def get_function(self, module, name: str):
        return self._check(self.cu.cuModuleGetFunction(module, name.encode()), f"cuModuleGetFunction({name})")

    def set_dynamic_shared(self, function, nbytes: int) -> None:
        attr = self.cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        self._check(self.cu.cuFuncSetAttribute(function, attr, int(nbytes)), "cuFuncSetAttribute")

    def launch(self, function, grid, block, shared_bytes: int, args, stream=None) -> None:
        self._check(self.cu.cuLaunchKernel(function, *grid, *block, int(shared_bytes), self._on(stream), args.address,
                                           0), "cuLaunchKernel")

    def encode_tensor_map(self, dtype: str, geometry) -> bytes:
        cu = self.cu
        data_type = {"fp16": cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                     "bf16": cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16}[dtype]
        g = geometry
        tensor_map = self._check(cu.cuTensorMapEncodeTiled(
            data_type, len(g.dims), g.address, [cu.cuuint64_t(d) for d in g.dims],
            [cu.cuuint64_t(s) for s in g.strides], [cu.cuuint32_t(b) for b in g.box], [cu.cuuint32_t(1)] * len(g.dims),
            cu.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE, cu.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
            cu.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            cu.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE), "cuTensorMapEncodeTiled")
        return ctypes.string_at(int(tensor_map.getPtr()), 128)

    # ------------------------------------------------------------------ sync and timing
    def synchronize(self) -> None:
        self._check(self.cu.cuCtxSynchronize(), "kernel execution (cuCtxSynchronize)")

    def create_event(self):
        return self._check(self.cu.cuEventCreate(self.cu.CUevent_flags.CU_EVENT_DEFAULT), "cuEventCreate")

    def record_event(self, event, stream=None) -> None:
        self._check(self.cu.cuEventRecord(event, self._on(stream)), "cuEventRecord")

    def elapsed_s(self, start, end) -> float:
        self._check(self.cu.cuEventSynchronize(end), "cuEventSynchronize")
        return float(self._check(self.cu.cuEventElapsedTime(start, end), "cuEventElapsedTime")) * 1e-3

    def destroy_event(self, event) -> None:
        self._check(self.cu.cuEventDestroy(event), "cuEventDestroy")

    # ------------------------------------------------------------------ graphs
    def begin_capture(self) -> None:
        if self._capture_stream is None:
            # Non-blocking: no implicit ordering with the legacy stream, which would invalidate the capture.
            self._capture_stream = self._check(self.cu.cuStreamCreate(self.cu.CUstream_flags.CU_STREAM_NON_BLOCKING),
                                               "cuStreamCreate")
        mode = self.cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        self._check(self.cu.cuStreamBeginCapture(self._capture_stream, mode), "cuStreamBeginCapture")
        self._stream = self._capture_stream

    def end_capture(self):
        self._stream = 0
        return self._check(self.cu.cuStreamEndCapture(self._capture_stream), "cuStreamEndCapture")

    def graph_kernel_count(self, graph) -> int:
        _, count = self._check(self.cu.cuGraphGetNodes(graph, 0), "cuGraphGetNodes")
        if not count:
            return 0
        nodes, count = self._check(self.cu.cuGraphGetNodes(graph, count), "cuGraphGetNodes")
        kernel = self.cu.CUgraphNodeType.CU_GRAPH_NODE_TYPE_KERNEL
        return sum(self._check(self.cu.cuGraphNodeGetType(node), "cuGraphNodeGetType") == kernel
                   for node in nodes[:count])

    def instantiate_graph(self, graph):
        return self._check(self.cu.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")

    def launch_graph(self, graph_exec, stream=None) -> None:
        self._check(self.cu.cuGraphLaunch(graph_exec, self._on(stream)), "cuGraphLaunch")

    def destroy_graph(self, graph, graph_exec=None) -> None:
        if graph_exec is not None:
            self._check(self.cu.cuGraphExecDestroy(graph_exec), "cuGraphExecDestroy")
        self._check(self.cu.cuGraphDestroy(graph), "cuGraphDestroy")

    def close(self) -> None:
        if self._capture_stream is not None:
            self._check(self.cu.cuStreamDestroy(self._capture_stream), "cuStreamDestroy")
        self._check(self.cu.cuDevicePrimaryCtxRelease(self.device), "cuDevicePrimaryCtxRelease")


def _bindings_version() -> str:
    try:
        import cuda.bindings
        return f"cuda-bindings {cuda.bindings.__version__}"
    except Exception:  # version string is informational only
        return "cuda-bindings (unknown version)"
