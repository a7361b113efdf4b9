"""Splitting sweeps: the cost model, `--shard I/N` partitions, the worker order, shard warnings
in reports, and the Slurm job-array script (run with a fake fmha-bench)."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_tools import write_tool
from fmha_bench import Problem, shards
from fmha_bench.errors import UserError
from fmha_bench.point_runner import FULL_VALIDATION_LIMIT
from fmha_bench.shards import CostSettings, estimate_cost_s
from fmha_bench.store import Run
from fmha_bench.sweep import Point, load_sweep, packaged_sweeps
from fmha_bench.timing import MeasureSettings

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "slurm_sweep.sh"
ARCH = shards.SHARD_COST_ARCH
PREFILL_4K = Problem(batch=1, seqlen_q=4096, nhead_q=32, hdim_q=128).validate()
DECODE_8K = Problem(family="paged", batch=64, seqlen_q=1, seqlen_k=8195, nhead_q=32, nhead_k=8, hdim_q=128,
                    dtype="bf16", page_size=16).validate()


def point(problem):
    return Point(id=problem.key(), name=problem.name(), fields={}, resolved=problem.all_fields(), problem=problem,
                 skip_reason=None, source="axes")


def skipped(n):
    return Point(id=f"skipped{n:03d}", name=f"skipped {n}", fields={}, resolved={}, problem=None,
                 skip_reason="not a valid problem", source="axes")


def cost(problem, **kwargs):
    return estimate_cost_s(problem, ARCH, **kwargs)


# ----------------------------------------------------------------------------- cost model
def test_full_validation_costs_about_the_measured_reference_time():
    # NOTES.md: the full reference of 4k x 4k x 32 heads hdim 128 takes ~3 s, sampled 64 rows ~0.14 s.
    off = cost(PREFILL_4K, settings=CostSettings(validate="off"))
    assert 2.5 <= cost(PREFILL_4K, settings=CostSettings(validate="full")) - off <= 6
    assert 0.07 <= cost(PREFILL_4K, settings=CostSettings(validate="sampled")) - off <= 0.4


def test_large_decode_point_costs_its_input_and_reference_time():
    # NOTES.md: B=64 decode 8k: inputs 5 s, sampled reference 5 s.
    assert 7 <= cost(DECODE_8K) <= 15


def test_auto_validation_costs_like_the_mode_the_runner_picks():
    small = Problem(batch=2, seqlen_q=512).validate()
    assert int(small.areas().sum()) * small.group_size <= FULL_VALIDATION_LIMIT
    assert int(PREFILL_4K.areas().sum()) * PREFILL_4K.group_size > FULL_VALIDATION_LIMIT
    for problem, picked in ((small, "full"), (PREFILL_4K, "sampled")):
        auto, explicit = (cost(problem, settings=CostSettings(validate=mode)) for mode in ("auto", picked))
        assert auto == explicit


def test_cost_grows_with_the_problem_and_the_providers():
    assert cost(Problem(seqlen_q=2048).validate()) > cost(Problem(seqlen_q=512).validate())
    assert cost(Problem(seqlen_q=2048, mask="b").validate()) < cost(Problem(seqlen_q=2048).validate())
    assert cost(PREFILL_4K, providers=3) > 3 * (cost(PREFILL_4K) - cost(None))


def test_sampling_loop_is_bounded_by_the_time_budget():
    # A launch of this point takes a few ms: min_samples fit in 0.5 s, max_samples do not fit in 2 s.
    big = Problem(batch=1, seqlen_q=8192, nhead_q=16, hdim_q=128).validate()
    measure = MeasureSettings(warmup=0, min_samples=10, max_samples=10_000)

    def with_budget(seconds):
        return cost(big, settings=CostSettings(dataclasses.replace(measure, time_budget_s=seconds), validate="off"))
    assert with_budget(2.0) - with_budget(0.5) == pytest.approx(1.5)
    tiny = Problem(batch=1, seqlen_q=16).validate()  # max_samples launches end long before the budget
    short = CostSettings(measure=MeasureSettings(max_samples=20, time_budget_s=0.5), validate="off")
    assert cost(tiny, settings=short) < 0.1


def test_skipped_point_costs_almost_nothing_and_dtypes_without_a_peak_still_cost():
    assert 0 < cost(None) < 0.01
    assert cost(Problem(dtype="fp32").validate()) > cost(None)  # fp32 has no matrix-unit peak on sm_90a


def test_unknown_arch_is_a_user_error():
    with pytest.raises(UserError, match="unknown arch 'sm_99'"):
        estimate_cost_s(PREFILL_4K, "sm_99")


# ----------------------------------------------------------------------------- --shard I/N
@pytest.mark.parametrize("text, expected", [("0/1", (0, 1)), ("3/4", (3, 4)), (" 2 / 8 ", (2, 8)), ("07/10", (7, 10))])
def test_parse_shard_reads_index_and_count(text, expected):
    assert shards.parse_shard(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "expected I/N"), ("1", "expected I/N"), ("a/b", "expected I/N"), ("-1/4", "expected I/N"),
    ("1/2/3", "expected I/N"), ("1.0/2", "expected I/N"), ("0x1/4", "expected I/N"), ("\u0663/4", "expected I/N"),
    ("0/0", "must be >= 1"), ("4/4", "shard 4 does not exist: 4 shard\\(s\\) are numbered 0..3"),
])
def test_parse_shard_rejects_bad_text_naming_the_flag(text, message):
    with pytest.raises(UserError, match=message) as error:
        shards.parse_shard(text)
    assert error.value.where == "--shard"


PROBLEMS = st.builds(
    Problem, batch=st.integers(1, 4), seqlen_q=st.integers(1, 3000), seqlen_k=st.integers(1, 3000),
    nhead_q=st.sampled_from([4, 8, 16]), nhead_k=st.just(4), hdim_q=st.sampled_from([64, 128]),
    mask=st.sampled_from(["0", "b", "t:64,0"]), dtype=st.sampled_from(["fp16", "bf16"]))
POINTS = st.lists(st.one_of(PROBLEMS.map(point), st.integers(0, 999).map(skipped)), max_size=30,
                  unique_by=lambda p: p.id)


@settings(max_examples=60, deadline=None)
@given(points=POINTS, count=st.integers(1, 7))
def test_every_point_is_in_exactly_one_shard_in_sweep_order(points, count):
    parts = [shards.shard_points(points, index, count) for index in range(count)]
    assert sorted(p.id for part in parts for p in part) == sorted(p.id for p in points)
    for part in parts:  # each shard keeps the sweep's order
        positions = [points.index(p) for p in part]
        assert positions == sorted(positions)


@settings(max_examples=60, deadline=None)
@given(points=POINTS, count=st.integers(1, 7))
def test_shard_loads_stay_within_one_point_of_the_mean(points, count):
    costs = dict(zip((p.id for p in points), shards.point_costs(points, ARCH)))
    loads = [sum(costs[p.id] for p in shards.shard_points(points, index, count)) for index in range(count)]
    mean = sum(costs.values()) / count
    assert max(loads) <= mean + max(costs.values(), default=0) + 1e-9


@settings(max_examples=40, deadline=None)
@given(points=POINTS, count=st.integers(1, 7), data=st.data())
def test_partition_depends_on_the_points_not_on_their_order(points, count, data):
    shuffled = data.draw(st.permutations(points))
    first = dict(zip((p.id for p in points), shards.partition(points, count)))
    second = dict(zip((p.id for p in shuffled), shards.partition(shuffled, count)))
    assert first == second


def test_partition_gives_the_heaviest_points_to_the_emptiest_shards():
    points = [point(Problem(seqlen_q=s, nhead_q=8, batch=b).validate()) for b in (1, 2, 3) for s in (4096, 64)]
    heavy = [[p.problem.batch for p in shards.shard_points(points, index, 2) if p.problem.seqlen_q == 4096]
             for index in range(2)]
    assert heavy == [[3], [1, 2]]  # by cost: b3 -> shard 0, b2 -> 1, b1 -> 1 (b2 < b3)


def test_more_shards_than_points_leaves_the_extra_shards_empty():
    points = [point(Problem(seqlen_q=s).validate()) for s in (128, 256)]
    parts = [shards.shard_points(points, index, 5) for index in range(5)]
    assert sorted(len(part) for part in parts) == [0, 0, 0, 1, 1]


def test_partition_is_the_same_in_another_process_with_other_hash_seeds():
    code = ("from fmha_bench import shards; from fmha_bench.sweep import load_sweep, packaged_sweeps; "
            "points = load_sweep(packaged_sweeps()['prefill']).expand(); "
            "print([p.id for p in shards.shard_points(points, 1, 3)])")
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                              check=True)
        outputs.add(done.stdout)
    points = load_sweep(packaged_sweeps()["prefill"]).expand()
    assert outputs == {str([p.id for p in shards.shard_points(points, 1, 3)]) + "\n"}


def test_workers_take_the_longest_points_first_and_skipped_ones_last():
    points = [skipped(1)] + [point(Problem(seqlen_q=s).validate()) for s in (512, 4096, 1024)]
    ordered = shards.order_for_workers(points, ARCH)
    assert [p.problem.seqlen_q if p.problem else None for p in ordered] == [4096, 1024, 512, None]


def test_workers_order_breaks_cost_ties_by_point_id():
    points = [skipped(3), skipped(1), skipped(2)]
    assert [p.id for p in shards.order_for_workers(points, ARCH)] == ["skipped001", "skipped002", "skipped003"]


# ----------------------------------------------------------------------------- meta.json and report warnings
def test_shard_meta_records_the_share_of_the_sweep():
    assert shards.shard_meta(1, 4, 108, 27, sweep_sha256="ab" * 32) == {
        "index": 1, "count": 4, "points_total": 108, "points_in_shard": 27, "sweep_sha256": "ab" * 32,
        "cost_arch": ARCH}


SHA_A, SHA_B = "a" * 64, "b" * 64


def shard_run(run_id, index, count, ids, sha=SHA_A, total=None, in_shard=None, sweep="sweeps/prefill.yaml"):
    info = shards.shard_meta(index, count, total if total is not None else 4 * count,
                             in_shard if in_shard is not None else len(ids), sweep_sha256=sha)
    meta = {"run_id": run_id, "sweep_file": sweep, "sweep_sha256": sha, "shard": info}
    return Run(path=Path(run_id), meta=meta, rows=[{"point_id": i, "provider": "fmha"} for i in ids])


def complete(count=3, sha=SHA_A):
    return [shard_run(f"s{i}", i, count, [f"p{i}{j}" for j in range(4)], sha=sha) for i in range(count)]


def test_complete_shards_and_plain_runs_give_no_warning():
    plain = Run(path=Path("plain"), meta={"run_id": "plain", "sweep_sha256": SHA_B}, rows=[{"point_id": "x"}])
    assert shards.shard_warnings(complete() + [plain]) == []


def test_missing_shards_are_named():
    runs = complete(4)
    assert shards.shard_warnings([runs[0], runs[2]]) == [
        f"sweep prefill ({SHA_A[:12]}), 4 shards: shard(s) 1, 3 missing, so their points are not in the table"]


def test_a_repeated_shard_names_its_runs():
    runs = complete() + [shard_run("again", 1, 3, ["p10", "p11", "p12", "p13"])]
    assert shards.shard_warnings(runs) == [
        f"sweep prefill ({SHA_A[:12]}): shard 1/3 comes from 2 runs (s1, again); the later run's rows are kept"]


def test_an_interrupted_shard_is_named_with_the_resume_command():
    runs = complete()
    runs[2] = shard_run("s2", 2, 3, ["p20"], in_shard=4)
    warnings = shards.shard_warnings(runs)
    assert len(warnings) == 1
    assert "shard 2/3 (s2) has rows for 1 of its 4 points" in warnings[0]
    assert "fmha-bench sweep --resume s2" in warnings[0]


def test_shards_of_two_versions_of_a_sweep_file_are_flagged():
    runs = complete(2, sha=SHA_A)[:1] + complete(2, sha=SHA_B)[1:]
    warnings = shards.shard_warnings(runs)
    assert f"shards of sweep prefill come from 2 versions of the file (sha256 {SHA_A[:12]}, {SHA_B[:12]}): " \
           "their points may not fit together" in warnings
    assert len(warnings) == 3  # and each version misses a shard


def test_shards_cut_differently_are_flagged():
    runs = complete(2)
    runs[1] = shard_run("s1", 1, 2, ["p10", "p00"])  # p00 is shard 0's too
    assert shards.shard_warnings(runs) == [
        (f"sweep prefill ({SHA_A[:12]}): 1 point(s) have rows in more than one shard: the shards were cut "
         "differently (another fmha-bench version or other options)")]


def test_shards_of_different_point_lists_are_flagged():
    runs = complete(2)
    runs[1] = shard_run("s1", 1, 2, ["p10"], total=5)
    assert shards.shard_warnings(runs) == [
        (f"sweep prefill ({SHA_A[:12]}): the shards were cut from point lists of 5 and 8 points "
         "(other --filter or --limit): points may be missing or repeated")]


def test_a_sweep_split_two_ways_is_flagged():
    warnings = shards.shard_warnings(complete(2) + complete(3))
    assert warnings == [f"sweep prefill ({SHA_A[:12]}) was split in 2 and in 3 shards: the splits overlap"]


def test_a_broken_shard_entry_is_ignored():
    run = shard_run("s0", 0, 2, ["p"])
    run.meta["shard"] = {"index": "0", "count": 2}
    assert shards.shard_warnings([run]) == []


# ----------------------------------------------------------------------------- tools/slurm_sweep.sh
def test_slurm_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_slurm_directives_come_before_the_first_command():
    # sbatch stops reading #SBATCH lines at the first line that is not a comment.
    lines = SCRIPT.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert directives and max(directives) < first_command
    assert "#SBATCH --array=0-3" in lines


@pytest.fixture
def fake(tmp_path):
    """A fake fmha-bench on PATH (in a directory with a space) that records its arguments."""
    bin_dir = tmp_path / "bin dir"
    bin_dir.mkdir()
    record = tmp_path / "argv.json"
    write_tool(bin_dir, "fmha-bench", f"""
        import json, sys
        with open({str(record)!r}, "w") as f:
            json.dump(sys.argv[1:], f)
        sys.exit(3)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in
           ("SWEEP", "RESULTS", "RUN_PREFIX", "SHARD_COUNT")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env, record


