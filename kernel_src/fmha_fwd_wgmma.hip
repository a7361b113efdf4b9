/* fmha_fwd_wgmma.hip: attention forward on Hopper's warpgroup tensor cores (wgmma, sm_90a),
   dense or paged K/V, fp16 / bf16 / fp8 e4m3fn. Same semantics, parameters and grid as the other
   forward kernels (fmha_fwd_mma.hip): block (x, y, z) = (tile of BLOCK_Q rows of the G = Hq/Hk
   query heads sharing KV head y, KV head, sequence); row m <-> (query position m / G, head
   y*G + m % G).

   Compile-time specialisation (-D): FMHA_DTYPE fp16 | bf16 | fp8_e4m3fn, FMHA_HDIM_Q, FMHA_HDIM_V
   (multiples of 64, <= 256), FMHA_KV_SOURCE dense | paged, FMHA_BLOCK_K (64 or 128), FMHA_SOFT_CAP
   0 | 1, FMHA_BLOCKS_PER_SM (1 or 2), optional FMHA_PERSISTENT 0 | 1, FMHA_SPLIT_KV 0 | 1 (grid
   instances that honour num_splits), FMHA_WARPGROUPS 1 | 2 | 3 (default 2; BLOCK_Q = 64 rows per
   computing warpgroup; 3: warp-specialised only) and FMHA_WARP_SPECIALIZED 0 | 1. The one-warpgroup tiles are decode's: with
   a few query rows per KV head a second warpgroup only doubles the idle tensor-core work of each
   step, and two such blocks per SM (BLOCK_K 64) hide each other's step latency. Also builds for
   the CPU emulation (-DFMHA_CPU_EMULATION, tests/test_wgmma_emulated.py, tests/test_mixed_emulated.py).

   Warp-specialised instances (16-bit, grid or persistent): an extra warpgroup, the producer, does
   every copy (each item's Q once the consumers released the previous one's, then K_t and V_t into
   stage n % kStages, n counting the block's tiles over its items, as soon as the consumers released the
   stage's previous tile; paged rows through its own row table) and gives its registers to the two
   (hdim 64: three) consumer warpgroups (setmaxnreg), which only wait on mbarriers
   (fmha_async_barrier.h): no block barrier in the main loop, so the consumers drift apart and one's
   softmax overlaps another's GEMMs (H100, fp16 hdim 128 8k: 449 -> 615 TFLOPS; NOTES.md, session 8).
   A persistent block's producer runs on into its next item's Q and K/V while the consumers finish
   the last one, through three K/V stages where shared memory holds them (H100, fp16 prefill with
   short row tiles: +1..+20% over the grid launch; NOTES.md, sessions 10-11). FMHA_KV_TMA 1 (grid
   launch): the producer's thread 0 copies each whole K/V tile as tensor-map boxes (TMA) instead of
   128 threads' cp.async (H100, fp16/bf16 8k: +1.3..+3.0%, past cuDNN at hdim 128 and 256;
   NOTES.md, session 13).

   A block's attention is a work item (fmha_work_plan.h), as in fmha_fwd_mma.hip: entry
   fmha_fwd_wgmma(FmhaParams) runs the grid above (one item per block, every key, final output;
   or, num_splits > 1, one key split per block, fp32 partials for fmha_combine.hip);
   FMHA_PERSISTENT 1 builds fmha_fwd_wgmma_persistent(FmhaMixedArgs) instead, a fixed grid whose
   block x runs the plan's items for x (family mixed, and prefill points on the warp-specialised
   tiles), split rows writing fp32 partials.

   Algorithm:
   - Q, and two (persistent warp-specialised: three) stages of K/V tiles, live in shared memory
     in the 128-byte swizzled layout that wgmma reads (fmha_wgmma.h); the copying threads fetch
     16-byte chunks with cp.async, absent keys zero-filled (TMA tiles: whole K/V tiles as boxes,
     whose 128-byte swizzle is that layout).
   - S = Q K^T (m64 x BLOCK_K per warpgroup, both operands from shared memory); the online softmax
     on S's accumulator registers; O += P V with P from registers (rounded to the input type) and
     V from shared memory. Step t issues S_{t+1} and P_t V_t back to back and runs the softmax of
     tile t + 1 while P_t V_t is still on the tensor cores (FlashAttention-3's intra-warpgroup
     overlap); O is rescaled just before P_t V_t is issued, when the row maxima moved (kMaxSlackLog2).
   - K and V have two stages each, fetched one step ahead: K_{t+2} and V_{t+1} are issued right
     after step t's block barrier (the only one per step), which every warpgroup reaches only
     after it retired the previous readers of those stages.
   - Masks, sinks, soft cap, LSE and the empty-row rules as fmha_fwd_mma.hip (KeyTiles skips
     tiles nobody sees; only boundary tiles, of the mask or of a split, are masked element-wise).

   fp8 (e4m3fn inputs, bf16 output; S carries q_descale k_descale through scale_log2, O carries
   v_descale, as the portable kernel): wgmma m64nNk32 .e4m3 reads 8-bit operands K-major only, so
   - S = Q K^T is as above with 1-byte values: a 128-byte line holds 128 of them, a k-step is k32.
   - O = P V needs V^T [head dim][keys] (K-major B). V_t is cp.async'ed as stored into a staging
     tile one step earlier than the 16-bit V (V_{t+2} at step t), and during step t, while S_{t+1}
     and P_t V_t run, the threads transpose staged V_{t+1} into V^T stage (t+1) % 2 (VTransposer:
     word loads, byte permutes, 16-byte stores); the next step's fence + barrier publish it.
   - P's A fragment (m64nNk32, 8-bit A from registers; PTX ISA wgmma register fragments, the same
     per warp as mma.m16n8k32's, CUTLASS ALayout_64x32): warp w, lane 4 g + q, register j, byte e
     holds P[16 w + g + 8 (j % 2)][k = 4 q + 16 (j / 2) + e]. S's accumulator gives that thread
     columns 8 n + 2 q + {0, 1} of each n8 tile n (rows g, g + 8). Rather than exchange values
     between threads, V^T's keys are permuted within each 16-key group: MMA position
     k = 4 q + e (bits q1 q0 e1 e0) holds key 8 e1 + 2 q + e0 (bits e1 q1 q0 e0), so byte e of
     register j of a k32 step is S column 16 (j / 2) + 8 (e / 2) + 2 q + e % 2 of that step,
     which this thread already holds. In a 16-byte chunk of a V^T row the keys are
     0 1 8 9 2 3 10 11 4 5 12 13 6 7 14 15.
   - P = 2^(S - m) lies in [0, 1]; it enters P V as P 2^8 (exact: folded into the exponent), the
     largest power of two within e4m3fn's 448, so values down to 2^-14 keep e4m3's 4 significant
     bits (unscaled they would go subnormal below 2^-6 and vanish below 2^-10); rounding is to
     nearest even (cvt.rn.satfinite). The row sums l use the unrounded fp32 P (also scaled by 2^8:
     it cancels in O / l, the sink term gets the same scale and LSE subtracts 8). */
#include "fmha_port.h"
#include "fmha_params.h"
#include "fmha_fwd_common.h"
#include "fmha_mma_sync.h"
#include "fmha_tc_common.h"
#include "fmha_work_plan.h"
#include "fmha_async_barrier.h"
#if defined(FMHA_CUDA)
#include "fmha_wgmma.h"
#elif defined(FMHA_CPU_EMULATION)
#include "fmha_wgmma_emulation.h"
#else
#error "fmha_fwd_wgmma.hip uses Hopper's wgmma: build it for sm_90a (or -DFMHA_CPU_EMULATION for tests)"
#endif

#if !defined(FMHA_DTYPE) || !defined(FMHA_HDIM_Q) || !defined(FMHA_HDIM_V) || !defined(FMHA_KV_SOURCE) || \
    !defined(FMHA_BLOCK_K) || !defined(FMHA_SOFT_CAP)
#error "fmha_fwd_wgmma.hip needs -D FMHA_DTYPE, FMHA_HDIM_Q/V, FMHA_KV_SOURCE, FMHA_BLOCK_K, FMHA_SOFT_CAP"
#endif

#ifndef FMHA_PERSISTENT
#define FMHA_PERSISTENT 0
#endif
#ifndef FMHA_SPLIT_KV
#define FMHA_SPLIT_KV 0
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

