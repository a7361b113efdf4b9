/* fmha_fwd_mfma.hip: attention forward on AMD matrix cores (MFMA on CDNA gfx90a/gfx942/gfx950,
   wave64; WMMA on RDNA3 gfx11 and RDNA4 gfx12, wave32), dense or paged K/V, fp16 / bf16, and
   fp8 e4m3 on the CDNA arches with fp8 MFMA (gfx942: e4m3fnuz, gfx950: e4m3fn).
   Same semantics, FmhaParams and grid as the portable and mma.sync kernels: block (x, y, z) =
   (tile of BLOCK_Q rows of the G = Hq/Hk query heads sharing KV head y, KV head, sequence);
   row m <-> (query position m / G, head y*G + m % G).

   NEVER RUN ON AN AMD GPU: none is available to this project. The source is compiled by clang
   for gfx90a, gfx942, gfx950, gfx1100 and gfx1201 (tests/test_mfma_compile.py; gfx950 needs clang >= 20)
   and its results are checked on the CPU emulation of the matrix instructions
   (fmha_amd_matrix.h, tests/test_mfma_emulated.py). Speed is unknown.

   Compile-time specialisation (-D): FMHA_DTYPE fp16 | bf16 | fp8_e4m3fnuz | fp8_e4m3fn,
   FMHA_HDIM_Q, FMHA_HDIM_V, FMHA_KV_SOURCE dense | paged, FMHA_MATRIX mfma32 | mfma16 |
   wmma_gfx11 | wmma_gfx12 | mfma32_fp8 | mfma16_fp8 (the instruction family, fmha_amd_matrix.h;
   it must match the arch, and the _fp8 ones the fp8 dtypes), FMHA_BLOCK_Q, FMHA_BLOCK_K,
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
   - K tiles live in LDS as [BLOCK_K][Dq + 8 bytes] (rows padded so the lanes of a fragment
     load, one row each, spread over the banks), V as V^T [Dv][BLOCK_K + 4 bytes], so the A
     fragments of both products read whole registers of consecutive elements (two 16-bit or four
     fp8 values). Global loads of tile t + 1 are issued into
     registers before tile t is computed and written to LDS after it (no async copy on these
     GPUs); with two stages one barrier per tile suffices. Absent keys (past the sequence,
     recycled pages) are zero-filled and never read from global memory.
   - Online softmax in base 2; only tiles that straddle a mask boundary are masked element-wise;
     tiles nobody sees are never visited (KeyTiles). P is rounded to the input type (validate's
     P precision "input") for P V; the row sums use the unrounded P.
   - fp8 (SPEC 5): Q K^T on the fp8 MFMA with fp32 accumulation, the logits scaled by
     scale * q_descale * k_descale (p.scale_log2); P V on the fp8 MFMA too, P rounded to the
     input's e4m3 after scaling by 2^kPScaleLog2 (7 for fnuz, 8 for fn, like FlashAttention-3's
     exponent offset of 8 for e4m3fn; fmha_amd_matrix.h), V as stored; the row sums use the
     unrounded scaled P; O = acc * 2^-kPScaleLog2 / l * v_descale, written as bf16. Why P in
     fp8 rather than P in 16 bits with V widened: the fp8 MFMA runs at twice the 16-bit rate,
     and widening V would leave half the FLOPs at the 16-bit rate (at most 4/3 of the fp16
     speed instead of 2x). The error this adds is within validate's "input" precision for fp8
     (u_p = 2^-4): each P keeps 4 significant bits down to 2^-14.
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
typedef Elem::storage Storage;   /* one input element: 16-bit or fp8 bits */
typedef Elem::Out Out;
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
/* A k-step of V^T P^T takes kK keys: a part of one S^T tile (kSub steps per tile), or, for
   mfma16_fp8 (kK = 2 kT), two whole tiles. */
constexpr int kTilesPerStep = Mx::kK > kT ? Mx::kK / kT : 1;
constexpr int kSub = kTilesPerStep > 1 ? 1 : kT / Mx::kK;
constexpr int kPerWord = 4 / (int)sizeof(Storage);   /* elements per 32-bit register or LDS word */
constexpr int kChunk = 16 / (int)sizeof(Storage);    /* elements per 16-byte global load */
constexpr int kW = Mx::kAB / kPerWord;    /* 32-bit registers of an A or B fragment */
typedef typename Mx::AB Frag;
typedef typename Mx::C Acc;
static_assert(sizeof(Frag) == Mx::kAB * sizeof(Storage), "FMHA_MATRIX's element width is FMHA_DTYPE's");
static_assert(kWaveRows % kT == 0 && kNT >= 1, "each wave owns a multiple of the instruction's rows");
static_assert(kBK % kT == 0 && kDv % kT == 0 && kDq % Mx::kK == 0, "tile and head dims: multiples of the instruction");
static_assert((kBK / kT) % kTilesPerStep == 0, "whole k-steps of V^T P^T per key tile");
static_assert(kDq % kChunk == 0 && kDv % kChunk == 0, "16-byte chunks of K/V rows");
static_assert(kStages == 1 || kStages == 2, "one or two LDS stages");

