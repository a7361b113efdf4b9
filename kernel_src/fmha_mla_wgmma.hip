/* fmha_mla_wgmma.hip: DeepSeek MLA decode (SPEC 8) on Hopper's warpgroup tensor cores (wgmma,
   sm_90a), both operands of S = Q K^T and V read by the tensor cores from shared memory through
   descriptors. Same parameters, grid and semantics as fmha_mla_decode.hip (the mma.sync MLA
   kernel): every query head attends over the one latent KV head, a paged cache of rows of
   FMHA_HDIM_Q values (576 = 512 latent ++ 64 rope) whose first FMHA_HDIM_V values are V. Host
   side: fmha_bench/kernels_mla.py; parts shared with the mma kernel: fmha_mla_common.h.

   Compile-time specialisation (-D): FMHA_DTYPE fp16 | bf16 | fp8_e4m3fn (Q and cache; fp8 is
   widened to fp16 in shared memory, exactly, computes in fp16 with P rounded to fp16, and writes
   bf16), FMHA_HDIM_Q (a multiple of 64), FMHA_HDIM_V (128, 256 or 512, <= HDIM_Q), FMHA_BLOCK_Q
   (64: one wgmma M), FMHA_SPLIT_KV 0 | 1 (fp32 partials for fmha_combine.hip, as the other
   kernels). Page table kind, mask, LSE, learned sink, soft cap, descales and lengths are
   run-time fields.

   Block (x, 0, z) = (row tile * num_splits + split, -, sequence z) owns 64 rows m = (query
   position m / Hq, head m % Hq); two warpgroups; key tiles of 64 keys; one block per SM.
   Per key tile:
     S (64 x 64) = Q K^T: warpgroup w multiplies over every other k16 step of the 576 head dims
       (steps 2 i + w: 18 m64n64k16, Q and K both from shared memory), so Q and K are each read
       once per tile; the two partial sums are added through shared memory: warpgroup w keeps
       the full logits of keys [32 w, 32 w + 32).
     Online softmax on those 32 keys; the warpgroups exchange their tile maxima, so both hold the
       same running maximum; P (rounded to the 16-bit operand type) goes through shared memory
       in the A-fragment order and each warpgroup loads all of it.
     O (64 x 512 fp32: half the register file) is split by columns: warpgroup w owns O[:, 256 w ..
       256 w + 256] (128 registers per thread) and multiplies P by its half of V in 4 steps of
       m64n256k16 (P from registers, V = the same K tile in shared memory, N-major).
   K tiles: two stages, 16-byte cp.async into the 128-byte swizzled layout of fmha_wgmma.h, tile
   t + 1 fetched while tile t is computed (a whole step of latency hiding); absent keys (past the
   sequence, recycled pages) zero-filled. fp8: two stages as stored plus one widened fp16 tile
   (cvt.rn.f16x2.e4m3x2, one instruction per pair of codes). Both warpgroups run the same code
   with block barriers only, so the kernel also runs on the CPU emulation (fmha_wgmma_emulation.h).

   Floors at the target point (H100 SXM: 132 SMs; dense bf16 989 TFLOPS = 4096 FLOP per SM-cycle
   at 1.83 GHz; shared memory 128 B per SM-cycle; HBM 3.35 TB/s): bf16, Hq 128, batch 64, 8192
   keys, page 64, one new token: 2 x 8192 x 128 x 1088 FLOPs per sequence, 146 GFLOP in all, and
   604 MB of cache. Two row tiles per sequence: 128 blocks in one wave (4 SMs idle); the two
   tiles of a sequence are neighbours in the grid, so the second reads its pages from L2.
   - FLOPs per block and key tile: S 2 x 64 x 64 x 576 = 4.72 M, P V 2 x 64 x 512 x 64 = 4.19 M:
     2176 tensor cycles at peak (S 1152, P V 1024); 128 tiles per block: 0.15 ms = the 989 peak.
   - Shared-memory traffic per key tile: S operands 144 KB (Q 72 + K 72, one pass each), V 64 KB,
     the next tile's fill 72 KB, exchanges 2 x 8 KB (logits) + 8 KB written and 16 KB read (P):
     ~330 KB, ~2600 cycles at 128 B per cycle (the mma.sync kernel: ~640 KB per 64 keys). S with
     N = 64 reads 4 KB per 32 tensor cycles, exactly the shared-memory rate: S is bound by both,
     and slower while the fill lands.
   - HBM: 604 MB at 3.35 TB/s = 0.18 ms, ~800 TFLOPS if bytes were the only bound.
   - The step is serial: barrier, S (~1300-1700 cycles with the fill), logit exchange (3
     barriers, ~200), softmax of 16 values per thread (16 ex2: ~250 of MUFU for the SM, ~350 with
     the maxima exchange), P exchange (~100), O rescale (skipped by warps whose maxima did not
     move: most tiles of a long decode), P V (~1100): ~3100-3500 cycles per tile, 0.22-0.25 ms.
   Prediction at the target point: 450-550 TFLOPS (the step model at 1.65-1.83 GHz, losses not
   modelled: barrier skew, wgmma issue gaps, L2 misses of the second row tile); the mma.sync
   kernel measured 220. fp8: + the widening (36 KB read, 72 KB written, ~900 cycles) on the
   serial path: 350-450. Left for later: the softmax and exchanges (~600 cycles) leave the
   tensor cores idle; overlapping S of tile t + 1 with P V of tile t needs a third K stage (no
   room: Q 72 KB + 2 x 72 KB + 8 KB of the 227 KB) or FlashMLA's seesaw schedule across the
   warpgroups.

   Per key tile t (5 block barriers; fp8 6):
     1. wait for tile t's copies, barrier (every warpgroup is done with tile t - 1); fp8: widen
        tile t, barrier.
     2. issue S over this warpgroup's k16 steps; start the copies of tile t + 1 into the other
        stage; wait for S.
     3. exchange partial logits (3 barriers); soft cap, mask (only on tiles that straddle a mask
        or split edge), tile maximum of this warpgroup's keys, barrier; running maximum, alpha,
        P of its keys; barrier; every warpgroup loads P whole.
     4. O = alpha O + P V (this warpgroup's columns).
   Finish: row sums added across warpgroups; learned sink (unsplit only), 1/l, V's descale, LSE
   (finish_row); a row that sees nothing writes O = 0 and LSE = -inf (or its sink logit). */
