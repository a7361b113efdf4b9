"""The CUDA and HIP backends' capture plumbing against fake vendor modules (no driver here):
launches go to the capture stream only between begin and end, kernel nodes are counted with the
two-call protocol, copies stay on the device, the PCI bus id is decoded."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from fmha_bench.backends import hip as hip_module
from fmha_bench.backends.base import BackendError, DeviceBuffer, KernelArguments
from fmha_bench.backends.cuda import CudaBackend
from fmha_bench.backends.hip import HipBackend

KERNEL, MEMSET = 0, 2   # node type values (CU_GRAPH_NODE_TYPE_KERNEL / hipGraphNodeTypeKernel are 0)


class FakeDriver(SimpleNamespace):
    """cuda.bindings.driver as far as the graph code uses it; every call is logged."""

    def __init__(self, nodes=(KERNEL, MEMSET, KERNEL)):
        super().__init__(calls=[], nodes=list(nodes), end_error=0)
        self.CUstream_flags = SimpleNamespace(CU_STREAM_NON_BLOCKING=1)
        self.CUstreamCaptureMode = SimpleNamespace(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL=1)
        self.CUgraphNodeType = SimpleNamespace(CU_GRAPH_NODE_TYPE_KERNEL=KERNEL)

    def __getattr__(self, name):   # any other cu* call: logged, succeeds, returns nothing
        if not name.startswith("cu"):
            raise AttributeError(name)
        return lambda *args: (self.calls.append((name, *args)), 0)[1]

    def cuStreamCreate(self, flags):
        self.calls.append(("cuStreamCreate", flags))
        return 0, "capture-stream"

    def cuStreamEndCapture(self, stream):
        self.calls.append(("cuStreamEndCapture", stream))
        return self.end_error, (None if self.end_error else "graph")

    def cuGraphGetNodes(self, graph, count):
        self.calls.append(("cuGraphGetNodes", count))
        return 0, [f"node{i}" for i in range(min(count, len(self.nodes)))], len(self.nodes) if count == 0 else count

    def cuGraphNodeGetType(self, node):
        return 0, self.nodes[int(node[4:])]

    def cuMemAlloc(self, nbytes):
        return 0, 0x5000

    def cuDeviceGetPCIBusId(self, length, device):
        return 0, b"0000:1B:00.0\0\0\0"

    def cuGetErrorName(self, err):
        return 0, b"CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"

    def cuGetErrorString(self, err):
        return 0, b"operation failed due to a previous error during capture"


def _cuda(driver):
    backend = CudaBackend.__new__(CudaBackend)   # no driver to initialise: set what __init__ would
    backend.cu, backend.index, backend.count, backend.device = driver, 0, 1, "dev"
    backend._stream, backend._capture_stream = 0, None
    return backend


ARGS = KernelArguments(b"\0" * 8)


def _streams(driver, name):
    """The stream argument of every logged call `name`."""
    position = {"cuLaunchKernel": 9, "cuMemsetD8Async": 4, "cuEventRecord": 2, "cuGraphLaunch": 2}[name]
    return [call[position] for call in driver.calls if call[0] == name]


def test_cuda_launches_go_to_the_capture_stream_only_while_capturing():
    driver = FakeDriver()
    backend = _cuda(driver)
    backend.launch("f", (1, 1, 1), (1, 1, 1), 0, ARGS)
    backend.begin_capture()
    backend.launch("f", (1, 1, 1), (1, 1, 1), 0, ARGS)
    backend.memset(DeviceBuffer(0x10, 4), 0)
    graph = backend.end_capture()
    backend.launch("f", (1, 1, 1), (1, 1, 1), 0, ARGS)
    backend.launch("f", (1, 1, 1), (1, 1, 1), 0, ARGS, stream="explicit")
    assert graph == "graph"
    assert _streams(driver, "cuLaunchKernel") == [0, "capture-stream", 0, "explicit"]
    assert _streams(driver, "cuMemsetD8Async") == ["capture-stream"]
    assert ("cuStreamCreate", 1) in driver.calls   # non-blocking: no implicit sync with the legacy stream
    assert ("cuStreamBeginCapture", "capture-stream", 1) in driver.calls


def test_cuda_an_invalidated_capture_raises_and_restores_the_default_stream():
    driver = FakeDriver()
    driver.end_error = 900
    backend = _cuda(driver)
    backend.begin_capture()
    with pytest.raises(BackendError, match="cuStreamEndCapture: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED") as e:
        backend.end_capture()
    assert not e.value.sticky
    backend.record_event("event")
    assert _streams(driver, "cuEventRecord") == [0]


def test_cuda_counts_only_kernel_nodes_asking_for_the_count_first():
    driver = FakeDriver(nodes=(KERNEL, MEMSET, KERNEL, KERNEL))
    assert _cuda(driver).graph_kernel_count("graph") == 3
    assert [call[1] for call in driver.calls if call[0] == "cuGraphGetNodes"] == [0, 4]
    assert _cuda(FakeDriver(nodes=())).graph_kernel_count("graph") == 0


def test_cuda_graph_lifecycle_and_device_copy():
    driver = FakeDriver()
    backend = _cuda(driver)
    backend.launch_graph("exec")
    backend.destroy_graph("graph", "exec")
    copy = backend.duplicate(DeviceBuffer(0x10, 64))
    assert _streams(driver, "cuGraphLaunch") == [0]
    assert [c[0] for c in driver.calls[1:]] == ["cuGraphExecDestroy", "cuGraphDestroy", "cuMemcpyDtoD"]
    assert driver.calls[-1] == ("cuMemcpyDtoD", 0x5000, 0x10, 64) and copy == DeviceBuffer(0x5000, 64)


# ----------------------------------------------------------------------------- HIP
class FakeHipLib:
    """libamdhip64 through ctypes: hipGraphGetNodes / hipGraphNodeGetType with out-parameters."""

    def __init__(self, nodes):
        self.nodes, self.handles = list(nodes), []

    def hipGraphGetNodes(self, handle, nodes, count_ref):
        self.handles.append(handle.value)
        count = count_ref._obj
        if nodes is None:
            count.value = len(self.nodes)
        else:
            for i in range(count.value):
                nodes[i] = 0x100 + i
        return 0

    def hipGraphNodeGetType(self, node, type_ref):
        type_ref._obj.value = self.nodes[node.value - 0x100]
        return 0


class FakeGraph:
    def __int__(self):
        return 0xABC


def test_hip_counts_kernel_nodes_through_the_runtime_library(monkeypatch):
    lib = FakeHipLib([MEMSET, KERNEL, KERNEL])
    monkeypatch.setattr(hip_module.ctypes, "CDLL", lambda name: lib if name == "libamdhip64.so" else None)
    backend = HipBackend.__new__(HipBackend)
    backend.hip = SimpleNamespace(hipError_t=int, hipGraphNodeType=SimpleNamespace(hipGraphNodeTypeKernel=KERNEL))
    assert backend.graph_kernel_count(FakeGraph()) == 2
    assert lib.handles == [0xABC, 0xABC]


def test_hip_launches_go_to_the_capture_stream_only_while_capturing():
    calls = []

    def log(name, result=0):
        return lambda *args: (calls.append((name, *args)), result)[1]

    backend = HipBackend.__new__(HipBackend)
    backend.hip = SimpleNamespace(
        hipStreamNonBlocking=1, hipStreamCaptureMode=SimpleNamespace(hipStreamCaptureModeThreadLocal="local"),
        hipStreamCreateWithFlags=log("create", (0, "capture-stream")), hipStreamBeginCapture=log("begin"),
        hipStreamEndCapture=log("end", (0, "graph")), hipModuleLaunchKernel=log("launch"))
    backend._stream, backend._capture_stream = None, None
    backend.launch("f", (1, 1, 1), (1, 1, 1), 0, ARGS)
    backend.begin_capture()
    backend.launch("f", (1, 1, 1), (1, 1, 1), 0, ARGS)
    assert backend.end_capture() == "graph"
    backend.launch("f", (1, 1, 1), (1, 1, 1), 0, ARGS)
    assert [c[9] for c in calls if c[0] == "launch"] == [None, "capture-stream", None]
    assert ("begin", "capture-stream", "local") in calls and ("create", 1) in calls


def test_device_info_carries_the_pci_bus_id_decoded(monkeypatch):
    driver = FakeDriver()
    driver.CUdevice_attribute = SimpleNamespace()
    backend = _cuda(driver)
    capability = {"CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR": 9, "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR": 0}
    monkeypatch.setattr(CudaBackend, "_attr", lambda self, name: capability.get(name, 1000))
    driver.cuDeviceGetName = lambda n, dev: (0, b"Fake GPU\0")
    driver.cuDeviceTotalMem = lambda dev: (0, 1 << 30)
    driver.cuDriverGetVersion = lambda: (0, 13000)
    assert backend.device_info().pci_bus_id == "0000:1B:00.0"