/* Element types: storage, wgmma operand type, and the float-pair pack of the output (which is
   also P's for the 16-bit types). */
struct in_fp16 { typedef unsigned short Stored; typedef wg_fp16 Wg; typedef mma_fp16 Out; };
struct in_bf16 { typedef unsigned short Stored; typedef wg_bf16 Wg; typedef mma_bf16 Out; };
struct in_fp8_e4m3fn { typedef unsigned char Stored; typedef wg_e4m3 Wg; typedef mma_bf16 Out; };
typedef FMHA_CAT(in_, FMHA_DTYPE) In;
typedef In::Stored InT;
typedef In::Out OutPack;
constexpr bool kFp8 = sizeof(InT) == 1;
struct kv_dense { static constexpr bool paged = false; };
struct kv_paged { static constexpr bool paged = true; };
constexpr bool kPaged = FMHA_CAT(kv_, FMHA_KV_SOURCE)::paged;
constexpr bool kPersistent = FMHA_PERSISTENT != 0;
/* Split-KV grid instances honour num_splits; the others compile its key ranges out (their cut
   tile list, in-range tests and partial epilogue cost prefill ~1.5%). */
constexpr bool kSplitKv = FMHA_SPLIT_KV != 0 && !kPersistent;
constexpr bool kKeyRanges = kPersistent || kSplitKv;   /* items may cover only some keys */

constexpr int kDq = FMHA_HDIM_Q, kDv = FMHA_HDIM_V, kBK = FMHA_BLOCK_K;
#ifndef FMHA_WARPGROUPS
#define FMHA_WARPGROUPS 2
#endif
#ifndef FMHA_WARP_SPECIALIZED
#define FMHA_WARP_SPECIALIZED 0
#endif
constexpr int kWarpgroups = FMHA_WARPGROUPS, kBQ = 64 * kWarpgroups;
/* Warp-specialised instances (FMHA_WARP_SPECIALIZED 1): warpgroup 0 only copies (Q, K and V), the
   kWarpgroups after it only compute; the others' threads all do both. Threads 0 .. kLoaderThreads - 1
   copy; the consumer threads are the last kConsumerThreads. */
constexpr bool kWarpSpecialized = FMHA_WARP_SPECIALIZED != 0;
constexpr int kConsumerThreads = 128 * kWarpgroups, kProducerThreads = kWarpSpecialized ? 128 : 0;
constexpr int kThreads = kConsumerThreads + kProducerThreads;
constexpr int kLoaderThreads = kWarpSpecialized ? kProducerThreads : kThreads;
/* K/V stages (FMHA_KV_STAGES): two, or three for warp-specialised tiles whose shared memory has
   room (the all-threads step's one block barrier frees exactly the stages two tiles apart). The
   block's n-th K/V tile uses stage n % kStages for the (n / kStages)-th time. */
#ifndef FMHA_KV_STAGES
#define FMHA_KV_STAGES 2
#endif
constexpr int kStages = FMHA_KV_STAGES;
static_assert(kStages == 2 || (kWarpSpecialized && kStages == 3), "K/V stages: 2, or 3 when warp-specialised");
/* FMHA_KV_TMA 1: the producer copies whole K/V tiles with the tensor memory accelerator (a
   thread issues a box per 128-byte column of the tile, paged: per page of it, the pages spread
   over its warps, and the mbarrier counts their bytes) instead of its 128 threads' cp.async
   chunks; a sequence's last partial tile still takes cp.async, whose zero fill stops at the
   sequence's end (a box's stops only at the tensor's), paged through rows located on the spot (no
   row table). The launch passes the driver's tensor maps of K and V (FmhaTmaArgs). */
#ifndef FMHA_KV_TMA
#define FMHA_KV_TMA 0
#endif
constexpr bool kKvTma = FMHA_KV_TMA != 0;
constexpr bool kRowTable = kPaged && !kKvTma;   /* paged rows resolved ahead into a shared table */
FMHA_DEVICE int stage_of(int n) { return (int)((unsigned)n % kStages); }
FMHA_DEVICE int stage_use(int n) { return (int)((unsigned)n / kStages); }
constexpr int kChunkValues = 16 / (int)sizeof(InT);   /* values per 16-byte chunk */
constexpr int kStepValues = 32 / (int)sizeof(InT);    /* values per k-step (32 bytes: k16, or k32 for fp8) */
constexpr int kKS = kDq / kStepValues;   /* k-steps of Q K^T */
constexpr int kPS = kBK / kStepValues;   /* k-steps of P V */
constexpr int kPScaleLog2 = kFp8 ? 8 : 0;   /* P enters P V as P 2^kPScaleLog2 (fp8: see the header) */
/* Conditional rescaling (FlashAttention-4's): a row's running max m lags its true max by up to
   kMaxSlackLog2 (log2 units), so P = 2^(S - m) <= 2^8, exact in 16-bit P and in the fp32 sums,
   and O is rescaled only on the steps whose max grew past that. fp8's P already spends e4m3's
   range (2^kPScaleLog2): its max moves on every growth. */
constexpr float kMaxSlackLog2 = kFp8 ? 0.f : 8.f;
static_assert(kDq % 64 == 0 && kDv % 64 == 0 && kDq <= 256 && kDv <= 256, "head dims: 64, 128, 192 or 256");
static_assert(kBK == 64 || kBK == 128, "BLOCK_K: 64 or 128");
static_assert(kWarpgroups == 1 || kWarpgroups == 2 || (kWarpgroups == 3 && FMHA_WARP_SPECIALIZED),
              "one or two warpgroups (three: warp-specialised only)");

typedef wg::WgmmaOps<In::Wg, kBK> MmaS;   /* S = Q K^T: N = BLOCK_K */
typedef wg::WgmmaOps<In::Wg, kDv> MmaO;   /* O += P V: N = head dim of V */

/* Shared memory in bytes, each region a whole number of 1024-byte swizzle atoms. A swizzled row
   takes whole 128-byte lines (fp8 head dim 64: half a line, the rest unused). */
template <int Values>
constexpr int line_bytes = (Values * (int)sizeof(InT) + 127) / 128 * 128;
constexpr int kQBytes = kBQ * line_bytes<kDq>, kKBytes = kBK * line_bytes<kDq>;
constexpr int kVBytes = kBK * line_bytes<kDv>;      /* a V stage as loaded: the operand (16-bit), staging (fp8) */
constexpr int kVtBytes = kFp8 ? kDv * 2 * kBK : 0;  /* fp8: V^T, both stages: [Dv][2 BK] K-major */
constexpr int kTileBytes = kQBytes + kStages * (kKBytes + kVBytes) + kVtBytes;

/* Warp-specialised instances: the producer's copies of Q and of each K/V stage complete `full`
   phases (one arrival per producer thread, made when its copies have landed); the consumers'
   release of a stage completes an `empty` phase (one arrival per consumer warp, after its wgmma
   reading the stage retired). The n-th K/V tile a block handles (counted over all its work items:
   a persistent block's producer runs into the next item's tiles while the consumers finish the
   last one's) uses stage n % kStages for the (n / kStages)-th time. Q has one stage: the
   consumers release it (q_empty) once their last S = Q K^T retired, so the next item's Q lands
   while they finish P V and write O. */
struct Pipeline {
    MBarrier q, q_empty, full_k[kStages], full_v[kStages], empty_k[kStages], empty_v[kStages];
};
/* Where a warp-specialised block's pipeline stands before a work item: K/V tiles and Q tiles it
   has put through it so far (the same count for the producer and the consumers). */
struct PipelinePosition {
    int tiles = 0, queries = 0;
};
/* Who runs an attention() instantiation: every thread (copies and math), or one role of a
   warp-specialised block. */
enum { kEveryThread, kProducerRole, kConsumerRole };
template <int R>
struct RoleTag { static constexpr int value = R; };
constexpr int kPipelineBytes = kWarpSpecialized ? 128 : 0;   /* after the tiles */
constexpr int kSmemBytes = kTileBytes + kPipelineBytes;
static_assert(sizeof(Pipeline) <= 128, "pipeline barriers: 128 bytes after the tiles");
static_assert(!kWarpSpecialized || !kFp8, "warp specialisation: 16-bit instances (fp8's V transpose needs every thread)");
static_assert(!kKvTma || (kWarpSpecialized && !kPersistent), "FMHA_KV_TMA: warp-specialised grid instances");
/* K's and V's tensor maps (kernels_wgmma.kv_geometry), 128-byte swizzle: dense dims (head dim,
   rows, KV heads, sequences), boxes of 128 bytes x BLOCK_K rows; paged dims (head dim, page rows,
   KV heads, pages), boxes of 128 bytes x min(page size, BLOCK_K) rows (TmaPart). */
