#!/usr/bin/env python3
"""Issue #6's acceptance on a real GPU machine: a sweep survives misbehaving kernels and SIGKILL.

  python tools/isolation_check.py --out DIR [--sweep quick] [--limit 6] [--devices all] [--kills 2]

1. clean:  the sweep with --providers PROVIDERS.
2. mixed:  the same with the test-only selftest:{fault,trap,hang,abort} providers mixed in
           (--timeout for the hang): every selftest row must be crashed/timeout, every other
           row identical to the clean run's (status, validation error, cross-checks).
3. killed: the clean sweep started again, SIGKILLed at a random moment, then `--resume`d,
           --kills times: each must end with the clean run's rows, none lost, none duplicated.
Prints one line per check and exits 1 when any differs. Runs fmha-bench through
`python -m fmha_bench` in subprocesses, so it tests the command as users run it.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

SELFTESTS = ("selftest:fault", "selftest:trap", "selftest:hang", "selftest:abort")
STABLE = ("point_id", "provider", "status", "val_max_abs", "val_mismatch_frac")


def fmha_bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "fmha_bench", *args]


def rows(run_dir: Path) -> list[dict]:
    text = (run_dir / "results.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stable(run_rows: list[dict], keep=lambda provider: True) -> list[tuple]:
    return sorted((tuple(str(r[k]) for k in STABLE), tuple(sorted(k for k in r["cross"] if keep(k))))
                  for r in run_rows if keep(r["provider"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="results directory for the runs")
    parser.add_argument("--sweep", default="quick")
    parser.add_argument("--limit", default="6")
    parser.add_argument("--providers", default="fmha,torch-sdpa:flash")
    parser.add_argument("--devices", default="all")
    parser.add_argument("--timeout", default="20", help="seconds before the hanging kernel's worker is killed")
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    common = [args.sweep, "--limit", args.limit, "--devices", args.devices, "--results-dir", str(args.out)]
    checks = []

    def run(run_id: str, *extra: str) -> float:
        start = time.monotonic()
        done = subprocess.run(fmha_bench("sweep", *common, "--run-id", run_id, *extra), capture_output=True,
                              text=True)
        (args.out / f"{run_id}.log").write_text(done.stdout + done.stderr)
        if done.returncode not in (0, 1):
            sys.exit(f"{run_id}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        return time.monotonic() - start

    args.out.mkdir(parents=True, exist_ok=True)
    seconds = run("clean", "--providers", args.providers)
    clean = rows(args.out / "clean")
    print(f"clean: {len(clean)} rows in {seconds:.0f} s, statuses "
          f"{sorted({r['status'] for r in clean})}")

    seconds = run("mixed", "--providers", ",".join([args.providers, *SELFTESTS]), "--timeout", args.timeout)
    mixed = rows(args.out / "mixed")
    ours = lambda provider: not provider.startswith("selftest:")  # noqa: E731
    bad = {r["provider"]: r["status"] for r in mixed if not ours(r["provider"]) and r["status"] not in
           ("crashed", "timeout")}
    same = stable(mixed, ours) == stable(clean)
    checks.append(("mixed: other rows identical to clean", same))
    checks.append(("mixed: every selftest row crashed/timeout", not bad))
    statuses = {}
    for r in mixed:
        statuses.setdefault(r["provider"], set()).add(r["status"])
    print(f"mixed: {len(mixed)} rows in {seconds:.0f} s, " +
          ", ".join(f"{p}: {'/'.join(sorted(s))}" for p, s in statuses.items()))

    rng = random.Random(args.seed)
    for attempt in range(args.kills):
        run_id = f"killed{attempt}"
        process = subprocess.Popen(fmha_bench("sweep", *common, "--run-id", run_id, "--providers", args.providers),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(2.0, 12.0)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        before = len(rows(args.out / run_id)) if (args.out / run_id / "results.jsonl").is_file() else 0
        done = subprocess.run(fmha_bench("sweep", "--resume", run_id, "--results-dir", str(args.out),
                                         "--devices", args.devices), capture_output=True, text=True)
        (args.out / f"{run_id}-resume.log").write_text(done.stdout + done.stderr)
        after = rows(args.out / run_id)
        ok = done.returncode in (0, 1) and stable(after) == stable(clean)
        checks.append((f"kill -9 after {delay:.1f} s ({before} rows on disk), resume: rows identical", ok))

    width = max(len(name) for name, _ in checks)
    for name, ok in checks:
        print(f"{name:<{width}}  {'PASS' if ok else 'FAIL'}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
