"""Sweep files: loading, expansion semantics, point selection, packaged sweep lookup."""
import hashlib
import textwrap

import pytest

from fmha_bench.errors import UserError
from fmha_bench.problem import Problem
from fmha_bench.sweep import (DEFAULT_PROVIDERS, MAX_POINTS, ValidateSettings, find_sweep, load_sweep,
                              packaged_sweeps, select_points)
from fmha_bench.timing import MeasureSettings


@pytest.fixture
def sweep_file(tmp_path):
    def write(text: str, name: str = "s.yaml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path
    return write


def _values(points, name):
    return [p.resolved[name] for p in points]


def test_axes_expand_as_a_cartesian_product_with_the_first_axis_outermost(sweep_file):
    points = load_sweep(sweep_file("""
        axes:
          seqlen_q: [128, 256]
          hdim_q: [64, 128, 256]
    """)).expand()
    assert [(p.resolved["seqlen_q"], p.resolved["hdim_q"]) for p in points] == [
        (128, 64), (128, 128), (128, 256), (256, 64), (256, 128), (256, 256)]
    assert {p.source for p in points} == {"axes"}


def test_zip_lists_advance_together_and_multiply_with_the_axes(sweep_file):
    points = load_sweep(sweep_file("""
        axes:
          mask: [none, causal]
        zip:
          - {batch: [16, 4], seqlen_q: [1024, 4096]}
    """)).expand()
    assert [(p.resolved["mask"], p.resolved["batch"], p.resolved["seqlen_q"]) for p in points] == [
        ("0", 16, 1024), ("0", 4, 4096), ("b", 16, 1024), ("b", 4, 4096)]


def test_two_zip_groups_are_two_dimensions_of_the_product(sweep_file):
    points = load_sweep(sweep_file("""
        zip:
          - {batch: [2, 1], seqlen_q: [512, 1024]}
          - {hdim_q: [64, 128], nhead_q: [32, 16]}
    """)).expand()
    assert [(p.resolved["batch"], p.resolved["hdim_q"], p.resolved["nhead_q"]) for p in points] == [
        (2, 64, 32), (2, 128, 16), (1, 64, 32), (1, 128, 16)]


def test_defaults_apply_to_every_point_and_axes_override_them(sweep_file):
    points = load_sweep(sweep_file("""
        defaults: {nhead_q: 16, nhead_k: 4, hdim_q: 256}
        axes:
          hdim_q: [64]
    """)).expand()
    assert (points[0].resolved["nhead_q"], points[0].resolved["nhead_k"], points[0].resolved["hdim_q"]) == (16, 4, 64)
    assert points[0].fields == {"nhead_q": 16, "nhead_k": 4, "hdim_q": 64}


def test_cases_follow_the_product_over_defaults_and_are_not_crossed_with_axes(sweep_file):
    points = load_sweep(sweep_file("""
        defaults: {hdim_q: 64}
        axes:
          seqlen_q: [128, 256]
        cases:
          - {seqlen_q: 300, mask: causal}
          - {family: paged, page_size: 16, seqlen_q: 1, seqlen_k: 999}
    """)).expand()
    assert [p.source for p in points] == ["axes", "axes", "cases[0]", "cases[1]"]
    assert _values(points, "seqlen_q") == [128, 256, 300, 1]
    assert _values(points, "hdim_q") == [64] * 4
    assert points[3].problem.is_paged


def test_defaults_alone_are_one_point_when_there_is_nothing_else(sweep_file):
    points = load_sweep(sweep_file("defaults: {seqlen_q: 77}\n")).expand()
    assert _values(points, "seqlen_q") == [77]


def test_a_sweep_of_cases_only_has_no_extra_defaults_point(sweep_file):
    points = load_sweep(sweep_file("""
        defaults: {seqlen_q: 77}
        cases:
          - {hdim_q: 64}
    """)).expand()
    assert [p.source for p in points] == ["cases[0]"]


def test_invalid_product_points_are_kept_as_skipped_with_the_problem_error(sweep_file):
    points = load_sweep(sweep_file("""
        defaults: {nhead_q: 8}
        axes:
          nhead_k: [2, 3]
    """)).expand()
    assert points[0].problem is not None and points[0].skip_reason is None
    assert points[1].problem is None
    assert points[1].skip_reason == "nhead_k: nhead_q (8) must be a multiple of nhead_k (3)"
    assert points[1].name and points[1].id != points[0].id


def test_point_ids_are_problem_keys_and_stable_across_expansions(sweep_file):
    loaded = load_sweep(sweep_file("""
        axes:
          mask: [none, causal, "b:64,0"]
          dtype: [fp16, bf16]
    """))
    first, second = loaded.expand(), loaded.expand()
    assert [p.id for p in first] == [p.id for p in second]
    assert all(p.id == p.problem.key() for p in first)
    assert len({p.id for p in first}) == 6


def test_duplicate_points_collapse_into_the_first_and_note_the_others(sweep_file):
    expansion = load_sweep(sweep_file("""
        axes:
          mask: [causal, b, none]
        cases:
          - {mask: none}
    """)).expansion()
    assert [p.resolved["mask"] for p in expansion.points] == ["b", "0"]
    assert expansion.points[0].duplicates == ("axes",)
    assert expansion.points[1].duplicates == ("cases[0]",)


def test_exclude_drops_product_points_matching_every_field_with_lists_meaning_any_of(sweep_file):
    expansion = load_sweep(sweep_file("""
        axes:
          dtype: [fp16, fp8_e4m3fn]
          hdim_q: [64, 128, 256]
        exclude:
          - {dtype: fp8_e4m3fn, hdim_q: [128, 256]}
    """)).expansion()
    assert [(p.resolved["dtype"], p.resolved["hdim_q"]) for p in expansion.points] == [
        ("fp16", 64), ("fp16", 128), ("fp16", 256), ("fp8_e4m3fn", 64)]
    assert expansion.excluded == (2,)


def test_exclude_compares_masks_after_resolving_aliases_and_counts_per_rule(sweep_file):
    expansion = load_sweep(sweep_file("""
        axes:
          mask: [none, b, "window:64,0"]
        exclude:
          - {mask: causal}
          - {mask: "b:64,0"}
          - {hdim_q: 32}
    """)).expansion()
    assert [p.resolved["mask"] for p in expansion.points] == ["0"]
    assert expansion.excluded == (1, 1, 0)


def test_exclude_does_not_drop_explicit_cases(sweep_file):
    points = load_sweep(sweep_file("""
        cases:
          - {hdim_q: 256}
        exclude:
          - {hdim_q: 256}
    """)).expand()
    assert _values(points, "hdim_q") == [256]


def test_a_nested_list_in_an_axis_is_one_point_of_per_sequence_lengths(sweep_file):
    points = load_sweep(sweep_file("""
        defaults: {mode: group, batch: 4}
        axes:
          seqlen_q: [[128, 0, 1, 777], 64]
    """)).expand()
    assert points[0].problem.seqlens_q() == [128, 0, 1, 777]
    assert points[1].problem.seqlens_q() == [64] * 4


def test_mask_aliases_and_yaml_integers_are_accepted_as_masks(sweep_file):
    points = load_sweep(sweep_file("""
        axes:
          mask: [0, causal_tl, "xt:4", "window:8,0,2", no]
    """)).expand()
    assert _values(points, "mask") == ["0", "t", "t:2,1", "b:8,0,2"]
    assert points[0].duplicates == ("axes",)  # `no` is an alias of 0: YAML 1.2 keeps it a string


def test_yaml_scalars_follow_the_1_2_core_schema(sweep_file):
    loaded = load_sweep(sweep_file("""
        measure: {max_noise: 2e-2, l2_flush: false}
        validate: {mode: off}
    """))
    assert loaded.measure.max_noise == 0.02 and loaded.measure.l2_flush is False
    assert loaded.validate.mode == "off"


def test_settings_and_metadata_default_sensibly(sweep_file):
    path = sweep_file("defaults: {seqlen_q: 64}\n", name="tiny.yaml")
    loaded = load_sweep(path)
    assert loaded.name == "tiny" and loaded.description == ""
    assert loaded.providers == DEFAULT_PROVIDERS
    assert loaded.measure == MeasureSettings() and loaded.validate == ValidateSettings()
    assert loaded.seed == 0 and loaded.binaries == {} and loaded.ck_binary is None
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.path == str(path)


def test_every_top_level_section_is_read(sweep_file):
    loaded = load_sweep(sweep_file("""
        name: full
        description: all keys
        providers: [fmha, torch-sdpa:flash]
        measure: {warmup: 1, min_samples: 3, max_samples: 9, max_noise: 0.1, time_budget_s: 0.5, l2_flush: false}
        validate: {mode: full, rows: 8, seed: 3}
        seed: 7
        binaries: {mine: {command: [/opt/x], time: 'time: ([0-9.]+)'}}
        ck: {binary: /opt/ck/tile_example_fmha_fwd}
    """))
    assert loaded.name == "full" and loaded.description == "all keys"
    assert loaded.providers == ("fmha", "torch-sdpa:flash")
    assert loaded.measure == MeasureSettings(1, 3, 9, 0.1, 0.5, False)
    assert loaded.validate == ValidateSettings("full", 8, 3)
    assert loaded.seed == 7
    assert list(loaded.binaries) == ["mine"] and loaded.binaries["mine"].command == ("/opt/x",)
    assert loaded.ck_binary == "/opt/ck/tile_example_fmha_fwd"


def test_an_oversized_product_is_an_error_on_the_axes_line(sweep_file):
    values = list(range(1, 400))
    path = sweep_file(f"name: big\naxes:\n  seqlen_q: {values}\n  seqlen_k: {values}\n")
    assert len(values) ** 2 > MAX_POINTS
    with pytest.raises(UserError) as e:
        load_sweep(path)
    assert e.value.where == f"{path}:2"


def test_a_file_that_is_not_utf8_is_a_user_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError) as e:
        load_sweep(path)
    assert e.value.where == f"{path}:1" and "UTF-8" in str(e.value)


