"""Sweep files: which problems to run, with which providers, measured and checked how.

A sweep is one YAML mapping; every key is optional, but the file must not be empty::

    name: quick                      # default: the file's stem
    description: one line for tables and `fmha-bench list sweeps`
    defaults: {family: fwd, dtype: fp16, nhead_q: 8}   # fields every point shares
    axes:                            # cartesian product, first axis outermost
      hdim_q: [64, 128]
      mask: [none, causal]
    zip:                             # lock-step groups: one group's lists have equal lengths and
      - {batch: [16, 4], seqlen_q: [1024, 4096]}  # advance together; each group is one more
                                                  # dimension of the product
    cases:                           # explicit extra points, each its fields over the defaults
      - {family: paged, page_size: 16}            # (not crossed with axes or zip)
    exclude:                         # drop product points matching every field of a rule;
      - {dtype: fp8_e4m3fn, hdim_q: [256, 512]}   # a list means "any of"
    providers: [fmha]                # default providers (`--providers` replaces them)
    measure: {warmup: 3, min_samples: 10, max_samples: 200, max_noise: 0.03,
              time_budget_s: 2.0, l2_flush: true}
    validate: {mode: sampled, rows: 64, seed: 0}  # mode: full | sampled | auto (full when small) | off
    seed: 0                          # input generation seed
    binaries: {my_fa: {command: [./fa, "--b={batch}"], time: 'time: ([0-9.]+) ms'}}
                                     # user-declared binaries, providers binary:NAME (see binary_spec.py)
    ck: {binary: ../ck/bin/tile_example_fmha_fwd}  # CK's example; a relative path is from this file's directory

Fields are those of `fmha_bench.problem.Problem`; `fmha-bench list` shows the choices
(spelled exactly, lower case). Masks take CK's grammar or a readable alias (`causal` = `b`,
`none` = `0`, `window:l,r`); quote a mask that contains a comma inside `{...}` or `[...]`:
`{mask: "b:64,0"}`. `seqlen_q` / `seqlen_k` take one length or, in group mode, a list of
per-sequence lengths. In `axes` and `zip` a field's value is the list of values to sweep, and in
`exclude` a list means "any of", so per-sequence lengths are nested there:
`seqlen_q: [[128, 0, 1, 777]]`. A field is swept by at most one of axes and the zip groups.
YAML anchors and merge keys (`<<: *base`) work, e.g. to share fields between cases.

Expansion (`Sweep.expand`): the product of the axes and zip groups over the defaults, minus the
excluded points, then the cases, in that order. With neither axes nor zip, the defaults alone
are one point unless there are cases. A product point that is not a valid Problem is kept as a
skipped point with the reason; an invalid case is an error (it was asked for explicitly).
Points with the same id (`Problem.key()`) collapse into the first one, which notes the others.
The product is capped at MAX_POINTS.

Errors (unknown keys, wrong types, bad masks, unequal zip lists, YAML syntax, a missing or empty
file) raise `UserError` naming FILE:LINE, with a "did you mean" for misspelled keys and values.
YAML follows the 1.2 core schema: only true/false are booleans (`mode: off` stays a string) and
`1e-3` is a number.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .package_data import sweeps_dir
from . import binary_spec, dtypes, yaml_lines
from .binary_spec import BinarySpec
from .errors import UserError
from .masks import MaskError, parse_mask
from .problem import (FAMILIES, KV_LAYOUTS, MODES, PAGE_ORDERS, PAGE_TABLES, PROBLEM_FIELDS, ROTARY_STYLES, Problem, ProblemError,
                      normalise_field)
from .timing import GRAPH_MODES, MeasureSettings
from .yaml_lines import LineDict, LineList

TOP_LEVEL_KEYS = ("name", "description", "defaults", "axes", "zip", "cases", "exclude", "providers",
                  "measure", "validate", "seed", "binaries", "ck")
VALIDATE_MODES = ("full", "sampled", "auto", "off")
DEFAULT_PROVIDERS = ("fmha",)
MAX_POINTS = 100_000  # a product larger than this is a typo, and would take the dry run forever
PACKAGED_DEFAULT = "quick"

_FIELD_TYPES = typing.get_type_hints(Problem)
_CHOICES = {"family": FAMILIES, "mode": MODES, "dtype": dtypes.DTYPES, "page_table": PAGE_TABLES,
            "kv_layout": KV_LAYOUTS, "rotary_style": ROTARY_STYLES, "page_order": PAGE_ORDERS}
_TRUNCATED_MASK = re.compile(r"^(?:[tb]|window):-?\d+$")
_LIST_OF_FIELDS = "a list of mappings of problem fields"


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ValidateSettings:
    mode: str = "sampled"            # full | sampled (`rows` query rows per head) | auto (full when small) | off
    rows: int = 64
    seed: int = 0                    # which rows `sampled` checks


def _measure_problem(m: MeasureSettings) -> Optional[tuple[str, str]]:
    """(setting, message) for the first impossible measure setting, or None."""
    if m.warmup < 0:
        return "warmup", f"must be >= 0, got {m.warmup}"
    if m.min_samples < 1:
        return "min_samples", f"must be >= 1, got {m.min_samples}"
    if m.max_samples < m.min_samples:
        return "max_samples", f"must be >= min_samples ({m.min_samples}), got {m.max_samples}"
    if not 0 < m.max_noise < math.inf:
        return "max_noise", f"must be > 0, got {m.max_noise}"
    if not 0 < m.time_budget_s < math.inf:
        return "time_budget_s", f"must be > 0, got {m.time_budget_s}"
    if m.graphs not in GRAPH_MODES:
        return "graphs", f"unknown mode {m.graphs!r}; one of {', '.join(GRAPH_MODES)}"
    if m.rotate_bytes < 0:
        return "rotate_bytes", f"must be >= 0 (0: twice the L2), got {m.rotate_bytes}"
    return None


def _validate_problem(v: ValidateSettings) -> Optional[tuple[str, str]]:
    if v.mode not in VALIDATE_MODES:
        return "mode", f"unknown mode {v.mode!r}; one of {', '.join(VALIDATE_MODES)}"
    if v.rows < 1:
        return "rows", f"must be >= 1, got {v.rows}"
    return None


@dataclass(frozen=True)
class SweepOptions:
    """What the command line adds to a sweep; None means "the sweep's own setting"."""
    providers: Optional[str] = None  # comma-separated, as typed
    device: int = 0
    validate: Optional[str] = None
    run_id: Optional[str] = None
    results_dir: Optional[Path] = None  # the command fills in config.results_dir()
    kernel: Optional[str] = None     # run only this kernel instance of provider fmha
    all_instances: bool = False      # add a provider fmha:<tile> per candidate instance of each point
    ck_binary: Optional[str] = None  # --ck-binary
    seed: Optional[int] = None
    filters: tuple[str, ...] = ()
    limit: Optional[int] = None
    argv: tuple[str, ...] = ()
    devices: Optional[str] = None    # --devices: "0,1", "all"; None = --device alone
    shard: Optional[str] = None      # --shard i/N
    timeout: Optional[float] = None  # seconds a provider may run on one point before its worker is killed
    command: str = "sweep"           # the command that runs (what a resume hint names)
    worker_factories: tuple = ()     # (("backend_factory", "module:function"), ...): tests' CPU stand-ins

    def device_list(self) -> list[int]:
        """The GPU ordinals to run on; [] means every GPU of the machine (--devices all)."""
        if self.devices is None:
            return [self.device]
        if self.devices.strip() == "all":
            return []
        return parse_devices(self.devices)

    def to_json(self) -> dict:
        """What a resumed run needs to select the same points with the same providers."""
        return {"providers": self.providers, "validate": self.validate, "kernel": self.kernel,
                "all_instances": self.all_instances, "ck_binary": self.ck_binary, "seed": self.seed,
                "filters": list(self.filters), "limit": self.limit, "shard": self.shard,
                "devices": self.devices, "device": self.device, "timeout": self.timeout, "command": self.command}


def parse_devices(text: str) -> list[int]:
    """`--devices 0,1,3` as a list of distinct ordinals (UserError naming the flag otherwise)."""
    parts = [part.strip() for part in text.split(",")]
    if not parts or not all(part.isascii() and part.isdigit() for part in parts):
        raise UserError(f"{text!r}: give GPU indices like 0,1 or 'all'", where="--devices")
    devices = [int(part) for part in parts]
    if len(set(devices)) != len(devices):
        raise UserError(f"{text!r}: a GPU is listed twice", where="--devices")
    return devices


# ----------------------------------------------------------------------------- points and sweeps
@dataclass(frozen=True)
class Point:
    id: str                          # Problem.key()
    name: str                        # Problem.name()
    fields: dict                     # what the sweep said: defaults + axes/zip values, or defaults + case
    resolved: dict                   # every Problem field, normalised (aliases resolved, derived values)
    problem: Optional[Problem]       # None when skipped
    skip_reason: Optional[str]
    source: str                      # "axes" (product of axes and zip) or "cases[i]"
    duplicates: tuple[str, ...] = () # sources of later points with this id, collapsed into this one


@dataclass(frozen=True)
class Expansion:
    points: list
    excluded: tuple[int, ...]        # product points dropped by each exclude rule


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    path: str
    sha256: str
    defaults: dict
    axes: dict                       # field -> values
    zip: list                        # groups: field -> values, equal lengths
    cases: list                      # field dicts (LineDicts: they remember their lines)
    exclude: list                    # field -> values (any of)
    providers: tuple[str, ...]
    measure: MeasureSettings
    validate: ValidateSettings
    seed: int
    binaries: dict                   # name -> BinarySpec
    ck_binary: Optional[str]         # joined to the sweep file's directory when relative
    raw: dict = field(repr=False)

    def expand(self) -> list:
        """The sweep's points in a stable order (see the module docstring)."""
        return self.expansion().points

    def expansion(self) -> Expansion:
        points: dict[str, Point] = {}
        excluded = [0] * len(self.exclude)

        def add(point: Point):
            first = points.get(point.id)
            if first is None:
                points[point.id] = point
            else:
                points[point.id] = dataclasses.replace(first, duplicates=first.duplicates + (point.source,))

        rules = [{name: [_normalise(name, v) for v in values] for name, values in rule.items()}
                 for rule in self.exclude]
        for fields in self._product():
            point = _make_point(fields, "axes")
            rule = next((i for i, r in enumerate(rules) if _matches_rule(point.resolved, r)), None)
            if rule is None:
                add(point)
            else:
                excluded[rule] += 1
        for index, case in enumerate(self.cases):
            add(_make_point({**self.defaults, **case}, f"cases[{index}]"))  # valid: the loader checked
        return Expansion(list(points.values()), tuple(excluded))

    def _product(self):
        dims = [[{name: value} for value in values] for name, values in self.axes.items()]
        dims += [[dict(zip(group, values)) for values in zip(*group.values())] for group in self.zip]
        if not dims and self.cases:
            return
        for combo in itertools.product(*dims):
            fields = dict(self.defaults)
            for part in combo:
                fields.update(part)
            yield fields


