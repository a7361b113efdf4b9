"""NumPy CPU reference for every fmha-bench Problem (SPEC sections 1-9).

What it computes: per (sequence, query head h, KV head h // (Hq/Hk)) exactly SPEC section 1,
in float32 (or `accum`) from the exactly decoded inputs: S = softmax_scale * Q K^T, soft cap,
mask (per KV head, so headwise SWA heads get their own window + sink prefix), learned sink as
an extra softmax column, LSE in natural log, O = P V / l. A fully masked row has O = 0 and
LSE = -inf, or the sink logit when a sink is set. O is returned in float32, not rounded to the
output dtype.

Families: fwd (batch and group/varlen, empty sequences allowed), paged and mixed (K/V read
through the table the problem names: vllm, sglang or headwise), splitkv (the exact combine of
the partials, computed unsplit; `split_partials` / `combine` give the partials themselves),
appendkv (`append_kv`: new K rotated and rounded to the cache dtype, written into a copy of
the cache, queries rotated at the same absolute positions), mla (one latent KV head, V = the
first hdim_v columns of each latent row, sharing K's descale).

FP8: inputs are decoded exactly (e4m3fn or e4m3fnuz -> float32); S is scaled by
q_descale * k_descale and O by v_descale. By default (`p_fp8=False`) P stays in fp32, which is
what the portable kernel does. `p_fp8=True` models a kernel that feeds P to an fp8 matrix unit:
with the final row max m (every visible column of a row is computed at once), P = exp(S - m)
lies in [0, 1] and is rounded to nearest-even in the problem's own e4m3 flavour, unscaled
(values below half the smallest subnormal, 2^-9 for e4m3fn and 2^-10 for e4m3fnuz, become 0); the
denominator l = sum P (+ exp(s_h - m)) uses the unrounded fp32 P, only P V uses the rounded P.
A kernel with an online softmax rounds P against its running max instead, which differs from
this by at most the rounding of the rescaled values.

Memory: each (sequence, KV head) reads only the key ranges its mask can touch (never a -1 page;
a needed -1 entry raises ValueError), and rows go in chunks whose score matrix stays within
`chunk.CHUNK_BYTES` (64 MiB), each chunk computing only the columns its rows can see.
"""
from .attention import RefOutput, attention
from .rope import append_kv, apply_rope
from .sampling import take_rows
from .split import combine, split_partials

__all__ = ["RefOutput", "attention", "take_rows", "split_partials", "combine", "apply_rope", "append_kv"]
