"""`torch-sdpa:<backend>`: PyTorch's scaled_dot_product_attention with one backend forced.

It reads the point's own device buffers (zero-copy tensor views of the session's Q/K/V), so it
sees exactly the values our kernels see, and nothing is copied or allocated by us inside the
timed region (SDPA's output comes from torch's caching allocator; `collect` copies it into the
session's poisoned O buffer after the launch, outside the timing). A point is mapped exactly or
skipped with the reason:
- masks: none; causal top-left (`is_causal`); causal bottom-right with Sq != Sk (torch's
  lower-right CausalBias); windows and sink prefixes as a dense boolean mask built before timing;
- GQA through `enable_gqa`; varlen only when every sequence has the same lengths (a strided view);
- whether the forced backend takes the combination is asked of torch itself, once per shape
  class, on tiny tensors (its own refusal message becomes the skip reason);
- the public API returns no LSE, so LSE is not compared for these providers.
"""
from __future__ import annotations

import hashlib
import re
import warnings

from .base import Prepared, Provider

SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "math": "MATH"}
TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


class TorchSdpaProvider(Provider):
    kind = "upstream"
    takes_tensors = True

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"torch-sdpa:{backend}"
        self._probes = {}

    def describe(self) -> str:
        return f"PyTorch scaled_dot_product_attention, {self.backend} backend forced, on our device buffers"

    def available(self) -> str | None:
        torch = _torch()
        if torch is None:
            return "torch is not installed (pip install 'fmha-bench[peers]')"
        if not torch.cuda.is_available():
            return f"torch {torch.__version__} sees no GPU"
        return None

    def version(self) -> str:
        torch = _torch()
        if torch is None:
            return ""
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        text = f"{torch.__version__}|{torch.version.cuda or torch.version.hip}|cudnn {cudnn}|{self.backend}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    # ------------------------------------------------------------------ capability
    def supports(self, problem, device) -> str | None:
        reason = self.available() or _mapping_gap(problem)
        if reason:
            return reason
        if device.backend != ("hip" if _torch().version.hip else "cuda"):
            return f"torch is built for {'ROCm' if _torch().version.hip else 'CUDA'}, the device is {device.backend}"
        return self._probe(problem)

    def _probe(self, problem) -> str | None:
        """Ask torch whether the forced backend runs this shape class (cached)."""
        sq, sk = _uniform_lengths(problem)
        shape_class = "eq" if sq == sk else ("lt" if sq < sk else "gt")
        key = (problem.dtype, problem.hdim_q, problem.hdim_v, problem.nhead_q, problem.nhead_k,
               _mask_route(problem.mask_spec, sq, sk), shape_class)
        if key not in self._probes:
            self._probes[key] = self._run_probe(problem, shape_class)
        return self._probes[key]

    def _run_probe(self, problem, shape_class) -> str | None:
        torch = _torch()
        sq, sk = {"eq": (64, 64), "lt": (16, 80), "gt": (80, 64)}[shape_class]
        dtype = getattr(torch, TORCH_DTYPES[problem.dtype])
        q = torch.zeros(1, problem.nhead_q, sq, problem.hdim_q, dtype=dtype, device="cuda")
        k = torch.zeros(1, problem.nhead_k, sk, problem.hdim_q, dtype=dtype, device="cuda")
        v = torch.zeros(1, problem.nhead_k, sk, problem.hdim_v, dtype=dtype, device="cuda")
        mask_args = _mask_arguments(torch, problem.mask_spec, sq, sk)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self._call(torch, q, k, v, problem, mask_args)
                torch.cuda.synchronize()
            except RuntimeError as e:
                said = _refusal_reasons(str(w.message) for w in caught)
                return f"{self.name} refuses it: {said or str(e).splitlines()[0]}"[:300]
        return None

    def _call(self, torch, q, k, v, problem, mask_args):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[self.backend])):
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, scale=problem.softmax_scale, enable_gqa=problem.nhead_q != problem.nhead_k, **mask_args)

    # ------------------------------------------------------------------ run
    def prepare(self, problem, session) -> Prepared:
        torch = _torch()
        dtype = getattr(torch, TORCH_DTYPES[problem.dtype])
        q = _bhsd_view(torch, session, "q", problem, problem.nhead_q, problem.hdim_q, dtype, queries=True)
        k = _bhsd_view(torch, session, "k", problem, problem.nhead_k, problem.hdim_q, dtype, queries=False)
        v = _bhsd_view(torch, session, "v", problem, problem.nhead_k, problem.hdim_v, dtype, queries=False)
        out = _bhsd_view(torch, session, "o", problem, problem.nhead_q, problem.hdim_v,
                         getattr(torch, TORCH_DTYPES[problem.out_dt.name]), queries=True)
        sq, sk = _uniform_lengths(problem)
        mask_args = _mask_arguments(torch, problem.mask_spec, sq, sk)   # built here, outside the timing
        result = []

        def launch():
            result[:] = [self._call(torch, q, k, v, problem, mask_args)]

        def collect():
            out.copy_(result[0])

        notes = ["LSE not compared: the public SDPA API returns none"] if problem.lse else []
        if "attn_mask" in mask_args and not hasattr(mask_args["attn_mask"], "variant"):
            notes.append(f"mask {problem.mask} passed as a dense [{sq},{sk}] boolean attn_mask")
        return Prepared(launch=launch, collect=collect, kernel=self.name, kernel_version=self.version(),
                        p_precision="input", produces_lse=False, notes=notes)