/* fp8: P enters P V scaled by 2^kPScaleLog2 (fmha_amd_matrix.h); the finish takes it out. */
constexpr float kPUnscale = 1.f / (float)(1 << Elem::kPScaleLog2);

/* LDS, in 32-bit words: kStages x (K [kBK][kKRow], V^T [kDv][kVRow]) elements. In a fragment
   load each lane of a column tile reads its own row; the padding (2 words for K, 1 for V^T)
   makes the K row stride 2 or 18 words mod 32 (twice an odd number: 16 consecutive rows start
   on 16 different even banks) and the V^T row stride odd, so those lanes spread over the 32
   banks. Mirrored by kernels_mfma.lds_bytes. */
constexpr int kKRow = kDq + 2 * kPerWord, kVRow = kBK + kPerWord;
constexpr int kKWords = kBK * kKRow / kPerWord, kVWords = kDv * kVRow / kPerWord;
constexpr int kStageWords = kKWords + kVWords;
constexpr int kLdsWords = kStages * kStageWords;

/* Register staging of one K/V tile: K as 16-byte chunks (row, chunk); V as groups of kPerWord
   16-byte chunks of consecutive keys, so each V^T word written to LDS holds kPerWord keys of one
   dim. */
constexpr int kKChunks = kBK * (kDq / kChunk), kVGroups = (kBK / kPerWord) * (kDv / kChunk);
constexpr int kKLoads = (kKChunks + kThreads - 1) / kThreads, kVLoads = (kVGroups + kThreads - 1) / kThreads;
static_assert(kBK % kPerWord == 0, "V is staged kPerWord keys at a time");

/* Element e of four 32-bit words (a 16-byte chunk). */
FMHA_DEVICE unsigned element_of(const unsigned (&words)[4], int e)
{
    constexpr int bits = 8 * (int)sizeof(Storage);
    return words[e / kPerWord] >> (bits * (e % kPerWord)) & ((1u << bits) - 1u);
}

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

/* 16 bytes at base + offset + chunk * kChunk, zeros for an absent key (offset -1). The load
   itself is unconditional (an absent key reads the head's first row, which exists whenever a
   tile is loaded, and drops it): per-chunk branches made the compiler stage the chunks in scratch. */
FMHA_DEVICE uint4 load_chunk(const Storage* base, i64 offset, int chunk)
{
    const uint4 x = *(const uint4*)(base + (offset >= 0 ? offset : 0) + chunk * kChunk);
    const bool present = offset >= 0;
    return uint4{present ? x.x : 0u, present ? x.y : 0u, present ? x.z : 0u, present ? x.w : 0u};
}

struct TileStage {
    uint4 k[kKLoads], v[kVLoads][kPerWord];

    /* Global -> registers: tile of keys j0 .. j0 + kBK - 1. */
    FMHA_DEVICE void fetch(const FmhaParams& p, const KvSequence& kv, const Storage* k_base, const Storage* v_base,
                           int j0)
    {
#pragma unroll
        for (int i = 0; i < kKLoads; ++i) {
            const int c = threadIdx.x + i * kThreads, r = c / (kDq / kChunk);
            if (c < kKChunks)
                k[i] = load_chunk(k_base, key_offset(p, kv, j0 + r, p.k_page_stride, p.k_row_stride),
                                  c % (kDq / kChunk));
        }
#pragma unroll
        for (int i = 0; i < kVLoads; ++i) {
            const int c = threadIdx.x + i * kThreads, r = kPerWord * (c / (kDv / kChunk)), chunk = c % (kDv / kChunk);
            if (c < kVGroups)
#pragma unroll
                for (int h = 0; h < kPerWord; ++h)
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
                unsigned* dst = stage + (c / (kDq / kChunk)) * (kKRow / kPerWord) + c % (kDq / kChunk) * 4;
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
            if (c < kVGroups) {
                const int key_group = c / (kDv / kChunk), d0 = c % (kDv / kChunk) * kChunk;
                unsigned keys[kPerWord][4];
#pragma unroll
                for (int h = 0; h < kPerWord; ++h) {
                    keys[h][0] = v[i][h].x;
                    keys[h][1] = v[i][h].y;
                    keys[h][2] = v[i][h].z;
                    keys[h][3] = v[i][h].w;
                }
#pragma unroll
                for (int d = 0; d < kChunk; ++d) {   /* dim d0 + d of keys kPerWord key_group + h */
                    unsigned word = 0;
#pragma unroll
                    for (int h = 0; h < kPerWord; ++h) word |= element_of(keys[h], d) << (32 / kPerWord * h);
                    vt[(d0 + d) * (kVRow / kPerWord) + key_group] = word;
                }
            }
        }
    }
};

