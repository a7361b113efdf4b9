/* fmha_fwd.hip: portable fused attention forward (no matrix cores), dense or paged K/V.

   Semantics: docs SPEC sections 1, 2, 4, 5 and 6; host side: fmha_bench/kernels.py.

   Compile-time specialisation (-D):
     FMHA_DTYPE      fp16 | bf16 | fp8_e4m3fn | fp8_e4m3fnuz  (input; output fp16 / bf16 / bf16 / bf16)
     FMHA_HDIM_Q, FMHA_HDIM_V      head dims of Q/K and of V/O (multiples of 16)
     FMHA_KV_SOURCE  dense | paged  (the page-table kind, vllm / sglang / headwise, is a run-time field)
     FMHA_SPLIT_KV   0 | 1  (1: honours num_splits; 0 compiles the split logic out, so the unsplit
                     instance keeps its registers: nvcc sm_90a, hdim 128: 96, not 128)
     FMHA_BLOCK_Q, FMHA_BLOCK_K, FMHA_THREADS   tile of query rows, tile of keys, threads per block
   Everything else (mask, GQA ratio, lengths, soft cap, sink, LSE, descales, layouts through
   strides) is a field of FmhaParams.

   Work decomposition. Block (x, y, z) = (row tile * num_splits + split, KV head hk, sequence b).
   The G = Hq / Hk query heads that share KV head hk are stacked into one row space, row m <->
   (query position m / G, query head hk*G + m % G), so a decode step (Sq = 1) still fills a tile
   with GQA and every K/V tile is read once for all G heads. A block owns BLOCK_Q such rows.

   Split-KV (FMHA_SPLIT_KV and num_splits > 1, SPEC 6): split s of a sequence with Sk keys owns
   the keys [s*X, min(Sk, (s+1)*X)), X = ceil(Sk / num_splits), in the sequence's own key
   coordinates; the mask still applies, so a split may see nothing. Each block then writes its
   rows' normalised fp32 partial O and natural-log LSE of those keys to o_acc / lse_acc (a split
   that sees nothing: O = 0, LSE = -inf), leaving the learned sink out: fmha_combine.hip merges
   the splits and adds the sink exactly once. With num_splits = 1 it writes O and LSE itself.

   Algorithm (flash attention, one pass, online softmax in fp32, base 2):
     1. Load the Q tile into shared memory as fp32, pre-multiplied by
        scale * q_descale * k_descale * log2(e) (or by scale*q_descale*k_descale / c with a soft
        cap c, whose tanh is applied to the dot product). Absent rows are zero.
     2. The block's visible key range is the union over its rows of mask.row_bounds: the
        window [lo(first row), hi(last row)] (both bounds grow with the row) plus the sink
        prefix [0, sink_end(last row)), cut to the split's keys. Only key tiles meeting that
        range are visited; a tile visible to every row of the block and inside the split skips
        the element-wise mask, others apply it.
     3. Per key tile: resolve each key's location (dense row, or page id + slot through the
        page table; keys past the sequence end and recycled (-1) headwise pages are marked
        absent and never read: their shared-memory rows are zero and their logits -inf), load
        K as fp32, compute S = Q.K^T with a BLOCK_Q x BLOCK_K register tile per thread group,
        mask, update the row max m (a butterfly over the lanes of a row), P = 2^(S - m) into
        shared memory, rescale factor alpha = 2^(m_old - m); then load V into the same buffer
        and accumulate O = alpha * O + P.V, each thread owning a slice of O in registers.
     4. Finish: the learned sink (when set, unsplit) joins as one more logit without a value;
        O = acc * 2^(m - M) / l * v_descale, LSE = (M + log2 l) * ln 2 (natural log);
        a row that sees nothing writes O = 0 and LSE = -inf (or its sink logit).
   fp8: inputs are decoded exactly to fp32; S carries q_descale*k_descale, O carries v_descale;
   P stays fp32 (it is not quantized to fp8), so the reference must not quantize P either.
   A fully masked row never divides by zero; positions that are absent are never loaded, so
   NaN poison outside the valid tokens cannot leak into results. Shared memory is static
   (<= 48 KiB, asserted) and the launch needs no dynamic shared memory. */
