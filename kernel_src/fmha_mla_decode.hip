/* fmha_mla_decode.hip: DeepSeek MLA decode (SPEC 8) on NVIDIA tensor cores (mma.sync m16n8k16,
   fp32 accumulate, sm_80+). Every query head attends over the one latent KV head: a paged cache
   of rows of FMHA_HDIM_Q values (576 = 512 latent ++ 64 rope) whose first FMHA_HDIM_V values are
   V. Host side: fmha_bench/kernels_mla.py; parameters: FmhaParams (V is read from the K cache,
   so p.v and the v_* strides are unused and V's descale is k_descale); parts shared with the
   wgmma MLA kernel (fmha_mla_wgmma.hip): fmha_mla_common.h.

   Compile-time specialisation (-D): FMHA_DTYPE fp16 | bf16 | fp8_e4m3fn (Q and cache; fp8 writes
   bf16), FMHA_HDIM_Q (a multiple of 64), FMHA_HDIM_V (a multiple of 128, < HDIM_Q),
   FMHA_BLOCK_Q (BM: 16, 32 or 64 rows), FMHA_BLOCK_K (BN: keys per tile), FMHA_STAGES (cp.async
   ring depth, >= 2), FMHA_SPLIT_KV 0 | 1 (as in fmha_fwd.hip: partials for fmha_combine.hip).
   Page table kind, mask, LSE, learned sink, soft cap, descales and lengths are run-time fields.

   Work decomposition. Rows m = (query position m / Hq, head m % Hq) of one sequence; block
   (x, 0, z) = (row tile * num_splits + split, -, sequence z) owns BM rows. All rows share the KV
   head, so a block is a small GEMM chain per key tile of BN keys:
     S (BM x BN) = Q (BM x Dq) K^T,   O (BM x Dv) = alpha O + P (BM x BN) V (BN x Dv),
   with each K tile fetched from global memory once and read twice from shared memory (its
   first Dv columns are the V tile).

   Why this shape (H100, bf16, Hq 128, 576/512: 2 Hq (Dq + Dv) FLOPs and 1152 bytes per key,
   ~240 FLOP/byte, near the H100's ridge: 295 at the dense bf16 peak, ~195 at mma.sync's):
   - O lives in registers and is the largest state: BM x 512 fp32 = 128 KB at BM = 64, half the
     register file. BM = 128 (all heads in one block) would need the whole register file, so
     BM <= 64 and Hq = 128 runs as two row tiles per sequence (b64: 128 blocks on 132 SMs). The
     second tile reads the same pages from L2 (both tiles run at once).
   - 8 warps (1 block per SM at BM 64: 128 O registers per thread). PV: warp w owns O columns
     [64 w, 64 w + 64) for all BM rows (P read from shared memory by every warp, V once).
   - S = Q K^T is thin (M = 64, N = BN, K = 576) and bound by shared-memory operand traffic
     (ldmatrix), not by the tensor cores: a warp tile of 32 rows x 32 keys reads 256 bytes per
     mma; Q cannot stay in registers beside O. So the 576 columns are split into 4 k-slices:
     8 warps = (BM / 32 row groups) x (key groups) x 4 slices, each warp a 32 x 32 piece over
     144 columns, partial sums published to shared memory (fp32) and added while the softmax runs.
   - Softmax rows are then spread over all 8 warps (BM / 8 rows each, 32 / (BM / 8) lanes per row)
     instead of living in the mma fragments, so the row max needs only intra-warp shuffles.
   - Splitting O's 512 columns over two blocks per sequence instead would recompute S twice:
     (2 * 576 + 512) / (576 + 512) = 1.53x the FLOPs. Splitting the keys (FMHA_SPLIT_KV + the
     combine) costs no FLOPs and fills the GPU for small batches.
   Shared-memory traffic per block and 64 keys at BM 64, BN 32: S operands 288 KB, partial S
   128 KB (written and read), P 72 KB, V 64 KB, K fill 74 KB: ~640 KB, ~5000 cycles at 128 B per
   cycle, against ~3500 cycles of mma.sync work (2176 m16n8k16 at ~65% of the H100's dense
   peak). So the kernel is shared-memory bound: ~400 TFLOPS on an H100 at 100% shared-memory
   efficiency, less in practice. Beyond that needs wgmma, whose operands the tensor cores read
   from shared memory without going through ldmatrix and registers: fmha_mla_wgmma.hip.

   Per key tile t (3 block barriers; fp8 one more):
     1. wait for tile t's copies, barrier; start the copies of tile t + STAGES - 1 (cp.async
        ring; absent keys, i.e. past the sequence or in a recycled page, are zero-filled and
        never read from global memory). fp8: widen tile t to bf16 (exact), barrier.
     2. partial S of the warp's (rows, keys, k-slice) piece -> shared memory; barrier.
     3. row softmax: sum the 4 partials, soft cap, mask (only on tiles that straddle a mask or
        split edge), online max/sum in base 2 (the scale folded into the exponent's FFMA),
        P rounded to the input type (bf16 for fp8) over the row's own slice-0 partials,
        alpha per row; barrier.
     4. O = alpha O + P V.
   Finish as fmha_fwd_mma.hip: learned sink (unsplit only), 1/l, V's descale, LSE in natural log;
   a row that sees nothing writes O = 0 and LSE = -inf (or its sink logit). */
