"""The portable forward kernel, compiled from the same source as on the GPU but for the CPU
(kernel_src/fmha_cpu_emulation.h: every GPU thread a fiber), against the NumPy reference.

This checks the kernel's indexing and semantics (masks, GQA, varlen, paged tables, sink, soft
cap, LSE, fp8 descales, never reading poisoned slots) without a GPU. The vendor intrinsics
behind fmha_port.h (shuffles, barriers, fp16 conversion) are the emulation's, not the GPU's.
"""
from __future__ import annotations

import ctypes
import dataclasses
import shutil
import subprocess

import numpy as np
import pytest

from fmha_bench import dtypes
from fmha_bench.kernel_params import repo_header_path
from fmha_bench.kernels import kernel_args, launch_config, select_kernel
from fmha_bench.problem import Problem
from fmha_bench.reference import attention
from fmha_bench.reference.layout import output_shapes

KERNEL_SRC = repo_header_path().parent
CXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")

DRIVER = r"""
#include <cstdio>
#include "fmha_fwd.hip"
extern "C" int fmha_emulate(const void* params, unsigned gx, unsigned gy, unsigned gz, char* error, int n)
{
    try {
        fmha_emu::run_grid(fmha_fwd, *(const FmhaParams*)params, gx, gy, gz, FMHA_THREADS);
        return 0;
    } catch (const std::exception& e) {
        std::snprintf(error, n, "%s", e.what());
        return 1;
    }
}
"""

CONVERSIONS = r"""
#include "fmha_port.h"
extern "C" void decode_fp8(int fnuz, float* out)
{
    for (int c = 0; c < 256; ++c)
        out[c] = fnuz ? fmha_fp8_e4m3fnuz_to_float((unsigned char)c) : fmha_fp8_e4m3fn_to_float((unsigned char)c);
}
extern "C" void encode_bf16(const float* x, unsigned short* out, int n)
{
    for (int i = 0; i < n; ++i) out[i] = fmha_float_to_bf16(x[i]);
}
extern "C" void decode_bf16(const unsigned short* x, float* out, int n)
{
    for (int i = 0; i < n; ++i) out[i] = fmha_bf16_to_float(x[i]);
}
"""

# Small tiles put many row and key tiles into tiny problems (interior, boundary and skipped tiles).
SMALL_TILE = {"FMHA_BLOCK_Q": "16", "FMHA_BLOCK_K": "8", "FMHA_THREADS": "32"}


