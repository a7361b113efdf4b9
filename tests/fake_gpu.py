"""A CPU stand-in for a GPU, so whole sweeps run through the real worker processes in CI.

`open_backend(index)` gives a Backend over host memory (FAKE_GPU_COUNT GPUs, default 2);
`make_providers(job, device)` gives the providers a test asks for:
    cpu-ref*     a tensor provider whose "kernel" is the NumPy reference: rows validate ok
    fake:fault   its launch loses the context (a sticky BackendError, like an illegal address)
    fake:exit    its launch kills the worker process (like a driver abort)
    fake:hang    its launch never returns (like a kernel that spins)
    fake:fault-on-<text>  faults only on points whose name contains <text>
    fake:pause-<s>        sleeps <s> seconds per launch (a slow point, to interrupt a run mid-way)
Used as WorkerJob factories through SweepOptions.worker_factories (see FACTORIES).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from fmha_bench import dtypes
from fake_backend import ClockBackend

from fmha_bench.backends.base import BackendError, DeviceInfo
from fmha_bench.providers.base import Prepared, Provider

FACTORIES = (("backend_factory", "fake_gpu:open_backend"), ("providers_factory", "fake_gpu:make_providers"))


class FakeBackend(ClockBackend):
    """Host memory (ClockBackend's); events read the wall clock, because the stand-in providers
    do their work in Python rather than through launches on the virtual clock."""

    def __init__(self, index: int):
        super().__init__(graphs=False)
        self.index = index

    def device_count(self) -> int:
        return int(os.environ.get("FAKE_GPU_COUNT", "2"))

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(backend="fake", index=self.index, name="CPU stand-in", arch="sm_90a", arch_detail="fake",
                          sm_count=4, l2_bytes=1 << 16, memory_bytes=1 << 30)

    def record_event(self, event, stream=None):
        event[0] = time.perf_counter()

    def elapsed_s(self, start, end):
        return max(end[0] - start[0], 1e-9)


def open_backend(index: int) -> FakeBackend:
    return FakeBackend(index)


class ReferenceProvider(Provider):
    """Writes the reference output (bits of the output dtype) into the session's O and LSE."""
    kind = "kernel"
    takes_tensors = True

    def __init__(self, name="cpu-ref"):
        self.name = name

    def supports(self, problem, device):
        return None

    def version(self):
        return "1"

    def describe(self):
        return "test stand-in"

    def prepare(self, problem, session):
        from fmha_bench.reference import attention
        out = attention(problem, session.inputs)
        o_bits = dtypes.encode(out.o, problem.out_dt)
        lse = out.lse.astype(np.float32)

        def launch():
            self.on_launch(problem, session)
            session.backend.copy_to_device(session.buffers["o"], o_bits)
            session.backend.copy_to_device(session.buffers["lse"], lse)

        return Prepared(launch=launch, kernel=self.name, kernel_version="1")

    def on_launch(self, problem, session):
        pass


class MisbehavingProvider(ReferenceProvider):
    def __init__(self, name):
        super().__init__(name)
        self.behaviour = name.split(":", 1)[1]

    def on_launch(self, problem, session):
        b = self.behaviour
        if b == "fault" or (b.startswith("fault-on-") and b[len("fault-on-"):] in problem.name()):
            raise BackendError("cuLaunchKernel: CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access "
                               "was encountered (fake)", sticky=True)
        if b == "exit":
            print("fake driver: aborting the worker", file=sys.stderr, flush=True)
            os._exit(134)
        if b == "hang":
            while True:
                time.sleep(1)
        if b.startswith("pause-"):
            time.sleep(float(b[len("pause-"):]))


def make_providers(job, device) -> list:
    return [ReferenceProvider(name) if name.startswith("cpu-ref") else MisbehavingProvider(name)
            for name in job.provider_names]
