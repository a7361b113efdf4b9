"""YAML loading that remembers the line of every key and value, so errors can name FILE:LINE.

Mappings load as `LineDict` and sequences as `LineList`: plain dict / list subclasses that
also carry 1-based line numbers (of themselves, of each key, of each value or item). Scalars
stay plain Python values; their lines are asked of the container that holds them.

Scalars follow YAML 1.2's core schema rather than PyYAML's YAML 1.1 defaults, because 1.1
surprises people writing sweeps: `off`, `no`, `n`... stay strings (`validate: {mode: off}`,
`mask: no`) and only true/false are booleans; `1e-3` is a float, not a string.
A duplicate key is an error instead of silently keeping the last value.
"""
from __future__ import annotations

import re

import yaml

from .errors import UserError

_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_FLOAT = re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X)


class LineDict(dict):
    """A mapping plus the line of itself, of each key and of each value."""

    def __init__(self, line: int):
        super().__init__()
        self.line = line
        self.key_lines: dict = {}
        self.value_lines: dict = {}

    def key_line(self, key) -> int:
        return self.key_lines.get(key, self.line)

    def value_line(self, key) -> int:
        return self.value_lines.get(key, self.line)


class LineList(list):
    """A sequence plus the line of itself and of each item."""

    def __init__(self, line: int):
        super().__init__()
        self.line = line
        self.item_lines: list = []

    def item_line(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


class _Loader(yaml.SafeLoader):
    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _FLOAT_TAG)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Loader.add_implicit_resolver(_BOOL_TAG, _BOOL, list("tTfF"))
_Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


def _line(node) -> int:
    return node.start_mark.line + 1


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)  # resolves `<<` merge keys
    out = LineDict(_line(node))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in out
        except TypeError:  # a list or mapping used as a key
            raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value",
                                                    key_node.start_mark) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {out.key_line(key)})", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = _line(key_node)
        out.value_lines[key] = _line(value_node)
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(_line(node))
    for item in node.value:
        out.append(loader.construct_object(item, deep=True))
        out.item_lines.append(_line(item))
    return out


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def load(text: str, filename: str):
    """Parse one YAML document. Syntax errors become a UserError at FILE:LINE; an empty
    document loads as None."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        context = e.context
        if context and e.context_mark and e.context_mark.line + 1 != line:  # e.g. where an unclosed [ opened
            context = f"{context} (line {e.context_mark.line + 1})"
        message = " ".join(part for part in (context, e.problem) if part)
        raise UserError(f"bad YAML: {message}", where=f"{filename}:{line}") from None
    except yaml.YAMLError as e:
        raise UserError(f"YAML: {e}", where=f"{filename}:1") from None
