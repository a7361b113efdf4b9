"""The CPU emulation of the AMD matrix instructions (kernel_src/fmha_amd_matrix.h) against a
plain matrix product, with the lane layouts written out here independently of the header.

LAYOUTS is AMD's Matrix Instruction Calculator (github.com/ROCm/amd_matrix_instruction_calculator,
`--matrix-layout` for cdna2/cdna3 v_mfma_f32_{32x32x8,16x16x16}_{f16,bf16(_1k)}, rdna3/rdna4
v_wmma_f32_16x16x16_{f16,bf16} -w 32), every lane and register compared once with these formulas.
A layout slip in the emulation therefore fails here, and the kernel tests (test_mfma_emulated.py),
which run on the emulation, inherit a faithful instruction.
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
LAYOUTS = {
    "mfma32": (64, 32, 8, 4, 16, lambda l, e: (l % 32, 4 * (l // 32) + e),
               lambda l, r: (8 * (r // 4) + 4 * (l // 32) + r % 4, l % 32)),
    "mfma16": (64, 16, 16, 4, 4, lambda l, e: (l % 16, 4 * (l // 16) + e), lambda l, r: (4 * (l // 16) + r, l % 16)),
    "wmma_gfx11": (32, 16, 16, 16, 8, lambda l, e: (l % 16, e), lambda l, r: (2 * r + l // 16, l % 16)),
    "wmma_gfx12": (32, 16, 16, 8, 8, lambda l, e: (l % 16, 8 * (e // 4) + 4 * (l // 16) + e % 4),
                   lambda l, r: (8 * (l // 16) + r, l % 16)),
}

DRIVER = r"""
#include <cstdio>
#include "fmha_port.h"
#include "fmha_amd_matrix.h"
using namespace fmha;

struct Args { const unsigned* a; const unsigned* b; const unsigned short* vt; float* c; int chain; };

/* One wave. mma: every lane's A, B, C registers from the host, D back. chain: C registers (an
   S^T tile) turned into P^T's B fragments by to_b, A = V^T taken at p_key, summed over k-steps:
   D = V^T P^T, the kernel's second product. */
template <class Mx, class E>
void lanes(Args p)
{
    const unsigned lane = threadIdx.x;
    typename Mx::AB a, b;
    typename Mx::C c;
    for (int r = 0; r < Mx::kC; ++r) c[r] = p.c[lane * Mx::kC + r];
    if (!p.chain) {
        for (int w = 0; w < Mx::kAB / 2; ++w) {
            a[w] = p.a[lane * (Mx::kAB / 2) + w];
            b[w] = p.b[lane * (Mx::kAB / 2) + w];
        }
        matrix_mma<E>(Mx{}, c, a, b);
    } else {
        const typename Mx::C x = c;
        c = typename Mx::C{};
        for (int sub = 0; sub < Mx::kM / Mx::kK; ++sub) {
            b = Mx::template to_b<E>(x, sub);
            for (int w = 0; w < Mx::kAB / 2; ++w) {
                const unsigned short* row = p.vt + Mx::ab_mn(lane) * Mx::kM + Mx::p_key(lane, 2 * w, sub);
                a[w] = row[0] | (unsigned)row[1] << 16;
            }
            matrix_mma<E>(Mx{}, c, a, b);
        }
    }
    for (int r = 0; r < Mx::kC; ++r) p.c[lane * Mx::kC + r] = c[r];
}

template <class Mx>
void run(int bf16, const Args& args)
{
    fmha_emu::run_grid(bf16 ? lanes<Mx, amd_bf16> : lanes<Mx, amd_fp16>, args, 1, 1, 1, Mx::kWave);
}

extern "C" int amd_mma(int family, int bf16, int chain, const unsigned* a, const unsigned* b, const unsigned short* vt,
                       float* c)
{
    const Args args = {a, b, vt, c, chain};
    switch (family) {
    case 0: run<matrix_mfma32>(bf16, args); return 0;
    case 1: run<matrix_mfma16>(bf16, args); return 0;
    case 2: run<matrix_wmma_gfx11>(bf16, args); return 0;
    case 3: run<matrix_wmma_gfx12>(bf16, args); return 0;
    }
    return 1;
}
"""
FAMILY_IDS = {name: i for i, name in enumerate(LAYOUTS)}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("amd_matrix"), "amd_matrix", DRIVER, [])


def _small_values(rng, shape) -> np.ndarray:
    """Halves in [-4, 4]: exact in fp16 and bf16, so every product and sum is exact in fp32."""
    return (rng.integers(-8, 9, shape) / 2).astype(np.float32)


def _bits(x: np.ndarray, dt) -> np.ndarray:
    return np.ascontiguousarray(dtypes.encode(x, dt)).view(np.uint16)


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
    """D registers of one emulated wave: D = A B + C, or with vt_bits the to_b/p_key chain."""
    out = np.array(c_regs, np.float32)
    ptr = lambda x: None if x is None else x.ctypes.data_as(ctypes.c_void_p)
    rc = library.amd_mma(FAMILY_IDS[family], int(dt is dtypes.BF16), int(vt_bits is not None), ptr(a_words),
                         ptr(b_words), ptr(vt_bits), ptr(out))
    assert rc == 0
    return out


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("family", list(LAYOUTS))
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


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("family", list(LAYOUTS))
def test_c_registers_reused_as_b_give_the_second_product(library, family, dtype):
    """The kernel's O^T += V^T P^T: P^T's B fragments come from S^T's C registers (to_b) and
    V^T's A fragments follow p_key; over all k-steps that is V^T X for the C tile X."""
    dt = dtypes.get(dtype)
    _, m, _, _, _, _, _ = LAYOUTS[family]
    rng = np.random.default_rng(10 + FAMILY_IDS[family])
    x, vt = _small_values(rng, (m, m)), _small_values(rng, (m, m))
    out = _call(library, family, dt, _c_registers(family, x), vt_bits=_bits(vt, dt))
    np.testing.assert_array_equal(_d_matrix(family, out), vt @ x)
