/* fmha_fwd_mfma.hip: attention forward on AMD matrix cores (MFMA on CDNA gfx90a/gfx942/gfx950,
   wave64; WMMA on RDNA3 gfx11 and RDNA4 gfx12, wave32), dense or paged K/V, fp16 / bf16.
   Same semantics, FmhaParams and grid as the portable and mma.sync kernels: block (x, y, z) =
   (tile of BLOCK_Q rows of the G = Hq/Hk query heads sharing KV head y, KV head, sequence);
   row m <-> (query position m / G, head y*G + m % G).

   NEVER RUN ON AN AMD GPU: none is available to this project. The source is compiled by clang
   for gfx90a, gfx942, gfx1100 and gfx1201 (tests/test_mfma_compile.py; gfx950 needs clang >= 20)
   and its results are checked on the CPU emulation of the matrix instructions
   (fmha_amd_matrix.h, tests/test_mfma_emulated.py). Speed is unknown.

   Compile-time specialisation (-D): FMHA_DTYPE fp16 | bf16, FMHA_HDIM_Q, FMHA_HDIM_V,
   FMHA_KV_SOURCE dense | paged, FMHA_MATRIX mfma32 | mfma16 | wmma_gfx11 | wmma_gfx12 (the
   instruction family, fmha_amd_matrix.h; it must match the arch), FMHA_BLOCK_Q, FMHA_BLOCK_K,
   FMHA_WAVES, FMHA_STAGES 1 | 2 (LDS buffers of K/V), FMHA_SOFT_CAP 0 | 1.

   Algorithm (FlashAttention-2 style, transposed so each lane owns one query):
   - The products are S^T = K Q^T and O^T = V^T P^T. A matrix instruction's C registers of a
     lane all lie in one column, so with queries as columns a lane holds one query's logits,
     softmax statistics and output: the max/sum across keys is a loop over registers plus one or
     two cross-lane shuffles, the rescale of O needs none, and P^T is already in (or, on gfx11,
     one half-wave swap away from) the B layout of the second product (fmha_amd_matrix.h).
   - Each wave owns BLOCK_Q / WAVES query rows (multiples of the instruction's 32 or 16) for the
     whole key loop; its Q fragments (B operand of K Q^T) are loaded once from global memory
     into registers.
   - K tiles live in LDS as [BLOCK_K][Dq + 4] (rows padded so the lanes of a fragment load, one
     row each, spread over the banks), V as V^T [Dv][BLOCK_K + 2], so the A fragments of both
     products read consecutive 16-bit pairs. Global loads of tile t + 1 are issued into
     registers before tile t is computed and written to LDS after it (no async copy on these
     GPUs); with two stages one barrier per tile suffices. Absent keys (past the sequence,
     recycled pages) are zero-filled and never read from global memory.
   - Online softmax in base 2; only tiles that straddle a mask boundary are masked element-wise;
     tiles nobody sees are never visited (KeyTiles). P is rounded to the input type (validate's
     P precision "input") for P V; the row sums use the unrounded P.
   - Finish as the other kernels: learned sink, 1/l, v_descale, LSE in natural log, O = 0 and
     LSE = -inf (or the sink logit) for a row that sees nothing. */
#include "fmha_port.h"
#include "fmha_params.h"
#include "fmha_fwd_common.h"
#include "fmha_amd_matrix.h"

#if !defined(FMHA_HIP) && !defined(FMHA_CPU_EMULATION)
#error "fmha_fwd_mfma.hip uses AMD matrix instructions: build it with HIP (gfx9/11/12) or -DFMHA_CPU_EMULATION"
#endif
#if !defined(FMHA_DTYPE) || !defined(FMHA_HDIM_Q) || !defined(FMHA_HDIM_V) || !defined(FMHA_KV_SOURCE) || \
    !defined(FMHA_MATRIX) || !defined(FMHA_BLOCK_Q) || !defined(FMHA_BLOCK_K) || !defined(FMHA_WAVES) ||  \
    !defined(FMHA_STAGES) || !defined(FMHA_SOFT_CAP)
#error "fmha_fwd_mfma.hip needs every -D of its header comment (FMHA_DTYPE ... FMHA_SOFT_CAP)"
#endif

#define FMHA_CAT_(a, b) a##b
#define FMHA_CAT(a, b) FMHA_CAT_(a, b)

