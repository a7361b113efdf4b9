"""A GPU backend on the CPU for timing and session tests: device memory is host bytes, and a
virtual device clock advances by a fixed time per kernel and per launch call, so event times
and graph replays have exact, known durations."""
from __future__ import annotations

import numpy as np
from backend_stubs import StubBackend

from fmha_bench.backends.base import BackendError, DeviceBuffer, DeviceInfo

MAIN = "main"   # the stream a launch with stream=None goes to outside capture


class ClockBackend(StubBackend):
    """`kernel_s` of device time per kernel, plus `launch_s` per host launch call (a kernel
    launch, or one graph replay): graphs pay the launch cost once for all their kernels."""
    name = "fake"
    graphs = True

    def __init__(self, kernel_s=2e-6, launch_s=5e-6, l2_bytes=1 << 20, graphs=True, short_alloc=0):
        self.kernel_s, self.launch_s, self.l2_bytes, self.graphs = kernel_s, launch_s, l2_bytes, graphs
        self.short_alloc = short_alloc       # bytes every allocation falls short by (a broken allocator)
        self.clock = 0.0
        self.memory: dict[int, bytearray] = {}
        self._next = 0x1000
        self.ran: list = []                  # tags of the kernels executed, in order
        self.memsets: list = []              # (ptr, byte) of every memset
        self.capture = None                  # kernel tags captured so far, while capturing
        self.live_graphs, self.live_execs = set(), set()
        self.graphs_made = 0

    def device_info(self):
        return DeviceInfo("fake", 0, "fake GPU", "sm_90a", "sm_90", 132, self.l2_bytes, 1 << 34)

    # -- memory
    def alloc(self, nbytes):
        self._next += max(nbytes, 1) + 256
        self.memory[self._next] = bytearray(max(nbytes - self.short_alloc, 1))
        return DeviceBuffer(self._next, nbytes - self.short_alloc)

    def free(self, buf):
        del self.memory[buf.ptr]

    def copy_to_device(self, buf, host):
        data = np.ascontiguousarray(host).tobytes()
        self.memory[buf.ptr][:len(data)] = data

    def copy_to_host(self, buf, host):
        host.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(self.memory[buf.ptr][:host.nbytes]), np.uint8)

    def memset(self, buf, byte, stream=None):
        self.memsets.append((buf.ptr, byte))
        self.memory[buf.ptr][:] = bytes([byte]) * len(self.memory[buf.ptr])

    # -- code
    def launch(self, function, grid, block, shared_bytes, args, stream=None):
        """`function` is a tag recorded when the kernel runs; a launch on another stream than
        the default one is not captured."""
        if self.capture is not None and stream is None:
            self.capture.append(function)
            return
        self.clock += self.launch_s + self.kernel_s
        self.ran.append(function)

    # -- timing
    def create_event(self):
        return [None]

    def record_event(self, event, stream=None):
        event[0] = self.clock

    def elapsed_s(self, start, end):
        return end[0] - start[0]

    # -- graphs
    def begin_capture(self):
        assert self.capture is None, "capture already in progress"
        self.capture = []

    def end_capture(self):
        graph, self.capture = tuple(self.capture), None
        self.graphs_made += 1
        handle = ("graph", self.graphs_made, graph)
        self.live_graphs.add(handle)
        return handle

    def graph_kernel_count(self, graph):
        return len(graph[2])

    def instantiate_graph(self, graph):
        handle = ("exec", graph)
        self.live_execs.add(handle)
        return handle

    def launch_graph(self, graph_exec, stream=None):
        kernels = graph_exec[1][2]
        self.clock += self.launch_s + self.kernel_s * len(kernels)
        self.ran.extend(kernels)

    def destroy_graph(self, graph, graph_exec=None):
        if graph_exec is not None:
            self.live_execs.remove(graph_exec)
        self.live_graphs.remove(graph)


def kernel(backend, tag, stream=None):
    """A launch callable enqueuing one kernel tagged `tag`."""
    return lambda: backend.launch(tag, (1, 1, 1), (1, 1, 1), 0, None, stream)


def failing(error: BackendError):
    def launch():
        raise error
    return launch