struct KvTensorMaps {
    TensorMap k, v;
};
/* setmaxnreg: the producer gives registers to the consumers; the block's pool is what it was
   launched with (its threads x the launch bounds' per-thread limit, in units of 8). */
#ifndef FMHA_BLOCKS_PER_SM
#define FMHA_BLOCKS_PER_SM 1
#endif
/* The producer's registers: 64 with two consumer warpgroups (at 40, ptxas serialised the paged
   copies: +30%, H100 s8); 32 with three, whose consumers (hdim 64) then get 160 and do not spill
   (at 40 or 64 they did; at 32 the paged copies still issue back to back: SASS checked). */
constexpr int kProducerRegisters = kWarpgroups == 3 ? 32 : 64;
constexpr int kLaunchRegisters = (65536 / (kThreads * FMHA_BLOCKS_PER_SM) < 255 ? 65536 / (kThreads * FMHA_BLOCKS_PER_SM) : 255) / 8 * 8;
constexpr int kConsumerRegisters0 = (kLaunchRegisters * kThreads - kProducerRegisters * kProducerThreads) / kConsumerThreads / 8 * 8;
constexpr int kConsumerRegisters = kConsumerRegisters0 < 240 ? kConsumerRegisters0 : 240;
constexpr int kLoaderBarrier = 1;   /* named barrier 1: the producer's row-table slots */
static_assert(kSmemBytes + 1024 <= 227 * 1024, "with the 1 KB alignment slack, within a Hopper block's opt-in 227 KB");

/* cp.async a [Rows][D] tile into its swizzled layout; rows(r, offset) says whether row r is
   present and where it starts (elements from `base`). */
template <int Rows, int D, class RowsOf>
FMHA_DEVICE void load_tile_async(unsigned char* tile, const InT* base, const RowsOf& rows)
{
    constexpr int kChunks = D / kChunkValues;
    for (int c = threadIdx.x; c < Rows * kChunks; c += kLoaderThreads) {
        const int r = c / kChunks, chunk = c % kChunks;
        i64 offset;
        const bool present = rows(r, offset);
        copy16_async(tile + sw128<Rows, 1>(r, chunk), present ? base + offset + chunk * kChunkValues : base, present);
    }
}

/* Which rows and 16-byte chunk of the [BLOCK_K][D] K or V tiles each thread copies: the same chunk
   of rows r0, r0 + kStep, ... of every tile, so its shared-memory offsets are fixed (copy_offset)
   and only the rows' global addresses change per tile:
   a few instructions per 16-byte copy instead of a divide, a swizzle and 64-bit row arithmetic
   each (which made this kernel issue-bound). */

/* Into the swizzled operand layout. The swizzle repeats every 8 rows: with kStep a multiple of 8
   every row of a thread has the same one; with kStep 4 (head dim 256 copied by the 128 threads of
   a producer: 32 chunks per row) its odd copies' rows have row % 8 ^ 4, so their chunk column
   moves by a fixed 64 bytes. */
template <int D>
struct SwizzledRows {
    static constexpr int kChunks = D / kChunkValues, kStep = kLoaderThreads / kChunks, kCopies = kBK / kStep;
    static constexpr int kSmemStep = kStep * 128;
    static_assert(kLoaderThreads % kChunks == 0 && (kStep % 8 == 0 || kStep == 4) && kBK % kStep == 0,
                  "copier: tile shape");
    int r0, chunk, smem_offset, odd_shift;
    FMHA_DEVICE SwizzledRows() : r0(threadIdx.x / kChunks), chunk(threadIdx.x % kChunks)
    {
        smem_offset = sw128<kBK, 1>(r0, chunk);
        odd_shift = kStep % 8 == 0 ? 0 : sw128<kBK, 1>(r0 + kStep, chunk) - smem_offset - kSmemStep;
    }
    /* copy i's shared-memory offset (i is a compile-time constant in the unrolled loops) */
    FMHA_DEVICE int copy_offset(int i) const { return smem_offset + i * kSmemStep + ((i & 1) ? odd_shift : 0); }
};

/* fp8 V into its staging tile [BLOCK_K][line_bytes<Dv>]: 16-byte chunk c of row r sits at chunk
   c ^ staging_swizzle(r), the same for the 16 rows of a key group and different for the 8 (or 4,
   spread 2 apart) groups of a tile, so VTransposer's loads (lane i reads a word of each row of
   group i % (BLOCK_K / 16)) hit 32 different banks. Each thread copies rows of one group:
   r0 + i kStep, kStep = 16 / kCopies. */
constexpr int kKeyGroups = kBK / 16;
FMHA_DEVICE int staging_swizzle(int row) { return (row / 16 * (8 / kKeyGroups)) & 7; }

template <int D>
struct StagingRows {
    static constexpr int kChunks = D / kChunkValues, kCopies = kBK * kChunks / kLoaderThreads, kStep = 16 / kCopies;
    static constexpr int kSmemStep = kStep * line_bytes<D>, kGroupThreads = 16 * kChunks / kCopies;
    static_assert(kBK * kChunks % kLoaderThreads == 0 && 16 % kCopies == 0, "staging copier: tile shape");
    int r0, chunk, smem_offset;
    FMHA_DEVICE int copy_offset(int i) const { return smem_offset + i * kSmemStep; }
    FMHA_DEVICE StagingRows()
    {
        const int u = threadIdx.x % kGroupThreads;
        r0 = 16 * (threadIdx.x / kGroupThreads) + u / kChunks;
        chunk = u % kChunks;
        smem_offset = r0 * line_bytes<D> + ((chunk ^ staging_swizzle(r0)) << 4);
    }
};

/* Dense rows: key j of the sequence is row first_row + j. */
template <class Rows>
struct DenseTileCopier : Rows {
    using Rows::kStep;
    using Rows::kCopies;
    const InT* src;      /* row r0, this thread's chunk, of key 0 */
    i64 row_stride, step;
    int length;

    FMHA_DEVICE DenseTileCopier(const InT* base, i64 stride, const KvSequence& kv)
        : row_stride(stride), step(kStep * stride), length(kv.length)
    {
        src = base + (kv.first_row + this->r0) * stride + this->chunk * kChunkValues;
    }

    FMHA_DEVICE void load(unsigned char* tile, int j0, const i64* /* no row table */) const
    {
        const InT* row = src + j0 * row_stride;
        if (j0 + kBK <= length) {   /* no row past the end: no per-row test */
#pragma unroll
            for (int i = 0; i < kCopies; ++i, row += step) copy16_async(tile + this->copy_offset(i), row, true);
        } else {
#pragma unroll
            for (int i = 0; i < kCopies; ++i, row += step) {
                const bool present = j0 + this->r0 + i * kStep < length;
                copy16_async(tile + this->copy_offset(i), present ? row : src, present);
            }
        }
    }
};

/* Paged rows: a key's page costs an integer divide and a dependent page-table load, too much for
   each copy; so each tile's rows are resolved once, by one thread per row, three tiles ahead
   into a shared table (slot t % 3 holds tile t: K_{t+2} and V_{t+1}, fp8 V_{t+2}, are being read
   from it while tile t + 3 is written), and the copies read their offsets there (-1 = absent).
   The page ids are loaded a step before they are stored (fetch into registers, then store): a
   page-table load waits behind the K/V traffic of a saturated memory system, and waiting for it
   in the step that issued it stalled every step (paged decode 2.6 -> 3.6 TB/s, H200). */
struct PagedRowTable {
    static constexpr int kSlots = 3, kRowsPerThread = (kBK + kLoaderThreads - 1) / kLoaderThreads;
    i64 k[kSlots][kBK], v[kSlots][kBK];

    struct Fetched { int page[kRowsPerThread], slot[kRowsPerThread]; };   /* this thread's rows of a tile */

