"""The one place that times GPU work.

Event timing (`Timer.measure`): device events around each launch, the L2 flushed before each
sample outside the timed region, stopping on min samples, then noise, within a budget.

Graph timing (`Timer.measure_graph`), for tiny launches whose event-timed samples are dominated
by launch overhead and event resolution: K launches captured into one graph, round-robin over
replicas of the point's inputs (`PointSession.replica()`), so that every launch reads inputs the
previous ones pushed out of the L2 (the rotation replaces the flush); each sample is one replay
between events, divided by K. Capture is checked: one launch must capture at least one kernel,
and the K-launch graph exactly K times as many.

Self-checks for the row's warnings: `Timer.flush_warning` (the flush buffer must exceed the L2),
`Timing.noise_warning` (noise above the bound however the loop stopped),
`Timer.rotation_warning` (graph inputs rotated over less than asked).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

from .backends.base import Backend, BackendError
from .stats import summarize

GRAPH_MODES = ("off", "on", "auto")
GRAPH_AUTO_BELOW_S = 20e-6
"""`graphs: auto` graph-times a graph-safe point whose event-timed median is under this: below
~20 us the launch overhead and the event resolution (~0.5-1 us each) are several percent."""
GRAPH_REPLAY_TARGET_S = 200e-6
"""K is chosen so that K one-launch replays would last this long. A one-launch replay includes
the replay's fixed cost (a few us), so a K-launch replay of tiny kernels lasts less (~80 us for
2 us kernels): still long enough for events to resolve it to ~1%."""
MAX_GRAPH_LAUNCHES = 1024        # cap on K (capture and instantiation cost grow with it)
MAX_REPLICAS = 128               # cap on input copies; rotation_warning tells when it cut the rotation short
ESTIMATE_REPLAYS = 5             # replays of the one-launch graph that estimate a launch's time for K


@dataclass
class MeasureSettings:
    warmup: int = 3
    min_samples: int = 10
    max_samples: int = 200
    max_noise: float = 0.03        # stop once (q3 - q1) / median is at or under this
    time_budget_s: float = 2.0     # wall-clock budget per point for the sampling loop
    l2_flush: bool = True
    graphs: str = "off"            # off | on | auto (graph-time graph-safe points under GRAPH_AUTO_BELOW_S)
    rotate_bytes: int = 0          # graph timing rotates over inputs of at least this many bytes (0: the flush size)


@dataclass
class Timing:
    times_s: list                  # per launch: one event pair, or one graph replay / launches_per_replay
    stop_reason: str               # "noise" | "max_samples" | "budget"
    flush_bytes: int               # 0 when nothing was flushed (graph timing rotates inputs instead)
    mode: str = "events"           # events | graph (schema.Result.timing_mode)
    launches_per_replay: int = 1   # graph: K
    replicas: int = 1              # graph: input copies the launches rotate over

    def summary(self) -> dict:
        """The row fields this timing sets (schema.Result): statistics, timing_mode and l2_flush."""
        return {**summarize(self.times_s), "timing_mode": self.mode, "l2_flush": self.flush_bytes > 0}

    def noise_warning(self, settings: MeasureSettings) -> str | None:
        """Why the median is less certain than asked, whatever stopped the loop; None when it is not."""
        stats = summarize(self.times_s)
        noise = stats["rel_noise"]
        if noise is None or noise <= settings.max_noise:
            return None
        why = "time budget reached" if self.stop_reason == "budget" else "max_samples reached"
        return f"noise {noise:.1%} above {settings.max_noise:.1%} ({why} after {stats['samples']} samples)"

    def note(self) -> str | None:
        """How a graph timing was made, for the row's notes."""
        if self.mode != "graph":
            return None
        return (f"graph-timed: {self.launches_per_replay} launches per replay, round-robin over {self.replicas} "
                f"input replica(s), no L2 flush; time per launch = replay time / {self.launches_per_replay}")


