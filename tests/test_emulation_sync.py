"""The CPU emulation's synchronisation for warp-specialised kernels (kernel_src/fmha_cpu_emulation.h's
scheduler, kernel_src/fmha_async_barrier_emulation.h): mbarriers with parity waits, named barriers,
warp-scoped shuffles and warpgroup-scoped wgmma register operands, no block barrier in the main
loop, and loud errors (deadlock, over-arrival, misuse) instead of hangs.

Small kernels written here run on the emulation; each checks values or orders it observed (a
wrong wait makes a consumer read a stage's stale or next content, a broken ping-pong interleaves
the warpgroups' logs), so a scheduler that lets a thread through too early fails here.
"""
from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest
from test_kernels_emulated import CXX, KERNEL_SRC, _compile

pytestmark = pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")

KERNELS = r"""
#include <cstdio>
#include "fmha_port.h"
#include "fmha_mma_sync.h"
#include "fmha_async_barrier.h"
#include "fmha_wgmma_emulation.h"
using namespace fmha;

template <class Args>
static int launch(void (*kernel)(Args), Args args, unsigned blocks, unsigned threads, char* error, int n)
{
    try {
        fmha_emu::run_grid(kernel, args, blocks, 1u, 1u, threads);
        return 0;
    } catch (const std::exception& e) {
        std::snprintf(error, n, "%s", e.what());
        return 1;
    }
}

/* ---- a producer warpgroup copies tiles into `stages` stages, two consumer warpgroups read each */
constexpr int kTile = 512;   /* ints: 16 bytes per producer thread */

struct PipeArgs {
    const int* src;   /* [blocks][items][iterations][kTile] */
    int* sums;        /* [blocks][items][iterations][256]: each consumer thread's sum of the tile it read */
    int* bad;         /* [blocks][256]: elements (and shuffle partners) a consumer thread found wrong */
    int* totals;      /* [blocks][items]: the block's sum of `sums`, reduced after a block barrier */
    int items, iterations, stages, producer;   /* producer: its warpgroup, 0 or 2 */
};

__global__ void pipeline(PipeArgs p)
{
    alignas(16) __shared__ int stage[3][kTile];
    __shared__ MBarrier full[3], empty[3];
    __shared__ int consumer_sums[256];
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128, b = blockIdx.x;
    const int c = (wg - (wg > p.producer)) * 128 + t;   /* consumer index */
    for (int item = 0; item < p.items; ++item) {
        const int* src = p.src + (b * p.items + item) * p.iterations * kTile;
        int* sums = p.sums + (b * p.items + item) * p.iterations * 256;
        if (threadIdx.x == 0)
            for (int s = 0; s < p.stages; ++s) {
                mbarrier_init(&full[s], 128);    /* the producer threads' copies */
                mbarrier_init(&empty[s], 256);   /* every consumer thread has read the stage */
            }
        fmha_barrier();
        if (wg == p.producer) {
            for (int it = 0; it < p.iterations; ++it) {
                const int s = it % p.stages, round = it / p.stages;
                mbarrier_wait(&empty[s], (round & 1) ^ 1);   /* round 0: a fresh barrier's "previous" phase */
                copy16_async(&stage[s][4 * t], src + it * kTile + 4 * t, true);
                mbarrier_arrive_after_copies(&full[s]);
            }
        } else {
            int total = 0;
            for (int it = 0; it < p.iterations; ++it) {
                const int s = it % p.stages, round = it / p.stages;
                mbarrier_wait(&full[s], round & 1);
                int sum = 0;
                for (int i = 0; i < kTile; ++i) {
                    const int at = (i + 4 * t) % kTile;   /* threads start at different elements */
                    const int v = stage[s][at];
                    p.bad[b * 256 + c] += v != src[it * kTile + at];
                    sum += v;
                    if (i == kTile / 2)   /* a warp exchange mid-read: other threads run meanwhile */
                        p.bad[b * 256 + c] += fmha_shfl_xor((float)c, 1) != (float)(c ^ 1);
                }
                sums[it * 256 + c] = sum;
                total += sum;
                mbarrier_arrive(&empty[s]);
            }
            consumer_sums[c] = total;
        }
        fmha_barrier();
        if (threadIdx.x == 0) {
            int all = 0;
            for (int i = 0; i < 256; ++i) all += consumer_sums[i];
            p.totals[b * p.items + item] = all;
        }
        fmha_barrier();   /* the next item's init and consumer_sums wait for the reduction */
    }
}

extern "C" int run_pipeline(PipeArgs* args, int blocks, char* error, int n)
{
    return launch(pipeline, *args, blocks, 384, error, n);
}

/* ---- two consumer warpgroups alternate their wgmma issue through named barriers (ping-pong) */
struct PingPongArgs {
    int* log;        /* [2 iterations 128]: (warpgroup << 16 | iteration) as each thread starts its turn */
    int* bad;        /* [256]: overlapping turns, wrong wgmma results, wrong shuffles */
    int iterations;
};

__global__ void pingpong(PingPongArgs p)
{
    alignas(1024) __shared__ unsigned short ones[16 * 64];   /* B: 16 keys x 64 columns of fp16 1.0 */
    __shared__ int in_turn[2], logged;
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
    if (threadIdx.x == 0) {
        for (unsigned short& v : ones) v = 0x3C00;
        in_turn[0] = in_turn[1] = logged = 0;
        wgmma_emu::set_shared_base(ones);
    }
    fmha_barrier();
    const int mine = 1 + wg, other = 2 - wg;   /* named barrier ids: warpgroup 0's turn, warpgroup 1's */
    if (wg == 1) named_barrier_arrive(other, 256);   /* warpgroup 0 starts */
    for (int it = 0; it < p.iterations; ++it) {
        named_barrier_sync(mine, 256);
        p.bad[threadIdx.x] += in_turn[1 - wg] != 0;
        ++in_turn[wg];
        p.log[logged++] = wg << 16 | it;
        /* A[row][k] = f(row) in registers, B = 1: D[row][col] = 16 f(row) only through the warpgroup's exchange */
        const auto f = [&](int row) { return (float)((row + 3 * it + 7 * wg) % 11 + 1); };
        const int row = 16 * warp + lane / 4;
        const unsigned lo = mma_fp16::pack(f(row), f(row)), hi = mma_fp16::pack(f(row + 8), f(row + 8));
        const unsigned a[4] = {lo, hi, lo, hi};
        float d[4];
        wgmma_emu::WgmmaOps<wg_fp16, 8>::rs(d, a, nmajor_descriptor<16>(ones, 0), 0);
        for (int i = 0; i < 4; ++i) {
            int r, col;
            wgmma_emu::d_position(i, r, col);
            p.bad[threadIdx.x] += d[i] != 16 * f(r);
        }
        --in_turn[wg];
        named_barrier_arrive(other, 256);
        float x = (float)lane;   /* the "softmax", while the other warpgroup issues */
        for (int m = 1; m < 32; m *= 2) x += fmha_shfl_xor(x, m);
        p.bad[threadIdx.x] += x != 496.f;
    }
}

extern "C" int run_pingpong(PingPongArgs* args, char* error, int n)
{
    return launch(pingpong, *args, 1, 256, error, n);
}

/* ---- warp shuffles in one warpgroup while the other waits on an mbarrier */
struct ShuffleArgs {
    float* out;   /* [256] */
};

__global__ void shuffles(ShuffleArgs p)
{
    __shared__ MBarrier ready;
    __shared__ float results[128];
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
    if (threadIdx.x == 0) mbarrier_init(&ready, 128);
    fmha_barrier();
    if (wg == 0) {
        mbarrier_wait(&ready, 0);
        p.out[t] = results[127 - t];
        return;
    }
    float x = (float)(lane + 1) * (warp + 1);
    for (int round = 0; round <= warp % 2; ++round)   /* warps run different numbers of shuffles */
        for (int m = 1; m < 32; m *= 2) x += fmha_shfl_xor(x, m);
    results[t] = x;
    mbarrier_arrive(&ready);
    p.out[128 + t] = fmha_shfl_xor(x + lane, lane % 2 ? 1 : 2);   /* lanes of one warp, two masks */
}

extern "C" int run_shuffles(ShuffleArgs* args, char* error, int n)
{
    return launch(shuffles, *args, 1, 256, error, n);
}

/* ---- a phase / generation completes at exactly its count: the arrival before the last wakes the
   last arriver, which is queued behind a waiter released one arrival early */
struct CountArgs {
    int* seen;   /* [33]: the arrivals made when the mbarrier waiter, then each named barrier syncer, resumed */
};

__global__ void exact_counts(CountArgs p)
{
    __shared__ MBarrier bar, go, go_named;
    __shared__ int made;
    if (threadIdx.x == 0) {
        mbarrier_init(&bar, 3);
        mbarrier_init(&go, 1);
        mbarrier_init(&go_named, 1);
        made = 0;
    }
    fmha_barrier();
    switch (threadIdx.x) {
    case 0: mbarrier_wait(&bar, 0); p.seen[0] = made; break;
    case 1: mbarrier_wait(&go, 0); ++made; mbarrier_arrive(&bar); break;
    case 2: ++made; mbarrier_arrive(&bar); break;
    case 3: ++made; mbarrier_arrive(&bar); mbarrier_arrive(&go); break;
    }
    fmha_barrier();
    if (threadIdx.x == 0) made = 0;
    fmha_barrier();
    /* named barrier 4 of 96 threads: warp 0 syncs, threads 33..95 arrive, 95 wakes 32, which arrives last */
    if (threadIdx.x < 32) {
        ++made;
        named_barrier_sync(4, 96);
        p.seen[1 + threadIdx.x] = made;
    } else if (threadIdx.x == 32) {
        mbarrier_wait(&go_named, 0);
        ++made;
        named_barrier_arrive(4, 96);
    } else if (threadIdx.x < 96) {
        ++made;
        named_barrier_arrive(4, 96);
        if (threadIdx.x == 95) mbarrier_arrive(&go_named);
    }
}

extern "C" int run_exact_counts(CountArgs* args, char* error, int n)
{
    return launch(exact_counts, *args, 1, 128, error, n);
}

/* ---- waits that never complete: the scheduler reports a deadlock */
struct ModeArgs {
    int mode;
};

__global__ void deadlocks(ModeArgs p)
{
    __shared__ MBarrier full, empty;
    const int wg = threadIdx.x / 128;
    if (threadIdx.x == 0) {
        mbarrier_init(&full, 128);
        mbarrier_init(&empty, 128);
    }
    fmha_barrier();
    switch (p.mode) {
    case 0:   /* warpgroup 0 exits without arriving */
        if (wg == 1) mbarrier_wait(&full, 0);
        break;
    case 1:   /* the producer waits for its first "empty" with parity 0: both sides wait */
        if (wg == 0) {
            mbarrier_wait(&empty, 0);
            mbarrier_arrive(&full);
        } else {
            mbarrier_wait(&full, 0);
            mbarrier_arrive(&empty);
        }
        break;
    case 2:   /* a named barrier for 256 threads that only warpgroup 0 reaches */
        if (wg == 0) named_barrier_sync(5, 256);
        break;
    case 3:   /* half a warp shuffles while the other half waits on an mbarrier nobody completes */
        if (threadIdx.x < 32) {
            if (threadIdx.x < 16) (void)fmha_shfl_xor(1.f, 1);
            else mbarrier_wait(&full, 0);
        }
        break;
    }
}

extern "C" int run_deadlock(int mode, char* error, int n)
{
    return launch(deadlocks, ModeArgs{mode}, 1, 256, error, n);
}

/* ---- misuse */
__global__ void misuse(ModeArgs p)
{
    __shared__ MBarrier bar, never_initialised;
    const int wg = threadIdx.x / 128;
    if (threadIdx.x == 0 && (p.mode != 3 || blockIdx.x == 0)) mbarrier_init(&bar, p.mode == 8 ? 128 : 1);
    fmha_barrier();
    switch (p.mode) {
    case 0:   /* thread 0 waits for phase 0; thread 32 arrives twice: phase 1 completes before it resumes */
        if (threadIdx.x == 0) mbarrier_wait(&bar, 0);
        if (threadIdx.x == 32) {
            mbarrier_arrive(&bar);
            mbarrier_arrive(&bar);
        }
        break;
    case 1:
        if (threadIdx.x == 5) mbarrier_arrive(&never_initialised);
        break;
    case 2:
        if (threadIdx.x == 5) mbarrier_wait(&never_initialised, 0);
        break;
    case 3:   /* block 1 uses the barrier block 0 initialised */
        if (threadIdx.x == 0) mbarrier_arrive(&bar);
        break;
    case 4:   /* one generation, two counts */
        if (wg == 0) named_barrier_sync(3, 256);
        else named_barrier_arrive(3, 128);
        break;
    case 5:
        named_barrier_sync(0, 256);
        break;
    case 6:
        named_barrier_sync(2, 100);
        break;
    case 7:
        mbarrier_init(&never_initialised, 0);
        break;
    case 8:   /* an "empty" barrier counted for one consumer warpgroup: two arrive while thread 0 waits */
        if (threadIdx.x < 32) {
            if (threadIdx.x == 0) mbarrier_wait(&bar, 0);
        } else {
            mbarrier_arrive(&bar);
        }
        break;
    }
}

extern "C" int run_misuse(int mode, int blocks, char* error, int n)
{
    return launch(misuse, ModeArgs{mode}, blocks, mode == 8 ? 288 : 256, error, n);
}

/* ---- block barriers and warp collectives under divergent control flow */
__global__ void divergence(ModeArgs p)
{
    const int wg = threadIdx.x / 128, lane = threadIdx.x % 32;
    switch (p.mode) {
    case 0:   /* warpgroup 0 waits at a block barrier, warpgroup 1 exits */
        if (wg == 0) fmha_barrier();
        break;
    case 1:   /* warpgroup 0 exits, then warpgroup 1 reaches a block barrier */
        if (wg == 1) fmha_barrier();
        break;
    case 2:   /* lane 0 exits, the rest of its warp shuffles */
        if (threadIdx.x < 32 && lane != 0) (void)fmha_shfl_xor(1.f, 2);
        break;
    case 3:   /* half a warp shuffles, the other half meets it at sync_warp */
        if (threadIdx.x < 32) {
            if (lane < 16) (void)fmha_shfl_xor(1.f, 1);
            else sync_warp();
        }
        break;
    }
}

extern "C" int run_divergence(int mode, char* error, int n)
{
    return launch(divergence, ModeArgs{mode}, 1, 256, error, n);
}
"""


