"""`fmha`: this project's kernels from kernel_src/, JIT-compiled for the device's arch.

A split-KV point (num_splits != 1; 0 = the count `kernels.choose_num_splits` picks for the
device's SM count) launches the forward kernel into the session's workspaces, then the combine
kernel, on one stream; the row's kernel name says how many splits ran.

An appendkv point launches the append (new K/V rotated into the paged cache, queries rotated into
a workspace), then the dispatcher's pick for the equivalent paged attention over the updated
cache, on one stream and both timed: that pair is the operation. Each launch writes the same
values to the same slots, so repeated launches leave the cache as the first one did. prepare()
first puts the cache back as the inputs made it (new slots NaN) and poisons the rotated-Q
workspace, so the validated launch shows what this provider's append wrote, not what an earlier
provider of the point (--all-instances) left there.

A page_order address point reads its page table from a workspace holding the visit plan
(fmha_bench/page_order.py), built and uploaded by prepare(); the row's notes say what it changed.
"""
from __future__ import annotations

import fnmatch
import time

import numpy as np

from .base import Prepared, Provider


class FmhaProvider(Provider):
    """`fmha` runs the dispatcher's pick; `fmha:<tag>` (--all-instances) runs that candidate."""
    kind = "kernel"

    def __init__(self, tag: str | None = None):
        self.tag = tag
        self.name = "fmha" if tag is None else f"fmha:{tag}"
        self._built = {}       # instance name -> BuildResult
        self._functions = {}   # instance name -> loaded function handle
        self._forced = None

    def describe(self) -> str:
        return ("this project's HIP kernels (kernel_src/), JIT-built per arch (nvcc/NVRTC, hipcc/clang); "
                "fmha:<tag> runs one candidate (tags: --all-instances)")

    def force_kernel(self, label: str | None) -> None:
        """--kernel: the first candidate whose instance label or tag contains `label` runs (a
        pattern with * ? [ ] matches a whole tag or label instead: `wgmma-*ws`)."""
        self._forced = label

    def _select(self, problem, arch):
        """((tag, the attention instance to run), None) or (None, the reason there is none)."""
        from ..dispatch import candidates
        from ..kernels import attention_problem, select_kernel
        from ..kernels_mixed import grid_candidates
        append = problem.family == "appendkv"
        if append:   # the append's own limits first, then its attention's candidates
            refusal = select_kernel(problem, arch)
            if isinstance(refusal, str):
                return None, refusal
            problem = attention_problem(problem)
        found = candidates(problem, arch)
        if isinstance(found, str):
            return None, found
        if append:   # the attention after the append is one grid launch
            found = grid_candidates(found)
        if self.tag:
            found = [(tag, spec) for tag, spec in found if tag == self.tag]
            if not found:
                return None, _not_a_candidate(self.tag, problem, arch)
        if self._forced:
            wanted = [(tag, spec) for tag, spec in found if _names(self._forced, tag, spec.label)]
            if not wanted:
                return None, f"--kernel {self._forced}: no candidate matches ({', '.join(t for t, _ in found)})"
            found = wanted
        return found[0], None

    def _specs(self, problem, arch) -> list:
        """The instances a point needs: its forward kernel, the combine when it may split, the
        append for appendkv; for a mixed point, those its candidate launches."""
        from ..kernels import select_append, select_combine
        from ..kernels_mixed import candidate_instances, is_persistent
        picked, _ = self._select(problem, arch)
        if picked is None:
            return []
        tag, spec = picked
        if problem.family == "mixed" or is_persistent(tag):
            return candidate_instances(problem, arch, tag, spec)
        companions = (select_combine(problem, arch), select_append(problem, arch))
        return [spec, *(c for c in companions if c is not None)]

    def supports(self, problem, device) -> str | None:
        return self._select(problem, device.arch)[1]

    def build(self, problems, device, jobs=None) -> None:
        """Compile every instance the points need, in parallel, before the first point runs."""
        from ..build import build_all
        specs = {spec: True for p in problems for spec in self._specs(p, device.arch)}
        if specs:
            self._built.update(build_all(list(specs), jobs=jobs))

    def _function(self, spec, problem, session):
        """(instance name, loaded function) of `spec`, compiling it first if the sweep's build missed it."""
        from ..build import instance_name
        name = instance_name(spec)
        result = self._built.get(name)
        if result is None:
            self.build([problem], session.device)
            result = self._built[name]
        if not result.ok:
            raise CompileFailed(f"{name}: {result.error}")
        function = self._functions.get(name)
        if function is None:
            backend = session.backend
            function = backend.get_function(backend.load_module(result.path.read_bytes()), spec.entry)
            self._functions[name] = function
        return name, function

    def _forward_launch(self, spec, function, problem, session, num_splits: int = 1) -> tuple:
        """(grid, block, shared bytes) of the forward instance, its shared memory allowed."""
        from ..dispatch import launch_config
        return _allow_shared(session, function, launch_config(spec, problem, num_splits))

    def prepare(self, problem, session) -> Prepared:
        from ..dispatch import num_splits_for, p_precision
        from ..kernels import combine_launch_config, kernel_args, select_combine, split_workspace_bytes
        backend = session.backend
        picked, reason = self._select(problem, session.device.arch)
        if picked is None:
            raise RuntimeError(reason)
        tag, spec = picked
        from ..kernels_mixed import SEPARATE_TAG, is_persistent
        if problem.family == "mixed" and tag == SEPARATE_TAG:
            return self._prepare_separate(problem, session)
        if is_persistent(tag):
            return self._prepare_persistent(problem, session, spec)
        name, function = self._function(spec, problem, session)
        if problem.family == "appendkv":
            return self._prepare_append(problem, session, spec, name, function)
        num_splits = num_splits_for(problem, spec, session.device.sm_count)
        ptrs, notes = _pointers(session, problem)
        if problem.num_splits != 1:
            notes.append(f"num_splits {num_splits} ({'auto' if problem.num_splits == 0 else 'given'})")
        grid, block, shared = self._forward_launch(spec, function, problem, session, num_splits)
        if num_splits == 1:
            args = _arguments(session, spec, problem, kernel_args(problem, session.inputs, ptrs))

            def launch():
                backend.launch(function, grid, block, shared, args)

            return Prepared(launch=launch, kernel=name, kernel_version=_version(name), p_precision=p_precision(spec),
                            notes=notes, graph_safe=True)

        combine_spec = select_combine(problem, session.device.arch)
        combine_name, combine = self._function(combine_spec, problem, session)
        combine_grid, combine_block, combine_shared = combine_launch_config(combine_spec, problem)
        for buffer, nbytes in split_workspace_bytes(problem, num_splits).items():
            ptrs[buffer] = session.workspace(buffer, nbytes).ptr
        # one argument for both: the combine reads its FmhaParams, which a TMA instance's argument starts with
        args = _arguments(session, spec, problem, kernel_args(problem, session.inputs, ptrs, num_splits))

        def launch_split():
            backend.launch(function, grid, block, shared, args)
            backend.launch(combine, combine_grid, combine_block, combine_shared, args)

        return Prepared(launch=launch_split, kernel=f"{name} split{num_splits} + {combine_name}",
                        kernel_version=f"{_version(name)}+{_version(combine_name)}", p_precision=p_precision(spec),
                        notes=notes, graph_safe=True)

    def _prepare_append(self, problem, session, spec, name, function) -> Prepared:
        """appendkv: the append, then the attention instance `spec`, sharing one FmhaParams."""
        from ..kernels import (append_launch_config, append_workspace_bytes, attention_problem, kernel_args,
                               select_append)
        from ..dispatch import p_precision
        _restore_cache(session)
        append_spec = select_append(problem, session.device.arch)
        append_name, append = self._function(append_spec, problem, session)
        append_grid, append_block, append_shared = append_launch_config(append_spec, problem)
        grid, block, shared = self._forward_launch(spec, function, attention_problem(problem), session)
        ptrs = {**session.ptrs(), **_poisoned_workspaces(session, append_workspace_bytes(problem))}
        # one argument for both: the append reads its FmhaParams, which a TMA instance's argument starts with
        args = _arguments(session, spec, attention_problem(problem), kernel_args(problem, session.inputs, ptrs))
        return _in_order(session, [(append, append_grid, append_block, append_shared, args),
                                   (function, grid, block, shared, args)], [append_name, name], p_precision(spec))

    def _prepare_persistent(self, problem, session, spec) -> Prepared:
        """The persistent launch over the point's work plan, then (family mixed: its plans split
        rows, and one graph replays for any composition) the merge of the rows the plan split."""
        from ..backends.base import KernelArguments
        from ..dispatch import p_precision
        from ..kernels import merge_items_spec
        from ..kernels_mixed import (merge_launch_config, mixed_args, persistent_launch_config, plan_for,
                                     plan_workspace_bytes)
        backend, arch, sms = session.backend, session.device.arch, session.device.sm_count
        name, function = self._function(spec, problem, session)
        grid, block, shared = _allow_shared(session, function, persistent_launch_config(spec, arch, sms))
        plan = plan_for(problem, spec, arch, sms)
        ptrs, notes = _pointers(session, problem)
        ptrs.update(_poisoned_workspaces(session, plan_workspace_bytes(plan, problem.hdim_v)))
        backend.copy_to_device(session.workspaces["plan"], plan.words())
        args = KernelArguments(mixed_args(problem, session.inputs, ptrs))
        launches, names = [(function, grid, block, shared, args)], [name]
        if problem.family == "mixed":
            merge_name, merge = self._function(merge_items_spec(problem, arch), problem, session)
            launches.append((merge, *merge_launch_config(grid[0]), args))
            names.append(merge_name)
        return _in_order(session, launches, names, p_precision(spec), [plan.summary(), *notes])

    def _prepare_separate(self, problem, session) -> Prepared:
        """Each part (decode-like requests, prefill requests) through its own pick, on one stream."""
        from ..dispatch import p_precision
        from ..kernels_mixed import part_args, separate_parts
        parts = separate_parts(problem, session.device.arch)
        launches, names = [], []
        ptrs, notes = _pointers(session, problem)
        for part in parts:
            name, function = self._function(part.spec, problem, session)   # builds as the mixed point's
            config = self._forward_launch(part.spec, function, part.problem, session)
            params = part_args(problem, session.inputs, ptrs, part)
            launches.append((function, *config, _arguments(session, part.spec, part.problem, params)))
            names.append(name)
            notes.append(f"separate: requests {part.first}..{part.end - 1} via {part.tag}")
        precisions = {p_precision(part.spec) for part in parts}
        return _in_order(session, launches, names, "input" if "input" in precisions else "fp32", notes)


