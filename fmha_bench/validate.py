"""The one place that judges an output against the reference. Checks return data, never a bool.

Tolerance (derived, not guessed). O = sum_j p_j v_j / l. With the reference computed in fp32
from the exact same (already quantised) inputs, a kernel's error has two sources:
- rounding of P before the P.V product to the type the kernel keeps it in (u_p = unit roundoff
  of that type; 0 for fp32, about 2^-11 for fp16, 2^-8 for bf16, 2^-4 for fp8 e4m3): each term is off
  by at most u_p * p_j |v_j|, so |dO| <= u_p * max|V|;
- rounding of O to the output type: |dO| <= u_out * |O|;
- fp32 accumulation over Sk keys in a different order: about 4 * 2^-24 * log2(Sk) * max|V|.
So atol = max|V| * (u_p + 4 * 2^-24 * log2(Sk)) and rtol = 2 * u_out (a factor 2 for the
conversions on each side). fp8 inputs are judged against the reference computed from the
dequantised fp8 inputs (max|V| is then the dequantised maximum). LSE: atol 1e-4 plus 1e-5
relative (fp32 exp2/log2 arithmetic), infinities must match exactly. NaN never passes.

fp8 on tensor cores (p_precision other than fp32): the hardware sums Q.K products with fewer
significant bits than fp32 (Hopper keeps about 14 after aligning to the largest term; taken
here as a relative error of FP8_DOT_REL = 2^-12 of the sum of |q_i k_i|, which is at most
|q| |k|). So every logit may be off by dS = scale * 2^-12 * max|q| * max|k| (row norms, the
caller's `qk_norm_product`): LSE gets that as extra atol, O gets 2 dS max|V| (a shift of every
logit by at most dS moves O by at most 2 dS max|V|).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import dtypes

P_PRECISIONS = ("fp32", "input", "fp8")
FP8_DOT_REL = 2.0 ** -12   # relative error of an fp8 tensor-core dot product (module docstring)


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    lse_atol: float = 1e-4
    lse_rtol: float = 1e-5


@dataclass
class Check:
    max_abs: float
    max_rel: float
    mismatches: int
    nan_count: int
    count: int
    atol: float
    rtol: float

    @property
    def mismatch_frac(self) -> float:
        return self.mismatches / self.count if self.count else 0.0

    @property
    def passed(self) -> bool:
        return self.mismatches == 0


def tolerance_for(problem, v_abs_max: float, p_precision: str = "input", qk_norm_product: float = 0.0) -> Tolerance:
    """See the module docstring. `p_precision` is what the implementation rounds P to;
    `qk_norm_product` the largest dequantised |q| times the largest |k| (fp8 tensor cores)."""
    dt, out = problem.dt, problem.out_dt
    if p_precision == "fp32":
        u_p = 0.0
    elif p_precision == "fp8":
        u_p = 2.0 ** -4
    elif p_precision == "input":
        u_p = 2.0 ** -4 if dt.is_fp8 else dt.eps / 2
    else:
        raise ValueError(f"p_precision must be one of {P_PRECISIONS}")
    longest = max(problem.seqlens_k() + [1])
    accumulation = 4 * 2.0 ** -24 * math.log2(max(longest, 2))
    logit_error = problem.softmax_scale * FP8_DOT_REL * qk_norm_product if dt.is_fp8 and p_precision != "fp32" else 0.0
    return Tolerance(atol=max(v_abs_max, 1e-6) * (u_p + accumulation + 2 * logit_error) + 1e-6,
                     rtol=out.eps,  # 2 * u_out
                     lse_atol=Tolerance.lse_atol + logit_error)


def compare(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> Check:
    """Element-wise |a - e| <= atol + rtol*|e|; NaN on either side is always a mismatch (the
    expected side is another provider's output in parity checks), matching infinities (LSE of
    fully masked rows) pass."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(f"shape {a.shape} vs reference {e.shape}")
    same_inf = np.isinf(a) & np.isinf(e) & (np.sign(a) == np.sign(e))
    nan = np.isnan(a) | np.isnan(e)
    with np.errstate(invalid="ignore"):
        diff = np.where(same_inf, 0.0, np.abs(a - e))
    diff = np.where(nan, np.inf, diff)
    with np.errstate(invalid="ignore"):
        bad = nan | (diff > atol + rtol * np.where(np.isinf(e) | nan, 0.0, np.abs(e)))
    finite = np.isfinite(diff)
    max_abs = float(diff[finite].max()) if finite.any() else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = diff / np.maximum(np.abs(e), atol)
    max_rel = float(rel[finite].max()) if finite.any() else 0.0
    if nan.any() or (~finite & ~nan).any():
        max_abs = max_rel = math.inf
    return Check(max_abs=max_abs, max_rel=max_rel, mismatches=int(bad.sum()), nan_count=int(np.isnan(a).sum()),
                 count=int(a.size), atol=atol, rtol=rtol)


def decode_output(bits: np.ndarray, problem) -> np.ndarray:
    return dtypes.decode(bits, problem.out_dt)
