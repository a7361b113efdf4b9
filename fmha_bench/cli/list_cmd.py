"""`fmha-bench list`: the choices a sweep or a flag can name (families, masks, dtypes, layouts,
archs, providers, packaged sweeps)."""
from __future__ import annotations

import importlib

import click

from .. import dtypes
from ..errors import UserError
from ..masks import parse_mask
from ..problem import FAMILIES, KV_LAYOUTS, MODES, PAGE_ORDERS, PAGE_TABLES
from ..sweep import load_sweep, packaged_sweeps

KV_LAYOUT_SHAPES = {"hnd": "cache [num_pages, Hk, page_size, D] (heads first)",
                    "nhd": "cache [num_pages, page_size, Hk, D]"}
MASK_EXAMPLES = (  # (spec, meaning); the picture is drawn from the spec itself
    ("0", "no mask (also 'n', 'none')"),
    ("t", "causal, top-left aligned: j <= i (also 'causal_tl')"),
    ("b", "causal, bottom-right aligned: j <= i + Sk - Sq (also 'causal'; vLLM/FlashAttention causal)"),
    ("t:1,0", "window, top-left: i - l <= j <= i + r (negative l or r: unlimited)"),
    ("b:2,1", "window, bottom-right: p - l <= j <= p + r, p = i + Sk - Sq (also 'window:l,r')"),
    ("b:1,0,2", "window plus a sink prefix: the first s keys stay visible (StreamingLLM); t:l,r,s too"),
    ("xt:3", "xformers window of w keys, top-left: l = w // 2, r = w - 1 - l"),
    ("xb:3", "xformers window of w keys, bottom-right"),
)
PICTURE_SQ, PICTURE_SK = 4, 6


def _families(console):
    table = _table("family", "what it runs")
    for name, text in FAMILIES.items():
        _row(table, name, text)
    console.print(table)
    console.print(f"modes: {', '.join(MODES)} (group = varlen: per-sequence lengths)", highlight=False)


def _masks(console):
    table = _table("mask", "canonical", f"Sq={PICTURE_SQ}, Sk={PICTURE_SK}", "meaning")
    for spec, meaning in MASK_EXAMPLES:
        mask = parse_mask(spec)
        picture = "\n".join("".join("x" if keep else "." for keep in row) for row in mask.dense(PICTURE_SQ, PICTURE_SK))
        _row(table, spec, mask.canonical(), picture, meaning)
    console.print(table)
    console.print("Query row i, key column j; x = visible. Masks take CK's grammar: quote them in YAML "
                  "flow style when they contain a comma.", highlight=False)


def _dtypes(console):
    table = _table("dtype", "bytes", "max", "output")
    for dt in dtypes.DTYPES.values():
        _row(table, dt.name, str(dt.itemsize), f"{dt.max:g}", dtypes.output_dtype(dt).name)
    console.print(table)


def _layouts(console):
    table = _table("page_table", "layout")
    for name, text in PAGE_TABLES.items():
        _row(table, name, text)
    console.print(table)
    table = _table("kv_layout", "layout")
    for name in KV_LAYOUTS:
        _row(table, name, KV_LAYOUT_SHAPES[name])
    console.print(table)
    table = _table("page_order", "visit plan")
    for name, text in PAGE_ORDERS.items():
        _row(table, name, text)
    console.print(table)


def _archs(console):
    found = _optional("archs", "all_archs")
    if isinstance(found, str):
        console.print(f"archs: not available ({found})", highlight=False)
        return
    table = _table("arch", "vendor", "wave", "fp8", "peak TFLOPS", "peak TB/s")
    for arch in found:
        peaks = ", ".join(f"{dtype} {tflops:g}" for dtype, tflops in arch["peak_tflops"].items())
        _row(table, arch["name"], arch["vendor"], str(arch["wave_size"]), arch["fp8"] or "-", peaks,
                      f"{arch['peak_tbps']:g}")
    console.print(table)


def _providers(console):
    found = _optional("providers", "all_providers")
    if isinstance(found, str):
        console.print(f"providers: not available ({found})", highlight=False)
        return
    table = _table("provider", "kind", "what it is")
    for provider in found:
        _row(table, provider.name, provider.kind, provider.describe())
    console.print(table)
    device, where = _device_for_matrix()
    from ..capabilities import capability_matrix
    table = _table("provider", "axis", "value", f"supported on {where}")
    for name, axis, value, reason in capability_matrix(found, device):
        _row(table, name, axis, value, "yes" if reason is None else f"no: {reason}")
    console.print(table)


def _device_for_matrix():
    """This machine's GPU, or, without one, an sm_90a description (what the kernels would do there)."""
    from ..backends import BackendUnavailable, open_backend
    from ..backends.base import DeviceInfo
    try:
        device = open_backend(0).device_info()
        return device, f"{device.name} ({device.arch})"
    except BackendUnavailable:
        return (DeviceInfo(backend="cuda", index=0, name="(no GPU)", arch="sm_90a", arch_detail="sm_90", sm_count=132,
                           l2_bytes=50 << 20, memory_bytes=80 << 30),
                "sm_90a (no GPU here: kernels only; GPU-only providers say why)")


def _sweeps(console):
    table = _table("sweep", "points", "to run", "skipped", "description")
    for name, path in packaged_sweeps().items():
        loaded = load_sweep(path)
        points = loaded.expand()
        skipped = sum(p.problem is None for p in points)
        _row(table, name, str(len(points)), str(len(points) - skipped), str(skipped), loaded.description)
    console.print(table)
    console.print("Run one with `fmha-bench sweep NAME` (`--dry-run` to see its points).", highlight=False)


SECTIONS = {"families": _families, "masks": _masks, "dtypes": _dtypes, "layouts": _layouts, "archs": _archs,
            "providers": _providers, "sweeps": _sweeps}


def _optional(module: str, function: str):
    """The list from `fmha_bench.<module>.<function>()`, or why it is not available. The arch
    table and the providers live in modules that may be absent or unconfigured here."""
    try:
        return getattr(importlib.import_module(f"fmha_bench.{module}"), function)()
    except (ImportError, OSError, UserError) as e:
        return str(e) or type(e).__name__


def _row(table, *cells):
    from rich.text import Text
    table.add_row(*map(Text, cells))  # Text: mask specs like "b:1,0" are neither markup nor emoji codes


def _table(*headers):
    from rich.table import Table
    table = Table(show_edge=False)
    for header in headers:
        table.add_column(header)
    return table


@click.command("list", epilog="\b\nExamples:\n  fmha-bench list\n  fmha-bench list masks\n  fmha-bench list sweeps")
@click.argument("what", type=click.Choice(tuple(SECTIONS) + ("all",)), default="all", required=False)
def list_(what):
    """Show what sweeps and flags can name: families, masks (with pictures), dtypes, layouts
    (page tables, KV cache layouts, page orders), archs, providers and the packaged sweeps."""
    from ..report import make_console
    console = make_console()
    for name, show in SECTIONS.items():
        if what in (name, "all"):
            if what == "all":
                console.print(f"\n[bold]{name}[/]")
            show(console)


COMMANDS = [list_]
