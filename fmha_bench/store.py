"""The run store: one directory per run under the results directory.

    results/<run-id>/meta.json      what ran where: tool version, git, argv, sweep file + sha256,
                                    device, driver, compilers, settings, start/end time, counts
    results/<run-id>/results.jsonl  one `schema.Result` per line, fsync'd as it is appended,
                                    so a crash loses nothing that finished (hyperfine's rule)
    results/<run-id>/summary.csv    the same rows flattened (problem fields as `problem.<name>`,
                                    lists as JSON), SI units; rebuilt from results.jsonl
    results/<run-id>/workers/       each sweep worker's stdout and stderr (what crashed rows quote)

A point's rows are written together, after its last provider: a point is complete when every
provider of the run has a row for it. `RunStore.reopen` (--resume) cuts a last line that a crash
left unfinished and drops the rows of an incomplete point, so the resumed run ends with exactly
the rows of an uninterrupted one.

JSON lines may hold NaN and +-Infinity (e.g. an LSE of -inf, a NaN error): Python's json reads
them back; strict JSON parsers do not.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from . import __version__
from .errors import UserError
from .schema import SCHEMA_VERSION, STATUSES, Result

META_FILE, ROWS_FILE, SUMMARY_FILE = "meta.json", "results.jsonl", "summary.csv"
SUMMARY_EVERY = 20          # rows between summary.csv rebuilds while a run is going
GIT_TIMEOUT_S = 5
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _iso(moment: _dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id(moment: _dt.datetime) -> str:
    """UTC timestamp plus 4 random hex digits, e.g. 20261121-183012-ab12: sorts by time and
    cannot collide between two runs started in the same second."""
    return f"{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _git_info(cwd: Path) -> dict:
    """Commit and dirty flag of the repository around `cwd`; nulls when there is none."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=True).stdout
    try:
        sha = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}
    return {"git_sha": sha, "git_dirty": dirty}


def _sha256(path) -> Optional[str]:
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    """Readers never see a half-written meta.json or summary.csv."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunStore:
    """Writes one run. Create with `RunStore.create`, `append` each Result, `finish` at the end."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.meta = meta
        self.counts = {status: 0 for status in STATUSES}
        self._rows = open(path / ROWS_FILE, "a", encoding="utf-8")
        self._written = 0
        self.dropped = 0    # rows of incomplete points that reopen() removed

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]

    @classmethod
    def create(cls, results_dir, run_id: Optional[str] = None, meta: Optional[dict] = None) -> "RunStore":
        """Make results_dir/<run_id>/ and write meta.json. `meta` from the caller holds argv,
        sweep_file, device, driver, compilers and settings (and anything else worth keeping);
        keys the caller gives are kept as given, the rest (tool version, git, sweep sha256,
        start time) are filled in here."""
        started = _utc_now()
        run_id = run_id or new_run_id(started)
        if not _RUN_ID.match(run_id):
            raise UserError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-' only")
        path = Path(results_dir) / run_id
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{path.parent}: cannot create the results directory ({e.strerror})") from None
        try:
            path.mkdir()  # not exist_ok: two runs must never share a directory
        except FileExistsError:
            raise UserError(f"{path}: run directory already exists; pick another run id") from None
        full = {"tool_version": __version__, "started_utc": _iso(started), "argv": list(sys.argv),
                "sweep_file": None, "device": None, "driver": None, "compilers": None, "settings": {}}
        full.update(_git_info(Path.cwd()))
        full.update(meta or {})
        if full["sweep_file"] is not None:
            full["sweep_file"] = str(full["sweep_file"])
        full.setdefault("sweep_sha256", _sha256(full["sweep_file"]))
        full.update(run_id=run_id, schema=SCHEMA_VERSION)
        store = cls(path, full)
        store._write_meta()
        return store

    @classmethod
    def reopen(cls, path) -> "RunStore":
        """An existing run, to go on with (--resume): the unfinished last line a crash may have
        left is cut, the rows of points that lack a provider's row are dropped (they run again)."""
        run = load_run(path)
        rows_path = Path(path) / ROWS_FILE
        providers = run.meta.get("providers")
        complete = _complete_points(run.rows, providers) if providers else set()
        keep = [row for row in run.rows if row.get("point_id") in complete]
        if len(keep) != len(run.rows) or run.warnings:
            _write_atomic(rows_path, "".join(_json_line(row) for row in keep))
        store = cls(Path(path), run.meta)
        for row in keep:
            store.counts[row.get("status")] = store.counts.get(row.get("status"), 0) + 1
        store.dropped = len(run.rows) - len(keep)
        return store

    def complete_point_ids(self) -> set:
        """Ids of the points that have a row for every provider of the run."""
        providers = self.meta.get("providers")
        rows, _ = _read_rows(self.path / ROWS_FILE)
        return _complete_points(rows, providers) if providers else set()

    def set_run_devices(self, device: dict, providers: list) -> None:
        """What the workers report once ready: the GPU and the run's providers (after
        --all-instances). A resumed run must get the same providers, or rows would not pair up."""
        known = self.meta.get("providers")
        if known is not None and list(known) != list(providers):
            raise UserError(f"{self.path}: the run has providers {', '.join(known)} but this machine gives "
                            f"{', '.join(providers)}; resume on the same kind of GPU", where="--resume")
        self.meta.setdefault("devices", [])
        if device not in self.meta["devices"]:
            self.meta["devices"].append(device)
        self.meta.update(device=self.meta.get("device") or device, providers=list(providers))
        self._write_meta()

    def record_resume(self, argv) -> None:
        self.meta.setdefault("resumed", []).append({"utc": _iso(_utc_now()), "argv": list(argv),
                                                    "rows_dropped": self.dropped})
        self._write_meta()

    def append(self, result: Result) -> None:
        """Write one row and force it to disk before returning."""
        self.append_rows([result])

    def append_rows(self, results: list) -> None:
        """Write a point's rows in one write and force them to disk before returning."""
        self._rows.write("".join(_json_line(r.to_json()) for r in results))
        self._rows.flush()
        os.fsync(self._rows.fileno())
        for result in results:
            self.counts[result.status] = self.counts.get(result.status, 0) + 1
        before, self._written = self._written, self._written + len(results)
        if before // SUMMARY_EVERY != self._written // SUMMARY_EVERY:
            self.write_summary()

    def load(self) -> "Run":
        return load_run(self.path)

    def write_summary(self) -> None:
        """Rebuild summary.csv from results.jsonl (the one source of truth)."""
        rows, _ = _read_rows(self.path / ROWS_FILE)
        _write_atomic(self.path / SUMMARY_FILE, rows_frame(rows).to_csv(index=False))

    def finish(self, complete: bool = True) -> None:
        """Close the rows file, rebuild summary.csv, record end time, counts per status and
        whether every point has its rows (False: interrupted, resumable)."""
        self._rows.close()
        self.write_summary()
        self.meta.update(finished_utc=_iso(_utc_now()), rows=sum(self.counts.values()), counts=dict(self.counts),
                         complete=complete)
        self._write_meta()

    def _write_meta(self) -> None:
        _write_atomic(self.path / META_FILE, json.dumps(self.meta, indent=2) + "\n")


