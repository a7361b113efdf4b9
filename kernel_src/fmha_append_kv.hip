/* fmha_append_kv.hip: append-KV with RoPE (SPEC 7), the first of family appendkv's two launches.

   The new keys are rotated at their absolute positions cache_len[b] + i and written, with the new
   values, into the paged cache at those positions; the queries are rotated at the same positions
   into q (the rotated-Q workspace; q_unrotated is the input). The forward kernel then attends
   over the updated cache with the same FmhaParams, reading q as usual, so it needs no change.
   Sources (q_unrotated, k_new, v_new) are never written: a repeated launch writes the same values
   to the same places, so warmup and timing loops leave the cache as the first launch did.

   Compile-time specialisation (-D):
     FMHA_DTYPE      fp16 | bf16   (Q, new K/V and the cache; appendkv has no fp8 cache)
     FMHA_HDIM_Q, FMHA_HDIM_V      head dims of Q/K and of V (multiples of 8)
     FMHA_THREADS    threads per block
   Run time (FmhaParams): strides, page tables (vllm, sglang, headwise; hnd or nhd through the
   cache strides), cache_len, rope tables, rotary_dim and rotary_style.

   RoPE with rotary dim rd and pairs (2k, 2k+1) (interleaved) or (k, k + rd/2) (half):
     first of a pair  x' = x c_k - y s_k,   second  x' = x c_k + y s_k   (y: the other element),
   dims >= rd pass through bit for bit. Each product and the sum are rounded to fp32, then the
   result to the cache dtype (round to nearest even), exactly as the NumPy reference computes it,
   so the cache holds the reference's bits.

   Work decomposition: block (x, y) = (a run of FMHA_THREADS 16-byte chunks, sequence b). The
   chunks of one new token are laid out Q heads, then K heads, then V heads (each head a row of
   D / 8 chunks), tokens one after another; one thread owns one chunk: one 16-byte load of its
   source, one 16-byte store into q or the cache. The other element of a half-style pair sits
   rd/2 dims away: one more aligned 16-byte load when rd/2 is a multiple of 8 (every common
   rotary dim), element loads otherwise. No shared memory, no barriers. */
#include "fmha_port.h"
#include "fmha_params.h"
#include "fmha_fwd_common.h"

#if !defined(FMHA_DTYPE) || !defined(FMHA_HDIM_Q) || !defined(FMHA_HDIM_V) || !defined(FMHA_THREADS)
#error "fmha_append_kv.hip needs -D FMHA_DTYPE, FMHA_HDIM_Q/V, FMHA_THREADS"
#endif

#define FMHA_CAT_(a, b) a##b
#define FMHA_CAT(a, b) FMHA_CAT_(a, b)

namespace fmha_append {

using fmha::i64;
typedef unsigned short Bits;  /* fp16 and bf16 travel as 16-bit patterns */

struct elem_fp16 {
    static FMHA_DEVICE float decode(Bits x) { return fmha_fp16_to_float(x); }
    static FMHA_DEVICE Bits encode(float x) { return fmha_float_to_fp16(x); }
};
struct elem_bf16 {
    static FMHA_DEVICE float decode(Bits x) { return fmha_bf16_to_float(x); }
    static FMHA_DEVICE Bits encode(float x) { return fmha_float_to_bf16(x); }
};
typedef FMHA_CAT(elem_, FMHA_DTYPE) Elem;

constexpr int kDq = FMHA_HDIM_Q, kDv = FMHA_HDIM_V, kThreads = FMHA_THREADS;
constexpr int kVec = 8;                            /* 16-bit elements per 16-byte chunk */
constexpr int kQChunks = kDq / kVec, kVChunks = kDv / kVec;
static_assert(kDq % kVec == 0 && kDv % kVec == 0, "head dims must be multiples of 8 (16-byte chunks)");

struct alignas(16) Chunk { Bits e[kVec]; };

/* x * c + y * s with each product and the sum rounded to fp32, as NumPy computes it. A fused
   multiply-add skips a rounding, which now and then puts the result on the other side of a
   fp16/bf16 rounding boundary (the CPU emulation built for FMA hardware: 7 of 100k values).
   CUDA: the _rn intrinsics are never fused; clang (HIP): contraction off here; g++ (the CPU
   emulation) fuses only when built for FMA hardware. Vendor-specific: belongs in fmha_port.h. */
FMHA_DEVICE float mul_add_rn(float x, float c, float y, float s)
{
#if defined(FMHA_CUDA)
    return __fadd_rn(__fmul_rn(x, c), __fmul_rn(y, s));  /* never contracted into an FMA */
#else
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    return x * c + y * s;
#endif
}

/* The chunk at dims d0.. of one head row `src`, rotated at position `pos`, stored to `dst`. */
FMHA_DEVICE void rotate_chunk(const FmhaParams& p, const Bits* FMHA_RESTRICT src, Bits* FMHA_RESTRICT dst, int d0,
                              int pos)
{
    const Chunk x = *(const Chunk*)(src + d0);
    Chunk out = x;
    const int rd = p.rotary_dim, half = rd / 2;
    if (d0 < rd) {
        const float* cos_row = (const float*)p.rope_cos + (i64)pos * half;
        const float* sin_row = (const float*)p.rope_sin + (i64)pos * half;
        if (p.rotary_style == FMHA_ROTARY_INTERLEAVED) {
#pragma unroll
            for (int e = 0; e < kVec; e += 2) {
                const int k = (d0 + e) / 2;
                if (k >= half) break;
                const float a = Elem::decode(x.e[e]), b = Elem::decode(x.e[e + 1]);
                out.e[e] = Elem::encode(mul_add_rn(a, cos_row[k], b, -sin_row[k]));
                out.e[e + 1] = Elem::encode(mul_add_rn(b, cos_row[k], a, sin_row[k]));
            }
        } else {
            const bool aligned = half % kVec == 0;   /* the chunk lies within one half of [0, rd) */
            Chunk other;
            if (aligned) other = *(const Chunk*)(src + (d0 < half ? d0 + half : d0 - half));
#pragma unroll
            for (int e = 0; e < kVec; ++e) {
                const int d = d0 + e;
                if (d >= rd) break;
                const bool first = d < half;
                const int k = first ? d : d - half;
                const Bits y = aligned ? other.e[e] : src[first ? d + half : d - half];
                out.e[e] = Elem::encode(mul_add_rn(Elem::decode(x.e[e]), cos_row[k], Elem::decode(y),
                                                   first ? -sin_row[k] : sin_row[k]));
            }
        }
    }
    *(Chunk*)(dst + d0) = out;
}

}  // namespace fmha_append

