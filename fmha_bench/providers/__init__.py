"""Registered providers, explicitly, one per module."""
from __future__ import annotations

from ..errors import UserError
from .base import Prepared, Provider


def all_providers() -> list[Provider]:
    from .fmha import FmhaProvider
    return [FmhaProvider()]


def get_providers(names: list[str]) -> list[Provider]:
    known = {p.name: p for p in all_providers()}
    out = []
    for name in names:
        if name not in known:
            raise UserError(f"unknown provider {name!r}; known: {', '.join(known)}", where="--providers")
        out.append(known[name])
    return out


__all__ = ["Prepared", "Provider", "all_providers", "get_providers"]
