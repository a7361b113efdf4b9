/* fmha_mla_common.h: what the two MLA decode kernels share (fmha_mla_decode.hip: mma.sync;
   fmha_mla_wgmma.hip: Hopper wgmma):
     element types elem_<FMHA_DTYPE> (Stored: the cache's storage type; Mma: the output's 16-bit
       type and its float-pair pack, bf16 for fp8, which the mma kernel also computes in),
     MlaRowTile and MlaBlock (a block's rows, split and key tiles, and where its results go),
     LogitScale (soft cap and base-2 scale of the logits),
     the copies into shared memory: load_q, CacheRow (a key's cache row), widen_tile (fp8); each
       kernel passes its 16-bit tiles' layout, `at(r, c)`: the offset in halves of 16-byte chunk c
       of row r,
   (TileList and finish_row, which the forward tensor-core kernels use too, are in fmha_tc_common.h).
   Needs fmha_port.h, fmha_params.h, fmha_fwd_common.h, fmha_mma_sync.h and fmha_tc_common.h first. */
#ifndef FMHA_MLA_COMMON_H
#define FMHA_MLA_COMMON_H

namespace fmha {

template <class T, int N>
struct alignas(sizeof(T) * N) Vec { T v[N]; };

struct elem_fp16 { typedef unsigned short Stored; typedef mma_fp16 Mma; };
struct elem_bf16 { typedef unsigned short Stored; typedef mma_bf16 Mma; };
/* fp8 Q and cache are widened in shared memory (exact: every e4m3fn value is a bf16 and an fp16 value). */
struct elem_fp8_e4m3fn { typedef unsigned char Stored; typedef mma_bf16 Mma; };

/* ------------------------------------------------------------------ a block's work */
/* Block (x, 0, z) = (row tile * num_splits + split, -, sequence b = z) owns rows [m0, m_end) of
   the sequence's rows m = (query position m / Hq, head m % Hq): every query head attends over
   the one latent KV head. */
struct MlaRowTile {
    bool split_kv;   /* writes fp32 partials for fmha_combine.hip */
    int b, group, q_first, seqlen_q, rows, num_splits, split, m0, m_end;

    /* split_capable: the instance's FMHA_SPLIT_KV (a constant, so unsplit instances drop the split code). */
    FMHA_DEVICE MlaRowTile(const FmhaParams& p, int block_rows, bool split_capable)
        : split_kv(split_capable && p.num_splits > 1), b(blockIdx.z), group(p.nhead_q)
    {
        query_sequence(p, b, q_first, seqlen_q);
        rows = seqlen_q * group;
        num_splits = split_kv ? p.num_splits : 1;
        split = blockIdx.x % num_splits;
        m0 = blockIdx.x / num_splits * block_rows;
        m_end = imin(m0 + block_rows, rows);
    }
    FMHA_DEVICE bool empty() const { return m0 >= rows; }
    FMHA_DEVICE int head(int m) const { return m % group; }
    FMHA_DEVICE int position(int m) const { return q_first + m / group; }   /* row m's query row in Q, O, LSE */

    /* Row m's LSE (natural log): the split's partial, or the output where the problem asks for it. */
    FMHA_DEVICE void store_lse(const FmhaParams& p, int m, float lse) const
    {
        if (!(p.has_lse || split_kv)) return;
        float* dst = split_kv ? (float*)p.lse_acc + split * p.lse_acc_split_stride : (float*)p.lse;
        dst[b * p.lse_batch_stride + head(m) * p.lse_head_stride + position(m)] = lse;
    }