    FMHA_DEVICE static void fetch(Fetched& rows, int j0, const FmhaParams& p, const KvSequence& kv)
    {
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) {
            const int r = threadIdx.x + i * kLoaderThreads;
            rows.page[i] = -1;
            if (r < kBK) locate_key<true>(p, kv, j0 + r, rows.page[i], rows.slot[i]);
        }
    }

    FMHA_DEVICE void store(const Fetched& rows, int t, const FmhaParams& p)
    {
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) {
            const int r = threadIdx.x + i * kLoaderThreads, page = rows.page[i], slot = rows.slot[i];
            if (r >= kBK) continue;
            k[t % kSlots][r] = page >= 0 ? page * p.k_page_stride + slot * p.k_row_stride : -1;
            v[t % kSlots][r] = page >= 0 ? page * p.v_page_stride + slot * p.v_row_stride : -1;
        }
    }
};

template <class Rows>
struct PagedTileCopier : Rows {
    using Rows::kStep;
    using Rows::kCopies;
    const InT* src;      /* the (sequence, KV head) base, this thread's chunk */

    FMHA_DEVICE explicit PagedTileCopier(const InT* base) : src(base + this->chunk * kChunkValues) {}

    /* This thread's rows of a tile, read from its row-table slot: the warp-specialised producer
       reads them before it waits for the stage, so the copies issue back to back once it is free. */
    struct Offsets { i64 row[kCopies]; };

    FMHA_DEVICE Offsets read(const i64* offsets) const
    {
        Offsets o;
#pragma unroll
        for (int i = 0; i < kCopies; ++i) o.row[i] = offsets[this->r0 + i * kStep];
        return o;
    }

    /* copy i from row `offset` (-1: absent, not read but zero-filled: no address select) */
    FMHA_DEVICE void issue_one(unsigned char* tile, int i, i64 offset) const
    {
        copy16_async(tile + this->copy_offset(i), src + offset, offset >= 0);
    }

    FMHA_DEVICE void issue(unsigned char* tile, const Offsets& o) const
    {
#pragma unroll
        for (int i = 0; i < kCopies; ++i) issue_one(tile, i, o.row[i]);
    }

    FMHA_DEVICE void load(unsigned char* tile, int /* j0: resolved into offsets */, const i64* offsets) const
    {
        issue(tile, read(offsets));
    }
};

struct NoRowTable { struct Fetched {}; };   /* dense: nothing to resolve ahead */

template <bool B>
struct Bool { static constexpr bool value = B; };   /* a compile-time flag passed to a generic lambda */

FMHA_DEVICE const i64* k_offsets(const PagedRowTable& table, int t) { return table.k[t % PagedRowTable::kSlots]; }
FMHA_DEVICE const i64* v_offsets(const PagedRowTable& table, int t) { return table.v[t % PagedRowTable::kSlots]; }
FMHA_DEVICE const i64* k_offsets(const NoRowTable&, int) { return nullptr; }
FMHA_DEVICE const i64* v_offsets(const NoRowTable&, int) { return nullptr; }

template <bool Paged, class Rows>
struct CopierFor { typedef DenseTileCopier<Rows> type; };
template <class Rows>
struct CopierFor<true, Rows> { typedef PagedTileCopier<Rows> type; };
template <bool Fp8>
struct VRowsFor { typedef SwizzledRows<kDv> type; };   /* 16-bit V: the N-major operand itself */
template <>
struct VRowsFor<true> { typedef StagingRows<kDv> type; };

template <class Copier>
FMHA_DEVICE Copier make_copier(const InT* base, i64 row_stride, const KvSequence& kv)
{
    if constexpr (kPaged)
        return Copier(base);
    else
        return Copier(base, row_stride, kv);
}

/* fp8: staged V [keys][Dv] -> V^T [Dv][keys] (K-major, keys in the order of the header's
   permutation). Lane l of warp w owns 16 keys (group c = l % G, G = BLOCK_K / 16) x 4 head dims
   (16 h + 4 sub .. + 3, sub = l / G % 4, h = w (8 / G) + l / (4 G); further passes, where the
   block's W warps cover fewer than Dv / 16 chunks, add W (8 / G) to h): 16 word loads (key k of
   the group: its 4 dims; through the staging swizzle the warp's 32 loads hit 32 banks), 32 byte
   permutes, 4 16-byte stores (dim d, the group's chunk column of V^T row d; a quarter warp's 8
   lanes write 8 different columns of the swizzle). V^T stage s holds keys s BLOCK_K .. of the
   [Dv][2 BLOCK_K] tile: 16-key group c of stage s is its chunk column s G + c. */
struct VTransposer {
    static constexpr int kGroups = kKeyGroups, kPerWarp = 8 / kGroups, kDimChunks = kDv / 16;
    static constexpr int kPassChunks = kConsumerThreads / 32 * kPerWarp;   /* chunks of 16 dims per pass */
    static constexpr int kPasses = (kDimChunks + kPassChunks - 1) / kPassChunks;
    static constexpr int kPassDims = 16 * kPassChunks;
    int first_dim, h, group_swizzle, load_offset;   /* load_offset: the group's first row, 4 sub */
    /* Per V^T stage: the byte offset of row first_dim in the group's column block, and the
       group's chunk column ^ (first_dim % 8) in bytes. */
    int store_base[2], store_swizzle[2];

    FMHA_DEVICE VTransposer()
    {
        const int lane = threadIdx.x % 32, sub = lane / kGroups % 4, group = lane % kGroups;
        h = threadIdx.x / 32 * kPerWarp + lane / (4 * kGroups);
        first_dim = 16 * h + 4 * sub;
        group_swizzle = staging_swizzle(16 * group);
        load_offset = 16 * group * line_bytes<kDv> + 4 * sub;
#pragma unroll
        for (int stage = 0; stage < 2; ++stage) {
            const int column = stage * kGroups + group;
            store_base[stage] = (column >> 3) * (kDv * 128) + first_dim * 128;
            store_swizzle[stage] = ((column & 7) ^ (first_dim & 7)) << 4;
        }
    }

    FMHA_DEVICE void run(const unsigned char* staging, unsigned char* vt, int stage) const
    {
        unsigned char* const dst = vt + (stage ? store_base[1] : store_base[0]);   /* selects: no local memory */
        const int swizzle = stage ? store_swizzle[1] : store_swizzle[0];
#pragma unroll
        for (int pass = 0; pass < kPasses; ++pass) {
            if (first_dim + pass * kPassDims >= kDv) continue;   /* warp-uniform: head dims 64 leave warps idle */
            const int chunk = (h + pass * kPassChunks) ^ group_swizzle;
            const unsigned char* src = staging + load_offset + (chunk << 4);
            unsigned w[16];
#pragma unroll
            for (int k = 0; k < 16; ++k) w[k] = *(const unsigned*)(src + k * line_bytes<kDv>);
            /* out[i][m]: dim first_dim + i of keys 2m, 2m + 1, 8 + 2m, 9 + 2m (bytes 4m .. 4m + 3 of the chunk) */
            unsigned out[4][4];
#pragma unroll
            for (int m = 0; m < 4; ++m) {
                const unsigned lo = wg::byte_perm(w[2 * m], w[2 * m + 1], 0x5140);   /* dims 0, 1 of keys 2m, 2m+1 */
                const unsigned hi = wg::byte_perm(w[2 * m], w[2 * m + 1], 0x7362);   /* dims 2, 3 */
                const unsigned lo8 = wg::byte_perm(w[8 + 2 * m], w[9 + 2 * m], 0x5140);
                const unsigned hi8 = wg::byte_perm(w[8 + 2 * m], w[9 + 2 * m], 0x7362);
                out[0][m] = wg::byte_perm(lo, lo8, 0x5410);
                out[1][m] = wg::byte_perm(lo, lo8, 0x7632);
                out[2][m] = wg::byte_perm(hi, hi8, 0x5410);
                out[3][m] = wg::byte_perm(hi, hi8, 0x7632);
            }
            /* dim first_dim + i (< 4 on from a multiple of 4): row + i, chunk column ^ (row % 8) ^ i */
#pragma unroll
            for (int i = 0; i < 4; ++i)
                *(uint4*)(dst + pass * kPassDims * 128 + i * 128 + (swizzle ^ (i << 4))) =
                    uint4{out[i][0], out[i][1], out[i][2], out[i][3]};
        }
    }
};

