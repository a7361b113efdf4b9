"""`fmha-bench list providers`' capability matrix asks each provider's own supports()."""
from __future__ import annotations

from fmha_bench.backends.base import DeviceInfo
from fmha_bench.capabilities import PROBES, capability_matrix
from fmha_bench.providers.fmha import FmhaProvider

DEVICE = DeviceInfo(backend="cuda", index=0, name="x", arch="sm_90a", arch_detail="sm_90", sm_count=132,
                    l2_bytes=50 << 20, memory_bytes=80 << 30)


class _NoFp8:
    name = "nofp8"

    def available(self):
        return None

    def supports(self, problem, device):
        return "no fp8 here" if problem.dtype.startswith("fp8") else None


class _Absent(_NoFp8):
    name = "absent"

    def available(self):
        return "library missing"


def test_every_probe_is_a_valid_problem_and_gets_a_cell_per_provider():
    cells = capability_matrix([_NoFp8(), _Absent()], DEVICE)
    assert len(cells) == 2 * sum(len(values) for values in PROBES.values())
    assert {(v, r) for p, a, v, r in cells if p == "nofp8" and a == "dtype"} == {
        ("fp16", None), ("bf16", None), ("fp8_e4m3fn", "no fp8 here"), ("fp8_e4m3fnuz", "no fp8 here")}
    assert all(r == "library missing" for p, _, _, r in cells if p == "absent")


def test_our_kernels_cells_match_their_dispatcher():
    cells = {(a, v): r for _, a, v, r in capability_matrix([FmhaProvider()], DEVICE)}
    assert cells[("family", "mla")] is None and cells[("family", "mixed")] is None
    assert "e4m3fnuz" in cells[("dtype", "fp8_e4m3fnuz")] and cells[("layout", "paged headwise")] is None