class PipeArgs(ctypes.Structure):
    _fields_ = [("src", ctypes.c_void_p), ("sums", ctypes.c_void_p), ("bad", ctypes.c_void_p),
                ("totals", ctypes.c_void_p), ("items", ctypes.c_int), ("iterations", ctypes.c_int),
                ("stages", ctypes.c_int), ("producer", ctypes.c_int)]


class PingPongArgs(ctypes.Structure):
    _fields_ = [("log", ctypes.c_void_p), ("bad", ctypes.c_void_p), ("iterations", ctypes.c_int)]


class ShuffleArgs(ctypes.Structure):
    _fields_ = [("out", ctypes.c_void_p)]


class CountArgs(ctypes.Structure):
    _fields_ = [("seen", ctypes.c_void_p)]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("emulation_sync"), "sync", KERNELS, [])


def _error(call, *args) -> str | None:
    """The kernel's error message, None when it ran through."""
    error = ctypes.create_string_buffer(4096)
    rc = call(*args, error, len(error))
    return error.value.decode() if rc else None


def _pipeline(lib, blocks: int, items: int, iterations: int, stages: int, producer: int, seed: int):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, size=(blocks, items, iterations, 512), dtype=np.int32)
    sums = np.full((blocks, items, iterations, 256), -1, np.int32)
    bad = np.zeros((blocks, 256), np.int32)
    totals = np.zeros((blocks, items), np.int32)
    args = PipeArgs(src.ctypes.data, sums.ctypes.data, bad.ctypes.data, totals.ctypes.data, items, iterations,
                    stages, producer)
    assert _error(lib.run_pipeline, ctypes.byref(args), blocks) is None
    expected = src.astype(np.int64).sum(axis=-1)
    return expected, sums, bad, totals


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("producer", [0, 2], ids=["producer-first", "producer-last"])
def test_producer_consumer_stages_deliver_each_tiles_current_content(lib, stages, producer):
    """24 tiles through 2-3 stages: every stage's full/empty parity flips 8-12 times; each consumer
    thread compares every element it reads with the tile the producer copied for that iteration."""
    expected, sums, bad, _ = _pipeline(lib, 1, 1, 24, stages, producer, seed=stages * 10 + producer)
    assert np.count_nonzero(bad) == 0, f"{np.count_nonzero(bad)} consumer threads read wrong data"
    np.testing.assert_array_equal(sums, np.broadcast_to(expected[..., None], sums.shape))