def _json_line(row: dict) -> str:
    return json.dumps(row, separators=(",", ":")) + "\n"


def _complete_points(rows: list, providers: list) -> set:
    seen: dict = {}
    for row in rows:
        seen.setdefault(row.get("point_id"), set()).add(row.get("provider"))
    wanted = set(providers)
    return {point for point, have in seen.items() if wanted <= have}


@dataclass
class Run:
    """A run read back: its meta.json, its rows (results.jsonl dicts) and load warnings."""
    path: Path
    meta: dict
    rows: list
    warnings: list = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.meta.get("run_id") or self.path.name

    def frame(self) -> pd.DataFrame:
        return rows_frame(self.rows)


def find_run(name, results_dir) -> Path:
    """A run given by its path, or by its run id under `results_dir`."""
    path = Path(name)
    under_results = Path(results_dir) / name
    try:
        return under_results if not path.exists() and under_results.exists() else path
    except OSError as e:  # a name the file system cannot hold (too long, ...)
        raise UserError(f"{name}: cannot read this run ({e.strerror})") from None


def load_run(path) -> Run:
    path = Path(path)
    meta_path, rows_path = path / META_FILE, path / ROWS_FILE
    try:
        if not (meta_path.is_file() and rows_path.is_file()):
            raise UserError(f"{path}: not a run directory (a run holds {META_FILE} and {ROWS_FILE})")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path}: not valid JSON ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read this run ({e.strerror or e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path}: expected a JSON object")
    _check_schema(meta.get("schema", SCHEMA_VERSION), str(meta_path))
    rows, warnings = _read_rows(rows_path)
    return Run(path, meta, rows, warnings)


def _check_schema(version, where: str) -> None:
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise UserError(f"{where}: written with result schema {version}, this fmha-bench "
                        f"{__version__} reads schema <= {SCHEMA_VERSION}; upgrade fmha-bench")


def _read_rows(rows_path: Path) -> tuple[list, list]:
    """Parse results.jsonl. A last line cut short by a crash (no newline, not JSON) is skipped
    with a warning; a bad line anywhere else is a UserError naming file:line."""
    text = rows_path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows, warnings = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{rows_path}:{number}"
        try:
            row = json.loads(line)
        except ValueError:
            if number == len(lines):  # no newline after it: the write never completed
                warnings.append(f"{where}: skipped a truncated last line (the run was interrupted)")
                continue
            raise UserError(f"{where}: not a JSON result row") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: not a JSON result row")
        _check_schema(row.get("schema", SCHEMA_VERSION), where)
        rows.append(row)
    return rows, warnings


def csv_value(value):
    """Lists and dicts become JSON text so they fit one CSV cell."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def flatten_row(row: dict) -> dict:
    """One CSV-ready dict: problem fields become `problem.<name>`, lists become JSON text."""
    flat = {}
    for key, value in row.items():
        if key == "problem" and isinstance(value, dict):
            flat.update({f"problem.{name}": csv_value(v) for name, v in value.items()})
        else:
            flat[key] = csv_value(value)
    return flat


def rows_frame(rows: list) -> pd.DataFrame:
    return pd.DataFrame([flatten_row(row) for row in rows])
