"""The reference on paged caches (vllm, sglang, headwise), MLA, mixed batches and append-KV."""
import numpy as np
import pytest

from bruteforce import assert_matches, brute_attention, rope_vector
from fmha_bench import Problem
from fmha_bench.reference import append_kv, apply_rope, attention


def check(problem, seed=0, **kwargs):
    inputs = problem.make_inputs(seed)
    ref = attention(problem, inputs, **kwargs)
    o, lse = brute_attention(problem, inputs, p_fp8=kwargs.get("p_fp8", False))
    assert_matches(ref.o, ref.lse, o, lse)
    return inputs, ref


@pytest.mark.parametrize("table", ["vllm", "sglang", "headwise"])
@pytest.mark.parametrize("page_size", [1, 4, 64])
@pytest.mark.parametrize("layout", ["hnd", "nhd"])
def test_paged_prefill_reads_through_every_table_and_page_size(table, page_size, layout):
    # seqlen_k 13 and 7 leave the last page part-filled; the cache's empty slots are NaN.
    p = Problem(family="paged", mode="group", batch=3, seqlen_q=(5, 1, 0), seqlen_k=(13, 7, 2), nhead_q=4,
                nhead_k=2, hdim_q=8, page_size=page_size, page_table=table, kv_layout=layout, mask="b")
    inputs, ref = check(p)
    assert np.isnan(inputs.k.astype(np.float32)).any()
    assert np.isfinite(ref.o).all()


@pytest.mark.parametrize("table", ["vllm", "sglang"])
def test_paged_decode_with_pages_shuffled(table):
    p = Problem(family="paged", batch=3, seqlen_q=1, seqlen_k=21, nhead_q=8, nhead_k=2, hdim_q=16, page_size=4,
                page_table=table, mask="b", num_splits=3)
    inputs, _ = check(p)
    assert not np.array_equal(inputs.tables.pages[0], sorted(inputs.tables.pages[0]))


def _headwise_swa(**overrides):
    fields = dict(family="paged", batch=2, seqlen_q=6, seqlen_k=23, nhead_q=6, nhead_k=3, hdim_q=8, page_size=2,
                  page_table="headwise", mask="b", swa_heads=(1,), swa_window=4, swa_sink=3)
    return Problem(**{**fields, **overrides})


def test_headwise_swa_head_skips_recycled_blocks_and_matches_bruteforce():
    p = _headwise_swa()
    inputs, ref = check(p)
    swa_rows = inputs.tables.block_tables_headwise[1::3]
    assert (swa_rows == -1).any() and (inputs.tables.block_tables_headwise[0::3][:, :12] >= 0).all()
    assert np.isfinite(ref.o).all()


def test_a_needed_block_set_to_minus_one_raises_naming_it():
    p = _headwise_swa()
    inputs = p.make_inputs(0)
    inputs.tables.block_tables_headwise[1 * 3 + 1, 1] = -1  # sequence 1, SWA head 1: block 1 holds sink token 2
    with pytest.raises(ValueError, match=r"sequence 1, KV head 1: logical block 1 is needed but its entry is -1"):
        attention(p, inputs)


def test_vllm_table_with_a_needed_block_at_minus_one_raises():
    p = Problem(family="paged", batch=2, seqlen_q=1, seqlen_k=9, nhead_q=2, hdim_q=8, page_size=4)
    inputs = p.make_inputs(0)
    inputs.tables.block_table[0, 2] = -1
    with pytest.raises(ValueError, match="sequence 0, KV head 0: logical block 2"):
        attention(p, inputs)


def test_sampled_rows_need_no_more_than_the_table_holds():
    p = _headwise_swa()
    inputs = p.make_inputs(0)
    sampled = attention(p, inputs, sampled_rows=3)
    assert np.isfinite(sampled.o_rows).all()


@pytest.mark.parametrize("dtype", ["fp16", "fp8_e4m3fn"])
def test_mla_reads_v_as_the_head_of_the_latent_row(dtype):
    p = Problem(family="mla", batch=2, seqlen_q=2, seqlen_k=19, nhead_q=8, nhead_k=1, hdim_q=40, hdim_v=32,
                kv_layout="nhd", page_size=8, mask="b", scale=576 ** -0.5, dtype=dtype)
    inputs, ref = check(p)
    assert inputs.v is None and ref.o.shape == (2, 8, 2, 32)


