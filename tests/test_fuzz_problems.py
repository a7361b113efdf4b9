"""Random field mappings never escape Problem as anything but ProblemError: either a valid
Problem whose cost model and identity work, or one line naming the field to fix."""
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from fmha_bench.masks import MAX_WINDOW, MaskError, parse_mask
from fmha_bench.problem import FAMILIES, KV_LAYOUTS, MODES, PAGE_TABLES, PROBLEM_FIELDS, Problem, ProblemError

HUGE = st.sampled_from([2**31, 2**63, 10**30, -(10**30), 10**400])
INTS = st.one_of(st.integers(-3, 40), st.sampled_from([64, 128, 256, 576, 1024, 4097]), HUGE)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1e-3, 50.0]))
WORDS = st.sampled_from([*FAMILIES, *MODES, *PAGE_TABLES, *KV_LAYOUTS, "half", "interleaved", "fp16", "BF16",
                         "fp8_e4m3fn", "fp8_e4m3fnuz", "fp64", "causal", "b", "t:8,0,2", "xb:3", "window:4,0",
                         "b:99999999999999999999,0", "xt:0", "t:-7,-7", "", " ", "\n", "é", "0"])
ODD_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, WORDS, ODD_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ODD_TEXT, inner, max_size=2),
                      max_leaves=6)
# Mostly real field names (so some mappings are valid problems), now and then an unknown one.
NAMES = st.one_of(st.sampled_from(PROBLEM_FIELDS), st.sampled_from(PROBLEM_FIELDS), ODD_TEXT, st.integers(-2, 2))
FIELD_DICTS = st.dictionaries(NAMES, VALUES, max_size=6)
# Small, well-typed values: a larger share of these mappings survive validate().
PLAUSIBLE = st.fixed_dictionaries({}, optional={
    "family": st.sampled_from(list(FAMILIES)), "mode": st.sampled_from(MODES), "batch": st.integers(-1, 4),
    "seqlen_q": st.one_of(st.integers(-1, 300), st.lists(st.integers(-1, 50), max_size=4)),
    "seqlen_k": st.one_of(st.none(), st.integers(-1, 300), st.lists(st.integers(-1, 50), max_size=4)),
    "nhead_q": st.integers(0, 16), "nhead_k": st.one_of(st.none(), st.integers(0, 8)),
    "hdim_q": st.sampled_from([0, 8, 64, 576]), "hdim_v": st.one_of(st.none(), st.sampled_from([8, 64, 512])),
    "dtype": WORDS, "mask": WORDS, "scale": st.one_of(st.none(), FLOATS), "soft_cap": FLOATS,
    "sink": st.booleans(), "lse": st.booleans(), "page_size": st.sampled_from([0, 1, 16, 128]),
    "page_table": st.sampled_from(list(PAGE_TABLES)), "kv_layout": st.sampled_from(KV_LAYOUTS),
    "swa_heads": st.lists(st.integers(-1, 4), max_size=3), "swa_window": INTS, "swa_sink": INTS,
    "num_splits": st.integers(-1, 4), "rotary_dim": st.integers(-2, 130),
})
FUZZ = settings(max_examples=300, deadline=None)
UNKNOWN_FIELD_TAIL = "unknown problem field; known fields: " + ", ".join(sorted(PROBLEM_FIELDS))


def _check(data):
    """The property: a valid Problem that works end to end, or a one-line ProblemError naming a field."""
    try:
        problem = Problem.from_dict(data).validate()
    except ProblemError as e:
        message = str(e)
        assert "\n" not in message and len(message) < 400, message
        assert message.startswith(f"{e.field}: ")
        assert e.field in PROBLEM_FIELDS or message.endswith(UNKNOWN_FIELD_TAIL), message
        return None
    assert problem.flops() >= 0 and problem.bytes() >= 0  # group mode may hold only empty sequences
    assert problem.areas().shape == problem.keys_read().shape == (problem.batch, problem.nhead_k)
    assert int(problem.areas().sum()) * problem.group_size * 2 * (problem.hdim_q + problem.hdim_v) == problem.flops()
    assert "\n" not in problem.name() and re.fullmatch(r"[0-9a-f]{12}", problem.key())
    assert Problem.from_dict(problem.all_fields()) == problem       # rows store all_fields(); they load back
    assert Problem.from_dict(problem.fields()).key() == problem.key()
    return problem


@FUZZ
@given(data=FIELD_DICTS)
def test_random_field_mappings_make_a_working_problem_or_a_one_line_error_naming_the_field(data):
    _check(data)


@FUZZ
@given(data=PLAUSIBLE)
def test_plausible_field_mappings_make_a_working_problem_or_a_one_line_error_naming_the_field(data):
    _check(data)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(WORDS, st.text(alphabet=st.sampled_from(list("tbxnw:,-0123456789 causl_i")), max_size=14)),
       seqlen_q=st.integers(0, 9), seqlen_k=st.integers(0, 9))
def test_random_mask_strings_parse_to_a_canonical_mask_or_a_mask_error(text, seqlen_q, seqlen_k):
    try:
        mask = parse_mask(text)
    except MaskError as e:
        assert "\n" not in str(e) and str(e).startswith("mask ")
        return
    assert parse_mask(mask.canonical()) == mask
    assert 0 <= mask.area(seqlen_q, seqlen_k) <= seqlen_q * seqlen_k


def test_a_huge_number_is_named_with_its_field():
    cases = {"soft_cap": 10**400, "scale": 10**400, "mask": "t:8,0,x", "seqlen_q": float("inf"),
             "swa_heads": 3, "sink": "yes", "family": []}
    for name, value in cases.items():
        try:
            Problem.from_dict({name: value})
        except ProblemError as e:
            assert e.field == name and len(str(e)) < 400
        else:
            raise AssertionError(f"{name}={value!r} was accepted")


def test_negative_window_sides_all_mean_unlimited_and_share_one_key():
    assert Problem(mask="b:-5,3").key() == Problem(mask="b:-1,3").key()
    assert Problem(mask="b:-" + "9" * 5000 + ",0").key() == Problem(mask="b").key()


def test_windows_and_sinks_wider_than_int32_are_clipped_to_it():
    clipped = parse_mask(f"t:{MAX_WINDOW},0,{MAX_WINDOW}")
    assert parse_mask("t:" + "9" * 5000 + ",0,99999999999999999999") == clipped
    assert Problem(mask="t:" + "9" * 5000 + ",0").validate().flops() == Problem(mask=f"t:{MAX_WINDOW},0").flops()
