"""Registered providers, explicitly, one per module.

`fmha` (our kernels), `torch-sdpa:{flash,cudnn,efficient,math}` (PyTorch SDPA with one backend
forced), `ck` (Composable Kernel's example binary) and, from a sweep file's `binaries:` section,
one `binary:NAME` per declared program; `fmha:<tag>` runs one candidate instance of the
dispatcher's (the tags --all-instances prints) and skips points it is not a candidate of.
`selftest:{fault,hang,trap,abort}` (test-only, they misbehave on purpose) are found by name but
never listed.
"""
from __future__ import annotations

import difflib
from typing import Optional

from ..errors import UserError
from .base import Prepared, Provider


def all_providers(sweep=None, ck_binary: Optional[str] = None) -> list[Provider]:
    """Every provider: the built-in ones, then the sweep's declared binaries. `ck_binary` is
    --ck-binary; CK also looks at the sweep's `ck: {binary}` and $FMHA_BENCH_CK_BINARY."""
    from .binary import BinaryProvider
    from .ck import CkProvider
    from .fmha import FmhaProvider
    from .torch_sdpa import SDPA_BACKENDS, TorchSdpaProvider
    seed = sweep.seed if sweep is not None else 0
    providers = [
        FmhaProvider(),
        *(TorchSdpaProvider(backend) for backend in SDPA_BACKENDS),
        CkProvider(ck_binary, sweep.ck_binary if sweep is not None else None, seed=seed),
    ]
    if sweep is not None:
        providers += [BinaryProvider(spec, seed=seed) for spec in sweep.binaries.values()]
    return providers


def get_providers(names: list[str], sweep=None, ck_binary: Optional[str] = None) -> list[Provider]:
    """The providers named (`--providers` or the sweep's list), in that order."""
    from .fmha import FmhaProvider
    from .selftest import BEHAVIOURS, SelftestProvider
    known = {p.name: p for p in all_providers(sweep, ck_binary)}
    known.update((f"selftest:{b}", SelftestProvider(b)) for b in BEHAVIOURS)
    out = []
    for name in names:
        if name.startswith("fmha:") and name not in known:   # one candidate instance, as --all-instances names it
            known[name] = FmhaProvider(tag=name.removeprefix("fmha:"))
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if name.startswith("binary:"):
                hint += "; binary:NAME providers are declared in the sweep file's binaries: section"
            listed = [n for n in known if not n.startswith("selftest:")]
            raise UserError(f"unknown provider {name!r}{hint} (known: {', '.join(listed)})", where="--providers")
        out.append(known[name])
    return out


__all__ = ["Prepared", "Provider", "all_providers", "get_providers"]