def test_a_missing_file_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError) as e:
        load_sweep(tmp_path / "nope.yaml")
    assert e.value.where == str(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- selecting points
@pytest.fixture
def grid(sweep_file):
    return load_sweep(sweep_file("""
        axes:
          mask: [none, causal]
          hdim_q: [64, 128]
        cases:
          - {mode: group, batch: 2, seqlen_q: [5, 0]}
    """)).expand()


def test_a_field_filter_compares_normalised_values(grid):
    chosen = select_points(grid, ["mask=causal"])
    assert [(p.resolved["mask"], p.resolved["hdim_q"]) for p in chosen] == [("b", 64), ("b", 128)]
    assert select_points(grid, ["seqlen_q=[5, 0]"]) == [grid[-1]]


def test_filters_combine_and_a_plain_filter_is_a_substring_of_name_id_or_source(grid):
    assert select_points(grid, ["mask=b", "hdim_q=64"]) == [grid[2]]
    assert select_points(grid, ["D64"]) == [grid[0], grid[2]]
    assert select_points(grid, ["cases"]) == [grid[4]]
    assert select_points(grid, [grid[0].id[:8]]) == [grid[0]]


def test_limit_keeps_the_first_points_after_filtering(grid):
    assert select_points(grid, ["hdim_q=128"], limit=1) == [grid[1]]
    assert select_points(grid, limit=3) == grid[:3]


@pytest.mark.parametrize("text, message", [
    ("masks=b", "did you mean 'mask'?"),
    ("mask=diagonal", "not in the grammar"),
    ("hdim_q=big", "expected an integer"),
])
def test_a_bad_field_filter_is_a_user_error_naming_the_flag(grid, text, message):
    with pytest.raises(UserError) as e:
        select_points(grid, [text])
    assert e.value.where == "--filter" and message in str(e.value)


# ----------------------------------------------------------------------------- packaged sweeps
PACKAGED = ["quick", "prefill", "paged", "fp8", "decode", "varlen", "splitkv", "parity", "perf_prefill", "perf_paged",
            "appendkv", "mla", "decode_small", "headwise", "mixed", "perf_decode"]


def test_the_packaged_sweeps_are_the_documented_ones():
    assert set(packaged_sweeps()) == set(PACKAGED)


def test_find_sweep_takes_a_packaged_name_with_or_without_suffix_and_defaults_to_quick():
    packaged = packaged_sweeps()
    assert find_sweep(None) == packaged["quick"]
    assert find_sweep("prefill") == packaged["prefill"]
    assert find_sweep("decode.yaml") == packaged["decode"]


def test_find_sweep_prefers_an_existing_file_and_reports_an_unknown_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prefill").write_text("name: local\n")
    assert str(find_sweep("prefill")) == "prefill"
    with pytest.raises(UserError) as e:
        find_sweep("prefil")
    assert e.value.where == "prefil" and "quick" in str(e.value)


@pytest.mark.parametrize("name", PACKAGED)
def test_every_packaged_sweep_expands_to_valid_problems_only(name):
    points = load_sweep(packaged_sweeps()[name]).expand()
    assert points
    assert [p.skip_reason for p in points if p.problem is None] == []
    assert all(Problem(**p.fields).validate() == p.problem for p in points)


def test_the_quick_sweep_touches_every_axis_it_promises():
    problems = [p.problem for p in load_sweep(packaged_sweeps()["quick"]).expand()]
    masks = {p.mask_spec for p in problems}
    assert {p.family for p in problems} == {"fwd", "paged"}
    assert {"fp16", "bf16", "fp8_e4m3fn"} <= {p.dtype for p in problems}
    assert {64, 128, 256} <= {p.hdim_q for p in problems} and any(p.hdim_q != p.hdim_v for p in problems)
    assert {"0", "t", "b"} <= {m.canonical() for m in masks}
    assert {m.align for m in masks if m.is_window} == {"top_left", "bottom_right"}
    assert any(m.sink for m in masks)
    assert any(p.group_size > 1 and p.nhead_k > 1 for p in problems) and any(p.nhead_k == 1 for p in problems)
    assert any(p.soft_cap for p in problems) and any(p.sink for p in problems) and any(p.lse for p in problems)
    group = [p for p in problems if p.mode == "group"]
    assert any(0 in p.seqlens_q() for p in group) and any(1 in p.seqlens_q() for p in group)
    paged = [p for p in problems if p.is_paged]
    assert {1, 16, 256} <= {p.page_size for p in paged}
    assert {"vllm", "sglang"} <= {p.page_table for p in paged}
    assert any(any(sk % p.page_size for sk in p.seqlens_k()) for p in paged)  # a part-filled last page
    assert any(max(p.seqlens_q()) == 1 and min(p.seqlens_k()) > 1000 for p in paged)  # decode-like


def test_an_invalid_case_fails_at_load_time_not_at_expansion(sweep_file):
    path = sweep_file("""
        defaults: {family: paged, page_size: 16}
        cases:
          - {page_size: 8}
          - {page_size: 0}
    """)
    with pytest.raises(UserError) as e:
        load_sweep(path)
    assert e.value.where == f"{path}:5"
    assert str(e.value).endswith("cases[1]: page_size: family paged needs a paged cache (page_size >= 1)")


def test_yaml_anchors_and_merge_keys_share_fields_between_cases(sweep_file):
    points = load_sweep(sweep_file("""
        cases:
          - &paged {family: paged, page_size: 16, seqlen_q: 1, seqlen_k: 999}
          - {<<: *paged, page_table: sglang}
    """)).expand()
    assert [(p.resolved["page_size"], p.resolved["page_table"]) for p in points] == [(16, "vllm"), (16, "sglang")]


def test_the_format_example_in_the_module_docstring_loads(tmp_path):
    import fmha_bench.sweep as module
    example = module.__doc__.split("::\n", 1)[1].split("\n\n", 1)[0]
    path = tmp_path / "example.yaml"
    path.write_text(textwrap.dedent(example))
    expansion = load_sweep(path).expansion()
    assert len(expansion.points) == 2 * 2 * 2 + 1
    assert expansion.points[-1].problem.family == "paged"
