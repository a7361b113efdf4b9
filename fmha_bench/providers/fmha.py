"""`fmha`: this project's kernels from kernel_src/, JIT-compiled for the device's arch."""
from __future__ import annotations

from .base import Prepared, Provider


class FmhaProvider(Provider):
    name = "fmha"
    kind = "kernel"

    def __init__(self):
        self._built = {}       # instance name -> BuildResult
        self._functions = {}   # instance name -> loaded function handle
        self._forced = None

    def describe(self) -> str:
        return "this project's HIP kernels (kernel_src/), JIT-built per arch (nvcc/NVRTC, hipcc/clang)"

    def force_kernel(self, label: str | None) -> None:
        """--kernel: only instances whose name contains `label` are used."""
        self._forced = label

    def _select(self, problem, arch):
        from ..kernels import select_kernel
        spec = select_kernel(problem, arch)
        if isinstance(spec, str):
            return None, spec
        if self._forced and self._forced not in spec.label:
            return None, f"--kernel {self._forced}: the dispatcher chose {spec.label}"
        return spec, None

    def supports(self, problem, device) -> str | None:
        return self._select(problem, device.arch)[1]

    def build(self, problems, device, jobs=None) -> None:
        """Compile every instance the points need, in parallel, before the first point runs."""
        from ..build import build_all
        specs = {}
        for p in problems:
            spec, _ = self._select(p, device.arch)
            if spec is not None:
                specs[spec] = True
        if specs:
            self._built.update(build_all(list(specs), jobs=jobs))

    def prepare(self, problem, session) -> Prepared:
        from ..backends.base import KernelArguments
        from ..build import instance_name
        from ..kernels import kernel_args, launch_config
        backend = session.backend
        spec, reason = self._select(problem, session.device.arch)
        if spec is None:
            raise RuntimeError(reason)
        name = instance_name(spec)
        result = self._built.get(name)
        if result is None:
            self.build([problem], session.device)
            result = self._built[name]
        if not result.ok:
            raise CompileFailed(f"{name}: {result.error}")
        function = self._functions.get(name)
        if function is None:
            module = backend.load_module(result.path.read_bytes())
            function = backend.get_function(module, spec.entry)
            self._functions[name] = function
        grid, block, shared = launch_config(spec, problem)
        if shared > 48 * 1024:
            backend.set_dynamic_shared(function, shared)
        args = KernelArguments(kernel_args(problem, session.inputs, session.ptrs()))

        def launch():
            backend.launch(function, grid, block, shared, args)

        return Prepared(launch=launch, kernel=name, kernel_version=name.rsplit("-", 1)[-1], p_precision="fp32")


class CompileFailed(RuntimeError):
    """The instance a point needs did not compile: that point fails, the sweep goes on."""