def _make_point(fields: dict, source: str) -> Point:
    """The point; an invalid problem makes a skipped point that says why."""
    built = Problem(**fields)  # normalises; the loader already checked every value's type
    try:
        problem, reason = built.validate(), None
    except ProblemError as e:
        problem, reason = None, str(e)
    return Point(built.key(), built.name(), fields, built.all_fields(), problem, reason, source)


def _normalise(name: str, value):
    """A field value as Problem.all_fields() reports it, for comparisons."""
    if name == "mask":
        return parse_mask(str(value)).canonical()
    return list(value) if isinstance(value, (list, tuple)) else value


def _matches_rule(resolved: dict, rule: dict) -> bool:
    return all(resolved[name] in values for name, values in rule.items())


# ----------------------------------------------------------------------------- loading
def load_sweep(path) -> Sweep:
    """Read and check a sweep file. Raises UserError naming FILE:LINE."""
    path = Path(path) if isinstance(path, str) else path
    where = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError("no such sweep file", where=where) from None
    except OSError as e:
        raise UserError(f"cannot read the sweep file: {e.strerror or e}", where=where) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"not UTF-8 text ({e.reason} at byte {e.start})", where=f"{where}:1") from None
    raw = yaml_lines.load(text, where)
    if raw is None:
        raise UserError("the sweep file is empty; see `fmha-bench sweep --help` for the format", where=f"{where}:1")
    if not isinstance(raw, LineDict):
        raise UserError(f"a sweep file is a mapping of {', '.join(TOP_LEVEL_KEYS)}; got {_kind(raw)}",
                        where=f"{where}:{_line_of(raw)}")
    return _Reader(where, raw).sweep(hashlib.sha256(data).hexdigest(), Path(path.name).stem)


