"""`binary:NAME`: a benchmark program declared in the sweep file's `binaries:` section (format in
fmha_bench/binary_spec.py), run once per point as a self-timed upstream provider. Its argv is the
declaration's template filled with the point's values; its time, validity, TFLOPS and kernel
name are read from its output with the declaration's regexes (the last match of each)."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from ..binary_spec import TIME_UNITS, BinarySpec, placeholder_values, render, template_fields
from .base import ExternalRun, Provider
from .external import (Reported, binary_version, device_env, parse_number, program_problem, repeat_count,
                       resolve_program, run_tool)


class BinaryProvider(Provider):
    kind = "upstream"
    takes_tensors = False

    def __init__(self, spec: BinarySpec, seed: int = 0):
        self.spec = spec
        self.name = spec.provider_name
        self.seed = seed

    def describe(self) -> str:
        what = self.spec.description or "user-declared binary"
        return f"{what}: {' '.join(self.spec.command)} (declared at {self.spec.where})"

    def _how_to_set(self) -> str:
        return (f"fix command[0] of binaries: {self.spec.name} ({self.spec.where}); a relative path is looked "
                f"for in {self.spec.base_dir}, then on PATH")

    def _fixed_program(self) -> Optional[str]:
        """command[0] resolved, when it has no placeholders (else it is known per point only)."""
        first = self.spec.command[0]
        return None if template_fields(first) else resolve_program(first.format(), self.spec.base_dir)

    def available(self) -> Optional[str]:
        program = self._fixed_program()
        return program_problem(program, self._how_to_set()) if program else None

    def version(self) -> str:
        """The program's bytes and the declaration's argv template: changing either changes it."""
        program = self._fixed_program()
        blob = json.dumps([binary_version(program) if program else "", list(self.spec.command)])
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def supports(self, problem, device) -> Optional[str]:
        return self.spec.unsupported(problem)

    def command(self, problem, measure) -> list[str]:
        values = placeholder_values(problem, warmup=measure.warmup, repeat=repeat_count(measure), seed=self.seed)
        argv = render(self.spec.command, values)
        argv[0] = resolve_program(argv[0], self.spec.base_dir)
        return argv

    def run_external(self, problem, device, measure) -> ExternalRun:
        try:
            argv = self.command(problem, measure)
        except (ValueError, TypeError) as e:  # a format spec that does not fit this point's value
            return ExternalRun(status="failed", reason=f"command template ({self.spec.where}): {e}")
        cwd = self.spec.cwd
        if cwd and not os.path.isdir(cwd):
            return ExternalRun(status="failed", command=argv,
                               reason=f"cwd {cwd}: no such directory (binaries: {self.spec.name}, {self.spec.where})")
        return run_tool(argv, self.parse, timeout_s=self.spec.timeout_s, exit_codes=self.spec.exit_codes, cwd=cwd,
                        env_overrides=device_env(device), how_to_set=self._how_to_set())

    def parse(self, output: str) -> Reported:
        """The declaration's regexes over the output; group 1 of the last match of each."""
        spec = self.spec
        reported = Reported()
        time = parse_number(_last_group(spec.time, output))
        reported.time_s = time * TIME_UNITS[spec.time_unit] if time is not None else None
        valid = _last_group(spec.valid, output)
        if valid is not None:
            reported.valid = valid.strip().lower() in spec.valid_values
        reported.reported_tflops = parse_number(_last_group(spec.tflops, output))
        reported.kernel = (_last_group(spec.kernel, output) or "").strip()
        return reported


def _last_group(pattern, output: str) -> Optional[str]:
    if pattern is None:
        return None
    last = None
    for last in pattern.finditer(output):
        pass
    return last.group(1) if last is not None else None
