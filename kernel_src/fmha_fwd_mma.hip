/* fmha_fwd_mma.hip: attention forward on NVIDIA tensor cores (mma.sync m16n8k16, sm_80+),
   dense or paged K/V, fp16 / bf16. Same semantics, parameters and work decomposition as the
   portable kernel (fmha_fwd.hip): block (x, y, z) = (tile of BLOCK_Q rows of the G = Hq/Hk query
   heads sharing KV head y, KV head, sequence); row m <-> (query position m / G, head y*G + m % G).

   Compile-time specialisation (-D): FMHA_DTYPE fp16 | bf16, FMHA_HDIM_Q, FMHA_HDIM_V (multiples
   of 16, >= 64), FMHA_KV_SOURCE dense | paged, FMHA_BLOCK_Q, FMHA_BLOCK_K, FMHA_WARPS,
   FMHA_SOFT_CAP 0 | 1 (the tanh path; the cap itself is a run-time field).

   Algorithm (FlashAttention-2 style):
   - Each warp owns BLOCK_Q / WARPS query rows (16 or 32: one or two m16 tiles) for the whole key
     loop, so softmax statistics and the O accumulator stay in registers and no block-wide
     reduction is needed.
   - Q, and K/V tiles in two stages, live in shared memory as raw 16-bit values, 16-byte chunks
     XOR-swizzled by row (chunk ^ row % 8) so ldmatrix reads 8 rows without bank conflicts.
     cp.async fetches tile t+1 (both K and V) while tile t is computed; absent keys (past the
     sequence, recycled pages) are zero-filled by cp.async's src-size 0 and never read from
     global memory.
   - S = Q K^T: ldmatrix (Q rows as the A operand, K rows as the "col" B operand), fp32 accumulate.
   - Online softmax in base 2 on the accumulator fragments: a row's 8-wide pieces sit in the 4
     lanes of a quad, so row max/sum need two shuffles. Only tiles that straddle a mask boundary
     are masked element-wise; tiles nobody sees are never visited (KeyTiles).
   - P is rounded to the input type (P precision "input" in validate.py) and reused directly as
     the A operand of O += P V (the accumulator layout of two n8 tiles is the A layout of one k16
     step); V comes through ldmatrix.trans.
   - Finish as the portable kernel: learned sink, 1/l, v_descale, LSE in natural log, O = 0 and
     LSE = -inf (or the sink logit) for a row that sees nothing. */
#include "fmha_port.h"
#include "fmha_params.h"
#include "fmha_fwd_common.h"
#include "fmha_mma_sync.h"

#if !defined(FMHA_CUDA)
#error "fmha_fwd_mma.hip uses NVIDIA mma.sync: build it for sm_80 and newer only"
#endif
#if !defined(FMHA_DTYPE) || !defined(FMHA_HDIM_Q) || !defined(FMHA_HDIM_V) || !defined(FMHA_KV_SOURCE) || \
    !defined(FMHA_BLOCK_Q) || !defined(FMHA_BLOCK_K) || !defined(FMHA_WARPS) || !defined(FMHA_SOFT_CAP)
#error "fmha_fwd_mma.hip needs -D FMHA_DTYPE, FMHA_HDIM_Q/V, FMHA_KV_SOURCE, FMHA_BLOCK_Q/K, FMHA_WARPS, FMHA_SOFT_CAP"
#endif

#define FMHA_CAT_(a, b) a##b
#define FMHA_CAT(a, b) FMHA_CAT_(a, b)

