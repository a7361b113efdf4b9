"""`fmha-bench sweep` without --dry-run: the coordinator.

Points run in worker processes, one per GPU (worker.py); this process owns the run store and
never touches a GPU. It hands each idle worker the next point, writes a point's rows once every
provider of it has a row, and survives what a point can do to a worker:

- a provider that loses the GPU context (illegal address, trap) or kills its worker gets a
  `crashed` row with the tail of the worker's log; one that runs past --timeout gets `timeout`
  and its worker is killed. The worker is restarted and the point runs again without that
  provider, so the other providers' rows (and their cross-checks) come from one clean attempt,
  the same rows a run without the bad provider gives.
- Ctrl-C stops handing out points, lets the points in flight finish, writes them and prints how
  to resume; a second Ctrl-C kills the workers at once (their points are redone on resume).
- `--resume RUN` (resume.py) reopens a run, repairs a line cut short by a crash and runs only
  the points that do not yet have a row for every provider.
"""
from __future__ import annotations

import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Optional

from . import __version__
from .errors import EXIT_OK, EXIT_POINT_FAILED, UserError
from .point_runner import PointSettings, point_row
from .resume import shard_record
from .schema import Result
from .worker import Worker, WorkerJob

BAD_STATUSES = ("failed", "mismatch", "crashed", "timeout")
DEFAULT_TIMEOUT_S = 300.0   # per provider per point: a hung kernel costs at most this
POLL_S = 0.25               # how often the coordinator looks at timeouts and Ctrl-C


@dataclass
class SweepOutcome:
    exit_code: int          # EXIT_OK, or EXIT_POINT_FAILED when a row failed, mismatched, crashed or timed out
    run_path: Path
    rows: list              # every row of the run (dicts, as results.jsonl holds them), resumed ones included
    complete: bool = True   # False when interrupted before every point had its rows


@dataclass
class _Device:
    """What the workers said about their GPU: one arch per run, so rows compare."""
    info: Optional[dict] = None
    providers: Optional[list] = None
    count: int = 0