#include "fmha_port.h"
#include "fmha_params.h"

#if !defined(FMHA_DTYPE) || !defined(FMHA_HDIM_Q) || !defined(FMHA_HDIM_V) || !defined(FMHA_KV_SOURCE) || \
    !defined(FMHA_SPLIT_KV) || !defined(FMHA_BLOCK_Q) || !defined(FMHA_BLOCK_K) || !defined(FMHA_THREADS)
#error "fmha_fwd.hip needs -D FMHA_DTYPE, FMHA_HDIM_Q/V, FMHA_KV_SOURCE, FMHA_SPLIT_KV, FMHA_BLOCK_Q/K, FMHA_THREADS"
#endif

#define FMHA_CAT_(a, b) a##b
#define FMHA_CAT(a, b) FMHA_CAT_(a, b)

namespace fmha {

typedef long long i64;

/* Vector types of our own (the vendors' float4/uint4 differ: HIP's are classes), sized and
   aligned so that copies become single 16- or 8-byte loads and stores. */
struct alignas(16) Float4 { float x, y, z, w; };
template <class T, int N>
struct alignas(sizeof(T) * N) Pack { T e[N]; };

/* ------------------------------------------------------------------ element types */
struct out_fp16 {
    typedef unsigned short storage;
    static FMHA_DEVICE storage encode(float x) { return fmha_float_to_fp16(x); }
};
struct out_bf16 {
    typedef unsigned short storage;
    static FMHA_DEVICE storage encode(float x) { return fmha_float_to_bf16(x); }
};
struct input_fp16 {
    typedef unsigned short storage;
    typedef out_fp16 out;
    static FMHA_DEVICE float decode(storage x) { return fmha_fp16_to_float(x); }
};
struct input_bf16 {
    typedef unsigned short storage;
    typedef out_bf16 out;
    static FMHA_DEVICE float decode(storage x) { return fmha_bf16_to_float(x); }
};
struct input_fp8_e4m3fn {
    typedef unsigned char storage;
    typedef out_bf16 out;
    static FMHA_DEVICE float decode(storage x) { return fmha_fp8_e4m3fn_to_float(x); }
};
struct input_fp8_e4m3fnuz {
    typedef unsigned char storage;
    typedef out_bf16 out;
    static FMHA_DEVICE float decode(storage x) { return fmha_fp8_e4m3fnuz_to_float(x); }
};
struct kv_dense { static constexpr bool paged = false; };
struct kv_paged { static constexpr bool paged = true; };

typedef FMHA_CAT(input_, FMHA_DTYPE) In;
typedef In::storage InT;
typedef In::out::storage OutT;
constexpr bool kPaged = FMHA_CAT(kv_, FMHA_KV_SOURCE)::paged;
constexpr bool kSplitKv = FMHA_SPLIT_KV != 0;

/* ------------------------------------------------------------------ tile geometry */
constexpr int kDq = FMHA_HDIM_Q, kDv = FMHA_HDIM_V;
constexpr int kBQ = FMHA_BLOCK_Q, kBK = FMHA_BLOCK_K, kThreads = FMHA_THREADS;
constexpr int kDmax = kDq > kDv ? kDq : kDv;
/* fp32 shared-memory row pitches: +4 floats keeps rows 16-byte aligned for 16-byte access and
   shifts consecutive rows by 4 banks, so the lanes reading different keys of one d do not
   collide. */
constexpr int kQPitch = kDq + 4, kKVPitch = kDmax + 4, kPPitch = kBK + 4;
/* 16-byte global loads: elements per chunk. */
constexpr int kVec = 16 / (int)sizeof(InT);

/* S = Q.K^T: kSTQ x kSTK threads, each kSM rows (strided by kSTQ) x kSN keys (strided by kSTK).
   The kSTK lanes of one row are consecutive, so row reductions are shuffles among them. */
constexpr int kSPerThread = kBQ * kBK / kThreads;
constexpr int kSN = kSPerThread < 4 ? kSPerThread : 4;
constexpr int kSTK = kBK / kSN;
constexpr int kSTQ = kThreads / kSTK;
constexpr int kSM = kBQ / kSTQ;
/* O += P.V: kOTQ x kOTD threads, each kOM rows (strided by kOTQ) x kOV 4-float columns (strided by kOTD). */
constexpr int kOCols = kDv / 4;
constexpr int kOTD = kOCols < 16 ? kOCols : 16;
constexpr int kOV = kOCols / kOTD;
constexpr int kOTQ = kThreads / kOTD;
constexpr int kOM = kBQ / kOTQ;

static_assert(kDq % kVec == 0 && kDv % kVec == 0, "head dims must be multiples of the 16-byte load");
static_assert(kThreads % 32 == 0 && kBK <= kThreads, "threads: whole warps, at least one per key of a tile");
static_assert(kSPerThread >= 1 && kSN * kSTK == kBK && kSTK * kSTQ == kThreads && kSM * kSTQ == kBQ,
              "BLOCK_Q x BLOCK_K must split evenly over the threads");
static_assert((kSTK & (kSTK - 1)) == 0 && kSTK <= FMHA_WAVE_SIZE, "lanes of one row: a power of two within a wave");
static_assert(kOV * kOTD == kOCols && kOTD * kOTQ == kThreads && kOM * kOTQ == kBQ,
              "BLOCK_Q x HDIM_V must split evenly over the threads");
static_assert(kBK % 4 == 0, "BLOCK_K: multiple of 4");

struct alignas(16) Smem {
    float q[kBQ * kQPitch];     /* Q tile, pre-scaled */
    float kv[kBK * kKVPitch];   /* K tile, then V tile */
    float p[kBQ * kPPitch];     /* P tile */
    float row_factor[kBQ];      /* per tile: alpha; at the end: the output factor */
    int key_page[kBK];          /* per key of the tile: page id (0 when dense), -1 = absent */
    int key_slot[kBK];          /* row within the page (dense: token row) */
};
static_assert(sizeof(Smem) <= 48 * 1024, "static shared memory must stay within 48 KiB");

FMHA_DEVICE int imin(int a, int b) { return a < b ? a : b; }
FMHA_DEVICE int imax(int a, int b) { return a > b ? a : b; }

/* ------------------------------------------------------------------ masks (masks.Mask.row_bounds) */
struct MaskSpec {
    int align, left, right, sink;
    int seqlen_q, seqlen_k;

