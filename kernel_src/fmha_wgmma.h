/* fmha_wgmma.h: the warpgroup-level tensor-core primitives of sm_90a (Hopper) that
   fmha_fwd_wgmma.hip uses, beside the instruction wrappers of fmha_wgmma_ops.h.

   Shared-memory operands use the 128-byte swizzle: a tile of R rows x B bytes per row is stored
   as B / 128 column blocks of [R][128 bytes] (one 128-byte line per row: 64 16-bit or 128 8-bit
   values), and 16-byte chunk c of a line sits at chunk c ^ (row % 8). That is the pattern the
   hardware applies to address bits [4:6] ^= [7:9], so every tile starts on a 1024-byte boundary
   (8 lines = one swizzle atom). A row shorter than a line (64 8-bit values) fills the first half
   of its line.
   - K-major operand (Q as A, K as B of S = Q K^T; V^T as B of O = P V for 8-bit types, which
     wgmma cannot transpose): rows are M or N, the 128-byte block is K.
     Descriptor: stride byte offset (SBO) = 1024 between 8-row groups; the leading byte offset
     is unused by swizzled K-major layouts; k-step s (32 bytes: k16 of 16-bit, k32 of 8-bit
     values) of a block starts 32 s bytes into the line: the hardware swizzles the address it
     forms, so an offset inside the atom is valid.
   - N-major operand (16-bit V as B of O = P V, the instruction's transpose-B flag): rows are K
     (keys), the 128-byte block is N (head dim). SBO = 1024 between 8-key groups, leading byte
     offset (LBO) = R * 128 between 64-wide N blocks; k-step s starts 16 rows = 2048 bytes further.
   Descriptor bits (PTX ISA, wgmma matrix descriptor): [0,14) start address >> 4, [16,30) LBO >> 4,
   [32,46) SBO >> 4, [62,64) swizzle mode (1 = 128 B).
   Needs fmha_port.h and fmha_mma_sync.h (smem_address) first. */
#ifndef FMHA_WGMMA_H
#define FMHA_WGMMA_H

#include "fmha_wgmma_ops.h"

namespace fmha {

/* Offset, in elements of `Bytes` bytes (1: a byte offset), of 16-byte chunk `chunk` of row `row`
   in a swizzled tile of `Rows` rows. */
template <int Rows, int Bytes = 2>
FMHA_DEVICE int sw128(int row, int chunk)
{
    return (chunk >> 3) * (Rows * 128 / Bytes) + row * (128 / Bytes) + (((chunk & 7) ^ (row & 7)) << 4) / Bytes;
}

FMHA_DEVICE unsigned long long wgmma_descriptor(const void* smem, unsigned lbo_bytes)
{
    const unsigned long long address = smem_address(smem);
    return ((address & 0x3FFFF) >> 4) | ((unsigned long long)(lbo_bytes >> 4) << 16) |
           ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

/* Descriptor advances, in the 16-byte units of the start-address field: adding one to a
   descriptor moves its operand without recomputing it (the field cannot carry over: shared
   memory is < 256 KB). K-major k-step s: 128-byte block s / 4, 32 bytes per step inside it;
   N-major k-step s: 16 rows of 128 bytes; smem_advance: `bytes` further in shared memory. */
template <int Rows>
FMHA_DEVICE constexpr unsigned kmajor_advance(int s) { return ((s >> 2) * Rows * 128 + (s & 3) * 32) >> 4; }
FMHA_DEVICE constexpr unsigned nmajor_advance(int s) { return (s * 16 * 128) >> 4; }
FMHA_DEVICE constexpr unsigned smem_advance(int bytes) { return bytes >> 4; }

/* K-major operand of `Rows` rows (from `first_row`, a multiple of 8), k-step s. */
template <int Rows>
FMHA_DEVICE unsigned long long kmajor_descriptor(const void* tile, int first_row, int s)
{
    return wgmma_descriptor((const unsigned char*)tile + first_row * 128, 16) + kmajor_advance<Rows>(s);
}

/* N-major operand of `Rows` K-rows, k-step s (rows 16 s .. 16 s + 15), all N blocks. */
template <int Rows>
FMHA_DEVICE unsigned long long nmajor_descriptor(const void* tile, int s)
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

#if defined(FMHA_CUDA)
/* 8-bit P for O = P V: four floats rounded to nearest even into e4m3fn (finite values past 448
   saturate), x0 in the low byte. (The CPU emulation has its own, fmha_wgmma_emulation.h.) */
FMHA_DEVICE unsigned pack_e4m3x4(float x0, float x1, float x2, float x3)
{
    unsigned r;
    asm("{\n.reg .b16 lo, hi;\n"
        "cvt.rn.satfinite.e4m3x2.f32 lo, %2, %1;\n"
        "cvt.rn.satfinite.e4m3x2.f32 hi, %4, %3;\n"
        "mov.b32 %0, {lo, hi};\n}\n"
        : "=r"(r) : "f"(x0), "f"(x1), "f"(x2), "f"(x3));
    return r;
}

/* prmt: byte i of the result is byte (selector >> 4 i) & 7 of the pair {b, a} (a = bytes 0..3). */
FMHA_DEVICE unsigned byte_perm(unsigned a, unsigned b, unsigned selector) { return __byte_perm(a, b, selector); }
#endif

}  // namespace fmha

#endif /* FMHA_WGMMA_H */