def test_mixed_batch_is_per_request_attention():
    p = Problem(family="mixed", mode="group", batch=3, seqlen_q=(17, 1, 2), seqlen_k=(17, 30, 12), nhead_q=4,
                nhead_k=2, hdim_q=8, page_size=4, mask="b")
    check(p)


# ----------------------------------------------------------------------------- RoPE and append-KV
@pytest.mark.parametrize("style", ["interleaved", "half"])
def test_apply_rope_rotates_pairs_and_passes_the_tail_through(style):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 10)).astype(np.float32)
    angles = np.arange(8)[:, None] * np.array([0.5, 0.1, 0.02])[None, :]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    positions = np.array([0, 5, 7])[:, None]
    out = apply_rope(x, positions, cos, sin, 6, style)
    for t in range(3):
        for h in range(2):
            expected = rope_vector(x[t, h], int(positions[t, 0]), cos, sin, 6, style)
            np.testing.assert_allclose(out[t, h], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[..., 6:], x[..., 6:])
    np.testing.assert_allclose(out[0], x[0], rtol=1e-6)  # position 0 does not rotate


def test_rope_styles_pair_different_dims():
    x = np.arange(8, dtype=np.float32)
    cos, sin = np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32)  # a quarter turn
    np.testing.assert_array_equal(apply_rope(x, 1, cos, sin, 4, "interleaved")[:4], [-1, 0, -3, 2])
    np.testing.assert_array_equal(apply_rope(x, 1, cos, sin, 4, "half")[:4], [-2, -3, 0, 1])


@pytest.mark.parametrize("style", ["interleaved", "half"])
@pytest.mark.parametrize("mode", ["batch", "group"])
def test_appendkv_attends_over_the_rotated_appended_cache(style, mode):
    # group: an empty cache, no new tokens, and part-filled pages on both sides of the append
    lens = dict(seqlen_q=(3, 1, 0, 4), seqlen_k=(10, 1, 5, 9)) if mode == "group" else dict(seqlen_q=3, seqlen_k=11)
    p = Problem(family="appendkv", mode=mode, batch=4 if mode == "group" else 3, nhead_q=4, nhead_k=2, hdim_q=16,
                page_size=4, mask="b", rotary_dim=8, rotary_style=style, dtype="bf16", **lens)
    check(p)


def test_append_kv_writes_rotated_keys_and_values_at_their_slots_and_keeps_the_rest():
    p = Problem(family="appendkv", batch=2, seqlen_q=3, seqlen_k=10, nhead_q=2, nhead_k=1, hdim_q=8, page_size=4,
                rotary_dim=4)
    inputs = p.make_inputs(0)
    k_cache, v_cache, _ = append_kv(p, inputs)
    before = inputs.k.astype(np.float32)
    assert (np.isnan(before) & ~np.isnan(k_cache)).sum() == 2 * 3 * 8  # batch x new tokens x hdim
    kept = ~np.isnan(before)
    np.testing.assert_array_equal(k_cache[kept], before[kept])
    for b in range(2):
        for i in range(3):
            t = 7 + i
            page = inputs.tables.block_table[b, t // 4]
            k_new = inputs.k_new[b, 0, i].astype(np.float32)
            rotated = rope_vector(k_new, t, inputs.rope_cos, inputs.rope_sin, 4, "interleaved")
            np.testing.assert_array_equal(k_cache[page, 0, t % 4], rotated.astype(np.float16).astype(np.float32))
            np.testing.assert_array_equal(v_cache[page, 0, t % 4], inputs.v_new[b, 0, i].astype(np.float32))


def test_append_kv_refuses_a_recycled_block_for_a_new_token():
    p = Problem(family="appendkv", batch=1, seqlen_q=2, seqlen_k=9, nhead_q=1, hdim_q=8, page_size=4)
    inputs = p.make_inputs(0)
    inputs.tables.block_table[0, 2] = -1  # token 8, the second new one
    with pytest.raises(ValueError, match="logical block 2 is needed but its entry is -1"):
        append_kv(p, inputs)