/* FMHA_KV_TMA: a whole K or V tile is a grid of boxes, 128-byte columns x parts of box_rows rows
   (dense: one part of BLOCK_K rows; paged: one per page, box_rows = min(page size, BLOCK_K), pages
   of 16-row multiples so a part starts on a 1024-byte swizzle atom). A part's boxes (every column)
   are one producer thread's, and part p is thread (p % 4) 32 + p / 4's: a TMA instruction's
   operands are uniform registers, so one warp's lanes issue theirs one after another, and a page-16
   tile's 8 parts are spread over the four warps (one thread issuing all 16 of its boxes ran at 59%
   of cp.async, H100 s13; a box per thread with a dense tile's two columns on two warps was 1% slower
   than one thread issuing both, s14). A part starts at key j (map row: j's row in its page, or the
   sequence's first row + j); its outer coordinate is the sequence (dense: thread 0's one part), or
   the page id (tma_page's, loaded tiles ahead, as a page-table load waits behind the K/V traffic). */
constexpr int kMaxParts = kBK / 16;
static_assert(!kKvTma || kProducerThreads == 128, "TMA: parts spread over four producer warps");

FMHA_DEVICE int tma_part_index() { return threadIdx.x % 32 * 4 + threadIdx.x / 32; }

FMHA_DEVICE int tma_box_rows(const FmhaParams& p) { return kPaged ? imin(p.page_size, kBK) : kBK; }

/* Paged: the page id of this thread's part of the tile from key j0 (-1: no part, or past the tile
   or the keys). */
FMHA_DEVICE int tma_page(const FmhaParams& p, const KvSequence& kv, int j0)
{
    const int part = tma_part_index(), j = j0 + part * tma_box_rows(p);
    if (part >= kMaxParts || j >= imin(j0 + kBK, kv.length)) return -1;
    return kv.pages[j / p.page_size];
}

/* A part of a whole K or V tile: where its boxes start (outer: sequence or page id); box_bytes 0:
   no part. Paged, tma_part works out this thread's part of the tile from key j0 (`page`: its
   tma_page) before the producer waits for the stage: the copy should start as soon as the stage is
   free (a page size's modulo there cost 3.5% at pages of two tiles, H100 s14). */
struct TmaPart {
    int offset, row, outer, box_bytes;   /* offset: of its column-0 box in the stage's tile */
};

FMHA_DEVICE TmaPart tma_part(const FmhaParams& p, int j0, int page)
{
    if (page < 0) return {0, 0, 0, 0};
    const int box_rows = tma_box_rows(p);
    /* a part is a whole page (rows from 0) or a tile's rows of one page */
    const int row = p.page_size > kBK ? j0 % p.page_size : 0;
    return {tma_part_index() * box_rows * 128, row, page, box_rows * 128};
}

/* A thread with a part adds its boxes' bytes to `full`'s phase as it arrives, then issues them; the
   others only arrive (the phase completes once every producer thread arrived and every box landed). */
template <class Copier>
FMHA_DEVICE void tma_tile(const Copier&, unsigned char* tile, const TensorMap* map, const TmaPart& part, int hk,
                          MBarrier& full)
{
    constexpr int kColumns = Copier::kChunks / 8;
    /* dense: the test and sizes in constants, as thread 0 alone has a part: with them read from the
       part the compiler moved its coordinates into uniform registers box by box (hdim 256 -2.7%, H100
       s14) */
    if (kPaged ? part.box_bytes == 0 : threadIdx.x != 0) {
        mbarrier_arrive(&full);
        return;
    }
    mbarrier_arrive_expect_tx(&full, kColumns * (kPaged ? part.box_bytes : kBK * 128));
    for (int c = 0; c < kColumns; ++c)
        tma_load_4d(tile + c * kBK * 128 + (kPaged ? part.offset : 0), map, c * kChunkValues * 8, part.row, hk,
                    part.outer, &full);
}

/* FMHA_KV_TMA, paged: the last, partial tile by cp.async, each row located as it is copied (few
   registers: the producer of three consumer warpgroups has 32). */
