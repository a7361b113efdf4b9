"""The portable forward kernel and the split-KV combine, compiled from the same sources as on
the GPU but for the CPU (kernel_src/fmha_cpu_emulation.h: every GPU thread a fiber), against
the NumPy reference.

This checks the kernels' indexing and semantics (masks, GQA, varlen, paged tables, sink, soft
cap, LSE, fp8 descales, split-KV partials and their combine, never reading poisoned slots)
without a GPU. The vendor intrinsics behind fmha_port.h (shuffles, barriers, fp16 conversion)
are the emulation's, not the GPU's.
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
from fmha_bench.dispatch import num_splits_for
from fmha_bench.kernels import (combine_launch_config, kernel_args, launch_config, select_combine, select_kernel,
                                split_workspace_bytes)
from fmha_bench.problem import Problem
from fmha_bench.reference import RefOutput, attention, split_partials
from fmha_bench.reference.layout import output_shapes
from fmha_bench.session import INPUT_FIELDS, TABLE_FIELDS
from fmha_bench.validate import compare, tolerance_for

KERNEL_SRC = repo_header_path().parent
CXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")

# One kernel instance per library: EMU_SOURCE / EMU_ENTRY name the kernel, EMU_THREADS its block
# size (see emulation_defines), its defines specialise it.
# The entry's one by-value argument (FmhaParams, or a struct holding it) is read from `params`.
DRIVER = r"""
#include <cstdio>
#include EMU_SOURCE
template <class Params>
void emulate_entry(void (*entry)(Params), const void* params, unsigned gx, unsigned gy, unsigned gz)
{
    fmha_emu::run_grid(entry, *(const Params*)params, gx, gy, gz, EMU_THREADS);
}
extern "C" int fmha_emulate(const void* params, unsigned gx, unsigned gy, unsigned gz, char* error, int n)
{
    try {
        emulate_entry(EMU_ENTRY, params, gx, gy, gz);
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


def emulation_defines(spec, threads: str = "FMHA_THREADS") -> list[str]:
    """The flags that make DRIVER run `spec`'s kernel: its defines, its source and entry, and the
    expression of its threads per block (FMHA_THREADS, or a kernel's own constant)."""
    return [*spec.define_flags(), f'-DEMU_SOURCE="{spec.source}"', f"-DEMU_ENTRY={spec.entry}",
            f"-DEMU_THREADS={threads}"]


def host_buffers(problem, inputs, splits: int = 1) -> dict:
    """The host arrays of one emulated launch: NaN-poisoned O and LSE (and split partials), then
    every input and page table the point has, contiguous."""
    o_shape, lse_shape = output_shapes(problem)
    host = {"o": dtypes.poison(o_shape, problem.out_dt), "lse": np.full(lse_shape, np.nan, np.float32)}
    if splits > 1:
        host["o_acc"] = np.full((splits,) + o_shape, np.nan, np.float32)
        host["lse_acc"] = np.full((splits,) + lse_shape, np.nan, np.float32)
    host.update((name, getattr(inputs, name)) for name in INPUT_FIELDS)
    if inputs.tables is not None:
        host.update((name, getattr(inputs.tables, name)) for name in TABLE_FIELDS)
    return {k: np.ascontiguousarray(v) for k, v in host.items() if v is not None}


def host_buffers_with_nan_page(problem, inputs, splits: int = 1) -> tuple[dict, dict]:
    """host_buffers plus their pointers; a paged point's K/V pools get a NaN page in front of
    page 0 (pointer past it), so a kernel that reads page -1 of a table writes NaN."""
    host = host_buffers(problem, inputs, splits)
    ptrs = {k: v.ctypes.data for k, v in host.items()}
    if problem.is_paged:
        for name in ("k", "v"):
            pool = host[name]
            host[name] = np.ascontiguousarray(np.concatenate([dtypes.poison((1,) + pool.shape[1:], problem.dt), pool]))
            ptrs[name] = host[name][1:].ctypes.data
    return host, ptrs


def run_emulated(library: ctypes.CDLL, args: bytes, grid) -> None:
    """One launch of the library's kernel over `grid`; a kernel-side error fails the test."""
    error = ctypes.create_string_buffer(256)
    rc = library.fmha_emulate(ctypes.c_char_p(args), *(ctypes.c_uint(g) for g in grid), error, 256)
    assert rc == 0, error.value.decode()


def kernel_libraries(tmp, prefix: str, driver: str = None, threads: str = "FMHA_THREADS"):
    """library(spec) -> `spec`'s kernel compiled for the CPU with `driver` (default DRIVER),
    cached per instance."""
    libs = {}

    def library(spec) -> ctypes.CDLL:
        key = (spec.source, spec.entry, spec.defines)
        if key not in libs:
            libs[key] = _compile(tmp, f"{prefix}{len(libs)}", driver or DRIVER, emulation_defines(spec, threads))
        return libs[key]

    return library


def _compile(tmp_path, name: str, source: str, defines: list[str]) -> ctypes.CDLL:
    src, lib = tmp_path / f"{name}.cpp", tmp_path / f"{name}.so"
    src.write_text(source)
    subprocess.run([CXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-DFMHA_CPU_EMULATION", f"-I{KERNEL_SRC}",
                    *defines, str(src), "-o", str(lib)], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """launch(spec, packed FmhaParams, grid): runs one kernel instance on the CPU."""
    library = kernel_libraries(tmp_path_factory.mktemp("emulated"), "k")
    return lambda spec, args, grid: run_emulated(library(spec), args, grid)


@dataclasses.dataclass
class Emulated:
    o: np.ndarray                      # float32, decoded from the output dtype
    lse: np.ndarray                    # as the kernels left it (NaN where unwritten)
    ref: RefOutput
    o_acc: np.ndarray | None           # split-KV partials [num_splits, *O shape] (None when unsplit)
    lse_acc: np.ndarray | None         # [num_splits, *LSE shape]
    inputs: object


@pytest.fixture(scope="module")
def emulate(launch):
    """emulate(problem, num_splits=problem.num_splits, **tile defines) -> Emulated: the forward
    kernel and, with num_splits > 1, the combine, over NaN-poisoned outputs and workspaces."""

    def run(problem: Problem, arch: str = "sm_90a", num_splits: int | None = None, **tile) -> Emulated:
        spec = select_kernel(problem, arch)
        assert not isinstance(spec, str), spec
        spec = dataclasses.replace(spec, defines=tuple({**dict(spec.defines), **tile}.items()))
        splits = problem.num_splits if num_splits is None else num_splits
        x = problem.make_inputs(seed=1)
        host = host_buffers(problem, x, splits)
        if splits > 1:
            assert split_workspace_bytes(problem, splits) == {"o_acc": host["o_acc"].nbytes,
                                                              "lse_acc": host["lse_acc"].nbytes}
        args = kernel_args(problem, x, {k: v.ctypes.data for k, v in host.items()}, splits)
        launch(spec, args, launch_config(spec, problem, splits)[0])
        if splits > 1:
            combine = select_combine(problem, arch)
            launch(combine, args, combine_launch_config(combine, problem)[0])
        return Emulated(dtypes.decode(host["o"], problem.out_dt), host["lse"], attention(problem, x),
                        host.get("o_acc"), host.get("lse_acc"), x)

    return run


def assert_lse_matches(problem, lse, ref_lse):
    """LSE within 1e-4 with the reference's infinities, or untouched (NaN) when not asked for."""
    if problem.lse:
        np.testing.assert_array_equal(np.isinf(lse), np.isinf(ref_lse))
        np.testing.assert_allclose(lse, ref_lse, atol=1e-4, rtol=0)
    else:
        assert np.isnan(lse).all(), "LSE written although the problem asks for none"


def assert_matches_with_rounded_p(problem, o, lse, inputs, v_abs_max: float):
    """O and LSE against the reference under the runner's tolerance for a kernel that rounds P to
    the input type (validate.py); `v_abs_max` the largest dequantised V value."""
    ref = attention(problem, inputs)
    tol = tolerance_for(problem, v_abs_max, "input")
    assert not np.isnan(o).any(), "unwritten or NaN output elements (a poisoned slot was read?)"
    check = compare(o, ref.o, tol.atol, tol.rtol)
    assert check.passed, f"{check.mismatches} of {check.count} off, max abs {check.max_abs:.3g}"
    assert_lse_matches(problem, lse, ref.lse)


def _assert_matches(problem, run: Emulated):
    ref, o = run.ref, run.o
    tol = 4 * problem.out_dt.eps  # output rounding plus fp32 accumulation over short rows
    assert not np.isnan(o).any(), "unwritten or NaN output elements"
    bad = ~(np.abs(o - ref.o) <= tol + tol * np.abs(ref.o))
    assert not bad.any(), f"{bad.sum()} of {bad.size} outputs off; max abs error {np.abs(o - ref.o).max():.3g}"
    assert_lse_matches(problem, run.lse, ref.lse)


@pytest.mark.parametrize("mask", ["0", "t", "b", "t:3,5", "b:-1,0,4", "t:8,-1,2", "xb:20"])
def test_shipped_tile_matches_reference_for_every_mask_kind(emulate, mask):
    p = Problem(batch=2, seqlen_q=37, seqlen_k=70, nhead_q=4, nhead_k=2, hdim_q=64, mask=mask, lse=True)
    _assert_matches(p, emulate(p))


@pytest.mark.parametrize("problem", [
    Problem(batch=2, seqlen_q=45, seqlen_k=20, nhead_q=2, hdim_q=64, mask="b", lse=True),  # first rows see nothing
    Problem(batch=1, seqlen_q=40, seqlen_k=75, nhead_q=6, nhead_k=2, hdim_q=64, mask="b:9,2,5", lse=True, sink=True),
    Problem(batch=1, seqlen_q=50, seqlen_k=30, nhead_q=2, hdim_q=64, mask="t:3,1,4", lse=True, sink=True),
    Problem(batch=2, seqlen_q=20, seqlen_k=60, nhead_q=2, hdim_q=64, mask="t", soft_cap=5.0, sink=True, lse=True),
    Problem(mode="group", batch=4, seqlen_q=[19, 0, 1, 33], seqlen_k=[30, 0, 1, 0], nhead_q=3, nhead_k=1, hdim_q=64,
            mask="b", lse=True, sink=True),
], ids=lambda p: p.name())
def test_many_small_tiles_match_reference(emulate, problem):
    _assert_matches(problem, emulate(problem, **SMALL_TILE))


def test_unequal_head_dims_match_reference(emulate):
    p = Problem(batch=1, seqlen_q=30, seqlen_k=41, nhead_q=4, nhead_k=1, hdim_q=128, hdim_v=64, dtype="bf16",
                mask="b", lse=True)
    _assert_matches(p, emulate(p, **SMALL_TILE))


def test_fp8_with_descales_matches_the_dequantized_reference(emulate):
    p = Problem(batch=2, seqlen_q=33, seqlen_k=50, nhead_q=4, nhead_k=2, hdim_q=64, dtype="fp8_e4m3fn", mask="t",
                lse=True)
    _assert_matches(p, emulate(p))


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
    _assert_matches(problem, emulate(problem, **SMALL_TILE))


# ----------------------------------------------------------------------------- split-KV
def _assert_partials_match(problem, run: Emulated):
    """The forward kernel's per-split partials equal the reference's (SPEC 6), empty splits included."""
    splits = run.o_acc.shape[0]
    o_s, lse_s = split_partials(problem, run.inputs, splits)
    if problem.mode == "group":
        lse_s = lse_s.transpose(0, 2, 1)  # the reference keeps partial LSEs row-major: [S, total_q, Hq]
    np.testing.assert_array_equal(np.isneginf(run.lse_acc), np.isneginf(lse_s))
    np.testing.assert_allclose(run.lse_acc, lse_s, atol=1e-4, rtol=0)
    np.testing.assert_allclose(run.o_acc, o_s, atol=1e-5, rtol=1e-4)


def _assert_split_matches(problem, run: Emulated):
    _assert_partials_match(problem, run)
    _assert_matches(problem, run)


def _splitkv(**fields) -> Problem:
    defaults = dict(family="splitkv", batch=2, seqlen_q=5, seqlen_k=37, nhead_q=4, nhead_k=2, hdim_q=64, mask="b",
                    lse=True)
    return Problem(**{**defaults, **fields})


@pytest.mark.parametrize("num_splits", [2, 3, 7, 37, 64])  # 64 > 37 keys: the last splits hold no key at all
def test_split_partials_and_combine_match_reference_for_any_split_count(emulate, num_splits):
    p = _splitkv(num_splits=num_splits)
    _assert_split_matches(p, emulate(p, **SMALL_TILE))


@pytest.mark.parametrize("mask", ["t", "b:5,0", "b:5,0,3", "t:3,5", "xb:9", "0"])
def test_splits_that_the_mask_hides_are_empty_and_combine_exactly(emulate, mask):
    p = _splitkv(seqlen_q=6, seqlen_k=90, num_splits=6, mask=mask)
    run = emulate(p, **SMALL_TILE)
    _assert_split_matches(p, run)
    if mask == "t":  # rows 0..5 see keys 0..5 only: splits 1..5 (keys 15..89) see nothing
        assert np.isneginf(run.lse_acc[1:]).all() and (run.o_acc[1:] == 0).all()


@pytest.mark.parametrize("seqlen_q", [1, 2, 3, 4])
def test_bottom_right_causal_decode_splits_match_reference(emulate, seqlen_q):
    p = Problem(family="paged", batch=3, seqlen_q=seqlen_q, seqlen_k=83, nhead_q=8, nhead_k=2, hdim_q=64, mask="b",
                page_size=16, lse=True, num_splits=5)
    _assert_split_matches(p, emulate(p, **SMALL_TILE))


@pytest.mark.parametrize("problem", [
    Problem(family="paged", mode="group", batch=3, seqlen_q=[2, 1, 0], seqlen_k=[70, 17, 9], nhead_q=4, nhead_k=2,
            hdim_q=64, mask="b", page_size=page_size, page_table=table, kv_layout=layout, lse=True, num_splits=4)
    for page_size, table, layout in [(1, "vllm", "hnd"), (5, "sglang", "nhd"), (16, "vllm", "nhd")]
] + [
    Problem(family="paged", batch=2, seqlen_q=3, seqlen_k=150, nhead_q=8, nhead_k=4, hdim_q=64, mask="b", page_size=7,
            page_table="headwise", swa_heads=(1, 2), swa_window=20, swa_sink=3, kv_layout="nhd", lse=True,
            num_splits=6),
], ids=lambda p: f"{p.name()} {p.kv_layout}")
def test_paged_splits_match_reference(emulate, problem):
    """Headwise SWA heads leave their middle splits empty and never touch their recycled blocks."""
    _assert_split_matches(problem, emulate(problem, **SMALL_TILE))


@pytest.mark.parametrize("problem", [
    # Sq > Sk: the first 25 rows see no key in any split; with the sink their LSE is the sink logit
    _splitkv(batch=2, seqlen_q=45, seqlen_k=20, nhead_q=6, nhead_k=2, sink=True, soft_cap=5.0, num_splits=3),
    _splitkv(batch=1, seqlen_q=12, seqlen_k=75, nhead_q=6, nhead_k=2, mask="b:9,2,5", sink=True, num_splits=4),
    # group mode: empty sequences (no queries; queries but no keys) and a one-token one
    _splitkv(mode="group", batch=5, seqlen_q=[19, 0, 1, 33, 4], seqlen_k=[30, 0, 1, 0, 70], nhead_q=3, nhead_k=1,
             sink=True, num_splits=3),
    _splitkv(mode="group", batch=3, seqlen_q=[3, 0, 7], seqlen_k=[41, 5, 0], nhead_q=4, nhead_k=4, lse=False,
             num_splits=5),
], ids=lambda p: p.name())
def test_sink_gqa_and_empty_sequences_join_the_combine_once(emulate, problem):
    _assert_split_matches(problem, emulate(problem, **SMALL_TILE))


@pytest.mark.parametrize("problem", [
    _splitkv(seqlen_q=9, seqlen_k=50, dtype="fp8_e4m3fn", mask="t", num_splits=3),       # descales, bf16 output
    _splitkv(seqlen_q=7, seqlen_k=41, hdim_q=128, hdim_v=64, dtype="bf16", num_splits=4),  # Dv != Dq
], ids=lambda p: p.name())
def test_split_dtypes_and_head_dims_match_reference(emulate, problem):
    _assert_split_matches(problem, emulate(problem, **SMALL_TILE))


def test_split_capable_instance_run_with_one_split_writes_the_output_itself(emulate):
    """num_splits 0 may resolve to 1: the split-capable instance then acts as the unsplit kernel."""
    p = _splitkv(seqlen_q=20, seqlen_k=45, sink=True, num_splits=0)
    run = emulate(p, num_splits=1, **SMALL_TILE)
    assert run.o_acc is None
    _assert_matches(p, run)


def test_auto_split_count_runs_with_the_shipped_tile(emulate):
    p = Problem(family="paged", batch=1, seqlen_q=1, seqlen_k=3000, nhead_q=8, nhead_k=2, hdim_q=64, mask="b",
                page_size=16, page_table="sglang", num_splits=0, lse=True, sink=True)
    splits = num_splits_for(p, select_kernel(p, "sm_90a"), num_sms=132)
    assert splits == 3000 // 256  # 2 blocks on 132 SMs: as many splits as 256-key chunks allow
    _assert_split_matches(p, emulate(p, num_splits=splits))


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
