"""Sweep workers: one child process per GPU that runs points, and the parent's handle on it.

Why a process per GPU: a kernel that faults poisons its CUDA/HIP context for good, one that
spins never returns, and a driver bug can kill the process. In a worker, each of these costs
the worker, not the sweep: the coordinator (runner.py) records the provider that was running as
`crashed` or `timeout` with the tail of the worker's log, starts a fresh worker (compiled kernels
come from the on-disk cache) and goes on.

The worker runs in its own session (os.setsid): a Ctrl-C in the terminal reaches only the
coordinator, which lets the points in flight finish. It dies with its parent (PDEATHSIG on
Linux, and EOF on the pipe everywhere), so a killed sweep leaves no GPU process behind.

Messages, worker -> coordinator (tuples over a multiprocessing pipe):
    ("ready", device_json, provider_names, device_count)   after opening the GPU and building
    ("failed", message)                                     could not get ready (fatal for the run)
    ("start", index, provider_name)                         the provider is about to use the GPU
    ("rows", index, [row dicts], context_lost)              the point's rows
coordinator -> worker: ("point", index, Point, skip_providers) or ("stop",).
"""
from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Optional

from .point_runner import Instruments, PointSettings, run_point

LOG_TAIL_LINES = 6
PR_SET_PDEATHSIG = 1


@dataclass
class WorkerJob:
    """Everything a worker needs to set itself up, sent once at spawn (it must pickle)."""
    sweep: object                      # the loaded Sweep
    provider_names: list
    settings: PointSettings
    problems: list                     # the runnable problems: what to build, what --all-instances expands
    kernel: Optional[str] = None       # --kernel
    all_instances: bool = False
    ck_binary: Optional[str] = None
    log_dir: Optional[str] = None      # each worker's stdout/stderr go to <log_dir>/worker-<device>.log
    # Where the GPU and the providers come from: dotted "module:function" names, so tests can run
    # whole sweeps on a CPU stand-in (tests/fake_gpu.py) through the real worker machinery.
    backend_factory: str = "fmha_bench.backends:open_backend"
    providers_factory: str = "fmha_bench.worker:make_providers"


def _resolve(dotted: str):
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def make_providers(job: WorkerJob, device) -> list:
    """The run's providers on this device, --kernel applied, --all-instances expanded, built."""
    from .providers import get_providers
    providers = get_providers(job.provider_names, sweep=job.sweep, ck_binary=job.ck_binary)
    for provider in providers:
        if job.kernel and hasattr(provider, "force_kernel"):
            provider.force_kernel(job.kernel)
    if job.all_instances:
        providers = _with_every_instance(providers, job.problems, device)
    for provider in providers:
        if hasattr(provider, "build"):
            provider.build([q for q in job.problems if provider.supports(q, device) is None], device)
    return providers


def _with_every_instance(providers, problems, device) -> list:
    """--all-instances: after `fmha` (the dispatcher's pick), one `fmha:<tag>` provider per
    candidate instance any of the points has, so each candidate is timed beside the pick."""
    from .dispatch import candidates
    from .providers.fmha import FmhaProvider
    tags = {}
    for problem in problems:
        found = candidates(problem, device.arch)
        if not isinstance(found, str):
            tags.update((tag, True) for tag, _ in found)
    out = []
    for provider in providers:
        out.append(provider)
        if provider.name == "fmha":
            out += [FmhaProvider(tag) for tag in tags]
    return out


# ----------------------------------------------------------------------------- the child process
def _detach(log_path: Optional[str]) -> None:
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the pipe's EOF still ends the worker once it is between points
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


def worker_main(conn: Connection, device_index: int, job: WorkerJob, log_path: Optional[str]) -> None:
    _detach(log_path)
    try:
        backend = _resolve(job.backend_factory)(device_index)
        tools = Instruments.open(backend)
        providers = _resolve(job.providers_factory)(job, tools.device)
        count = backend.device_count()
    except Exception as e:  # noqa: BLE001 - whatever stops the worker, the coordinator reports it
        traceback.print_exc()
        conn.send(("failed", _one_line(e)))
        return
    conn.send(("ready", tools.device.to_json(), [p.name for p in providers], count))
    by_name = {p.name: p for p in providers}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            tools.close()
            return
        _, index, point, skip = message
        chosen = [by_name[name] for name in by_name if name not in skip]
        rows = run_point(point, chosen, tools, job.settings, on_start=lambda name: conn.send(("start", index, name)))
        lost = any(row.status == "crashed" for row in rows)
        conn.send(("rows", index, [row.to_json() for row in rows], lost))
        sys.stdout.flush()
        if lost:
            return  # the context is gone (no cleanup can run on it); the coordinator starts a fresh worker


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


# ----------------------------------------------------------------------------- the parent's handle
@dataclass
class Worker:
    """A worker process on one GPU, as the coordinator sees it."""
    device_index: int
    job: WorkerJob
    process: Optional[multiprocessing.Process] = None
    conn: Optional[Connection] = None
    ready: bool = False
    task: Optional[tuple] = None           # (index, point, skip) in flight
    provider: Optional[str] = None         # the provider that last said "start"
    provider_since: float = 0.0
    restarts: int = 0
    log_path: Optional[Path] = None
    log_offset: int = 0                    # where this incarnation's output starts in the log

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no GPU state inherited
        parent_end, child_end = context.Pipe()
        if self.job.log_dir:
            self.log_path = Path(self.job.log_dir) / f"worker-{self.device_index}.log"
            self.log_offset = self.log_path.stat().st_size if self.log_path.is_file() else 0
        self.process = context.Process(target=worker_main, name=f"fmha-bench-worker-{self.device_index}",
                                       args=(child_end, self.device_index, self.job,
                                             str(self.log_path) if self.log_path else None), daemon=True)
        self.process.start()
        child_end.close()
        self.conn, self.ready, self.task, self.provider = parent_end, False, None, None

    def send_point(self, index: int, point, skip: frozenset) -> None:
        self.task, self.provider = (index, point, skip), None
        self.conn.send(("point", index, point, tuple(sorted(skip))))

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (its compilers and binaries too)."""
        if self.process is None:
            return
        if self.process.is_alive():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()

    def restart(self) -> None:
        self.kill()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        """Ask an idle worker to exit; kill it if it does not within a few seconds."""
        if self.process is None or not self.process.is_alive():
            return
        try:
            self.conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.process.join(timeout=5)
        self.kill()

    def exit_description(self) -> str:
        code = self.process.exitcode if self.process is not None else None
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines this worker wrote to its log, joined with ' | ' (what a crashed row shows)."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(self.log_offset, handle.tell() - 8192))
            text = handle.read().decode("utf-8", errors="replace")
        kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(kept)