namespace fmha {

struct kv_dense { static constexpr bool paged = false; };
struct kv_paged { static constexpr bool paged = true; };

typedef FMHA_CAT(amd_, FMHA_DTYPE) Elem;
typedef FMHA_CAT(matrix_, FMHA_MATRIX) Mx;
constexpr bool kPaged = FMHA_CAT(kv_, FMHA_KV_SOURCE)::paged;

/* ------------------------------------------------------------------ tile geometry */
constexpr int kDq = FMHA_HDIM_Q, kDv = FMHA_HDIM_V;
constexpr int kBQ = FMHA_BLOCK_Q, kBK = FMHA_BLOCK_K, kWaves = FMHA_WAVES, kStages = FMHA_STAGES;
constexpr int kWave = Mx::kWave, kThreads = kWave * kWaves;
constexpr int kT = Mx::kM;                /* keys per S^T tile = queries per column tile = dv per O^T tile */
constexpr int kWaveRows = kBQ / kWaves;   /* query rows per wave */
constexpr int kNT = kWaveRows / kT;       /* query (column) tiles per wave */
constexpr int kMT = kBK / kT;             /* key tiles of S^T */
constexpr int kQS = kDq / Mx::kK;         /* k-steps of K Q^T */
constexpr int kDT = kDv / kT;             /* dv tiles of O^T */
constexpr int kSub = kT / Mx::kK;         /* k-steps of V^T P^T per key tile */
constexpr int kW = Mx::kAB / 2;           /* 32-bit registers of an A or B fragment */
typedef typename Mx::AB Frag;
typedef typename Mx::C Acc;
static_assert(kWaveRows % kT == 0 && kNT >= 1, "each wave owns a multiple of the instruction's rows");
static_assert(kBK % kT == 0 && kDv % kT == 0 && kDq % Mx::kK == 0, "tile and head dims: multiples of the instruction");
static_assert(kDq % 8 == 0 && kDv % 8 == 0, "16-byte chunks of K/V rows");
static_assert(kStages == 1 || kStages == 2, "one or two LDS stages");

/* LDS, in 32-bit words: kStages x (K [kBK][kKRow], V^T [kDv][kVRow]), 16-bit elements. In a
   fragment load each lane of a column tile reads its own row; the padding (4 and 2 elements)
   starts consecutive K rows 2 banks apart (Dq / 2 words is a multiple of 32 for Dq 64, 128,
   192, 256) and V^T rows an odd number of banks apart, so those lanes spread over the 32 banks.
   Mirrored by kernels_mfma.lds_bytes. */
constexpr int kKRow = kDq + 4, kVRow = kBK + 2;
constexpr int kKWords = kBK * kKRow / 2, kVWords = kDv * kVRow / 2;
constexpr int kStageWords = kKWords + kVWords;
constexpr int kLdsWords = kStages * kStageWords;

/* Register staging of one K/V tile: K as 16-byte chunks (row, chunk); V as pairs of 16-byte
   chunks of two consecutive keys, so each V^T word written to LDS holds two keys of one dim. */
constexpr int kKChunks = kBK * (kDq / 8), kVPairs = (kBK / 2) * (kDv / 8);
constexpr int kKLoads = (kKChunks + kThreads - 1) / kThreads, kVLoads = (kVPairs + kThreads - 1) / kThreads;
static_assert(kBK % 2 == 0, "V is staged two keys at a time");

/* ------------------------------------------------------------------ K/V tiles */
/* Element offset of key j of the (sequence, KV head) from its K or V base, or -1 when absent
   (past the sequence, a recycled page). */
FMHA_DEVICE i64 key_offset(const FmhaParams& p, const KvSequence& kv, int j, i64 page_stride, i64 row_stride)
{
    int page, slot;
    locate_key<kPaged>(p, kv, j, page, slot);
    if (page < 0) return -1;
    return kPaged ? page * page_stride + slot * row_stride : slot * row_stride;
}

/* 16 bytes at base + offset + chunk * 8, zeros for an absent key (offset -1). The load itself
   is unconditional (an absent key reads the head's first row, which exists whenever a tile is
   loaded, and drops it): per-chunk branches made the compiler stage the chunks in scratch. */
FMHA_DEVICE uint4 load_chunk(const unsigned short* base, i64 offset, int chunk)
{
    const uint4 x = *(const uint4*)(base + (offset >= 0 ? offset : 0) + chunk * 8);
    const bool present = offset >= 0;
    return uint4{present ? x.x : 0u, present ? x.y : 0u, present ? x.z : 0u, present ? x.w : 0u};
}

struct TileStage {
    uint4 k[kKLoads], v[kVLoads][2];