    /* This thread's pairs of output row m in the accumulator fragment layout (mma.sync's and
       wgmma's D alike): columns col + 8 nt + 2 (lane % 4) and the next (nt < NPairs) take
       value(nt, 0) and value(nt, 1), as an fp32 partial (split) or packed by Out::pack. The lane
       term is added here: callers that folded it into col made the wgmma kernel ~1% slower (its
       main loop's uniform registers were allocated differently). */
    template <int NPairs, class Out, class Value>
    FMHA_DEVICE void store_o(const FmhaParams& p, int m, int col, const Value& value) const
    {
        const int q4 = (int)threadIdx.x % 32 % 4;
        const i64 at =
            b * p.o_batch_stride + head(m) * p.o_head_stride + (i64)position(m) * p.o_row_stride + col + 2 * q4;
        if (split_kv) {   /* fp32 partial, O's element offsets */
            float* dst = (float*)p.o_acc + split * p.o_acc_split_stride + at;
#pragma unroll
            for (int nt = 0; nt < NPairs; ++nt)
                *(Vec<float, 2>*)(dst + nt * 8) = Vec<float, 2>{{value(nt, 0), value(nt, 1)}};
        } else {
            unsigned short* dst = (unsigned short*)p.o + at;
#pragma unroll
            for (int nt = 0; nt < NPairs; ++nt) *(unsigned*)(dst + nt * 8) = Out::pack(value(nt, 0), value(nt, 1));
        }
    }
};

/* A non-empty row tile's keys: its split's share [key_begin, key_end) of the sequence's keys (all
   of them unsplit), visited as the key tiles of BlockK keys that its rows' mask reaches. */
template <int BlockK>
struct MlaBlock : MlaRowTile {
    KvSequence kv;
    MaskSpec mask;
    int key_begin, key_end;
    KeyTiles<BlockK> tiles;
    TileList<BlockK> list;

    FMHA_DEVICE MlaBlock(const FmhaParams& p, const MlaRowTile& rt)
        : MlaRowTile(rt), kv(kv_sequence<true>(p, b, 0)), mask(mask_for_kv_head(p, 0, seqlen_q, kv.length)),
          key_begin(imin(split * split_width(), kv.length)), key_end(imin(key_begin + split_width(), kv.length)),
          tiles(mask, m0 / group, (m_end - 1) / group), list(tiles, key_begin, key_end)
    {
    }
    FMHA_DEVICE int split_width() const { return (kv.length + num_splits - 1) / num_splits; }

    /* Row m's mask bounds; a row past the sequence (never stored) takes the last row's. */
    FMHA_DEVICE void row_bounds(int m, int& lo, int& hi, int& sink_end) const
    {
        mask.bounds(imin(m, rows - 1) / group, lo, hi, sink_end);
    }
    /* These two use & and |, not && and ||: inlined, the short-circuit branches cost the callers'
       masking loops more instructions than the same tests written out in place did. */
    FMHA_DEVICE bool in_split(int j) const { return (!split_kv) | ((j >= key_begin) & (j < key_end)); }
    /* The tile of keys j0.. needs no element-wise mask: every row sees all its keys, all in the split. */
    FMHA_DEVICE bool all_visible(int j0) const
    {
        return tiles.all_visible(j0) & ((!split_kv) | ((j0 >= key_begin) & (j0 + BlockK <= key_end)));
    }
};

/* Logits stay raw Q.K (or c log2(e) tanh(.) with a soft cap c); `mul` takes them to base 2
   inside the exponent's FFMA. */
struct LogitScale {
    float cap, cap_in, cap_log2, mul;

    FMHA_DEVICE explicit LogitScale(const FmhaParams& p)
        : cap(p.soft_cap), cap_in(cap > 0.f ? p.scale * p.q_descale * p.k_descale / cap : 0.f),
          cap_log2(cap * FMHA_LOG2E), mul(cap > 0.f ? 1.f : p.scale_log2)
    {
    }
    FMHA_DEVICE bool capped() const { return cap > 0.f; }
    FMHA_DEVICE float soft_cap(float v) const { return capped() ? tanhf(v * cap_in) * cap_log2 : v; }
};

/* ------------------------------------------------------------------ copies into shared memory */
/* Two e4m3fn codes (first in the low byte) -> two 16-bit values of Wide's type (first in the low
   half), exactly. */
template <class Wide>
FMHA_DEVICE unsigned widen_fp8x2(unsigned short codes)
{
    return Wide::pack(fmha_fp8_e4m3fn_to_float(codes & 0xffu), fmha_fp8_e4m3fn_to_float(codes >> 8));
}
#if defined(FMHA_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
template <>
FMHA_DEVICE unsigned widen_fp8x2<mma_fp16>(unsigned short codes)   /* one instruction on sm_89 and newer */
{
    unsigned r;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(r) : "h"(codes));
    return r;
}
#endif

