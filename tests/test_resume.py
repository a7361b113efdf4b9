"""Interrupted runs lose nothing: Ctrl-C finishes the points in flight and says how to resume;
after Ctrl-C, SIGKILL at a random moment or a line cut short by a crash, `--resume` ends with
exactly the rows of an uninterrupted run. The real command runs in a subprocess, its workers on
the CPU stand-in GPU (fake_gpu_cli.py)."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmha_bench.store import ROWS_FILE, load_run

DRIVER = Path(__file__).with_name("fake_gpu_cli.py")
SWEEP = """\
name: resumable
defaults: {family: fwd, dtype: fp16, nhead_q: 2, hdim_q: 32, batch: 1}
axes:
  seqlen_q: [8, 16, 24, 40]
  mask: [none, causal]
measure: {warmup: 1, min_samples: 2, max_samples: 2, l2_flush: false}
providers: [cpu-ref, fake:pause-0.15]
"""
POINTS, PROVIDERS = 8, 2


@pytest.fixture
def env(tmp_path):
    sweep = tmp_path / "resumable.yaml"
    sweep.write_text(SWEEP)
    return {"sweep": sweep, "results": tmp_path / "runs"}


def command(env, *args):
    return [sys.executable, str(DRIVER), "sweep", *args, "--results-dir", str(env["results"])]


def sweep(env, *args, check=True):
    done = subprocess.run(command(env, *args), capture_output=True, text=True, timeout=240)
    if check:
        assert done.returncode in (0, 1), done.stderr
    return done


def started(env, run_id):
    """The sweep in the background, once its first point's rows are on disk."""
    process = subprocess.Popen(command(env, str(env["sweep"]), "--run-id", run_id), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    rows = env["results"] / run_id / ROWS_FILE
    deadline = time.monotonic() + 120
    while not (rows.is_file() and rows.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.05)
    return process


def row_set(run_dir):
    return sorted((r["point_id"], r["provider"], r["status"], r["val_max_abs"]) for r in load_run(run_dir).rows)


def test_ctrl_c_finishes_the_point_in_flight_prints_the_resume_command_and_resume_completes(env):
    reference = env["results"] / "whole"
    sweep(env, str(env["sweep"]), "--run-id", "whole")
    process = started(env, "cut")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    run_dir = env["results"] / "cut"
    meta = json.loads((run_dir / "meta.json").read_text())
    assert process.returncode == 1 and meta["complete"] is False
    assert f"resume with: fmha-bench sweep --resume {run_dir}" in err
    rows = load_run(run_dir).rows
    assert 0 < len(rows) < POINTS * PROVIDERS and len(rows) % PROVIDERS == 0   # whole points only
    resumed = sweep(env, "--resume", "cut")
    assert resumed.returncode == 0, resumed.stderr
    assert row_set(run_dir) == row_set(reference)
    assert json.loads((run_dir / "meta.json").read_text())["complete"] is True


def test_sigkill_at_random_moments_then_resume_gives_the_rows_of_an_uninterrupted_run(env):
    sweep(env, str(env["sweep"]), "--run-id", "whole")
    expected = row_set(env["results"] / "whole")
    rng = random.Random(7)
    for attempt in range(2):
        run_id = f"killed{attempt}"
        process = started(env, run_id)
        time.sleep(rng.uniform(0.0, 0.6))
        process.kill()
        process.wait(timeout=30)
        sweep(env, "--resume", run_id)
        assert row_set(env["results"] / run_id) == expected, f"attempt {attempt}"


def test_a_line_cut_short_and_a_point_missing_a_provider_are_repaired_by_resume(env):
    sweep(env, str(env["sweep"]), "--run-id", "whole")
    rows_path = env["results"] / "whole" / ROWS_FILE
    expected = row_set(env["results"] / "whole")
    lines = rows_path.read_text().splitlines(keepends=True)
    # the last point lost its second row and its first was cut mid-line: as after a power loss
    rows_path.write_text("".join(lines[:-2]) + lines[-2][:len(lines[-2]) // 2])
    assert sweep(env, "--resume", "whole").returncode == 0
    assert row_set(env["results"] / "whole") == expected
    text = rows_path.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == POINTS * PROVIDERS


def test_resume_refuses_a_changed_sweep_file_and_options_that_redefine_the_run(env):
    sweep(env, str(env["sweep"]), "--run-id", "whole", "--limit", "1")
    changed = sweep(env, "--resume", "whole", "--providers", "cpu-ref", check=False)
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines()[-1].endswith("--resume: a resumed run keeps its own settings; "
                                                            "drop --providers")
    env["sweep"].write_text(SWEEP.replace("40]", "48]"))
    edited = sweep(env, "--resume", "whole", check=False)
    assert edited.returncode == 2 and "changed since run whole started" in edited.stderr


def test_resuming_a_complete_run_runs_nothing_and_keeps_its_rows(env):
    sweep(env, str(env["sweep"]), "--run-id", "whole", "--limit", "2")
    run_dir = env["results"] / "whole"
    before = (run_dir / ROWS_FILE).read_text()
    (run_dir / "workers" / "worker-0.log").unlink()
    again = sweep(env, "--resume", str(run_dir))
    assert again.returncode == 0 and (run_dir / ROWS_FILE).read_text() == before
    assert not (run_dir / "workers" / "worker-0.log").exists()   # no worker was started


def test_parity_resumes_like_sweep_and_judges_every_row(env):
    base = [sys.executable, str(DRIVER), "parity", str(env["sweep"]), "--providers", "cpu-ref,fake:pause-0.15",
            "--results-dir", str(env["results"])]
    process = subprocess.Popen(base + ["--run-id", "par"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rows = env["results"] / "par" / ROWS_FILE
    deadline = time.monotonic() + 120
    while not (rows.is_file() and rows.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=30)
    assert len(load_run(env["results"] / "par").rows) < POINTS * 2   # really cut short
    resumed = subprocess.run([sys.executable, str(DRIVER), "parity", "--resume", "par", "--results-dir",
                              str(env["results"])], capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert len(load_run(env["results"] / "par").rows) == POINTS * 2
    table = (env["results"] / "par" / "parity.csv").read_text().splitlines()
    assert len(table) == POINTS + 1 and all("agree" in line for line in table[1:])