def _pointers(session, problem) -> tuple[dict, list]:
    """(the session's device pointers, notes for the row). With page_order address the page table
    pointer names the visit plan's table instead (page_order.address_ordered), built and uploaded
    now, outside the timed region; the note says how many slots it changed and what it cost."""
    from ..page_order import address_ordered, device_table
    ptrs = session.ptrs()
    if problem.page_order == "table":
        return ptrs, []
    started = time.perf_counter()
    field, ordered = device_table(problem, address_ordered(problem, session.inputs.tables))
    host_ms = (time.perf_counter() - started) * 1e3
    workspace = session.workspace(f"{problem.page_order}_{field}", ordered.nbytes)
    session.backend.copy_to_device(workspace, np.ascontiguousarray(ordered))
    ptrs[field] = workspace.ptr
    changed = int(np.count_nonzero(ordered != device_table(problem, session.inputs.tables)[1]))
    return ptrs, [f"page order {problem.page_order}: {changed} of {ordered.size} table slots changed, "
                  f"host plan {host_ms:.1f} ms"]


def _arguments(session, spec, problem, params: bytes):
    """A forward grid launch's KernelArguments: the packed FmhaParams, followed by K's and V's tensor
    maps for a TMA instance (kernels_wgmma.tma_arguments; paged: over the cache's pages)."""
    from ..backends.base import KernelArguments
    from ..kernels_wgmma import tma_arguments, uses_tma
    if uses_tma(spec):
        pool_pages = session.inputs.k.shape[0] if problem.is_paged else 0
        params = tma_arguments(params, problem, spec, session.backend.encode_tensor_map, pool_pages)
    return KernelArguments(params)


