"""`fmha-bench list`: every section prints; archs and providers degrade to a line when their
modules are absent."""
import re
import sys
import types

import pytest
from click.testing import CliRunner

from fmha_bench import dtypes
from fmha_bench.cli import cli
from fmha_bench.problem import FAMILIES, KV_LAYOUTS, PAGE_TABLES
from fmha_bench.sweep import load_sweep, packaged_sweeps


def invoke(*args):
    return CliRunner().invoke(cli, ["list", *args])


@pytest.fixture
def no_optional_modules(monkeypatch):
    monkeypatch.setitem(sys.modules, "fmha_bench.archs", None)  # None in sys.modules: the import fails
    monkeypatch.setitem(sys.modules, "fmha_bench.providers", None)


def test_list_families_shows_every_family():
    out = invoke("families").stdout
    assert all(re.search(rf"^ {name} ", out, re.M) for name in FAMILIES)


def test_list_dtypes_shows_every_dtype_with_its_output_type():
    out = invoke("dtypes").stdout
    assert all(name in out for name in dtypes.DTYPES)
    assert re.search(r"fp8_e4m3fn +│ 1 +│ 448 +│ bf16", out)


def test_list_layouts_shows_page_tables_and_kv_layouts():
    out = invoke("layouts").stdout
    assert all(name in out for name in list(PAGE_TABLES) + list(KV_LAYOUTS))


def test_list_masks_draws_each_example_so_alignments_can_be_told_apart():
    out = invoke("masks").stdout
    rows = {line.split("│")[0].strip(): line.split("│")[2].strip()
            for line in out.splitlines() if line.count("│") == 3 and line.split("│")[0].strip()}
    assert rows["t"] == "x....."   # Sq=4, Sk=6, row 0: top-left causal sees key 0 only
    assert rows["b"] == "xxx..."   # bottom-right: row 0 sees keys 0..Sk-Sq
    assert rows["xt:3"] == "xx...." and "t:1,1" in out


def test_list_archs_says_why_it_is_not_available(no_optional_modules):
    result = invoke("archs")
    assert result.exit_code == 0
    assert result.stdout.startswith("archs: not available (")


def test_list_providers_says_why_it_is_not_available(no_optional_modules):
    assert invoke("providers").stdout.startswith("providers: not available (")


def test_list_archs_shows_the_arch_table(monkeypatch):
    spec = {"name": "gfx942", "vendor": "amd", "wave_size": 64, "fp8": "e4m3fnuz",
            "peak_tflops": {"fp16": 1307.4, "fp8": 2614.9}, "peak_tbps": 5.3}
    monkeypatch.setitem(sys.modules, "fmha_bench.archs", types.SimpleNamespace(all_archs=lambda: [spec]))
    out = invoke("archs").stdout
    assert re.search(r"gfx942 +│ amd +│ 64 +│ e4m3fnuz +│ fp16 1307.4, fp8 2614.9 +│ 5.3", out)


def test_list_providers_shows_name_kind_and_description(monkeypatch):
    provider = types.SimpleNamespace(name="ck", kind="upstream", describe=lambda: "CK's tile_example_fmha_fwd")
    monkeypatch.setitem(sys.modules, "fmha_bench.providers", types.SimpleNamespace(all_providers=lambda: [provider]))
    assert re.search(r"ck +│ upstream +│ CK's tile_example_fmha_fwd", invoke("providers").stdout)


def test_list_sweeps_shows_each_packaged_sweep_with_its_point_count():
    out = invoke("sweeps").stdout
    for name, path in packaged_sweeps().items():
        count = len(load_sweep(path).expand())
        assert re.search(rf"^ {name} +│ {count} +│ {count} +│ 0 +│ \S", out, re.M), name


def test_list_all_is_the_default_and_shows_every_section(no_optional_modules):
    result = invoke()
    assert result.exit_code == 0
    headings = [line for line in result.stdout.splitlines() if line in
                ("families", "masks", "dtypes", "layouts", "archs", "providers", "sweeps")]
    assert headings == ["families", "masks", "dtypes", "layouts", "archs", "providers", "sweeps"]


def test_list_rejects_an_unknown_section():
    assert invoke("kernels").exit_code == 2


def test_list_help_shows_examples():
    result = invoke("--help")
    assert result.exit_code == 0 and "fmha-bench list masks" in result.stdout