/* 16 e4m3fn codes -> two 16-byte chunks of Wide's type. */
template <class Wide>
FMHA_DEVICE void widen_fp8_chunk(unsigned short* lo, unsigned short* hi, const unsigned char* src)
{
    const Vec<unsigned, 4> words = *(const Vec<unsigned, 4>*)src;
    Vec<unsigned, 4> out[2];
#pragma unroll
    for (int i = 0; i < 8; ++i)
        out[i / 4].v[i % 4] = widen_fp8x2<Wide>((unsigned short)(words.v[i / 2] >> (16 * (i % 2))));
    *(Vec<unsigned, 4>*)lo = out[0];
    *(Vec<unsigned, 4>*)hi = out[1];
}

/* The block's Q rows m0.. into the 16-bit [BlockQ][Dq] tile sq (layout `at`), fp8 widened to
   Wide's type; rows past the sequence are zero. */
template <int BlockQ, int Dq, int Threads, class Stored, class Wide, class At>
FMHA_DEVICE void load_q(unsigned short* sq, const At& at, const FmhaParams& p, const MlaRowTile& rt)
{
    constexpr bool kFp8 = sizeof(Stored) == 1;
    constexpr int kChunkElems = 16 / (int)sizeof(Stored), kRowChunks = Dq / kChunkElems;
    const Stored* q = (const Stored*)p.q;
    for (int c = threadIdx.x; c < BlockQ * kRowChunks; c += Threads) {
        const int r = c / kRowChunks, chunk = c % kRowChunks, m = rt.m0 + r;
        const bool present = m < rt.rows;
        const Stored* src = q;
        if (present)   /* one KV head: every query head reads it */
            src = q + rt.b * p.q_batch_stride + rt.head(m) * p.q_head_stride + (i64)rt.position(m) * p.q_row_stride +
                  chunk * kChunkElems;
        if (!kFp8) {
            copy16_async(sq + at(r, chunk), src, present);
        } else if (present) {
            widen_fp8_chunk<Wide>(sq + at(r, 2 * chunk), sq + at(r, 2 * chunk + 1), (const unsigned char*)src);
        } else {
            *(Vec<unsigned, 4>*)(sq + at(r, 2 * chunk)) = Vec<unsigned, 4>{{0u, 0u, 0u, 0u}};
            *(Vec<unsigned, 4>*)(sq + at(r, 2 * chunk + 1)) = Vec<unsigned, 4>{{0u, 0u, 0u, 0u}};
        }
    }
}

/* Key j's row of the latent cache, for 16-byte copies into a tile stage. An absent key (past the
   sequence, or in a recycled page) is zero-filled and never read: its source is the cache base. */
template <class Stored>
struct CacheRow {
    static constexpr int kChunkElems = 16 / (int)sizeof(Stored);
    const Stored* base;
    const Stored* row;
    bool present;

    FMHA_DEVICE CacheRow(const FmhaParams& p, const KvSequence& kv, int j) : base((const Stored*)p.k)
    {
        int page, slot;
        locate_key<true>(p, kv, j, page, slot);
        present = page >= 0;
        row = present ? base + page * p.k_page_stride + slot * p.k_row_stride : base;
    }
    /* Chunk `chunk` to row r of `stage`: 16-bit rows at layout `at`, fp8 rows as stored (Dq bytes). */
    template <int Dq, class At>
    FMHA_DEVICE void copy(unsigned char* stage, const At& at, int r, int chunk) const
    {
        void* dst = sizeof(Stored) == 1 ? (void*)(stage + r * Dq + chunk * 16)
                                        : (void*)((unsigned short*)stage + at(r, chunk));
        copy16_async(dst, present ? row + chunk * kChunkElems : base, present);
    }
};

/* fp8: a stage as stored ([BlockK][Dq] codes) -> the 16-bit tile `wide` (layout `at`) of Wide's type. */
template <int BlockK, int Dq, int Threads, class Wide, class At>
FMHA_DEVICE void widen_tile(unsigned short* wide, const At& at, const unsigned char* stage)
{
    constexpr int kFp8Chunks = Dq / 16;
    for (int c = threadIdx.x; c < BlockK * kFp8Chunks; c += Threads) {
        const int r = c / kFp8Chunks, chunk = c % kFp8Chunks;
        widen_fp8_chunk<Wide>(wide + at(r, 2 * chunk), wide + at(r, 2 * chunk + 1), stage + r * Dq + chunk * 16);
    }
}

}  // namespace fmha

#endif /* FMHA_MLA_COMMON_H */