def test_block_barriers_between_pipelined_items_over_several_blocks(lib):
    """A persistent-style loop: re-initialised mbarriers per item, block barriers around the
    pipeline and a reduction that reads every consumer's result after one, over 2 blocks."""
    expected, sums, bad, totals = _pipeline(lib, 2, 3, 7, 2, 0, seed=5)
    assert np.count_nonzero(bad) == 0
    np.testing.assert_array_equal(sums, np.broadcast_to(expected[..., None], sums.shape))
    np.testing.assert_array_equal(totals, 256 * expected.sum(axis=-1))


def test_pingpong_alternates_the_warpgroups_strictly(lib):
    iterations = 6
    log = np.full(2 * iterations * 128, -1, np.int32)
    bad = np.zeros(256, np.int32)
    args = PingPongArgs(log.ctypes.data, bad.ctypes.data, iterations)
    assert _error(lib.run_pingpong, ctypes.byref(args)) is None
    turns = [(wg << 16 | it) for it in range(iterations) for wg in (0, 1)]
    np.testing.assert_array_equal(log, np.repeat(turns, 128))   # whole turns, in order 0, 1, 0, 1, ...
    assert np.count_nonzero(bad) == 0, f"{np.count_nonzero(bad)} threads saw an overlap or a wrong result"


