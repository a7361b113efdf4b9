"""Synthetic runs with known timings, written through store.RunStore, for report, pivot and plot tests.

Prefill points (fwd fp16, seqlen 1k..4k x hdim 64/128) are compute-bound: fmha runs them at
100 TFLOPS, torch-sdpa:cudnn 3x faster, ck skips them. Decode points (paged bf16, page size
1/16/64) are memory-bound: fmha moves 1 TB/s, cudnn 2.5x faster; ck is ok on page size 16
(2x slower than fmha), failed on 1 and mismatching on 64.
"""
from __future__ import annotations

from functools import lru_cache

from fmha_bench import Problem
from fmha_bench.schema import Result
from fmha_bench.store import RunStore

PEAK_TFLOPS, PEAK_TBPS = 989.4, 3.35
DEVICE = "NVIDIA H100 80GB HBM3"
PREFILL = [Problem(batch=16384 // s, seqlen_q=s, nhead_q=2048 // d, hdim_q=d)
           for s in (1024, 2048, 4096) for d in (64, 128)]
DECODE = [Problem(family="paged", batch=8, seqlen_q=1, seqlen_k=8192, nhead_q=32, nhead_k=8, hdim_q=128,
                  dtype="bf16", mask="b", page_size=p) for p in (1, 16, 64)]
PREFILL_SPEEDUP, DECODE_SPEEDUP = 3.0, 2.5


@lru_cache(maxsize=None)
def cost(problem: Problem) -> tuple[int, int]:
    """FLOPs and bytes (counting them takes a while for long sequences)."""
    return problem.flops(), problem.bytes()


def _row(problem: Problem, provider: str, **fields) -> Result:
    flops, nbytes = cost(problem)
    return Result(point_id=problem.key(), name=problem.name(), problem=problem.all_fields(), provider=provider,
                  flops=flops, bytes=nbytes, device=DEVICE, arch="sm_90a", **fields)


def ok(problem: Problem, provider: str, time_s: float, status: str = "ok", max_abs: float = 1e-3) -> Result:
    flops, nbytes = cost(problem)
    tflops, tbps = flops / time_s / 1e12, nbytes / time_s / 1e12
    return _row(problem, provider, status=status, time_s_median=time_s, time_s_min=time_s, samples=10,
                rel_noise=0.005, tflops=tflops, tbps=tbps, pct_peak_flops=100 * tflops / PEAK_TFLOPS,
                pct_peak_bw=100 * tbps / PEAK_TBPS, val_mode="full", val_max_abs=max_abs, val_mismatch_frac=0.0)


def not_run(problem: Problem, provider: str, status: str, reason: str) -> Result:
    return _row(problem, provider, status=status, reason=reason)


def fmha_time(problem: Problem) -> float:
    """fmha's time: 100 TFLOPS on prefill points, 1 TB/s on decode points."""
    flops, nbytes = cost(problem)
    return flops / 100e12 if problem.family == "fwd" else nbytes / 1e12


def provider_rows(provider: str) -> list[Result]:
    if provider == "fmha":
        return [ok(p, "fmha", fmha_time(p), max_abs=2e-3) for p in PREFILL + DECODE]
    if provider == "torch-sdpa:cudnn":
        return ([ok(p, provider, fmha_time(p) / PREFILL_SPEEDUP) for p in PREFILL]
                + [ok(p, provider, fmha_time(p) / DECODE_SPEEDUP) for p in DECODE])
    assert provider == "ck"
    return ([not_run(p, "ck", "skipped", "ck runs on AMD GPUs only") for p in PREFILL]
            + [not_run(DECODE[0], "ck", "failed", "exit code 1"),
               ok(DECODE[1], "ck", fmha_time(DECODE[1]) * 2),
               ok(DECODE[2], "ck", fmha_time(DECODE[2]), status="mismatch", max_abs=0.5)])


def write_run(results_dir, run_id: str, rows: list[Result], providers: list[str]):
    store = RunStore.create(results_dir, run_id=run_id,
                            meta={"device": {"name": DEVICE, "arch": "sm_90a"}, "providers": providers})
    for row in rows:
        store.append(row)
    store.finish()
    return store.path


def write_three_provider_run(results_dir, run_id: str = "three", providers=("torch-sdpa:cudnn", "fmha", "ck")):
    """Every provider's rows in one run; meta lists cudnn first."""
    rows = [row for provider in providers for row in provider_rows(provider)]
    return write_run(results_dir, run_id, rows, list(providers))
