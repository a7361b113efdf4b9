"""Append-KV on the host: which instances run an appendkv point, their launch shapes, the shared
FmhaParams, and the fmha provider's launch plan on a recording fake backend (no GPU)."""
from __future__ import annotations

import ctypes

import pytest

from fmha_bench import dispatch
from fmha_bench.kernel_params import ROTARY_STYLE, FmhaParams, unpack
from fmha_bench.kernels import (APPEND_THREADS, append_launch_config, append_workspace_bytes, attention_problem,
                                kernel_args, select_append, select_combine, select_kernel)
from fmha_bench.problem import Problem
from fmha_bench.providers.fmha import FmhaProvider
from fmha_bench.session import POISON_BYTE, PointSession
from test_fmha_provider import RecordingBackend, TensorMapBackend, no_compiler  # noqa: F401 (fixture)

DECODE = Problem(family="appendkv", batch=4, seqlen_q=1, seqlen_k=300, nhead_q=32, nhead_k=8, hdim_q=128, mask="b",
                 page_size=16, rotary_dim=128, rotary_style="half", dtype="bf16", lse=True)
VARLEN = Problem(family="appendkv", mode="group", batch=3, seqlen_q=[2, 0, 7], seqlen_k=[40, 9, 7], nhead_q=4,
                 nhead_k=2, hdim_q=128, hdim_v=64, page_size=16, page_table="sglang", kv_layout="nhd", mask="b",
                 rotary_dim=64)


# ----------------------------------------------------------------------------- instances and launch shapes
def test_attention_problem_is_the_paged_problem_over_the_appended_cache():
    paged = attention_problem(DECODE)
    assert paged.family == "paged" and paged.rotary_dim == 0
    assert {**paged.all_fields(), "family": "appendkv", "rotary_dim": 128, "rotary_style": "half"} == \
        DECODE.all_fields()


@pytest.mark.parametrize("arch", ["sm_90a", "gfx942", "gfx1100"])
def test_appendkv_runs_its_attention_problems_instance_after_an_append_of_its_dtype_and_dims(arch):
    assert select_kernel(VARLEN, arch) == select_kernel(attention_problem(VARLEN), arch)
    append = select_append(VARLEN, arch)
    assert (append.source, append.entry, append.arch) == ("fmha_append_kv.hip", "fmha_append_kv", arch)
    assert dict(append.defines) == {"FMHA_DTYPE": "fp16", "FMHA_HDIM_Q": "128", "FMHA_HDIM_V": "64",
                                    "FMHA_THREADS": str(APPEND_THREADS)}
    assert select_combine(VARLEN, arch) is None


def test_other_families_and_unsupported_head_dims_get_no_append():
    assert select_append(attention_problem(DECODE), "sm_90a") is None
    odd = Problem(**{**DECODE.fields(), "hdim_q": 96, "rotary_dim": 96})
    assert select_append(odd, "sm_90a") is None and "hdim 96/96 has no instance" in select_kernel(odd, "sm_90a")


def test_an_append_beyond_the_kernels_32_bit_chunk_index_is_refused():
    huge = Problem(**{**DECODE.fields(), "batch": 1, "seqlen_q": 3_000_000, "seqlen_k": 3_000_000})
    assert "32-bit index" in select_kernel(huge, "sm_90a") and select_append(huge, "sm_90a") is None


def test_dispatcher_candidates_of_the_attention_problem_put_the_tensor_core_decode_tiles_first():
    tags = [tag for tag, _ in dispatch.candidates(attention_problem(DECODE), "sm_90a")]
    first_mma = next(tag for tag in tags if tag.startswith("mma-"))
    assert tags[0].startswith("wgmma-") and first_mma.startswith("mma-q64") and tags[-1].startswith("portable-")