    /* Global -> registers: tile of keys j0 .. j0 + kBK - 1. */
    FMHA_DEVICE void fetch(const FmhaParams& p, const KvSequence& kv, const unsigned short* k_base,
                           const unsigned short* v_base, int j0)
    {
#pragma unroll
        for (int i = 0; i < kKLoads; ++i) {
            const int c = threadIdx.x + i * kThreads, r = c / (kDq / 8);
            if (c < kKChunks)
                k[i] = load_chunk(k_base, key_offset(p, kv, j0 + r, p.k_page_stride, p.k_row_stride), c % (kDq / 8));
        }
#pragma unroll
        for (int i = 0; i < kVLoads; ++i) {
            const int c = threadIdx.x + i * kThreads, r = 2 * (c / (kDv / 8)), chunk = c % (kDv / 8);
            if (c < kVPairs)
#pragma unroll
                for (int h = 0; h < 2; ++h)
                    v[i][h] = load_chunk(v_base, key_offset(p, kv, j0 + r + h, p.v_page_stride, p.v_row_stride), chunk);
        }
    }

    /* Registers -> LDS stage: K rows as they are, V transposed. */
    FMHA_DEVICE void store(unsigned* stage) const
    {
#pragma unroll
        for (int i = 0; i < kKLoads; ++i) {
            const int c = threadIdx.x + i * kThreads;
            if (c < kKChunks) {
                unsigned* dst = stage + (c / (kDq / 8)) * (kKRow / 2) + c % (kDq / 8) * 4;
                dst[0] = k[i].x;
                dst[1] = k[i].y;
                dst[2] = k[i].z;
                dst[3] = k[i].w;
            }
        }
        unsigned* vt = stage + kKWords;
#pragma unroll
        for (int i = 0; i < kVLoads; ++i) {
            const int c = threadIdx.x + i * kThreads;
            if (c < kVPairs) {
                const int key_pair = c / (kDv / 8), d0 = c % (kDv / 8) * 8;
                const unsigned lo[4] = {v[i][0].x, v[i][0].y, v[i][0].z, v[i][0].w};
                const unsigned hi[4] = {v[i][1].x, v[i][1].y, v[i][1].z, v[i][1].w};
#pragma unroll
                for (int d = 0; d < 8; ++d)   /* dim d0 + d of keys 2 key_pair and 2 key_pair + 1 */
                    vt[(d0 + d) * (kVRow / 2) + key_pair] =
                        half_of(lo[d / 2], d) | (unsigned)half_of(hi[d / 2], d) << 16;
            }
        }
    }
};

/* ------------------------------------------------------------------ one block */
template <bool SoftCap>
FMHA_DEVICE void attention(const FmhaParams& p, unsigned* lds)
{
    const int tid = threadIdx.x, lane = tid % kWave, wave = tid / kWave;
    const int b = blockIdx.z, hk = blockIdx.y;
    const int group = p.nhead_q / p.nhead_k;
    int q_first = 0, seqlen_q = p.max_seqlen_q;
    if (p.group_mode) {
        const int* seqstart = (const int*)p.seqstart_q;
        q_first = seqstart[b];
        seqlen_q = seqstart[b + 1] - q_first;
    }
    const int rows = seqlen_q * group;
    /* Last row tiles first: under a causal mask they see the most keys (the mma kernel's order). */
    const int m0 = (gridDim.x - 1 - blockIdx.x) * kBQ;
    if (m0 >= rows) return;   /* uniform over the block */

    const KvSequence kv = kv_sequence<kPaged>(p, b, hk);
    const MaskSpec mask = mask_for_kv_head(p, hk, seqlen_q, kv.length);
    const KeyTiles<kBK> tiles(mask, m0 / group, (imin(m0 + kBQ, rows) - 1) / group);
    const unsigned short* k_base = (const unsigned short*)p.k + b * p.k_batch_stride + hk * p.k_head_stride;
    const unsigned short* v_base = (const unsigned short*)p.v + b * p.v_batch_stride + hk * p.v_head_stride;

    /* This lane's queries: column c_col of each of the wave's column tiles. */
    const int col = Mx::c_col(lane), wave_row0 = m0 + wave * kWaveRows;
    int row_lo[kNT], row_hi[kNT], row_sink[kNT];
    float row_max[kNT], row_sum[kNT];
    Frag qb[kNT][kQS];   /* Q^T as B fragments: column ab_mn(lane), k = dims ab_k(lane, e) */
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
        const int m = wave_row0 + nt * kT + col;
        mask.bounds(imin(m, rows - 1) / group, row_lo[nt], row_hi[nt], row_sink[nt]);
        row_max[nt] = -FMHA_INF;
        row_sum[nt] = 0.f;
        /* Rows past the tile's end read the last row (always present) and keep zeros: the
           loads stay unconditional. */
        const int qm = wave_row0 + nt * kT + Mx::ab_mn(lane), qr = imin(qm, rows - 1);
        const unsigned* q = (const unsigned*)((const unsigned short*)p.q + b * p.q_batch_stride +
                                              (hk * group + qr % group) * p.q_head_stride +
                                              (i64)(q_first + qr / group) * p.q_row_stride);
#pragma unroll
        for (int kk = 0; kk < kQS; ++kk)
#pragma unroll
            for (int w = 0; w < kW; ++w) {
                const unsigned x = q[(kk * Mx::kK + Mx::ab_k(lane, 2 * w)) / 2];
                qb[nt][kk][w] = qm < rows ? x : 0u;
            }
    }
    Acc acc[kDT][kNT];
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) acc[dt][nt] = Acc{};

    /* Logits stay in the units the product gives (raw Q.K, or c*log2(e)*tanh(.) with a soft cap)
       and `mul` takes them to base 2 inside the exponent: 2^(x*mul - max*mul). */
    const float cap_in = p.scale * p.q_descale * p.k_descale / p.soft_cap, cap_log2 = p.soft_cap * FMHA_LOG2E;
    const float mul = SoftCap ? 1.f : p.scale_log2;

    TileStage staged;
    if (tiles.count > 0) {
        staged.fetch(p, kv, k_base, v_base, tiles.first_key(0));
        staged.store(lds);
    }
    fmha_barrier();

    for (int t = 0; t < tiles.count; ++t) {
        if (t + 1 < tiles.count) staged.fetch(p, kv, k_base, v_base, tiles.first_key(t + 1));
        const unsigned* ks = lds + (t % kStages) * kStageWords;
        const unsigned* vt = ks + kKWords;
        const int j0 = tiles.first_key(t);

        /* S^T = K Q^T: A = K rows (keys ab_mn(lane), dims ab_k), B = the Q fragments. */
        Acc s[kMT][kNT];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
            for (int nt = 0; nt < kNT; ++nt) s[mt][nt] = Acc{};
            const unsigned* k_row = ks + (mt * kT + Mx::ab_mn(lane)) * (kKRow / 2);
#pragma unroll
            for (int kk = 0; kk < kQS; ++kk) {
                Frag ka;
#pragma unroll
                for (int w = 0; w < kW; ++w) ka[w] = k_row[(kk * Mx::kK + Mx::ab_k(lane, 2 * w)) / 2];
#pragma unroll
                for (int nt = 0; nt < kNT; ++nt) matrix_mma<Elem>(Mx{}, s[mt][nt], ka, qb[nt][kk]);
            }
#pragma unroll
            for (int nt = 0; nt < kNT; ++nt) settle(s[mt][nt]);
            sched_fence();   /* one key tile's K fragments live at a time */
        }

        /* Soft cap, mask, online softmax; P overwrites S. A query's keys lie in this lane's
           registers and in the lanes of the same column (xor kT, 2 kT, ...). */
        const bool all_visible = tiles.all_visible(j0);
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
            float tile_max = -FMHA_INF;
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
                for (int r = 0; r < Mx::kC; ++r) {
                    float x = s[mt][nt][r];
                    if (SoftCap) x = tanhf(x * cap_in) * cap_log2;
                    const int j = j0 + mt * kT + Mx::c_row(lane, r);
                    if (!all_visible && !visible(j, row_lo[nt], row_hi[nt], row_sink[nt])) x = -FMHA_INF;
                    s[mt][nt][r] = x;
                    tile_max = fmaxf(tile_max, x);
                }
