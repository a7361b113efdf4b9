"""The one place that times GPU work: device events around each sample, L2 flushed before
each sample outside the timed region, stopping on min samples, then noise, within a budget."""
from __future__ import annotations

import time
from dataclasses import dataclass

from .backends.base import Backend
from .stats import summarize


@dataclass
class MeasureSettings:
    warmup: int = 3
    min_samples: int = 10
    max_samples: int = 200
    max_noise: float = 0.03        # stop once (q3 - q1) / median is at or under this
    time_budget_s: float = 2.0     # wall-clock budget per point for the sampling loop
    l2_flush: bool = True


@dataclass
class Timing:
    times_s: list
    stop_reason: str               # "noise" | "max_samples" | "budget"
    flush_bytes: int

    def summary(self) -> dict:
        return summarize(self.times_s)


class Timer:
    """Owns the L2 flush buffer and a pool of events for one backend."""

    def __init__(self, backend: Backend, l2_bytes: int):
        self.backend = backend
        # Twice the L2 so a memset over it evicts everything the previous sample left behind.
        self.flush_bytes = max(2 * int(l2_bytes), 8 << 20)
        self.flush = backend.alloc(self.flush_bytes)
        self.events = []

    def _event_pairs(self, n):
        while len(self.events) < n:
            self.events.append((self.backend.create_event(), self.backend.create_event()))
        return self.events[:n]

    def measure(self, launch, settings: MeasureSettings, before_each=None) -> Timing:
        """`launch()` enqueues the timed work; `before_each()` (untimed) e.g. poisons outputs."""
        b = self.backend
        for _ in range(settings.warmup):
            if before_each:
                before_each()
            launch()
        b.synchronize()
        times, stop, start_wall = [], "max_samples", time.perf_counter()
        batch = settings.min_samples
        while len(times) < settings.max_samples:
            pairs = self._event_pairs(batch)
            for start, end in pairs:
                if before_each:
                    before_each()
                if settings.l2_flush:
                    b.memset(self.flush, 0)
                b.record_event(start)
                launch()
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
        return Timing(times, stop, self.flush_bytes if settings.l2_flush else 0)

    def close(self):
        for s, e in self.events:
            self.backend.destroy_event(s)
            self.backend.destroy_event(e)
        self.backend.free(self.flush)
