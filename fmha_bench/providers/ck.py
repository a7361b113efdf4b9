"""`ck`: AMD Composable Kernel's `tile_example_fmha_fwd` (SPEC section 11), run as a self-timed
upstream binary. It makes its own inputs, times itself and checks itself against its own CPU
(or GPU) reference, so parity with it is status + validity + speed, not tensors.

The binary: `--ck-binary PATH`, else the sweep file's `ck: {binary: PATH}`, else
$FMHA_BENCH_CK_BINARY; a bare name is looked up on PATH.

A point is mapped onto CK's `-name=value` flags exactly, or skipped with the reason:
- families fwd, splitkv (-num_splits; 0 = CK's own heuristic, up to 128) and paged (CK's 2-D
  block table = page_table vllm, heads-first cache = kv_layout hnd, page size a multiple of 128,
  the only sizes its paged/split-KV kernels take); appendkv, mla and mixed are not mapped.
- mode batch/group; in group mode -s/-s_k are always full per-sequence lists, so CK draws no lengths.
- dtype fp16/bf16/fp32 -> -prec of that name. fp8 -> -prec=fp8bf16 -qscale=pt: fp8 Q/K/V with
  per-tensor fp32 descales and bf16 output (SPEC 5); CK's fp8_t is the arch's native format
  (e4m3fnuz on gfx90a/gfx94x, OCP e4m3fn on gfx950/gfx12), so only that format maps.
- mask: Problem's canonical CK string, the sink prefix as `t:l,r,s` / `b:l,r,s`.
- a learned sink logit is not mapped (CK's -init_sink draws its own values).
- always -bias=n -iperm=1 -operm=1 -vlayout=r (BHSD in and out, V row-major); -kname=1 so the
  result line names the kernel.
The result line (see `parse_ck_output`) gives the time, CK's own TFlops (its FLOP count, which
the runner replaces with SPEC section 3's) and `valid:y|n` unless -v=0.
"""
from __future__ import annotations

import re
from typing import Optional

from .. import config
from ..archs import get_arch
from .base import ExternalRun, Provider
from .external import (Reported, binary_version, device_env, parse_number, program_problem, repeat_count,
                       resolve_program, run_tool)

HOW_TO_SET = "set it with --ck-binary PATH, `ck: {binary: PATH}` in the sweep file, or FMHA_BENCH_CK_BINARY"
DEFAULT_TIMEOUT_S = 900.0     # CK's CPU check of a long prefill point takes minutes
CHECKS = {0: "none", 1: "CPU reference", 2: "GPU reference"}
MAX_SPLITS = 128              # CK refuses more
PAGE_MULTIPLE = 128           # CK's paged/split-KV kernels take page_block_size % 128 == 0
PRECISIONS = {"fp16": ["-prec=fp16"], "bf16": ["-prec=bf16"], "fp32": ["-prec=fp32"]}
FP8_FLAGS = ["-prec=fp8bf16", "-qscale=pt"]
UNMAPPED_FAMILIES = {
    "appendkv": "CK's append-KV path (-s_knew, -rotary_dim) is not mapped",
    "mla": "MLA decode is not in tile_example_fmha_fwd",
    "mixed": "a mixed prefill+decode batch is not in tile_example_fmha_fwd",
}


class NotMapped(Exception):
    """The point has no exact CK flags; the message is the skip reason."""


# ----------------------------------------------------------------------------- problem -> flags
def problem_flags(problem) -> list[str]:
    """CK's flags for the attention call itself. Raises NotMapped with the reason."""
    if problem.family in UNMAPPED_FAMILIES:
        raise NotMapped(UNMAPPED_FAMILIES[problem.family])
    if problem.sink:
        raise NotMapped("learned sink logits: CK's -init_sink draws its own values, not mapped")
    flags = list(FP8_FLAGS if problem.dt.is_fp8 else PRECISIONS[problem.dtype])
    group = problem.mode == "group"
    flags += [f"-mode={1 if group else 0}", f"-b={problem.batch}", f"-h={problem.nhead_q}", f"-h_k={problem.nhead_k}"]
    if group:
        flags += [f"-s={_csv(problem.seqlens_q())}", f"-s_k={_csv(problem.seqlens_k())}"]
    else:
        flags += [f"-s={problem.seqlen_q}", f"-s_k={problem.seqlen_k}"]
    flags += [f"-d={problem.hdim_q}", f"-d_v={problem.hdim_v}", f"-scale_s={problem.softmax_scale!r}",
              f"-logits_soft_cap={problem.soft_cap!r}", f"-mask={problem.mask}", f"-lse={int(problem.lse)}",
              "-bias=n", "-iperm=1", "-operm=1", "-vlayout=r",
              f"-num_splits={_splits(problem)}", f"-page_block_size={_page_size(problem)}"]
    return flags


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def _splits(problem) -> int:
    if problem.num_splits > MAX_SPLITS:
        raise NotMapped(f"num_splits {problem.num_splits}: CK takes at most {MAX_SPLITS}")
    return problem.num_splits


def _page_size(problem) -> int:
    if not problem.is_paged:
        return 0
    if problem.page_table != "vllm":
        raise NotMapped(f"page_table {problem.page_table}: CK takes a 2-D block table (page_table vllm)")
    if problem.kv_layout != "hnd":
        raise NotMapped(f"kv_layout {problem.kv_layout}: CK's cache is heads-first with BHSD Q (kv_layout hnd)")
    if problem.page_size % PAGE_MULTIPLE:
        raise NotMapped(f"page_size {problem.page_size}: CK's paged kernels need a multiple of {PAGE_MULTIPLE}")
    return problem.page_size


