"""`selftest:fault`, `selftest:hang`, `selftest:trap`, `selftest:abort`: test-only providers that
misbehave on purpose, to prove on a real GPU that a sweep survives them (issue #6).

fault, hang and trap launch a kernel of kernel_src/selftest.hip (a wild write, an endless loop,
a device trap); abort kills the worker process from the host, as a driver abort would. Each
still runs the point's real inputs through the session (buffers, poisoning), so everything
around the launch is the ordinary path. They are not listed among the providers a user picks;
name them with --providers.
"""
from __future__ import annotations

import os
import struct

from .base import Prepared, Provider

BEHAVIOURS = ("fault", "hang", "trap", "abort")
SOURCE = "selftest.hip"
WILD_ADDRESS = 0x10   # the first page is never mapped


class SelftestProvider(Provider):
    kind = "kernel"

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.name = f"selftest:{behaviour}"

    def describe(self) -> str:
        return f"test-only: {self.behaviour} on purpose (proves the sweep survives it)"

    def supports(self, problem, device) -> str | None:
        return None if device.backend in ("cuda", "hip") else f"needs a GPU backend, not {device.backend}"

    def prepare(self, problem, session) -> Prepared:
        backend = session.backend
        if self.behaviour == "abort":
            return Prepared(launch=os.abort, kernel=self.name)
        function = _load(backend, session.device.arch, f"selftest_{self.behaviour}")
        flag = session.workspace("selftest_flag", 4)
        backend.memset(flag, 0)
        from ..backends.base import KernelArguments
        args = KernelArguments(struct.pack("<Qq", flag.ptr, WILD_ADDRESS))

        def launch():
            backend.launch(function, (1, 1, 1), (32, 1, 1), 0, args)

        return Prepared(launch=launch, kernel=f"{self.name} ({SOURCE})")


def _load(backend, arch: str, entry: str):
    from ..build import build
    from ..build.instance import KernelSpec
    result = build(KernelSpec(source=SOURCE, entry=entry, defines=(), arch=arch, label=entry))
    if not result.ok:
        raise RuntimeError(f"{entry}: {result.error}")
    return backend.get_function(backend.load_module(result.path.read_bytes()), entry)
