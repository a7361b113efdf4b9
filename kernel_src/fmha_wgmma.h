/* fmha_wgmma.h: the warpgroup-level tensor-core primitives of sm_90a (Hopper) that
   fmha_fwd_wgmma.hip uses, beside the instruction wrappers of fmha_wgmma_ops.h.

   Shared-memory operands use the 128-byte swizzle: a tile of R rows x D 16-bit values is stored
   as D / 64 column blocks of [R][64] (one 128-byte line per row), and 16-byte chunk c of a line
   sits at chunk c ^ (row % 8). That is the pattern the hardware applies to address bits [4:6]
   ^= [7:9], so every tile starts on a 1024-byte boundary (8 lines = one swizzle atom).
   - K-major operand (Q as A, K as B of S = Q K^T): rows are M or N, the 64-wide block is K.
     Descriptor: stride byte offset (SBO) = 1024 between 8-row groups; the leading byte offset
     is unused by swizzled K-major layouts; k-step s (16 values = 32 bytes) of a block starts
     32 s bytes into the line: the hardware swizzles the address it forms, so an offset inside
     the atom is valid.
   - N-major operand (V as B of O = P V, the instruction's transpose-B flag): rows are K (keys),
     the 64-wide block is N (head dim). SBO = 1024 between 8-key groups, leading byte offset
     (LBO) = R * 128 between 64-wide N blocks; k-step s starts 16 rows = 2048 bytes further.
   Descriptor bits (PTX ISA, wgmma matrix descriptor): [0,14) start address >> 4, [16,30) LBO >> 4,
   [32,46) SBO >> 4, [62,64) swizzle mode (1 = 128 B).
   Needs fmha_port.h and fmha_mma_sync.h (smem_address) first. */
#ifndef FMHA_WGMMA_H
#define FMHA_WGMMA_H

#include "fmha_wgmma_ops.h"

namespace fmha {

/* Element offset of 16-byte chunk `chunk` of row `row` in a swizzled tile of `Rows` rows. */
template <int Rows>
FMHA_DEVICE int sw128(int row, int chunk)
{
    return (chunk >> 3) * (Rows * 64) + row * 64 + (((chunk & 7) ^ (row & 7)) << 3);
}

FMHA_DEVICE unsigned long long wgmma_descriptor(const void* smem, unsigned lbo_bytes)
{
    const unsigned long long address = smem_address(smem);
    return ((address & 0x3FFFF) >> 4) | ((unsigned long long)(lbo_bytes >> 4) << 16) |
           ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

/* Descriptor advances, in the 16-byte units of the start-address field: adding one to a
   descriptor moves its operand without recomputing it (the field cannot carry over: shared
   memory is < 256 KB). K-major k-step s: 64-wide block s / 4, 32 bytes per step inside it;
   N-major k-step s: 16 rows of 128 bytes. */
template <int Rows>
FMHA_DEVICE constexpr unsigned kmajor_advance(int s) { return ((s >> 2) * Rows * 128 + (s & 3) * 32) >> 4; }
FMHA_DEVICE constexpr unsigned nmajor_advance(int s) { return (s * 16 * 128) >> 4; }
FMHA_DEVICE constexpr unsigned smem_advance(int elements16) { return (elements16 * 2) >> 4; }

/* K-major operand of `Rows` rows (from `first_row`, a multiple of 8), k-step s. */
template <int Rows>
FMHA_DEVICE unsigned long long kmajor_descriptor(const unsigned short* tile, int first_row, int s)
{
    return wgmma_descriptor(tile + first_row * 64, 16) + kmajor_advance<Rows>(s);
}

/* N-major operand of `Rows` K-rows, k-step s (rows 16 s .. 16 s + 15), all N blocks. */
template <int Rows>
FMHA_DEVICE unsigned long long nmajor_descriptor(const unsigned short* tile, int s)
{
    return wgmma_descriptor(tile, Rows * 128) + nmajor_advance(s);
}

/* wgmma ordering: fence before a batch that reads registers other instructions wrote; commit a
   batch as one group; wait until at most N groups are pending. */
FMHA_DEVICE void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
FMHA_DEVICE void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int Pending>
FMHA_DEVICE void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory"); }

/* Tell the compiler an accumulator changed here (after a wait), so no read of it moves above the
   wait and no write below the issue. */
template <int N>
FMHA_DEVICE void touch_registers(float (&r)[N])
{
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

/* Writes by this thread's generic-proxy instructions (cp.async included) become visible to the
   async proxy that wgmma reads shared memory through. */
FMHA_DEVICE void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

}  // namespace fmha

#endif /* FMHA_WGMMA_H */
