"""Implementations under test. A provider says whether it supports a point (None or a reason)
and, for a point it supports, prepares a zero-argument `launch` closure over device buffers
that already hold the inputs, so setup stays outside the timed region."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

KINDS = ("kernel", "upstream", "reference")


@dataclass
class Prepared:
    launch: Callable[[], None]            # enqueue the timed work (no allocation, no host copies)
    kernel: str = ""                      # instance name shown in tables
    kernel_version: str = ""              # hash of what determines the output
    p_precision: str = "input"            # what the implementation rounds P to (see validate.py)
    notes: list = field(default_factory=list)


class Provider(ABC):
    name: str = ""
    kind: str = "kernel"

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def supports(self, problem, device) -> str | None:
        """None when the point can run here, else the reason it cannot."""

    @abstractmethod
    def prepare(self, problem, session) -> Prepared:
        """Compile/load what the point needs and bind it to `session`'s device buffers."""

    def version(self) -> str:
        return ""