namespace fmha {

/* ------------------------------------------------------------------ element types */
struct kv_dense { static constexpr bool paged = false; };
struct kv_paged { static constexpr bool paged = true; };

typedef FMHA_CAT(mma_, FMHA_DTYPE) Mma;
typedef unsigned short InT;   /* fp16 and bf16 both travel as 16-bit patterns */
constexpr bool kPaged = FMHA_CAT(kv_, FMHA_KV_SOURCE)::paged;

/* ------------------------------------------------------------------ tile geometry */
constexpr int kDq = FMHA_HDIM_Q, kDv = FMHA_HDIM_V;
constexpr int kBQ = FMHA_BLOCK_Q, kBK = FMHA_BLOCK_K, kWarps = FMHA_WARPS, kThreads = 32 * kWarps;
constexpr int kWarpRows = kBQ / kWarps;   /* query rows per warp */
constexpr int kMT = kWarpRows / 16;       /* m16 tiles per warp */
constexpr int kNT = kBK / 8;              /* n8 tiles of S per warp */
constexpr int kKS = kDq / 16;             /* k16 steps of Q K^T */
constexpr int kDT = kDv / 8;              /* n8 tiles of O */
constexpr int kPS = kBK / 16;             /* k16 steps of P V */
static_assert(kWarpRows % 16 == 0 && kMT >= 1 && kMT <= 2, "each warp owns 16 or 32 rows");
/* Head dims of at least 64 give every row 8 or more chunks, which the swizzle needs. */
static_assert(kDq % 16 == 0 && kDv % 16 == 0 && kDq >= 64 && kDv >= 64, "head dims: multiples of 16, >= 64");
static_assert(kBK % 16 == 0, "BLOCK_K: a multiple of 16");

/* A warp of one m16 tile keeps its Q fragments in registers for the whole key loop (kKS x 4
   registers) when that fits beside S and O; otherwise they are re-read from shared memory. */
constexpr bool kQInRegs = kMT == 1 && kDq <= 128;

/* Shared memory, in 16-bit elements: Q [kBQ][kDq], then two stages of K [kBK][kDq] and V [kBK][kDv]. */
constexpr int kQElems = kBQ * kDq, kKElems = kBK * kDq, kVElems = kBK * kDv;
constexpr int kSmemBytes = 2 * (kQElems + 2 * kKElems + 2 * kVElems);

/* ------------------------------------------------------------------ tile loads */
/* K or V rows of key tile j0 into a swizzled [kBK][D] stage, one 16-byte chunk per copy. */
template <int D>
FMHA_DEVICE void load_kv_tile_async(InT* stage, const FmhaParams& p, const KvSequence& kv, const InT* base,
                                    i64 page_stride, i64 row_stride, int j0)
{
    constexpr int kChunks = D / 8;
    for (int c = threadIdx.x; c < kBK * kChunks; c += kThreads) {
        const int r = c / kChunks, chunk = c % kChunks;
        int page, slot;
        locate_key<kPaged>(p, kv, j0 + r, page, slot);
        const bool present = page >= 0;
        const InT* src = present ? base + page * page_stride + slot * row_stride + chunk * 8 : base;
        copy16_async(stage + swizzle<D>(r, chunk), src, present);
    }
}

}  // namespace fmha

namespace fmha {

/* One block's attention. SoftCap is an instance flag (FMHA_SOFT_CAP) so the common path carries
   no tanh code and no registers for it. */
template <bool SoftCap>
FMHA_DEVICE void attention(const FmhaParams& p, InT* smem)
{
    InT* const sq = smem;
    InT* const sk = sq + kQElems;            /* stage s at sk + s * kKElems */
    InT* const sv = sk + 2 * kKElems;        /* stage s at sv + s * kVElems */

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int b = blockIdx.z, hk = blockIdx.y;
    const int group = p.nhead_q / p.nhead_k;
    int q_first = 0, seqlen_q = p.max_seqlen_q;
    if (p.group_mode) {
        const int* seqstart = (const int*)p.seqstart_q;
        q_first = seqstart[b];
        seqlen_q = seqstart[b + 1] - q_first;
    }
    const int rows = seqlen_q * group;
    /* Last row tiles first: under a causal mask they see the most keys, and starting the longest
       blocks first shortens the tail of the grid. */
    const int m0 = (gridDim.x - 1 - blockIdx.x) * kBQ;
    if (m0 >= rows) return;   /* uniform over the block */

    const KvSequence kv = kv_sequence<kPaged>(p, b, hk);
    const MaskSpec mask = mask_for_kv_head(p, hk, seqlen_q, kv.length);
    const KeyTiles<kBK> tiles(mask, m0 / group, (imin(m0 + kBQ, rows) - 1) / group);
    const InT* k_base = (const InT*)p.k + b * p.k_batch_stride + hk * p.k_head_stride;
    const InT* v_base = (const InT*)p.v + b * p.v_batch_stride + hk * p.v_head_stride;

    /* Q tile (absent rows zero-filled) and the first K/V tile: copy group 0. */
    {
        constexpr int kChunks = kDq / 8;
        const InT* q = (const InT*)p.q;
        for (int c = tid; c < kBQ * kChunks; c += kThreads) {
            const int r = c / kChunks, chunk = c % kChunks, m = m0 + r;
            const bool present = m < rows;
            const InT* src = q;
            if (present) {
                const int h = hk * group + m % group;
                src = q + b * p.q_batch_stride + h * p.q_head_stride + (i64)(q_first + m / group) * p.q_row_stride +
                      chunk * 8;
            }
            copy16_async(sq + swizzle<kDq>(r, chunk), src, present);
        }
    }
    if (tiles.count > 0) {
        load_kv_tile_async<kDq>(sk, p, kv, k_base, p.k_page_stride, p.k_row_stride, tiles.first_key(0));
        load_kv_tile_async<kDv>(sv, p, kv, v_base, p.v_page_stride, p.v_row_stride, tiles.first_key(0));
    }
    commit_copies();

    /* Per-lane rows: for m16 tile mt, rows g and g + 8 of it (g = lane / 4); columns 2 * (lane % 4) + {0, 1}. */
    const int g = lane / 4, quad_col = 2 * (lane % 4);
    const int warp_row0 = warp * kWarpRows;
    int row_lo[kMT][2], row_hi[kMT][2], row_sink[kMT][2];
    float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + warp_row0 + mt * 16 + g + 8 * h;
            mask.bounds(imin(m, rows - 1) / group, row_lo[mt][h], row_hi[mt][h], row_sink[mt][h]);
            row_max[mt][h] = -FMHA_INF;
            row_sum[mt][h] = 0.f;
        }
    float acc[kMT][kDT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][dt][e] = 0.f;

