"""Arch specs (kernel_src/arch_specs.json) and the device -> arch mapping."""
from __future__ import annotations

import pytest

from fmha_bench import dtypes
from fmha_bench.archs import all_archs, arch_from_device, get_arch, tile_config
from fmha_bench.errors import UserError

EXPECTED = {"gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1201", "sm_80", "sm_90a"}


def test_every_expected_arch_is_described():
    assert {a["name"] for a in all_archs()} == EXPECTED


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_arch_spec_is_consistent(arch):
    spec = get_arch(arch)
    assert spec["vendor"] in ("amd", "nvidia") and spec["wave_size"] in (32, 64) and spec["product"]
    assert all(d in dtypes.DTYPES for d in spec["dtypes"])
    fp8 = [d for d in spec["dtypes"] if dtypes.get(d).is_fp8]
    assert fp8 == ([f"fp8_{spec['fp8']}"] if spec["fp8"] else [])
    assert set(spec["peak_tflops"]) <= set(spec["dtypes"]) and spec["peak_tflops"]["fp16"] > 0
    assert spec["peak_tbps"] > 0 and spec["shared_bytes_per_block"] >= 48 * 1024
    assert tile_config(arch, 128, 128) is not None


def test_wave_size_follows_the_arch_family():
    assert [get_arch(a)["wave_size"] for a in ("gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1201", "sm_90a")] == \
        [64, 64, 64, 32, 32, 32]


def test_get_arch_returns_a_copy():
    get_arch("sm_90a")["peak_tflops"]["fp16"] = 0
    assert get_arch("sm_90a")["peak_tflops"]["fp16"] > 0


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown arch 'gfx908'; known: .*gfx942"):
        get_arch("gfx908")


@pytest.mark.parametrize("args,kwargs,expected", [
    (("nvidia", 9, 0), {}, "sm_90a"),
    (("nvidia", 8, 0), {}, "sm_80"),
    (("nvidia", 8, 9), {}, "sm_80"),
    (("amd",), {"gcn_arch_name": "gfx942:sramecc+:xnack-"}, "gfx942"),
    (("amd",), {"gcn_arch_name": b"gfx90a:sramecc+:xnack-\0\0"}, "gfx90a"),
    (("amd",), {"gcn_arch_name": "gfx1100"}, "gfx1100"),
])
def test_device_maps_to_its_arch(args, kwargs, expected):
    assert arch_from_device(*args, **kwargs) == expected


@pytest.mark.parametrize("args,kwargs", [(("nvidia", 10, 0), {}), (("amd",), {"gcn_arch_name": "gfx908:xnack-"})])
def test_device_without_a_spec_is_a_user_error(args, kwargs):
    with pytest.raises(UserError, match="no arch spec"):
        arch_from_device(*args, **kwargs)
