"""The portable kernel runs family mla (V = the first hdim_v values of each latent K row, K's
fp8 scale for V): the correctness fallback off NVIDIA, checked on the CPU emulation."""
import pytest
from test_kernels_emulated import _assert_matches, _assert_split_matches, emulate, launch  # noqa: F401 (fixtures)

from fmha_bench.problem import Problem

M = dict(family="mla", nhead_k=1, kv_layout="nhd", mask="b", lse=True)


@pytest.mark.parametrize("p", [
    Problem(**M, batch=2, seqlen_q=2, seqlen_k=40, nhead_q=16, hdim_q=576, hdim_v=512, dtype="bf16", page_size=64),
    Problem(**M, batch=2, seqlen_q=2, seqlen_k=70, nhead_q=16, hdim_q=192, hdim_v=128, dtype="fp8_e4m3fn", page_size=16),
    Problem(**M, mode="group", batch=3, seqlen_q=[1, 0, 2], seqlen_k=[70, 5, 33], nhead_q=8, hdim_q=192, hdim_v=128, page_size=16, page_table="sglang", sink=True),
], ids=lambda p: p.name())
def test_portable_kernel_matches_the_reference_on_mla(emulate, p):
    _assert_matches(p, emulate(p))


def test_portable_split_kv_with_the_combine_matches_the_reference_on_mla(emulate):
    p = Problem(**M, batch=2, seqlen_q=2, seqlen_k=150, nhead_q=16, hdim_q=192, hdim_v=128, dtype="fp8_e4m3fn", page_size=16, num_splits=3, sink=True)
    _assert_split_matches(p, emulate(p))