template <class Copier>
FMHA_DEVICE void load_located(const Copier& copier, unsigned char* tile, int j0, const FmhaParams& p,
                              const KvSequence& kv, i64 page_stride, i64 row_stride)
{
#pragma unroll
    for (int i = 0; i < Copier::kCopies; ++i) {
        int page, slot;
        locate_key<true>(p, kv, j0 + copier.r0 + i * Copier::kStep, page, slot);
        copier.issue_one(tile, i, page >= 0 ? page * page_stride + slot * row_stride : -1);
    }
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

/* One work item's attention (fmha_work_plan.h: rows [row_begin, row_end) of one (sequence, KV
   head) of a query sequence starting at row q_first with seqlen_q positions, keys [key_begin,
   key_end), final output or an fp32 partial slot). */
template <bool SoftCap, int Role, class RowTable>
FMHA_DEVICE void attention(const FmhaParams& p, const WorkItem& item, int q_first, int seqlen_q,
                           const PartialSlots& partials, unsigned char* smem, RowTable& row_table,
                           PipelinePosition& pos, const KvTensorMaps* maps)
{
    unsigned char* const sq = smem;
    unsigned char* const sk = sq + kQBytes;     /* stage s at sk + s * kKBytes */
    unsigned char* const sv = sk + kStages * kKBytes; /* stage s at sv + s * kVBytes (fp8: the staging tiles) */
    unsigned char* const svt = sv + kStages * kVBytes;   /* fp8: V^T */

    const int tid = threadIdx.x - kProducerThreads, lane = tid % 32, warp = tid / 32, wg_index = warp / 4;
    const int b = item.seq, hk = item.kv_head;
    const int group = p.nhead_q / p.nhead_k;
    const int m0 = item.row_begin, rows = item.row_end;
    const bool partial = kKeyRanges && item.slot >= 0;   /* a persistent item's slot or a split; uniform */

    const KvSequence kv = kv_sequence<kPaged>(p, b, hk);
    const MaskSpec mask = mask_for_kv_head(p, hk, seqlen_q, kv.length);
    const KeyTiles<kBK> all_tiles(mask, m0 / group, (imin(m0 + kBQ, rows) - 1) / group);
    const TileList<kBK> tiles =
        kKeyRanges ? TileList<kBK>(all_tiles, item.key_begin, item.key_end) : TileList<kBK>(all_tiles);
    const InT* k_base = (const InT*)p.k + b * p.k_batch_stride + hk * p.k_head_stride;
    const InT* v_base = (const InT*)p.v + b * p.v_batch_stride + hk * p.v_head_stride;
    /* Tile t's K lives in K stage t % 2, its V in V stage t % 2 (fp8: staging and V^T stage t % 2);
       tiles past the end are not fetched. */
    typedef typename CopierFor<kPaged, SwizzledRows<kDq>>::type KCopier;
    typedef typename CopierFor<kPaged, typename VRowsFor<kFp8>::type>::type VCopier;
    const KCopier k_copier = make_copier<KCopier>(k_base, p.k_row_stride, kv);
    const VCopier v_copier = make_copier<VCopier>(v_base, p.v_row_stride, kv);
    auto load_k = [&](int t) {
        if (t < tiles.count) k_copier.load(sk + (t & 1) * kKBytes, tiles.first_key(t), k_offsets(row_table, t));
    };
    auto load_v = [&](int t) {
        if (t < tiles.count) v_copier.load(sv + (t & 1) * kVBytes, tiles.first_key(t), v_offsets(row_table, t));
    };
    typename RowTable::Fetched fetched;   /* paged: the page ids of the next tile to store */
    auto fetch_rows = [&](int t) {
        if constexpr (kRowTable)
            if (t < tiles.count) RowTable::fetch(fetched, tiles.first_key(t), p, kv);
    };
    auto store_rows = [&](int t) {
        if constexpr (kRowTable)
            if (t < tiles.count) row_table.store(fetched, t, p);
    };
    const VTransposer transposer;
    auto transpose_v = [&](int t) {
        if constexpr (kFp8) transposer.run(sv + (t & 1) * kVBytes, svt, t & 1);
    };

    /* Warp-specialised: the producer warpgroup copies Q once the consumers released the previous
       item's, then K_t and V_t into their stage as soon as the consumers released the stage's
       previous tile, and goes on to the next item (paged: once all its threads issued tile t's
       copies, tile t's row-table slot takes tile t + 3's rows). Stages and phases count the
       block's tiles from n0, over its items. */
    Pipeline& pipe = *(Pipeline*)(smem + kTileBytes);
    const int n0 = kWarpSpecialized ? pos.tiles : 0, queries = pos.queries;
    if constexpr (kWarpSpecialized) {
        if (tiles.count > 0) {   /* both roles skip an item without key tiles: no Q, no stages */
            pos.tiles += tiles.count;
            pos.queries += 1;
        }
        if constexpr (Role == kProducerRole) {
            if (tiles.count == 0) return;
            if constexpr (kRowTable) {
                for (int t = 0; t < PagedRowTable::kSlots; ++t) {
                    fetch_rows(t);
                    store_rows(t);
                }
                named_barrier_sync(kLoaderBarrier, kProducerThreads);
                fetch_rows(PagedRowTable::kSlots);
            }
            if (queries > 0) mbarrier_wait(&pipe.q_empty, (queries - 1) & 1);
            load_tile_async<kBQ, kDq>(sq, (const InT*)p.q, QueryRows{p, b, hk, group, q_first, rows, m0});
            mbarrier_arrive_after_copies(&pipe.q);
            /* FMHA_KV_TMA, paged: whether this thread's warp has parts (warp-uniform: part p is in warp
               p % 4); the others only arrive, without working out coordinates (with every producer
               warp working them out, dense hdim 128 ran 1.8% slower, H100 s14) */
            const bool part_thread = kKvTma && kPaged && (int)threadIdx.x / 32 < kBK / tma_box_rows(p);
            /* the block's n-th tile into stage n % kStages once its (n / kStages - 1)-th tile there was
               released; `map`, `page`: its tensor map and, paged, this thread's part's page id
               (FMHA_KV_TMA) */
            auto produce = [&](const auto& copier, const i64* offsets, unsigned char* stage_tile, int t,
                               MBarrier& empty, MBarrier& full, const TensorMap* map, int page, i64 page_stride,
                               i64 row_stride) {
                const int use = stage_use(n0 + t), j0 = tiles.first_key(t);
                if (kKvTma && j0 + kBK <= kv.length) {
                    if constexpr (kPaged) {
                        TmaPart part = {0, 0, 0, 0};
                        if (part_thread) part = tma_part(p, j0, page);
                        if (use > 0) mbarrier_wait(&empty, (use - 1) & 1);
                        tma_tile(copier, stage_tile, map, part, hk, full);
                    } else {   /* dense: thread 0's one part */
                        TmaPart part;
                        if (threadIdx.x == 0) part = {0, kv.first_row + j0, p.group_mode ? 0 : b, kBK * 128};
                        if (use > 0) mbarrier_wait(&empty, (use - 1) & 1);
                        tma_tile(copier, stage_tile, map, part, hk, full);
                    }
                    return;
                }
                if constexpr (kRowTable) {
                    const auto rows = copier.read(offsets);
                    if (use > 0) mbarrier_wait(&empty, (use - 1) & 1);
                    copier.issue(stage_tile, rows);
                } else {
                    if (use > 0) mbarrier_wait(&empty, (use - 1) & 1);
                    if constexpr (kPaged)
                        load_located(copier, stage_tile, j0, p, kv, page_stride, row_stride);
                    else
                        copier.load(stage_tile, j0, offsets);
                }
                mbarrier_arrive_after_copies(&full);
            };
            /* Paged: K runs a tile ahead of V (K_{t+1}'s stage is released half a step before V_t's,
               S being waited for before P V, and S_{t+1} needs it first): paged prefill +1.2%; dense
               lost 1% (hdim 128) and 4.5% (hdim 64) with it, so it keeps K_t then V_t (H100, s8). */
            constexpr int kAhead = kPaged ? 1 : 0;
            /* FMHA_KV_TMA, paged: this thread's part's page ids of tiles t, t + 1, t + 2 (loaded two
               steps before use) */
            auto page_of = [&](int t) {
                return kKvTma && kPaged && part_thread && t < tiles.count ? tma_page(p, kv, tiles.first_key(t)) : -1;
            };
            int page_t = page_of(0), page_t1 = page_of(1), page_t2 = page_of(2);
            auto produce_k = [&](int t, int page) {
                const int stage = stage_of(n0 + t);
                produce(k_copier, k_offsets(row_table, t), sk + stage * kKBytes, t, pipe.empty_k[stage], pipe.full_k[stage],
                        kKvTma ? &maps->k : nullptr, page, p.k_page_stride, p.k_row_stride);
            };
            if (kAhead > 0) produce_k(0, page_t);
            for (int t = 0; t < tiles.count; ++t) {
                const int stage = stage_of(n0 + t);
                if (t + kAhead < tiles.count) produce_k(t + kAhead, kAhead > 0 ? page_t1 : page_t);
                produce(v_copier, v_offsets(row_table, t), sv + stage * kVBytes, t, pipe.empty_v[stage], pipe.full_v[stage],
                        kKvTma ? &maps->v : nullptr, page_t, p.v_page_stride, p.v_row_stride);
                page_t = page_t1;
                page_t1 = page_t2;
                page_t2 = page_of(t + 3);
                if constexpr (kRowTable) {   /* tile t's slot: K_t and V_t issued (the last: the next item may refill) */
                    named_barrier_sync(kLoaderBarrier, kProducerThreads);
                    store_rows(t + 3);
                    fetch_rows(t + 4);
                }
            }
            return;   /* the caller retires the copies once, after the last item */
        }
    }
    /* Consumers (warp-specialised): a stage's copies are visible to wgmma once its `full` phase
       completed and this thread fenced the async proxy; a warp releases a stage once its wgmma
       reading it retired. (FA3's ping-pong, the two warpgroups taking turns to issue their GEMMs
       through named barriers, was measured slower here: NOTES.md, session 8.) */
    auto landed = [&](MBarrier (&full)[kStages], int t) {
        const int n = n0 + t;
        mbarrier_wait(&full[stage_of(n)], stage_use(n) & 1);
        wg::fence_async_shared();
    };
    auto release = [&](MBarrier (&empty)[kStages], int t) {
        if (lane == 0) mbarrier_arrive(&empty[stage_of(n0 + t)]);
    };
    auto release_q = [&] {   /* after the item's last S = Q K^T retired */
        if (lane == 0) mbarrier_arrive(&pipe.q_empty);
    };

    /* This thread's rows: warp w of warpgroup wg holds rows 64 wg + 16 (w % 4) + g + 8 h. */
    const int g = lane / 4, quad_col = 2 * (lane % 4);
    const int wg_row0 = wg_index * 64, warp_row0 = wg_row0 + 16 * (warp % 4);
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

    /* Descriptors of k-step 0 of Q (this warpgroup's rows), K stage 0 and V stage 0 (fp8: V^T),
       computed once: the steps and stages add constant advances. */
    const unsigned long long q_desc = kmajor_descriptor<kBQ>(sq, wg_row0, 0);
    const unsigned long long k_desc = kmajor_descriptor<kBK>(sk, 0, 0);
    const unsigned long long v_desc = kFp8 ? kmajor_descriptor<kDv>(svt, 0, 0) : nmajor_descriptor<kBK>(sv, 0);

    /* S = Q K_t^T into s: issued, not waited. */
    auto issue_qk = [&](float (&s)[kBK / 2], int t) {
        const unsigned long long ks = k_desc + stage_of(n0 + t) * smem_advance(kKBytes);
        wg::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kKS; ++kk)
            MmaS::ss(s, q_desc + kmajor_advance<kBQ>(kk), ks + kmajor_advance<kBK>(kk), kk > 0);
        wg::wgmma_commit();
    };
    /* Soft cap, mask and online softmax of tile t: s becomes P (fp32, times 2^kPScaleLog2), the
       running max/sum move on and alpha[h] is the factor O must be scaled by before P V_t.
       Element i of s: row g + 8 ((i / 2) % 2), column 8 (i / 4) + quad_col + i % 2. */
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
                    const int j = j0 + nt * 8 + quad_col + e;
                    /* split edges fall inside tiles (plan cuts do not) */
                    const bool in_split = !kSplitKv || (j >= item.key_begin && j < item.key_end);
                    if (masked.value && !(in_split && visible(j, row_lo[h], row_hi[h], row_sink[h])))
                        x = -FMHA_INF;
                    s[4 * nt + 2 * h + e] = x;
                    tile_max = fmaxf(tile_max, x);
                }
            tile_max = fmaxf(tile_max, fmha_shfl_xor(tile_max, 1));
            tile_max = fmaxf(tile_max, fmha_shfl_xor(tile_max, 2));
            /* The running max moves only when the tile's exceeds it by more than kMaxSlackLog2 (NaN,
               both -inf: it stays): otherwise alpha is exactly 1 and issue_pv skips O's rescale. */
            const float new_max = (tile_max - row_max[h]) * mul > kMaxSlackLog2 ? tile_max : row_max[h];
            const float base = new_max == -FMHA_INF ? 0.f : new_max * mul;  /* nothing visible yet: all P are 0 */
            const float p_base = kFp8 ? base - kPScaleLog2 : base;
            alpha[h] = new_max == row_max[h] ? 1.f : exp2_approx(fmaf(row_max[h], mul, -base));
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < kBK / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float pv = exp2_approx(fmaf(s[4 * nt + 2 * h + e], mul, -p_base));
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
        if (all_tiles.all_visible(j0) && (!kSplitKv || (j0 >= item.key_begin && j0 + kBK <= item.key_end)))
            softmax_tile(Bool<false>(), s, j0, alpha);
        else
            softmax_tile(Bool<true>(), s, j0, alpha);
    };
    /* P rounded to the input type in the A-operand layout. 16-bit: P's k16 step kk is S's n8
       tiles 2 kk and 2 kk + 1. fp8: its k32 step kk is S's n8 tiles 4 kk .. 4 kk + 3; register j
       takes, for row g + 8 (j % 2), columns 2q, 2q + 1 of n8 tiles 4 kk + 2 (j / 2) and + 1 (V^T's
       key order, see the header). */
    unsigned pa[kPS][4];
    auto pack_p = [&](const float (&s)[kBK / 2]) {
#pragma unroll
        for (int kk = 0; kk < kPS; ++kk) {
            if constexpr (kFp8) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int i = 16 * kk + 8 * (j / 2) + 2 * (j % 2);
                    pa[kk][j] = wg::pack_e4m3x4(s[i], s[i + 1], s[i + 4], s[i + 5]);
                }
            } else {
                pa[kk][0] = OutPack::pack(s[8 * kk + 0], s[8 * kk + 1]);
                pa[kk][1] = OutPack::pack(s[8 * kk + 2], s[8 * kk + 3]);
                pa[kk][2] = OutPack::pack(s[8 * kk + 4], s[8 * kk + 5]);
                pa[kk][3] = OutPack::pack(s[8 * kk + 6], s[8 * kk + 7]);
            }
        }
    };
    auto copies_landed = [] {
        wait_copies<0>();
        wg::fence_async_shared();   /* also publishes this thread's V^T stores (fp8) to wgmma */
        fmha_barrier();
    };

    /* Prologue: the rows of tiles 0..2 resolved (tile 3's page ids fetched); Q and K_0, then V_0
       and K_1 (fp8: then V_1) in flight; S_0 and its softmax (fp8: V_0 transposed meanwhile). */
    if constexpr (!kWarpSpecialized) {
        if constexpr (kPaged) {
            for (int t = 0; t < PagedRowTable::kSlots; ++t) {
                fetch_rows(t);
                store_rows(t);
            }
            fmha_barrier();
            fetch_rows(PagedRowTable::kSlots);
        }
        load_tile_async<kBQ, kDq>(sq, (const InT*)p.q, QueryRows{p, b, hk, group, q_first, rows, m0});
        load_k(0);
        commit_copies();
        load_v(0);
        load_k(1);
        commit_copies();
        if constexpr (kFp8) {   /* V one tile further ahead: it is transposed a step before P V reads it */
            load_v(1);
            commit_copies();
        }
    }
    float s[kBK / 2], alpha[2];
    if (tiles.count > 0) {
        if constexpr (kWarpSpecialized) {
            mbarrier_wait(&pipe.q, queries & 1);
            landed(pipe.full_k, 0);
        } else {
            wait_copies<1>();
            wg::fence_async_shared();
            fmha_barrier();
        }
        issue_qk(s, 0);
        transpose_v(0);
        wg::wgmma_wait<0>();
        wg::touch_registers(s);
        if constexpr (kWarpSpecialized) {
            release(pipe.empty_k, 0);
            if (tiles.count == 1) release_q();
        }
        softmax(s, 0, alpha);
        pack_p(s);
    }

    /* O = alpha O + P_t V_t: issued, not waited. */
    auto issue_pv = [&](int t) {
        if (fmha_warp_any(alpha[0] != 1.f || alpha[1] != 1.f)) {   /* a warp-uniform branch: no predicated FMULs */
#pragma unroll
            for (int dt = 0; dt < kDv / 8; ++dt)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[4 * dt + e] *= alpha[e / 2];
        }
        wg::wgmma_fence();
        if constexpr (kFp8) {
            /* V^T stage t % 2: its k-steps follow stage 0's kPS k-steps */
            const unsigned long long vs = v_desc + stage_of(n0 + t) * kmajor_advance<kDv>(kPS);
#pragma unroll
            for (int kk = 0; kk < kPS; ++kk) MmaO::rs(acc, pa[kk], vs + kmajor_advance<kDv>(kk), 1);
        } else {
            const unsigned long long vs = v_desc + stage_of(n0 + t) * smem_advance(kVBytes);
#pragma unroll
            for (int kk = 0; kk < kPS; ++kk) MmaO::rs(acc, pa[kk], vs + nmajor_advance(kk), 1);
        }
        wg::wgmma_commit();
    };

    /* Step t: S_{t+1} and P_t V_t in flight together; the softmax of tile t + 1 runs while P_t V_t
       does. Every warpgroup has retired S_t and P_{t-1} V_{t-1} at the barrier, so K stage t % 2
       and V stage (t + 1) % 2 are free for K_{t+2} and V_{t+1}. fp8: the barrier also ends the
       transpose of staged V_t (made in step t - 1), so staging stage t % 2 takes V_{t+2}, and V^T
       stage (t + 1) % 2 is free for V_{t+1}, transposed while S_{t+1} runs. The last step (P V
       only) is peeled off: issuing S under a condition makes ptxas serialise every wgmma. */
    const int last = tiles.count - 1;
    for (int t = 0; t < last; ++t) {
        if constexpr (kWarpSpecialized) {
            landed(pipe.full_k, t + 1);
            landed(pipe.full_v, t);
        } else {
            copies_landed();   /* K_{t+1} and V_t (fp8: V_{t+1}, and V_t^T); the rows of tile t + 2 resolved */
            load_k(t + 2);
            load_v(kFp8 ? t + 2 : t + 1);
            commit_copies();
            store_rows(t + 3);   /* into tile t's slot: its last copy was issued before this barrier */
            fetch_rows(t + 4);
        }
        issue_qk(s, t + 1);
        issue_pv(t);
        transpose_v(t + 1);
        wg::wgmma_wait<1>();
        wg::touch_registers(s);
        if constexpr (kWarpSpecialized) {
            release(pipe.empty_k, t + 1);
            if (t + 1 == last) release_q();
        }
        softmax(s, t + 1, alpha);
        wg::wgmma_wait<0>();
        wg::touch_registers(acc);
        if constexpr (kWarpSpecialized) release(pipe.empty_v, t);
        pack_p(s);
    }
    if (last >= 0) {
        if constexpr (kWarpSpecialized) {
            landed(pipe.full_v, last);
        } else {
            copies_landed();
        }
        issue_pv(last);
        wg::wgmma_wait<0>();
        wg::touch_registers(acc);
        if constexpr (kWarpSpecialized) release(pipe.empty_v, last);   /* the producer may fill it with the next item's */
    }
    if constexpr (!kWarpSpecialized) wait_copies<0>();   /* no tile at all: the Q copy group is still retired before exit */

    /* Sink (not in a partial: the merge adds it once), normalisation, LSE, O; sums are at P's
       scale 2^kPScaleLog2. */
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
        float row_lse;
        const float f = finish_row<kPScaleLog2>(p, head, row_max[h] * mul, sum, !partial, p.v_descale, row_lse);
        const i64 token = q_first + m / group;
        if (partial) {   /* fp32: a persistent item's slot row, or split s's row at O's element offsets */
            float *o_row, *lse_at;
            if constexpr (kPersistent) {
                const i64 at = (i64)item.slot * kBQ + (m - m0);
                o_row = partials.o + at * kDv;
                lse_at = partials.lse + at;
            } else {
                o_row = (float*)p.o_acc + item.slot * p.o_acc_split_stride + b * p.o_batch_stride +
                        head * p.o_head_stride + token * p.o_row_stride;
                lse_at = (float*)p.lse_acc + item.slot * p.lse_acc_split_stride + b * p.lse_batch_stride +
                         head * p.lse_head_stride + token;
            }
            if (lane % 4 == 0) *lse_at = row_lse;
            float* dst = o_row + quad_col;
#pragma unroll
            for (int dt = 0; dt < kDv / 8; ++dt) {
                dst[dt * 8] = acc[4 * dt + 2 * h] * f;
                dst[dt * 8 + 1] = acc[4 * dt + 2 * h + 1] * f;
            }
            continue;
        }
        if (p.has_lse && lane % 4 == 0) lse[b * p.lse_batch_stride + head * p.lse_head_stride + token] = row_lse;
        unsigned short* dst = o + b * p.o_batch_stride + head * p.o_head_stride + token * p.o_row_stride;
