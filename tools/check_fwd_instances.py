#!/usr/bin/env python3
"""Compile every shipped instance of the portable forward kernel with nvcc and print its
resources (registers, spills, static shared memory) per arch; exit 1 if one fails to compile or
needs more shared memory than the arch gives a block (spills are reported, not fatal).

    python3 tools/check_fwd_instances.py [sm_80,sm_90a]

Only NVIDIA arches (nvcc); AMD instances are checked by `fmha-bench build --check`.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fmha_bench.archs import get_arch  # noqa: E402
from fmha_bench.kernels import shipped_instances  # noqa: E402

KERNEL_SRC = REPO / "kernel_src"
_USAGE = re.compile(r"Used (\d+) registers.*?(\d+) bytes smem")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_one(spec, out_dir: Path) -> dict:
    sm = spec.arch[len("sm_"):]
    cmd = ["nvcc", "-x", "cu", "-cubin", f"-gencode=arch=compute_{sm},code=sm_{sm}", "-O3", "-std=c++17",
           "--resource-usage", f"-I{KERNEL_SRC}", *spec.define_flags(), str(KERNEL_SRC / spec.source),
           "-o", str(out_dir / f"{spec.label}_{spec.arch}.cubin")]
    run = subprocess.run(cmd, capture_output=True, text=True)
    text = run.stdout + run.stderr
    usage, spill = _USAGE.search(text), _SPILL.search(text)
    return {"spec": spec, "ok": run.returncode == 0 and usage is not None, "log": text,
            "registers": int(usage.group(1)) if usage else None, "smem": int(usage.group(2)) if usage else None,
            "spill": int(spill.group(1)) + int(spill.group(2)) if spill else None}


def main(arch_list: str) -> int:
    specs = [s for arch in arch_list.split(",") for s in shipped_instances(arch)]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor() as pool:
        results = list(pool.map(lambda s: compile_one(s, Path(tmp)), specs))
    failed = 0
    print(f"{'arch':7} {'instance':44} {'regs':>5} {'spill B':>8} {'smem B':>7}  verdict")
    for r in results:
        spec = r["spec"]
        limit = get_arch(spec.arch)["shared_bytes_per_block"]
        problems = [] if r["ok"] else ["compile failed"]
        if r["smem"] is not None and r["smem"] > limit:
            problems.append(f"smem > {limit}")
        failed += bool(problems)
        if r["spill"]:
            problems.append("spills")
        shown = {k: "-" if r[k] is None else r[k] for k in ("registers", "spill", "smem")}
        print(f"{spec.arch:7} {spec.label:44} {shown['registers']:>5} {shown['spill']:>8} {shown['smem']:>7}  "
              f"{', '.join(problems) or 'ok'}")
        if not r["ok"]:
            print(r["log"])
    print(f"{len(results)} instances, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "sm_80,sm_90a"))
