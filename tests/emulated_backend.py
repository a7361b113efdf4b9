"""A Backend whose device is the CPU: buffers are host memory and kernels run on the CPU emulation
(kernel_src/fmha_cpu_emulation.h), so a provider's prepare/launch path and the GPU tests' own
checking code run end to end without a GPU.

`emulated_device(run_kernel, monkeypatch)` returns the (backend, device info, FmhaProvider)
triple the GPU tests take; `run_kernel(spec, packed FmhaParams, grid)` is test_kernels_emulated's
`launch` fixture. Instances are not compiled for the device: "building" one records its
KernelSpec as the code object, and loading it hands that spec to `run_kernel`. The provider is
forced to the portable kernel (every arch now has a matrix-core family whose emulation is tested
in its own files), so the launch path runs the kernels `run_kernel` knows.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
from backend_stubs import StubBackend

from fmha_bench import build, dtypes
from fmha_bench.backends.base import DeviceBuffer, DeviceInfo
from fmha_bench.build.cache import BuildResult
from fmha_bench.build.instance import KernelSpec
from fmha_bench.kernel_params import FmhaParams

ARCH = "gfx1100"


class EmulatedBackend(StubBackend):
    name = "emulated"

    def __init__(self, run_kernel):
        self._run_kernel = run_kernel
        self._memory = {}   # pointer -> the numpy array that owns it

    def device_info(self):
        return DeviceInfo("emulated", 0, "CPU emulation", ARCH, ARCH, 1, 1 << 20, 1 << 30)

    def alloc(self, nbytes):
        array = np.empty(nbytes, np.uint8)
        self._memory[array.ctypes.data] = array
        return DeviceBuffer(array.ctypes.data, nbytes)

    def free(self, buf):
        del self._memory[buf.ptr]

    def copy_to_device(self, buf, host):
        ctypes.memmove(buf.ptr, np.ascontiguousarray(host).ctypes.data, host.nbytes)

    def copy_to_host(self, buf, host):
        ctypes.memmove(host.ctypes.data, buf.ptr, host.nbytes)

    def memset(self, buf, byte, stream=None):
        ctypes.memset(buf.ptr, byte, buf.nbytes)

    def load_module(self, image):
        fields = json.loads(image)
        return KernelSpec(**{**fields, "defines": tuple(tuple(d) for d in fields["defines"])})

    def get_function(self, module, name):
        assert module.entry == name
        return module

    def encode_tensor_map(self, dtype, geometry):
        return emulated_tensor_map(dtype, geometry)

    def launch(self, function, grid, block, shared_bytes, args, stream=None):
        assert block == (int(dict(function.defines)["FMHA_THREADS"]), 1, 1), block
        params = ctypes.string_at(ctypes.c_void_p.from_address(args.address).value, ctypes.sizeof(FmhaParams))
        self._run_kernel(function, params, grid)


def emulated_tensor_map(dtype: str, g) -> bytes:
    """The CPU emulation's tensor map of a kernels_wgmma.TensorGeometry (what tma_load_4d in
    fmha_async_barrier_emulation.h reads): address, dims, strides, box, element bytes, 16 words."""
    words = [g.address, *g.dims, *g.strides, *g.box, dtypes.get(dtype).itemsize]
    return struct.pack("<16Q", *words, *[0] * (16 - len(words)))


def emulated_device(run_kernel, monkeypatch, tmp_path: Path):
    """(EmulatedBackend, its DeviceInfo, FmhaProvider()), with building patched to record specs."""
    from fmha_bench.providers.fmha import FmhaProvider

    def name(spec):
        return f"{spec.label}_{spec.arch}-emulated"

    def record_specs(specs, jobs=None):
        out = {}
        for spec in specs:
            path = tmp_path / f"{name(spec)}.json"
            path.write_text(json.dumps(dataclasses.asdict(spec)))
            out[name(spec)] = BuildResult(spec, name(spec), "emulation", "built", 0.0, path=path)
        return out

    monkeypatch.setattr(build, "build_all", record_specs)
    monkeypatch.setattr(build, "instance_name", name)
    backend = EmulatedBackend(run_kernel)
    provider = FmhaProvider()
    provider.force_kernel("portable")
    return backend, backend.device_info(), provider
