"""GPU architectures as the kernels and the reports see them (kernel_src/arch_specs.json):
wave size, fp8 flavour, dtypes, tile configurations of the portable and tensor-core kernels,
datasheet peaks.

The build's own arch facts (code-object suffix, ELF ids) live in `fmha_bench.build.arch`.
"""
from __future__ import annotations

import copy
import functools
import json

from .package_data import kernel_src_dir
from .errors import UserError

SPECS_FILE = "arch_specs.json"


def _specs_text() -> str:
    return (kernel_src_dir() / SPECS_FILE).read_text()


@functools.cache
def _specs() -> dict:
    raw = json.loads(_specs_text())
    archs = {}
    for name, spec in raw["archs"].items():
        archs[name] = {"name": name, **spec, "tiles": raw["tile_sets"][spec["tiles"]],
                       "mma_tiles": raw["mma_tile_sets"].get(spec.get("mma_tiles"), {})}
    return archs


def all_archs() -> list[dict]:
    """Every known arch as a dict (a copy: callers may modify it)."""
    return [copy.deepcopy(spec) for spec in _specs().values()]


def get_arch(name: str) -> dict:
    spec = _specs().get(name)
    if spec is None:
        raise UserError(f"unknown arch {name!r}; known: {', '.join(_specs())}", "--arch")
    return copy.deepcopy(spec)


def tile_config(arch: str, hdim_q: int, hdim_v: int) -> dict | None:
    """The portable kernel's {block_q, block_k, threads} for these head dims, None if none."""
    return _specs()[arch]["tiles"].get(f"{hdim_q}/{hdim_v}")


def mma_tile_candidates(arch: str, hdim_q: int, hdim_v: int) -> list[dict]:
    """The tensor-core kernel's {block_q, block_k, warps} candidates, the default first ([] if none)."""
    return list(_specs()[arch]["mma_tiles"].get(f"{hdim_q}/{hdim_v}", []))


def kernel_tile_candidates(arch: str, kind: str, hdim_q: int, hdim_v: int) -> list[dict]:
    """Candidate tiles of a kernel family, the default first ([] if none): the arch names its set
    in `<kind>_tiles`, the sets live in the top-level `<kind>_tile_sets` of arch_specs.json."""
    raw = json.loads(_specs_text())
    set_name = raw["archs"][arch].get(f"{kind}_tiles")
    return list(raw.get(f"{kind}_tile_sets", {}).get(set_name, {}).get(f"{hdim_q}/{hdim_v}", []))


def archs_with_dtype(dtype: str) -> list[str]:
    return [name for name, spec in _specs().items() if dtype in spec["dtypes"]]


def arch_from_device(vendor: str, cc_major: int | None = None, cc_minor: int | None = None, *,
                     gcn_arch_name: str | bytes | None = None) -> str:
    """The arch-spec name of a device: NVIDIA by compute capability ((9, 0) -> sm_90a, (8, x) ->
    sm_80, whose code runs on every 8.x), AMD by gcnArchName ("gfx942:sramecc+:xnack-" -> gfx942)."""
    if vendor == "nvidia":
        if cc_major == 9 and cc_minor == 0:
            return "sm_90a"
        if cc_major == 8:
            return "sm_80"
        raise UserError(f"no arch spec for NVIDIA compute capability {cc_major}.{cc_minor}; "
                        f"known: {', '.join(_specs())}")
    if vendor == "amd":
        text = gcn_arch_name.decode() if isinstance(gcn_arch_name, bytes) else str(gcn_arch_name or "")
        name = text.split("\0", 1)[0].split(":", 1)[0].strip()
        if name in _specs():
            return name
        raise UserError(f"no arch spec for AMD {text!r}; known: {', '.join(_specs())}")
    raise ValueError(f"unknown vendor {vendor!r}")
