"""The fmha provider's launch plan and the point session's workspaces, on a recording fake backend
(no GPU, no compiler): what is allocated when, and what one timed launch enqueues."""
from __future__ import annotations

import ctypes

import pytest
from backend_stubs import StubBackend

from fmha_bench import build
from fmha_bench.backends.base import DeviceBuffer, DeviceInfo
from fmha_bench.build.cache import BuildResult
from fmha_bench.kernel_params import FmhaParams, unpack
from fmha_bench.dispatch import candidates, launch_config
from fmha_bench.kernels import combine_launch_config, select_combine, split_workspace_bytes
from fmha_bench.problem import Problem
from fmha_bench.providers.fmha import FmhaProvider
from fmha_bench.session import POISON_BYTE, PointSession


class RecordingBackend(StubBackend):
    """Hands out fake addresses and logs every call as a tuple."""
    name = "fake"

    def __init__(self, sm_count=132):
        self.calls, self.sm_count, self._next = [], sm_count, 0x10000

    def device_info(self):
        return DeviceInfo("fake", 0, "fake GPU", "sm_90a", "sm_90", self.sm_count, 1 << 20, 1 << 30)

    def alloc(self, nbytes):
        self._next += 1 << 20
        self.calls.append(("alloc", nbytes, self._next))
        return DeviceBuffer(self._next, nbytes)

    def free(self, buf):
        self.calls.append(("free", buf.ptr))

    def copy_to_device(self, buf, host):
        pass

    def copy_to_host(self, buf, host):
        pass

    def memset(self, buf, byte, stream=None):
        self.calls.append(("memset", buf.ptr, byte))

    def launch(self, function, grid, block, shared_bytes, args, stream=None):
        self.calls.append(("launch", function, grid, block, shared_bytes, args, stream))


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """Instances 'build' into an empty file, named without a compiler."""
    image = tmp_path / "image.co"
    image.write_bytes(b"code")

    def fake_build_all(specs, jobs=None):
        return {f"{s.label}_{s.arch}-{len(s.label):08x}": BuildResult(s, f"{s.label}_{s.arch}-{len(s.label):08x}",
                                                                       "fake", "built", 0.0, path=image)
                for s in specs}
    monkeypatch.setattr(build, "build_all", fake_build_all)
    monkeypatch.setattr(build, "instance_name", lambda s: f"{s.label}_{s.arch}-{len(s.label):08x}")


def _prepared(problem, sm_count=132):
    backend = RecordingBackend(sm_count)
    session = PointSession(backend, backend.device_info(), problem, problem.make_inputs(0))
    backend.calls.clear()  # the inputs' uploads
    return backend, session, FmhaProvider().prepare(problem, session)


SPLIT = Problem(family="paged", batch=2, seqlen_q=1, seqlen_k=600, nhead_q=8, nhead_k=2, hdim_q=64, mask="b",
                page_size=16, lse=True, num_splits=3)


def test_split_prepare_allocates_poisoned_workspaces_once_and_launch_only_enqueues(no_compiler):
    backend, _, prepared = _prepared(SPLIT)
    sizes = split_workspace_bytes(SPLIT, 3)
    allocs = [c for c in backend.calls if c[0] == "alloc"]
    assert sorted(c[1] for c in allocs) == sorted(sizes.values())
    assert {("memset", c[2], POISON_BYTE) for c in allocs} <= set(backend.calls)
    backend.calls.clear()
    prepared.launch()
    prepared.launch()
    assert [c[0] for c in backend.calls] == ["launch"] * 4  # no allocation, copy or memset in the timed work


def test_split_launch_runs_the_forward_grid_then_the_combine_on_one_stream_with_one_argument(no_compiler):
    backend, session, prepared = _prepared(SPLIT)
    backend.calls.clear()
    prepared.launch()
    (_, fwd, fwd_grid, _, _, fwd_args, fwd_stream), (_, comb, comb_grid, _, _, comb_args, comb_stream) = backend.calls
    assert (fwd, comb) == ("fmha_fwd_wgmma", "fmha_combine") and fwd_stream == comb_stream   # wgmma splits too
    assert fwd_grid == launch_config(candidates(SPLIT, "sm_90a")[0][1], SPLIT, 3)[0]
    assert comb_grid == combine_launch_config(select_combine(SPLIT, "sm_90a"), SPLIT)[0]
    assert fwd_args is comb_args
    args = unpack(ctypes.string_at(ctypes.c_void_p.from_address(fwd_args.address).value, ctypes.sizeof(FmhaParams)))
    assert args["num_splits"] == 3
    assert {args["o_acc"], args["lse_acc"]} == {buf.ptr for buf in session.workspaces.values()}
    assert " split3 + combine_" in prepared.kernel and prepared.notes == ["num_splits 3 (given)"]


