/* fmha_fwd_mma.hip: attention forward on NVIDIA tensor cores (mma.sync m16n8k16, sm_80+),
   dense or paged K/V, fp16 / bf16. Same semantics, parameters and work decomposition as the
   portable kernel (fmha_fwd.hip): block (x, y, z) = (tile of BLOCK_Q rows of the G = Hq/Hk query
   heads sharing KV head y, KV head, sequence); row m <-> (query position m / G, head y*G + m % G).

   Compile-time specialisation (-D): FMHA_DTYPE fp16 | bf16, FMHA_HDIM_Q, FMHA_HDIM_V (multiples
   of 16, >= 64), FMHA_KV_SOURCE dense | paged, FMHA_BLOCK_Q, FMHA_BLOCK_K, FMHA_WARPS,
   FMHA_SOFT_CAP 0 | 1 (the tanh path; the cap itself is a run-time field), optional
   FMHA_PERSISTENT 0 | 1 (below). Also builds for the CPU emulation (-DFMHA_CPU_EMULATION,
   tests/test_mma_emulated.py, tests/test_mixed_emulated.py).

   One block's attention is a work item (fmha_work_plan.h): rows [row_begin, row_end) of one
   (sequence, KV head), keys [key_begin, key_end), final output or an fp32 partial slot.
   - FMHA_PERSISTENT 0, entry fmha_fwd_mma(FmhaParams): the grid above, block = one item with
     every key and the final output.
   - FMHA_PERSISTENT 1, entry fmha_fwd_mma_persistent(FmhaMixedArgs): a fixed grid whose block x
     runs the items the plan gives it (family mixed: prefill and decode requests in one launch,
     SPEC 9); items whose rows were split over key chunks write partials (no sink) that
     fmha_combine.hip's fmha_merge_items combines. Partial writes exist only in these instances.

   Algorithm (FlashAttention-2 style):
   - Each warp owns BLOCK_Q / WARPS query rows (16 or 32: one or two m16 tiles) for the whole key
     loop, so softmax statistics and the O accumulator stay in registers and no block-wide
     reduction is needed.
   - Q, and K/V tiles in two stages, live in shared memory as raw 16-bit values, 16-byte chunks
     XOR-swizzled by row (chunk ^ row % 8) so ldmatrix reads 8 rows without bank conflicts.
     cp.async fetches tile t+1 (both K and V) while tile t is computed; absent keys (past the
     sequence, recycled pages) are zero-filled by cp.async's src-size 0 and never read from
     global memory. Paged: each tile's row locations are resolved once, two tiles ahead, into a
     small static shared table (PagedRows), not per 16-byte chunk.
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
#include "fmha_tc_common.h"
#include "fmha_work_plan.h"

#ifndef FMHA_PERSISTENT
#define FMHA_PERSISTENT 0
#endif

#if !defined(FMHA_CUDA) && !defined(FMHA_CPU_EMULATION)
#error "fmha_fwd_mma.hip uses NVIDIA mma.sync: build it for sm_80 and newer only (or -DFMHA_CPU_EMULATION for tests)"
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
constexpr bool kPersistent = FMHA_PERSISTENT != 0;

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
/* Where row r of a key tile lives: rows(r, offset) -> present, offset in elements from the
   (sequence, KV head) base of K or V. Absent rows (past the sequence, recycled pages) are
   zero-filled and never read. */
template <int D, class Rows>
FMHA_DEVICE void load_kv_tile_async(InT* stage, const InT* base, const Rows& rows)
{
    constexpr int kChunks = D / 8;
    for (int c = threadIdx.x; c < kBK * kChunks; c += kThreads) {
        const int r = c / kChunks, chunk = c % kChunks;
        i64 offset;
        const bool present = rows(r, offset);
        copy16_async(stage + swizzle<D>(r, chunk), present ? base + offset + chunk * 8 : base, present);
    }
}

/* Dense K/V: row r of the tile at key j0 is row first_row + j0 + r. The offset is computed even
   for an absent row (then unused): branching around it cost the dense instances registers. */
struct DenseRows {
    const KvSequence& kv;
    int j0;
    i64 row_stride;
    FMHA_DEVICE bool operator()(int r, i64& offset) const
    {
        const int j = j0 + r;
        offset = (kv.first_row + j) * row_stride;
        return j < kv.length;
    }
};

/* Paged K/V: a key's page costs an integer divide and a dependent page-table load, too much to
   repeat for each of a row's D / 8 chunks in an issue-bound kernel. So one pass of the block
   resolves a tile's rows into shared memory (K and V offsets, -1 = absent) two tiles ahead, and
   the chunk copies read them: slot t % 2 holds tile t. */
struct PagedRows {
    i64 k[2][kBK], v[2][kBK];