    /* Row i sees keys lo..hi (empty when lo > hi) and the sink prefix [0, sink_end). */
    FMHA_DEVICE void bounds(int i, int& lo, int& hi, int& sink_end) const
    {
        if (align == FMHA_MASK_NONE) {
            lo = 0;
            hi = seqlen_k - 1;
            sink_end = 0;
            return;
        }
        const i64 pos = align == FMHA_MASK_TOP_LEFT ? (i64)i : (i64)i + seqlen_k - seqlen_q;
        const i64 l = left >= 0 ? pos - left : 0;
        const i64 h = right >= 0 ? pos + right : (i64)seqlen_k - 1;
        lo = (int)(l > 0 ? (l < seqlen_k ? l : seqlen_k) : 0);
        hi = (int)(h < seqlen_k - 1 ? (h > -1 ? h : -1) : seqlen_k - 1);
        sink_end = sink > 0 ? imax(imin(sink, hi + 1), 0) : 0;
    }
};

FMHA_DEVICE bool visible(int j, int lo, int hi, int sink_end) { return (j >= lo && j <= hi) || j < sink_end; }

/* Tiles [begin, end) of a key range cut to the tiles [lo, hi): begin, and the count (>= 0). */
FMHA_DEVICE int clip_tiles(int begin, int end, int lo, int hi, int& count)
{
    const int b = imax(begin, lo);
    count = imax(imin(end, hi) - b, 0);
    return b;
}

/* ------------------------------------------------------------------ K/V of one (sequence, KV head) */
struct KvSequence {
    int length;
    int first_row;           /* dense: row of token 0 */
    const int* pages;        /* paged: page ids of the sequence in token order */
};

FMHA_DEVICE KvSequence kv_sequence(const FmhaParams& p, int b, int hk)
{
    KvSequence s;
    s.first_row = 0;
    s.pages = nullptr;
    if (kPaged) {
        const int* table = (const int*)p.block_table;
        if (p.page_table == FMHA_PAGE_TABLE_SGLANG) {
            const int* indptr = (const int*)p.kv_indptr;
            const int first = indptr[b], n = indptr[b + 1] - first;
            s.pages = (const int*)p.kv_page_indices + first;
            s.length = n > 0 ? p.page_size * (n - 1) + ((const int*)p.kv_last_page_len)[b] : 0;
        } else {
            const i64 row = p.page_table == FMHA_PAGE_TABLE_HEADWISE ? (i64)b * p.nhead_k + hk : (i64)b;
            s.pages = table + row * p.max_pages;
            s.length = ((const int*)p.seqlen_k)[b];
        }
    } else if (p.group_mode) {
        const int* seqstart = (const int*)p.seqstart_k;
        s.first_row = seqstart[b];
        s.length = seqstart[b + 1] - s.first_row;
    } else {
        s.length = p.max_seqlen_k;
    }
    return s;
}

/* Where key j lives: page id (-1 = absent: past the end or a recycled page) and slot. */
FMHA_DEVICE void locate_key(const FmhaParams& p, const KvSequence& s, int j, int& page, int& slot)
{
    page = -1;
    slot = 0;
    if (j >= s.length) return;
    if (kPaged) {
        const int logical = j / p.page_size;
        page = s.pages[logical];
        slot = j - logical * p.page_size;
    } else {
        page = 0;
        slot = s.first_row + j;
    }
}

/* ------------------------------------------------------------------ tile loads */
/* 16 bytes of input elements -> kVec floats * mul at dst (16-byte aligned); src null: zeros. */
FMHA_DEVICE void store_chunk(float* dst, const InT* FMHA_RESTRICT src, float mul)
{
    if (!src) {
#pragma unroll
        for (int e = 0; e < kVec; e += 4) *(Float4*)(dst + e) = Float4{0.f, 0.f, 0.f, 0.f};
        return;
    }
    const Pack<InT, kVec> chunk = *(const Pack<InT, kVec>*)src;
#pragma unroll
    for (int e = 0; e < kVec; e += 4)
        *(Float4*)(dst + e) = Float4{In::decode(chunk.e[e + 0]) * mul, In::decode(chunk.e[e + 1]) * mul,
                                     In::decode(chunk.e[e + 2]) * mul, In::decode(chunk.e[e + 3]) * mul};
}

/* K or V rows of the current key tile (locations in smem.key_page/key_slot) into smem.kv. */
template <int D>
FMHA_DEVICE void load_kv_tile(Smem& sm, const InT* FMHA_RESTRICT base, i64 page_stride, i64 row_stride)
{
    constexpr int kChunks = D / kVec;
    for (int c = threadIdx.x; c < kBK * kChunks; c += kThreads) {
        const int r = c / kChunks, col = (c % kChunks) * kVec;
        const int page = sm.key_page[r];
        const InT* src = page >= 0 ? base + page * page_stride + sm.key_slot[r] * row_stride + col : nullptr;
        store_chunk(&sm.kv[r * kKVPitch + col], src, 1.f);
    }
}

}  // namespace fmha