#include "fmha_port.h"
#include "fmha_params.h"
#include "fmha_fwd_common.h"
#include "fmha_mma_sync.h"
#if defined(FMHA_CUDA)
#include "fmha_wgmma.h"
#elif defined(FMHA_CPU_EMULATION)
#include "fmha_wgmma_emulation.h"
#else
#error "fmha_mla_wgmma.hip uses Hopper's wgmma: build it for sm_90a (or -DFMHA_CPU_EMULATION for tests)"
#endif
#include "fmha_tc_common.h"
#include "fmha_mla_common.h"

#if !defined(FMHA_DTYPE) || !defined(FMHA_HDIM_Q) || !defined(FMHA_HDIM_V) || !defined(FMHA_BLOCK_Q) || \
    !defined(FMHA_SPLIT_KV)
#error "fmha_mla_wgmma.hip needs -D FMHA_DTYPE, FMHA_HDIM_Q/V, FMHA_BLOCK_Q, FMHA_SPLIT_KV"
#endif

#define FMHA_CAT_(a, b) a##b
#define FMHA_CAT(a, b) FMHA_CAT_(a, b)

namespace fmha {

/* The wgmma instructions: the GPU's, or the CPU emulation's (same names). */
#if defined(FMHA_CUDA)
namespace wg = ::fmha;
#else
namespace wg = ::fmha::wgmma_emu;
#endif

/* ------------------------------------------------------------------ element types */
typedef FMHA_CAT(elem_, FMHA_DTYPE) Elem;
typedef Elem::Stored Stored;
typedef Elem::Mma OutPack;   /* O's float pair -> two values of the output dtype */
/* The tensor cores' 16-bit operands (Q, K, P): the input type; fp16 for fp8 (exact, and one cvt
   widens a pair of codes). */
template <class E>
struct OperandOf { typedef typename E::Mma type; };
template <>
struct OperandOf<elem_fp8_e4m3fn> { typedef mma_fp16 type; };
typedef OperandOf<Elem>::type Pack;   /* P's float pair -> two operand values */
template <class P>
struct WgTypeOf;
template <>
struct WgTypeOf<mma_fp16> { typedef wg_fp16 type; };
template <>
struct WgTypeOf<mma_bf16> { typedef wg_bf16 type; };
typedef WgTypeOf<Pack>::type WgType;
typedef unsigned short Half;   /* a 16-bit operand in shared memory */
constexpr bool kFp8 = sizeof(Stored) == 1;
constexpr bool kSplitKv = FMHA_SPLIT_KV != 0;

/* ------------------------------------------------------------------ geometry */
constexpr int kDq = FMHA_HDIM_Q, kDv = FMHA_HDIM_V, kBM = FMHA_BLOCK_Q, kBN = 64;
constexpr int kThreads = 256, kWgThreads = 128;
constexpr int kHalfSteps = kDq / 32;   /* k16 steps of S per warpgroup: every other one */
constexpr int kOCols = kDv / 2;        /* O columns per warpgroup */
constexpr int kPS = kBN / 16;          /* k16 steps of P V */
constexpr int kSAcc = kBN / 2;         /* S accumulators per thread: 2 rows x 16 keys */
constexpr int kOwn = kSAcc / 2;        /* those of the thread's warpgroup's keys */
static_assert(kBM == 64, "BLOCK_Q: 64 rows (the M of one wgmma)");
static_assert(kDq % 64 == 0, "HDIM_Q: a multiple of 64 (whole 128-byte swizzle blocks)");
static_assert((kOCols == 64 || kOCols == 128 || kOCols == 256) && kDv <= kDq, "HDIM_V: 128, 256 or 512, <= HDIM_Q");

typedef wg::WgmmaOps<WgType, kBN> MmaS;      /* S = Q K^T: m64n64k16 */
typedef wg::WgmmaOps<WgType, kOCols> MmaO;   /* O += P V: m64n(Dv/2)k16 */

/* Shared memory (bytes), each wgmma operand tile on a 1024-byte boundary: Q [kBM][kDq] 16-bit
   swizzled; two tile stages [kBN][kDq] as stored (16-bit swizzled, or fp8 rows); fp8 only: the
   widened fp16 tile; the exchange buffer (partial logits in fp32, then P in 16-bit, both in
   fragment order: [16-byte piece][thread of the warpgroup]); a float per row and warpgroup
   (its tile maximum, at the end its row sum). */
constexpr int kQBytes = kBM * kDq * 2;
constexpr int kStageBytes = kBN * kDq * (int)sizeof(Stored);
constexpr int kWideBytes = kFp8 ? kBN * kDq * 2 : 0;
constexpr int kXBytes = kWgThreads * kOwn * 4;
constexpr int kStatBytes = 2 * kBM * 4;
constexpr int kSmemBytes = kQBytes + 2 * kStageBytes + kWideBytes + kXBytes + kStatBytes;
static_assert(kPS * kWgThreads * 16 == kXBytes, "P fits the exchange buffer exactly");
static_assert(kSmemBytes + 1024 <= 227 * 1024, "with the 1 KB alignment slack, within an H100 block's opt-in 227 KB");
static_assert(kQBytes % 1024 == 0 && kStageBytes % 1024 == 0, "operand tiles on 1024-byte boundaries");
/* A tile row is kRowChunks copies of 16 bytes (kChunkElems values). */
constexpr int kChunkElems = 16 / (int)sizeof(Stored), kRowChunks = kDq / kChunkElems;

/* The warpgroup of this thread, as a value the compiler knows is the same in the whole warp, so
   the descriptors derived from it live in uniform registers. */
FMHA_DEVICE int warpgroup_index()
{
#if defined(FMHA_CUDA)
    return __shfl_sync(0xffffffffu, (int)threadIdx.x / kWgThreads, 0);
#else
    return (int)threadIdx.x / kWgThreads;
#endif
}

/* ------------------------------------------------------------------ loads */
/* The 16-bit tiles' layout: the 128-byte swizzle of a [Rows][kDq] tile (fmha_wgmma.h). */
template <int Rows>
struct Sw128At {
    FMHA_DEVICE int operator()(int r, int chunk) const { return sw128<Rows>(r, chunk); }
};

/* The key tiles' copier: thread i copies 16-byte chunks i % 8, i % 8 + 8, ... of rows i / 8 and
   i / 8 + 32 of every tile, so its shared-memory offsets are the same in every tile (both rows
   have the same swizzle) and only its two rows' cache locations are looked up per tile. */
struct TileCopier {
    static constexpr int kRowStep = kThreads / 8, kRows = kBN / kRowStep, kPasses = (kRowChunks + 7) / 8;
    static_assert(kBN % kRowStep == 0, "copier: whole rows per thread");
    int r0, c8;

