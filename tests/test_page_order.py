"""`page_order: address` (fmha_bench/page_order.py): which pages may trade slots, the tables the
plan builds, that the reference gives the same attention over them (and a different one when the
edge pages move too, so the comparison can fail), and the provider handing the kernels the
plan's table, end to end on the CPU emulation."""
from __future__ import annotations

import ctypes
import dataclasses

import numpy as np
import pytest
from emulated_backend import emulated_device
from test_fmha_provider import TensorMapBackend, no_compiler  # noqa: F401 (fixture)
from test_gpu_kernels import _check
from test_kernels_emulated import CXX, launch  # noqa: F401 (fixture)

from fmha_bench import page_order
from fmha_bench.inputs import page_tables
from fmha_bench.kernel_params import FmhaParams, unpack
from fmha_bench.masks import parse_mask
from fmha_bench.page_order import address_ordered, fully_visible_pages
from fmha_bench.problem import Problem, ProblemError
from fmha_bench.providers.fmha import FmhaProvider
from fmha_bench.reference import attention
from fmha_bench.session import PointSession


def _paged(**fields) -> Problem:
    base = dict(family="paged", batch=3, seqlen_q=1, seqlen_k=97, nhead_q=4, nhead_k=2, hdim_q=64, mask="b",
                page_size=4, page_order="address", lse=True)
    return Problem(**{**base, **fields}).validate()


@pytest.mark.parametrize("mask,seqlen_q,seqlen_k,page_size,expected", [
    ("0", 3, 100, 16, (0, 6)),      # the part-filled page 6 (keys 96..99) keeps its slot
    ("b", 1, 96, 16, (0, 6)),       # decode sees every key: all pages, the last one full
    ("b", 4, 100, 16, (0, 6)),      # row 0 sees keys 0..96: page 6 holds its diagonal
    ("b", 4, 99, 1, (0, 96)),       # page 1: keys 0..95 are seen by all four rows
    ("t", 4, 100, 16, (0, 0)),      # top-left: row 0 sees key 0 only
    ("b:31,0", 1, 200, 16, (11, 12)),  # window of 32 keys, 168..199: only page 11 (176..191) is whole
    ("b:31,0,16", 1, 200, 16, (11, 12)),  # the sink prefix keeps its slot
    ("b:8,0", 1, 200, 16, (12, 12)),   # a window shorter than a page: nothing moves
])
def test_fully_visible_pages_stop_at_every_mask_edge(mask, seqlen_q, seqlen_k, page_size, expected):
    assert fully_visible_pages(parse_mask(mask), seqlen_q, seqlen_k, page_size) == expected


def test_empty_sequences_have_no_pages_to_move():
    assert fully_visible_pages(parse_mask("b"), 0, 50, 4) == (0, 0)
    assert fully_visible_pages(parse_mask("b"), 1, 0, 4) == (0, 0)


@pytest.mark.parametrize("page_table", ["vllm", "sglang"])
def test_the_plan_sorts_each_sequence_s_whole_pages_and_keeps_the_rest(page_table):
    p = _paged(mode="group", seqlen_q=[2, 1, 3], seqlen_k=[97, 40, 0], page_table=page_table)
    tables = p.make_inputs(0).tables
    ordered = address_ordered(p, tables)
    for ids, new, sq, sk in zip(tables.pages, ordered.pages, p.seqlens_q(), p.seqlens_k()):
        first, end = fully_visible_pages(p.mask_spec, sq, sk, p.page_size)
        assert new[first:end] == sorted(ids[first:end])
        assert new[:first] == ids[:first] and new[end:] == ids[end:]
    assert ordered.pages != tables.pages            # shuffled ids: the plan changes something
    np.testing.assert_array_equal(ordered.kv_indptr, tables.kv_indptr)
    np.testing.assert_array_equal(ordered.kv_last_page_len, tables.kv_last_page_len)
    np.testing.assert_array_equal(ordered.kv_page_indices, [x for ids in ordered.pages for x in ids])
    for b, ids in enumerate(ordered.pages):
        assert list(ordered.block_table[b, :len(ids)]) == ids and (ordered.block_table[b, len(ids):] == -1).all()


def _attention_over(problem: Problem, tables) -> tuple:
    inputs = problem.make_inputs(0)
    inputs.tables = tables(problem, inputs.tables)
    ref = attention(problem, inputs)
    return ref.o, ref.lse


def _whole_table_sorted(problem, tables):
    """The wrong plan: every page sorted, edges included."""
    return page_tables(problem, [sorted(ids) for ids in tables.pages], tables.num_pages)