    FMHA_DEVICE void resolve(int t, int j0, const FmhaParams& p, const KvSequence& kv)
    {
        for (int r = threadIdx.x; r < kBK; r += kThreads) {
            int page, slot;
            locate_key<true>(p, kv, j0 + r, page, slot);
            k[t & 1][r] = page >= 0 ? page * p.k_page_stride + slot * p.k_row_stride : -1;
            v[t & 1][r] = page >= 0 ? page * p.v_page_stride + slot * p.v_row_stride : -1;
        }
    }
};

struct ResolvedRows {
    const i64* offsets;
    FMHA_DEVICE bool operator()(int r, i64& offset) const
    {
        offset = offsets[r];
        return offset >= 0;
    }
};

struct NoRowTable {};   /* dense: nothing to resolve ahead */

/* One work item's attention (rows of one (sequence, KV head) of a query sequence starting at row
   q_first with seqlen_q positions). SoftCap is an instance flag (FMHA_SOFT_CAP) so the common path
   carries no tanh code and no registers for it. RowTable: PagedRows in shared memory, or NoRowTable. */
template <bool SoftCap, class RowTable>
FMHA_DEVICE void attention(const FmhaParams& p, const WorkItem& item, int q_first, int seqlen_q,
                           const PartialSlots& partials, InT* smem, RowTable& row_table)
{
    InT* const sq = smem;
    InT* const sk = sq + kQElems;            /* stage s at sk + s * kKElems */
    InT* const sv = sk + 2 * kKElems;        /* stage s at sv + s * kVElems */

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int b = item.seq, hk = item.kv_head;
    const int group = p.nhead_q / p.nhead_k;
    const int m0 = item.row_begin, row_end = item.row_end;
    const bool partial = kPersistent && item.slot >= 0;   /* uniform over the block */

    const KvSequence kv = kv_sequence<kPaged>(p, b, hk);
    const MaskSpec mask = mask_for_kv_head(p, hk, seqlen_q, kv.length);
    const KeyTiles<kBK> all_tiles(mask, m0 / group, (imin(m0 + kBQ, row_end) - 1) / group);
    /* only persistent items have a key range to cut to */
    const TileList<kBK> tiles =
        kPersistent ? TileList<kBK>(all_tiles, item.key_begin, item.key_end) : TileList<kBK>(all_tiles);
    const InT* k_base = (const InT*)p.k + b * p.k_batch_stride + hk * p.k_head_stride;
    const InT* v_base = (const InT*)p.v + b * p.v_batch_stride + hk * p.v_head_stride;
    auto load_tile = [&](int t, int stage) {
        InT* const k_stage = sk + stage * kKElems;
        InT* const v_stage = sv + stage * kVElems;
        if constexpr (kPaged) {
            load_kv_tile_async<kDq>(k_stage, k_base, ResolvedRows{row_table.k[t & 1]});
            load_kv_tile_async<kDv>(v_stage, v_base, ResolvedRows{row_table.v[t & 1]});
        } else {
            load_kv_tile_async<kDq>(k_stage, k_base, DenseRows{kv, tiles.first_key(t), p.k_row_stride});
            load_kv_tile_async<kDv>(v_stage, v_base, DenseRows{kv, tiles.first_key(t), p.v_row_stride});
        }
    };

    /* Q tile (absent rows zero-filled) and the first K/V tile: copy group 0. */
    {
        constexpr int kChunks = kDq / 8;
        const InT* q = (const InT*)p.q;
        for (int c = tid; c < kBQ * kChunks; c += kThreads) {
            const int r = c / kChunks, chunk = c % kChunks, m = m0 + r;
            const bool present = m < row_end;
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
        if constexpr (kPaged) {
            for (int t = 0; t < imin(tiles.count, 2); ++t) row_table.resolve(t, tiles.first_key(t), p, kv);
            fmha_barrier();
        }
        load_tile(0, 0);
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
            mask.bounds(imin(m, row_end - 1) / group, row_lo[mt][h], row_hi[mt][h], row_sink[mt][h]);
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
            load_tile(t + 1, stage ^ 1);
            commit_copies();
            wait_copies<1>();
        } else {
            wait_copies<0>();
        }
        fmha_barrier();
        /* Tile t's row slot was last read when tile t was loaded, before this barrier; the
           barrier that ends this step publishes it before tile t + 2 is loaded. */
        if constexpr (kPaged)
            if (t + 2 < tiles.count) row_table.resolve(t + 2, tiles.first_key(t + 2), p, kv);
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
        const bool all_visible = all_tiles.all_visible(j0);
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

    /* Sink (not in a partial: the merge adds it once), normalisation, LSE, O. */
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
            if (m >= row_end) continue;
            const int head = hk * group + m % group;
            float row_lse;
            const float f = finish_row(p, head, row_max[mt][h] * mul, sum, !partial, p.v_descale, row_lse);
            if (partial) {
                const i64 at = (i64)item.slot * kBQ + (m - m0);
                if (lane % 4 == 0) partials.lse[at] = row_lse;
                float* dst = partials.o + at * kDv + quad_col;
#pragma unroll
                for (int dt = 0; dt < kDT; ++dt) {
                    dst[dt * 8] = acc[mt][dt][2 * h] * f;
                    dst[dt * 8 + 1] = acc[mt][dt][2 * h + 1] * f;
                }
                continue;
            }
            const i64 token = q_first + m / group;
            if (p.has_lse && lane % 4 == 0) lse[b * p.lse_batch_stride + head * p.lse_head_stride + token] = row_lse;
            unsigned short* dst = o + b * p.o_batch_stride + head * p.o_head_stride + token * p.o_row_stride;
#pragma unroll
            for (int dt = 0; dt < kDT; ++dt)
                *(unsigned*)(dst + dt * 8 + quad_col) = Mma::pack(acc[mt][dt][2 * h] * f, acc[mt][dt][2 * h + 1] * f);
        }
}