    FMHA_DEVICE TileCopier() : r0(threadIdx.x / 8), c8(threadIdx.x % 8) {}

    FMHA_DEVICE void load(unsigned char* stage, const FmhaParams& p, const KvSequence& kv, int j0) const
    {
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
            const int r = r0 + i * kRowStep;
            const CacheRow<Stored> row(p, kv, j0 + r);
#pragma unroll
            for (int pass = 0; pass < kPasses; ++pass) {
                const int chunk = c8 + 8 * pass;
                if (kRowChunks % 8 != 0 && chunk >= kRowChunks) break;
                row.copy<kDq>(stage, Sw128At<kBN>(), r, chunk);
            }
        }
    }
};

/* ------------------------------------------------------------------ one block */
FMHA_DEVICE void mla_wgmma(const FmhaParams& p, unsigned char* smem)
{
    Half* const sq = (Half*)smem;
    unsigned char* const stages = smem + kQBytes;
    Half* const wide = (Half*)(stages + 2 * kStageBytes);
    unsigned char* const xbuf = stages + 2 * kStageBytes + kWideBytes;
    float* const stats = (float*)(xbuf + kXBytes);   /* [warpgroup][row] */
    Vec<float, 4>* const xs = (Vec<float, 4>*)xbuf;   /* partial logits [kOwn / 4][kWgThreads] */
    Vec<unsigned, 4>* const xp = (Vec<unsigned, 4>*)xbuf;   /* P fragments [kPS][kWgThreads] */

    const int tid = threadIdx.x, wg = warpgroup_index(), t = tid % kWgThreads, lane = tid % 32;
    const int q4 = lane % 4, row0 = 16 * (t / 32) + lane / 4;   /* this thread's rows: row0, row0 + 8 */
    const MlaRowTile rt(p, kBM, kSplitKv);
    if (rt.empty()) return;   /* uniform over the block */
    const MlaBlock<kBN> blk(p, rt);
    const int num_tiles = blk.list.count;
    auto stage_at = [&](int tile) { return stages + (tile & 1) * kStageBytes; };

    /* Q and tile 0 in one copy group. */
    const TileCopier copier;
    load_q<kBM, kDq, kThreads, Stored, Pack>(sq, Sw128At<kBM>(), p, blk);
    if (num_tiles > 0) copier.load(stage_at(0), p, blk.kv, blk.list.first_key(0));
    commit_copies();

    int row_lo[2], row_hi[2], row_sink[2];
    float row_max[2], row_sum[2];   /* row_sum: over this warpgroup's keys */
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        blk.row_bounds(blk.m0 + row0 + 8 * h, row_lo[h], row_hi[h], row_sink[h]);
        row_max[h] = -FMHA_INF;
        row_sum[h] = 0.f;
    }
    float acc[kOCols / 2];   /* element i: row row0 + 8 ((i / 2) % 2), column 8 (i / 4) + 2 q4 + i % 2 */