extern "C" __global__ void FMHA_LAUNCH_BOUNDS(FMHA_THREADS) fmha_fwd(FmhaParams p)
{
    using namespace fmha;
    __shared__ Smem sm;
    const int tid = threadIdx.x;
    const int b = blockIdx.z, hk = blockIdx.y;
    const int group = p.nhead_q / p.nhead_k;
    const bool split_kv = kSplitKv && p.num_splits > 1;
    const int num_splits = split_kv ? p.num_splits : 1;
    const int split = blockIdx.x % num_splits;

    int q_first = 0, seqlen_q = p.max_seqlen_q;
    if (p.group_mode) {
        const int* seqstart = (const int*)p.seqstart_q;
        q_first = seqstart[b];
        seqlen_q = seqstart[b + 1] - q_first;
    }
    const int rows = seqlen_q * group;  /* (position, head) rows of this KV head */
    const int m0 = blockIdx.x / num_splits * kBQ;
    if (m0 >= rows) return;             /* uniform over the block */

    const KvSequence kv = kv_sequence(p, b, hk);
    MaskSpec mask = {p.mask_align, p.mask_left, p.mask_right, p.mask_sink, seqlen_q, kv.length};
    if (hk < 32 * FMHA_SWA_HEAD_WORDS && ((p.swa_heads[hk >> 5] >> (hk & 31)) & 1u)) {
        mask.align = FMHA_MASK_BOTTOM_RIGHT;
        mask.left = p.swa_left;
        mask.right = 0;
        mask.sink = p.swa_sink;
    }
    /* This split's keys [key_begin, key_end) (all of them when unsplit). */
    const int split_width = (kv.length + num_splits - 1) / num_splits;
    const int key_begin = imin(split * split_width, kv.length);
    const int key_end = imin(key_begin + split_width, kv.length);

    /* 1. Q tile (pre-scaled). */
    const float cap = p.soft_cap;
    const float qk_scale = p.scale * p.q_descale * p.k_descale;
    const float q_mul = cap > 0.f ? qk_scale / cap : p.scale_log2;
    const float cap_log2 = cap * FMHA_LOG2E;
    {
        constexpr int kChunks = kDq / kVec;
        const InT* q = (const InT*)p.q;
        for (int c = tid; c < kBQ * kChunks; c += kThreads) {
            const int r = c / kChunks, col = (c % kChunks) * kVec;
            const int m = m0 + r;
            const InT* src = nullptr;
            if (m < rows) {
                const int h = hk * group + m % group;
                const i64 row = q_first + m / group;
                src = q + b * p.q_batch_stride + h * p.q_head_stride + row * p.q_row_stride + col;
            }
            store_chunk(&sm.q[r * kQPitch + col], src, q_mul);
        }
    }

    /* 2. Key tiles this block must visit. */
    const int i_first = m0 / group, i_last = (imin(m0 + kBQ, rows) - 1) / group;
    int lo_first, hi_first, sink_first, lo_last, hi_last, sink_last;
    mask.bounds(i_first, lo_first, hi_first, sink_first);
    mask.bounds(i_last, lo_last, hi_last, sink_last);
    const int sink_tiles = (sink_last + kBK - 1) / kBK;
    const int window_begin = imax(lo_first / kBK, sink_tiles);
    const int window_end = hi_last >= lo_first ? hi_last / kBK + 1 : 0;
    int sink_first_tile = 0, sink_count = sink_tiles;
    int window_first_tile = window_begin, window_count = imax(window_end - window_begin, 0);
    if (kSplitKv) {  /* only the tiles that meet the split's keys */
        const int tile_begin = key_begin / kBK;
        const int tile_end = key_end > key_begin ? (key_end - 1) / kBK + 1 : tile_begin;
        sink_first_tile = clip_tiles(0, sink_tiles, tile_begin, tile_end, sink_count);
        window_first_tile = clip_tiles(window_begin, window_end, tile_begin, tile_end, window_count);
    }
    const int num_tiles = sink_count + window_count;

    /* Per-thread S rows and their mask bounds. */
    const int s_tk = tid % kSTK, s_tq = tid / kSTK;
    int row_lo[kSM], row_hi[kSM], row_sink[kSM];
    float row_max[kSM], row_sum[kSM];  /* row_sum: this lane's share, relative to row_max */
#pragma unroll
    for (int i = 0; i < kSM; ++i) {
        mask.bounds((m0 + s_tq + i * kSTQ) / group, row_lo[i], row_hi[i], row_sink[i]);
        row_max[i] = -FMHA_INF;
        row_sum[i] = 0.f;
    }
    /* Per-thread O slice. */
    const int o_td = tid % kOTD, o_tq = tid / kOTD;
    Float4 acc[kOM][kOV];
#pragma unroll
    for (int i = 0; i < kOM; ++i)
#pragma unroll
        for (int u = 0; u < kOV; ++u) acc[i][u] = Float4{0.f, 0.f, 0.f, 0.f};

    const InT* k_base = (const InT*)p.k + b * p.k_batch_stride + hk * p.k_head_stride;
    const InT* v_base = (const InT*)p.v + b * p.v_batch_stride + hk * p.v_head_stride;

    for (int t = 0; t < num_tiles; ++t) {
        const int j0 = (t < sink_count ? sink_first_tile + t : window_first_tile + (t - sink_count)) * kBK;
        /* Tiles inside the split and inside the sink prefix of every row, or inside every row's
           window, need no mask. */
        const bool tile_in_split = !kSplitKv || (j0 >= key_begin && j0 + kBK <= key_end);
        const bool all_visible =
            tile_in_split && (j0 + kBK <= sink_first || (j0 >= lo_last && j0 + kBK - 1 <= hi_first));

        /* 3a. Locate the keys; the barrier also retires the previous tile's readers of sm.kv. */
        if (tid < kBK) locate_key(p, kv, j0 + tid, sm.key_page[tid], sm.key_slot[tid]);
        fmha_barrier();
        load_kv_tile<kDq>(sm, k_base, p.k_page_stride, p.k_row_stride);
        fmha_barrier();

        /* 3b. S = Q.K^T (already in log2 units unless capped). */
        float s[kSM][kSN];
#pragma unroll
        for (int i = 0; i < kSM; ++i)
#pragma unroll
            for (int n = 0; n < kSN; ++n) s[i][n] = 0.f;
#pragma unroll 4
        for (int d = 0; d < kDq; d += 4) {
            Float4 qv[kSM], kvv[kSN];
#pragma unroll
            for (int i = 0; i < kSM; ++i) qv[i] = *(const Float4*)&sm.q[(s_tq + i * kSTQ) * kQPitch + d];
#pragma unroll
            for (int n = 0; n < kSN; ++n) kvv[n] = *(const Float4*)&sm.kv[(s_tk + n * kSTK) * kKVPitch + d];
#pragma unroll
            for (int i = 0; i < kSM; ++i)
#pragma unroll
                for (int n = 0; n < kSN; ++n) {
                    float x = s[i][n];
                    x = fmaf(qv[i].x, kvv[n].x, x);
                    x = fmaf(qv[i].y, kvv[n].y, x);
                    x = fmaf(qv[i].z, kvv[n].z, x);
                    x = fmaf(qv[i].w, kvv[n].w, x);
                    s[i][n] = x;
                }
        }

        /* 3c. Soft cap, mask, online softmax. */
#pragma unroll
        for (int i = 0; i < kSM; ++i) {
            float tile_max = -FMHA_INF;
#pragma unroll
            for (int n = 0; n < kSN; ++n) {
                float x = cap > 0.f ? tanhf(s[i][n]) * cap_log2 : s[i][n];
                const int j = j0 + s_tk + n * kSTK;
                const bool key_in_split = !kSplitKv || (j >= key_begin && j < key_end);
                if (!all_visible && !(key_in_split && visible(j, row_lo[i], row_hi[i], row_sink[i]))) x = -FMHA_INF;
                s[i][n] = x;
                tile_max = fmaxf(tile_max, x);
            }
#pragma unroll
            for (int lane = kSTK / 2; lane > 0; lane /= 2) tile_max = fmaxf(tile_max, fmha_shfl_xor(tile_max, lane));
            const float new_max = fmaxf(row_max[i], tile_max);
            const float base = new_max == -FMHA_INF ? 0.f : new_max;  /* nothing visible yet: all P are 0 */
            const float alpha = fmha_exp2(row_max[i] - base);
            float sum = 0.f;
            const int r = s_tq + i * kSTQ;
#pragma unroll
            for (int n = 0; n < kSN; ++n) {
                const float pv = fmha_exp2(s[i][n] - base);
                sum += pv;
                sm.p[r * kPPitch + s_tk + n * kSTK] = pv;
            }
            row_sum[i] = row_sum[i] * alpha + sum;
            row_max[i] = new_max;
            if (s_tk == 0) sm.row_factor[r] = alpha;
        }
        fmha_barrier();

        /* 3d. V tile into the same buffer, then O = alpha * O + P.V. */
        load_kv_tile<kDv>(sm, v_base, p.v_page_stride, p.v_row_stride);
        fmha_barrier();
#pragma unroll
        for (int i = 0; i < kOM; ++i) {
            const int r = o_tq + i * kOTQ;
            const float alpha = sm.row_factor[r];
#pragma unroll
            for (int u = 0; u < kOV; ++u) {
                acc[i][u].x *= alpha;
                acc[i][u].y *= alpha;
                acc[i][u].z *= alpha;
                acc[i][u].w *= alpha;
            }
        }
#pragma unroll 2
        for (int c = 0; c < kBK; c += 4) {
            Float4 pv[kOM];
#pragma unroll
            for (int i = 0; i < kOM; ++i) pv[i] = *(const Float4*)&sm.p[(o_tq + i * kOTQ) * kPPitch + c];
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) {
                Float4 vv[kOV];
#pragma unroll
                for (int u = 0; u < kOV; ++u)
                    vv[u] = *(const Float4*)&sm.kv[(c + cc) * kKVPitch + (o_td + u * kOTD) * 4];
#pragma unroll
                for (int i = 0; i < kOM; ++i) {
                    const float w = cc == 0 ? pv[i].x : cc == 1 ? pv[i].y : cc == 2 ? pv[i].z : pv[i].w;
#pragma unroll
                    for (int u = 0; u < kOV; ++u) {
                        acc[i][u].x = fmaf(w, vv[u].x, acc[i][u].x);
                        acc[i][u].y = fmaf(w, vv[u].y, acc[i][u].y);
                        acc[i][u].z = fmaf(w, vv[u].z, acc[i][u].z);
                        acc[i][u].w = fmaf(w, vv[u].w, acc[i][u].w);
                    }
                }
            }
        }
    }
    fmha_barrier();  /* the last tile's readers of sm.row_factor are done */

    /* 4. Sink (unsplit only: the combine adds it), normalisation, LSE. */
    const float* sinks = (const float*)p.sink_logits;
    float* lse = split_kv ? (float*)p.lse_acc + split * p.lse_acc_split_stride : (float*)p.lse;