class _Reader:
    """Checks one parsed file section by section; every error names the line it came from."""

    def __init__(self, where: str, raw: LineDict):
        self.where = where
        self.raw = raw

    def fail(self, message: str, line: int):
        raise UserError(message, where=f"{self.where}:{line}")

    def sweep(self, sha256: str, stem: str) -> Sweep:
        raw = self.raw
        for key in raw:
            if key not in TOP_LEVEL_KEYS:
                known = " (keys: " + ", ".join(TOP_LEVEL_KEYS) + ")"
                self.fail(f"unknown key {key!r}{_did_you_mean(key, TOP_LEVEL_KEYS, known)}", raw.key_line(key))
        name = self.optional(raw, "name", str, "a string") or stem
        description = self.optional(raw, "description", str, "a string") or ""
        defaults = self.mapping("defaults", self.value)
        axes = self.mapping("axes", self.values)
        zip_groups = self.zip_groups(set(axes))
        self.check_size(axes, zip_groups)
        cases = [self.fields(f"cases[{i}]", case, line, self.value)
                 for i, case, line in self.items("cases", LineDict, "a mapping of problem fields", _LIST_OF_FIELDS)]
        self.check_cases(defaults, cases)
        exclude = [self.exclude_rule(i, rule, line)
                   for i, rule, line in self.items("exclude", LineDict, "a mapping of problem fields", _LIST_OF_FIELDS)]
        return Sweep(
            name=name, description=description, path=self.where, sha256=sha256,
            defaults=defaults, axes=axes, zip=zip_groups, cases=cases, exclude=exclude,
            providers=self.providers(),
            measure=self.settings("measure", MeasureSettings, _measure_problem),
            validate=self.settings("validate", ValidateSettings, _validate_problem),
            seed=self.optional(raw, "seed", int, "an integer") or 0,
            binaries=self.binaries(),
            ck_binary=self.ck_binary(),
            raw=raw,
        )

    # -- generic shapes
    def optional(self, mapping: LineDict, key: str, kind: type, expected: str, section: str = ""):
        value = mapping.get(key)
        if value is None:
            return None
        if not _is_instance(value, kind):
            label = f"{section}: {key}" if section else key
            self.fail(f"{label}: expected {expected}, got {_show(value)}", mapping.value_line(key))
        return value

    def items(self, key: str, kind: type, expected: str, expected_list: str):
        """(index, item, line) of a top-level list whose items must be `kind`."""
        items = self.optional(self.raw, key, LineList, expected_list) or []
        for index, item in enumerate(items):
            line = items.item_line(index)
            if not _is_instance(item, kind):
                self.fail(f"{key}[{index}]: expected {expected}, got {_show(item)}", line)
            yield index, item, line

    def mapping(self, key: str, check_value) -> dict:
        section = self.optional(self.raw, key, LineDict, "a mapping of problem fields")
        if section is None:
            return {}
        return self.fields(key, section, section.line, check_value)

    def fields(self, label: str, section: LineDict, line: int, check_value) -> LineDict:
        """Check a mapping of Problem fields; returns a LineDict of checked values."""
        out = LineDict(line)
        for name, value in section.items():
            key_line = section.key_line(name)
            if name not in PROBLEM_FIELDS:
                known = " (fields: " + ", ".join(PROBLEM_FIELDS) + ")"
                self.fail(f"{label}: unknown problem field {name!r}{_did_you_mean(name, PROBLEM_FIELDS, known)}",
                          key_line)
            out[name] = check_value(label, name, value, section.value_line(name))
            out.key_lines[name] = key_line
            out.value_lines[name] = section.value_line(name)
        return out

    def value(self, label: str, name: str, value, line: int):
        try:
            return check_field(name, value)
        except ValueError as e:
            self.fail(f"{label}: {e}", line)

    def values(self, label: str, name: str, values, line: int) -> list:
        """A non-empty list of values of one field (an axis, a zip list, an exclude alternative)."""
        if not isinstance(values, LineList):
            self.fail(f"{label}: {name}: expected a list of values, got {_show(values)} "
                      f"(write [{_show(values)}], or set it under defaults)", line)
        if not values:
            self.fail(f"{label}: {name}: the list is empty, which would make no points", line)
        return [self.value(label, name, v, values.item_line(i)) for i, v in enumerate(values)]

    # -- sections
    def zip_groups(self, axis_names: set) -> list:
        seen = {name: "axes" for name in axis_names}
        groups = []
        for index, group, line in self.items("zip", LineDict, "a mapping of field: [values]",
                                             "a list of groups like - {batch: [16, 4], seqlen_q: [1024, 4096]}"):
            label = f"zip[{index}]"
            if not group:
                self.fail(f"{label}: an empty group; give it fields with lists of equal length", line)
            checked = self.fields(label, group, line, self.values)
            first = next(iter(checked))
            for name, values in checked.items():
                if name in seen:
                    self.fail(f"{label}: {name} is already swept in {seen[name]}", group.key_line(name))
                seen[name] = label
                if len(values) != len(checked[first]):
                    self.fail(f"{label}: {name} has {len(values)} values but {first} has {len(checked[first])}; "
                              "the lists of one zip group advance together and need equal lengths",
                              group.value_line(name))
            groups.append(checked)
        return groups

    def check_size(self, axes: dict, zip_groups: list):
        total = math.prod(len(values) for values in axes.values()) * math.prod(
            len(next(iter(group.values()))) for group in zip_groups)
        if total > MAX_POINTS:
            self.fail(f"axes and zip expand to {total} points (limit {MAX_POINTS}); split the sweep or use zip",
                      self.raw.key_line("axes" if axes else "zip"))

    def check_cases(self, defaults: dict, cases: list):
        """A case was asked for explicitly, so an invalid one is an error, not a skipped point."""
        for index, case in enumerate(cases):
            try:
                Problem(**{**defaults, **case}).validate()
            except ProblemError as e:
                origin = " (value from defaults)" if e.field in defaults and e.field not in case else ""
                self.fail(f"cases[{index}]: {e}{origin}", case.key_line(e.field))

    def exclude_rule(self, index: int, rule: LineDict, line: int) -> LineDict:
        label = f"exclude[{index}]"
        if not rule:
            self.fail(f"{label}: an empty rule would drop every point", line)
        return self.fields(label, rule, line, self.any_of)

    def any_of(self, label: str, name: str, value, line: int) -> list:
        """One value or a list of alternatives (exclude rules, a binary's supports filter)."""
        if isinstance(value, LineList):
            return self.values(label, name, value, line)
        return [self.value(label, name, value, line)]

    def providers(self) -> tuple[str, ...]:
        providers = self.optional(self.raw, "providers", LineList, "a list of provider names")
        if providers is None:
            return DEFAULT_PROVIDERS
        for index, name in enumerate(providers):
            if not isinstance(name, str) or not name.strip():
                self.fail(f"providers[{index}]: expected a provider name, got {_show(name)}", providers.item_line(index))
        if not providers:
            self.fail("providers: the list is empty; leave the key out to use the default (fmha)",
                      self.raw.value_line("providers"))
        return tuple(providers)

    def ck_binary(self) -> Optional[str]:
        ck = self.optional(self.raw, "ck", LineDict, "a mapping like {binary: PATH}")
        if ck is None:
            return None
        for key in ck:
            if key != "binary":
                self.fail(f"ck: unknown key {key!r}; the only key is 'binary'", ck.key_line(key))
        binary = self.optional(ck, "binary", str, "a path", section="ck")
        return str(self.sweep_dir() / Path(binary).expanduser()) if binary else None

    def sweep_dir(self) -> Path:
        """Relative paths in a sweep file are relative to its directory."""
        return Path(self.where).parent.absolute()

    # -- binaries (the format is in binary_spec.py)
    def binaries(self) -> dict:
        section = self.optional(self.raw, "binaries", LineDict, "a mapping of NAME: {command: [...], time: REGEX}")
        return {name: self.binary(name, decl, section.key_line(name)) for name, decl in (section or {}).items()}

    def binary(self, name, decl, line: int) -> BinarySpec:
        if not isinstance(name, str) or not binary_spec.NAME.match(name):
            self.fail(f"binaries: {_show(name)}: a name is letters, digits, '_', '.' and '-' "
                      "(it becomes provider binary:NAME)", line)
        label = f"binaries: {name}"
        if not isinstance(decl, LineDict):
            self.fail(f"{label}: expected a mapping with command: [...] and time: REGEX, got {_show(decl)}", line)
        for key in decl:
            if key not in binary_spec.BINARY_KEYS:
                known = " (keys: " + ", ".join(binary_spec.BINARY_KEYS) + ")"
                self.fail(f"{label}: unknown key {key!r}{_did_you_mean(key, binary_spec.BINARY_KEYS, known)}",
                          decl.key_line(key))
        for key in ("command", "time"):
            if key not in decl:
                self.fail(f"{label}: missing {key}", line)
        unit = self.optional(decl, "time_unit", str, "a unit", section=label) or "ms"
        if unit not in binary_spec.TIME_UNITS:
            self.fail(f"{label}: time_unit: unknown unit {unit!r}; one of {', '.join(binary_spec.TIME_UNITS)}",
                      decl.value_line("time_unit"))
        timeout_s = self.optional(decl, "timeout_s", float, "a number of seconds", section=label)
        if timeout_s is not None and not 0 < timeout_s < math.inf:
            self.fail(f"{label}: timeout_s: must be > 0, got {_show(timeout_s)}", decl.value_line("timeout_s"))
        cwd = self.optional(decl, "cwd", str, "a directory", section=label)
        supports = self.optional(decl, "supports", LineDict, "a mapping of problem fields", section=label)
        return BinarySpec(
            name=name, command=self.command(label, decl), time=self.pattern(label, decl, "time"), time_unit=unit,
            valid=self.pattern(label, decl, "valid"), valid_values=self.valid_values(label, decl),
            tflops=self.pattern(label, decl, "tflops"), kernel=self.pattern(label, decl, "kernel"),
            exit_codes=self.exit_codes(label, decl),
            timeout_s=float(timeout_s) if timeout_s is not None else binary_spec.DEFAULT_TIMEOUT_S,
            supports=self.supports(label, supports) if supports else (),
            cwd=str(self.sweep_dir() / Path(cwd).expanduser()) if cwd else None, base_dir=str(self.sweep_dir()),
            description=self.optional(decl, "description", str, "a string", section=label) or "",
            where=f"{self.where}:{line}")

    def command(self, label: str, decl: LineDict) -> tuple:
        command = self.optional(decl, "command", LineList, 'an argv list like [./tool, "--b={batch}"]', section=label)
        if not command:
            self.fail(f"{label}: command: the list is empty; give the program and its arguments", decl.value_line("command"))
        sample = binary_spec.placeholder_values(Problem().validate(), warmup=1, repeat=1, seed=0)
        for index, template in enumerate(command):
            line = command.item_line(index)
            where = f"{label}: command[{index}]"
            if not isinstance(template, str):
                self.fail(f"{where}: expected a string, got {_show(template)} (quote it)", line)
            try:
                names = binary_spec.template_fields(template)
            except ValueError as e:
                self.fail(f"{where}: {e} (write {{{{ and }}}} for literal braces)", line)
            for unknown in (n for n in names if n not in binary_spec.PLACEHOLDERS):
                known = " (placeholders: " + ", ".join(binary_spec.PLACEHOLDERS) + ")"
                self.fail(f"{where}: unknown placeholder {{{unknown}}}"
                          f"{_did_you_mean(unknown, binary_spec.PLACEHOLDERS, known)}", line)
            try:
                template.format(**sample)
            except (ValueError, TypeError) as e:  # a format spec that does not fit the value, e.g. {batch:.2q}
                self.fail(f"{where}: {e}", line)
        return tuple(command)

    def pattern(self, label: str, decl: LineDict, key: str) -> Optional[re.Pattern]:
        text = self.optional(decl, key, str, "a regular expression (quote it)", section=label)
        if text is None:
            return None
        line = decl.value_line(key)
        try:
            compiled = re.compile(text, re.MULTILINE)
        except re.error as e:
            self.fail(f"{label}: {key}: bad regular expression: {e}", line)
        if compiled.groups < 1:
            self.fail(f"{label}: {key}: the regular expression needs a group, e.g. '{key}: ([0-9.]+)'; "
                      "group 1 is the value", line)
        return compiled

    def valid_values(self, label: str, decl: LineDict) -> tuple:
        values = self.optional(decl, "valid_values", LineList, "a list of words", section=label)
        if values is None:
            return binary_spec.DEFAULT_VALID_VALUES
        if not values:
            self.fail(f"{label}: valid_values: the list is empty, so no run could pass", decl.value_line("valid_values"))
        for index, value in enumerate(values):
            if not isinstance(value, (str, int, bool)):
                self.fail(f"{label}: valid_values[{index}]: expected a word, got {_show(value)}", values.item_line(index))
        return tuple(str(v).lower() for v in values)  # `true` and `1` load as bool and int

    def exit_codes(self, label: str, decl: LineDict) -> tuple:
        codes = self.optional(decl, "exit_codes", LineList, "a list of integers", section=label)
        if codes is None:
            return (0,)
        if not codes:
            self.fail(f"{label}: exit_codes: the list is empty, so no run could pass", decl.value_line("exit_codes"))
        for index, code in enumerate(codes):
            if not _is_instance(code, int):
                self.fail(f"{label}: exit_codes[{index}]: expected an integer, got {_show(code)}", codes.item_line(index))
        return tuple(codes)

    def supports(self, label: str, section: LineDict) -> tuple:
        checked = self.fields(f"{label}: supports", section, section.line, self.any_of)
        return tuple((name, tuple(_normalise(name, v) for v in values)) for name, values in checked.items())

    def settings(self, key: str, cls, find_problem):
        section = self.optional(self.raw, key, LineDict, "a mapping")
        if section is None:
            return cls()
        types = typing.get_type_hints(cls)
        names = tuple(f.name for f in dataclasses.fields(cls))
        for name, value in section.items():
            if name not in names:
                self.fail(f"{key}: unknown setting {name!r}{_did_you_mean(name, names, ' (settings: ' + ', '.join(names) + ')')}",
                          section.key_line(name))
            if not _matches_type(value, types[name]):
                self.fail(f"{key}: {name}: expected {_describe_type(types[name])}, got {_show(value)}",
                          section.value_line(name))
        settings = cls(**section)
        problem = find_problem(settings)
        if problem:
            self.fail(f"{key}: {problem[0]}: {problem[1]}", section.value_line(problem[0]))
        return settings