def run_script(env, *args, **extra):
    return subprocess.run(["bash", str(SCRIPT), *args], env={**env, **extra}, capture_output=True, text=True,
                          cwd=REPO, check=False)


def test_slurm_script_runs_its_shard_with_quoted_paths(fake, tmp_path):
    env, record = fake
    results = tmp_path / "my results"
    done = run_script(env, "--providers", "fmha,torch-sdpa:flash", "--filter", "name with spaces",
                      SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_COUNT="4", SLURM_ARRAY_TASK_MIN="0",
                      SLURM_ARRAY_JOB_ID="777", SWEEP=str(tmp_path / "my sweeps" / "a b.yaml"), RESULTS=str(results))
    assert done.returncode == 3, done.stderr  # the sweep's exit code is the task's
    assert json.loads(record.read_text()) == [
        "sweep", str(tmp_path / "my sweeps" / "a b.yaml"), "--shard", "2/4", "--run-id", "a_b-777-shard2",
        "--results-dir", str(results), "--devices", "all", "--providers", "fmha,torch-sdpa:flash",
        "--filter", "name with spaces"]


def test_slurm_script_defaults_outside_slurm(fake):
    env, record = fake
    done = run_script(env, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="1", RUN_PREFIX="mine")
    assert done.returncode == 3, done.stderr
    assert json.loads(record.read_text()) == [
        "sweep", "quick", "--shard", "0/1", "--run-id", "mine-shard0", "--results-dir", "results", "--devices", "all"]


