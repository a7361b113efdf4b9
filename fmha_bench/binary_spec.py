r"""User-declared benchmark binaries: a sweep file's `binaries:` section, one entry per program.
sweep.py reads and checks the section into `BinarySpec`s; providers/binary.py runs them as
providers named `binary:NAME`. No code needed::

    binaries:
      my_fa:                                  # provider binary:my_fa (letters, digits, _ . -)
        command: [./fa_bench, "--b={batch}", "--s={seqlens_q}", "--causal={causal}"]
        time: 'time: ([0-9.eE+-]+) ms'        # regex; group 1 of its last match = the per-launch time
        time_unit: ms                         # s | ms | us | ns (default ms)
        valid: 'check: (\w+)'                 # optional; group 1 in valid_values = passed, else failed
        valid_values: [y, yes, pass, true, 1] # the default; compared case-insensitively
        tflops: '([0-9.]+) TFLOPS'            # optional; the tool's own figure, for the record
        kernel: 'kernel: (\S+)'               # optional; what the tool says it ran
        exit_codes: [0]                       # exit codes of a run that worked (default [0])
        timeout_s: 600                        # the run is killed after this (default 600)
        supports: {dtype: [fp16, bf16], family: fwd}   # optional; other points are skipped, saying why
        cwd: build                            # optional; relative to the sweep file's directory
        description: my FA build              # optional; shown by `fmha-bench list providers`

`command` is an argv list, run without a shell. Each element is formatted on its own with
Python's str.format: `{name}` or `{name:spec}` (`{scale:.6f}`), `{{` and `}}` for literal braces.
A relative command[0] is looked for in the sweep file's directory, then on PATH. The names
(PLACEHOLDERS) are every Problem field (lists as comma lists, true/false as 1/0, `scale` the
effective softmax scale, `mask` the canonical CK string) plus the derived values below.
Regexes are Python's, multi-line (`^`/`$` match at each line).
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Optional

from .masks import BOTTOM_RIGHT, NONE, TOP_LEFT
from .problem import PROBLEM_FIELDS

BINARY_KEYS = ("command", "time", "time_unit", "valid", "valid_values", "tflops", "kernel", "exit_codes",
               "timeout_s", "supports", "cwd", "description")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
DEFAULT_VALID_VALUES = ("y", "yes", "pass", "true", "1")
DEFAULT_TIMEOUT_S = 600.0

DERIVED = {
    "seqlens_q": "per-sequence query lengths, a comma list of `batch` entries (either mode)",
    "seqlens_k": "per-sequence key lengths, a comma list of `batch` entries (either mode)",
    "total_q": "sum of the query lengths",
    "total_k": "sum of the key lengths",
    "max_seqlen_q": "longest query length",
    "max_seqlen_k": "longest key length",
    "group": "1 in group (varlen) mode, else 0",
    "causal": "1 for a plain causal mask (t or b), else 0",
    "mask_align": "none | top_left | bottom_right",
    "window_left": "keys left of the diagonal, -1 = unlimited",
    "window_right": "keys right of the diagonal, -1 = unlimited",
    "mask_sink": "StreamingLLM sink prefix of the mask (0 = none)",
    "warmup": "untimed launches first (the sweep's measure: warmup)",
    "repeat": "timed launches (measure: max(min_samples, 20), at most max_samples)",
    "seed": "the sweep's input seed",
}
PLACEHOLDERS = (*PROBLEM_FIELDS, *DERIVED)
_ALIGN_NAMES = {NONE: "none", TOP_LEFT: "top_left", BOTTOM_RIGHT: "bottom_right"}


@dataclass(frozen=True)
class BinarySpec:
    name: str                           # the provider is binary:NAME
    command: tuple                      # argv templates
    time: re.Pattern
    time_unit: str = "ms"
    valid: Optional[re.Pattern] = None
    valid_values: tuple = DEFAULT_VALID_VALUES
    tflops: Optional[re.Pattern] = None
    kernel: Optional[re.Pattern] = None
    exit_codes: tuple = (0,)
    timeout_s: float = DEFAULT_TIMEOUT_S
    supports: tuple = ()                # (field, (accepted normalised values, ...)), ...
    cwd: Optional[str] = None           # already joined to the sweep file's directory
    base_dir: str = "."                 # the sweep file's directory
    description: str = ""
    where: str = ""                     # FILE:LINE of the declaration

    @property
    def provider_name(self) -> str:
        return f"binary:{self.name}"

    def unsupported(self, problem) -> Optional[str]:
        """Why the declaration's `supports` filter leaves this point out, or None."""
        resolved = problem.all_fields()
        for name, accepted in self.supports:
            if resolved[name] not in accepted:
                choices = ", ".join(_show(v) for v in accepted)
                return f"{self.provider_name} supports {name} {choices} only (this point: {_show(resolved[name])})"
        return None


def template_fields(template: str) -> list:
    """The placeholder names a template uses. Raises ValueError for broken brace syntax, and for
    attribute or index access (`{batch.real}`, `{seqlen_q[0]}`), which the values do not support."""
    names = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        if field == "" or field.isdigit():
            raise ValueError("positional fields ({} or {0}) have no value here; name a placeholder")
        if not re.fullmatch(r"\w+", field):
            raise ValueError(f"{{{field}}}: only plain names, no attributes or indexes")
        names.append(field)
    return names


def placeholder_values(problem, *, warmup: int, repeat: int, seed: int) -> dict:
    """Every placeholder's value for one point (numbers stay numbers, so format specs work)."""
    values = {}
    for name, value in problem.all_fields().items():
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)
        values[name] = value
    mask = problem.mask_spec
    lens_q, lens_k = problem.seqlens_q(), problem.seqlens_k()
    values.update(
        scale=problem.softmax_scale,
        seqlens_q=",".join(map(str, lens_q)), seqlens_k=",".join(map(str, lens_k)),
        total_q=sum(lens_q), total_k=sum(lens_k), max_seqlen_q=max(lens_q, default=0),
        max_seqlen_k=max(lens_k, default=0), group=int(problem.mode == "group"), causal=int(mask.is_causal),
        mask_align=_ALIGN_NAMES[mask.align], window_left=mask.left, window_right=mask.right, mask_sink=mask.sink,
        warmup=warmup, repeat=repeat, seed=seed)
    return values


def render(command, values: dict) -> list:
    """The argv: each template formatted on its own (no shell, no word splitting)."""
    return [template.format(**values) for template in command]


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
