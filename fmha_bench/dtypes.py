"""Element types: their storage on the host (NumPy bit patterns) and exact decoding to float32.

NumPy has no bf16 or fp8, so those tensors live as uint16 / uint8 bit patterns, the same
bytes the GPU reads. `encode` rounds float32 to nearest-even; `decode` is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str
    itemsize: int
    storage: type          # NumPy dtype holding the bits
    eps: float             # unit roundoff * 2 (distance from 1.0 to the next value)
    max: float
    is_fp8: bool = False
    nan_bits: int = 0      # bit pattern used to poison buffers


FP16 = DType("fp16", 2, np.float16, 2.0 ** -10, 65504.0, nan_bits=0x7E00)
BF16 = DType("bf16", 2, np.uint16, 2.0 ** -7, 3.3895e38, nan_bits=0x7FC0)
FP32 = DType("fp32", 4, np.float32, 2.0 ** -23, 3.4028e38, nan_bits=0x7FC00000)
E4M3FN = DType("fp8_e4m3fn", 1, np.uint8, 2.0 ** -3, 448.0, is_fp8=True, nan_bits=0x7F)
E4M3FNUZ = DType("fp8_e4m3fnuz", 1, np.uint8, 2.0 ** -3, 240.0, is_fp8=True, nan_bits=0x80)

DTYPES = {d.name: d for d in (FP16, BF16, FP32, E4M3FN, E4M3FNUZ)}


def get(name: str) -> DType:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}") from None


def output_dtype(input_dtype: DType) -> DType:
    """fp8 attention writes bf16 output (CK's fp8bf16); the others write their own type."""
    return BF16 if input_dtype.is_fp8 else input_dtype


# ----------------------------------------------------------------------------- bf16
def _bf16_encode(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = np.isnan(x)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16).astype(np.uint16)
    return np.where(nan, np.uint16(0x7FC0), out)


def _bf16_decode(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b, dtype=np.uint32) << 16).view(np.float32)


# ----------------------------------------------------------------------------- fp8 (e4m3)
def _fp8_table(fnuz: bool) -> np.ndarray:
    """All 256 values of e4m3fn (bias 7, 0x7F/0xFF NaN) or e4m3fnuz (bias 8, 0x80 NaN, no -0)."""
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    man = codes & 0x7
    bias = 8 if fnuz else 7
    normal = (1.0 + man / 8.0) * np.exp2(exp - bias)
    subnormal = (man / 8.0) * np.exp2(1 - bias)
    vals = sign * np.where(exp == 0, subnormal, normal)
    if fnuz:
        vals[0x80] = np.nan
    else:
        vals[0x7F] = vals[0xFF] = np.nan
    return vals.astype(np.float32)


_FP8_TABLES = {"fp8_e4m3fn": _fp8_table(False), "fp8_e4m3fnuz": _fp8_table(True)}


def _fp8_encode(x: np.ndarray, name: str) -> np.ndarray:
    """Round to nearest (ties to even code), saturating at the format's max; NaN to NaN."""
    table = _FP8_TABLES[name]
    finite = np.where(np.isfinite(table), table, np.inf)
    positive_codes = np.array([c for c in range(128) if np.isfinite(finite[c])], dtype=np.uint8)
    positive_vals = finite[positive_codes].astype(np.float64)
    order = np.argsort(positive_vals)
    positive_codes, positive_vals = positive_codes[order], positive_vals[order]
    x = np.asarray(x, dtype=np.float64)
    mag = np.minimum(np.abs(x), positive_vals[-1])
    idx = np.clip(np.searchsorted(positive_vals, mag), 1, len(positive_vals) - 1)
    lo_v, hi_v = positive_vals[idx - 1], positive_vals[idx]
    pick_hi = (mag - lo_v > hi_v - mag) | ((mag - lo_v == hi_v - mag) & (positive_codes[idx - 1] % 2 == 1))
    code = np.where(pick_hi, positive_codes[idx], positive_codes[idx - 1]).astype(np.uint8)
    negative = (x < 0) & (code != 0)  # fnuz has no -0; keep +0 for both formats
    code = np.where(negative, code | 0x80, code).astype(np.uint8)
    return np.where(np.isnan(x), np.uint8(DTYPES[name].nan_bits), code).astype(np.uint8)


# ----------------------------------------------------------------------------- public API
def encode(x: np.ndarray, dtype: DType) -> np.ndarray:
    """float -> storage bits of `dtype` (round to nearest even)."""
    if dtype is FP16:
        return np.asarray(x, dtype=np.float32).astype(np.float16)
    if dtype is FP32:
        return np.asarray(x, dtype=np.float32)
    if dtype is BF16:
        return _bf16_encode(np.asarray(x, dtype=np.float32))
    return _fp8_encode(x, dtype.name)


def decode(bits: np.ndarray, dtype: DType) -> np.ndarray:
    """storage bits of `dtype` -> float32, exactly."""
    if dtype is FP16 or dtype is FP32:
        return np.asarray(bits).astype(np.float32)
    if dtype is BF16:
        return _bf16_decode(bits)
    return _FP8_TABLES[dtype.name][np.asarray(bits, dtype=np.uint8)]


def round_to(x: np.ndarray, dtype: DType) -> np.ndarray:
    """The float32 value `x` takes once stored as `dtype`."""
    return decode(encode(x, dtype), dtype)


def poison(shape, dtype: DType) -> np.ndarray:
    """A host buffer of NaN bit patterns in `dtype`'s storage type."""
    if dtype is FP16:
        return np.full(shape, np.nan, dtype=np.float16)
    if dtype is FP32:
        return np.full(shape, np.nan, dtype=np.float32)
    return np.full(shape, dtype.nan_bits, dtype=dtype.storage)
