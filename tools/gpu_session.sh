#!/usr/bin/env bash
# One device-machine call: install, doctor, GPU tests, the shipped sweeps, reports.
# Usage (on the GPU machine, from the repo root): bash tools/gpu_session.sh [tests|sweeps|parity|all] [SWEEP...]
#   parity: `fmha-bench parity parity` with our kernel and torch SDPA's flash, cuDNN and math backends.
#   SWEEP_ARGS (environment) is added to every sweep command, e.g. SWEEP_ARGS=--all-instances.
# Logs and run directories go under $OUT (or ./gpu-out when OUT is unset).
set -uo pipefail
what=${1:-all}; shift || true
out=${OUT:-gpu-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 FMHA_BENCH_CACHE=/tmp/fmha-cache
# The image's python3 (with torch, numpy) may not be the one behind pip's console scripts.
fmha-bench() { python3 -m fmha_bench "$@"; }
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || { cat "$out/install.log"; exit 1; }
fmha-bench doctor 2>&1 | tee "$out/doctor.txt"
status=0
arch=$(python3 -c "from fmha_bench.backends import open_backend; print(open_backend(0).device_info().arch)")
time fmha-bench build sweeps/*.yaml --arch "$arch" --check >"$out/build.log" 2>&1; echo "build exit $?"; tail -4 "$out/build.log"
if [[ $what == tests || $what == all ]]; then
  python3 -m pytest -q -m gpu --no-header -p no:cacheprovider tests 2>&1 | tee "$out/pytest_gpu.log" | tail -40
  status=${PIPESTATUS[0]}
fi
if [[ $what == parity || $what == all ]]; then
  fmha-bench parity parity --providers fmha,torch-sdpa:flash,torch-sdpa:cudnn,torch-sdpa:math \
    --results-dir "$out/runs" --run-id parity >"$out/parity.log" 2>&1
  echo "parity: exit $?"; tail -8 "$out/parity.log"
  cp "$out/runs/parity/parity.md" "$out/parity.md" 2>/dev/null
fi
if [[ $what == sweeps || $what == all ]]; then
  sweeps=("$@"); [[ ${#sweeps[@]} -eq 0 ]] && sweeps=(quick)
  for s in "${sweeps[@]}"; do
    # shellcheck disable=SC2086  # SWEEP_ARGS holds several words on purpose
    fmha-bench sweep "$s" --results-dir "$out/runs" --run-id "$s" ${SWEEP_ARGS:-} >"$out/sweep_$s.log" 2>&1
    rc=$?; echo "sweep $s: exit $rc"; tail -5 "$out/sweep_$s.log"
    fmha-bench report "$out/runs/$s" --markdown "$out/$s.md" --csv "$out/$s.csv" >/dev/null 2>&1
  done
fi
[[ -d $out/runs ]] && (cd "$out" && tar czf runs.tgz runs && rm -rf runs)
exit $status
