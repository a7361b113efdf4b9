/* fmha_fwd_common.h: what every forward kernel shares, whatever its math engine:
   the mask bounds (masks.Mask.row_bounds), where a sequence's keys live (dense rows or pages
   through the three page-table kinds), and which key tiles a block of query rows must visit.
   Needs fmha_port.h and fmha_params.h first. */
#ifndef FMHA_FWD_COMMON_H
#define FMHA_FWD_COMMON_H

namespace fmha {

typedef long long i64;

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

/* The mask of KV head hk: the problem's mask, or the sliding window of a headwise SWA head. */
FMHA_DEVICE MaskSpec mask_for_kv_head(const FmhaParams& p, int hk, int seqlen_q, int seqlen_k)
{
    MaskSpec mask = {p.mask_align, p.mask_left, p.mask_right, p.mask_sink, seqlen_q, seqlen_k};
    if (hk < 32 * FMHA_SWA_HEAD_WORDS && ((p.swa_heads[hk >> 5] >> (hk & 31)) & 1u)) {
        mask.align = FMHA_MASK_BOTTOM_RIGHT;
        mask.left = p.swa_left;
        mask.right = 0;
        mask.sink = p.swa_sink;
    }
    return mask;
}

/* ------------------------------------------------------------------ K/V of one (sequence, KV head) */
struct KvSequence {
    int length;
    int first_row;           /* dense: row of token 0 */
    const int* pages;        /* paged: page ids of the sequence in token order */
};

template <bool Paged>
FMHA_DEVICE KvSequence kv_sequence(const FmhaParams& p, int b, int hk)
{
    KvSequence s;
    s.first_row = 0;
    s.pages = nullptr;
    if (Paged) {
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
template <bool Paged>
FMHA_DEVICE void locate_key(const FmhaParams& p, const KvSequence& s, int j, int& page, int& slot)
{
    page = -1;
    slot = 0;
    if (j >= s.length) return;
    if (Paged) {
        const int logical = j / p.page_size;
        page = s.pages[logical];
        slot = j - logical * p.page_size;
    } else {
        page = 0;
        slot = s.first_row + j;
    }
}

/* ------------------------------------------------------------------ key tiles of a block of rows */
/* The block's rows are query positions i_first..i_last (both mask bounds grow with the row), so
   the keys any of them sees are the window [lo(i_first), hi(i_last)] plus the sink prefix
   [0, sink_end(i_last)). Tiles are visited sink tiles first, then window tiles; a tile inside the
   sink prefix of every row, or inside every row's window, needs no element-wise mask. */
template <int BlockK>
struct KeyTiles {
    int sink_tiles, window_begin, count;
    int sink_first, lo_last, hi_first;

    FMHA_DEVICE KeyTiles(const MaskSpec& mask, int i_first, int i_last)
    {
        int lo_first, sink_last, hi_last;
        mask.bounds(i_first, lo_first, hi_first, sink_first);
        mask.bounds(i_last, lo_last, hi_last, sink_last);
        sink_tiles = (sink_last + BlockK - 1) / BlockK;
        window_begin = imax(lo_first / BlockK, sink_tiles);
        const int window_end = hi_last >= lo_first ? hi_last / BlockK + 1 : 0;
        count = sink_tiles + imax(window_end - window_begin, 0);
    }

    FMHA_DEVICE int first_key(int t) const { return (t < sink_tiles ? t : window_begin + (t - sink_tiles)) * BlockK; }

    FMHA_DEVICE bool all_visible(int j0) const
    {
        return j0 + BlockK <= sink_first || (j0 >= lo_last && j0 + BlockK - 1 <= hi_first);
    }
};

}  // namespace fmha

#endif /* FMHA_FWD_COMMON_H */
