/* fmha_fwd_wgmma.hip: attention forward on Hopper's warpgroup tensor cores (wgmma, sm_90a),
   dense K/V, fp16 / bf16. Same semantics, parameters and grid as the other forward kernels
   (fmha_fwd_mma.hip): block (x, y, z) = (tile of BLOCK_Q rows of the G = Hq/Hk query heads
   sharing KV head y, KV head, sequence); row m <-> (query position m / G, head y*G + m % G).

   Compile-time specialisation (-D): FMHA_DTYPE fp16 | bf16, FMHA_HDIM_Q, FMHA_HDIM_V (multiples
   of 64, <= 256), FMHA_BLOCK_K (64 or 128), FMHA_SOFT_CAP 0 | 1. BLOCK_Q is 128: two warpgroups
   of 64 rows each.

   Algorithm:
   - Q, and two stages of K/V tiles, live in shared memory in the 128-byte swizzled layout that
     wgmma reads (fmha_wgmma.h); every thread fetches 16-byte chunks with cp.async, absent keys
     zero-filled.
   - S = Q K^T (m64 x BLOCK_K per warpgroup, both operands from shared memory); the online softmax
     on S's accumulator registers; O += P V with P from registers (rounded to the input type) and
     V transposed from shared memory. Step t issues S_{t+1} and P_t V_t back to back and runs the
     softmax of tile t + 1 while P_t V_t is still on the tensor cores (FlashAttention-3's
     intra-warpgroup overlap); O is rescaled just before P_t V_t is issued.
   - K and V have two stages each, fetched one step ahead: K_{t+2} and V_{t+1} are issued right
     after step t's block barrier (the only one per step), which every warpgroup reaches only
     after it retired the previous readers of those stages.
   - Masks, sinks, soft cap, LSE and the empty-row rules as fmha_fwd_mma.hip (KeyTiles skips
     tiles nobody sees; only boundary tiles are masked element-wise). */
#include "fmha_port.h"
#include "fmha_params.h"
#include "fmha_fwd_common.h"
#include "fmha_mma_sync.h"
#include "fmha_wgmma.h"

#if !defined(FMHA_CUDA)
#error "fmha_fwd_wgmma.hip uses Hopper's wgmma: build it for sm_90a only"
#endif
#if !defined(FMHA_DTYPE) || !defined(FMHA_HDIM_Q) || !defined(FMHA_HDIM_V) || !defined(FMHA_KV_SOURCE) || \
    !defined(FMHA_BLOCK_K) || !defined(FMHA_SOFT_CAP)
#error "fmha_fwd_wgmma.hip needs -D FMHA_DTYPE, FMHA_HDIM_Q/V, FMHA_KV_SOURCE, FMHA_BLOCK_K, FMHA_SOFT_CAP"
#endif

#define FMHA_CAT_(a, b) a##b
#define FMHA_CAT(a, b) FMHA_CAT_(a, b)

