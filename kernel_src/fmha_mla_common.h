/* fmha_mla_common.h: what the two MLA decode kernels share (fmha_mla_decode.hip: mma.sync;
   fmha_mla_wgmma.hip: Hopper wgmma):
     element types elem_<FMHA_DTYPE> (Stored: the cache's storage type; Mma: the output's 16-bit
       type and its float-pair pack, bf16 for fp8, which the mma kernel also computes in),
     TileList (the key tiles of a block: KeyTiles cut to a split's key range),
     finish_row (learned sink, 1/l, V's descale, LSE of one output row).
   Needs fmha_port.h, fmha_params.h, fmha_fwd_common.h and fmha_mma_sync.h first. */
#ifndef FMHA_MLA_COMMON_H
#define FMHA_MLA_COMMON_H

namespace fmha {

template <class T, int N>
struct alignas(sizeof(T) * N) Vec { T v[N]; };

struct elem_fp16 { typedef unsigned short Stored; typedef mma_fp16 Mma; };
struct elem_bf16 { typedef unsigned short Stored; typedef mma_bf16 Mma; };
/* fp8 Q and cache are widened in shared memory (exact: every e4m3fn value is a bf16 and an fp16 value). */
struct elem_fp8_e4m3fn { typedef unsigned char Stored; typedef mma_bf16 Mma; };

/* KeyTiles' sink tiles, then its window tiles, each cut to the tiles meeting the split's keys
   [key_begin, key_end) (all keys when unsplit, where the cut changes nothing). */
template <int BlockK>
struct TileList {
    int sink_first, sink_count, window_first, window_count;

    FMHA_DEVICE TileList(const KeyTiles<BlockK>& tiles, int key_begin, int key_end)
    {
        const int tile_begin = key_begin / BlockK;
        const int tile_end = key_end > key_begin ? (key_end - 1) / BlockK + 1 : tile_begin;
        const int window_end = tiles.window_begin + (tiles.count - tiles.sink_tiles);
        sink_first = tile_begin;
        sink_count = imax(imin(tiles.sink_tiles, tile_end) - sink_first, 0);
        window_first = imax(tiles.window_begin, tile_begin);
        window_count = imax(imin(window_end, tile_end) - window_first, 0);
    }
    FMHA_DEVICE int count() const { return sink_count + window_count; }
    FMHA_DEVICE int first_key(int t) const
    {
        return (t < sink_count ? sink_first + t : window_first + (t - sink_count)) * BlockK;
    }
};

/* The end of one output row: row_m is its running maximum logit in base 2 (-inf when it saw no
   key), sum its running denominator at that maximum. The learned sink of `head` joins when
   `with_sink` (not in split partials: the combine adds it). Returns O's factor (1/l times V's
   descale, which is K's: V is the latent cache) and sets lse (natural log; -inf for an empty
   denominator). */
FMHA_DEVICE float finish_row(const FmhaParams& p, int head, float row_m, float sum, bool with_sink, float& lse)
{
    float top = row_m;
    if (with_sink && p.has_sink) {
        const float sink = ((const float*)p.sink_logits)[head] * FMHA_LOG2E;
        top = fmaxf(row_m, sink);
        sum = (row_m == -FMHA_INF ? 0.f : sum * exp2_approx(row_m - top)) + exp2_approx(sink - top);
    }
    lse = sum > 0.f ? (top + log2f(sum)) * FMHA_LN2 : -FMHA_INF;
    return row_m == -FMHA_INF ? 0.f : exp2_approx(row_m - top) / sum * p.k_descale;
}

}  // namespace fmha

#endif /* FMHA_MLA_COMMON_H */
