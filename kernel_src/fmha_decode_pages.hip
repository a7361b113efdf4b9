/* fmha_decode_pages.hip: paged decode on NVIDIA tensor cores (mma.sync m16n8k16, sm_80+), fp16 /
   bf16, reading whole pages: a block takes FMHA_KV_HEADS KV heads of one sequence at once, so a
   token's rows of all those heads (in a page-1 or NHD cache: one contiguous run, 2 KB for 8 heads
   of hdim 128) are copied together instead of by one block per KV head at different times.

   Why: with the page ids in random order (as serving caches hand them out), blocks of one KV
   head each read a 256-byte piece of every 2 KB page, and the pieces of one page arrive at DRAM
   apart in time: page-1 decode moved 2.93 TB/s against 3.06 with the same ids in order (H100,
   NOTES.md session 11). A copy-only model of this kernel's reads moved 2.99 (4 heads, 1 KB runs)
   and 3.05 (8 heads) against 2.90 for per-head blocks; the kernel itself ties with the wgmma
   kernel's decode tile (2.95 vs 2.94 TB/s at page 1) and leads the mma.sync kernel's, the decode
   tile of GPUs without wgmma, by 13-39% (H100, session 12).

   Compile-time specialisation (-D): FMHA_DTYPE fp16 | bf16, FMHA_HDIM_Q, FMHA_HDIM_V (multiples of
   16, >= 64), FMHA_KV_HEADS (KV heads per block), FMHA_BLOCK_K (tokens per tile), FMHA_WARPS
   (a multiple of FMHA_KV_HEADS: FMHA_WARPS / FMHA_KV_HEADS warps share a head, each taking its
   own BLOCK_K / that tokens, a multiple of 16, of every tile), FMHA_KV_STAGES (>= 2),
   FMHA_SOFT_CAP 0 | 1. Also builds for the CPU emulation (tests/test_decode_pages_emulated.py).

   Grid (split, group of FMHA_KV_HEADS KV heads, sequence); the host launches it only where the
   G = Hq / Hk query heads times the query positions of a sequence fit one m16 tile (<= 16 rows per
   KV head): row m <-> (query position m / G, head hk * G + m % G), as in the other kernels.
   num_splits > 1: split s takes keys [s X, (s + 1) X), X = ceil(keys / num_splits) (SPEC 6) and
   writes fp32 partials for fmha_combine.hip.

   Algorithm:
   - Q fragments come straight from global memory into registers (16 rows per warp, absent rows
     zero); nothing of Q lives in shared memory, which holds FMHA_KV_STAGES stages of K and V:
     [heads][BLOCK_K][D] each, 16-byte chunks swizzled by token (chunk ^ token % 8) so the 8 rows
     one ldmatrix reads fall into 8 bank groups.
   - Copies go in the cache's own order (token, head, chunk): consecutive threads read
     consecutive bytes of a page. Each thread copies one (head, chunk) of every step-th token, so
     only the token's page offset changes per copy; offsets come from a shared row table that one
     thread per token fills a step ahead (the page id is loaded a further step ahead: a page-table
     load waits behind the saturated memory system; the wgmma kernel measured this).
   - Step t: wait for tile t, one block barrier (every warp is done with tile t - 1, whose stage
     tile t + S - 1 now fills), issue tile t + S - 1, then S = Q K^T, online softmax, O += P V on
     the warp's tokens of tile t, as fmha_fwd_mma.hip does for one m16 tile.
   - Warps sharing a head merge their (max, sum, O) through shared memory at the end; the first
     of them finishes the rows (sink, 1/l, LSE) and writes O or the split's partial. */
#include "fmha_port.h"
#include "fmha_params.h"
#include "fmha_fwd_common.h"
#include "fmha_mma_sync.h"
#include "fmha_tc_common.h"

#if !defined(FMHA_CUDA) && !defined(FMHA_CPU_EMULATION)
#error "fmha_decode_pages.hip uses NVIDIA mma.sync: build it for sm_80 and newer only (or -DFMHA_CPU_EMULATION)"
#endif
#if !defined(FMHA_DTYPE) || !defined(FMHA_HDIM_Q) || !defined(FMHA_HDIM_V) || !defined(FMHA_KV_HEADS) || \
    !defined(FMHA_BLOCK_K) || !defined(FMHA_WARPS) || !defined(FMHA_KV_STAGES) || !defined(FMHA_SOFT_CAP)