namespace fmha {

typedef FMHA_CAT(mma_, FMHA_DTYPE) Pack;      /* float pair -> two 16-bit values */
typedef FMHA_CAT(wg_, FMHA_DTYPE) WgType;
typedef unsigned short InT;
struct kv_dense { static constexpr bool paged = false; };
struct kv_paged { static constexpr bool paged = true; };
constexpr bool kPaged = FMHA_CAT(kv_, FMHA_KV_SOURCE)::paged;

constexpr int kDq = FMHA_HDIM_Q, kDv = FMHA_HDIM_V, kBK = FMHA_BLOCK_K;
constexpr int kBQ = 128, kWarpgroups = 2, kThreads = 128 * kWarpgroups;
constexpr int kKS = kDq / 16;   /* k16 steps of Q K^T */
constexpr int kPS = kBK / 16;   /* k16 steps of P V */
static_assert(kDq % 64 == 0 && kDv % 64 == 0 && kDq <= 256 && kDv <= 256, "head dims: 64, 128, 192 or 256");
static_assert(kBK == 64 || kBK == 128, "BLOCK_K: 64 or 128");

typedef WgmmaOps<WgType, kBK> MmaS;   /* S = Q K^T: N = BLOCK_K */
typedef WgmmaOps<WgType, kDv> MmaO;   /* O += P V: N = head dim of V */

/* Shared memory, in 16-bit elements, each region a whole number of 1024-byte swizzle atoms. */
constexpr int kQElems = kBQ * kDq, kKElems = kBK * kDq, kVElems = kBK * kDv;
constexpr int kSmemBytes = 2 * (kQElems + 2 * kKElems + 2 * kVElems);

/* cp.async a [Rows][D] tile into its swizzled layout; rows(r, offset) says whether row r is
   present and where it starts (elements from `base`). */
template <int Rows, int D, class RowsOf>
FMHA_DEVICE void load_tile_async(InT* tile, const InT* base, const RowsOf& rows)
{
    constexpr int kChunks = D / 8;
    for (int c = threadIdx.x; c < Rows * kChunks; c += kThreads) {
        const int r = c / kChunks, chunk = c % kChunks;
        i64 offset;
        const bool present = rows(r, offset);
        copy16_async(tile + sw128<Rows>(r, chunk), present ? base + offset + chunk * 8 : base, present);
    }
}

/* The K or V tiles of one (sequence, KV head): every thread copies the same chunk of the same
   rows of every tile (rows r0, r0 + kStep, ...), so its shared-memory offsets are fixed and only
   the rows' global addresses change per tile: a few instructions per 16-byte copy instead of a
   divide, a swizzle and 64-bit row arithmetic each (which made this kernel issue-bound). kStep
   is a multiple of 8, so every row of a thread has the same swizzle. */
template <int D>
struct TileRows {
    static constexpr int kChunks = D / 8, kStep = kThreads / kChunks, kCopies = kBK / kStep;
    static_assert(kThreads % kChunks == 0 && kStep % 8 == 0 && kBK % kStep == 0, "copier: tile shape");
    int r0, chunk, smem_offset;
    FMHA_DEVICE TileRows() : r0(threadIdx.x / kChunks), chunk(threadIdx.x % kChunks)
    {
        smem_offset = sw128<kBK>(r0, chunk);
    }
};

/* Dense rows: key j of the sequence is row first_row + j. */
template <int D>
struct DenseTileCopier : TileRows<D> {
    using TileRows<D>::kStep;
    using TileRows<D>::kCopies;
    const InT* src;      /* row r0, this thread's chunk, of key 0 */
    i64 row_stride, step;
    int length;

    FMHA_DEVICE DenseTileCopier(const InT* base, i64 stride, const KvSequence& kv)
        : row_stride(stride), step(kStep * stride), length(kv.length)
    {
        src = base + (kv.first_row + this->r0) * stride + this->chunk * 8;
    }

    FMHA_DEVICE void load(InT* tile, int j0, const i64* /* no row table */) const
    {
        const InT* row = src + j0 * row_stride;
        InT* const dst = tile + this->smem_offset;
        if (j0 + kBK <= length) {   /* no row past the end: no per-row test */
#pragma unroll
            for (int i = 0; i < kCopies; ++i, row += step) copy16_async(dst + i * kStep * 64, row, true);
        } else {
#pragma unroll
            for (int i = 0; i < kCopies; ++i, row += step) {
                const bool present = j0 + this->r0 + i * kStep < length;
                copy16_async(dst + i * kStep * 64, present ? row : src, present);
            }
        }
    }
};

/* Paged rows: a key's page costs an integer divide and a dependent page-table load, too much for
   each copy; so each tile's rows are resolved once, by one thread per row, three tiles ahead
   into a shared table (slot t % 3 holds tile t: K_{t+2} and V_{t+1} are being read from it while
   tile t + 3 is written), and the copies read their offsets there (-1 = absent). */
struct PagedRowTable {
    static constexpr int kSlots = 3;
    i64 k[kSlots][kBK], v[kSlots][kBK];

    FMHA_DEVICE void resolve(int t, int j0, const FmhaParams& p, const KvSequence& kv)
    {
        for (int r = threadIdx.x; r < kBK; r += kThreads) {
            int page, slot;
            locate_key<true>(p, kv, j0 + r, page, slot);
            k[t % kSlots][r] = page >= 0 ? page * p.k_page_stride + slot * p.k_row_stride : -1;
            v[t % kSlots][r] = page >= 0 ? page * p.v_page_stride + slot * p.v_row_stride : -1;
        }
    }
};

template <int D>
struct PagedTileCopier : TileRows<D> {
    using TileRows<D>::kStep;
    using TileRows<D>::kCopies;
    const InT* src;      /* the (sequence, KV head) base, this thread's chunk */

    FMHA_DEVICE explicit PagedTileCopier(const InT* base) : src(base + this->chunk * 8) {}