#pragma unroll
    for (int i = 0; i < kOCols / 2; ++i) acc[i] = 0.f;

    const LogitScale logit(p);
    const float mul = logit.mul;
    const unsigned long long q_desc = kmajor_descriptor<kBM>(sq, 0, wg);   /* this warpgroup's first k16 step */

    for (int tile = 0; tile < num_tiles; ++tile) {
        /* 1. Tile `tile` is in; every warpgroup is done with the previous tile, so the other stage,
           the exchange buffer and the row statistics may be overwritten. */
        wait_copies<0>();
        wg::fence_async_shared();
        fmha_barrier();
        const Half* kt = (const Half*)stage_at(tile);
        if (kFp8) {
            widen_tile<kBN, kDq, kThreads, Pack>(wide, Sw128At<kBN>(), stage_at(tile));
            wg::fence_async_shared();
            fmha_barrier();
            kt = wide;
        }

        /* 2. S over this warpgroup's k16 steps (2 kk + wg) of the head dims, while the next tile's
           copies start. */
        float s[kSAcc];   /* element i: row row0 + 8 ((i / 2) % 2), key 8 (i / 4) + 2 q4 + i % 2 */
        const unsigned long long k_desc = kmajor_descriptor<kBN>(kt, 0, wg);
        wg::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kHalfSteps; ++kk)   /* step 2 kk + wg: (2 kk) % 4 is 0 or 2, so wg stays in its block */
            MmaS::ss(s, q_desc + kmajor_advance<kBM>(2 * kk), k_desc + kmajor_advance<kBN>(2 * kk), kk > 0);
        wg::wgmma_commit();
        if (tile + 1 < num_tiles) copier.load(stage_at(tile + 1), p, blk.kv, blk.list.first_key(tile + 1));
        commit_copies();
        wg::wgmma_wait<0>();
        wg::touch_registers(s);

        /* 3a. Warpgroup w hands the other its partial logits of the other's keys (elements
           kOwn (1 - w) ..), one direction at a time through the one buffer. x: the full logits
           of this warpgroup's keys 32 wg .. 32 wg + 31. */