#include "fmha_port.h"
#include "fmha_params.h"
#include "fmha_fwd_common.h"
#include "fmha_mma_sync.h"
#include "fmha_tc_common.h"
#include "fmha_mla_common.h"

#if !defined(FMHA_DTYPE) || !defined(FMHA_HDIM_Q) || !defined(FMHA_HDIM_V) || !defined(FMHA_BLOCK_Q) || \
    !defined(FMHA_BLOCK_K) || !defined(FMHA_STAGES) || !defined(FMHA_SPLIT_KV)
#error "fmha_mla_decode.hip needs -D FMHA_DTYPE, FMHA_HDIM_Q/V, FMHA_BLOCK_Q/K, FMHA_STAGES, FMHA_SPLIT_KV"
#endif

#define FMHA_CAT_(a, b) a##b
#define FMHA_CAT(a, b) FMHA_CAT_(a, b)

namespace fmha {

/* ------------------------------------------------------------------ element types */
typedef FMHA_CAT(elem_, FMHA_DTYPE) Elem;
typedef Elem::Stored Stored;
typedef Elem::Mma Mma;
typedef unsigned short Half;   /* a 16-bit mma operand in shared memory */
constexpr bool kFp8 = sizeof(Stored) == 1;
constexpr bool kSplitKv = FMHA_SPLIT_KV != 0;

/* ------------------------------------------------------------------ geometry */
constexpr int kDq = FMHA_HDIM_Q, kDv = FMHA_HDIM_V;
constexpr int kBM = FMHA_BLOCK_Q, kBN = FMHA_BLOCK_K, kStages = FMHA_STAGES;
constexpr int kWarps = 8, kThreads = 32 * kWarps;
/* S = Q K^T: warp tiles of kMR m16 x kNR n8 over one of kSlices k-slices of kSliceSteps k16 steps. */
constexpr int kSlices = 4, kSliceSteps = kDq / 16 / kSlices;
constexpr int kMR = kBM >= 32 ? 2 : 1;
constexpr int kRowGroups = kBM / (16 * kMR);
constexpr int kKeyGroups = kWarps / (kRowGroups * kSlices);
constexpr int kNR = kBN / (8 * kKeyGroups);
/* O += P V: every warp owns kOCols columns (kON n8 tiles) of all kOM m16 tiles. */
constexpr int kOCols = kDv / kWarps, kON = kOCols / 8, kOM = kBM / 16;
/* Row softmax: kRowsPerWarp rows per warp, kLanesPerRow lanes per row, kKeysPerLane keys per lane. */
constexpr int kRowsPerWarp = kBM / kWarps, kLanesPerRow = 32 / kRowsPerWarp, kKeysPerLane = kBN / kLanesPerRow;

static_assert(kDq % (16 * kSlices) == 0 && kDq / 8 % 8 == 0, "HDIM_Q: a multiple of 64");
static_assert(kDv % (16 * kWarps) == 0 && kDv < kDq, "HDIM_V: a multiple of 128, below HDIM_Q");
static_assert((kBM == 16 || kBM == 32 || kBM == 64) && kRowGroups * kKeyGroups * kSlices == kWarps,
              "BLOCK_Q: 16, 32 or 64 rows");
static_assert(kBN % 16 == 0 && kNR >= 2 && kNR % 2 == 0, "BLOCK_K: the key groups must be whole n16 pairs");
static_assert(kKeysPerLane >= 2 && kKeysPerLane <= 8 && kKeysPerLane % 2 == 0, "BLOCK_K: 2..8 keys per softmax lane");
static_assert(kThreads % kBN == 0, "BLOCK_K divides the threads (one tile row per group of threads)");
static_assert(kStages >= 2, "STAGES: at least double buffering");

/* Shared memory (bytes): Q [kBM][kDq] 16-bit swizzled; kStages tile stages [kBN][kDq] as stored
   (16-bit swizzled, or fp8 rows); fp8 only: the widened bf16 tile; the partial S of each k-slice
   [kSlices][kBM][kXPitch] fp32 (P, 16-bit, overwrites slice 0 row by row); a float per row
   (alpha per tile, the output factor at the end). The pitch of 4 extra floats spreads the 8 rows
   of a fragment store or an ldmatrix of P over all banks. */
constexpr int kXPitch = kBN + 4, kPPitch = 2 * kXPitch;   /* floats, halves */
constexpr int kQBytes = kBM * kDq * 2;
constexpr int kStageBytes = kBN * kDq * (int)sizeof(Stored);
constexpr int kWideBytes = kFp8 ? kBN * kDq * 2 : 0;
constexpr int kXBytes = kSlices * kBM * kXPitch * 4;
constexpr int kSmemBytes = kQBytes + kStages * kStageBytes + kWideBytes + kXBytes + kBM * 4;
/* A tile row is fetched by kThreads / kBN threads, 16 bytes (kChunkElems values) per copy. */
constexpr int kChunkElems = 16 / (int)sizeof(Stored), kRowChunks = kDq / kChunkElems;
constexpr int kThreadsPerRow = kThreads / kBN;
/* Two blocks per SM where their shared memory fits an H100 SM (228 KiB, 1 KiB per block reserved)
   and their O fits the register cap of 128 per thread that this implies (BM <= 32 rows). */
constexpr int kMinBlocks = kBM <= 32 && 2 * (kSmemBytes + 1024) <= 228 * 1024 ? 2 : 1;

/* ------------------------------------------------------------------ loads */
/* The 16-bit tiles' layout (Q, the 16-bit stages, the widened tile): swizzled [rows][kDq]. */
struct TileAt {
    FMHA_DEVICE int operator()(int r, int chunk) const { return swizzle<kDq>(r, chunk); }
};

/* Keys j0.. of the latent cache into a stage: kThreadsPerRow threads per key, one page lookup
   each; 16-bit rows swizzled, fp8 rows as stored (widened later). */
FMHA_DEVICE void load_tile_async(unsigned char* stage, const FmhaParams& p, const KvSequence& kv, int j0)
{
    const int r = threadIdx.x / kThreadsPerRow;
    const CacheRow<Stored> row(p, kv, j0 + r);
    for (int chunk = threadIdx.x % kThreadsPerRow; chunk < kRowChunks; chunk += kThreadsPerRow)
        row.copy<kDq>(stage, TileAt(), r, chunk);
}

/* ------------------------------------------------------------------ one block */
FMHA_DEVICE void mla_decode(const FmhaParams& p, unsigned char* smem)
{
    Half* const sq = (Half*)smem;
    unsigned char* const stages = smem + kQBytes;
    Half* const wide = (Half*)(stages + kStages * kStageBytes);
    float* const sx = (float*)(stages + kStages * kStageBytes + kWideBytes);
    float* const row_scale = sx + kSlices * kBM * kXPitch;
    const Half* const sp = (const Half*)sx;   /* P [kBM][kPPitch] over slice 0 */

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4, q4 = lane % 4;
    const MlaRowTile rt(p, kBM, kSplitKv);
    if (rt.empty()) return;   /* uniform over the block */
    const MlaBlock<kBN> blk(p, rt);
    const int num_tiles = blk.list.count;
    auto stage_at = [&](int t) { return stages + (t % kStages) * kStageBytes; };

    /* Q and the first STAGES - 1 tiles; copy group s holds tile s (group 0 also Q). */
    load_q<kBM, kDq, kThreads, Stored, Mma>(sq, TileAt(), p, blk);
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < num_tiles) load_tile_async(stage_at(s), p, blk.kv, blk.list.first_key(s));
        commit_copies();
    }

    /* S roles: the warp's rows, keys and k-slice. */
    const int s_row0 = warp % kRowGroups * 16 * kMR;
    const int s_key0 = warp / kRowGroups % kKeyGroups * 8 * kNR;
    const int s_slice = warp / (kRowGroups * kKeyGroups);
    /* Softmax roles: row red_row of the block, keys [red_key, red_key + kKeysPerLane) of each tile. */
    const int red_row = warp * kRowsPerWarp + lane / kLanesPerRow;
    const int red_key = lane % kLanesPerRow * kKeysPerLane;
    const int red_m = blk.m0 + red_row;
    int row_lo, row_hi, row_sink;
    blk.row_bounds(red_m, row_lo, row_hi, row_sink);
    float row_max = -FMHA_INF, row_sum = 0.f;   /* row_sum: this lane's share */
    /* PV roles: O columns [col0, col0 + kOCols) of every row. */
    const int col0 = warp * kOCols;
    float acc[kOM][kON][4];