#pragma unroll
        for (int dt = 0; dt < kDv / 8; ++dt)
            *(unsigned*)(dst + dt * 8 + quad_col) = OutPack::pack(acc[4 * dt + 2 * h] * f, acc[4 * dt + 2 * h + 1] * f);
    }
}

/* The paged row table is static shared memory beside the dynamic tiles (kernels_wgmma counts it
   in the fit). Internal linkage, as in fmha_fwd_mma.hip: under the CPU emulation the table is a
   function-local static that must not be merged across the instances a test process loads. */
template <bool Paged, class Body>
static FMHA_DEVICE void with_row_table(const Body& body)
{
    if constexpr (Paged) {
        __shared__ PagedRowTable row_table;
        body(row_table);
    } else {
        NoRowTable none;
        body(none);
    }
}

/* Runs body(Role) on every thread: warp-specialised blocks initialise the pipeline's barriers
   (all before any use), then the producer gives registers to the consumers (setmaxnreg, once per
   block) and each role runs the block's items with its own instantiation of attention(), so the
   compiler sees the consumers' code only after their raise; the producer's copies retire before
   its threads exit. */
template <class Body>
static FMHA_DEVICE void run_roles(unsigned char* smem, const Body& body)
{
    if constexpr (kWarpSpecialized) {
        Pipeline& pipe = *(Pipeline*)(smem + kTileBytes);
        if (threadIdx.x == 0) {
            mbarrier_init(&pipe.q, kProducerThreads);
            mbarrier_init(&pipe.q_empty, kConsumerThreads / 32);
            for (int stage = 0; stage < kStages; ++stage) {
                mbarrier_init(&pipe.full_k[stage], kProducerThreads);
                mbarrier_init(&pipe.full_v[stage], kProducerThreads);
                mbarrier_init(&pipe.empty_k[stage], kConsumerThreads / 32);
                mbarrier_init(&pipe.empty_v[stage], kConsumerThreads / 32);
            }
        }
        fmha_barrier();
        if ((int)threadIdx.x < kProducerThreads) {
            lower_registers<kProducerRegisters>();
            body(RoleTag<kProducerRole>());
            commit_copies();
            wait_copies<0>();
        } else {
            raise_registers<kConsumerRegisters>();
            body(RoleTag<kConsumerRole>());
        }
    } else {
        body(RoleTag<kEveryThread>());
    }
}