#pragma unroll
        for (int w = 0; w < 2; ++w) {
            constexpr int kPieces = kOwn / 4;
            const int given = (1 - w) * kOwn;
            if (wg == w) {
#pragma unroll
                for (int i = 0; i < kPieces; ++i)
                    xs[i * kWgThreads + t] = Vec<float, 4>{{s[given + 4 * i], s[given + 4 * i + 1],
                                                            s[given + 4 * i + 2], s[given + 4 * i + 3]}};
            }
            fmha_barrier();
            if (wg != w) {
#pragma unroll
                for (int i = 0; i < kPieces; ++i) {
                    const Vec<float, 4> v = xs[i * kWgThreads + t];
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[given + 4 * i + e] += v.v[e];
                }
            }
            if (w == 0) fmha_barrier();   /* read before the second direction's writes */
        }
        float x[kOwn];
#pragma unroll
        for (int i = 0; i < kOwn; ++i) x[i] = wg == 0 ? s[i] : s[kOwn + i];

        /* 3b. Soft cap, mask, this warpgroup's tile maximum per row; the block's through `stats`. */
        const int j0 = blk.list.first_key(tile);
        const bool all_visible = blk.all_visible(j0);
        const int key0 = j0 + wg * (kBN / 2) + 2 * q4;
        float tile_max[2] = {-FMHA_INF, -FMHA_INF};
        if (all_visible && !logit.capped()) {   /* the common tile: no per-key work (a uniform branch) */
#pragma unroll
            for (int i = 0; i < kOwn; ++i) tile_max[(i / 2) % 2] = fmaxf(tile_max[(i / 2) % 2], x[i]);
        } else {
#pragma unroll
            for (int i = 0; i < kOwn; ++i) {
                const int h = (i / 2) % 2, j = key0 + 8 * (i / 4) + i % 2;
                float v = logit.soft_cap(x[i]);
                if (!all_visible && !(blk.in_split(j) && visible(j, row_lo[h], row_hi[h], row_sink[h]))) v = -FMHA_INF;
                x[i] = v;
                tile_max[h] = fmaxf(tile_max[h], v);
            }
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            tile_max[h] = fmaxf(tile_max[h], fmha_shfl_xor(tile_max[h], 1));
            tile_max[h] = fmaxf(tile_max[h], fmha_shfl_xor(tile_max[h], 2));
            if (q4 == 0) stats[wg * kBM + row0 + 8 * h] = tile_max[h];
        }
        fmha_barrier();   /* both tile maxima are in; every thread is done reading the logits */

        /* 3c. The running maximum (the same in both warpgroups), alpha, P of this warpgroup's keys. */
        float alpha[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float other = stats[(1 - wg) * kBM + row0 + 8 * h];
            const float new_max = fmaxf(row_max[h], fmaxf(tile_max[h], other));
            const float base = new_max == -FMHA_INF ? 0.f : new_max * mul;   /* nothing visible yet: P = 0 */
            alpha[h] = new_max == row_max[h] ? 1.f : exp2_approx(fmaf(row_max[h], mul, -base));   /* exact 1: see 4. */
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < kOwn / 4; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float pv = exp2_approx(fmaf(x[4 * nt + 2 * h + e], mul, -base));
                    x[4 * nt + 2 * h + e] = pv;
                    sum += pv;
                }
            row_sum[h] = row_sum[h] * alpha[h] + sum;
            row_max[h] = new_max;
        }
        /* P's k16 step kk is S's key tiles 2 kk and 2 kk + 1: this warpgroup's steps 2 wg, 2 wg + 1. */