#error "fmha_decode_pages.hip needs -D FMHA_DTYPE, FMHA_HDIM_Q/V, FMHA_KV_HEADS, FMHA_BLOCK_K, FMHA_WARPS, FMHA_KV_STAGES, FMHA_SOFT_CAP"
#endif

#define FMHA_CAT_(a, b) a##b
#define FMHA_CAT(a, b) FMHA_CAT_(a, b)

namespace fmha {

typedef FMHA_CAT(mma_, FMHA_DTYPE) Mma;
typedef unsigned short InT;

constexpr int kDq = FMHA_HDIM_Q, kDv = FMHA_HDIM_V;
constexpr int kHeads = FMHA_KV_HEADS, kBK = FMHA_BLOCK_K, kWarps = FMHA_WARPS, kStages = FMHA_KV_STAGES;
constexpr int kThreads = 32 * kWarps;
constexpr int kWarpsPerHead = kWarps / kHeads;
constexpr int kWarpKeys = kBK / kWarpsPerHead;   /* tokens of a tile one warp computes */
constexpr int kKS = kDq / 16;                    /* k16 steps of Q K^T */
constexpr int kNT = kWarpKeys / 8;               /* n8 tiles of the warp's S */
constexpr int kPS = kWarpKeys / 16;              /* k16 steps of P V */
constexpr int kDT = kDv / 8;                     /* n8 tiles of O */
static_assert(kWarps % kHeads == 0 && kBK % kWarpsPerHead == 0 && kWarpKeys % 16 == 0,
              "each warp computes a multiple of 16 tokens of one head");
static_assert(kDq % 16 == 0 && kDv % 16 == 0 && kDq >= 64 && kDv >= 64, "head dims: multiples of 16, >= 64");
static_assert(kStages >= 2, "at least two K/V stages");

/* Copies: thread i copies chunk i % (D / 8) of head (i / (D / 8)) % kHeads, of tokens
   i / (kHeads D / 8) + n kTokenStep. */
template <int D>
struct CopyLane {
    static constexpr int kChunks = D / 8, kRowChunks = kHeads * kChunks, kTokenStep = kThreads / kRowChunks;
    static constexpr int kCopies = kBK / kTokenStep;
    static_assert(kThreads % kRowChunks == 0 && kBK % kTokenStep == 0, "copier: whole tokens per pass");
    int chunk, head, token0;
    FMHA_DEVICE CopyLane() : chunk(threadIdx.x % kChunks), head(threadIdx.x / kChunks % kHeads),
                             token0(threadIdx.x / kRowChunks) {}
};

constexpr int kKTileElems = kHeads * kBK * kDq, kVTileElems = kHeads * kBK * kDv;
constexpr int kStageElems = kKTileElems + kVTileElems;
constexpr int kSmemBytes = 2 * kStages * kStageElems;
/* The end-of-loop merge of warps sharing a head reuses the stages: per warp 16 rows of O. */
static_assert(!(kWarpsPerHead > 1) || kWarps * 16 * (kDv + 2) * 4 <= kSmemBytes, "merge: fits the stages");

/* Row table: a tile's token offsets in the caches (page * page stride + slot * row stride; -1 =
   absent), tile u in slot u % kSlots. Tile u's ids are loaded at step u - S - 1, stored at step
   u - S and read when tile u's copies issue at step u - S + 1. */
constexpr int kSlots = kStages + 1;
struct RowTable {
    i64 k[kSlots][kBK], v[kSlots][kBK];
};

/* One (sequence, split) of a group of KV heads. */
template <bool SoftCap>
FMHA_DEVICE void decode_block(const FmhaParams& p, unsigned char* smem, RowTable& table)
{
    InT* const stages = (InT*)smem;   /* stage s: K at s * kStageElems, V after it */
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int b = blockIdx.z, hk0 = blockIdx.y * kHeads;
    const int head_slot = warp / kWarpsPerHead, part = warp % kWarpsPerHead, hk = hk0 + head_slot;
    const int group = p.nhead_q / p.nhead_k;
    int q_first, seqlen_q;
    query_sequence(p, b, q_first, seqlen_q);
    const int rows = seqlen_q * group;   /* <= 16 (the host's condition) */

    /* Not headwise (the host's condition): every head of the block has one page list and mask. */
    const KvSequence kv = kv_sequence<true>(p, b, hk0);
    const MaskSpec mask = mask_for_kv_head(p, hk0, seqlen_q, kv.length);
    const KeyTiles<kBK> all_tiles(mask, 0, imax(seqlen_q - 1, 0));
    const int splits = imax(p.num_splits, 1), split = blockIdx.x;
    int key_begin = 0, key_end = kAllKeys;
    if (splits > 1) {
        const int width = (kv.length + splits - 1) / splits;
        key_begin = imin(split * width, kv.length);
        key_end = imin(key_begin + width, kv.length);
    }
    const TileList<kBK> tiles = splits > 1 ? TileList<kBK>(all_tiles, key_begin, key_end) : TileList<kBK>(all_tiles);

    /* ---- copies */
    const CopyLane<kDq> k_lane;
    const CopyLane<kDv> v_lane;
    const bool k_head_present = hk0 + k_lane.head < p.nhead_k, v_head_present = hk0 + v_lane.head < p.nhead_k;
    const InT* k_src = (const InT*)p.k + (i64)(hk0 + k_lane.head) * p.k_head_stride + k_lane.chunk * 8;
    const InT* v_src = (const InT*)p.v + (i64)(hk0 + v_lane.head) * p.v_head_stride + v_lane.chunk * 8;
    const int k_dst0 = k_lane.head * kBK * kDq, v_dst0 = kKTileElems + v_lane.head * kBK * kDv;
    auto issue = [&](int t) {
        if (t < tiles.count) {
            InT* stage = stages + (t % kStages) * kStageElems;
            const i64* k_rows = table.k[t % kSlots];
            const i64* v_rows = table.v[t % kSlots];
#pragma unroll
            for (int i = 0; i < CopyLane<kDq>::kCopies; ++i) {
                const int token = k_lane.token0 + i * CopyLane<kDq>::kTokenStep;
                const i64 row = k_rows[token];
                const bool present = k_head_present && row >= 0;
                copy16_async(stage + k_dst0 + swizzle<kDq>(token, k_lane.chunk), present ? k_src + row : k_src, present);
            }
#pragma unroll
            for (int i = 0; i < CopyLane<kDv>::kCopies; ++i) {
                const int token = v_lane.token0 + i * CopyLane<kDv>::kTokenStep;
                const i64 row = v_rows[token];
                const bool present = v_head_present && row >= 0;
                copy16_async(stage + v_dst0 + swizzle<kDv>(token, v_lane.chunk), present ? v_src + row : v_src, present);
            }
        }
        commit_copies();   /* always a group, so wait_copies<kStages - 2> counts tiles */
    };
    /* Thread r < kBK resolves token r of a tile: page id now (fetch), offsets into the table later
       (store). Keys outside the split's range are absent too. */
    int fetched_page = -1, fetched_slot = 0;
    auto fetch = [&](int t) {
        fetched_page = -1;
        if (tid < kBK && t < tiles.count) {
            const int j = tiles.first_key(t) + tid;
            if (j >= key_begin && j < key_end) locate_key<true>(p, kv, j, fetched_page, fetched_slot);
        }
    };
    auto store = [&](int t) {
        if (tid < kBK && t < tiles.count) {
            const bool present = fetched_page >= 0;
            table.k[t % kSlots][tid] = present ? fetched_page * p.k_page_stride + fetched_slot * p.k_row_stride : -1;
            table.v[t % kSlots][tid] = present ? fetched_page * p.v_page_stride + fetched_slot * p.v_row_stride : -1;
        }
    };
    for (int t = 0; t < kStages; ++t) {
        fetch(t);
        store(t);
    }
    fetch(kStages);
    fmha_barrier();
    for (int t = 0; t < kStages - 1; ++t) issue(t);

    /* ---- Q fragments (m16 x k16 A operands) from global memory: lane 4 g + q holds rows g, g + 8,
       columns 2q, 2q + 1 (+ 8). Rows past the sequence's are zero. */
    const int g = lane / 4, quad_col = 2 * (lane % 4);
    const InT* q_base = (const InT*)p.q + b * p.q_batch_stride;
    unsigned qa[kKS][4];
    int row_lo[2], row_hi[2], row_sink[2];
    float row_max[2], row_sum[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int m = g + 8 * h;
        const bool present = m < rows && hk < p.nhead_k;
        const InT* q_row = q_base + (i64)(hk * group + m % group) * p.q_head_stride +
                           (i64)(q_first + m / group) * p.q_row_stride + quad_col;
#pragma unroll
        for (int kk = 0; kk < kKS; ++kk) {
            qa[kk][h] = present ? *(const unsigned*)(q_row + kk * 16) : 0u;
            qa[kk][h + 2] = present ? *(const unsigned*)(q_row + kk * 16 + 8) : 0u;
        }
        mask.bounds(imin(m, imax(rows - 1, 0)) / group, row_lo[h], row_hi[h], row_sink[h]);
        row_max[h] = -FMHA_INF;
        row_sum[h] = 0.f;
    }
    float acc[kDT][4];
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;

    const float cap = p.soft_cap;
    const float cap_in = p.scale * p.q_descale * p.k_descale / cap, cap_log2 = cap * FMHA_LOG2E;
    const float mul = SoftCap ? 1.f : p.scale_log2;
    const int warp_key0 = part * kWarpKeys;

    for (int t = 0; t < tiles.count; ++t) {
        wait_copies<kStages - 2>();
        fmha_barrier();
        store(t + kStages);
        fetch(t + kStages + 1);
        issue(t + kStages - 1);
        const InT* ks = stages + (t % kStages) * kStageElems + head_slot * kBK * kDq;
        const InT* vs = stages + (t % kStages) * kStageElems + kKTileElems + head_slot * kBK * kDv;
        const int j0 = tiles.first_key(t) + warp_key0;

        /* S = Q K^T over the warp's tokens */
        float s[kNT][4];
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < kKS; ++kk)
#pragma unroll
            for (int np = 0; np < kNT / 2; ++np) {
                unsigned kb[4];
                ldmatrix_x4(kb, ks + swizzle<kDq>(warp_key0 + np * 16 + lane % 8 + 8 * (lane / 16), kk * 2 + (lane / 8) % 2));
                Mma::mma(s[2 * np], qa[kk], kb);
                Mma::mma(s[2 * np + 1], qa[kk], kb + 2);
            }

        /* soft cap, mask (tiles a mask boundary or a split edge cuts), online softmax; P overwrites S */
        const int tile_j0 = tiles.first_key(t);
        const bool all_visible = all_tiles.all_visible(tile_j0) && tile_j0 >= key_begin && tile_j0 + kBK <= key_end;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float tile_max = -FMHA_INF;
#pragma unroll
            for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int j = j0 + nt * 8 + quad_col + e;
                    float x = s[nt][2 * h + e];
                    if (SoftCap) x = tanhf(x * cap_in) * cap_log2;
                    if (!all_visible &&
                        !(j >= key_begin && j < key_end && visible(j, row_lo[h], row_hi[h], row_sink[h])))
                        x = -FMHA_INF;
                    s[nt][2 * h + e] = x;
                    tile_max = fmaxf(tile_max, x);
                }
            tile_max = fmaxf(tile_max, fmha_shfl_xor(tile_max, 1));
            tile_max = fmaxf(tile_max, fmha_shfl_xor(tile_max, 2));
            const float new_max = fmaxf(row_max[h], tile_max);
            const float base = new_max == -FMHA_INF ? 0.f : new_max * mul;
            const float alpha = exp2_approx(fmaf(row_max[h], mul, -base));
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float pv = exp2_approx(fmaf(s[nt][2 * h + e], mul, -base));
                    s[nt][2 * h + e] = pv;
                    sum += pv;
                }
            row_sum[h] = row_sum[h] * alpha + sum;
            row_max[h] = new_max;