def _in_order(session, launches: list, names: list, p_precision: str, notes: list = ()) -> Prepared:
    """Kernels launched one after another on the backend's stream, each (function, grid, block,
    shared bytes, KernelArguments); the row names every instance (`names`) and their versions."""
    backend = session.backend

    def launch():
        for function, grid, block, shared, args in launches:
            backend.launch(function, grid, block, shared, args)

    return Prepared(launch=launch, kernel=" + ".join(names), kernel_version="+".join(map(_version, names)),
                    p_precision=p_precision, notes=list(notes), graph_safe=True)


def _poisoned_workspaces(session, sizes: dict) -> dict:
    """Pointers of the session's workspaces of these sizes, poisoned now: an earlier provider of the
    point may have filled them, and an element this one forgets to write must show."""
    from ..session import POISON_BYTE
    ptrs = {}
    for name, nbytes in sizes.items():
        workspace = session.workspace(name, nbytes)
        session.backend.memset(workspace, POISON_BYTE)
        ptrs[name] = workspace.ptr
    return ptrs


def _allow_shared(session, function, config: tuple) -> tuple:
    """A launch's (grid, block, dynamic shared bytes), `function` allowed that much shared memory.
    Always opted in: the default 48 KiB limit counts a kernel's static shared memory too (the
    paged instances' row tables), so a dynamic size just under it can still need the opt-in."""
    if config[2] > 0:
        session.backend.set_dynamic_shared(function, config[2])
    return config


def _names(pattern: str, tag: str, label: str) -> bool:
    """Does --kernel `pattern` name this candidate: a substring of its tag or label, or, with
    wildcards, a match of either whole."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(tag, pattern) or fnmatch.fnmatchcase(label, pattern)
    return pattern in tag or pattern in label


def _not_a_candidate(tag, problem, arch) -> str:
    """Why candidate `tag` does not run this point."""
    from ..kernels_mixed import SEPARATE_TAG, separate_parts
    if problem.family == "mixed" and tag == SEPARATE_TAG:
        return f"separate launches: {separate_parts(problem, arch)}"
    return f"{tag} is not a candidate instance for this point"


def _restore_cache(session) -> None:
    """The K/V cache as the inputs made it (the new tokens' slots NaN), over whatever an earlier
    provider of the point appended into it."""
    for name in ("k", "v"):
        session.backend.copy_to_device(session.buffers[name], np.ascontiguousarray(session.host_inputs[name]))


def _version(instance: str) -> str:
    """The content hash that ends an instance name."""
    return instance.rsplit("-", 1)[-1]


class CompileFailed(RuntimeError):
    """The instance a point needs did not compile: that point fails, the sweep goes on."""
