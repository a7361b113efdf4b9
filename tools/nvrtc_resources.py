#!/usr/bin/env python3
"""Compile one kernel source with NVRTC (no nvcc, no GPU needed) and print ptxas's report:
registers, spills, shared memory and its performance warnings (e.g. C7514: wgmma serialised).

    python3 tools/nvrtc_resources.py kernel_src/fmha_fwd_wgmma.hip -DFMHA_DTYPE=fp16 \\
        -DFMHA_HDIM_Q=128 -DFMHA_HDIM_V=128 -DFMHA_KV_SOURCE=dense -DFMHA_BLOCK_K=128 -DFMHA_SOFT_CAP=0 [--arch sm_90a]

Exit 1 when the compile fails. For SASS, build the instance (`fmha-bench build`) and run nvdisasm
(the nvidia-cuda-nvdisasm wheel) on the cubin in the kernel cache.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmha_bench.build.compilers import _nvrtc_setup  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--arch", default="sm_90a")
    args, defines = parser.parse_known_args()
    from cuda.bindings import nvrtc
    setup = _nvrtc_setup()
    if isinstance(setup, str):
        print(setup, file=sys.stderr)
        return 1
    options = [f"-arch={args.arch}", "-std=c++17", f"-I{args.source.parent}", f"-I{setup[1]}", "-Xptxas=-v", *defines]
    _, program = nvrtc.nvrtcCreateProgram(args.source.read_bytes(), str(args.source).encode(), 0, [], [])
    (result,) = nvrtc.nvrtcCompileProgram(program, len(options), [o.encode() for o in options])
    _, size = nvrtc.nvrtcGetProgramLogSize(program)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(program, log)
    nvrtc.nvrtcDestroyProgram(program)
    print(log.rstrip(bytes(1)).decode(errors="replace").strip())
    return 0 if result == nvrtc.nvrtcResult.NVRTC_SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())
