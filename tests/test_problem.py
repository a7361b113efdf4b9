import pytest

from fmha_bench.problem import Problem, ProblemError


def test_causal_flops_count_the_exact_triangle_not_half():
    p = Problem(batch=1, seqlen_q=4, seqlen_k=4, nhead_q=1, hdim_q=8, mask="t")
    assert p.flops() == 2 * 10 * (8 + 8)  # 4 + 3 + 2 + 1 visible pairs


def test_varlen_flops_use_each_sequence_own_area():
    p = Problem(mode="group", batch=3, seqlen_q=[3, 0, 2], seqlen_k=[5, 4, 2], nhead_q=2, nhead_k=1, hdim_q=4,
                hdim_v=2, mask="b")
    # seq0: rows see 3,4,5 keys = 12; seq1: empty; seq2: 1 + 2 = 3
    assert p.flops() == (12 + 3) * 2 * 2 * (4 + 2)


def test_headwise_swa_heads_count_their_window_only():
    p = Problem(family="paged", batch=1, seqlen_q=1, seqlen_k=1000, nhead_q=2, nhead_k=2, hdim_q=8, mask="b",
                page_size=16, page_table="headwise", swa_heads=[1], swa_window=100, swa_sink=10)
    assert list(p.areas()[0]) == [1000, 110]


def test_paged_bytes_round_up_to_whole_pages():
    dense = Problem(family="paged", batch=1, seqlen_q=1, seqlen_k=10, nhead_q=1, hdim_q=8, mask="b", page_size=1)
    paged = Problem(family="paged", batch=1, seqlen_q=1, seqlen_k=10, nhead_q=1, hdim_q=8, mask="b:3,0",
                    page_size=8)
    assert dense.keys_read()[0, 0] == 10
    assert paged.keys_read()[0, 0] == 8 + 2  # window [6, 9] touches page 0 (0..7) and page 1 (8, 9)


def test_key_is_stable_under_spelled_out_defaults_and_aliases():
    a = Problem(batch=2, seqlen_q=256, mask="causal")
    b = Problem(batch=2, seqlen_q=256, seqlen_k=256, nhead_k=8, hdim_v=128, mask="b:-1,0")
    assert a.key() == b.key()
    assert a.key() != Problem(batch=2, seqlen_q=256, mask="t").key()


@pytest.mark.parametrize("fields,field", [
    ({"nhead_q": 6, "nhead_k": 4}, "nhead_k"),
    ({"family": "paged"}, "page_size"),
    ({"family": "fwd", "page_size": 16}, "page_size"),
    ({"mode": "batch", "seqlen_q": [1, 2], "batch": 2}, "seqlen_q"),
    ({"mode": "group", "seqlen_q": [1, 2], "batch": 3}, "seqlen_q"),
    ({"dtype": "fp64"}, "dtype"),
    ({"mask": "sideways"}, "mask"),
    ({"swa_heads": [0]}, "swa_heads"),
    ({"family": "splitkv"}, "num_splits"),
    ({"family": "mla", "page_size": 64, "hdim_q": 576, "hdim_v": 512, "nhead_k": 2, "nhead_q": 16}, "nhead_k"),
    ({"rotary_dim": 64}, "rotary_dim"),
    ({"batch": 0}, "batch"),
    ({"soft_cap": -1}, "soft_cap"),
])
def test_validate_names_the_field_to_fix(fields, field):
    with pytest.raises(ProblemError) as e:
        Problem(**fields).validate()
    assert e.value.field == field


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ProblemError, match="unknown problem field"):
        Problem.from_dict({"seqlen": 4})
