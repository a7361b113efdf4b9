"""Append-KV with RoPE (kernel_src/fmha_append_kv.hip) on the CPU emulation, then the portable
forward kernel over the updated cache, against the NumPy reference (reference.append_kv).

The cache must hold the reference's values bit for bit at every new token's slot and be
unchanged everywhere else (NaN-poisoned free slots included); the rotated queries too. The
emulation compiles with g++ on x86-64 without FMA instructions, so nothing fuses the rotation's
multiply-adds there; on the GPU the kernel forbids it itself.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fmha_bench import dtypes
from fmha_bench.kernels import (append_launch_config, append_workspace_bytes, kernel_args, launch_config,
                                select_append, select_kernel)
from fmha_bench.problem import Problem
from fmha_bench.reference import append_kv, attention
from fmha_bench.reference.layout import output_shapes
from fmha_bench.session import INPUT_FIELDS, TABLE_FIELDS, PointSession
from emulated_backend import emulated_device
from test_gpu_appendkv import _assert_cache_matches_reference
from test_gpu_kernels import _check
from test_kernels_emulated import CXX, SMALL_TILE, Emulated, _assert_matches, launch  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")


@dataclasses.dataclass
class Appended:
    problem: Problem
    inputs: object
    host: dict          # the buffers the kernels read and wrote, by kernel_args pointer name
    args: bytes         # their FmhaParams, shared by the append and the attention

    def decoded(self, name: str) -> np.ndarray:
        return dtypes.decode(self.host[name], self.problem.dt)


@pytest.fixture(scope="module")
def append(launch):
    """append(problem, times=1) -> Appended: the append kernel launched `times` times over the
    problem's inputs (new slots NaN), the rotated-Q workspace and the outputs NaN-poisoned."""

    def run(problem: Problem, times: int = 1) -> Appended:
        x = problem.make_inputs(seed=1)
        o_shape, lse_shape = output_shapes(problem)
        host = {name: getattr(x, name) for name in INPUT_FIELDS}
        host.update({name: getattr(x.tables, name) for name in TABLE_FIELDS})
        host["q_rotated"] = dtypes.poison(x.q.shape, problem.dt)
        assert append_workspace_bytes(problem) == {"q_rotated": host["q_rotated"].nbytes}
        host.update(o=dtypes.poison(o_shape, problem.out_dt), lse=np.full(lse_shape, np.nan, np.float32))
        host = {k: np.array(v, copy=True, order="C") for k, v in host.items() if v is not None}
        args = kernel_args(problem, x, {k: v.ctypes.data for k, v in host.items()})
        spec = select_append(problem, "sm_90a")
        for _ in range(times):
            launch(spec, args, append_launch_config(spec, problem)[0])
        return Appended(problem, x, host, args)

    return run


def _assert_cache_and_queries_match_reference(run: Appended):
    """Every slot of both caches equals the reference's updated cache (NaN where it is NaN), and
    the rotated queries equal the reference's, bit for bit after decoding."""
    k_ref, v_ref, q_ref = append_kv(run.problem, run.inputs)
    for name, ref in (("k", k_ref), ("v", v_ref), ("q_rotated", q_ref)):
        np.testing.assert_array_equal(run.decoded(name), ref, err_msg=name)


def _attend(run: Appended, launch, **tile) -> Emulated:
    """The portable forward kernel over the appended cache, with the same FmhaParams."""
    p = run.problem
    spec = select_kernel(p, "sm_90a")
    spec = dataclasses.replace(spec, defines=tuple({**dict(spec.defines), **tile}.items()))
    launch(spec, run.args, launch_config(spec, p)[0])
    return Emulated(dtypes.decode(run.host["o"], p.out_dt), run.host["lse"], attention(p, run.inputs), None, None,
                    run.inputs)


def _appendkv(**fields) -> Problem:
    defaults = dict(family="appendkv", batch=2, seqlen_q=5, seqlen_k=37, nhead_q=4, nhead_k=2, hdim_q=64,
                    page_size=16, mask="b", lse=True, rotary_dim=64)
    return Problem(**{**defaults, **fields})


# ----------------------------------------------------------------------------- the cache and the queries
@pytest.mark.parametrize("style", ["interleaved", "half"])
@pytest.mark.parametrize("rotary_dim", [64, 32, 6, 0])  # == hdim, < hdim (aligned halves), halves across chunks, none
def test_rotated_keys_values_and_queries_land_where_the_reference_puts_them(append, style, rotary_dim):
    _assert_cache_and_queries_match_reference(append(_appendkv(rotary_style=style, rotary_dim=rotary_dim)))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_rotation_rounds_to_the_cache_dtype_exactly_as_the_reference(append, dtype):
    # many values per rounding decision: hdim 128, 8 query heads, 40 new tokens
    p = _appendkv(dtype=dtype, seqlen_q=40, seqlen_k=90, nhead_q=8, hdim_q=128, rotary_dim=128, rotary_style="half")
    _assert_cache_and_queries_match_reference(append(p))


@pytest.mark.parametrize("problem", [
    # varlen: an empty cache, a 0-token append, a whole-page append and one past part-filled pages
    _appendkv(mode="group", batch=4, seqlen_q=[3, 0, 16, 1], seqlen_k=[3, 7, 40, 18], page_size=page_size,
              page_table=table, kv_layout=layout, rotary_style=style)
    for page_size, table, layout, style in [(1, "vllm", "hnd", "half"), (16, "vllm", "nhd", "interleaved"),
                                            (16, "sglang", "hnd", "interleaved"), (5, "sglang", "nhd", "half")]
] + [
    # headwise: per-head page ids; the SWA heads' recycled blocks are never written
    _appendkv(batch=2, seqlen_q=4, seqlen_k=150, nhead_q=8, nhead_k=4, page_size=7, page_table="headwise",
              swa_heads=(1, 2), swa_window=20, swa_sink=3, kv_layout=layout, rotary_dim=32)
    for layout in ("hnd", "nhd")
], ids=lambda p: f"{p.name()} {p.kv_layout}")
def test_every_page_table_layout_and_page_size_gets_the_new_tokens(append, problem):
    _assert_cache_and_queries_match_reference(append(problem))


