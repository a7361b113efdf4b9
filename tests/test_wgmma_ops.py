"""The generated wgmma wrappers (kernel_src/fmha_wgmma_ops.h) match their generator, and each
wrapper names exactly its accumulator registers."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_wgmma_ops", REPO / "tools" / "gen_wgmma_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_header_is_the_generator_output():
    generator = _generator()
    assert generator.HEADER.read_text() == generator.render(), "run python3 tools/gen_wgmma_ops.py"


def test_each_instruction_lists_n_over_2_accumulators_and_its_operands_in_order():
    text = _generator().render()
    instructions = re.findall(r"m64n(\d+)k16\.f32\.(\w+)\.\w+ \"\s*\"\{([^}]*)\}, (\{[^}]*\}|%\d+), %(\d+), p", text)
    assert len(instructions) == 2 * 3 * 2          # (ss, rs) x widths x dtypes
    for n, _, accumulators, a_operand, b_operand in instructions:
        names = [a.strip() for a in accumulators.split(",")]
        assert names == [f"%{i}" for i in range(int(n) // 2)]
        first_after = int(n) // 2
        a_names = a_operand.strip("{}").split(", ")
        assert a_names == [f"%{first_after + i}" for i in range(len(a_names))]
        assert int(b_operand) == first_after + len(a_names)
