"""Device buffers of one point: inputs uploaded once, outputs poisoned before every launch,
and scratch workspaces that providers ask for while preparing (outside the timed region).

Every provider of the point reads the same input buffers (identical values for all of them).
A `replica()` holds device copies of the inputs and its own outputs and workspaces: graph timing
rotates over replicas so that each launch reads inputs the previous launches left out of the L2.
"""
from __future__ import annotations

import numpy as np

from . import dtypes
from .backends.base import Backend, DeviceBuffer

POISON_BYTE = 0xFF  # 0xFF.. is NaN in fp16, bf16 and fp32: an unwritten output element fails validation

TABLE_FIELDS = ("block_table", "kv_indptr", "kv_page_indices", "kv_last_page_len", "block_tables_headwise")
INPUT_FIELDS = ("q", "k", "v", "seqstart_q", "seqstart_k", "seqlen_k", "sink_logits", "k_new", "v_new",
                "cache_len", "rope_cos", "rope_sin")


def output_shapes(problem) -> dict:
    sq = problem.seqlens_q()
    if problem.mode == "group":
        o = (sum(sq), problem.nhead_q, problem.hdim_v)
        lse = (problem.nhead_q, sum(sq))
    else:
        o = (problem.batch, problem.nhead_q, sq[0], problem.hdim_v)
        lse = (problem.batch, problem.nhead_q, sq[0])
    return {"o": o, "lse": lse}


class PointSession:
    def __init__(self, backend: Backend, device, problem, inputs, copy_of: "PointSession | None" = None):
        """Uploads `inputs`, or with `copy_of` copies that session's device inputs on the device."""
        self.backend, self.device, self.problem, self.inputs = backend, device, problem, inputs
        self.buffers: dict[str, DeviceBuffer] = {}
        self.workspaces: dict[str, DeviceBuffer] = {}
        self.host_inputs: dict[str, np.ndarray] = {}
        if copy_of is not None:
            self.host_inputs = copy_of.host_inputs
            self.buffers = {name: backend.duplicate(buf) for name, buf in copy_of.input_buffers().items()}
        else:
            for name in INPUT_FIELDS:
                self._upload(name, getattr(inputs, name))
            if inputs.tables is not None:
                for name in TABLE_FIELDS:
                    self._upload(name, getattr(inputs.tables, name))
        shapes = output_shapes(problem)
        self.out_shapes = shapes
        out_dt = problem.out_dt
        self.buffers["o"] = backend.alloc(int(np.prod(shapes["o"])) * out_dt.itemsize)
        self.buffers["lse"] = backend.alloc(int(np.prod(shapes["lse"])) * 4)

    def _upload(self, name, array):
        if array is None:
            return
        self.host_inputs[name] = array
        self.buffers[name] = self.backend.upload(np.ascontiguousarray(array))

    def replica(self) -> "PointSession":
        """A session over device copies of this one's inputs, with its own outputs and
        workspaces: a provider's prepare(problem, replica) launches over different memory.
        close() it like any session."""
        return PointSession(self.backend, self.device, self.problem, self.inputs, copy_of=self)

    def input_buffers(self) -> dict[str, DeviceBuffer]:
        return {name: buf for name, buf in self.buffers.items() if name in self.host_inputs}

    def input_bytes(self) -> int:
        """Bytes of device inputs (tensors and tables) a launch may read."""
        return sum(buf.nbytes for buf in self.input_buffers().values())

    def ptrs(self) -> dict[str, int]:
        return {name: buf.ptr for name, buf in self.buffers.items()}

    def workspace(self, name: str, nbytes: int) -> DeviceBuffer:
        """Scratch device memory of at least `nbytes` (split-KV partials, ...), allocated on the
        first request for `name` in this point and reused by later ones (a larger request
        replaces it), freed by close(). A new workspace is poisoned once, so an element the
        kernels forget to write shows up as NaN in the first, validated launch."""
        buf = self.workspaces.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                self.backend.free(buf)
            buf = self.backend.alloc(max(nbytes, 1))
            self.backend.memset(buf, POISON_BYTE)
            self.workspaces[name] = buf
        return buf

    def poison_outputs(self) -> None:
        self.backend.memset(self.buffers["o"], POISON_BYTE)
        self.backend.memset(self.buffers["lse"], POISON_BYTE)

    def download_outputs(self) -> dict:
        p = self.problem
        o_bits = self.backend.download(self.buffers["o"], self.out_shapes["o"], p.out_dt.storage)
        out = {"o": dtypes.decode(o_bits, p.out_dt)}
        if p.lse:
            out["lse"] = self.backend.download(self.buffers["lse"], self.out_shapes["lse"], np.float32)
        return out

    def close(self) -> None:
        for buf in [*self.buffers.values(), *self.workspaces.values()]:
            self.backend.free(buf)
        self.buffers.clear()
        self.workspaces.clear()
