import hashlib
import json
import math
import re
import subprocess

import pandas as pd
import pytest

from fmha_bench import Problem, __version__, store
from fmha_bench.errors import UserError
from fmha_bench.schema import SCHEMA_VERSION, Result
from fmha_bench.store import RunStore, find_run, load_run

PROBLEMS = [Problem(batch=2, seqlen_q=256, nhead_q=4, hdim_q=64, mask="b"),
            Problem(mode="group", batch=2, seqlen_q=(17, 0), nhead_q=4, hdim_q=64)]


def result(problem=PROBLEMS[0], status="ok", time_s=1e-3, **fields):
    return Result(point_id=problem.key(), name=problem.name(), problem=problem.all_fields(), status=status,
                  time_s_median=time_s if status == "ok" else None, **fields)


@pytest.fixture
def outside_git(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return work


def test_default_run_id_is_a_utc_timestamp_plus_a_random_suffix(tmp_path):
    run = RunStore.create(tmp_path, meta={})
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run.run_id)
    assert run.path == tmp_path / run.run_id


def test_create_refuses_to_overwrite_an_existing_run(tmp_path):
    RunStore.create(tmp_path, run_id="r1", meta={})
    with pytest.raises(UserError, match="already exists"):
        RunStore.create(tmp_path, run_id="r1", meta={})


@pytest.mark.parametrize("run_id", ["../escape", "a/b", ".hidden"])
def test_create_rejects_run_ids_that_are_not_plain_names(tmp_path, run_id):
    with pytest.raises(UserError, match="run id"):
        RunStore.create(tmp_path, run_id=run_id, meta={})


def test_meta_records_tool_version_sweep_hash_start_time_and_caller_fields(tmp_path, outside_git):
    sweep = tmp_path / "smoke.yaml"
    sweep.write_text("axes: {}\n")
    device = {"name": "NVIDIA H100 80GB HBM3", "arch": "sm_90"}
    run = RunStore.create(tmp_path / "results", run_id="r1",
                          meta={"argv": ["fmha-bench", "sweep"], "sweep_file": sweep, "device": device})
    meta = json.loads((run.path / "meta.json").read_text())
    assert meta["tool_version"] == __version__
    assert meta["schema"] == SCHEMA_VERSION
    assert meta["sweep_file"] == str(sweep)
    assert meta["sweep_sha256"] == hashlib.sha256(sweep.read_bytes()).hexdigest()
    assert meta["device"] == device
    assert meta["argv"] == ["fmha-bench", "sweep"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["started_utc"])
    assert meta["git_sha"] is None and meta["git_dirty"] is None


