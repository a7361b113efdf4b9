"""fmha-bench: benchmark and parity tool for fused multi-head attention kernels.

Notebook API::

    from fmha_bench import Problem, load_sweep, reference_attention
    p = Problem(batch=2, seqlen_q=512, nhead_q=8, nhead_k=2, hdim_q=128, mask="causal")
    x = p.make_inputs(seed=0)
    out = reference_attention(p, x)       # .o (fp32), .lse (natural log)
"""
from .problem import Problem, ProblemError

__version__ = "0.1.0"


def load_sweep(path):
    """Parse a sweep YAML file (see `fmha_bench.sweep`)."""
    from .sweep import load_sweep as _load
    return _load(path)


def reference_attention(problem, inputs, **kwargs):
    """NumPy reference for `problem` on `inputs` (see `fmha_bench.reference`)."""
    from .reference import attention
    return attention(problem, inputs, **kwargs)


__all__ = ["Problem", "ProblemError", "load_sweep", "reference_attention", "__version__"]