    /* Logits stay in the units the mma produced (raw Q.K, or c*log2(e)*tanh(.) with a soft cap)
       and `mul` takes them to base 2 inside the exponent's FFMA: 2^(x*mul - max*mul). */
    const float cap = p.soft_cap;
    const float cap_in = p.scale * p.q_descale * p.k_descale / cap, cap_log2 = cap * FMHA_LOG2E;
    const float mul = SoftCap ? 1.f : p.scale_log2;
    unsigned qreg[kQInRegs ? kKS : 1][4];

    for (int t = 0; t < tiles.count; ++t) {
        const int stage = t & 1;
        if (t + 1 < tiles.count) {
            const int j_next = tiles.first_key(t + 1);
            load_kv_tile_async<kDq>(sk + (stage ^ 1) * kKElems, p, kv, k_base, p.k_page_stride, p.k_row_stride, j_next);
            load_kv_tile_async<kDv>(sv + (stage ^ 1) * kVElems, p, kv, v_base, p.v_page_stride, p.v_row_stride, j_next);
            commit_copies();
            wait_copies<1>();
        } else {
            wait_copies<0>();
        }
        fmha_barrier();
        const InT* ks = sk + stage * kKElems;
        const InT* vs = sv + stage * kVElems;
        const int j0 = tiles.first_key(t);

        if (kQInRegs && t == 0) {
#pragma unroll
            for (int kk = 0; kk < kKS; ++kk)
                ldmatrix_x4(qreg[kQInRegs ? kk : 0], sq + swizzle<kDq>(warp_row0 + lane % 16, kk * 2 + lane / 16));
        }

        /* S = Q K^T */
        float s[kMT][kNT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < kKS; ++kk) {
            unsigned qa[kMT][4];
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
                if (kQInRegs) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) qa[mt][i] = qreg[kQInRegs ? kk : 0][i];
                } else {
                    ldmatrix_x4(qa[mt], sq + swizzle<kDq>(warp_row0 + mt * 16 + lane % 16, kk * 2 + lane / 16));
                }
            }
#pragma unroll
            for (int np = 0; np < kNT / 2; ++np) {
                unsigned kb[4];
                ldmatrix_x4(kb, ks + swizzle<kDq>(np * 16 + lane % 8 + 8 * (lane / 16), kk * 2 + (lane / 8) % 2));
#pragma unroll
                for (int mt = 0; mt < kMT; ++mt) {
                    Mma::mma(s[mt][2 * np], qa[mt], kb);
                    Mma::mma(s[mt][2 * np + 1], qa[mt], kb + 2);
                }
            }
        }

        /* Soft cap, mask, online softmax; P overwrites S. */
        const bool all_visible = tiles.all_visible(j0);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float tile_max = -FMHA_INF;
