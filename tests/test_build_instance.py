"""Instance names: readable, and a hash of everything that changes the code object."""
import re
import shutil

import pytest

from build_support import FIXTURES, FakeCompiler, tiny_spec
from fmha_bench.build.instance import KernelSpec, instance_name, source_files


@pytest.fixture
def sources(tmp_path):
    for name in ("tiny.hip", "tiny_common.h"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    return tmp_path


@pytest.fixture
def compiler(tmp_path):
    return FakeCompiler(tmp_path / "log")


def test_name_is_label_arch_and_eight_hex_digits(sources, compiler):
    name = instance_name(tiny_spec("gfx942", sources / "tiny.hip"), compiler)
    assert re.fullmatch(r"tiny_gfx942-[0-9a-f]{8}", name)


def test_name_is_stable_for_the_same_inputs(sources, compiler):
    spec = tiny_spec("gfx942", sources / "tiny.hip")
    assert instance_name(spec, compiler) == instance_name(spec, FakeCompiler(sources / "other"))


def test_name_changes_when_the_source_changes(sources, compiler):
    spec = tiny_spec("gfx942", sources / "tiny.hip")
    before = instance_name(spec, compiler)
    (sources / "tiny.hip").write_text((sources / "tiny.hip").read_text() + "\n// edit\n")
    assert instance_name(spec, compiler) != before


def test_name_changes_when_an_included_header_changes(sources, compiler):
    spec = tiny_spec("gfx942", sources / "tiny.hip")
    before = instance_name(spec, compiler)
    (sources / "tiny_common.h").write_text("#define TINY_SCALE 4.0f\n")
    assert instance_name(spec, compiler) != before


def test_sources_are_the_source_and_every_header_beside_it(sources):
    (sources / "other.h").write_text("")
    names = [p.name for p in source_files(tiny_spec("gfx942", sources / "tiny.hip"))]
    assert names == ["tiny.hip", "other.h", "tiny_common.h"]


def test_name_changes_with_defines_but_not_with_their_order(sources, compiler):
    path = sources / "tiny.hip"
    ab = instance_name(tiny_spec(source=path, defines=(("A", "1"), ("B", "2"))), compiler)
    ba = instance_name(tiny_spec(source=path, defines=(("B", "2"), ("A", "1"))), compiler)
    a3 = instance_name(tiny_spec(source=path, defines=(("A", "3"), ("B", "2"))), compiler)
    assert ab == ba != a3


def test_name_changes_with_the_compiler_version(sources, tmp_path):
    spec = tiny_spec("gfx942", sources / "tiny.hip")
    v1 = instance_name(spec, FakeCompiler(tmp_path / "log", version="1.0"))
    v2 = instance_name(spec, FakeCompiler(tmp_path / "log", version="1.1"))
    assert v1 != v2


def test_name_changes_with_the_compiler_flags(sources, compiler):
    spec = tiny_spec("gfx942", sources / "tiny.hip")
    before = instance_name(spec, compiler)
    compiler.flags = lambda arch: ["-O2"]
    assert instance_name(spec, compiler) != before


def test_same_label_on_two_arches_gets_two_hashes(sources, compiler):
    a = instance_name(tiny_spec("gfx942", sources / "tiny.hip"), compiler)
    b = instance_name(tiny_spec("gfx90a", sources / "tiny.hip"), compiler)
    assert a.split("-")[-1] != b.split("-")[-1]


def test_labels_and_define_names_that_could_escape_a_file_name_or_flag_are_refused():
    with pytest.raises(ValueError, match="label"):
        KernelSpec("k.hip", "k", (), "gfx942", "../evil")
    with pytest.raises(ValueError, match="identifier"):
        KernelSpec("k.hip", "k", (("A -DB", "1"),), "gfx942", "ok")


def test_define_values_that_a_shell_would_expand_are_refused():
    """nvcc passes -D values through a shell internally: `$(...)` in a value would run."""
    KernelSpec("k.hip", "k", (("HDIM", "128"), ("T", "std::uint8_t"), ("S", "-1.5e-3f")), "sm_80", "ok")
    for value in ("$(touch x)", "`id`", "1;2", "a b", "(1<<3)"):
        with pytest.raises(ValueError, match="value must match"):
            KernelSpec("k.hip", "k", (("A", value),), "sm_80", "ok")


def test_relative_sources_resolve_inside_the_packaged_kernel_src():
    spec = KernelSpec("fmha_fwd.hip", "k", (), "gfx942", "fwd")
    assert spec.source_path().parent.name == "kernel_src"
    assert spec.include_dir() == spec.source_path().parent