@dataclass
class _Interrupts:
    """Ctrl-C once: finish the points in flight, then stop. Twice, or SIGTERM (a scheduler's
    time limit): stop now; the points in flight run again on resume."""
    count: int = 0
    previous: dict = field(default_factory=dict)

    def install(self) -> None:
        self.previous = {sig: signal.signal(sig, self.handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handler(self, signum, frame):
        self.count += 1
        if self.count == 1 and signum == signal.SIGINT:
            print("\nstopping after the points in flight (Ctrl-C again to stop now)", file=sys.stderr, flush=True)
        else:
            raise KeyboardInterrupt


@dataclass
class _Pending:
    """Rows of points whose attempts lost a provider: kept until a clean attempt completes them."""
    crashed: dict = field(default_factory=dict)     # index -> [row dicts]
    skip: dict = field(default_factory=dict)        # index -> frozenset of provider names


def run_sweep(sweep, points, options, show_table: bool = True, store=None) -> SweepOutcome:
    """Run `points` (with `store`, an existing run reopened by --resume, only those without all
    their rows) and return the outcome. Raises UserError when no worker can start."""
    from .providers import get_providers
    from .store import RunStore
    names = _provider_names(sweep, options)
    if not options.worker_factories:  # (a test's stand-in GPU brings providers of its own)
        get_providers(names, sweep=sweep, ck_binary=options.ck_binary)  # a bad name fails here, before any run dir
    settings = PointSettings(sweep.measure, options.validate or sweep.validate.mode, sweep.validate.rows,
                             options.seed if options.seed is not None else sweep.seed)
    runnable = [pt.problem for pt in points if pt.problem is not None]
    if store is None:
        store = RunStore.create(options.results_dir, options.run_id, meta={
            "argv": list(options.argv or sys.argv), "sweep_file": str(Path(sweep.path).resolve()), "sweep_sha256": sweep.sha256,
            "run_options": options.to_json(), "points_total": len(points),
            "shard": shard_record(sweep, options, points),
            "settings": {"measure": vars(sweep.measure), "validate": settings.validate_mode,
                         "validate_rows": settings.rows_per_head, "seed": settings.seed},
            "compilers": _compiler_versions(), "tool_version": __version__, "complete": False,
        })
    else:
        store.record_resume(sys.argv)
    log_dir = store.path / "workers"
    log_dir.mkdir(exist_ok=True)
    job = WorkerJob(sweep=sweep, provider_names=names, settings=settings,
                    problems=runnable, kernel=options.kernel, all_instances=options.all_instances,
                    ck_binary=options.ck_binary, log_dir=str(log_dir), **dict(options.worker_factories))
    done_ids = store.complete_point_ids()
    todo = [(i, pt) for i, pt in enumerate(points) if pt.id not in done_ids]
    coordinator = _Coordinator(store, job, options, todo, len(points) - len(todo), len(points))
    try:
        coordinator.run()
    finally:
        coordinator.shutdown()
        store.finish(complete=coordinator.complete)
    run = store.load()
    if show_table:
        from .report import print_runs
        print_runs([store.path])
    print(f"run {store.run_id}: {len(run.rows)} rows in {store.path}")
    if not coordinator.complete:
        command = options.command or "sweep"
        print(f"interrupted: {coordinator.points_done} of {len(points)} points done; "
              f"resume with: fmha-bench {command} --resume {store.path}", file=sys.stderr)
    bad = any(r.get("status") in BAD_STATUSES for r in run.rows)
    return SweepOutcome(EXIT_POINT_FAILED if bad or not coordinator.complete else EXIT_OK, store.path, run.rows,
                        coordinator.complete)


class _Coordinator:
    def __init__(self, store, job: WorkerJob, options, todo: list, already_done: int, total: int):
        self.store, self.job, self.options = store, job, options
        self.queue = deque(_dispatch_order(todo, options, job))
        self.points = dict(todo)
        self.points_done, self.total = already_done, total
        self.timeout = options.timeout if options.timeout is not None else DEFAULT_TIMEOUT_S
        self.device = _Device()
        self.pending = _Pending()
        self.workers: list[Worker] = []
        self.interrupts = _Interrupts()
        self.complete = False
        self.counts: dict = {}

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self.interrupts.install()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
        try:
            with self.progress:
                self.task = self.progress.add_task("sweep", total=self.total, completed=self.points_done)
                if self.queue:
                    self._start_workers()
                    self._loop()
                self.complete = not self.queue and not self._busy()
        except KeyboardInterrupt:
            for worker in self.workers:
                worker.kill()
        finally:
            self.interrupts.restore()

    def _loop(self) -> None:
        while self.queue or self._busy():
            if self.interrupts.count and not self._busy():
                return
            if not self.interrupts.count:
                self._hand_out()
            live = [w for w in self.workers if w.process is not None]
            ready = wait([w.conn for w in live] + [w.process.sentinel for w in live], timeout=POLL_S)
            for worker in live:
                if worker.conn in ready:
                    self._receive(worker)
                elif worker.process.sentinel in ready and not worker.conn.poll():
                    self._lost(worker)
            self._check_timeouts()

    def _busy(self) -> bool:
        return any(w.task is not None for w in self.workers)

    def _hand_out(self) -> None:
        for worker in self.workers:
            if worker.ready and worker.task is None and self.queue:
                index = self.queue.popleft()
                worker.send_point(index, self.points[index], self.pending.skip.get(index, frozenset()))

    # ------------------------------------------------------------------ workers
    def _start_workers(self) -> None:
        """The first worker says how many GPUs there are (for --devices all), then the rest start."""
        wanted = self.options.device_list()   # [] for --devices all
        first = Worker(wanted[0] if wanted else 0, self.job)
        first.start()
        self.workers.append(first)
        self._await_ready(first)
        indices = wanted if wanted else list(range(self.device.count))
        for index in indices:
            if not 0 <= index < self.device.count:
                raise UserError(f"GPU {index} does not exist: this machine has {self.device.count} (0.."
                                f"{self.device.count - 1})", where="--devices")
        for index in indices[1:]:
            worker = Worker(index, self.job)
            worker.start()
            self.workers.append(worker)

    def _await_ready(self, worker: Worker) -> None:
        while not worker.ready:
            if worker.conn.poll(POLL_S):
                self._receive(worker)
            elif not worker.process.is_alive():
                self._lost(worker)

    def _receive(self, worker: Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            self._lost(worker)
            return
        kind = message[0]
        if kind == "ready":
            self._on_ready(worker, *message[1:])
        elif kind == "failed":
            raise UserError(f"the worker for GPU {worker.device_index} could not start: {message[1]} "
                            f"(log: {worker.log_path})")
        elif kind == "start":
            worker.provider, worker.provider_since = message[2], time.monotonic()
        elif kind == "rows":
            _, index, rows, context_lost = message
            worker.task = worker.provider = None
            self._on_rows(index, rows)
            if context_lost:
                worker.restart()

    def _on_ready(self, worker: Worker, info: dict, providers: list, count: int) -> None:
        if self.device.info is None:
            self.device = _Device(info, providers, count)
            self.store.set_run_devices(info, providers)
        elif info["arch"] != self.device.info["arch"] or providers != self.device.providers:
            raise UserError(f"GPU {worker.device_index} is a {info['name']} ({info['arch']}), GPU "
                            f"{self.device.info['index']} a {self.device.info['name']} ({self.device.info['arch']}): "
                            "one run needs one kind of GPU", where="--devices")
        worker.ready = True

    def _lost(self, worker: Worker) -> None:
        """The worker died (a crash, an abort, the OOM killer)."""
        worker.process.join(timeout=5)  # its pipe closes a moment before its exit status is known
        what = f"worker {worker.exit_description()}"
        if not worker.ready:
            raise UserError(f"the worker for GPU {worker.device_index} died while starting ({what}): "
                            f"{worker.log_tail() or 'no output'} (log: {worker.log_path})")
        if worker.task is not None:
            self._provider_lost(worker, "crashed", what)
        worker.restart()

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.task is not None and worker.provider and now - worker.provider_since > self.timeout:
                worker.kill()
                self._provider_lost(worker, "timeout", f"no result after {self.timeout:g} s; worker killed")
                worker.restart()

    def _provider_lost(self, worker: Worker, status: str, what: str) -> None:
        """Record the provider the worker was running; run the point again without it. When no
        provider had started (inputs or the reference killed the worker), every provider left
        gets the row and the point is done."""
        index, point, skip = worker.task
        worker.task = None
        tail = worker.log_tail()
        device = self.device_info()
        if worker.provider:
            reason = f"{what} while {worker.provider} ran: {tail}" if tail else f"{what} while {worker.provider} ran"
            self.pending.crashed.setdefault(index, []).append(
                point_row(point, worker.provider, device, self.job.settings.seed, status, reason).to_json())
            self.pending.skip[index] = skip | {worker.provider}
            self.queue.appendleft(index)
            return
        reason = f"{what} before any provider ran (inputs or reference): {tail}"
        rows = [point_row(point, name, device, self.job.settings.seed, status, reason).to_json()
                for name in self.device.providers if name not in skip]
        self._on_rows(index, rows)

    def device_info(self):
        from .backends.base import DeviceInfo
        return DeviceInfo(**self.device.info)

    # ------------------------------------------------------------------ rows
    def _on_rows(self, index: int, rows: list) -> None:
        crashed = [row for row in rows if row["status"] == "crashed"]
        if crashed and len(rows) > len(crashed):  # the attempt lost the context: redo the others cleanly
            self.pending.crashed.setdefault(index, []).extend(crashed)
            self.pending.skip[index] = self.pending.skip.get(index, frozenset()) | {r["provider"] for r in crashed}
            self.queue.appendleft(index)
            return
        order = {name: i for i, name in enumerate(self.device.providers)}
        final = sorted(self.pending.crashed.pop(index, []) + rows, key=lambda r: order.get(r["provider"], 0))
        self.pending.skip.pop(index, None)
        self.store.append_rows([Result.from_json(r) for r in final])
        for row in final:
            self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        self.points_done += 1
        self.progress.update(self.task, advance=1, description=_counts_text(self.counts))

    def shutdown(self) -> None:
        for worker in self.workers:
            if worker.task is None:
                worker.stop()
            else:
                worker.kill()


def _dispatch_order(todo: list, options, job: WorkerJob) -> list:
    """Point indices in the order workers take them: the sweep's order on one GPU (readable
    progress), longest first on several (the last point to finish is a short one)."""
    if len(options.device_list()) == 1:
        return [index for index, _ in todo]
    from .shards import SHARD_COST_ARCH, CostSettings, order_for_workers
    s = job.settings
    costs = CostSettings(s.measure, s.validate_mode, s.rows_per_head)
    ordered = order_for_workers([point for _, point in todo], SHARD_COST_ARCH, len(job.provider_names), costs)
    position = {id(point): index for index, point in todo}
    return [position[id(point)] for point in ordered]


def _provider_names(sweep, options) -> list[str]:
    if options.providers:
        return [n.strip() for n in options.providers.split(",") if n.strip()]
    return list(sweep.providers or ["fmha"])


def _compiler_versions() -> dict:
    try:
        from .build import compiler_versions
        return compiler_versions()
    except Exception as e:  # informational: never fail a run over it
        return {"error": str(e)}


def _counts_text(counts: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "sweep"
