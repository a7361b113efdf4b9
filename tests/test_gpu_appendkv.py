"""Append-KV with RoPE on a real GPU (run on the device machine: pytest -m gpu): the cache after the
append against the reference's updated cache, and the attention output over it.

Each case runs with the dispatcher's attention pick and with the portable kernel forced (the
`gpu` fixture); the append kernel is the same in both.
"""
from __future__ import annotations

import numpy as np
import pytest

from fmha_bench import dtypes
from fmha_bench.problem import Problem
from fmha_bench.reference import append_kv
from test_gpu_kernels import _check, gpu  # noqa: F401 (fixture)

pytestmark = pytest.mark.gpu


def _appendkv(**fields) -> Problem:
    defaults = dict(family="appendkv", batch=3, seqlen_q=5, seqlen_k=300, nhead_q=8, nhead_k=2, hdim_q=128,
                    page_size=16, mask="b", lse=True, rotary_dim=128)
    return Problem(**{**defaults, **fields})


def _assert_cache_matches_reference(gpu, problem, launches=1):
    """After `launches` launches, every slot of both caches equals the reference's updated cache
    (new tokens bit for bit, every other slot unchanged, NaN-poisoned free slots included), and
    the rotated queries equal the reference's."""
    from fmha_bench.session import PointSession
    backend, device, provider = gpu
    reason = provider.supports(problem, device)
    if reason:
        pytest.skip(reason)
    inputs = problem.make_inputs(0)
    session = PointSession(backend, device, problem, inputs)
    dt = problem.dt
    try:
        prepared = provider.prepare(problem, session)
        for _ in range(launches):
            prepared.launch()
        backend.synchronize()
        got = {name: backend.download(session.buffers[name], getattr(inputs, name).shape, dt.storage)
               for name in ("k", "v")}
        got["q"] = backend.download(session.workspaces["q_rotated"], inputs.q.shape, dt.storage)
    finally:
        session.close()
    k_ref, v_ref, q_ref = append_kv(problem, inputs)
    for name, ref in (("k", k_ref), ("v", v_ref), ("q", q_ref)):
        np.testing.assert_array_equal(dtypes.decode(got[name], dt), ref, err_msg=name)


# ----------------------------------------------------------------------------- the cache after the append
@pytest.mark.parametrize("style", ["interleaved", "half"])
@pytest.mark.parametrize("rotary_dim", [128, 64, 6, 0])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cache_holds_the_rotated_new_tokens_bit_for_bit(gpu, style, rotary_dim, dtype):
    _assert_cache_matches_reference(gpu, _appendkv(rotary_style=style, rotary_dim=rotary_dim, dtype=dtype,
                                                   seqlen_q=40, seqlen_k=1000))


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("table", ["vllm", "sglang"])
@pytest.mark.parametrize("kv_layout", ["hnd", "nhd"])
def test_every_page_table_and_layout_gets_the_new_tokens_varlen_with_an_empty_append(gpu, page_size, table,
                                                                                      kv_layout):
    _assert_cache_matches_reference(gpu, _appendkv(mode="group", batch=4, seqlen_q=[3, 0, 16, 1],
                                                   seqlen_k=[3, 70, 300, 18], page_size=page_size, page_table=table,
                                                   kv_layout=kv_layout, rotary_dim=64, rotary_style="half"))


def test_headwise_tables_get_the_new_tokens_and_keep_recycled_blocks(gpu):
    _assert_cache_matches_reference(gpu, _appendkv(batch=2, seqlen_q=4, seqlen_k=700, nhead_q=8, nhead_k=4,
                                                   page_table="headwise", swa_heads=(1, 3), swa_window=64,
                                                   swa_sink=16, rotary_dim=64))


def test_repeated_launches_leave_the_cache_as_the_first_one_did(gpu):
    _assert_cache_matches_reference(gpu, _appendkv(rotary_style="half", dtype="bf16"), launches=5)


def test_unequal_head_dims(gpu):
    _assert_cache_matches_reference(gpu, _appendkv(hdim_q=192, hdim_v=128, rotary_dim=64, rotary_style="half"))


# ----------------------------------------------------------------------------- attention over the updated cache
@pytest.mark.parametrize("problem", [
    _appendkv(batch=4, seqlen_q=seqlen_q, seqlen_k=1000, nhead_q=32, nhead_k=8, rotary_style=style, dtype=dtype)
    for seqlen_q, style, dtype in [(1, "interleaved", "fp16"), (4, "half", "bf16"), (8, "interleaved", "bf16")]
] + [
    _appendkv(batch=1, seqlen_q=512, seqlen_k=4096, nhead_q=32, nhead_k=8, rotary_style="half", page_size=64),
    _appendkv(mode="group", batch=4, seqlen_q=[3, 0, 130, 1], seqlen_k=[3, 70, 300, 18], page_table="sglang",
              page_size=1, kv_layout="nhd", rotary_dim=64, sink=True),
    _appendkv(batch=2, seqlen_q=4, seqlen_k=700, nhead_q=8, nhead_k=4, page_table="headwise", swa_heads=(1, 3),
              swa_window=64, swa_sink=16, rotary_dim=64, rotary_style="half"),
    _appendkv(hdim_q=64, rotary_dim=32, mask="0"),
], ids=lambda p: f"{p.name()} {p.kv_layout}")
def test_attention_over_the_appended_cache_matches_reference(gpu, problem):
    row = _check(gpu, problem)
    # the attention: a forward instance over the paged cache, or the whole-page decode kernel's
    assert row.kernel.startswith("append_kv_") and (" + fwd_paged_" in row.kernel or " + decode_" in row.kernel), \
        row.kernel