/* The paged row table is static shared memory beside the dynamic tiles, so the launch's dynamic
   size (kernels_mma.shared_bytes) stays that of the tiles. Internal linkage: under the CPU
   emulation the table is a function-local static, which the loader would otherwise merge across
   the instances a test process loads (STB_GNU_UNIQUE), whatever their BLOCK_K. */
template <bool Paged, class Body>
static FMHA_DEVICE void with_row_table(const Body& body)
{
    if constexpr (Paged) {
        __shared__ PagedRows row_table;
        body(row_table);
    } else {
        NoRowTable none;
        body(none);
    }
}

/* Block (x, y, z) = one item: row tile x of KV head y of sequence z, every key, final output. Last
   row tiles first: under a causal mask they see the most keys, and starting the longest blocks
   first shortens the tail of the grid. */
static FMHA_DEVICE void grid_block(const FmhaParams& p, InT* smem)
{
    int q_first, seqlen_q;
    query_sequence(p, blockIdx.z, q_first, seqlen_q);
    const int rows = seqlen_q * (p.nhead_q / p.nhead_k);
    const int m0 = (gridDim.x - 1 - blockIdx.x) * kBQ;
    if (m0 >= rows) return;   /* uniform over the block */
    const WorkItem item = {(int)blockIdx.z, (int)blockIdx.y, m0, rows, 0, kAllKeys, -1};
    with_row_table<kPaged>([&](auto& row_table) {
        attention<FMHA_SOFT_CAP != 0>(p, item, q_first, seqlen_q, PartialSlots{nullptr, nullptr}, smem, row_table);
    });
}

/* Persistent block x: the plan's items for x, one after another. */
static FMHA_DEVICE void persistent_block(const FmhaMixedArgs& a, InT* smem)
{
    const PlanView plan{(const int*)a.plan};
    const PartialSlots partials{(float*)a.o_part, (float*)a.lse_part};
    const int begin = plan.block_begin()[blockIdx.x], end = plan.block_begin()[blockIdx.x + 1];
    with_row_table<kPaged>([&](auto& row_table) {
        for (int i = begin; i < end; ++i) {
            const WorkItem item = plan.items()[i];
            int q_first, seqlen_q;
            query_sequence(a.p, item.seq, q_first, seqlen_q);
            attention<FMHA_SOFT_CAP != 0>(a.p, item, q_first, seqlen_q, partials, smem, row_table);
            fmha_barrier();   /* the next item's loads overwrite Q, the K/V stages and the row table */
        }
    });
}

}  // namespace fmha

/* Dynamic shared memory on the GPU; a static buffer under the CPU emulation. */
#if defined(FMHA_CUDA)
#define FMHA_MMA_KERNEL extern "C" __global__ void __launch_bounds__(FMHA_WARPS * 32, 1)
#define FMHA_MMA_SMEM extern __shared__ __align__(128) fmha::InT smem[]
#else
#define FMHA_MMA_KERNEL extern "C" __global__ void
#define FMHA_MMA_SMEM alignas(128) static fmha::InT smem[fmha::kSmemBytes / 2]
#endif

#if FMHA_PERSISTENT
FMHA_MMA_KERNEL fmha_fwd_mma_persistent(FmhaMixedArgs args)
{
    FMHA_MMA_SMEM;
    fmha::persistent_block(args, smem);
}
#else
FMHA_MMA_KERNEL fmha_fwd_mma(FmhaParams p)
{
    FMHA_MMA_SMEM;
    fmha::grid_block(p, smem);
}
#endif
