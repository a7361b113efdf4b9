"""Random sweep files never produce a traceback: `sweep --dry-run` exits 0 or 2."""
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmha_bench.cli import cli
from fmha_bench.problem import PROBLEM_FIELDS
from fmha_bench.sweep import TOP_LEVEL_KEYS

KEYS = st.sampled_from(TOP_LEVEL_KEYS + PROBLEM_FIELDS + ("binary", "mode", "rows", "warmup", "axis", ""))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 40), st.floats(width=32), st.text(max_size=6),
    st.sampled_from(["causal", "b:64,0", "t:8,0,2", "xb:-1", "fp16", "fp8_e4m3fn", "paged", "group", "vllm",
                     "headwise", "nhd", "full", "off"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
                      max_leaves=10)
# Section values shaped like a sweep's, so the fuzz reaches expansion and not only the type checks.
FIELDS = st.dictionaries(st.sampled_from(PROBLEM_FIELDS), VALUES, max_size=3)
SECTIONS = st.fixed_dictionaries({}, optional={
    "defaults": FIELDS,
    "axes": st.dictionaries(st.sampled_from(PROBLEM_FIELDS), st.lists(VALUES, max_size=3), max_size=3),
    "zip": st.lists(st.dictionaries(st.sampled_from(PROBLEM_FIELDS), st.lists(SCALARS, min_size=1, max_size=2),
                                    max_size=2), max_size=2),
    "cases": st.lists(FIELDS, max_size=2),
    "exclude": st.lists(FIELDS, max_size=2),
    "measure": st.dictionaries(KEYS, SCALARS, max_size=2),
    "validate": st.dictionaries(KEYS, SCALARS, max_size=2),
})
ANY_MAPPING = st.dictionaries(KEYS, VALUES, max_size=5)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _dry_run(tmp_path, text: str):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    return CliRunner().invoke(cli, ["sweep", str(path), "--dry-run"])


def _assert_clean(result):
    assert result.exit_code in (0, 2), f"{result.exception!r}\n{result.output}"
    if result.exit_code == 2:
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")


@FUZZ
@given(doc=st.one_of(SECTIONS, ANY_MAPPING))
def test_random_sweep_mappings_dry_run_or_fail_with_one_line(tmp_path, doc):
    _assert_clean(_dry_run(tmp_path, yaml.safe_dump(doc)))


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("abx:-[]{},#&*!|>'\"\n\t 0123456789")), max_size=60))
def test_random_yaml_text_dry_runs_or_fails_with_one_line(tmp_path, text):
    _assert_clean(_dry_run(tmp_path, text))