def _refusal_reasons(messages) -> str:
    """torch's warnings about why a backend was not used, without their headers ("X not used
    because:", "... runtime disabled") and source locations."""
    reasons = []
    for message in messages:
        text = re.sub(r"\s*\(Triggered internally at [^)]*\)\s*", " ", message).strip().rstrip(".")
        if text and not text.endswith("because:") and "runtime disabled" not in text and text not in reasons:
            reasons.append(text)
    return "; ".join(reasons)


def _uniform_lengths(problem) -> tuple[int, int]:
    return problem.seqlens_q()[0], problem.seqlens_k()[0]


def _mapping_gap(problem) -> str | None:
    """Why SDPA cannot express the point exactly, or None."""
    if problem.family != "fwd":
        return f"family {problem.family}: SDPA runs dense forward attention only"
    if problem.dtype not in TORCH_DTYPES:
        return f"dtype {problem.dtype}: SDPA takes fp16/bf16 here (no fp8 descale semantics)"
    if problem.soft_cap:
        return "soft cap: SDPA has no logits soft cap"
    if problem.sink:
        return "learned sink logit: SDPA has no sink column"
    if problem.mode == "group" and (len(set(problem.seqlens_q())) > 1 or len(set(problem.seqlens_k())) > 1):
        return "varlen with unequal lengths: SDPA takes padded batches only"
    sq, sk = _uniform_lengths(problem)
    if sq == 0 or sk == 0:
        return "empty sequences: SDPA needs at least one query and one key"
    if (problem.mask_spec.visible_counts(sq, sk) == 0).any():
        return f"mask {problem.mask} leaves query rows with no visible key: SDPA does not define their output"
    return None


def _mask_route(mask, sq, sk) -> str:
    """How SDPA expresses the mask: none, is_causal (top-left), lower_right (CausalBias) or dense."""
    if mask.is_none:
        return "none"
    if mask.is_causal and (mask.align == "top_left" or sq == sk):
        return "is_causal"
    if mask.is_causal:
        return "lower_right"
    return "dense"


def _mask_arguments(torch, mask, sq, sk) -> dict:
    route = _mask_route(mask, sq, sk)
    if route == "none":
        return {}
    if route == "is_causal":
        return {"is_causal": True}
    if route == "lower_right":
        from torch.nn.attention.bias import causal_lower_right
        return {"attn_mask": causal_lower_right(sq, sk)}
    keep = torch.from_numpy(mask.dense(sq, sk)).to("cuda")
    return {"attn_mask": keep}


class _DevicePointer:
    """A raw device allocation in the CUDA array interface, so torch can view it without a copy."""

    def __init__(self, ptr: int, shape: tuple, typestr: str):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, False),
                                         "version": 3, "strides": None}


def _bhsd_view(torch, session, name, problem, heads, hdim, dtype, queries: bool):
    """[B, H, S, D] view of a session buffer (batch mode is BHSD already; equal-length varlen is
    [B*S, H, D] and becomes a strided view)."""
    lengths = problem.seqlens_q() if queries else problem.seqlens_k()
    batch, seqlen = len(lengths), lengths[0]
    ptr = session.buffers[name].ptr
    if problem.mode == "group":
        raw = torch.as_tensor(_DevicePointer(ptr, (batch, seqlen, heads, hdim), "<u2"), device="cuda")
        return raw.view(dtype).transpose(1, 2)
    raw = torch.as_tensor(_DevicePointer(ptr, (batch, heads, seqlen, hdim), "<u2"), device="cuda")
    return raw.view(dtype)
