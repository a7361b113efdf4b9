"""The result row: one per (run, point, provider). Written as one JSON line in results.jsonl.

Units are SI inside (seconds, bytes, FLOPs); tables convert when printing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

SCHEMA_VERSION = 1
STATUSES = ("ok", "skipped", "failed", "mismatch", "crashed", "timeout")


@dataclass
class Result:
    # identity
    point_id: str                      # Problem.key()
    name: str                          # Problem.name()
    problem: dict                      # Problem.all_fields()
    provider: str = "fmha"
    kernel: str = ""                   # kernel instance name (readable + content hash)
    kernel_version: str = ""           # hash of what determines the output (sources, flags, compiler)
    # outcome
    status: str = "ok"                 # one of STATUSES
    reason: str = ""                   # why skipped / failed; the error's tail
    # timing (seconds)
    time_s_median: Optional[float] = None
    time_s_min: Optional[float] = None
    time_s_q1: Optional[float] = None
    time_s_q3: Optional[float] = None
    samples: int = 0
    rel_noise: Optional[float] = None  # (q3 - q1) / median
    l2_flush: bool = True
    timing_mode: str = "events"        # events (one launch per event pair) | graph (a captured graph of launches)
    # throughput
    flops: int = 0
    bytes: int = 0
    tflops: Optional[float] = None
    tbps: Optional[float] = None
    pct_peak_flops: Optional[float] = None
    pct_peak_bw: Optional[float] = None
    # validation
    val_mode: str = "off"              # full | sampled | off | self (a binary's own check)
    val_rows: int = 0                  # query rows compared per (batch, head); 0 = all
    val_max_abs: Optional[float] = None
    val_max_rel: Optional[float] = None
    val_mismatch_frac: Optional[float] = None
    val_atol: Optional[float] = None
    val_rtol: Optional[float] = None
    val_lse_max_abs: Optional[float] = None
    val_ref_s: Optional[float] = None  # seconds the CPU reference took
    # parity: this row's output against other providers' outputs of the same point
    cross: dict = field(default_factory=dict)   # provider -> {max_abs, max_rel, mismatch_frac, ok}
    # self-timed upstream binaries
    exit_code: Optional[int] = None
    reported_tflops: Optional[float] = None     # as the binary printed it (its own FLOP count)
    # context
    device: str = ""
    device_index: Optional[int] = None # the GPU ordinal the point ran on (--devices)
    arch: str = ""
    telemetry: dict = field(default_factory=dict)  # {"before": sample, "after": sample} (telemetry.py)
    seed: int = 0
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)   # how the provider ran the point (not problems)
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Result":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


ROW_FIELDS = tuple(f.name for f in dataclasses.fields(Result))
