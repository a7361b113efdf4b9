"""Sweep workers survive what a provider does to them (on the CPU stand-in GPU, fake_gpu.py):
a lost context, a killed process and a hang each cost one row, never the sweep, and the other
providers' rows are those of a run without the bad provider."""
import pytest
from fake_gpu import FACTORIES

from fmha_bench.resume import run_points
from fmha_bench.runner import run_sweep
from fmha_bench.sweep import SweepOptions, load_sweep

SWEEP = """\
name: iso
defaults: {family: fwd, dtype: fp16, nhead_q: 2, hdim_q: 32, batch: 1}
axes:
  seqlen_q: [16, 33]
  mask: [none, causal]
measure: {warmup: 1, min_samples: 3, max_samples: 3, l2_flush: false}
providers: [cpu-ref]
"""
# What must not change between runs (times do).
STABLE = ("point_id", "provider", "status", "val_max_abs", "val_mismatch_frac", "kernel")


@pytest.fixture
def sweep(tmp_path):
    path = tmp_path / "iso.yaml"
    path.write_text(SWEEP)
    return load_sweep(path)


def run(sweep, tmp_path, providers, **options):
    options = SweepOptions(providers=providers, results_dir=tmp_path / "runs", worker_factories=FACTORIES, **options)
    return run_sweep(sweep, run_points(sweep), options, show_table=False)


def stable(rows, providers=None):
    return sorted((tuple(str(row[k]) for k in STABLE), tuple(sorted(row["cross"])))
                  for row in rows if providers is None or row["provider"] in providers)


def test_faulting_exiting_and_hanging_providers_cost_one_row_each_and_leave_the_rest_identical(sweep, tmp_path):
    clean = run(sweep, tmp_path, "cpu-ref,cpu-ref2")
    mixed = run(sweep, tmp_path, "cpu-ref,fake:fault,fake:exit,cpu-ref2,fake:hang", timeout=2)
    assert clean.exit_code == 0 and clean.complete
    assert mixed.complete and mixed.exit_code == 1
    assert stable(mixed.rows, {"cpu-ref", "cpu-ref2"}) == stable(clean.rows)
    by_provider = {}
    for row in mixed.rows:
        by_provider.setdefault(row["provider"], set()).add(row["status"])
    assert by_provider == {"cpu-ref": {"ok"}, "cpu-ref2": {"ok"}, "fake:fault": {"crashed"},
                           "fake:exit": {"crashed"}, "fake:hang": {"timeout"}}
    reasons = {row["provider"]: row["reason"] for row in mixed.rows}
    assert "CUDA_ERROR_ILLEGAL_ADDRESS" in reasons["fake:fault"]
    assert "exited with code 134" in reasons["fake:exit"] and "aborting the worker" in reasons["fake:exit"]
    assert "no result after 2 s" in reasons["fake:hang"]


def test_a_fault_on_one_point_leaves_the_provider_ok_on_the_others(sweep, tmp_path):
    outcome = run(sweep, tmp_path, "cpu-ref,fake:fault-on-s33/33")
    statuses = {(row["name"], row["provider"]): row["status"] for row in outcome.rows}
    faulted = {key for key, status in statuses.items() if status == "crashed"}
    assert faulted and all("s33/33" in name and provider == "fake:fault-on-s33/33" for name, provider in faulted)
    assert sum(status == "ok" for status in statuses.values()) == len(statuses) - len(faulted) == 6


def test_every_gpu_of_the_machine_gets_a_worker_and_the_rows_are_those_of_one_gpu(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_GPU_COUNT", "2")
    one = run(sweep, tmp_path, "cpu-ref,cpu-ref2")
    both = run(sweep, tmp_path, "cpu-ref,cpu-ref2", devices="all")
    assert stable(both.rows) == stable(one.rows)
    assert {row["device_index"] for row in one.rows} == {0}
    assert {row["device_index"] for row in both.rows} <= {0, 1} and len(both.rows) == 8


def test_a_gpu_the_machine_does_not_have_is_a_clear_error(sweep, tmp_path, monkeypatch):
    from fmha_bench.errors import UserError
    monkeypatch.setenv("FAKE_GPU_COUNT", "2")
    with pytest.raises(UserError, match=r"--devices: GPU 5 does not exist: this machine has 2"):
        run(sweep, tmp_path, "cpu-ref", devices="0,5")


def test_a_worker_that_cannot_start_is_a_clear_error_and_the_run_is_kept(sweep, tmp_path):
    from fmha_bench.errors import UserError
    with pytest.raises(UserError, match=r"worker for GPU 0 could not start: IndexError"):
        run(sweep, tmp_path, "nocolon")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "meta.json").is_file() and (run_dir / "workers" / "worker-0.log").is_file()


def test_two_shards_cover_the_sweep_once_and_record_their_place(sweep, tmp_path):
    from fmha_bench.store import load_run
    whole = run(sweep, tmp_path, "cpu-ref")
    parts = []
    for index in range(2):
        options = SweepOptions(providers="cpu-ref", results_dir=tmp_path / "runs", worker_factories=FACTORIES,
                               shard=f"{index}/2", run_id=f"shard{index}")
        points = run_points(sweep, shard=options.shard)
        parts.append(run_sweep(sweep, points, options, show_table=False))
    metas = [load_run(part.run_path).meta["shard"] for part in parts]
    assert [(m["index"], m["count"]) for m in metas] == [(0, 2), (1, 2)]
    assert all(m["points_total"] == 4 for m in metas) and sum(m["points_in_shard"] for m in metas) == 4
    assert stable([row for part in parts for row in part.rows]) == stable(whole.rows)


def test_report_warns_when_a_shard_of_the_sweep_is_missing(sweep, tmp_path):
    from click.testing import CliRunner

    from fmha_bench.cli import cli
    options = SweepOptions(providers="cpu-ref", results_dir=tmp_path / "runs", worker_factories=FACTORIES,
                           shard="0/2", run_id="only0")
    run_sweep(sweep, run_points(sweep, shard=options.shard), options, show_table=False)
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "runs" / "only0")])
    assert result.exit_code == 0 and "warning:" in result.output and "shard" in result.output


def test_an_unknown_provider_fails_before_a_run_directory_or_a_worker_exists(sweep, tmp_path):
    from fmha_bench.errors import UserError
    with pytest.raises(UserError, match=r"--providers: unknown provider 'fhma'; did you mean 'fmha'"):
        run_sweep(sweep, run_points(sweep), SweepOptions(providers="fhma", results_dir=tmp_path / "runs"),
                  show_table=False)
    assert not (tmp_path / "runs").exists()