class GraphTimingError(RuntimeError):
    """Graph timing could not be trusted or done (no kernel captured, wrong kernel count, the
    runtime refused the capture): the point keeps its event timing, with this as a warning."""


def graph_timing_wanted(settings: MeasureSettings, graph_safe: bool, event_timing: Timing) -> bool:
    """Whether to graph-time a point after its event timing (`Prepared.graph_safe` says the
    provider's launch enqueues only kernels on the backend's stream, no host work)."""
    if not graph_safe or settings.graphs == "off":
        return False
    return settings.graphs == "on" or summarize(event_timing.times_s)["time_s_median"] < GRAPH_AUTO_BELOW_S


def launches_per_replay(launch_s: float, replicas: int) -> int:
    """K: enough launches that a replay lasts GRAPH_REPLAY_TARGET_S, a whole number of rounds
    over the replicas (each read equally often), at most MAX_GRAPH_LAUNCHES (but one round)."""
    wanted = math.ceil(GRAPH_REPLAY_TARGET_S / max(launch_s, 1e-9) - 1e-6)   # 200e-6 / 2e-6 is 100.00000000000001
    rounds = max(1, math.ceil(wanted / replicas))
    return replicas * max(1, min(rounds, MAX_GRAPH_LAUNCHES // replicas))


class Timer:
    """Owns the L2 flush buffer and a pool of events for one backend."""

    def __init__(self, backend: Backend, l2_bytes: int):
        self.backend = backend
        self.l2_bytes = int(l2_bytes)
        # Twice the L2 so a memset over it evicts everything the previous sample left behind.
        self.flush_bytes = max(2 * self.l2_bytes, 8 << 20)
        self.flush = backend.alloc(self.flush_bytes)
        self.events = []

    # ------------------------------------------------------------------ self-checks
    def flush_warning(self, settings: MeasureSettings) -> str | None:
        """Why the L2 flush may not empty the L2; None when it does (or no flush was asked)."""
        if not settings.l2_flush:
            return None
        mib = self.flush.nbytes / 2**20
        if self.l2_bytes <= 0:
            return f"L2 size unknown (the runtime reported {self.l2_bytes}): the {mib:.0f} MiB flush may not evict it"
        if self.flush.nbytes <= self.l2_bytes:
            return f"L2 flush buffer ({mib:.0f} MiB) is not larger than the L2 ({self.l2_bytes / 2**20:.0f} MiB)"
        return None

    def rotation_target(self, settings: MeasureSettings) -> int:
        return settings.rotate_bytes or self.flush_bytes

    def replicas_for(self, input_bytes: int, settings: MeasureSettings) -> int:
        """How many input sets (the session and its replicas) graph timing rotates over: enough
        that together they exceed `rotate_bytes` (default twice the L2), at most MAX_REPLICAS."""
        return min(MAX_REPLICAS, self.rotation_target(settings) // max(int(input_bytes), 1) + 1)

    def rotation_warning(self, input_bytes: int, replicas: int, settings: MeasureSettings) -> str | None:
        rotated, target = int(input_bytes) * replicas, self.rotation_target(settings)
        if rotated > target:
            return None
        return (f"graph timing rotated {rotated / 2**20:.1f} MiB of inputs ({replicas} replicas, at most "
                f"{MAX_REPLICAS}), not over {target / 2**20:.0f} MiB: launches may read inputs from the L2")

    # ------------------------------------------------------------------ event timing
    def measure(self, launch, settings: MeasureSettings, before_each=None) -> Timing:
        """`launch()` enqueues the timed work; `before_each()` (untimed) e.g. poisons outputs."""
        times, stop = self._sample(launch, settings, before_each, flush=settings.l2_flush)
        return Timing(times, stop, self.flush_bytes if settings.l2_flush else 0)

    # ------------------------------------------------------------------ graph timing
    def measure_graph(self, launches: list, settings: MeasureSettings) -> Timing:
        """Graph-time `launches` (one launch callable per input replica, the session's own first).
        Raises GraphTimingError when the graphs do not hold the kernels or the runtime refuses
        them; a sticky BackendError (the context is lost) propagates as it is."""
        b = self.backend
        if not b.graphs:
            raise GraphTimingError(f"the {b.name} backend cannot capture graphs")
        try:
            per_launch, launch_s = self._probe_one(launches[0])
            k = launches_per_replay(launch_s, len(launches))
            graph = self._capture([launches[i % len(launches)] for i in range(k)])
            graph_exec = None
            try:
                found = b.graph_kernel_count(graph)
                if found != k * per_launch:
                    raise GraphTimingError(f"the graph of {k} launches holds {found} kernels, not {k} x {per_launch}")
                graph_exec = b.instantiate_graph(graph)
                times, stop = self._sample(lambda: b.launch_graph(graph_exec), settings)
            finally:
                b.destroy_graph(graph, graph_exec)
        except BackendError as e:
            if e.sticky:
                raise
            raise GraphTimingError(f"graph timing failed: {e}") from None
        return Timing([t / k for t in times], stop, 0, mode="graph", launches_per_replay=k, replicas=len(launches))

    def _probe_one(self, launch) -> tuple[int, float]:
        """(kernels one launch captures, median replay time of its graph)."""
        b = self.backend
        graph = self._capture([launch])
        graph_exec = None
        try:
            kernels = b.graph_kernel_count(graph)
            if kernels < 1:
                raise GraphTimingError("the captured graph did not contain the kernel: the launch enqueued no "
                                       "kernel on the backend's stream")
            graph_exec = b.instantiate_graph(graph)
            b.launch_graph(graph_exec)   # the first replay uploads the graph: not a sample
            pairs = self._event_pairs(ESTIMATE_REPLAYS)
            for start, end in pairs:
                b.record_event(start)
                b.launch_graph(graph_exec)
                b.record_event(end)
            b.synchronize()
            return kernels, statistics.median(b.elapsed_s(s, e) for s, e in pairs)
        finally:
            b.destroy_graph(graph, graph_exec)

    def _capture(self, launches: list):
        b = self.backend
        b.begin_capture()
        try:
            for launch in launches:
                launch()
        except BaseException:
            try:
                b.destroy_graph(b.end_capture())
            except BackendError:
                pass  # the capture was invalidated by the failure being raised
            raise
        return b.end_capture()

    # ------------------------------------------------------------------ shared loop
    def _event_pairs(self, n):
        while len(self.events) < n:
            self.events.append((self.backend.create_event(), self.backend.create_event()))
        return self.events[:n]

    def _sample(self, timed, settings: MeasureSettings, before_each=None, flush: bool = False):
        """Warm up, then time `timed()` between events in batches until the noise, sample count
        or time budget stops it: (times in seconds, stop reason)."""
        b = self.backend
        for _ in range(settings.warmup):
            if before_each:
                before_each()
            timed()
        b.synchronize()
        times, stop, start_wall = [], "max_samples", time.perf_counter()
        batch = settings.min_samples
        while len(times) < settings.max_samples:
            pairs = self._event_pairs(batch)
            for start, end in pairs:
                if before_each:
                    before_each()
                if flush:
                    b.memset(self.flush, 0)
                b.record_event(start)
                timed()
                b.record_event(end)
            b.synchronize()
            times.extend(b.elapsed_s(s, e) for s, e in pairs)
            noise = summarize(times)["rel_noise"]
            if noise is not None and noise <= settings.max_noise:
                stop = "noise"
                break
            if time.perf_counter() - start_wall > settings.time_budget_s:
                stop = "budget"
                break
            batch = min(max(batch, 10), settings.max_samples - len(times))
        return times, stop

    def close(self):
        for s, e in self.events:
            self.backend.destroy_event(s)
            self.backend.destroy_event(e)
        self.backend.free(self.flush)
