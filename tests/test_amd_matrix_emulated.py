"""The CPU emulation of the AMD matrix instructions (kernel_src/fmha_amd_matrix.h) against a
plain matrix product, with the lane layouts written out here independently of the header.

LAYOUTS is AMD's Matrix Instruction Calculator (github.com/ROCm/amd_matrix_instruction_calculator,
`--matrix-layout` for cdna2/cdna3 v_mfma_f32_{32x32x8,16x16x16}_{f16,bf16(_1k)}, cdna3
v_mfma_f32_{32x32x16,16x16x32}_fp8_fp8 (every byte of A and B), rdna3/rdna4
v_wmma_f32_16x16x16_{f16,bf16} -w 32), every lane and register compared once with these formulas.
A layout slip in the emulation therefore fails here, and the kernel tests (test_mfma_emulated.py),
which run on the emulation, inherit a faithful instruction. The fp8 conversion that feeds P to
the fp8 MFMA (v_cvt_pk_fp8_f32, round to nearest even) is checked against dtypes.encode.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from test_kernels_emulated import CXX, _compile

from fmha_bench import dtypes

pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")

# family: (wave, M = N, K, A/B elements per lane, C registers per lane,
#          A[row][k] of (lane, element), D[row][col] of (lane, register)); B[k][col] is A's transpose.
# Element e of a lane's A/B registers: 16-bit half e % 2 of register e / 2, fp8 byte e % 4 of e / 4.
LAYOUTS = {
    "mfma32": (64, 32, 8, 4, 16, lambda l, e: (l % 32, 4 * (l // 32) + e),
               lambda l, r: (8 * (r // 4) + 4 * (l // 32) + r % 4, l % 32)),
    "mfma16": (64, 16, 16, 4, 4, lambda l, e: (l % 16, 4 * (l // 16) + e), lambda l, r: (4 * (l // 16) + r, l % 16)),
    "wmma_gfx11": (32, 16, 16, 16, 8, lambda l, e: (l % 16, e), lambda l, r: (2 * r + l // 16, l % 16)),
    "wmma_gfx12": (32, 16, 16, 8, 8, lambda l, e: (l % 16, 8 * (e // 4) + 4 * (l // 16) + e % 4),
                   lambda l, r: (8 * (l // 16) + r, l % 16)),
    "mfma32_fp8": (64, 32, 16, 8, 16, lambda l, e: (l % 32, 8 * (l // 32) + e),
                   lambda l, r: (8 * (r // 4) + 4 * (l // 32) + r % 4, l % 32)),
    "mfma16_fp8": (64, 16, 32, 8, 4, lambda l, e: (l % 16, 8 * (l // 16) + e),
                   lambda l, r: (4 * (l // 16) + r, l % 16)),
}
FP8_FAMILIES = ["mfma32_fp8", "mfma16_fp8"]
WIDE_FAMILIES = [f for f in LAYOUTS if f not in FP8_FAMILIES]
ELEMENTS = {"fp16": 0, "bf16": 1, "fp8_e4m3fnuz": 2, "fp8_e4m3fn": 3}   # amd_mma's `element`

DRIVER = r"""
#include <cstdio>
#include "fmha_port.h"
#include "fmha_amd_matrix.h"
using namespace fmha;

struct Args { const unsigned* a; const unsigned* b; const void* vt; float* c; int chain; };

/* One wave. mma: every lane's A, B, C registers from the host, D back. chain: C registers (an
   S^T tile, or the two tiles a k-step of mfma16_fp8 spans) turned into P^T's B fragments by
   to_b, A = V^T taken at p_key, summed over k-steps: D = V^T P^T, the kernel's second product. */
template <class Mx, class E>
void lanes(Args p)
{
    typedef typename E::storage Storage;
    constexpr int per = 4 / sizeof(Storage), regs = Mx::kAB / per;
    constexpr int tiles = Mx::kK > Mx::kM ? Mx::kK / Mx::kM : 1, steps = tiles > 1 ? 1 : Mx::kM / Mx::kK;
    const unsigned lane = threadIdx.x;
    typename Mx::AB a, b;
    typename Mx::C c[tiles];
    for (int t = 0; t < (p.chain ? tiles : 1); ++t)   /* the host passes `tiles` C tiles to a chain */
        for (int r = 0; r < Mx::kC; ++r) c[t][r] = p.c[(t * Mx::kWave + lane) * Mx::kC + r];
    if (!p.chain) {
        for (int w = 0; w < regs; ++w) {
            a[w] = p.a[lane * regs + w];
            b[w] = p.b[lane * regs + w];
        }
        matrix_mma<E>(Mx{}, c[0], a, b);
    } else {
        typename Mx::C x[tiles];
        for (int t = 0; t < tiles; ++t) x[t] = c[t];
        c[0] = typename Mx::C{};
        const Storage* vt = (const Storage*)p.vt;   /* [kM dims][tiles * kM keys] */
        for (int sub = 0; sub < steps; ++sub) {
            if constexpr (tiles == 1)
                b = Mx::template to_b<E>(x[0], sub);
            else
                b = Mx::template to_b<E>(x[0], x[1]);
            for (int w = 0; w < regs; ++w) {
                unsigned word = 0;
                for (int i = 0; i < per; ++i)
                    word |= (unsigned)vt[Mx::ab_mn(lane) * tiles * Mx::kM + Mx::p_key(lane, per * w + i, sub)]
                            << (32 / per * i);
                a[w] = word;
            }
            matrix_mma<E>(Mx{}, c[0], a, b);
        }
    }
    for (int r = 0; r < Mx::kC; ++r) p.c[lane * Mx::kC + r] = c[0][r];
}