#pragma unroll
            for (int o = kT; o < kWave; o *= 2) tile_max = fmaxf(tile_max, fmha_shfl_xor(tile_max, o));
            const float new_max = fmaxf(row_max[nt], tile_max);
            const float base = new_max == -FMHA_INF ? 0.f : new_max * mul;   /* nothing visible yet: all P are 0 */
            const float alpha = fmha_exp2(fmaf(row_max[nt], mul, -base));
            float sum = 0.f;
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
                for (int r = 0; r < Mx::kC; ++r) {
                    const float pv = fmha_exp2(fmaf(s[mt][nt][r], mul, -base));
                    s[mt][nt][r] = pv;
                    sum += pv;
                }
            row_sum[nt] = row_sum[nt] * alpha + sum;
            row_max[nt] = new_max;
#pragma unroll
            for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
                for (int r = 0; r < Mx::kC; ++r) acc[dt][nt][r] *= alpha;
        }

        /* O^T += V^T P^T: B = P^T from the S^T registers, A = V^T rows (dims ab_mn(lane)) at the
           keys that B's elements hold (p_key). */
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int sub = 0; sub < kSub; ++sub) {
                Frag pb[kNT];
#pragma unroll
                for (int nt = 0; nt < kNT; ++nt) pb[nt] = Mx::template to_b<Elem>(s[mt][nt], sub);
                const int key0 = mt * kT + Mx::p_key(lane, 0, sub);
#pragma unroll
                for (int dt = 0; dt < kDT; ++dt) {
                    const unsigned* v_row = vt + (dt * kT + Mx::ab_mn(lane)) * (kVRow / 2) + key0 / 2;
                    Frag va;
#pragma unroll
                    for (int w = 0; w < kW; ++w) va[w] = v_row[w];
#pragma unroll
                    for (int nt = 0; nt < kNT; ++nt) matrix_mma<Elem>(Mx{}, acc[dt][nt], va, pb[nt]);
                }
#pragma unroll
                for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
                    for (int nt = 0; nt < kNT; ++nt) settle(acc[dt][nt]);
                sched_fence();   /* one k-step's V^T fragments live at a time */
            }

        if (t + 1 < tiles.count) {
            if (kStages == 1) fmha_barrier();   /* every wave is done with the only stage */
            staged.store(lds + ((t + 1) % kStages) * kStageWords);
            fmha_barrier();
        }
    }

    /* Sink, normalisation, LSE, O. */
    const float* sinks = (const float*)p.sink_logits;
    float* lse = (float*)p.lse;
    unsigned short* o = (unsigned short*)p.o;
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
        float sum = row_sum[nt];
