/* fmha_combine.hip: merge fp32 partials of attention over disjoint key ranges into O and LSE
   (SPEC 6). Two entries, one merge rule:
   - fmha_combine(FmhaParams): the split-KV partials of fmha_fwd.hip, num_splits per output row.
   - fmha_merge_items(FmhaMixedArgs): the partial slots that a persistent launch's split rows wrote
     (fmha_fwd_mma.hip with FMHA_PERSISTENT, family mixed), one merge task per split row tile of
     the plan (fmha_work_plan.h); a fixed grid walks the tasks' rows, so its launch shape does not
     depend on the batch composition either.

   Compile-time specialisation (-D):
     FMHA_OUT_DTYPE  fp16 | bf16   (the output dtype of the forward pass)
     FMHA_HDIM_V     head dim of V/O
     FMHA_ROWS, FMHA_THREADS       output rows per block (per step), threads per block
   Partials hold, per key range, the normalised fp32 O and natural-log LSE of that range's keys
   (a range that saw nothing: O = 0, LSE = -inf), without the learned sink.

   Per output row (sequence, query head, position), with the sink s_h as one more partial
   (LSE = s_h, O = 0), so that it joins the softmax exactly once:
     M = max(max_s lse_s, s_h),  L = M + ln(sum_s exp(lse_s - M) + exp(s_h - M)),
     O = sum_s exp(lse_s - L) * o_s  in the output dtype,  LSE = L.
   A row no partial sees gets O = 0 and LSE = -inf, or s_h with a sink (SPEC 1). Partials with
   LSE = -inf contribute nothing and their O is not read (windows leave many splits empty).

   Work decomposition: FMHA_ROWS output rows per block, the FMHA_THREADS / FMHA_ROWS lanes of a
   row take every lanes-th column, so each partial row is read with consecutive addresses. No
   shared memory, no barriers: a thread past the last row simply returns. fmha_combine's rows go
   in the order of the LSE layout ([B, Hq, Sq] in batch mode, [Hq, total_q] in group mode). */
#include "fmha_port.h"
#include "fmha_params.h"
#include "fmha_work_plan.h"

#if !defined(FMHA_OUT_DTYPE) || !defined(FMHA_HDIM_V) || !defined(FMHA_ROWS) || !defined(FMHA_THREADS)
#error "fmha_combine.hip needs -D FMHA_OUT_DTYPE, FMHA_HDIM_V, FMHA_ROWS, FMHA_THREADS"
#endif

#define FMHA_CAT_(a, b) a##b
#define FMHA_CAT(a, b) FMHA_CAT_(a, b)
#define FMHA_COMBINE_ENCODE FMHA_CAT(fmha_float_to_, FMHA_OUT_DTYPE)

namespace fmha_combine_tile {
typedef long long i64;
constexpr int kDv = FMHA_HDIM_V, kRows = FMHA_ROWS, kThreads = FMHA_THREADS;
constexpr int kLanes = kThreads / kRows;
constexpr int kColumnsPerLane = (kDv + kLanes - 1) / kLanes;
static_assert(kLanes * kRows == kThreads, "FMHA_THREADS must be a multiple of FMHA_ROWS");

/* One output row from `count` partials (partial s: LSE lse_s[s * lse_stride], O row
   o_s + s * o_stride) and the sink (-inf: none): this lane's columns of O, and the LSE when
   `lse` is not null. */
FMHA_DEVICE void merge_row(const float* lse_s, i64 lse_stride, const float* o_s, i64 o_stride, int count,
                           float sink, int lane, unsigned short* o, float* lse)
{
    float top = sink;
    for (int s = 0; s < count; ++s) top = fmaxf(top, lse_s[s * lse_stride]);
    const float base = top == -FMHA_INF ? 0.f : top;  /* nothing visible: every term below is 0 */
    float sum = expf(sink - base);
    for (int s = 0; s < count; ++s) sum += expf(lse_s[s * lse_stride] - base);
    const float row_lse = top == -FMHA_INF ? -FMHA_INF : base + logf(sum);

    float acc[kColumnsPerLane];
#pragma unroll
    for (int c = 0; c < kColumnsPerLane; ++c) acc[c] = 0.f;
    for (int s = 0; s < count; ++s) {
        const float lse_split = lse_s[s * lse_stride];
        if (lse_split == -FMHA_INF) continue;
        const float weight = expf(lse_split - row_lse);
        const float* src = o_s + s * o_stride;
#pragma unroll
        for (int c = 0; c < kColumnsPerLane; ++c) {
            const int d = lane + c * kLanes;
            if (d < kDv) acc[c] = fmaf(weight, src[d], acc[c]);
        }
    }

#pragma unroll
    for (int c = 0; c < kColumnsPerLane; ++c) {
        const int d = lane + c * kLanes;
        if (d < kDv) o[d] = FMHA_COMBINE_ENCODE(acc[c]);
    }
    if (lse != nullptr && lane == 0) *lse = row_lse;
}
}  // namespace fmha_combine_tile

extern "C" __global__ void FMHA_LAUNCH_BOUNDS(FMHA_THREADS) fmha_combine(FmhaParams p)
{
    using namespace fmha_combine_tile;
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
    const float sink = p.has_sink ? ((const float*)p.sink_logits)[h] : -FMHA_INF;
    merge_row((const float*)p.lse_acc + lse_at, p.lse_acc_split_stride, (const float*)p.o_acc + o_at,
              p.o_acc_split_stride, p.num_splits, sink, lane, (unsigned short*)p.o + o_at,
              p.has_lse ? (float*)p.lse + lse_at : nullptr);
}

extern "C" __global__ void FMHA_LAUNCH_BOUNDS(FMHA_THREADS) fmha_merge_items(FmhaMixedArgs args)
{
    using namespace fmha_combine_tile;
    const FmhaParams& p = args.p;
    const fmha::PlanView plan{(const int*)args.plan};
    const int slot_rows = plan.slot_rows(), group = p.nhead_q / p.nhead_k;
    const i64 rows = (i64)plan.num_merges() * slot_rows;   /* row r of task t: flat index t * slot_rows + r */
    const int lane = threadIdx.x % kLanes;
    for (i64 flat = (i64)blockIdx.x * kRows + threadIdx.x / kLanes; flat < rows; flat += (i64)gridDim.x * kRows) {
        const fmha::MergeTask task = plan.merges()[flat / slot_rows];
        const int r = (int)(flat % slot_rows), m = task.row_begin + r;
        if (m >= task.row_end) continue;
        const int h = task.kv_head * group + m % group;
        const i64 token = ((const int*)p.seqstart_q)[task.seq] + m / group;   /* family mixed: group mode */
        const i64 o_at = h * p.o_head_stride + token * p.o_row_stride;
        const i64 lse_at = h * p.lse_head_stride + token;
        const i64 first = (i64)task.slot_begin * slot_rows + r;   /* the task's partials: consecutive slots */
        const float sink = p.has_sink ? ((const float*)p.sink_logits)[h] : -FMHA_INF;
        merge_row((const float*)args.lse_part + first, slot_rows, (const float*)args.o_part + first * kDv,
                  (i64)slot_rows * kDv, task.slot_count, sink, lane, (unsigned short*)p.o + o_at,
                  p.has_lse ? (float*)p.lse + lse_at : nullptr);
    }
}
