"""The NumPy reference against the float64 brute force: dense forward, masks, features, fp8,
sampled rows, memory bounds."""
import tracemalloc

import numpy as np
import pytest

from bruteforce import assert_matches, brute_attention
from fmha_bench import Problem
from fmha_bench.reference import attention, chunk, take_rows
from fmha_bench.reference.chunk import chunk_shape


def check(problem, seed=0, **kwargs):
    inputs = problem.make_inputs(seed)
    ref = attention(problem, inputs, **kwargs)
    o, lse = brute_attention(problem, inputs, p_fp8=kwargs.get("p_fp8", False))
    assert_matches(ref.o, ref.lse, o, lse)
    return ref


MASKS = ["0", "t", "b", "t:3,2", "b:2,0", "b:-1,3", "t:2,-1", "xt:5", "xb:4", "xb:-1",
         "t:2,0,3", "b:1,1,2", "b:0,0,4", "t:100,100", "b:40,-1,2"]


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("sq,sk", [(12, 12), (16, 9), (9, 16)])
def test_every_mask_matches_bruteforce_for_square_tall_and_wide_problems(mask, sq, sk):
    check(Problem(batch=1, seqlen_q=sq, seqlen_k=sk, nhead_q=2, hdim_q=8, mask=mask))


def test_bottom_right_causal_masks_first_rows_when_sq_gt_sk():
    ref = check(Problem(seqlen_q=10, seqlen_k=6, nhead_q=1, hdim_q=8, mask="b"))
    assert np.isneginf(ref.lse[0, 0, :4]).all() and np.isfinite(ref.lse[0, 0, 4:]).all()
    assert (ref.o[0, 0, :4] == 0).all()


@pytest.mark.parametrize("nhead_q,nhead_k", [(4, 4), (8, 2), (7, 1), (14, 2)])
def test_gqa_and_mqa_heads_read_their_kv_head(nhead_q, nhead_k):
    check(Problem(batch=2, seqlen_q=7, seqlen_k=11, nhead_q=nhead_q, nhead_k=nhead_k, hdim_q=8, hdim_v=12,
                  mask="b"))


def test_varlen_with_empty_and_one_token_sequences():
    p = Problem(mode="group", batch=5, seqlen_q=(5, 0, 1, 9, 3), seqlen_k=(7, 3, 1, 0, 3), nhead_q=4, nhead_k=2,
                hdim_q=8, mask="b", lse=True)
    ref = check(p)
    assert ref.o.shape == (18, 4, 8) and ref.lse.shape == (4, 18)
    keyless = slice(6, 15)  # sequence 3 has 9 queries and no keys
    assert np.isneginf(ref.lse[:, keyless]).all() and (ref.o[keyless] == 0).all()


@pytest.mark.parametrize("mask", ["0", "b:3,0"])
def test_soft_cap_and_learned_sink(mask):
    check(Problem(batch=2, seqlen_q=9, seqlen_k=13, nhead_q=4, nhead_k=2, hdim_q=16, soft_cap=1.5, sink=True,
                  mask=mask))


def test_fully_masked_row_with_sink_has_the_sink_logit_as_lse():
    p = Problem(seqlen_q=6, seqlen_k=3, nhead_q=2, hdim_q=8, mask="b", sink=True)
    inputs = p.make_inputs(0)
    ref = attention(p, inputs)
    np.testing.assert_array_equal(ref.lse[0, :, 0], inputs.sink_logits)
    assert (ref.o[0, :, :3] == 0).all()


def test_scale_overrides_the_default():
    ref = check(Problem(seqlen_q=8, nhead_q=2, hdim_q=8, scale=0.9))
    plain = Problem(seqlen_q=8, nhead_q=2, hdim_q=8)
    default = attention(plain, plain.make_inputs(0))
    assert not np.allclose(ref.lse, default.lse)


@pytest.mark.parametrize("dtype", ["bf16", "fp8_e4m3fn", "fp8_e4m3fnuz"])
def test_low_precision_inputs_decode_exactly(dtype):
    check(Problem(batch=2, seqlen_q=8, seqlen_k=12, nhead_q=4, nhead_k=2, hdim_q=16, dtype=dtype, mask="b"))


@pytest.mark.parametrize("dtype", ["fp8_e4m3fn", "fp8_e4m3fnuz"])
def test_fp8_p_quantization_matches_bruteforce_and_changes_the_output(dtype):
    p = Problem(batch=1, seqlen_q=8, seqlen_k=24, nhead_q=2, hdim_q=16, dtype=dtype, sink=True)
    quantized = check(p, p_fp8=True)
    exact = attention(p, p.make_inputs(0))
    assert np.abs(quantized.o - exact.o).max() > 1e-4
    np.testing.assert_array_equal(quantized.lse, exact.lse)  # the denominator keeps the fp32 P


def test_p_fp8_needs_an_fp8_problem():
    p = Problem(seqlen_q=4, nhead_q=1, hdim_q=8)
    with pytest.raises(ValueError, match="p_fp8"):
        attention(p, p.make_inputs(0), p_fp8=True)


def test_float64_accumulation_is_exact_up_to_the_float32_output():
    p = Problem(batch=2, seqlen_q=9, nhead_q=2, hdim_q=16, mask="b:2,1", soft_cap=2.0)
    inputs = p.make_inputs(0)
    o, lse = brute_attention(p, inputs)
    exact = attention(p, inputs, accum=np.float64)
    np.testing.assert_allclose(exact.o, o, atol=0, rtol=2.0 ** -24)  # one float32 rounding
    np.testing.assert_allclose(exact.lse, lse, atol=0, rtol=2.0 ** -24)
    single = attention(p, inputs)
    assert np.abs(single.o - o).max() > np.abs(exact.o - o).max()


