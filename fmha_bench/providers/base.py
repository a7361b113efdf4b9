"""Implementations under test.

A provider has a name, a kind (kernel | upstream | reference), a version (a hash of what
determines its output), and `supports(problem, device) -> None | reason`. It runs a point in one
of two ways:

- tensor providers (`takes_tensors = True`: our kernels, torch SDPA) `prepare` a zero-argument
  `launch` closure over the point's device buffers, which already hold the inputs; the runner
  times it, validates the outputs against the reference and compares them across providers.
- self-timed providers (`takes_tensors = False`: upstream binaries such as CK's example) make
  their own inputs and time themselves; `run_external` returns what they report (status, time,
  their own validity verdict, exit code).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Optional

KINDS = ("kernel", "upstream", "reference")


@dataclass
class Prepared:
    launch: Callable[[], None]            # enqueue the timed work (no allocation, no host copies)
    collect: Optional[Callable[[], None]] = None  # untimed: move outputs into the session's O/LSE buffers
    produces_lse: bool = True             # False: the implementation does not report LSE (not compared)
    kernel: str = ""                      # instance name shown in tables
    kernel_version: str = ""              # hash of what determines the output
    p_precision: str = "input"            # what the implementation rounds P to (see validate.py)
    notes: list = field(default_factory=list)
    graph_safe: bool = False              # launch() only enqueues kernels on the backend's stream (stream=None),
                                          # nothing on the host: it may be captured into a graph (timing.py)


@dataclass
class ExternalRun:
    """What a self-timed provider reported for one point."""
    status: str                           # ok | failed | mismatch | timeout (schema.STATUSES)
    reason: str = ""                      # why not ok, with the tail of the tool's output
    time_s: Optional[float] = None        # the tool's own per-launch time
    valid: Optional[bool] = None          # the tool's own check; None when it did not check
    exit_code: Optional[int] = None
    reported_tflops: Optional[float] = None   # as the tool printed it (its own FLOP count)
    kernel: str = ""                      # what the tool says it ran, if it says
    command: list = field(default_factory=list)   # argv, for the record


class Provider(ABC):
    name: str = ""
    kind: str = "kernel"
    takes_tensors: bool = True

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def supports(self, problem, device) -> str | None:
        """None when the point can run here, else the reason it cannot."""

    def prepare(self, problem, session) -> Prepared:
        """Tensor providers: bind the point to `session`'s device buffers (outside the timed region)."""
        raise NotImplementedError(f"{self.name} takes no tensors")

    def run_external(self, problem, device, measure) -> ExternalRun:
        """Self-timed providers: run the point with `measure`'s warmup/repeat and report."""
        raise NotImplementedError(f"{self.name} is not self-timed")

    def version(self) -> str:
        return ""

    def available(self) -> str | None:
        """None when the provider can run on this machine at all, else why not (torch missing, ...)."""
        return None
