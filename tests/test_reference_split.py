"""Split-KV partials and their combine (SPEC section 6)."""
import numpy as np
import pytest

from bruteforce import assert_matches, brute_attention
from fmha_bench import Problem
from fmha_bench.reference import attention, combine, split_partials


def _combined_matches_attention(problem, num_splits, sink_partial=None):
    inputs = problem.make_inputs(0)
    o_s, lse_s = split_partials(problem, inputs, num_splits)
    if sink_partial is not None:
        o_s, lse_s = sink_partial(o_s, lse_s, inputs.sink_logits)
    o, lse = combine(o_s, lse_s)
    ref = attention(problem, inputs)
    if problem.mode == "group":
        lse = lse.T  # partials are row-major: [total_q, Hq]
    np.testing.assert_allclose(o, ref.o, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(lse, ref.lse, atol=1e-6, rtol=0)
    return o_s, lse_s


@pytest.mark.parametrize("num_splits", [2, 3, 7])
@pytest.mark.parametrize("mask", ["0", "b", "b:2,0,1"])
def test_combined_partials_equal_attention(num_splits, mask):
    p = Problem(batch=2, seqlen_q=6, seqlen_k=10, nhead_q=4, nhead_k=2, hdim_q=8, mask=mask)
    _combined_matches_attention(p, num_splits)


def test_varlen_partials_split_each_sequence_by_its_own_length():
    p = Problem(mode="group", batch=3, seqlen_q=(4, 0, 1), seqlen_k=(9, 2, 1), nhead_q=2, hdim_q=8, mask="b")
    o_s, lse_s = _combined_matches_attention(p, 3)
    # sequence 2 has one key: only split 0 holds it, splits 1-2 are empty (X = 1).
    rows = slice(4, 5)
    assert np.isfinite(lse_s[0, rows]).all()
    assert np.isneginf(lse_s[1:, rows]).all() and (o_s[1:, rows] == 0).all()


def test_a_split_whose_keys_are_all_masked_is_empty():
    p = Problem(seqlen_q=4, seqlen_k=8, nhead_q=1, hdim_q=8, mask="t")  # top-left causal: row i sees j <= i
    o_s, lse_s = split_partials(p, p.make_inputs(0), 2)   # split 1 = keys 4..7
    assert np.isneginf(lse_s[1]).all() and (o_s[1] == 0).all()
    assert np.isfinite(lse_s[0]).all()


def test_a_sink_joins_as_one_more_partial_with_zero_output():
    def add_sink(o_s, lse_s, sink):
        sink_lse = np.broadcast_to(sink[None, :, None], lse_s.shape[1:])
        return (np.concatenate([o_s, np.zeros_like(o_s[:1])]), np.concatenate([lse_s, sink_lse[None]]))
    p = Problem(batch=2, seqlen_q=5, seqlen_k=9, nhead_q=2, hdim_q=8, mask="b", sink=True)
    _combined_matches_attention(p, 3, add_sink)


def test_paged_partials_combine_to_attention():
    p = Problem(family="paged", batch=2, seqlen_q=1, seqlen_k=19, nhead_q=4, nhead_k=1, hdim_q=8, page_size=4,
                num_splits=4)
    _combined_matches_attention(p, 4)


def test_splitkv_family_matches_bruteforce():
    p = Problem(family="splitkv", batch=2, seqlen_q=5, seqlen_k=17, nhead_q=4, nhead_k=2, hdim_q=8, num_splits=3,
                mask="b", lse=True)
    inputs = p.make_inputs(0)
    ref = attention(p, inputs)
    assert_matches(ref.o, ref.lse, *brute_attention(p, inputs))


def test_combine_of_empty_partials_is_zero_with_minus_inf_lse():
    o, lse = combine(np.zeros((3, 2, 4), np.float32), np.full((3, 2), -np.inf, np.float32))
    assert (o == 0).all() and np.isneginf(lse).all()


def test_combine_weights_partials_by_their_lse():
    o_s = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], np.float32)
    lse_s = np.array([[0.0], [np.log(3.0)]], np.float32)
    o, lse = combine(o_s, lse_s)
    np.testing.assert_allclose(o, [[0.25, 0.75]], rtol=1e-6)
    np.testing.assert_allclose(lse, [np.log(4.0)], rtol=1e-6)


def test_combine_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="lse_s shape"):
        combine(np.zeros((2, 3, 4)), np.zeros((2, 4)))