def test_meta_records_the_git_commit_and_dirty_flag_of_the_cwd_repo(tmp_path, outside_git):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=outside_git,
                              check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    (outside_git / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-q", "-m", "c")
    clean = RunStore.create(tmp_path / "results", run_id="clean", meta={}).meta
    (outside_git / "f.txt").write_text("b")
    dirty = RunStore.create(tmp_path / "results", run_id="dirty", meta={}).meta
    assert clean["git_sha"] == git("rev-parse", "HEAD")
    assert (clean["git_dirty"], dirty["git_dirty"]) == (False, True)


def test_appended_rows_are_readable_before_finish(tmp_path):
    run = RunStore.create(tmp_path, run_id="r1", meta={})
    rows = [result(PROBLEMS[0]), result(PROBLEMS[1], status="skipped", reason="no kernel")]
    for row in rows:
        run.append(row)
    assert load_run(run.path).rows == [row.to_json() for row in rows]


def test_finish_records_end_time_and_counts_per_status(tmp_path):
    run = RunStore.create(tmp_path, run_id="r1", meta={})
    for status in ("ok", "ok", "mismatch", "skipped"):
        run.append(result(status=status))
    run.finish()
    meta = load_run(run.path).meta
    assert meta["counts"] == {"ok": 2, "skipped": 1, "failed": 0, "mismatch": 1, "crashed": 0, "timeout": 0}
    assert meta["rows"] == 4
    assert meta["finished_utc"] >= meta["started_utc"]


def test_summary_csv_holds_every_row_flattened(tmp_path):
    run = RunStore.create(tmp_path, run_id="r1", meta={})
    rows = [result(PROBLEMS[0], time_s=1.5e-3), result(PROBLEMS[1], time_s=2.5e-4),
            result(PROBLEMS[1], status="failed", reason="launch error")]
    for row in rows:
        run.append(row)
    run.finish()
    summary = pd.read_csv(run.path / "summary.csv")
    assert list(summary["point_id"]) == [row.point_id for row in rows]
    assert list(summary["status"]) == ["ok", "ok", "failed"]
    assert list(summary["reason"].fillna("")) == ["", "", "launch error"]
    assert list(summary["time_s_median"][:2]) == [1.5e-3, 2.5e-4]
    assert list(summary["problem.seqlen_q"]) == ["256", "[17, 0]", "[17, 0]"]
    assert list(summary.columns) == list(load_run(run.path).frame().columns)


def test_summary_csv_is_rebuilt_every_few_rows_while_running(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "SUMMARY_EVERY", 2)
    run = RunStore.create(tmp_path, run_id="r1", meta={})
    run.append(result())
    assert not (run.path / "summary.csv").exists()
    run.append(result())
    assert len(pd.read_csv(run.path / "summary.csv")) == 2


def test_nan_and_infinity_survive_the_round_trip(tmp_path):
    run = RunStore.create(tmp_path, run_id="r1", meta={})
    run.append(result(status="mismatch", val_max_abs=math.nan, val_lse_max_abs=-math.inf))
    row = load_run(run.path).rows[0]
    assert math.isnan(row["val_max_abs"]) and row["val_lse_max_abs"] == -math.inf


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path):
    run = RunStore.create(tmp_path, run_id="r1", meta={})
    run.append(result())
    run.append(result())
    with open(run.path / "results.jsonl", "a") as rows:
        rows.write(json.dumps(result().to_json())[:70])  # the crash cut this write short
    loaded = load_run(run.path)
    assert len(loaded.rows) == 2
    assert len(loaded.warnings) == 1 and "results.jsonl:3" in loaded.warnings[0]


def test_a_bad_line_before_the_end_is_a_user_error_naming_file_and_line(tmp_path):
    run = RunStore.create(tmp_path, run_id="r1", meta={})
    run.append(result())
    with open(run.path / "results.jsonl", "a") as rows:
        rows.write("{not json\n")
    run.append(result())
    with pytest.raises(UserError, match=r"results\.jsonl:2"):
        load_run(run.path)


def test_a_directory_that_is_not_a_run_is_a_user_error_naming_it(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(UserError, match=re.escape(str(tmp_path)) + ".*not a run directory"):
        load_run(tmp_path)


def test_rows_from_a_newer_schema_are_a_user_error(tmp_path):
    run = RunStore.create(tmp_path, run_id="r1", meta={})
    newer = result()
    newer.schema = SCHEMA_VERSION + 1
    run.append(newer)
    with pytest.raises(UserError, match=r"results\.jsonl:1.*upgrade fmha-bench"):
        load_run(run.path)


def test_meta_from_a_newer_schema_is_a_user_error(tmp_path):
    run = RunStore.create(tmp_path, run_id="r1", meta={})
    meta = json.loads((run.path / "meta.json").read_text())
    (run.path / "meta.json").write_text(json.dumps({**meta, "schema": SCHEMA_VERSION + 1}))
    with pytest.raises(UserError, match=r"meta\.json.*schema"):
        load_run(run.path)


def test_find_run_accepts_a_path_or_a_run_id_under_the_results_dir(tmp_path, monkeypatch):
    RunStore.create(tmp_path / "results", run_id="r1", meta={})
    monkeypatch.chdir(tmp_path)
    assert find_run("r1", tmp_path / "results") == tmp_path / "results" / "r1"
    assert find_run("results/r1", tmp_path / "elsewhere").resolve() == (tmp_path / "results" / "r1").resolve()