/* Block (x, y, z) = one item: row tile x of KV head y of sequence z, every key, final output.
   Longest (causal) row tiles first. Split-KV (num_splits > 1), as fmha_fwd.hip: x = row tile *
   num_splits + split s, whose keys are [s X, (s + 1) X), X = ceil(keys / num_splits) (SPEC 6; the
   tiles a boundary cuts take the element-wise mask), and whose fp32 partials go to o_acc /
   lse_acc for the combine kernel. */
static FMHA_DEVICE void grid_block(const FmhaParams& p, unsigned char* smem, const KvTensorMaps* maps = nullptr)
{
    int q_first, seqlen_q;
    query_sequence(p, blockIdx.z, q_first, seqlen_q);
    const int rows = seqlen_q * (p.nhead_q / p.nhead_k);
    const int splits = kSplitKv ? imax(p.num_splits, 1) : 1, split = blockIdx.x % splits;
    const int m0 = (gridDim.x / splits - 1 - blockIdx.x / splits) * kBQ;
    if (m0 >= rows) return;   /* uniform over the block */
    WorkItem item = {(int)blockIdx.z, (int)blockIdx.y, m0, rows, 0, kAllKeys, -1};
    if (splits > 1) {
        const int keys = kv_sequence<kPaged>(p, item.seq, item.kv_head).length;
        const int width = (keys + splits - 1) / splits;
        item.key_begin = imin(split * width, keys);
        item.key_end = imin(item.key_begin + width, keys);
        item.slot = split;
    }
    with_row_table<kRowTable>([&](auto& row_table) {
        run_roles(smem, [&](auto role) {
            PipelinePosition pos;
            attention<FMHA_SOFT_CAP != 0, decltype(role)::value>(p, item, q_first, seqlen_q,
                                                                PartialSlots{nullptr, nullptr}, smem, row_table, pos,
                                                                maps);
        });
    });
}

/* Persistent block x: the plan's items for x, one after another. */
static FMHA_DEVICE void persistent_block(const FmhaMixedArgs& a, unsigned char* smem)
{
    const PlanView plan{(const int*)a.plan};
    const PartialSlots partials{(float*)a.o_part, (float*)a.lse_part};
    const int begin = plan.block_begin()[blockIdx.x], end = plan.block_begin()[blockIdx.x + 1];
    with_row_table<kRowTable>([&](auto& row_table) {
        run_roles(smem, [&](auto role) {
            PipelinePosition pos;
            for (int i = begin; i < end; ++i) {
                const WorkItem item = plan.items()[i];
                int q_first, seqlen_q;
                query_sequence(a.p, item.seq, q_first, seqlen_q);
                attention<FMHA_SOFT_CAP != 0, decltype(role)::value>(a.p, item, q_first, seqlen_q, partials, smem,
                                                                    row_table, pos, nullptr);
                /* the next item's loads overwrite Q, the K/V stages and the row table (warp-specialised:
                   the pipeline's barriers order them) */
                if constexpr (!kWarpSpecialized) fmha_barrier();
            }
        });
    });
}

}  // namespace fmha

/* FMHA_BLOCKS_PER_SM 2 caps registers at 128 per thread so two blocks share an SM: at hdim 64 a
   step's softmax is a short dependent chain that one block's two warps per scheduler cannot hide. */
#if FMHA_PERSISTENT
#define FMHA_WGMMA_ENTRY fmha_fwd_wgmma_persistent(FmhaMixedArgs args)
#define FMHA_WGMMA_BLOCK(smem) fmha::persistent_block(args, smem)
#elif FMHA_KV_TMA
/* The tensor maps follow FmhaParams (at its size rounded up to 64 bytes: kernels_wgmma.tma_arguments);
   the copies take their parameter-space address, which __grid_constant__ makes valid. */
struct FmhaTmaArgs {
    FmhaParams p;
    fmha::KvTensorMaps maps;
};
#if defined(FMHA_CUDA)
#define FMHA_WGMMA_ENTRY fmha_fwd_wgmma(const __grid_constant__ FmhaTmaArgs args)
#else
#define FMHA_WGMMA_ENTRY fmha_fwd_wgmma(const FmhaTmaArgs args)
#endif
#define FMHA_WGMMA_BLOCK(smem) fmha::grid_block(args.p, smem, &args.maps)
#else
#define FMHA_WGMMA_ENTRY fmha_fwd_wgmma(FmhaParams p)
#define FMHA_WGMMA_BLOCK(smem) fmha::grid_block(p, smem)
#endif
#if defined(FMHA_CUDA)
extern "C" __global__ void __launch_bounds__(fmha::kThreads, FMHA_BLOCKS_PER_SM) FMHA_WGMMA_ENTRY
{
    /* The swizzle needs 1024-byte aligned tiles; the launch adds 1 KB of slack for this. */
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const unsigned misalign = fmha::smem_address(smem_raw) & 1023u;
    FMHA_WGMMA_BLOCK(smem_raw + (misalign ? 1024u - misalign : 0u));
}
#else
extern "C" __global__ void FMHA_WGMMA_ENTRY
{
    alignas(1024) static unsigned char smem[fmha::kSmemBytes];
    fmha::wgmma_emu::set_shared_base(smem);
    FMHA_WGMMA_BLOCK(smem);
}
#endif