extern "C" __global__ void FMHA_LAUNCH_BOUNDS(FMHA_THREADS) fmha_append_kv(FmhaParams p)
{
    using namespace fmha_append;
    const int b = blockIdx.y;
    int first_row = 0, n_new = p.max_seqlen_q;
    if (p.group_mode) {
        const int* seqstart = (const int*)p.seqstart_q;
        first_row = seqstart[b];
        n_new = seqstart[b + 1] - first_row;
    }
    const int q_chunks = p.nhead_q * kQChunks, k_chunks = p.nhead_k * kQChunks;
    const unsigned per_token = q_chunks + k_chunks + p.nhead_k * kVChunks;
    /* 32-bit: the host keeps a sequence's chunks below 2^31 (kernels.select_kernel). */
    const unsigned flat = blockIdx.x * kThreads + threadIdx.x;
    const int i = (int)(flat / per_token);
    if (i >= n_new) return;
    int c = (int)(flat % per_token);
    const i64 row = first_row + i;
    const int pos = ((const int*)p.cache_len)[b] + i;

    if (c < q_chunks) {
        const int h = c / kQChunks;
        const i64 at = b * p.q_batch_stride + row * p.q_row_stride + h * p.q_head_stride;
        rotate_chunk(p, (const Bits*)p.q_unrotated + at, (Bits*)p.q + at, (c % kQChunks) * kVec, pos);
        return;
    }
    c -= q_chunks;
    const bool is_k = c < k_chunks;
    if (!is_k) c -= k_chunks;
    const int chunks = is_k ? kQChunks : kVChunks;
    const int hk = c / chunks, d0 = (c % chunks) * kVec;

    /* The token's slot: the page tables already cover the sequence after the append. */
    const fmha::KvSequence kv = fmha::kv_sequence<true>(p, b, hk);
    int page, slot;
    fmha::locate_key<true>(p, kv, pos, page, slot);
    if (page < 0) return;   /* no slot (inconsistent tables): never write through a -1 entry */
    if (is_k) {
        const Bits* src = (const Bits*)p.k_new + b * p.k_new_batch_stride + row * p.k_new_row_stride +
                          hk * p.k_new_head_stride;
        Bits* dst = (Bits*)p.k + page * p.k_page_stride + hk * p.k_head_stride + slot * p.k_row_stride;
        rotate_chunk(p, src, dst, d0, pos);
    } else {
        const Bits* src = (const Bits*)p.v_new + b * p.v_new_batch_stride + row * p.v_new_row_stride +
                          hk * p.v_new_head_stride;
        Bits* dst = (Bits*)p.v + page * p.v_page_stride + hk * p.v_head_stride + slot * p.v_row_stride;
        *(Chunk*)(dst + d0) = *(const Chunk*)(src + d0);
    }
}
