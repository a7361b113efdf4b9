/* fmha_combine.hip: merge the split-KV partials of fmha_fwd.hip into O and LSE (SPEC 6).

   Compile-time specialisation (-D):
     FMHA_OUT_DTYPE  fp16 | bf16   (the output dtype of the forward pass)
     FMHA_HDIM_V     head dim of V/O
     FMHA_ROWS, FMHA_THREADS       output rows per block, threads per block
   Run time: the FmhaParams of the split pass. o_acc / lse_acc hold, per split, the normalised
   fp32 O and natural-log LSE of that split's keys (a split that saw nothing: O = 0, LSE = -inf),
   without the learned sink.

   Per output row (sequence, query head, position), with the sink s_h as one more partial
   (LSE = s_h, O = 0), so that it joins the softmax exactly once:
     M = max(max_s lse_s, s_h),  L = M + ln(sum_s exp(lse_s - M) + exp(s_h - M)),
     O = sum_s exp(lse_s - L) * o_s  in the output dtype,  LSE = L.
   A row no split sees gets O = 0 and LSE = -inf, or s_h with a sink (SPEC 1). Splits with
   LSE = -inf contribute nothing and their O is not read (windows leave many splits empty).

   Work decomposition: the rows, in the order of the LSE layout ([B, Hq, Sq] in batch mode,
   [Hq, total_q] in group mode), FMHA_ROWS per block; the FMHA_THREADS / FMHA_ROWS lanes of a row
   take every lanes-th column, so each partial row is read with consecutive addresses. No
   shared memory, no barriers: a thread past the last row simply returns. */
#include "fmha_port.h"
#include "fmha_params.h"

#if !defined(FMHA_OUT_DTYPE) || !defined(FMHA_HDIM_V) || !defined(FMHA_ROWS) || !defined(FMHA_THREADS)
#error "fmha_combine.hip needs -D FMHA_OUT_DTYPE, FMHA_HDIM_V, FMHA_ROWS, FMHA_THREADS"
#endif

#define FMHA_CAT_(a, b) a##b
#define FMHA_CAT(a, b) FMHA_CAT_(a, b)
#define FMHA_COMBINE_ENCODE FMHA_CAT(fmha_float_to_, FMHA_OUT_DTYPE)

namespace fmha_combine_tile {
constexpr int kDv = FMHA_HDIM_V, kRows = FMHA_ROWS, kThreads = FMHA_THREADS;
constexpr int kLanes = kThreads / kRows;
constexpr int kColumnsPerLane = (kDv + kLanes - 1) / kLanes;
static_assert(kLanes * kRows == kThreads, "FMHA_THREADS must be a multiple of FMHA_ROWS");
}  // namespace fmha_combine_tile

extern "C" __global__ void FMHA_LAUNCH_BOUNDS(FMHA_THREADS) fmha_combine(FmhaParams p)
{
    using namespace fmha_combine_tile;
    typedef long long i64;
    const int lane = threadIdx.x % kLanes;
    const int positions = p.group_mode ? ((const int*)p.seqstart_q)[p.batch] : p.max_seqlen_q;
    const i64 per_sequence = (i64)p.nhead_q * positions;
    const i64 row = (i64)blockIdx.x * kRows + threadIdx.x / kLanes;
    if (row >= (p.group_mode ? 1 : p.batch) * per_sequence) return;
    /* Group mode: one "sequence" of total_q positions; its batch strides are 0. */
    const i64 b = row / per_sequence;
    const i64 h = row % per_sequence / positions;
    const i64 i = row % positions;
    const i64 o_at = b * p.o_batch_stride + h * p.o_head_stride + i * p.o_row_stride;
    const i64 lse_at = b * p.lse_batch_stride + h * p.lse_head_stride + i;
    const float* lse_s = (const float*)p.lse_acc + lse_at;
    const float* o_s = (const float*)p.o_acc + o_at;

    const float sink = p.has_sink ? ((const float*)p.sink_logits)[h] : -FMHA_INF;
    float top = sink;
    for (int s = 0; s < p.num_splits; ++s) top = fmaxf(top, lse_s[s * p.lse_acc_split_stride]);
    const float base = top == -FMHA_INF ? 0.f : top;  /* nothing visible: every term below is 0 */
    float sum = expf(sink - base);
    for (int s = 0; s < p.num_splits; ++s) sum += expf(lse_s[s * p.lse_acc_split_stride] - base);
    const float lse = top == -FMHA_INF ? -FMHA_INF : base + logf(sum);

    float acc[kColumnsPerLane];
#pragma unroll
    for (int c = 0; c < kColumnsPerLane; ++c) acc[c] = 0.f;
    for (int s = 0; s < p.num_splits; ++s) {
        const float lse_split = lse_s[s * p.lse_acc_split_stride];
        if (lse_split == -FMHA_INF) continue;
        const float weight = expf(lse_split - lse);
        const float* src = o_s + s * p.o_acc_split_stride;
#pragma unroll
        for (int c = 0; c < kColumnsPerLane; ++c) {
            const int d = lane + c * kLanes;
            if (d < kDv) acc[c] = fmaf(weight, src[d], acc[c]);
        }
    }

    unsigned short* o = (unsigned short*)p.o + o_at;
#pragma unroll
    for (int c = 0; c < kColumnsPerLane; ++c) {
        const int d = lane + c * kLanes;
        if (d < kDv) o[d] = FMHA_COMBINE_ENCODE(acc[c]);
    }
    if (p.has_lse && lane == 0) ((float*)p.lse)[lse_at] = lse;
}