def test_inputs_of_another_problem_are_refused():
    with pytest.raises(ValueError, match="inputs were made for"):
        attention(Problem(seqlen_q=8, nhead_q=2), Problem(seqlen_q=8, nhead_q=4).make_inputs(0))


# ----------------------------------------------------------------------------- sampled rows
SAMPLED = [Problem(batch=2, seqlen_q=40, seqlen_k=50, nhead_q=4, nhead_k=2, hdim_q=16, mask="b:7,0,2", sink=True),
           Problem(mode="group", batch=4, seqlen_q=(30, 0, 1, 5), seqlen_k=(33, 4, 1, 9), nhead_q=3, nhead_k=1,
                   hdim_q=8, mask="b")]


@pytest.mark.parametrize("problem", SAMPLED, ids=["batch", "group"])
def test_sampled_rows_equal_the_full_result_at_those_rows(problem):
    inputs = problem.make_inputs(0)
    full = attention(problem, inputs)
    sampled = attention(problem, inputs, sampled_rows=6, sample_seed=3)
    assert sampled.o is None and sampled.lse is None
    # Chunks of other shapes sum in another order: equal up to float32 rounding.
    np.testing.assert_allclose(sampled.o_rows, take_rows(problem, full.o, sampled.index, "o"), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(sampled.lse_rows, take_rows(problem, full.lse, sampled.index, "lse"), atol=1e-6, rtol=0)


def test_sampled_rows_keep_edges_and_count_and_follow_the_seed():
    p = SAMPLED[1]
    inputs = p.make_inputs(0)
    run = lambda seed: attention(p, inputs, sampled_rows=6, sample_seed=seed)  # noqa: E731
    a, again, other = run(0), run(0), run(1)
    b, h, i = a.index
    for seq, sq in enumerate(p.seqlens_q()):
        for head in range(p.nhead_q):
            rows = i[(b == seq) & (h == head)]
            assert len(rows) == min(6, sq)
            if sq:
                assert rows[0] == 0 and rows[-1] == sq - 1
    assert a.rows_computed == len(i) == 3 * (6 + 0 + 1 + 5)
    assert all(np.array_equal(x, y) for x, y in zip(a.index, again.index))
    assert not np.array_equal(a.index[2], other.index[2])


def test_sampled_rows_below_two_are_refused():
    p = SAMPLED[0]
    with pytest.raises(ValueError, match="sampled_rows"):
        attention(p, p.make_inputs(0), sampled_rows=1)


def test_take_rows_reads_both_layouts():
    batch = Problem(batch=2, seqlen_q=3, nhead_q=2, hdim_q=4)
    o = np.arange(2 * 2 * 3 * 4).reshape(2, 2, 3, 4)
    index = (np.array([1, 0]), np.array([0, 1]), np.array([2, 1]))
    np.testing.assert_array_equal(take_rows(batch, o, index, "o"), [o[1, 0, 2], o[0, 1, 1]])
    np.testing.assert_array_equal(take_rows(batch, o[..., 0], index, "lse"), [o[1, 0, 2, 0], o[0, 1, 1, 0]])
    group = Problem(mode="group", batch=2, seqlen_q=(2, 3), nhead_q=2, hdim_q=4)
    o = np.arange(5 * 2 * 4).reshape(5, 2, 4)
    lse = np.arange(2 * 5).reshape(2, 5)
    np.testing.assert_array_equal(take_rows(group, o, index, "o"), [o[2 + 2, 0], o[1, 1]])
    np.testing.assert_array_equal(take_rows(group, lse, index, "lse"), [lse[0, 4], lse[1, 1]])


# ----------------------------------------------------------------------------- bounded memory
def test_chunks_of_a_32k_by_32k_problem_keep_the_score_matrix_within_64_mib():
    for heads in (1, 8, 32, 128):
        g, n = chunk_shape(heads, 32768, 32768, 4)
        assert g * n * 32768 * 4 <= chunk.CHUNK_BYTES and g >= 1 and n >= 1


def test_tiny_chunks_give_the_same_result(monkeypatch):
    p = Problem(batch=2, seqlen_q=40, seqlen_k=33, nhead_q=4, nhead_k=1, hdim_q=8, mask="b:5,2,3", sink=True)
    inputs = p.make_inputs(0)
    whole = attention(p, inputs)
    monkeypatch.setattr(chunk, "CHUNK_BYTES", 200)  # below one row of all 4 heads: splits heads and rows
    assert chunk_shape(4, 40, 33, 4) == (1, 1)
    tiny = attention(p, inputs)
    np.testing.assert_allclose(tiny.o, whole.o, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(tiny.lse, whole.lse, atol=1e-6, rtol=0)


def _peak_bytes(problem, inputs):
    tracemalloc.start()
    try:
        attention(problem, inputs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_follows_the_chunk_budget_not_the_score_matrix(monkeypatch):
    # Full S per KV head: 4 heads x 1024 x 1024 x 4 B = 16 MiB; O is 1 MiB, gathered K/V 0.5 MiB.
    p = Problem(seqlen_q=1024, nhead_q=4, nhead_k=1, hdim_q=64, mask="b")
    inputs = p.make_inputs(0)
    monkeypatch.setattr(chunk, "CHUNK_BYTES", 256 << 10)
    bounded = _peak_bytes(p, inputs)
    monkeypatch.setattr(chunk, "CHUNK_BYTES", 64 << 20)
    monkeypatch.setattr(chunk, "MAX_CHUNK_ROWS", 1 << 20)
    unbounded = _peak_bytes(p, inputs)
    assert bounded < 4 << 20
    assert unbounded > 16 << 20  # the same measurement sees a whole score matrix
