"""Family mixed on the CPU emulation against the NumPy reference: the persistent forward kernels
(FMHA_PERSISTENT: kernel_src/fmha_fwd_mma.hip and kernel_src/fmha_fwd_wgmma.hip, each test on
both, the wgmma one also warp-specialised) walking a work plan, then fmha_merge_items
(kernel_src/fmha_combine.hip) merging the rows whose keys the plan split; and the provider's
persistent and `separate` paths end to end on an emulated sm_80 device. The warp-specialised
kernel also runs with its copies landing when issued (FMHA_EMU_EARLY_COPIES): its producer runs
into the next item while the consumers finish one, and a stage or Q it refilled before the
consumers released it would show there.

Plans with a forced short chunk split decode and prefill rows over several items, so both the
partial path (sink left to the merge) and the final-output path run in one launch. Outputs and
partial slots start as NaN and paged caches get a NaN page in front of the pool, as in
test_mma_emulated.py.
"""
from __future__ import annotations

import ctypes
import dataclasses

import numpy as np
import pytest
from emulated_backend import EmulatedBackend, emulated_device
from test_kernels_emulated import CXX, DRIVER, host_buffers_with_nan_page, kernel_libraries, run_emulated
from test_mma_emulated import ONE_WARP, SMALL, Emulated, _assert_matches

from fmha_bench import dtypes
from fmha_bench.backends.base import DeviceInfo
from fmha_bench.dispatch import candidates
from fmha_bench.kernel_params import FmhaParams
from fmha_bench.kernels import MERGE_ITEMS_ENTRY, merge_items_spec
from fmha_bench.kernels_mixed import (MIXED_ARG_POINTERS, PERSISTENT_ENTRIES, SEPARATE_TAG, merge_launch_config,
                                      mixed_args, mixed_candidates, persistent_shape, plan_workspace_bytes,
                                      separate_parts)
from fmha_bench.kernels_mma import MMA_SOURCE
from fmha_bench.kernels_wgmma import WGMMA_SOURCE
from fmha_bench.mixed_plan import make_plan
from fmha_bench.problem import Problem
from fmha_bench.providers.fmha import FmhaProvider
from fmha_bench.session import PointSession

pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")

MIXED_DRIVER = DRIVER.replace("(const FmhaParams*)", "(const FmhaMixedArgs*)")
MIXED_ARGS_BYTES = ctypes.sizeof(FmhaParams) + 8 * len(MIXED_ARG_POINTERS)


@pytest.fixture(scope="module")
def libraries(tmp_path_factory):
    """entry -> library(spec): the persistent kernels and the merge, compiled for the CPU."""
    tmp = tmp_path_factory.mktemp("mixed_emulated")
    return {PERSISTENT_ENTRIES[MMA_SOURCE]: kernel_libraries(tmp, "p", MIXED_DRIVER, threads="fmha::kThreads"),
            PERSISTENT_ENTRIES[WGMMA_SOURCE]: kernel_libraries(tmp, "w", MIXED_DRIVER, threads="fmha::kThreads"),
            MERGE_ITEMS_ENTRY: kernel_libraries(tmp, "m", MIXED_DRIVER)}


def _with_defines(spec, **defines):
    return dataclasses.replace(spec, defines=tuple({**dict(spec.defines), **defines}.items()))


def _persistent_instance(problem: Problem, source: str, tile: dict, warpgroups: str, warp_specialized: str,
                         stages: str):
    """The problem's persistent candidate of kernel `source` on sm_90a: mma.sync with `tile`'s
    rows, keys and warps; wgmma (`warpgroups` x 64 rows, all threads or a producer warpgroup and
    consumers, `stages` K/V stages) with 64-key tiles, so short plan chunks fit."""
    found = (mixed_candidates if problem.family == "mixed" else candidates)(problem, "sm_90a")
    assert not isinstance(found, str), found
    spec = next(spec for _, spec in found if spec.source == source and spec.entry == PERSISTENT_ENTRIES[source])
    if source == MMA_SOURCE:
        return _with_defines(spec, FMHA_BLOCK_Q=str(tile["block_q"]), FMHA_BLOCK_K=str(tile["block_k"]),
                             FMHA_WARPS=str(tile["warps"]))
    return _with_defines(spec, FMHA_BLOCK_K="64", FMHA_WARPGROUPS=warpgroups, FMHA_WARP_SPECIALIZED=warp_specialized,
                         FMHA_KV_STAGES=stages)