def test_warp_shuffles_run_while_another_warpgroup_waits_on_an_mbarrier(lib):
    out = np.full(256, np.nan, np.float32)
    assert _error(lib.run_shuffles, ctypes.byref(ShuffleArgs(out.ctypes.data))) is None
    lane, warp = np.arange(128) % 32, np.arange(128) // 32
    x = (lane + 1.0) * (warp + 1)
    for w in range(4):   # warp w: w % 2 + 1 rounds of a butterfly sum over its 32 lanes
        for _ in range(w % 2 + 1):
            x[warp == w] = x[warp == w].sum()
    partner = np.where(lane % 2 == 1, np.arange(128) ^ 1, np.arange(128) ^ 2)
    np.testing.assert_array_equal(out[128:], x[partner] + lane[partner])
    np.testing.assert_array_equal(out[:128], x[::-1])


def test_phases_and_generations_complete_at_exactly_their_count(lib):
    seen = np.full(33, -1, np.int32)
    assert _error(lib.run_exact_counts, ctypes.byref(CountArgs(seen.ctypes.data))) is None
    assert seen[0] == 3 and np.all(seen[1:] == 96), seen


@pytest.mark.parametrize("mode,parts", [
    (0, ["threads 0-127 exited", "threads 128-255 wait on mbarrier", "for phase 0 (parity 0)", "0 of 128 arrivals"]),
    (1, ["threads 0-127 wait on mbarrier", "threads 128-255 wait on mbarrier"]),
    (2, ["threads 0-127 wait at named barrier 5, 128 of 256 threads arrived", "threads 128-255 exited"]),
    (3, ["threads 0-15 wait at a shuffle of threads 0-31 (16 arrived)", "threads 16-31 wait on mbarrier",
         "threads 32-255 exited"]),
], ids=["mbarrier-never-arrived", "wrong-initial-parity", "named-barrier-short", "half-warp-shuffle"])
def test_a_wait_that_cannot_complete_raises_a_deadlock_naming_the_waits(lib, mode, parts):
    message = _error(lib.run_deadlock, mode)
    assert message is not None and message.startswith("deadlock"), message
    for part in parts:
        assert part in message, message


