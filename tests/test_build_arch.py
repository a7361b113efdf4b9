"""Arch names and the ELF header check behind `fmha-bench build --check`."""
import pytest

from build_support import elf_header
from fmha_bench.build.arch import ARCHS, get_arch, parse_arch_list
from fmha_bench.build.elfcheck import (EM_AMDGPU, EM_CUDA, NotACodeObject, check_code_object,
                                       read_target)
from fmha_bench.errors import UserError


def test_arch_list_keeps_order_and_drops_repeats():
    assert [a.name for a in parse_arch_list("sm_90a, gfx942,sm_90a")] == ["sm_90a", "gfx942"]


def test_unknown_arch_is_a_user_error_listing_the_known_ones():
    with pytest.raises(UserError) as e:
        parse_arch_list("gfx942,gfx999")
    message = str(e.value)
    assert "gfx999" in message and "gfx90a" in message and "sm_90a" in message
    assert "\n" not in message


def test_nvidia_arch_suffix_a_keeps_the_sm_number():
    assert get_arch("sm_90a").elf_id == 90 and get_arch("sm_90a").suffix == "cubin"
    assert get_arch("gfx1201").suffix == "co" and get_arch("gfx90a").isa_version == "90a"


@pytest.mark.parametrize("name", ["gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1201"])
def test_amd_arch_is_read_from_the_low_byte_of_e_flags(name, tmp_path):
    arch = ARCHS[name]
    path = tmp_path / "k.co"
    path.write_bytes(elf_header(EM_AMDGPU, 0x500 | arch.elf_id))  # 0x500: xnack/sramecc bits
    assert check_code_object(path, arch) is None
    other = next(a for a in ARCHS.values() if a.vendor == "amd" and a != arch)
    assert check_code_object(path, other) == f"built for {name}, expected {other.name}"


def test_cubin_sm_is_in_bits_8_to_15_under_abi_8_and_in_the_low_byte_under_abi_7():
    assert read_target(elf_header(EM_CUDA, 0x06005A04, abi_version=8)) == ("nvidia", 90)
    assert read_target(elf_header(EM_CUDA, 0x00500550, abi_version=7)) == ("nvidia", 80)


def test_cubin_for_sm_80_fails_the_sm_90a_check(tmp_path):
    path = tmp_path / "k.cubin"
    path.write_bytes(elf_header(EM_CUDA, 0x06005004, abi_version=8))
    assert check_code_object(path, get_arch("sm_80")) is None
    assert check_code_object(path, get_arch("sm_90a")) == "built for sm_80, expected sm_90a"


def test_amd_object_fails_an_nvidia_check(tmp_path):
    path = tmp_path / "k.co"
    path.write_bytes(elf_header(EM_AMDGPU, 0x4C))
    assert check_code_object(path, get_arch("sm_90")) == "built for gfx942, expected sm_90"


def test_non_elf_and_foreign_elf_are_rejected(tmp_path):
    with pytest.raises(NotACodeObject):
        read_target(b"not an elf file at all" * 4)
    with pytest.raises(NotACodeObject, match="neither"):
        read_target(elf_header(62, 0))  # x86-64
    path = tmp_path / "text.co"
    path.write_text("hello")
    assert "not an ELF file" in check_code_object(path, get_arch("gfx942"))