def _emulator(libraries, source: str, warpgroups: str = "2", warp_specialized: str = "0", early_copies: str = "0",
              stages: str = "2"):
    """emulate(problem, num_blocks, chunk_keys=None, tile=SMALL) -> (Emulated, plan): the persistent
    launch of kernel `source` over `num_blocks` blocks with the plan make_plan gives, then the merge."""

    def run(problem: Problem, num_blocks: int, chunk_keys: int | None = None, tile: dict = SMALL):
        spec = _with_defines(_persistent_instance(problem, source, tile, warpgroups, warp_specialized, stages),
                             FMHA_EMU_EARLY_COPIES=early_copies)
        shape = persistent_shape(spec)
        if chunk_keys is not None:   # a whole number of the kernel's key tiles
            chunk_keys = -(-chunk_keys // shape.block_k) * shape.block_k
        plan = make_plan(problem, shape.block_q, shape.block_k, num_blocks, chunk_keys)
        x = problem.make_inputs(seed=1)
        host, ptrs = host_buffers_with_nan_page(problem, x)
        host["plan"] = plan.words()
        for name, nbytes in plan_workspace_bytes(plan, problem.hdim_v).items():
            if name != "plan":
                host[name] = np.full(max(nbytes // 4, 1), np.nan, np.float32)
        ptrs.update((name, host[name].ctypes.data) for name in MIXED_ARG_POINTERS)
        args = mixed_args(problem, x, ptrs)
        run_emulated(libraries[spec.entry](spec), args, (num_blocks, 1, 1))
        run_emulated(libraries[MERGE_ITEMS_ENTRY](merge_items_spec(problem, "sm_90a")), args,
                     merge_launch_config(num_blocks)[0])
        return Emulated(dtypes.decode(host["o"], problem.out_dt), host["lse"], x), plan

    return run


@pytest.fixture(scope="module", params=[(MMA_SOURCE, "2"), (WGMMA_SOURCE, "2"), (WGMMA_SOURCE, "1"),
                                        (WGMMA_SOURCE, "2", "1"), (WGMMA_SOURCE, "2", "1", "1"),
                                        (WGMMA_SOURCE, "2", "1", "1", "3")],
                ids=["mma", "wgmma", "wgmma-1wg", "wgmma-ws", "wgmma-ws-early-copies", "wgmma-ws-3-stages"])
def emulate(libraries, request):
    return _emulator(libraries, *request.param)


@pytest.fixture(scope="module")
def emulate_mma(libraries):
    return _emulator(libraries, MMA_SOURCE)


def mixed(**fields) -> Problem:
    """A prefill request, two decode-like ones (1 and 3 tokens) and an empty one, GQA 4:2."""
    base = dict(family="mixed", mode="group", batch=4, seqlen_q=[40, 1, 3, 0], seqlen_k=[60, 300, 130, 20],
                nhead_q=4, nhead_k=2, hdim_q=64, mask="b", page_size=16, lse=True)
    return Problem(**{**base, **fields})


# ----------------------------------------------------------------------------- the kernels
@pytest.mark.parametrize("problem,chunk_keys", [
    (mixed(), 64),
    (mixed(page_table="sglang", page_size=5, kv_layout="nhd", dtype="bf16", sink=True), 64),
    (mixed(mask="b:9,0,2", sink=True, soft_cap=5.0), 64),
    (mixed(mask="t:3,5", lse=False, sink=True, seqlen_q=[100, 1, 3, 0], seqlen_k=[120, 300, 130, 20]), 32),
    (mixed(mask="t:8,-1,2", dtype="bf16"), 64),
    (mixed(mask="0", seqlen_q=[2, 30, 1, 1], seqlen_k=[250, 20, 90, 0], nhead_q=8, nhead_k=1, hdim_q=128), 64),
], ids=lambda x: x.name() if isinstance(x, Problem) else f"chunk{x}")
def test_split_and_unsplit_rows_match_reference(emulate, problem, chunk_keys):
    run, plan = emulate(problem, num_blocks=5, chunk_keys=chunk_keys)
    assert plan.merges and any(item.slot < 0 for item in plan.items()), "want split and unsplit rows"
    _assert_matches(problem, run)


def test_a_plan_without_splits_writes_every_row_itself(emulate):
    p = mixed(sink=True)
    run, plan = emulate(p, num_blocks=3)
    assert not plan.merges
    _assert_matches(p, run)


@pytest.mark.parametrize("layout", ["hnd", "nhd"])
def test_headwise_sliding_window_heads_split_and_never_read_recycled_blocks(emulate, layout):
    p = mixed(page_table="headwise", page_size=7, kv_layout=layout, seqlen_q=[1, 12, 2, 1],
              seqlen_k=[150, 140, 90, 30], nhead_q=8, nhead_k=4, swa_heads=(1, 2), swa_window=20, swa_sink=3)
    run, plan = emulate(p, num_blocks=4, chunk_keys=32)
    assert (run.inputs.tables.block_tables_headwise == -1).any(), "no recycled block to step over"
    assert plan.merges
    _assert_matches(p, run)


def test_two_row_tiles_per_warp_and_more_key_rows_than_threads(emulate_mma):
    p = mixed(seqlen_q=[70, 1, 5, 2], seqlen_k=[200, 150, 64, 9], page_size=5, dtype="bf16", sink=True)
    run, plan = emulate_mma(p, num_blocks=6, chunk_keys=64, tile=ONE_WARP)
    assert plan.merges
    _assert_matches(p, run)


def test_more_blocks_than_items_leaves_blocks_idle(emulate):
    p = mixed(seqlen_q=[1, 1, 2, 1], seqlen_k=[40, 7, 1, 0])
    run, plan = emulate(p, num_blocks=16)
    assert min(len(block) for block in plan.blocks) == 0
    _assert_matches(p, run)


# ----------------------------------------------------------------------------- prefill points
@pytest.mark.parametrize("problem", [
    Problem(batch=2, seqlen_q=150, seqlen_k=150, nhead_q=4, nhead_k=2, hdim_q=64, mask="b", lse=True),
    Problem(mode="group", batch=3, seqlen_q=[70, 0, 130], seqlen_k=[90, 5, 130], nhead_q=2, nhead_k=1, hdim_q=64,
            mask="t:20,0", sink=True, lse=True),
    Problem(family="paged", mode="group", batch=2, seqlen_q=[40, 100], seqlen_k=[200, 100], nhead_q=4, nhead_k=2,
            hdim_q=64, mask="b", page_size=16, lse=True),
], ids=lambda p: p.name())
@pytest.mark.parametrize("early_copies", ["0", "1"], ids=["late-copies", "early-copies"])
@pytest.mark.parametrize("stages", ["2", "3"], ids=["2-stages", "3-stages"])
def test_prefill_points_through_the_warp_specialised_persistent_kernel(libraries, problem, early_copies, stages):
    """Family fwd / paged prefill (batch mode reads its lengths from FmhaParams' scalars): a
    block's items follow each other through one producer-consumer pipeline (stage n % stages,
    phase n / stages over the block's tiles)."""
    run, plan = _emulator(libraries, WGMMA_SOURCE, "2", "1", early_copies, stages)(problem, num_blocks=3)
    assert max(len(block) for block in plan.blocks) > 1
    _assert_matches(problem, run)


# ----------------------------------------------------------------------------- the provider
class EmulatedSm80(EmulatedBackend):
    """The emulated device as an sm_80 of two SMs: the dispatcher picks the mma kernels (no wgmma,
    which the emulation cannot run), whose block size is 32 x FMHA_WARPS and whose mixed entries
    take FmhaMixedArgs."""

    def __init__(self, launch_kernel):
        super().__init__(None)
        self._launch_kernel = launch_kernel

    def device_info(self):
        return DeviceInfo("emulated", 0, "CPU emulation", "sm_80", "sm_80", 2, 1 << 20, 1 << 30)

    def launch(self, function, grid, block, shared_bytes, args, stream=None):
        mixed_entry = function.entry in (PERSISTENT_ENTRIES[MMA_SOURCE], MERGE_ITEMS_ENTRY)
        size = MIXED_ARGS_BYTES if mixed_entry else ctypes.sizeof(FmhaParams)
        self._launch_kernel(function, ctypes.string_at(ctypes.c_void_p.from_address(args.address).value, size), grid)


@pytest.fixture(scope="module")
def device(libraries, tmp_path_factory):
    """(backend, device info) of an emulated sm_80 that runs any mma entry on the CPU."""
    tmp = tmp_path_factory.mktemp("provider")
    plain = kernel_libraries(tmp, "f", threads="fmha::kThreads")

    def launch_kernel(spec, params, grid):
        library = libraries.get(spec.entry, plain)
        run_emulated(library(spec), params, grid)

    backend = EmulatedSm80(launch_kernel)
    return backend, backend.device_info()


def _provider_run(device, problem, tag, monkeypatch, tmp_path):
    backend, info = device
    emulated_device(None, monkeypatch, tmp_path)   # building records specs; loading hands them back
    provider = FmhaProvider(tag)
    assert provider.supports(problem, info) is None
    session = PointSession(backend, info, problem, problem.make_inputs(1))
    prepared = provider.prepare(problem, session)
    session.poison_outputs()
    prepared.launch()
    out = session.download_outputs()
    session.close()
    return Emulated(out["o"], out["lse"], session.inputs), prepared


SERVING = Problem(family="mixed", mode="group", batch=3, seqlen_q=[1, 2, 20], seqlen_k=[300, 80, 50], nhead_q=8,
                  nhead_k=2, hdim_q=128, dtype="bf16", mask="b", page_size=16, lse=True, sink=True)


def test_provider_persistent_launch_matches_reference_and_notes_its_plan(device, monkeypatch, tmp_path):
    run, prepared = _provider_run(device, SERVING, None, monkeypatch, tmp_path)
    _assert_matches(SERVING, run)
    assert "_persistent_" in prepared.kernel and "merge_items_" in prepared.kernel
    assert prepared.notes[0].startswith("persistent plan: 2 blocks")   # 2 SMs; two 84 KB blocks do not fit one


def test_provider_separate_launches_match_reference(device, monkeypatch, tmp_path):
    run, prepared = _provider_run(device, SERVING, SEPARATE_TAG, monkeypatch, tmp_path)
    _assert_matches(SERVING, run)
    parts = separate_parts(SERVING, "sm_80")
    assert [(part.first, part.end) for part in parts] == [(0, 2), (2, 3)]   # the decodes, then the prefill
    assert prepared.notes == [f"separate: requests {part.first}..{part.end - 1} via {part.tag}" for part in parts]