#pragma unroll
            for (int dt = 0; dt < kDT; ++dt) {
                acc[dt][2 * h] *= alpha;
                acc[dt][2 * h + 1] *= alpha;
            }
        }

        /* O += P V */
#pragma unroll
        for (int kk = 0; kk < kPS; ++kk) {
            unsigned pa[4];
            pa[0] = Mma::pack(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = Mma::pack(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = Mma::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = Mma::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < kDT / 2; ++dp) {
                unsigned vb[4];
                ldmatrix_x4_trans(vb, vs + swizzle<kDv>(warp_key0 + kk * 16 + lane % 8 + 8 * ((lane / 8) % 2),
                                                        dp * 2 + lane / 16));
                Mma::mma(acc[2 * dp], pa, vb);
                Mma::mma(acc[2 * dp + 1], pa, vb + 2);
            }
        }
    }
    wait_copies<0>();

    /* Row sums over the quad; warps sharing a head merge into the first of them. */
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        row_sum[h] += fmha_shfl_xor(row_sum[h], 1);
        row_sum[h] += fmha_shfl_xor(row_sum[h], 2);
    }
    if constexpr (kWarpsPerHead > 1) {
        /* per warp: O [16][kDv], then max [16] and sum [16], fp32, over the stages */
        float* mine = (float*)smem + warp * 16 * (kDv + 2);
        fmha_barrier();   /* every warp's last ldmatrix is done before the stages are overwritten */
        if (part > 0) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = g + 8 * h;
#pragma unroll
                for (int dt = 0; dt < kDT; ++dt) {
                    mine[r * kDv + dt * 8 + quad_col] = acc[dt][2 * h];
                    mine[r * kDv + dt * 8 + quad_col + 1] = acc[dt][2 * h + 1];
                }
                if (lane % 4 == 0) {
                    mine[16 * kDv + r] = row_max[h];
                    mine[16 * kDv + 16 + r] = row_sum[h];
                }
            }
        }
        fmha_barrier();
        if (part > 0) return;