def test_auto_split_count_comes_from_the_device_sm_count(no_compiler):
    auto = Problem(**{**SPLIT.all_fields(), "num_splits": 0})
    backend, _, prepared = _prepared(auto, sm_count=132)   # 2 blocks: splits as 600 keys allow (2)
    assert " split2 + " in prepared.kernel and prepared.notes == ["num_splits 2 (auto)"]
    backend, _, prepared = _prepared(auto, sm_count=2)     # the grid fills 2 SMs: no split, no combine
    assert " split" not in prepared.kernel and prepared.notes == ["num_splits 1 (auto)"]
    backend.calls.clear()
    prepared.launch()
    assert [c[1] for c in backend.calls] == ["fmha_fwd_wgmma"]


def test_workspace_is_reused_grown_on_demand_and_freed_on_close():
    backend = RecordingBackend()
    problem = Problem(hdim_q=64)
    session = PointSession(backend, backend.device_info(), problem, problem.make_inputs(0))
    first = session.workspace("partials", 100)
    assert session.workspace("partials", 64) is first
    grown = session.workspace("partials", 200)
    assert grown.nbytes == 200 and ("free", first.ptr) in backend.calls
    inputs = [buf.ptr for buf in session.buffers.values()]
    session.close()
    freed = {c[1] for c in backend.calls if c[0] == "free"}
    assert grown.ptr in freed and set(inputs) <= freed and not session.workspaces


class OptInRecordingBackend(RecordingBackend):
    def set_dynamic_shared(self, function, nbytes):
        self.calls.append(("opt-in", function, nbytes))


def test_a_launch_opts_in_to_its_dynamic_shared_memory_even_under_48_kib(no_compiler):
    """mma q128k64w4 at hdim 64: 48 KiB of tiles plus a 2 KiB static row table when paged."""
    paged = Problem(family="paged", batch=2, seqlen_q=1, seqlen_k=600, nhead_q=8, nhead_k=2, hdim_q=64, mask="b",
                    page_size=16, dtype="bf16")
    backend = OptInRecordingBackend()
    session = PointSession(backend, backend.device_info(), paged, paged.make_inputs(0))
    FmhaProvider("mma-q128k64w4").prepare(paged, session)
    opt_ins = [c for c in backend.calls if c[0] == "opt-in"]
    assert [c[2] for c in opt_ins] == [48 * 1024]


def test_a_provider_named_fmha_tag_runs_only_that_candidate_and_skips_points_without_it():
    from fmha_bench.providers import get_providers
    (provider,) = get_providers(["fmha:wgmma-q128k128ws"])
    device = RecordingBackend(132).device_info()
    prefill = Problem(batch=2, seqlen_q=512, nhead_q=8, hdim_q=128)
    assert provider.name == "fmha:wgmma-q128k128ws" and provider.supports(prefill, device) is None
    assert provider._select(prefill, device.arch)[0][1] == dict(candidates(prefill, device.arch))["wgmma-q128k128ws"]
    fp8 = Problem(batch=2, seqlen_q=512, nhead_q=8, hdim_q=128, dtype="fp8_e4m3fn")   # no warp-specialised fp8 tile
    assert provider.supports(fp8, device) == "wgmma-q128k128ws is not a candidate instance for this point"


def test_a_kernel_pattern_with_wildcards_matches_a_whole_tag_and_a_plain_one_any_part():
    prefill = Problem(batch=2, seqlen_q=512, nhead_q=8, hdim_q=128)
    device = RecordingBackend(132).device_info()
    picks = {}
    for pattern in ("ws", "wgmma-*ws", "wgmma-*", "mma-*", "persistent-"):
        provider = FmhaProvider()
        provider.force_kernel(pattern)
        picks[pattern] = provider._select(prefill, device.arch)[0][0]
    assert picks == {"ws": "persistent-q128k128s3ws", "wgmma-*ws": "wgmma-q128k128ws", "wgmma-*": "wgmma-q128k128ws-tma",
                     "mma-*": "mma-q128k64w8", "persistent-": "persistent-q128k128s3ws"}


def test_a_prefill_point_s_persistent_pick_is_one_launch_over_its_plan_without_a_merge(no_compiler):
    """Family fwd, batch mode: the plan keeps row tiles whole, so nothing is merged; FmhaMixedArgs
    keeps the length scalars batch mode reads."""
    prefill = Problem(batch=2, seqlen_q=1000, seqlen_k=1000, nhead_q=8, nhead_k=2, hdim_q=128, mask="b", lse=True)
    backend, session, prepared = _prepared(prefill)
    assert prepared.kernel.startswith("fwd_dense_fp16_hd128_wgmma_q128k128s3ws_persistent") and "merge" not in prepared.kernel
    assert prepared.notes[0].startswith("persistent plan: 132 blocks") and "0 row tiles split" in prepared.notes[0]
    backend.calls.clear()
    prepared.launch()
    (launch,) = [c for c in backend.calls if c[0] == "launch"]
    assert launch[2:5] == ((132, 1, 1), (384, 1, 1), 230528)   # Q and three K/V stages (kernels_wgmma.shared_bytes)
    values = unpack(ctypes.string_at(ctypes.c_void_p.from_address(launch[5].address).value, ctypes.sizeof(FmhaParams)))
    assert (values["batch"], values["max_seqlen_q"], values["max_seqlen_k"]) == (2, 1000, 1000)


