#!/usr/bin/env bash
# One shard of a sweep per task of a Slurm job array; `fmha-bench report` merges the shards.
#
# Submit (paths are relative to the directory sbatch runs in):
#   mkdir -p logs                      # Slurm does not create the --output directory
#   SWEEP=prefill RESULTS="$PWD/results" RUN_PREFIX=prefill-h100 sbatch tools/slurm_sweep.sh
#   sbatch --array=0-15 tools/slurm_sweep.sh --providers fmha,torch-sdpa:flash   # 16 shards
# Task i of N runs `fmha-bench sweep "$SWEEP" --shard i/N --devices all` (every GPU Slurm gave
# the task) into "$RESULTS/$RUN_PREFIX-shard<i>". Arguments after the script go to every task's
# `fmha-bench sweep` unchanged; all tasks must get the same ones, or their shards do not fit.
# The shards are a fixed, cost-balanced partition of the sweep's points: every machine computes
# the same one, so tasks may land on different nodes and GPU types.
#
# A task whose run directory already exists resumes it (`fmha-bench sweep --resume`: only the
# points without rows run), so a requeued or preempted task goes on where it stopped. To rerun
# one shard of an array later, give the same SWEEP, RESULTS and RUN_PREFIX and the shard count:
#   SHARD_COUNT=4 RUN_PREFIX=prefill-h100 sbatch --array=2 tools/slurm_sweep.sh
#
# Merge when every task finished (report warns about missing, repeated or interrupted shards):
#   fmha-bench report "$RESULTS"/"$RUN_PREFIX"-shard* --pivot
#
# Local check without Slurm (shard 1 of 4 on this machine's GPUs):
#   SLURM_ARRAY_TASK_ID=1 SLURM_ARRAY_TASK_COUNT=4 SWEEP=quick bash tools/slurm_sweep.sh
#
# Environment: SWEEP (a sweep file or packaged sweep name; default quick), RESULTS (the results
# directory; default ./results), RUN_PREFIX (default <sweep name>-<array job id>, or
# <sweep name>-local outside Slurm), SHARD_COUNT (default SLURM_ARRAY_TASK_COUNT). fmha-bench
# must be on PATH (activate its environment before sbatch: the job inherits it).
#
# Slurm reads the #SBATCH lines up to the first command; change them here or override them on
# the sbatch command line. One GPU per task; for whole nodes use --gpus-per-node=8 instead
# (--devices all then spreads the task's points over the node's GPUs). The CPU reference and
# the input generation use the task's CPUs.
#SBATCH --job-name=fmha-bench
#SBATCH --array=0-3
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

die() {
  printf 'slurm_sweep.sh: %s\n' "$1" >&2
  exit 2
}

task_id=${SLURM_ARRAY_TASK_ID:-}
task_count=${SHARD_COUNT:-${SLURM_ARRAY_TASK_COUNT:-}}
if [[ -z $task_id || -z $task_count ]]; then
  die "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set: submit with sbatch --array=0-3 tools/slurm_sweep.sh, or for a local check run SLURM_ARRAY_TASK_ID=0 SLURM_ARRAY_TASK_COUNT=4 bash tools/slurm_sweep.sh"
fi
if [[ ! $task_id =~ ^[0-9]+$ || ! $task_count =~ ^[0-9]+$ ]] || ((10#$task_count < 1)); then
  die "the task id ($task_id) and the shard count ($task_count) must be whole numbers, the count >= 1"
fi
task_id=$((10#$task_id))
task_count=$((10#$task_count))
# Shards are numbered 0..N-1, so an array that is all the shards must be exactly that.
if [[ -z ${SHARD_COUNT:-} && (${SLURM_ARRAY_TASK_MIN:-0} != 0 || ${SLURM_ARRAY_TASK_STEP:-1} != 1) ]]; then
  die "the array must be 0-$((task_count - 1)) with step 1 (e.g. --array=0-3 for 4 shards); to run some shards of N alone, set SHARD_COUNT=N"
fi
if ((task_id >= task_count)); then
  die "task $task_id is not a shard of $task_count (shards are 0..$((task_count - 1)))"
fi

sweep=${SWEEP:-quick}
results=${RESULTS:-results}
name=$(basename -- "$sweep")
name=${name%.yaml}
name=${name//[^A-Za-z0-9._-]/_}   # run ids are letters, digits, '.', '_' and '-'
prefix=${RUN_PREFIX:-$name-${SLURM_ARRAY_JOB_ID:-local}}
run_id=$prefix-shard$task_id

if [[ -e $results/$run_id/meta.json ]]; then
  # A resumed run keeps its own sweep, shard and options; only where it runs may change.
  command=(fmha-bench sweep --resume "$run_id" --results-dir "$results" --devices all)
else
  command=(fmha-bench sweep "$sweep" --shard "$task_id/$task_count" --run-id "$run_id"
           --results-dir "$results" --devices all "$@")
fi
printf 'slurm_sweep.sh: shard %s/%s on %s:' "$task_id" "$task_count" "${HOSTNAME:-this host}"
printf ' %q' "${command[@]}"
printf '\n'
exec "${command[@]}"