#pragma unroll
                for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        float x = s[mt][nt][2 * h + e];
                        if (SoftCap) x = tanhf(x * cap_in) * cap_log2;
                        if (!all_visible &&
                            !visible(j0 + nt * 8 + quad_col + e, row_lo[mt][h], row_hi[mt][h], row_sink[mt][h]))
                            x = -FMHA_INF;
                        s[mt][nt][2 * h + e] = x;
                        tile_max = fmaxf(tile_max, x);
                    }
                tile_max = fmaxf(tile_max, fmha_shfl_xor(tile_max, 1));
                tile_max = fmaxf(tile_max, fmha_shfl_xor(tile_max, 2));
                const float new_max = fmaxf(row_max[mt][h], tile_max);
                const float base = new_max == -FMHA_INF ? 0.f : new_max * mul;  /* nothing visible yet: all P are 0 */
                const float alpha = exp2_approx(fmaf(row_max[mt][h], mul, -base));
                float sum = 0.f;
#pragma unroll
                for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const float pv = exp2_approx(fmaf(s[mt][nt][2 * h + e], mul, -base));
                        s[mt][nt][2 * h + e] = pv;
                        sum += pv;
                    }
                row_sum[mt][h] = row_sum[mt][h] * alpha + sum;
                row_max[mt][h] = new_max;
#pragma unroll
                for (int dt = 0; dt < kDT; ++dt) {
                    acc[mt][dt][2 * h] *= alpha;
                    acc[mt][dt][2 * h + 1] *= alpha;
                }
            }

        /* O += P V */
#pragma unroll
        for (int kk = 0; kk < kPS; ++kk) {
            unsigned pa[kMT][4];
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
                pa[mt][0] = Mma::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                pa[mt][1] = Mma::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                pa[mt][2] = Mma::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                pa[mt][3] = Mma::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < kDT / 2; ++dp) {
                unsigned vb[4];
                ldmatrix_x4_trans(vb, vs + swizzle<kDv>(kk * 16 + lane % 8 + 8 * ((lane / 8) % 2), dp * 2 + lane / 16));
#pragma unroll
                for (int mt = 0; mt < kMT; ++mt) {
                    Mma::mma(acc[mt][2 * dp], pa[mt], vb);
                    Mma::mma(acc[mt][2 * dp + 1], pa[mt], vb + 2);
                }
            }
        }
        fmha_barrier();   /* every warp is done with this stage before the next prefetch overwrites it */
    }
    wait_copies<0>();     /* no tile at all: the Q copy group is still retired before exit */

    /* Sink, normalisation, LSE, O. */
    const float* sinks = (const float*)p.sink_logits;
    float* lse = (float*)p.lse;
    unsigned short* o = (unsigned short*)p.o;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float sum = row_sum[mt][h];
            sum += fmha_shfl_xor(sum, 1);
            sum += fmha_shfl_xor(sum, 2);
            const int m = m0 + warp_row0 + mt * 16 + g + 8 * h;
            if (m >= rows) continue;
            const int head = hk * group + m % group;
            const float row_m = row_max[mt][h] * mul;   /* base 2 */
            float top = row_m;
            if (p.has_sink) {
                const float sink = sinks[head] * FMHA_LOG2E;
                top = fmaxf(row_m, sink);
                sum = (row_m == -FMHA_INF ? 0.f : sum * exp2_approx(row_m - top)) + exp2_approx(sink - top);
            }
            const float f = row_m == -FMHA_INF ? 0.f : exp2_approx(row_m - top) / sum * p.v_descale;
            const i64 token = q_first + m / group;
            if (p.has_lse && lane % 4 == 0)
                lse[b * p.lse_batch_stride + head * p.lse_head_stride + token] =
                    sum > 0.f ? (top + log2f(sum)) * FMHA_LN2 : -FMHA_INF;
            unsigned short* dst = o + b * p.o_batch_stride + head * p.o_head_stride + token * p.o_row_stride;
#pragma unroll
            for (int dt = 0; dt < kDT; ++dt)
                *(unsigned*)(dst + dt * 8 + quad_col) = Mma::pack(acc[mt][dt][2 * h] * f, acc[mt][dt][2 * h + 1] * f);
        }
}

}  // namespace fmha

extern "C" __global__ void __launch_bounds__(FMHA_WARPS * 32, 1) fmha_fwd_mma(FmhaParams p)
{
    extern __shared__ __align__(128) fmha::InT smem[];
    fmha::attention<FMHA_SOFT_CAP != 0>(p, smem);
}