def test_append_grid_covers_every_chunk_of_the_longest_sequences_new_tokens():
    chunks = (4 * 128 + 2 * (128 + 64)) // 8   # 16-byte chunks of one token: Q heads, new K, new V
    grid, block, shared = append_launch_config(select_append(VARLEN, "sm_90a"), VARLEN)
    assert grid == (-(-7 * chunks // APPEND_THREADS), 3, 1) and block == (APPEND_THREADS, 1, 1) and shared == 0


def test_rotated_queries_workspace_has_qs_shape_and_dtype():
    assert append_workspace_bytes(VARLEN) == {"q_rotated": 9 * 4 * 128 * 2}


# ----------------------------------------------------------------------------- the shared FmhaParams
NAMES = ("q", "k", "v", "o", "lse", "seqstart_q", "seqlen_k", "kv_indptr", "kv_page_indices", "kv_last_page_len",
         "block_table", "k_new", "v_new", "cache_len", "rope_cos", "rope_sin", "q_rotated")


def _args(problem):
    ptrs = {name: 0x1000 * (i + 1) for i, name in enumerate(NAMES)}
    return ptrs, unpack(kernel_args(problem, problem.make_inputs(0), ptrs))


def test_attention_reads_the_rotated_queries_and_the_append_the_inputs():
    ptrs, args = _args(VARLEN)
    assert args["q"] == ptrs["q_rotated"] and args["q_unrotated"] == ptrs["q"]
    assert all(args[name] == ptrs[name] for name in ("k_new", "v_new", "cache_len", "rope_cos", "rope_sin"))
    assert (args["rotary_dim"], args["rotary_style"]) == (64, ROTARY_STYLE["interleaved"])


def test_new_kv_strides_follow_the_token_layout_of_each_mode():
    _, group = _args(VARLEN)   # [total_new, Hk, D]
    assert [group[f"k_new_{s}_stride"] for s in ("batch", "head", "row")] == [0, 128, 2 * 128]
    assert [group[f"v_new_{s}_stride"] for s in ("batch", "head", "row")] == [0, 64, 2 * 64]
    _, batch = _args(DECODE)   # [B, Hk, S_new, D]
    assert [batch[f"k_new_{s}_stride"] for s in ("batch", "head", "row")] == [8 * 1 * 128, 128, 128]
    assert batch["rotary_style"] == ROTARY_STYLE["half"]


def test_no_rope_needs_no_tables():
    problem = Problem(**{**VARLEN.fields(), "rotary_dim": 0})
    ptrs = {name: 0x1000 * (i + 1) for i, name in enumerate(NAMES) if not name.startswith("rope")}
    args = unpack(kernel_args(problem, problem.make_inputs(0), ptrs))
    assert (args["rope_cos"], args["rope_sin"], args["rotary_dim"]) == (0, 0, 0)


# ----------------------------------------------------------------------------- the provider's launch plan
class CopyRecordingBackend(TensorMapBackend):   # the attention may take a TMA tile
    def copy_to_device(self, buf, host):
        self.calls.append(("copy", buf.ptr, host.tobytes()))


def _prepared(problem, provider=None):
    backend = CopyRecordingBackend()
    session = PointSession(backend, backend.device_info(), problem, problem.make_inputs(0))
    backend.calls.clear()   # the inputs' uploads
    return backend, session, (provider or FmhaProvider()).prepare(problem, session)


def test_prepare_restores_the_cache_as_made_and_poisons_the_rotated_queries(no_compiler):
    backend, session, _ = _prepared(VARLEN)
    copies = {c[1]: c[2] for c in backend.calls if c[0] == "copy"}
    assert copies == {session.buffers[n].ptr: session.host_inputs[n].tobytes() for n in ("k", "v")}
    workspace = session.workspaces["q_rotated"]
    assert ("memset", workspace.ptr, POISON_BYTE) in backend.calls


def test_launch_enqueues_the_append_then_the_attention_on_one_stream_with_one_argument(no_compiler):
    backend, session, prepared = _prepared(DECODE)
    backend.calls.clear()
    prepared.launch()
    prepared.launch()   # the timed loop: launches only
    assert [c[0] for c in backend.calls] == ["launch"] * 4
    (_, append, a_grid, _, _, a_args, a_stream), (_, attend, f_grid, _, _, f_args, f_stream) = backend.calls[:2]
    assert (append, attend) == ("fmha_append_kv", "fmha_fwd_wgmma") and a_stream == f_stream and a_args is f_args
    assert a_grid == append_launch_config(select_append(DECODE, "sm_90a"), DECODE)[0]
    spec = dispatch.candidates(attention_problem(DECODE), "sm_90a")[0][1]
    assert f_grid == dispatch.launch_config(spec, attention_problem(DECODE))[0]
    args = unpack(ctypes.string_at(ctypes.c_void_p.from_address(a_args.address).value, ctypes.sizeof(FmhaParams)))
    assert args["q"] == session.workspaces["q_rotated"].ptr and args["q_unrotated"] == session.buffers["q"].ptr
    assert prepared.kernel.startswith("append_kv_bf16_hd128_") and " + fwd_paged_bf16_hd128" in prepared.kernel
    assert prepared.p_precision == "input"


def test_forcing_the_portable_kernel_keeps_the_append(no_compiler):
    provider = FmhaProvider()
    provider.force_kernel("portable")
    _, _, prepared = _prepared(DECODE, provider)
    assert prepared.kernel.startswith("append_kv_") and " + fwd_paged_bf16_hd128_q" in prepared.kernel
    assert prepared.p_precision == "fp32"


def test_supports_names_the_reason_when_no_instance_runs_the_point():
    provider, device = FmhaProvider(), RecordingBackend().device_info()
    assert provider.supports(DECODE, device) is None
    odd = Problem(**{**DECODE.fields(), "hdim_q": 96, "rotary_dim": 96})
    assert "hdim 96/96" in provider.supports(odd, device)


def test_build_compiles_the_append_beside_the_attention():
    specs = FmhaProvider()._specs(VARLEN, "sm_90a")
    assert [s.entry for s in specs] == ["fmha_fwd_mma", "fmha_append_kv"]
