/* fmha_tc_common.h: what the NVIDIA tensor-core kernels share beyond fmha_fwd_common.h (the
   forward kernels fmha_fwd_mma.hip and fmha_fwd_wgmma.hip, the MLA kernels fmha_mla_decode.hip
   and fmha_mla_wgmma.hip):
     TileList (the key tiles of a block, cut to a split's or work item's keys),
     query_sequence (a sequence's first query row and length),
     PartialSlots (where a persistent work item writes its fp32 partial),
     finish_row (learned sink, 1/l, the output descale and the LSE of one output row).
   Needs fmha_port.h, fmha_params.h, fmha_fwd_common.h and fmha_mma_sync.h first. */
#ifndef FMHA_TC_COMMON_H
#define FMHA_TC_COMMON_H

namespace fmha {

/* Keys past any sequence: the key_end of a block that takes every key. */
constexpr int kAllKeys = 1 << 30;

/* KeyTiles' sink tiles, then its window tiles, each cut to the tiles meeting the keys
   [key_begin, key_end) (work-plan cuts fall on multiples of BlockK; split-KV edges may cut a
   tile in two, which the splitting kernels then mask element-wise); the one-argument form keeps every tile with KeyTiles' own arithmetic (no extra
   live register where nothing is ever cut). */
template <int BlockK>
struct TileList {
    int sink_first, sink_count, window_first, count;

    FMHA_DEVICE explicit TileList(const KeyTiles<BlockK>& tiles)
        : sink_first(0), sink_count(tiles.sink_tiles), window_first(tiles.window_begin), count(tiles.count)
    {
    }
    FMHA_DEVICE TileList(const KeyTiles<BlockK>& tiles, int key_begin, int key_end)
    {
        const int tile_begin = key_begin / BlockK;
        const int tile_end = key_end > key_begin ? (key_end - 1) / BlockK + 1 : tile_begin;
        const int window_end = tiles.window_begin + (tiles.count - tiles.sink_tiles);
        sink_first = tile_begin;
        sink_count = imax(imin(tiles.sink_tiles, tile_end) - sink_first, 0);
        window_first = imax(tiles.window_begin, tile_begin);
        count = sink_count + imax(imin(window_end, tile_end) - window_first, 0);
    }
    FMHA_DEVICE int first_key(int t) const
    {
        return (t < sink_count ? sink_first + t : window_first + (t - sink_count)) * BlockK;
    }
};

/* Query positions of sequence b: the first token's row and the count. */
FMHA_DEVICE void query_sequence(const FmhaParams& p, int b, int& first, int& length)
{
    first = 0;
    length = p.max_seqlen_q;
    if (p.group_mode) {
        const int* seqstart = (const int*)p.seqstart_q;
        first = seqstart[b];
        length = seqstart[b + 1] - first;
    }
}

/* Where a persistent work item's partial goes (fmha_work_plan.h): slot s holds rows
   s * slot_rows .. of these. */
struct PartialSlots {
    float* o;     /* [slots][slot_rows][Dv] */
    float* lse;   /* [slots][slot_rows] */
};

/* The end of one output row: row_m is its running maximum logit in base 2 (-inf when it saw no
   key), sum its running denominator at that maximum with every P scaled by 2^PScaleLog2 (the
   fp8 kernels' P range scale; the accumulator carries it too, so it cancels in O / l). The
   learned sink of `head` joins when `with_sink` (not in partials: the merge adds it once).
   Returns O's factor (1/l times `o_descale`) and sets lse (natural log, unscaled; -inf for an
   empty denominator). */
template <int PScaleLog2 = 0>
FMHA_DEVICE float finish_row(const FmhaParams& p, int head, float row_m, float sum, bool with_sink, float o_descale,
                             float& lse)
{
    float top = row_m;
    if (with_sink && p.has_sink) {
        const float sink = ((const float*)p.sink_logits)[head] * FMHA_LOG2E;
        top = fmaxf(row_m, sink);
        sum = (row_m == -FMHA_INF ? 0.f : sum * exp2_approx(row_m - top)) + exp2_approx(sink - top + PScaleLog2);
    }
    lse = sum > 0.f ? (top + log2f(sum) - PScaleLog2) * FMHA_LN2 : -FMHA_INF;
    return row_m == -FMHA_INF ? 0.f : exp2_approx(row_m - top) / sum * o_descale;
}

}  // namespace fmha

#endif /* FMHA_TC_COMMON_H */