@pytest.mark.parametrize("mode,blocks,part", [
    (0, 1, "over-arrival"),
    (8, 1, "over-arrival"),
    (1, 1, "mbarrier_arrive by thread 5 on mbarrier"),
    (2, 1, "mbarrier_wait by thread 5 on mbarrier"),
    (3, 2, "mbarrier_arrive by thread 0 on mbarrier"),
    (4, 1, "named barrier 3 count mismatch"),
    (5, 1, "id 0 is not in 1..15"),
    (6, 1, "100 threads is not a positive multiple of 32"),
    (7, 1, "0 arrivals is not in"),
], ids=["over-arrival", "two-consumers-on-one-count", "arrive-uninitialised", "wait-uninitialised",
        "next-block-not-initialised", "named-count-mismatch", "named-id", "named-count", "init-zero"])
def test_misuse_raises(lib, mode, blocks, part):
    message = _error(lib.run_misuse, mode, blocks)
    assert message is not None and part in message, message


def test_the_first_block_initialises_fine(lib):
    """The misuse kernel's block 0 alone is correct: only block 1 misses its init."""
    assert _error(lib.run_misuse, 3, 1) is None


@pytest.mark.parametrize("mode,part", [
    (0, "divergent barrier: thread 128 exited while 128 of threads 0-255 wait at a block barrier"),
    (1, "divergent barrier: thread 128 reaches a block barrier of threads 0-255 after thread 0 exited"),
    (2, "divergent barrier: thread 1 reaches a shuffle of threads 0-31 after thread 0 exited"),
    (3, "mismatched collectives: thread 0 is at a shuffle while thread 31 of threads 0-31 is at a sync_warp"),
], ids=["exit-while-block-waits", "block-barrier-after-exit", "shuffle-after-exit", "shuffle-meets-sync_warp"])
def test_divergent_barriers_and_mismatched_collectives_raise(lib, mode, part):
    message = _error(lib.run_divergence, mode)
    assert message is not None and part in message, message


@pytest.mark.parametrize("registers,valid", [(24, True), (256, True), (20, False), (100, False), (264, False)])
def test_register_counts_compile_only_within_the_setmaxnreg_range(tmp_path, registers, valid):
    source = tmp_path / "regs.cpp"
    source.write_text('#include "fmha_port.h"\n#include "fmha_async_barrier.h"\n'
                      f"void f() {{ fmha::raise_registers<{registers}>(); fmha::lower_registers<{registers}>(); }}\n")
    result = subprocess.run([CXX, "-std=c++20", "-fsyntax-only", "-DFMHA_CPU_EMULATION", f"-I{KERNEL_SRC}", str(source)],
                            capture_output=True, text=True)
    assert (result.returncode == 0) == valid, result.stderr
    assert valid or "setmaxnreg" in result.stderr