#pragma unroll
        for (int off = kT; off < kWave; off *= 2) sum += fmha_shfl_xor(sum, off);
        const int m = wave_row0 + nt * kT + col;
        if (m >= rows) continue;
        const int head = hk * group + m % group;
        const float row_m = row_max[nt] * mul;   /* base 2 */
        float top = row_m;
        if (p.has_sink) {
            const float sink = sinks[head] * FMHA_LOG2E;
            top = fmaxf(row_m, sink);
            sum = (row_m == -FMHA_INF ? 0.f : sum * fmha_exp2(row_m - top)) + fmha_exp2(sink - top);
        }
        const float f = row_m == -FMHA_INF ? 0.f : fmha_exp2(row_m - top) / sum * p.v_descale;
        const i64 token = q_first + m / group;
        if (p.has_lse && lane < kT)
            lse[b * p.lse_batch_stride + head * p.lse_head_stride + token] =
                sum > 0.f ? (top + log2f(sum)) * FMHA_LN2 : -FMHA_INF;
        unsigned short* dst = o + b * p.o_batch_stride + head * p.o_head_stride + token * p.o_row_stride;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
            for (int r = 0; r < Mx::kC; ++r) dst[dt * kT + Mx::c_row(lane, r)] = Elem::bits(acc[dt][nt][r] * f);
    }
}

}  // namespace fmha

/* LDS is static: AMD needs no opt-in for up to 64 KB (160 KB on gfx950), so the launch passes
   no dynamic size. Under the CPU emulation it is a static of this (non-inline) function. */
extern "C" __global__ void FMHA_LAUNCH_BOUNDS(fmha::kThreads) fmha_fwd_mfma(FmhaParams p)
{
    __shared__ unsigned lds[fmha::kLdsWords];
    fmha::attention<FMHA_SOFT_CAP != 0>(p, lds);
}