def device_problem(problem, device) -> Optional[str]:
    """Why this device cannot run the point with CK, or None."""
    if device.backend != "hip":
        return f"CK runs on AMD GPUs; this is {device.name} ({device.arch})"
    if problem.dt.is_fp8:
        native = get_arch(device.arch)["fp8"]
        if native is None:
            return f"{device.arch} has no fp8"
        if problem.dtype != f"fp8_{native}":
            return f"CK's fp8 on {device.arch} is {native}; this point is {problem.dtype}"
    return None


# ----------------------------------------------------------------------------- its result line
_HEADER = re.compile(r"^\[(?P<tag>[^\]|\s]+\|[^\]|\s]+\|[^\]\s]+)\]\s*(?P<rest>.*)$", re.MULTILINE)
_MEASURE = re.compile(r"^(?P<value>\S+) (?P<unit>ms|TFlops|GB/s)$")
_FIELD = re.compile(r"^(?P<key>[A-Za-z_]\w*):(?P<value>.*)$")
_NAME = re.compile(r"^fmha_\w+$")           # a kernel name, printed by -kname=1
_REFUSALS = ("not supported yet", "no matching instances")


def parse_ck_output(output: str) -> Reported:
    """Read CK's result record: the last line shaped `[prec|mode|layout] key:value, ...` plus
    any later lines that start with `, ` (its check runs after the time is printed, and what
    the check writes to stderr lands between the time and `, valid:n`). The record is
    `, `-separated `key:value` fields (any, in any order: num_splits, page_block_size, ...),
    kernel names from -kname=1, then `T ms, X TFlops, Y GB/s` and, unless -v=0, `valid:y|n`.
    Log lines before it and unknown fields are ignored."""
    headers = list(_HEADER.finditer(output))
    if not headers:
        return Reported()
    last = headers[-1]
    later = output[last.end():].splitlines()
    record = last.group("rest") + "".join(line.rstrip() for line in later if line.startswith(", "))
    reported, names, measures = Reported(), [], {}
    for token in (t.strip() for t in record.split(", ")):
        measure, field = _MEASURE.match(token), _FIELD.match(token)
        if measure:
            measures[measure.group("unit")] = parse_number(measure.group("value"))
        elif field:
            if field.group("key") == "valid":
                reported.valid = {"y": True, "n": False}.get(field.group("value").strip())
        elif token in _REFUSALS:
            reported.refusal = f"CK: {token}"
        elif _NAME.match(token):
            names.append(token)
    ms = measures.get("ms")
    reported.time_s = ms / 1e3 if ms is not None else None
    reported.reported_tflops = measures.get("TFlops")
    reported.kernel = " + ".join(names) if names else last.group("tag")
    return reported


# ----------------------------------------------------------------------------- the provider
class CkProvider(Provider):
    name = "ck"
    kind = "upstream"
    takes_tensors = False

    def __init__(self, binary: Optional[str] = None, sweep_binary: Optional[str] = None, *, check: int = 1,
                 timeout_s: float = DEFAULT_TIMEOUT_S, init: str = "uf", seed: int = 0):
        """`binary`: --ck-binary; `sweep_binary`: the sweep's `ck: {binary}` (already resolved
        against the sweep file's directory); then $FMHA_BENCH_CK_BINARY. `check`: CK's -v
        (0 none, 1 CPU reference, 2 GPU reference). `init`: CK's -init (its default `uf`, uniform
        [0,1), the inputs its tolerances are set for). `seed`: the sweep's input seed."""
        if check not in CHECKS:
            raise ValueError(f"check must be one of {sorted(CHECKS)}, got {check!r}")
        choices = ((binary, "--ck-binary"), (sweep_binary, "the sweep's ck: binary"),
                   (config.ck_binary(), "FMHA_BENCH_CK_BINARY"))
        path, self.origin = next(((p, origin) for p, origin in choices if p), (None, ""))
        self.binary = resolve_program(path) if path else None
        self.check, self.timeout_s, self.init, self.seed = check, timeout_s, init, seed

    def describe(self) -> str:
        where = f"{self.binary} (from {self.origin})" if self.binary else "binary not set"
        return f"AMD Composable Kernel's tile_example_fmha_fwd, self-timed, own inputs and check; {where}"

    def available(self) -> Optional[str]:
        if not self.binary:
            return f"no CK binary; {HOW_TO_SET}"
        return program_problem(self.binary, f"it came from {self.origin}; {HOW_TO_SET}")

    def version(self) -> str:
        return binary_version(self.binary) if self.binary else ""

    def supports(self, problem, device) -> Optional[str]:
        try:
            problem_flags(problem)
        except NotMapped as e:
            return str(e)
        return device_problem(problem, device)

    def command(self, problem, measure) -> list[str]:
        """The full argv for one point (raises NotMapped)."""
        return [self.binary, *problem_flags(problem), f"-v={self.check}", f"-warmup={measure.warmup}",
                f"-repeat={repeat_count(measure)}", f"-init={self.init}",
                f"-seed={self.seed + 1}",  # CK reads seed 0 as "draw a random seed"
                "-kname=1"]

    def run_external(self, problem, device, measure) -> ExternalRun:
        unavailable = self.available()
        if unavailable:
            return ExternalRun(status="failed", reason=unavailable)
        try:
            argv = self.command(problem, measure)
        except NotMapped as e:
            return ExternalRun(status="skipped", reason=str(e))
        return run_tool(argv, parse_ck_output, timeout_s=self.timeout_s, env_overrides=device_env(device),
                        how_to_set=HOW_TO_SET)