#pragma unroll
        for (int other = 1; other < kWarpsPerHead; ++other) {
            const float* theirs = mine + other * 16 * (kDv + 2);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = g + 8 * h;
                const float their_max = theirs[16 * kDv + r], their_sum = theirs[16 * kDv + 16 + r];
                const float top = fmaxf(row_max[h], their_max);
                const float base = top == -FMHA_INF ? 0.f : top * mul;
                const float a_mine = exp2_approx(fmaf(row_max[h], mul, -base));
                const float a_theirs = exp2_approx(fmaf(their_max, mul, -base));
                row_sum[h] = row_sum[h] * a_mine + their_sum * a_theirs;
                row_max[h] = top;
#pragma unroll
                for (int dt = 0; dt < kDT; ++dt) {
                    acc[dt][2 * h] = acc[dt][2 * h] * a_mine + theirs[r * kDv + dt * 8 + quad_col] * a_theirs;
                    acc[dt][2 * h + 1] = acc[dt][2 * h + 1] * a_mine + theirs[r * kDv + dt * 8 + quad_col + 1] * a_theirs;
                }
            }
        }
    }
    if (hk >= p.nhead_k) return;

    /* Sink (not in a partial: the combine adds it once), 1/l, LSE, O or split s's fp32 partial. */
    const bool partial = splits > 1;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int m = g + 8 * h;
        if (m >= rows) continue;
        const int head = hk * group + m % group;
        const i64 token = q_first + m / group;
        float row_lse;
        const float f = finish_row(p, head, row_max[h] * mul, row_sum[h], !partial, p.v_descale, row_lse);
        const i64 o_at = b * p.o_batch_stride + head * p.o_head_stride + token * p.o_row_stride;
        const i64 lse_at = b * p.lse_batch_stride + head * p.lse_head_stride + token;
        if (partial) {
            if (lane % 4 == 0) ((float*)p.lse_acc)[split * p.lse_acc_split_stride + lse_at] = row_lse;
            float* dst = (float*)p.o_acc + split * p.o_acc_split_stride + o_at + quad_col;
#pragma unroll
            for (int dt = 0; dt < kDT; ++dt) {
                dst[dt * 8] = acc[dt][2 * h] * f;
                dst[dt * 8 + 1] = acc[dt][2 * h + 1] * f;
            }
            continue;
        }
        if (p.has_lse && lane % 4 == 0) ((float*)p.lse)[lse_at] = row_lse;
        unsigned short* dst = (unsigned short*)p.o + o_at + quad_col;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) *(unsigned*)(dst + dt * 8) = Mma::pack(acc[dt][2 * h] * f, acc[dt][2 * h + 1] * f);
    }
}

/* The row table is static shared memory beside the dynamic stages (kernels_pages counts it in the
   fit); internal linkage, as in the other kernels, so the CPU emulation's instances keep their own. */
static FMHA_DEVICE void run_block(const FmhaParams& p, unsigned char* smem)
{
    __shared__ RowTable table;
    decode_block<FMHA_SOFT_CAP != 0>(p, smem, table);
}

}  // namespace fmha

#if defined(FMHA_CUDA)
extern "C" __global__ void __launch_bounds__(fmha::kThreads, 1) fmha_decode_pages(FmhaParams p)
{
    extern __shared__ __align__(128) unsigned char smem[];
    fmha::run_block(p, smem);
}
#else
extern "C" __global__ void fmha_decode_pages(FmhaParams p)
{
    alignas(128) static unsigned char smem[fmha::kSmemBytes];
    fmha::run_block(p, smem);
}
#endif