#pragma unroll
    for (int mt = 0; mt < kOM; ++mt)
#pragma unroll
        for (int nt = 0; nt < kON; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;

    const LogitScale logit(p);
    const float mul = logit.mul;

    for (int t = 0; t < num_tiles; ++t) {
        /* 1. Tile t is in; every warp is done with tile t - 1, so its stage, the partials and P
           may be overwritten. */
        wait_copies<kStages - 2>();
        fmha_barrier();
        if (t + kStages - 1 < num_tiles)
            load_tile_async(stage_at(t + kStages - 1), p, blk.kv, blk.list.first_key(t + kStages - 1));
        commit_copies();
        const Half* kt = (const Half*)stage_at(t);
        if (kFp8) {
            widen_tile<kBN, kDq, kThreads, Mma>(wide, TileAt(), stage_at(t));
            fmha_barrier();
            kt = wide;
        }
        const int j0 = blk.list.first_key(t);

        /* 2. Partial S of this warp's piece. */
        {
            float s[kMR][kNR][4];
#pragma unroll
            for (int mt = 0; mt < kMR; ++mt)
#pragma unroll
                for (int nt = 0; nt < kNR; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
#pragma unroll
            for (int ks = 0; ks < kSliceSteps; ++ks) {
                const int kk = s_slice * kSliceSteps + ks;
                unsigned qa[kMR][4];
#pragma unroll
                for (int mt = 0; mt < kMR; ++mt)
                    ldmatrix_x4(qa[mt], sq + swizzle<kDq>(s_row0 + mt * 16 + lane % 16, 2 * kk + lane / 16));
#pragma unroll
                for (int np = 0; np < kNR / 2; ++np) {
                    unsigned kb[4];
                    ldmatrix_x4(kb, kt + swizzle<kDq>(s_key0 + np * 16 + lane % 8 + 8 * (lane / 16),
                                                      2 * kk + lane / 8 % 2));
#pragma unroll
                    for (int mt = 0; mt < kMR; ++mt) {
                        Mma::mma(s[mt][2 * np], qa[mt], kb);
                        Mma::mma(s[mt][2 * np + 1], qa[mt], kb + 2);
                    }
                }
            }
            float* xs = sx + s_slice * kBM * kXPitch;
#pragma unroll
            for (int mt = 0; mt < kMR; ++mt)
#pragma unroll
                for (int nt = 0; nt < kNR; ++nt)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        *(Vec<float, 2>*)(xs + (s_row0 + mt * 16 + g + 8 * h) * kXPitch + s_key0 + nt * 8 + 2 * q4) =
                            Vec<float, 2>{{s[mt][nt][2 * h], s[mt][nt][2 * h + 1]}};
        }
        fmha_barrier();

        /* 3. Row softmax over the summed partials; P over slice 0, alpha per row. */
        {
            float x[kKeysPerLane];
#pragma unroll
            for (int e = 0; e < kKeysPerLane; ++e) x[e] = 0.f;
            constexpr int kW = kKeysPerLane % 4 == 0 ? 4 : 2;   /* floats per shared-memory load */
#pragma unroll
            for (int sl = 0; sl < kSlices; ++sl)
#pragma unroll
                for (int e = 0; e < kKeysPerLane; e += kW) {
                    const Vec<float, kW> v = *(const Vec<float, kW>*)(sx + (sl * kBM + red_row) * kXPitch + red_key + e);
#pragma unroll
                    for (int i = 0; i < kW; ++i) x[e + i] += v.v[i];
                }
            const bool all_visible = blk.all_visible(j0);
            float tile_max = -FMHA_INF;
#pragma unroll
            for (int e = 0; e < kKeysPerLane; ++e) {
                float v = logit.soft_cap(x[e]);
                const int j = j0 + red_key + e;
                if (!all_visible && !(blk.in_split(j) && visible(j, row_lo, row_hi, row_sink))) v = -FMHA_INF;
                x[e] = v;
                tile_max = fmaxf(tile_max, v);
            }
#pragma unroll
            for (int o = kLanesPerRow / 2; o > 0; o /= 2) tile_max = fmaxf(tile_max, fmha_shfl_xor(tile_max, o));
            const float new_max = fmaxf(row_max, tile_max);
            const float base = new_max == -FMHA_INF ? 0.f : new_max * mul;   /* nothing visible yet: P = 0 */
            const float alpha = exp2_approx(fmaf(row_max, mul, -base));
            float sum = 0.f;
            Vec<unsigned, kKeysPerLane / 2> packed;
#pragma unroll
            for (int e = 0; e < kKeysPerLane; e += 2) {
                const float p0 = exp2_approx(fmaf(x[e], mul, -base)), p1 = exp2_approx(fmaf(x[e + 1], mul, -base));
                sum += p0 + p1;
                packed.v[e / 2] = Mma::pack(p0, p1);
            }
            row_sum = row_sum * alpha + sum;
            row_max = new_max;
            sync_warp();   /* P overwrites the slice-0 partials of this warp's rows, read above by its lanes */
            *(Vec<unsigned, kKeysPerLane / 2>*)(sp + red_row * kPPitch + red_key) = packed;
            if (red_key == 0) row_scale[red_row] = alpha;
        }
        fmha_barrier();

        /* 4. O = alpha O + P V. */
#pragma unroll
        for (int mt = 0; mt < kOM; ++mt) {
            const float alpha_lo = row_scale[mt * 16 + g], alpha_hi = row_scale[mt * 16 + g + 8];
#pragma unroll
            for (int nt = 0; nt < kON; ++nt) {
                acc[mt][nt][0] *= alpha_lo;
                acc[mt][nt][1] *= alpha_lo;
                acc[mt][nt][2] *= alpha_hi;
                acc[mt][nt][3] *= alpha_hi;
            }
        }
#pragma unroll
        for (int kk = 0; kk < kBN / 16; ++kk) {
            unsigned pa[kOM][4];
#pragma unroll
            for (int mt = 0; mt < kOM; ++mt)
                ldmatrix_x4(pa[mt], sp + (mt * 16 + lane % 16) * kPPitch + kk * 16 + 8 * (lane / 16));
#pragma unroll
            for (int dp = 0; dp < kON / 2; ++dp) {
                unsigned vb[4];
                ldmatrix_x4_trans(vb, kt + swizzle<kDq>(kk * 16 + lane % 8 + 8 * (lane / 8 % 2),
                                                        col0 / 8 + 2 * dp + lane / 16));
#pragma unroll
                for (int mt = 0; mt < kOM; ++mt) {
                    Mma::mma(acc[mt][2 * dp], pa[mt], vb);
                    Mma::mma(acc[mt][2 * dp + 1], pa[mt], vb + 2);
                }
            }
        }
    }
    wait_copies<0>();   /* no tile at all: the Q copies are still retired before exit */
    fmha_barrier();     /* the last tile's readers of row_scale are done */

    /* Sink (unsplit only: the combine adds it), normalisation, LSE; the row's factor to row_scale. */
    float sum = row_sum;
#pragma unroll
    for (int o = kLanesPerRow / 2; o > 0; o /= 2) sum += fmha_shfl_xor(sum, o);
    if (red_key == 0) {
        float factor = 0.f;
        if (red_m < blk.rows) {
            float row_lse;
            factor = finish_row(p, blk.head(red_m), row_max * mul, sum, !blk.split_kv, p.k_descale, row_lse);
            blk.store_lse(p, red_m, row_lse);
        }
        row_scale[red_row] = factor;
    }
    fmha_barrier();

#pragma unroll
    for (int mt = 0; mt < kOM; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = mt * 16 + g + 8 * h, m = blk.m0 + row;
            if (m >= blk.rows) continue;
            const float f = row_scale[row];
            blk.store_o<kON, Mma>(p, m, col0, [&](int nt, int e) { return acc[mt][nt][2 * h + e] * f; });
        }
}

}  // namespace fmha

#if defined(FMHA_CUDA)
extern "C" __global__ void __launch_bounds__(fmha::kThreads, fmha::kMinBlocks) fmha_mla_decode(FmhaParams p)
{
    extern __shared__ __align__(128) unsigned char smem[];
    fmha::mla_decode(p, smem);
}
#else
extern "C" __global__ void fmha_mla_decode(FmhaParams p)
{
    alignas(128) static unsigned char smem[fmha::kSmemBytes];
    fmha::mla_decode(p, smem);
}
#endif