#pragma unroll
        for (int kl = 0; kl < 2; ++kl)
            xp[(2 * wg + kl) * kWgThreads + t] = Vec<unsigned, 4>{{Pack::pack(x[8 * kl], x[8 * kl + 1]),
                                                                  Pack::pack(x[8 * kl + 2], x[8 * kl + 3]),
                                                                  Pack::pack(x[8 * kl + 4], x[8 * kl + 5]),
                                                                  Pack::pack(x[8 * kl + 6], x[8 * kl + 7])}};
        fmha_barrier();
        unsigned pa[kPS][4];
#pragma unroll
        for (int kk = 0; kk < kPS; ++kk) {
            const Vec<unsigned, 4> frag = xp[kk * kWgThreads + t];
#pragma unroll
            for (int e = 0; e < 4; ++e) pa[kk][e] = frag.v[e];
        }

        /* 4. O = alpha O + P V over this warpgroup's column blocks of V. Rows that kept their
           maximum (most tiles of a long decode) have alpha = 1: a warp where all did skips the
           128 multiplies. */
        if (alpha[0] != 1.f || alpha[1] != 1.f) {
#pragma unroll
            for (int i = 0; i < kOCols / 2; ++i) acc[i] *= alpha[(i / 2) % 2];
        }
        const unsigned long long v_desc = nmajor_descriptor<kBN>(kt + wg * (kOCols / 64) * (kBN * 64), 0);
        wg::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kPS; ++kk) MmaO::rs(acc, pa[kk], v_desc + nmajor_advance(kk), 1);
        wg::wgmma_commit();
        wg::wgmma_wait<0>();
        wg::touch_registers(acc);
    }
    wait_copies<0>();   /* no tile at all: the Q copies are still retired before exit */

    /* Row sums: each warpgroup's share, added in the same order by both. */
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float sum = row_sum[h];
        sum += fmha_shfl_xor(sum, 1);
        sum += fmha_shfl_xor(sum, 2);
        if (q4 == 0) stats[wg * kBM + row0 + 8 * h] = sum;
    }
    fmha_barrier();

#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = row0 + 8 * h, m = blk.m0 + row;
        if (m >= blk.rows) continue;
        float row_lse;
        const float f = finish_row(p, blk.head(m), row_max[h] * mul, stats[row] + stats[kBM + row], !blk.split_kv,
                                   p.k_descale, row_lse);
        if (wg == 0 && q4 == 0) blk.store_lse(p, m, row_lse);
        blk.store_o<kOCols / 8, OutPack>(p, m, wg * kOCols, [&](int nt, int e) { return acc[4 * nt + 2 * h + e] * f; });
    }
}

}  // namespace fmha

#if defined(FMHA_CUDA)
extern "C" __global__ void __launch_bounds__(fmha::kThreads, 1) fmha_mla_wgmma(FmhaParams p)
{
    /* The swizzle needs 1024-byte aligned tiles; the launch adds 1 KB of slack for this. */
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const unsigned misalign = fmha::smem_address(smem_raw) & 1023u;
    fmha::mla_wgmma(p, smem_raw + (misalign ? 1024u - misalign : 0u));
}
#else
extern "C" __global__ void fmha_mla_wgmma(FmhaParams p)
{
    alignas(1024) static unsigned char smem[fmha::kSmemBytes];
    fmha::wgmma_emu::set_shared_base(smem);
    fmha::mla_wgmma(p, smem);
}
#endif