@pytest.mark.parametrize("fields", [
    dict(seqlen_q=1),                                     # decode, part-filled last page
    dict(seqlen_q=4, page_size=1, page_table="sglang"),   # speculative rows, page 1
    dict(seqlen_q=3, mask="b:40,0,8", seqlen_k=130),      # window with a sink
    dict(seqlen_q=2, mask="0", soft_cap=20.0, sink=True), # no mask, soft cap, learned sink
])
def test_the_reference_attention_is_the_same_over_the_planned_table(fields):
    p = _paged(**fields)
    o, lse = _attention_over(p, lambda _, t: t)
    o_planned, lse_planned = _attention_over(p, address_ordered)
    np.testing.assert_allclose(o_planned, o, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse_planned, lse, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fields", [dict(seqlen_q=1), dict(seqlen_q=4, seqlen_k=96)])
def test_moving_the_edge_pages_too_changes_the_attention(fields):
    """The check above can fail: with the part-filled page or the diagonal's pages moved, it does."""
    p = _paged(**fields)
    o, _ = _attention_over(p, lambda _, t: t)
    o_wrong, _ = _attention_over(p, _whole_table_sorted)
    assert not np.allclose(o_wrong, o, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("fields,field", [
    (dict(family="fwd", page_size=0), "page_order"),
    (dict(page_table="headwise"), "page_order"),
    (dict(family="appendkv", seqlen_q=2), "page_order"),   # the append writes through the table
    (dict(family="splitkv", page_size=0, num_splits=2), "page_order"),
    (dict(page_order="sorted"), "page_order"),
])
def test_address_order_is_refused_where_no_plan_exists(fields, field):
    with pytest.raises(ProblemError) as error:
        _paged(**fields)
    assert error.value.field == field


def test_the_order_names_the_point_and_the_default_keeps_old_keys():
    table = Problem(family="paged", page_size=16, seqlen_q=1, seqlen_k=64)
    assert "order:address" in dataclasses.replace(table, page_order="address").name()
    assert "page_order" not in table.fields() and "order:" not in table.name()


# ----------------------------------------------------------------------------- the provider
class CopyRecordingBackend(TensorMapBackend):
    """Keeps what each copy_to_device wrote, by device address."""

    def __init__(self, sm_count=132):
        super().__init__(sm_count)
        self.copies = {}

    def copy_to_device(self, buf, host):
        self.copies[buf.ptr] = np.array(host, copy=True)


def _mixed(**fields) -> Problem:
    return _paged(**{**dict(family="mixed", mode="group", batch=3, seqlen_q=[1, 1, 700], seqlen_k=[3000, 41, 900],
                            nhead_q=32, nhead_k=8, hdim_q=128, page_size=16), **fields})


@pytest.mark.parametrize("problem,tag", [
    (_paged(batch=2, seqlen_k=300, page_size=1, nhead_q=32, nhead_k=8, hdim_q=128), None),
    (_paged(batch=2, seqlen_k=300, page_size=1, nhead_q=32, nhead_k=8, hdim_q=128, page_table="sglang"), None),
    (_paged(batch=2, seqlen_k=900, page_size=16, nhead_q=32, nhead_k=8, hdim_q=128, num_splits=3), None),
    (_mixed(), None),                                    # the persistent launch over its plan
    (_mixed(page_table="sglang"), "separate"),           # each part's launch, its rows of the table
], ids=lambda v: v.name() if isinstance(v, Problem) else str(v))
def test_every_launch_reads_the_planned_table_and_the_row_notes_it(no_compiler, problem, tag):  # noqa: F811
    backend = CopyRecordingBackend()
    session = PointSession(backend, backend.device_info(), problem, problem.make_inputs(0))
    prepared = FmhaProvider(tag).prepare(problem, session)
    field, expected = page_order.device_table(problem, address_ordered(problem, session.inputs.tables))
    planned = session.workspaces[f"address_{field}"]
    np.testing.assert_array_equal(backend.copies[planned.ptr], expected)
    backend.calls.clear()
    prepared.launch()
    pointers = [unpack(call[5]._blob.raw[:ctypes.sizeof(FmhaParams)])[field]
                for call in backend.calls if call[0] == "launch"]
    assert pointers and all(planned.ptr <= ptr < planned.ptr + planned.nbytes for ptr in pointers if ptr), pointers
    assert sum(bool(ptr) for ptr in pointers) >= (2 if tag == "separate" else 1)
    assert any(note.startswith("page order address: ") and "table slots changed" in note for note in prepared.notes)


# ----------------------------------------------------------------------------- end to end, emulated
@pytest.fixture(scope="module")
def emulated_gpu(launch, tmp_path_factory):  # noqa: F811
    with pytest.MonkeyPatch.context() as patch:
        yield emulated_device(launch, patch, tmp_path_factory.mktemp("instances"))


@pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")
@pytest.mark.parametrize("fields", [dict(seqlen_q=1, page_table="sglang"), dict(seqlen_q=3, num_splits=3)])
def test_a_planned_point_validates_against_the_reference(emulated_gpu, fields):
    row = _check(emulated_gpu, _paged(**fields))
    assert "page order address" in " ".join(row.notes)


@pytest.mark.skipif(CXX is None, reason="needs g++ (C++20) to build the CPU emulation")
@pytest.mark.parametrize("fields", [dict(seqlen_q=1), dict(seqlen_q=4, seqlen_k=96)])  # the NaN tail; the diagonal
def test_a_plan_that_moves_the_edge_pages_fails_validation(emulated_gpu, monkeypatch, fields):
    from fmha_bench.point_runner import run_once
    monkeypatch.setattr(page_order, "fully_visible_pages", lambda mask, sq, sk, size: (0, -(-sk // size)))
    backend, device, provider = emulated_gpu
    row = run_once(_paged(**fields), provider, backend, device)
    assert row.status == "mismatch", (row.status, row.reason)