    FMHA_DEVICE void load(InT* tile, int /* j0: resolved into offsets */, const i64* offsets) const
    {
        InT* const dst = tile + this->smem_offset;
#pragma unroll
        for (int i = 0; i < kCopies; ++i) {
            const i64 offset = offsets[this->r0 + i * kStep];
            copy16_async(dst + i * kStep * 64, offset >= 0 ? src + offset : src, offset >= 0);
        }
    }
};

struct NoRowTable {};   /* dense: nothing to resolve ahead */

template <bool B>
struct Bool { static constexpr bool value = B; };   /* a compile-time flag passed to a generic lambda */

FMHA_DEVICE const i64* k_offsets(const PagedRowTable& table, int t) { return table.k[t % PagedRowTable::kSlots]; }
FMHA_DEVICE const i64* v_offsets(const PagedRowTable& table, int t) { return table.v[t % PagedRowTable::kSlots]; }
FMHA_DEVICE const i64* k_offsets(const NoRowTable&, int) { return nullptr; }
FMHA_DEVICE const i64* v_offsets(const NoRowTable&, int) { return nullptr; }

template <bool Paged, int D>
struct CopierFor { typedef DenseTileCopier<D> type; };
template <int D>
struct CopierFor<true, D> { typedef PagedTileCopier<D> type; };

template <class Copier>
FMHA_DEVICE Copier make_copier(const InT* base, i64 row_stride, const KvSequence& kv)
{
    if constexpr (kPaged)
        return Copier(base);
    else
        return Copier(base, row_stride, kv);
}

struct QueryRows {
    const FmhaParams& p;
    int b, hk, group, q_first, rows, m0;
    FMHA_DEVICE bool operator()(int r, i64& offset) const
    {
        const int m = m0 + r;
        const int h = hk * group + m % group;
        offset = b * p.q_batch_stride + h * p.q_head_stride + (i64)(q_first + m / group) * p.q_row_stride;
        return m < rows;
    }
};

template <bool SoftCap, class RowTable>
FMHA_DEVICE void attention(const FmhaParams& p, InT* smem, RowTable& row_table)
{
    InT* const sq = smem;
    InT* const sk = sq + kQElems;            /* stage s at sk + s * kKElems */
    InT* const sv = sk + 2 * kKElems;        /* stage s at sv + s * kVElems */

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, wg = warp / 4;
    const int b = blockIdx.z, hk = blockIdx.y;
    const int group = p.nhead_q / p.nhead_k;
    int q_first = 0, seqlen_q = p.max_seqlen_q;
    if (p.group_mode) {
        const int* seqstart = (const int*)p.seqstart_q;
        q_first = seqstart[b];
        seqlen_q = seqstart[b + 1] - q_first;
    }
    const int rows = seqlen_q * group;
    const int m0 = (gridDim.x - 1 - blockIdx.x) * kBQ;   /* longest (causal) row tiles first */
    if (m0 >= rows) return;

    const KvSequence kv = kv_sequence<kPaged>(p, b, hk);
    const MaskSpec mask = mask_for_kv_head(p, hk, seqlen_q, kv.length);
    const KeyTiles<kBK> tiles(mask, m0 / group, (imin(m0 + kBQ, rows) - 1) / group);
    const InT* k_base = (const InT*)p.k + b * p.k_batch_stride + hk * p.k_head_stride;
    const InT* v_base = (const InT*)p.v + b * p.v_batch_stride + hk * p.v_head_stride;
    /* Tile t's K lives in K stage t % 2, its V in V stage t % 2; tiles past the end are not fetched. */
    typedef typename CopierFor<kPaged, kDq>::type KCopier;
    typedef typename CopierFor<kPaged, kDv>::type VCopier;
    const KCopier k_copier = make_copier<KCopier>(k_base, p.k_row_stride, kv);
    const VCopier v_copier = make_copier<VCopier>(v_base, p.v_row_stride, kv);
    auto load_k = [&](int t) {
        if (t < tiles.count) k_copier.load(sk + (t & 1) * kKElems, tiles.first_key(t), k_offsets(row_table, t));
    };
    auto load_v = [&](int t) {
        if (t < tiles.count) v_copier.load(sv + (t & 1) * kVElems, tiles.first_key(t), v_offsets(row_table, t));
    };
    auto resolve_rows = [&](int t) {
        if constexpr (kPaged)
            if (t < tiles.count) row_table.resolve(t, tiles.first_key(t), p, kv);
    };

    /* This thread's rows: warp w of warpgroup wg holds rows 64 wg + 16 (w % 4) + g + 8 h. */
    const int g = lane / 4, quad_col = 2 * (lane % 4);
    const int wg_row0 = wg * 64, warp_row0 = wg_row0 + 16 * (warp % 4);
    int row_lo[2], row_hi[2], row_sink[2];
    float row_max[2], row_sum[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int m = m0 + warp_row0 + g + 8 * h;
        mask.bounds(imin(m, rows - 1) / group, row_lo[h], row_hi[h], row_sink[h]);
        row_max[h] = -FMHA_INF;
        row_sum[h] = 0.f;
    }
    float acc[kDv / 2];
#pragma unroll
    for (int i = 0; i < kDv / 2; ++i) acc[i] = 0.f;

    const float cap = p.soft_cap;
    const float cap_in = p.scale * p.q_descale * p.k_descale / cap, cap_log2 = cap * FMHA_LOG2E;
    const float mul = SoftCap ? 1.f : p.scale_log2;

    /* Descriptors of k-step 0 of Q (this warpgroup's rows), K stage 0 and V stage 0, computed once:
       the steps and stages add constant advances. */
    const unsigned long long q_desc = kmajor_descriptor<kBQ>(sq, wg_row0, 0);
    const unsigned long long k_desc = kmajor_descriptor<kBK>(sk, 0, 0);
    const unsigned long long v_desc = nmajor_descriptor<kBK>(sv, 0);

    /* S = Q K_t^T into s: issued, not waited. */
    auto issue_qk = [&](float (&s)[kBK / 2], int t) {
        const unsigned long long ks = k_desc + (t & 1) * smem_advance(kKElems);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kKS; ++kk)
            MmaS::ss(s, q_desc + kmajor_advance<kBQ>(kk), ks + kmajor_advance<kBK>(kk), kk > 0);
        wgmma_commit();
    };
    /* Soft cap, mask and online softmax of tile t: s becomes P (fp32), the running max/sum move on
       and alpha[h] is the factor O must be scaled by before P V_t. Element i of s: row
       g + 8 ((i / 2) % 2), column 8 (i / 4) + quad_col + i % 2. */
    auto softmax_tile = [&](auto masked, float (&s)[kBK / 2], int j0, float (&alpha)[2]) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float tile_max = -FMHA_INF;
#pragma unroll
            for (int nt = 0; nt < kBK / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float x = s[4 * nt + 2 * h + e];
                    if (SoftCap) x = tanhf(x * cap_in) * cap_log2;
                    if (masked.value && !visible(j0 + nt * 8 + quad_col + e, row_lo[h], row_hi[h], row_sink[h]))
                        x = -FMHA_INF;
                    s[4 * nt + 2 * h + e] = x;
                    tile_max = fmaxf(tile_max, x);
                }
            tile_max = fmaxf(tile_max, fmha_shfl_xor(tile_max, 1));
            tile_max = fmaxf(tile_max, fmha_shfl_xor(tile_max, 2));
            const float new_max = fmaxf(row_max[h], tile_max);
            const float base = new_max == -FMHA_INF ? 0.f : new_max * mul;  /* nothing visible yet: all P are 0 */
            alpha[h] = exp2_approx(fmaf(row_max[h], mul, -base));
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < kBK / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float pv = exp2_approx(fmaf(s[4 * nt + 2 * h + e], mul, -base));
                    s[4 * nt + 2 * h + e] = pv;
                    sum += pv;
                }
            row_sum[h] = row_sum[h] * alpha[h] + sum;
            row_max[h] = new_max;
        }
    };
    /* Two copies of the softmax, chosen per tile by a uniform branch: left to itself the compiler
       predicates the element-wise mask, and the predicated-off instructions still take issue
       slots on every tile (a quarter of the step's instructions at hdim 64). */
    auto softmax = [&](float (&s)[kBK / 2], int t, float (&alpha)[2]) {
        const int j0 = tiles.first_key(t);
        if (tiles.all_visible(j0))
            softmax_tile(Bool<false>(), s, j0, alpha);
        else
            softmax_tile(Bool<true>(), s, j0, alpha);
    };
    /* P rounded to the input type in the A-operand layout: P's k16 step kk is S's n8 tiles 2 kk
       and 2 kk + 1. */
    unsigned pa[kPS][4];
    auto pack_p = [&](const float (&s)[kBK / 2]) {
#pragma unroll
        for (int kk = 0; kk < kPS; ++kk) {
            pa[kk][0] = Pack::pack(s[8 * kk + 0], s[8 * kk + 1]);
            pa[kk][1] = Pack::pack(s[8 * kk + 2], s[8 * kk + 3]);
            pa[kk][2] = Pack::pack(s[8 * kk + 4], s[8 * kk + 5]);
            pa[kk][3] = Pack::pack(s[8 * kk + 6], s[8 * kk + 7]);
        }
    };
    auto copies_landed = [] {
        wait_copies<0>();
        fence_async_shared();
        fmha_barrier();
    };

    /* Prologue: the rows of tiles 0..2 resolved; Q and K_0, then V_0 and K_1 in flight; S_0 and
       its softmax. */
    if constexpr (kPaged) {
        for (int t = 0; t < PagedRowTable::kSlots; ++t) resolve_rows(t);
        fmha_barrier();
    }
    load_tile_async<kBQ, kDq>(sq, (const InT*)p.q, QueryRows{p, b, hk, group, q_first, rows, m0});
    load_k(0);
    commit_copies();
    load_v(0);
    load_k(1);
    commit_copies();
    float s[kBK / 2], alpha[2];
    if (tiles.count > 0) {
        wait_copies<1>();
        fence_async_shared();
        fmha_barrier();
        issue_qk(s, 0);
        wgmma_wait<0>();
        touch_registers(s);
        softmax(s, 0, alpha);
        pack_p(s);
    }

    /* O = alpha O + P_t V_t: issued, not waited. */
    auto issue_pv = [&](int t) {
#pragma unroll
        for (int dt = 0; dt < kDv / 8; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[4 * dt + e] *= alpha[e / 2];
        const unsigned long long vs = v_desc + (t & 1) * smem_advance(kVElems);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kPS; ++kk) MmaO::rs(acc, pa[kk], vs + nmajor_advance(kk), 1);
        wgmma_commit();
    };

    /* Step t: S_{t+1} and P_t V_t in flight together; the softmax of tile t + 1 runs while P_t V_t
       does. Every warpgroup has retired S_t and P_{t-1} V_{t-1} at the barrier, so K stage t % 2
       and V stage (t + 1) % 2 are free for K_{t+2} and V_{t+1}. The last step (P V only) is
       peeled off: issuing S under a condition makes ptxas serialise every wgmma. */
    const int last = tiles.count - 1;
    for (int t = 0; t < last; ++t) {
        copies_landed();   /* V_t and K_{t+1}; the rows of tile t + 2 resolved */
        load_k(t + 2);
        load_v(t + 1);
        commit_copies();
        resolve_rows(t + 3);   /* into tile t's slot: its last copy was issued before this barrier */
        issue_qk(s, t + 1);
        issue_pv(t);
        wgmma_wait<1>();
        touch_registers(s);
        softmax(s, t + 1, alpha);
        wgmma_wait<0>();
        touch_registers(acc);
        pack_p(s);
    }
    if (last >= 0) {
        copies_landed();
        issue_pv(last);
        wgmma_wait<0>();
        touch_registers(acc);
    }
    wait_copies<0>();   /* no tile at all: the Q copy group is still retired before exit */

    /* Sink, normalisation, LSE, O (as fmha_fwd_mma.hip). */
    const float* sinks = (const float*)p.sink_logits;
    float* lse = (float*)p.lse;
    unsigned short* o = (unsigned short*)p.o;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float sum = row_sum[h];
        sum += fmha_shfl_xor(sum, 1);
        sum += fmha_shfl_xor(sum, 2);
        const int m = m0 + warp_row0 + g + 8 * h;
        if (m >= rows) continue;
        const int head = hk * group + m % group;
        const float row_m = row_max[h] * mul;
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
        for (int dt = 0; dt < kDv / 8; ++dt)
            *(unsigned*)(dst + dt * 8 + quad_col) = Pack::pack(acc[4 * dt + 2 * h] * f, acc[4 * dt + 2 * h + 1] * f);
    }
}