template <class Mx, class E>
void run(const Args& args)
{
    fmha_emu::run_grid(lanes<Mx, E>, args, 1, 1, 1, Mx::kWave);
}

extern "C" int amd_mma(int family, int element, int chain, const unsigned* a, const unsigned* b, const void* vt,
                       float* c)
{
    const Args args = {a, b, vt, c, chain};
    switch (family * 4 + element) {
    case 0: run<matrix_mfma32, amd_fp16>(args); return 0;
    case 1: run<matrix_mfma32, amd_bf16>(args); return 0;
    case 4: run<matrix_mfma16, amd_fp16>(args); return 0;
    case 5: run<matrix_mfma16, amd_bf16>(args); return 0;
    case 8: run<matrix_wmma_gfx11, amd_fp16>(args); return 0;
    case 9: run<matrix_wmma_gfx11, amd_bf16>(args); return 0;
    case 12: run<matrix_wmma_gfx12, amd_fp16>(args); return 0;
    case 13: run<matrix_wmma_gfx12, amd_bf16>(args); return 0;
    case 18: run<matrix_mfma32_fp8, amd_fp8_e4m3fnuz>(args); return 0;
    case 19: run<matrix_mfma32_fp8, amd_fp8_e4m3fn>(args); return 0;
    case 22: run<matrix_mfma16_fp8, amd_fp8_e4m3fnuz>(args); return 0;
    case 23: run<matrix_mfma16_fp8, amd_fp8_e4m3fn>(args); return 0;
    }
    return 1;
}

/* pack4 of the fp8 element types (under the emulation: the rounding of v_cvt_pk_fp8_f32). */
extern "C" void fp8_pack(int fnuz, const float* x, unsigned* out, int words)
{
    for (int i = 0; i < words; ++i)
        out[i] = fnuz ? amd_fp8_e4m3fnuz::pack4(x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3])
                      : amd_fp8_e4m3fn::pack4(x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]);
}
"""
FAMILY_IDS = {name: i for i, name in enumerate(LAYOUTS)}
FAMILY_DTYPES = [(f, d) for f in WIDE_FAMILIES for d in ("fp16", "bf16")] + \
                [(f, d) for f in FP8_FAMILIES for d in ("fp8_e4m3fnuz", "fp8_e4m3fn")]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("amd_matrix"), "amd_matrix", DRIVER, [])


def _small_values(rng, shape) -> np.ndarray:
    """Halves in [-4, 4]: exact in fp16, bf16 and both e4m3 flavours, so every product and sum
    is exact in fp32."""
    return (rng.integers(-8, 9, shape) / 2).astype(np.float32)


def _bits(x: np.ndarray, dt) -> np.ndarray:
    """The elements' storage bits, contiguous (uint16, or uint8 for fp8)."""
    return np.ascontiguousarray(dtypes.encode(x, dt)).view(np.uint8 if dt.is_fp8 else np.uint16)


def _a_registers(family: str, a: np.ndarray, dt) -> np.ndarray:
    """[lane][register] 32-bit words holding A[row][k] by the layout (for B, pass B^T)."""
    wave, _, _, n_ab, _, a_of, _ = LAYOUTS[family]
    values = np.array([[a[a_of(lane, e)] for e in range(n_ab)] for lane in range(wave)], np.float32)
    return _bits(values, dt).view(np.uint32)


def _c_registers(family: str, c: np.ndarray) -> np.ndarray:
    wave, _, _, _, n_c, _, d_of = LAYOUTS[family]
    return np.array([[c[d_of(lane, r)] for r in range(n_c)] for lane in range(wave)], np.float32)


def _d_matrix(family: str, regs: np.ndarray) -> np.ndarray:
    wave, m, _, _, n_c, _, d_of = LAYOUTS[family]
    d = np.full((m, m), np.nan, np.float32)
    for lane in range(wave):
        for r in range(n_c):
            d[d_of(lane, r)] = regs[lane, r]
    return d