# ----------------------------------------------------------------------------- one field value
def check_field(name: str, value):
    """Check one Problem field value's type and spelling; returns it ready for Problem(...).
    Raises ValueError with a message naming the field. Combinations are Problem.validate's job."""
    if name == "mask":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f"mask: expected a mask string, got {_show(value)} "
                             "(quote masks that contain a comma inside {...} or [...])")
        try:
            parse_mask(value)
        except MaskError as e:
            hint = (" (quote masks that contain a comma inside {...} or [...])"
                    if _TRUNCATED_MASK.match(str(value)) else "")
            raise ValueError(f"mask: {e}{hint}") from None
        return str(value)
    hint = _FIELD_TYPES[name]
    if not _matches_type(value, hint):
        raise ValueError(f"{name}: expected {_describe_type(hint)}, got {_show(value)}")
    choices = _CHOICES.get(name)
    if choices is not None and value not in choices:
        raise ValueError(f"{name}: unknown value {value!r}; one of {', '.join(choices)}{_did_you_mean(value, choices, '')}")
    normalise_field(name, value)  # what the YAML types let through but Problem cannot hold (a float overflow)
    return value


def _matches_type(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin is Union:
        return any(_matches_type(value, arg) for arg in typing.get_args(hint))
    if origin is tuple:
        return isinstance(value, list) and all(_matches_type(v, typing.get_args(hint)[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def _describe_type(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is Union:
        return " or ".join(_describe_type(arg) for arg in typing.get_args(hint))
    if origin is tuple:
        return "a list of integers"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}[hint]


def _is_instance(value, kind: type) -> bool:
    return _matches_type(value, kind) if kind in (int, float, bool) else isinstance(value, kind)


def _did_you_mean(word, known, otherwise: str) -> str:
    close = difflib.get_close_matches(str(word).lower(), list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else otherwise


def _kind(value) -> str:
    return {LineList: "a list", LineDict: "a mapping"}.get(type(value), f"the scalar {_show(value)}")


def _show(value) -> str:
    text = repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _line_of(value) -> int:
    return getattr(value, "line", 1)


# ----------------------------------------------------------------------------- packaged sweeps
def packaged_sweeps_dir():
    """The directory of the sweeps shipped with the package."""
    return sweeps_dir()


def packaged_sweeps() -> dict:
    """name -> path of every packaged sweep, sorted by name."""
    return {entry.name[:-len(".yaml")]: entry for entry in sorted(packaged_sweeps_dir().iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".yaml")}


def find_sweep(arg: Optional[str]):
    """A sweep file from the command line: a path, or the name of a packaged sweep
    (`prefill` or `prefill.yaml`); None means the packaged quick sweep."""
    packaged = packaged_sweeps()
    if arg is None:
        return packaged[PACKAGED_DEFAULT]
    path = Path(arg)
    if os.path.exists(path) or path.parent != Path("."):  # os.path: False, not OSError, for a name too long
        return path
    name = arg[:-len(".yaml")] if arg.endswith(".yaml") else arg
    if name in packaged:
        return packaged[name]
    raise UserError(f"no such file, and no packaged sweep of that name (packaged: {', '.join(packaged)})", where=arg)


# ----------------------------------------------------------------------------- selecting points
def select_points(points: list, filters=(), limit: Optional[int] = None) -> list:
    """Points matching every filter, then the first `limit` of them. A filter is `field=value`
    (compared after normalisation: `mask=causal` matches `b`) or a case-insensitive substring
    of the point's name, id or source."""
    tests = [_parse_filter(text) for text in filters]
    chosen = [p for p in points if all(test(p) for test in tests)]
    return chosen[:limit] if limit is not None else chosen


def _parse_filter(text: str):
    name, sep, raw_value = text.partition("=")
    name = name.strip()
    if not sep:
        needle = text.lower()
        return lambda p: any(needle in s.lower() for s in (p.name, p.id, p.source))
    if name not in PROBLEM_FIELDS:
        raise UserError(f"unknown problem field {name!r}{_did_you_mean(name, PROBLEM_FIELDS, '')}", where="--filter")
    value = yaml_lines.load(raw_value, "--filter") if raw_value.strip() else None
    try:
        wanted = _normalise(name, check_field(name, value))
    except ValueError as e:
        raise UserError(str(e), where="--filter") from None
    return lambda p: p.resolved[name] == wanted
