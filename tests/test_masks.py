import numpy as np
import pytest

from fmha_bench.masks import BOTTOM_RIGHT, TOP_LEFT, Mask, MaskError, parse_mask


def brute_keep(align, left, right, sink, sq, sk):
    """SPEC section 2, spelled out per (i, j)."""
    keep = np.zeros((sq, sk), dtype=bool)
    for i in range(sq):
        p = i if align == "t" else i + sk - sq
        hi = p + right if right >= 0 else sk - 1
        for j in range(sk):
            inside = (left < 0 or j >= p - left) and (right < 0 or j <= p + right)
            keep[i, j] = inside or (j < sink and j <= hi)
    return keep


@pytest.mark.parametrize("text,canonical", [
    ("none", "0"), ("n", "0"), ("0", "0"), ("causal", "b"), ("causal_tl", "t"), ("t:-1,0", "t"),
    ("b:-1,0", "b"), ("window:4,0", "b:4,0"), ("xt:5", "t:2,2"), ("xb:4", "b:2,1"), ("xb:-1", "b"),
    ("t:-1,-1", "0"), ("b:3,2,4", "b:3,2,4"), ("T", "t"),
])
def test_aliases_map_onto_the_ck_grammar(text, canonical):
    assert parse_mask(text).canonical() == canonical


@pytest.mark.parametrize("bad", ["causal2", "t:1", "x:3", "b:a,b", "xt:0", ""])
def test_bad_mask_strings_name_the_grammar(bad):
    with pytest.raises(MaskError, match="grammar|xformers"):
        parse_mask(bad)


@pytest.mark.parametrize("mask", ["t", "b", "t:3,5", "b:16,0", "b:0,0", "t:8,-1,2", "b:-1,0,4", "b:2,1,3", "xt:7", "0"])
@pytest.mark.parametrize("sq,sk", [(1, 1), (7, 7), (5, 13), (13, 5), (9, 1), (1, 9)])
def test_visible_counts_match_brute_force(mask, sq, sk):
    m = parse_mask(mask)
    if m.is_none:
        expected = np.ones((sq, sk), dtype=bool)
    else:
        expected = brute_keep("t" if m.align == TOP_LEFT else "b", m.left, m.right, m.sink, sq, sk)
    assert np.array_equal(m.dense(sq, sk), expected)
    assert np.array_equal(m.visible_counts(sq, sk), expected.sum(1))
    assert m.area(sq, sk) == expected.sum()


def test_bottom_right_causal_masks_first_rows_when_sq_gt_sk():
    counts = parse_mask("b").visible_counts(10, 4)
    assert list(counts[:6]) == [0] * 6 and list(counts[6:]) == [1, 2, 3, 4]


def test_touched_ranges_cover_exactly_the_visible_columns():
    m = Mask(BOTTOM_RIGHT, 10, 0, 3)
    ranges = m.touched_ranges(4, 100)
    cols = np.flatnonzero(m.dense(4, 100).any(0))
    assert sum(b - a for a, b in ranges) == cols.size
    assert ranges == [(0, 3), (86, 100)]