def _call(library, family: str, dt, c_regs, a_words=None, b_words=None, vt_bits=None) -> np.ndarray:
    """D registers of one emulated wave: D = A B + C, or with vt_bits the to_b/p_key chain
    (c_regs then holds every C tile of one k-step, tile after tile)."""
    out = np.array(c_regs, np.float32)
    ptr = lambda x: None if x is None else x.ctypes.data_as(ctypes.c_void_p)
    rc = library.amd_mma(FAMILY_IDS[family], ELEMENTS[dt.name], int(vt_bits is not None), ptr(a_words),
                         ptr(b_words), ptr(vt_bits), ptr(out))
    assert rc == 0
    return out[:LAYOUTS[family][0]]


@pytest.mark.parametrize("family, dtype", FAMILY_DTYPES)
def test_emulated_instruction_computes_d_equals_ab_plus_c(library, family, dtype):
    dt = dtypes.get(dtype)
    _, m, k, _, _, _, _ = LAYOUTS[family]
    rng = np.random.default_rng(FAMILY_IDS[family])
    a, b, c = _small_values(rng, (m, k)), _small_values(rng, (k, m)), _small_values(rng, (m, m))
    out = _call(library, family, dt, _c_registers(family, c), _a_registers(family, a, dt),
                _a_registers(family, b.T.copy(), dt))
    np.testing.assert_array_equal(_d_matrix(family, out), a @ b + c)


def test_gfx11_operands_that_are_not_replicated_across_half_waves_give_nan(library):
    """RDNA3 WMMA reads A/B from lanes 0-15 and 16-31 alike: a kernel must fill both."""
    dt = dtypes.FP16
    rng = np.random.default_rng(7)
    a = _a_registers("wmma_gfx11", _small_values(rng, (16, 16)), dt)
    a[16:] ^= 1   # the upper half-wave differs in one bit
    b = _a_registers("wmma_gfx11", _small_values(rng, (16, 16)), dt)
    out = _call(library, "wmma_gfx11", dt, np.zeros((32, 8), np.float32), a, b)
    assert np.isnan(out).all()


@pytest.mark.parametrize("family, dtype", FAMILY_DTYPES)
def test_c_registers_reused_as_b_give_the_second_product(library, family, dtype):
    """The kernel's O^T += V^T P^T: P^T's B fragments come from S^T's C registers (to_b) and
    V^T's A fragments follow p_key; over all k-steps that is V^T X for the C tiles X (one tile,
    or the two of keys 0-15 and 16-31 that one mfma16_fp8 k-step spans)."""
    dt = dtypes.get(dtype)
    _, m, k, _, _, _, _ = LAYOUTS[family]
    keys = max(m, k)
    rng = np.random.default_rng(10 + FAMILY_IDS[family])
    x, vt = _small_values(rng, (keys, m)), _small_values(rng, (m, keys))
    c_regs = np.concatenate([_c_registers(family, x[t:t + m]) for t in range(0, keys, m)])
    out = _call(library, family, dt, c_regs, vt_bits=_bits(vt, dt))
    np.testing.assert_array_equal(_d_matrix(family, out), vt @ x)


@pytest.mark.parametrize("dtype", ["fp8_e4m3fnuz", "fp8_e4m3fn"])
def test_fp8_conversion_of_p_rounds_like_dtypes_encode(library, dtype):
    """Every value of the format, every midpoint between neighbours (ties go to the even code),
    random values and zero, within the format's range; NaN and a value that rounds past the
    max give the NaN code (the kernel never converts one: P <= 2^kPScaleLog2)."""
    dt = dtypes.get(dtype)
    table = dtypes.decode(np.arange(256, dtype=np.uint8), dt)
    values = np.unique(table[np.isfinite(table)].astype(np.float64))
    midpoints = (values[:-1] + values[1:]) / 2
    rng = np.random.default_rng(3)
    x = np.concatenate([values, midpoints, rng.uniform(-dt.max, dt.max, 2000), rng.uniform(0, 2.0 ** -6, 500)])
    x = np.resize(x.astype(np.float32), -(-x.size // 4) * 4)
    out = np.zeros(x.size // 4, np.uint32)
    library.fp8_pack(int(dtype.endswith("fnuz")), x.ctypes.data_as(ctypes.c_void_p),
                     out.ctypes.data_as(ctypes.c_void_p), out.size)
    # As values: e4m3fn's conversion keeps the sign of a zero (0x80), dtypes.encode writes +0.
    np.testing.assert_array_equal(dtypes.decode(out.view(np.uint8), dt), dtypes.round_to(x, dt))
    special = np.array([np.nan, dt.max * 1.07, -dt.max * 1.07, 0.0], np.float32)
    library.fp8_pack(int(dtype.endswith("fnuz")), special.ctypes.data_as(ctypes.c_void_p),
                     out.ctypes.data_as(ctypes.c_void_p), 1)
    codes = out[:1].view(np.uint8)
    assert np.isnan(dtypes.decode(codes[:3], dt)).all() and codes[3] == 0
