"""FmhaParams: one field list, one C header, one ctypes layout; they must agree byte for byte."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from fmha_bench import kernel_params
from fmha_bench.kernel_params import FIELDS, FmhaParams, pack, render_header, repo_header_path, unpack


def test_committed_header_is_the_rendered_field_list():
    assert repo_header_path().read_text() == render_header(), \
        "kernel_src/fmha_params.h is stale: run `python -m fmha_bench.kernel_params`"


def test_field_names_are_unique_c_identifiers():
    names = [f.name for f in FIELDS]
    assert len(names) == len(set(names))
    assert all(n.isidentifier() for n in names)


def _c_compiler():
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def test_c_compiler_sees_the_ctypes_layout(tmp_path):
    cc = _c_compiler()
    if cc is None:
        pytest.skip("no host C compiler (cc/gcc/clang) to compile the generated header")
    (tmp_path / kernel_params.HEADER_NAME).write_text(render_header())
    prints = "\n".join(f'    printf("{f.name} %zu %zu\\n", offsetof(FmhaParams, {f.name}), '
                       f'sizeof(((FmhaParams*)0)->{f.name}));' for f in FIELDS)
    (tmp_path / "layout.c").write_text(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"fmha_params.h\"\n"
        f"int main(void) {{\n{prints}\n    printf(\"sizeof %zu 0\\n\", sizeof(FmhaParams));\n    return 0;\n}}\n")
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "layout.c", "-o", "layout"], cwd=tmp_path, check=True)
    out = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True, check=True).stdout
    c_layout = {name: (int(off), int(size)) for name, off, size in (line.split() for line in out.splitlines())}
    for f in FIELDS:
        member = getattr(FmhaParams, f.name)
        assert c_layout[f.name] == (member.offset, member.size), f.name
    assert c_layout["sizeof"][0] == len(pack())


def test_pack_round_trips_every_field():
    values = {}
    for i, f in enumerate(FIELDS):
        if f.count > 1:
            values[f.name] = [i + j for j in range(f.count)]
        elif f.kind == "f32":
            values[f.name] = 0.5 + i
        elif f.kind in ("i32", "i64"):
            values[f.name] = -(i + 1)
        else:
            values[f.name] = 0x1_0000_0000 + i
    assert unpack(pack(**values)) == values


def test_fields_left_out_are_zero():
    got = unpack(pack(q=123))
    assert got["q"] == 123 and got["k"] == 0 and got["scale"] == 0.0 and got["swa_heads"] == [0] * 4


def test_pack_rejects_an_unknown_field():
    with pytest.raises(ValueError, match="unknown FmhaParams field"):
        pack(not_a_field=1)


def test_header_defines_the_enumerations_the_host_uses():
    header = render_header()
    for name, value in kernel_params.MASK_ALIGN.items():
        assert f"#define FMHA_MASK_{name.upper()} {value}" in header
    for name, value in kernel_params.PAGE_TABLE.items():
        assert f"#define FMHA_PAGE_TABLE_{name.upper()} {value}" in header