#pragma unroll
    for (int i = 0; i < kSM; ++i) {
        float sum = row_sum[i];
#pragma unroll
        for (int lane = kSTK / 2; lane > 0; lane /= 2) sum += fmha_shfl_xor(sum, lane);
        const int r = s_tq + i * kSTQ, m = m0 + r;
        if (s_tk != 0 || m >= rows) continue;
        const int h = hk * group + m % group;
        const float row_m = row_max[i];
        float top = row_m;  /* M: the max over the row's logits and its sink */
        if (p.has_sink && !split_kv) {
            const float sink = sinks[h] * FMHA_LOG2E;
            top = fmaxf(row_m, sink);
            sum = (row_m == -FMHA_INF ? 0.f : sum * fmha_exp2(row_m - top)) + fmha_exp2(sink - top);
        }
        sm.row_factor[r] = row_m == -FMHA_INF ? 0.f : fmha_exp2(row_m - top) / sum * p.v_descale;
        if (p.has_lse || split_kv)
            lse[b * p.lse_batch_stride + h * p.lse_head_stride + q_first + m / group] =
                sum > 0.f ? (top + log2f(sum)) * FMHA_LN2 : -FMHA_INF;
    }
    fmha_barrier();

#pragma unroll
    for (int i = 0; i < kOM; ++i) {
        const int r = o_tq + i * kOTQ, m = m0 + r;
        if (m >= rows) continue;
        const int h = hk * group + m % group;
        const float f = sm.row_factor[r];
        const i64 row = b * p.o_batch_stride + h * p.o_head_stride + (i64)(q_first + m / group) * p.o_row_stride;
        if (split_kv) {  /* fp32 partial, same element offsets as O */
            float* dst = (float*)p.o_acc + split * p.o_acc_split_stride + row;
#pragma unroll
            for (int u = 0; u < kOV; ++u)
                *(Float4*)(dst + (o_td + u * kOTD) * 4) =
                    Float4{acc[i][u].x * f, acc[i][u].y * f, acc[i][u].z * f, acc[i][u].w * f};
            continue;
        }
        OutT* dst = (OutT*)p.o + row;
#pragma unroll
        for (int u = 0; u < kOV; ++u) {
            const Pack<OutT, 4> packed = {{In::out::encode(acc[i][u].x * f), In::out::encode(acc[i][u].y * f),
                                           In::out::encode(acc[i][u].z * f), In::out::encode(acc[i][u].w * f)}};
            *(Pack<OutT, 4>*)(dst + (o_td + u * kOTD) * 4) = packed;
        }
    }
}