/* P^T's B fragment of the k-step (mt, sub) for column tile nt: the family's to_b of one S^T
   tile, or of the two tiles mt, mt + 1 that a k-step of mfma16_fp8 spans. A template so that the
   branch a family does not take is never instantiated. */
template <class M>
FMHA_DEVICE typename M::AB p_fragment(const typename M::C (&s)[kMT][kNT], int mt, int nt, int sub)
{
    if constexpr (kTilesPerStep == 1)
        return M::template to_b<Elem>(s[mt][nt], sub);
    else
        return M::template to_b<Elem>(s[mt][nt], s[mt + 1][nt]);
}

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
    const Storage* k_base = (const Storage*)p.k + b * p.k_batch_stride + hk * p.k_head_stride;
    const Storage* v_base = (const Storage*)p.v + b * p.v_batch_stride + hk * p.v_head_stride;

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
        const unsigned* q = (const unsigned*)((const Storage*)p.q + b * p.q_batch_stride +
                                              (hk * group + qr % group) * p.q_head_stride +
                                              (i64)(q_first + qr / group) * p.q_row_stride);
#pragma unroll
        for (int kk = 0; kk < kQS; ++kk)
#pragma unroll
            for (int w = 0; w < kW; ++w) {
                const unsigned x = q[(kk * Mx::kK + Mx::ab_k(lane, kPerWord * w)) / kPerWord];
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
            const unsigned* k_row = ks + (mt * kT + Mx::ab_mn(lane)) * (kKRow / kPerWord);
#pragma unroll
            for (int kk = 0; kk < kQS; ++kk) {
                Frag ka;
#pragma unroll
                for (int w = 0; w < kW; ++w) ka[w] = k_row[(kk * Mx::kK + Mx::ab_k(lane, kPerWord * w)) / kPerWord];
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
            const float p_base = base - (float)Elem::kPScaleLog2;            /* P scaled by 2^kPScaleLog2 */
            float sum = 0.f;
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
                for (int r = 0; r < Mx::kC; ++r) {
                    const float pv = fmha_exp2(fmaf(s[mt][nt][r], mul, -p_base));
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
           keys that B's elements hold (p_key). Each register's elements are consecutive keys, and
           register w's first key lies the same distance past register 0's in every lane and
           k-step, so that distance is taken at lane 0, k-step 0: a constant (the lane's own
           p_key left a few address instructions in the 16-bit instances). */
#pragma unroll
        for (int mt = 0; mt < kMT; mt += kTilesPerStep)
#pragma unroll
            for (int sub = 0; sub < kSub; ++sub) {
                Frag pb[kNT];
#pragma unroll
                for (int nt = 0; nt < kNT; ++nt) pb[nt] = p_fragment<Mx>(s, mt, nt, sub);
                const int key0 = mt * kT + Mx::p_key(lane, 0, sub);
#pragma unroll
                for (int dt = 0; dt < kDT; ++dt) {
                    const unsigned* v_row = vt + (dt * kT + Mx::ab_mn(lane)) * (kVRow / kPerWord) + key0 / kPerWord;
                    Frag va;
#pragma unroll
                    for (int w = 0; w < kW; ++w)
                        va[w] = v_row[(Mx::p_key(0, kPerWord * w, 0) - Mx::p_key(0, 0, 0)) / kPerWord];
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

    /* Sink, normalisation, LSE, O (16-bit elements of the output type). */
    const float* sinks = (const float*)p.sink_logits;
    float* lse = (float*)p.lse;
    unsigned short* o = (unsigned short*)p.o;
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
        float sum = row_sum[nt];
#pragma unroll
        for (int off = kT; off < kWave; off *= 2) sum += fmha_shfl_xor(sum, off);
        sum *= kPUnscale;   /* exact: a power of two */
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
        const float f = row_m == -FMHA_INF ? 0.f : fmha_exp2(row_m - top) / sum * p.v_descale * kPUnscale;
        const i64 token = q_first + m / group;
        if (p.has_lse && lane < kT)
            lse[b * p.lse_batch_stride + head * p.lse_head_stride + token] =
                sum > 0.f ? (top + log2f(sum)) * FMHA_LN2 : -FMHA_INF;
        unsigned short* dst = o + b * p.o_batch_stride + head * p.o_head_stride + token * p.o_row_stride;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
            for (int r = 0; r < Mx::kC; ++r) dst[dt * kT + Mx::c_row(lane, r)] = Out::bits(acc[dt][nt][r] * f);
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
