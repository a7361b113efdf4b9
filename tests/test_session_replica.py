"""PointSession.replica(): device copies of the point's inputs with their own outputs and
workspaces, which graph timing rotates over (on a fake backend whose memory is host bytes)."""
from __future__ import annotations

import numpy as np

from fake_backend import ClockBackend
from fmha_bench.problem import Problem
from fmha_bench.session import PointSession

PAGED = Problem(family="paged", batch=2, seqlen_q=1, seqlen_k=40, nhead_q=4, nhead_k=2, hdim_q=64, page_size=16,
                lse=True)


def _session(problem=PAGED):
    backend = ClockBackend()
    return backend, PointSession(backend, backend.device_info(), problem, problem.make_inputs(0))


def _bytes(backend, buf):
    return bytes(backend.memory[buf.ptr][:buf.nbytes])


def test_a_replica_holds_the_same_input_bytes_in_other_device_buffers():
    backend, session = _session()
    replica = session.replica()
    inputs = session.input_buffers()
    assert set(replica.input_buffers()) == set(inputs) >= {"q", "k", "v", "block_table"}
    for name, buf in inputs.items():
        copy = replica.buffers[name]
        assert copy.ptr != buf.ptr and _bytes(backend, copy) == _bytes(backend, buf), name
    assert replica.input_bytes() == session.input_bytes() == sum(b.nbytes for b in inputs.values())


def test_a_replica_has_its_own_outputs_and_workspaces():
    backend, session = _session()
    replica = session.replica()
    assert replica.buffers["o"].ptr != session.buffers["o"].ptr
    assert replica.buffers["lse"].ptr != session.buffers["lse"].ptr
    assert replica.workspace("partials", 64).ptr != session.workspace("partials", 64).ptr
    replica.poison_outputs()
    assert np.isnan(replica.download_outputs()["o"]).all()


def test_closing_a_replica_frees_only_its_buffers():
    backend, session = _session()
    before = set(backend.memory)
    replica = session.replica()
    replica.workspace("partials", 64)
    replica.close()
    assert set(backend.memory) == before
    assert _bytes(backend, session.buffers["q"]) == session.host_inputs["q"].tobytes()
