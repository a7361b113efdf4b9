/* fmha_work_plan.h: the work plan of the persistent launch (family mixed, SPEC 9) as
   fmha_bench/mixed_plan.py lays it out in one int32 device buffer, and the launch argument of
   the persistent attention kernel and of its merge.

   Plan words (MixedPlan.words()):
     header [kPlanHeaderWords]: num_blocks, num_items, num_merges, slot_rows
     block_begin [num_blocks + 1]: block x runs items block_begin[x] .. block_begin[x + 1] - 1
     items [num_items] (WorkItem), then merges [num_merges] (MergeTask)
   Nothing in the launch's shape or argument bytes depends on the batch composition: only these
   words (and the partial slots) do, so a captured graph replays for any plan that fits the buffers.
   Needs fmha_params.h first. */
#ifndef FMHA_WORK_PLAN_H
#define FMHA_WORK_PLAN_H

typedef struct FmhaMixedArgs {
    FmhaParams p;             /* the batch's FmhaParams; lengths come from seqstart_q / the page tables */
    unsigned long long plan;  /* int32 plan words (above) */
    unsigned long long o_part;    /* fp32 partial O [slots][slot_rows][Dv] (normalised, v_descale applied) */
    unsigned long long lse_part;  /* fp32 partial LSE [slots][slot_rows] (natural log, no sink) */
} FmhaMixedArgs;

namespace fmha {

/* Rows [row_begin, min(row_end, row_begin + BLOCK_Q)) of the (position, head) rows of sequence
   `seq` that share KV head `kv_head` (row m: position m / G, query head kv_head * G + m % G), over
   the keys [key_begin, key_end) that those rows see; written as the final O/LSE (slot < 0) or as a
   partial into rows slot * slot_rows .. of the partial buffers (persistent instances only). Plans
   give at most BLOCK_Q rows; a grid block's item ends at the sequence's last row. Field order =
   mixed_plan.ITEM_FIELDS. */
struct WorkItem {
    int seq, kv_head, row_begin, row_end, key_begin, key_end, slot;
};

/* Rows [row_begin, row_end) of (seq, kv_head) whose keys were split over the items writing the
   slots slot_begin .. slot_begin + slot_count - 1. Field order = mixed_plan.MERGE_FIELDS. */
struct MergeTask {
    int seq, kv_head, row_begin, row_end, slot_begin, slot_count;
};

constexpr int kPlanHeaderWords = 4;

struct PlanView {
    const int* words;
    FMHA_DEVICE int num_blocks() const { return words[0]; }
    FMHA_DEVICE int num_items() const { return words[1]; }
    FMHA_DEVICE int num_merges() const { return words[2]; }
    FMHA_DEVICE int slot_rows() const { return words[3]; }
    FMHA_DEVICE const int* block_begin() const { return words + kPlanHeaderWords; }
    FMHA_DEVICE const WorkItem* items() const { return (const WorkItem*)(block_begin() + num_blocks() + 1); }
    FMHA_DEVICE const MergeTask* merges() const { return (const MergeTask*)(items() + num_items()); }
};

}  // namespace fmha

#endif /* FMHA_WORK_PLAN_H */
