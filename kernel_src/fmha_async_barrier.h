/* fmha_async_barrier.h: the synchronisation of a warp-specialised Hopper kernel (sm_90a), in
   which a producer warpgroup fetches K/V tiles and consumer warpgroups compute, with no block-wide
   barrier in the main loop:
   - MBarrier: a shared-memory transaction barrier (PTX mbarrier). init(arrivals) by one thread,
     published by a block barrier; a phase completes when `arrivals` arrivals have been made, then
     the next phase starts with the same count. wait(parity) returns once the phase of that parity
     (0, 1, 0, ... for phases 0, 1, 2, ...) has completed. mbarrier_arrive_after_copies is the
     arrival a thread makes through cp.async.mbarrier.arrive.noinc: it happens when every cp.async
     this thread issued before it has landed, and counts among `arrivals`.
   - named barriers (bar.sync / bar.arrive with an id and a thread count, ids 1..15; 0 is the
     block barrier): `threads` arrivals complete the barrier; sync waits for that, arrive does not.
   - register reallocation between warpgroups (setmaxnreg): every thread of a warpgroup executes
     the same call; the counts are multiples of 8 in [24, 256].
   - tensor copies (TMA, cp.async.bulk.tensor): tma_load_4d copies one box of a tensor map (the
     driver's cuTensorMapEncodeTiled, here 128-byte swizzled rows, out-of-bounds elements zero)
     into shared memory and completes its bytes on an mbarrier's transaction count;
     mbarrier_arrive_expect_tx is an arrival that first adds the bytes the phase must also wait for.
   The CPU emulation (-DFMHA_CPU_EMULATION) has the same functions in
   fmha_async_barrier_emulation.h. */
#ifndef FMHA_ASYNC_BARRIER_H
#define FMHA_ASYNC_BARRIER_H

namespace fmha {
/* A CUtensorMap: 128 opaque bytes, 64-byte aligned (the CPU emulation reads its own layout from
   them: fmha_async_barrier_emulation.h). */
struct alignas(64) TensorMap {
    unsigned long long words[16];
};
}  // namespace fmha

#if defined(FMHA_CPU_EMULATION)
#include "fmha_async_barrier_emulation.h"
#elif defined(FMHA_CUDA)

namespace fmha {

struct MBarrier {
    unsigned long long word;
};

FMHA_DEVICE unsigned mbarrier_address(const MBarrier* bar) { return (unsigned)__cvta_generic_to_shared(bar); }

FMHA_DEVICE void mbarrier_init(MBarrier* bar, unsigned arrivals)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(mbarrier_address(bar)), "r"(arrivals) : "memory");
}

FMHA_DEVICE void mbarrier_arrive(MBarrier* bar)
{
    asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(mbarrier_address(bar)) : "memory");
}

FMHA_DEVICE void mbarrier_arrive_after_copies(MBarrier* bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(mbarrier_address(bar)) : "memory");
}

FMHA_DEVICE void mbarrier_arrive_expect_tx(MBarrier* bar, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(mbarrier_address(bar)),
                 "r"(bytes) : "memory");
}

/* Box (c0, c1, c2, c3) of `map` (a kernel parameter's or global memory's address) into dst. */
FMHA_DEVICE void tma_load_4d(void* dst, const TensorMap* map, int c0, int c1, int c2, int c3, MBarrier* bar)
{
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
        "[%6];\n" ::"r"((unsigned)__cvta_generic_to_shared(dst)),
        "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(mbarrier_address(bar))
        : "memory");
}

FMHA_DEVICE void mbarrier_wait(MBarrier* bar, unsigned parity)
{
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "wait_%=:\n"
        "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra wait_%=;\n"
        "}\n" ::"r"(mbarrier_address(bar)),
        "r"(parity)
        : "memory");
}

FMHA_DEVICE void named_barrier_sync(int id, int threads)
{
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

FMHA_DEVICE void named_barrier_arrive(int id, int threads)
{
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

template <int Registers>
FMHA_DEVICE void raise_registers()
{
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Registers));
}

template <int Registers>
FMHA_DEVICE void lower_registers()
{
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Registers));
}

}  // namespace fmha

#else
#error "fmha_async_barrier.h: Hopper's mbarrier and setmaxnreg; build for sm_90a (or -DFMHA_CPU_EMULATION for tests)"
#endif

#endif /* FMHA_ASYNC_BARRIER_H */