/* The paged row table is static shared memory beside the dynamic tiles (kernels_wgmma counts it
   in the fit). */
template <bool Paged>
static FMHA_DEVICE void attention_block(const FmhaParams& p, InT* smem)
{
    if constexpr (Paged) {
        __shared__ PagedRowTable row_table;
        attention<FMHA_SOFT_CAP != 0>(p, smem, row_table);
    } else {
        NoRowTable none;
        attention<FMHA_SOFT_CAP != 0>(p, smem, none);
    }
}

}  // namespace fmha

/* FMHA_BLOCKS_PER_SM 2 caps registers at 128 per thread so two blocks share an SM: at hdim 64 a
   step's softmax is a short dependent chain that one block's two warps per scheduler cannot hide. */
#ifndef FMHA_BLOCKS_PER_SM
#define FMHA_BLOCKS_PER_SM 1
#endif
extern "C" __global__ void __launch_bounds__(fmha::kThreads, FMHA_BLOCKS_PER_SM) fmha_fwd_wgmma(FmhaParams p)
{
    /* The swizzle needs 1024-byte aligned tiles; the launch adds 1 KB of slack for this. */
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const unsigned misalign = fmha::smem_address(smem_raw) & 1023u;
    fmha::attention_block<fmha::kPaged>(p, (fmha::InT*)(smem_raw + (misalign ? 1024u - misalign : 0u)));
}