def test_unequal_head_dims_rotate_k_and_copy_v(append):
    _assert_cache_and_queries_match_reference(append(_appendkv(hdim_q=128, hdim_v=64, rotary_dim=96,
                                                                rotary_style="half", dtype="bf16")))


def test_repeated_launches_leave_the_cache_as_the_first_one_did(append):
    """Warmup and timing loops append again: the sources are never written, so nothing rotates twice."""
    _assert_cache_and_queries_match_reference(append(_appendkv(rotary_style="half"), times=3))


# ----------------------------------------------------------------------------- attention over the updated cache
@pytest.mark.parametrize("problem", [
    _appendkv(rotary_style="interleaved"),
    _appendkv(rotary_style="half", rotary_dim=32, seqlen_q=20, seqlen_k=45, nhead_q=6, nhead_k=2),
    _appendkv(mode="group", batch=3, seqlen_q=[4, 0, 9], seqlen_k=[30, 12, 9], page_size=1, page_table="sglang",
              kv_layout="nhd", sink=True),
    _appendkv(batch=2, seqlen_q=3, seqlen_k=150, nhead_q=8, nhead_k=4, page_size=7, page_table="headwise",
              swa_heads=(1, 2), swa_window=20, swa_sink=3),
], ids=lambda p: f"{p.name()} {p.kv_layout}")
def test_attention_after_the_append_matches_reference(append, launch, problem):
    run = append(problem)
    _assert_matches(problem, _attend(run, launch, **SMALL_TILE))


def test_attention_without_the_append_reads_the_poisoned_new_slots(append, launch):
    """The inputs leave the new tokens' slots NaN: an append that writes nothing fails validation."""
    run = append(_appendkv(), times=0)
    run.host["q_rotated"][...] = run.host["q"]  # queries present, cache not appended
    out = _attend(run, launch, **SMALL_TILE)
    assert np.isnan(out.o).all()  # bottom-right causal: every row sees the first new token


# ----------------------------------------------------------------------------- the provider, as the GPU tests drive it
@pytest.fixture(scope="module")
def emulated_gpu(launch, tmp_path_factory):
    """The GPU tests' (backend, device, provider) on the CPU emulation."""
    with pytest.MonkeyPatch.context() as patch:
        yield emulated_device(launch, patch, tmp_path_factory.mktemp("instances"))


@pytest.mark.parametrize("problem", [
    _appendkv(rotary_style="half", seqlen_q=3),
    _appendkv(mode="group", batch=3, seqlen_q=[2, 0, 5], seqlen_k=[20, 4, 5], page_size=1, page_table="sglang",
              kv_layout="nhd", rotary_dim=32),
], ids=lambda p: f"{p.name()} {p.kv_layout}")
def test_provider_appends_as_the_gpu_tests_check_it(emulated_gpu, problem):
    """The fmha provider's prepare and launch, and test_gpu_appendkv's cache check, end to end."""
    _assert_cache_matches_reference(emulated_gpu, problem, launches=2)


def test_the_runner_validates_an_appended_point_as_the_gpu_tests_run_it(emulated_gpu):
    """run_once: prepare, the validated launch, the timed launches, the output validated again."""
    row = _check(emulated_gpu, _appendkv(mode="group", batch=3, seqlen_q=[2, 0, 5], seqlen_k=[20, 4, 5], page_size=1,
                                         page_table="sglang", kv_layout="nhd", rotary_dim=32))
    assert row.kernel.startswith("append_kv_fp16_hd64_") and " + fwd_paged_fp16_hd64_" in row.kernel


def _without_the_append(backend, monkeypatch):
    """The backend runs every kernel but the append: an append that writes nothing."""
    run_kernel = backend._run_kernel
    monkeypatch.setattr(backend, "_run_kernel", lambda spec, params, grid: None if spec.entry == "fmha_append_kv"
                        else run_kernel(spec, params, grid))


def test_the_gpu_tests_cache_check_fails_when_the_append_writes_nothing(emulated_gpu, monkeypatch):
    _without_the_append(emulated_gpu[0], monkeypatch)
    with pytest.raises(AssertionError):
        _assert_cache_matches_reference(emulated_gpu, _appendkv(seqlen_q=2))


def test_each_provider_of_a_point_starts_from_the_poisoned_cache(emulated_gpu):
    """An earlier provider's append must not hide a later one that writes nothing: prepare puts
    the cache back as the inputs made it and poisons the rotated queries."""
    backend, device, provider = emulated_gpu
    problem = _appendkv(seqlen_q=2)
    inputs = problem.make_inputs(0)
    session = PointSession(backend, device, problem, inputs)
    try:
        provider.prepare(problem, session).launch()   # fills the new tokens' slots
        provider.prepare(problem, session)
        storage = problem.dt.storage
        caches = [backend.download(session.buffers[n], getattr(inputs, n).shape, storage) for n in ("k", "v")]
        q = backend.download(session.workspaces["q_rotated"], inputs.q.shape, storage)
    finally:
        session.close()
    np.testing.assert_array_equal(caches[0], inputs.k)   # bits: the new slots' NaN poison included
    np.testing.assert_array_equal(caches[1], inputs.v)
    assert np.isnan(dtypes.decode(q, problem.dt)).all()