def test_slurm_script_resumes_a_shard_whose_run_exists(fake, tmp_path):
    env, record = fake
    results = tmp_path / "res ults"
    (results / "p-shard1").mkdir(parents=True)
    (results / "p-shard1" / "meta.json").write_text("{}")
    done = run_script(env, "--providers", "fmha", SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2",
                      RUN_PREFIX="p", RESULTS=str(results))
    assert done.returncode == 3, done.stderr
    assert json.loads(record.read_text()) == [
        "sweep", "--resume", "p-shard1", "--results-dir", str(results), "--devices", "all"]


def test_slurm_script_reruns_one_shard_of_an_array_with_shard_count(fake):
    env, record = fake
    done = run_script(env, SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_COUNT="1", SLURM_ARRAY_TASK_MIN="2",
                      SHARD_COUNT="4", RUN_PREFIX="p")
    assert done.returncode == 3, done.stderr
    assert json.loads(record.read_text())[2:6] == ["--shard", "2/4", "--run-id", "p-shard2"]


@pytest.mark.parametrize("variables, message", [
    ({}, "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set"),
    ({"SLURM_ARRAY_TASK_ID": "0"}, "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, "must be whole numbers"),
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "0"}, "the count >= 1"),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"}, "task 4 is not a shard of 4"),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"},
     "the array must be 0-3 with step 1"),
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "2"},
     "the array must be 0-3 with step 1"),
])
def test_slurm_script_refuses_a_bad_task_without_running(fake, variables, message):
    env, record = fake
    done = run_script(env, **variables)
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.startswith("slurm_sweep.sh: ")
    assert not record.exists()