class TensorMapBackend(RecordingBackend):
    """Also encodes tensor maps: records each geometry, returns 128 recognisable bytes."""

    def encode_tensor_map(self, dtype, geometry):
        self.calls.append(("encode", dtype, geometry))
        return bytes([len([c for c in self.calls if c[0] == "encode"])]) * 128


def test_a_tma_pick_launches_params_then_k_and_v_tensor_maps(no_compiler):
    """Dense fp16 8k: the dispatcher's TMA tile gets FmhaParams padded to 64 bytes, then K's and V's
    maps (the backend's bytes, in that order), with K's geometry from the [B, Hk, S, D] layout."""
    problem = Problem(batch=2, seqlen_q=8192, seqlen_k=8192, nhead_q=16, nhead_k=4, hdim_q=128)
    backend = TensorMapBackend()
    session = PointSession(backend, backend.device_info(), problem, problem.make_inputs(0))
    prepared = FmhaProvider().prepare(problem, session)
    assert "wgmma_q128k128ws_tma" in prepared.kernel, prepared.kernel
    encodes = [c for c in backend.calls if c[0] == "encode"]
    assert [c[1] for c in encodes] == ["fp16", "fp16"]
    k = encodes[0][2]
    assert k.dims == (128, 8192, 4, 2) and k.box == (64, 128, 1, 1)
    assert k.strides == (256, 8192 * 256, 4 * 8192 * 256)
    backend.calls.clear()
    prepared.launch()
    (_, _, _, _, _, args, _), = backend.calls
    blob = args._blob.raw
    size = ctypes.sizeof(FmhaParams)
    padded = size + -size % 64
    assert len(blob) == padded + 256 and unpack(blob[:size])["k"] == k.address
    assert blob[padded:padded + 128] == b"\x01" * 128 and blob[padded + 128:] == b"\x02" * 128


def _launch_blobs(backend, prepared) -> list:
    backend.calls.clear()
    prepared.launch()
    return [call[5]._blob.raw for call in backend.calls if call[0] == "launch"]


def _maps_follow_params(blob: bytes, k_address: int) -> bool:
    """The blob is FmhaParams (K at k_address) padded to 64 bytes, then two 128-byte tensor maps."""
    size = ctypes.sizeof(FmhaParams)
    return len(blob) == size + -size % 64 + 256 and unpack(blob[:size])["k"] == k_address


def test_separate_parts_on_a_tma_tile_launch_with_the_cache_s_tensor_maps(no_compiler):
    """Mixed b2, page 16: both parts take the TMA tile; each launch carries its part's FmhaParams and
    the maps of the page pool (K's geometry: hdim, page rows, KV heads, pages)."""
    problem = Problem(family="mixed", mode="group", batch=2, seqlen_q=[2048, 1], seqlen_k=[2048, 700], nhead_q=32,
                      nhead_k=8, hdim_q=128, dtype="bf16", mask="b", page_size=16)
    backend = TensorMapBackend()
    session = PointSession(backend, backend.device_info(), problem, problem.make_inputs(0))
    prepared = FmhaProvider("separate").prepare(problem, session)
    assert prepared.kernel.count("tma") == 2, prepared.kernel
    k = [c for c in backend.calls if c[0] == "encode"][0][2]
    assert k.dims == (128, 16, 8, session.inputs.k.shape[0])
    blobs = _launch_blobs(backend, prepared)
    assert len(blobs) == 2 and all(_maps_follow_params(blob, k.address) for blob in blobs)
    assert [unpack(blob[:ctypes.sizeof(FmhaParams)])["batch"] for blob in blobs] == [1, 1]


def test_the_append_and_its_tma_attention_share_one_argument_with_the_maps(no_compiler):
    """appendkv page 16: the attention after the append takes the TMA tile; the append reads the
    FmhaParams the shared argument starts with."""
    problem = Problem(family="appendkv", batch=2, seqlen_q=1024, seqlen_k=4096, nhead_q=32, nhead_k=8, hdim_q=128,
                      mask="b", page_size=16, rotary_dim=128)
    backend = TensorMapBackend()
    session = PointSession(backend, backend.device_info(), problem, problem.make_inputs(0))
    prepared = FmhaProvider().prepare(problem, session)
    assert "tma" in prepared.kernel, prepared.kernel
    k = [c for c in backend.calls if c[0] == "encode"][0][2]
    assert k.dims == (128, 16, 8, session.inputs.k.shape[0])
    backend.calls.clear()
    prepared.launch()
    launches = [call for call in backend.calls if call[0] == "launch"]
    assert len(launches) == 2 and launches[0][5] is launches[1][5]
    assert _maps_follow_params(launches[0][5]._blob.raw, k.address)