def _compile(tmp_path, name: str, source: str, defines: list[str]) -> ctypes.CDLL:
    src, lib = tmp_path / f"{name}.cpp", tmp_path / f"{name}.so"
    src.write_text(source)
    subprocess.run([CXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-DFMHA_CPU_EMULATION", f"-I{KERNEL_SRC}",
                    *defines, str(src), "-o", str(lib)], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


@pytest.fixture(scope="module")
def emulate(tmp_path_factory):
    """emulate(problem, **tile defines) -> (o float32, lse, reference)."""
    tmp = tmp_path_factory.mktemp("emulated")
    libs = {}

    def run(problem: Problem, arch: str = "sm_90a", **tile):
        spec = select_kernel(problem, arch)
        assert not isinstance(spec, str), spec
        spec = dataclasses.replace(spec, defines=tuple({**dict(spec.defines), **tile}.items()))
        if spec.defines not in libs:
            libs[spec.defines] = _compile(tmp, f"k{len(libs)}", DRIVER, spec.define_flags())
        x = problem.make_inputs(seed=1)
        o_shape, lse_shape = output_shapes(problem)
        o = dtypes.poison(o_shape, problem.out_dt)
        lse = np.full(lse_shape, np.nan, np.float32)
        host = {"o": o, "lse": lse}
        for name in ("q", "k", "v", "seqstart_q", "seqstart_k", "seqlen_k", "sink_logits"):
            host[name] = getattr(x, name)
        if x.tables is not None:
            for name in ("block_table", "kv_indptr", "kv_page_indices", "kv_last_page_len", "block_tables_headwise"):
                host[name] = getattr(x.tables, name)
        host = {k: np.ascontiguousarray(v) for k, v in host.items() if v is not None}
        args = kernel_args(problem, x, {k: v.ctypes.data for k, v in host.items()})
        grid, _, _ = launch_config(spec, problem)
        error = ctypes.create_string_buffer(256)
        rc = libs[spec.defines].fmha_emulate(ctypes.c_char_p(args), *(ctypes.c_uint(g) for g in grid), error, 256)
        assert rc == 0, error.value.decode()
        return dtypes.decode(host["o"], problem.out_dt), host["lse"], attention(problem, x)

    return run


def _assert_matches(problem, o, lse, ref):
    tol = 4 * problem.out_dt.eps  # output rounding plus fp32 accumulation over short rows
    assert not np.isnan(o).any(), "unwritten or NaN output elements"
    bad = ~(np.abs(o - ref.o) <= tol + tol * np.abs(ref.o))
    assert not bad.any(), f"{bad.sum()} of {bad.size} outputs off; max abs error {np.abs(o - ref.o).max():.3g}"
    if problem.lse:
        np.testing.assert_array_equal(np.isinf(lse), np.isinf(ref.lse))
        np.testing.assert_allclose(lse, ref.lse, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mask", ["0", "t", "b", "t:3,5", "b:-1,0,4", "t:8,-1,2", "xb:20"])
def test_shipped_tile_matches_reference_for_every_mask_kind(emulate, mask):
    p = Problem(batch=2, seqlen_q=37, seqlen_k=70, nhead_q=4, nhead_k=2, hdim_q=64, mask=mask, lse=True)
    _assert_matches(p, *emulate(p))


@pytest.mark.parametrize("problem", [
    Problem(batch=2, seqlen_q=45, seqlen_k=20, nhead_q=2, hdim_q=64, mask="b", lse=True),  # first rows see nothing
    Problem(batch=1, seqlen_q=40, seqlen_k=75, nhead_q=6, nhead_k=2, hdim_q=64, mask="b:9,2,5", lse=True, sink=True),
    Problem(batch=1, seqlen_q=50, seqlen_k=30, nhead_q=2, hdim_q=64, mask="t:3,1,4", lse=True, sink=True),
    Problem(batch=2, seqlen_q=20, seqlen_k=60, nhead_q=2, hdim_q=64, mask="t", soft_cap=5.0, sink=True, lse=True),
    Problem(mode="group", batch=4, seqlen_q=[19, 0, 1, 33], seqlen_k=[30, 0, 1, 0], nhead_q=3, nhead_k=1, hdim_q=64,
            mask="b", lse=True, sink=True),
], ids=lambda p: p.name())
def test_many_small_tiles_match_reference(emulate, problem):
    _assert_matches(problem, *emulate(problem, **SMALL_TILE))


def test_unequal_head_dims_match_reference(emulate):
    p = Problem(batch=1, seqlen_q=30, seqlen_k=41, nhead_q=4, nhead_k=1, hdim_q=128, hdim_v=64, dtype="bf16",
                mask="b", lse=True)
    _assert_matches(p, *emulate(p, **SMALL_TILE))


def test_fp8_with_descales_matches_the_dequantized_reference(emulate):
    p = Problem(batch=2, seqlen_q=33, seqlen_k=50, nhead_q=4, nhead_k=2, hdim_q=64, dtype="fp8_e4m3fn", mask="t",
                lse=True)
    _assert_matches(p, *emulate(p))


@pytest.mark.parametrize("problem", [
    Problem(family="paged", mode="group", batch=3, seqlen_q=[5, 1, 20], seqlen_k=[70, 17, 20], nhead_q=4, nhead_k=2,
            hdim_q=64, mask="b", page_size=page_size, page_table=table, kv_layout=layout, lse=True)
    for page_size, table, layout in
    [(1, "vllm", "hnd"), (5, "sglang", "nhd"), (16, "vllm", "nhd"), (16, "sglang", "hnd")]
] + [
    Problem(family="paged", batch=2, seqlen_q=3, seqlen_k=150, nhead_q=8, nhead_k=4, hdim_q=64, mask="b", page_size=7,
            page_table="headwise", swa_heads=(1, 2), swa_window=20, swa_sink=3, kv_layout=layout, lse=True)
    for layout in ("hnd", "nhd")
], ids=lambda p: f"{p.name()} {p.kv_layout}")
def test_paged_tables_and_layouts_match_reference(emulate, problem):
    """Unused cache slots and recycled headwise blocks hold NaN: reading one would show."""
    _assert_matches(problem, *emulate(problem, **SMALL_TILE))


# ----------------------------------------------------------------------------- element conversions
@pytest.fixture(scope="module")
def conversions(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("conversions"), "conversions", CONVERSIONS, [])


@pytest.mark.parametrize("name", ["fp8_e4m3fn", "fp8_e4m3fnuz"])
def test_fp8_decoding_is_exact_for_all_256_codes(conversions, name):
    out = np.zeros(256, np.float32)
    conversions.decode_fp8(int(name.endswith("fnuz")), out.ctypes.data_as(ctypes.c_void_p))
    np.testing.assert_array_equal(out, dtypes.decode(np.arange(256, dtype=np.uint8), dtypes.get(name)))


def test_bf16_rounds_to_nearest_even_like_the_host_and_decodes_exactly(conversions):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(1000).astype(np.float32) * 100,
                        np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 3.4e38, -np.inf, np.inf, np.nan, 0.0,
                                  -0.0, 1e-40], np.float32)])
    bits = np.zeros(x.size, np.uint16)
    conversions.encode_bf16(x.ctypes.data_as(ctypes.c_void_p), bits.ctypes.data_as(ctypes.c_void_p), x.size)
    np.testing.assert_array_equal(bits, dtypes.encode(x, dtypes.BF16))
    back = np.zeros(x.size, np.float32)
    conversions.decode_bf16(bits.ctypes.data_as(ctypes.c_void_p), back.ctypes.data_as(ctypes.c_void_p), x.size)
    np.testing.assert_array_equal(back, dtypes.decode(bits, dtypes.BF16))
