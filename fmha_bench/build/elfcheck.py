"""Which GPU architecture a code object was built for, read from its ELF header.

AMD (EM_AMDGPU): the low byte of e_flags is EF_AMDGPU_MACH.
NVIDIA cubins (EM_CUDA): the SM number sits in the low byte of e_flags under ELF ABI version 7
and in bits 8-15 under ABI version 8 (CUDA 12.8+); see EF_CUDA_SM / EF_CUDA_SM_MASK in LLVM's
BinaryFormat/ELF.h. The `a` of sm_90a is not recorded there (nvcc 13 writes the same e_flags
for sm_90 and sm_90a), so only the SM number is checked.
"""
from __future__ import annotations

import struct
from pathlib import Path

from .arch import ARCHS, Arch

EM_CUDA, EM_AMDGPU = 190, 224
_EI_CLASS, _EI_DATA, _EI_ABIVERSION = 4, 5, 8
_ELFCLASS64, _ELFDATA2LSB = 2, 1
_E_MACHINE_AT, _E_FLAGS_AT = 18, 48
_CUDA_ABI_SM_IN_LOW_BYTE = 7


class NotACodeObject(ValueError):
    pass


def read_target(data: bytes) -> tuple[str, int]:
    """(vendor, elf_id) of an ELF64 GPU code object; elf_id as in `Arch.elf_id`."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise NotACodeObject("not an ELF file")
    if data[_EI_CLASS] != _ELFCLASS64 or data[_EI_DATA] != _ELFDATA2LSB:
        raise NotACodeObject("not a little-endian ELF64 file")
    machine = struct.unpack_from("<H", data, _E_MACHINE_AT)[0]
    flags = struct.unpack_from("<I", data, _E_FLAGS_AT)[0]
    if machine == EM_AMDGPU:
        return "amd", flags & 0xFF
    if machine == EM_CUDA:
        if data[_EI_ABIVERSION] <= _CUDA_ABI_SM_IN_LOW_BYTE:
            return "nvidia", flags & 0xFF
        return "nvidia", (flags >> 8) & 0xFF
    raise NotACodeObject(f"ELF machine {machine} is neither AMDGPU nor CUDA")


def describe_target(vendor: str, elf_id: int) -> str:
    if vendor == "nvidia":
        return f"sm_{elf_id}"
    names = [a.name for a in ARCHS.values() if a.vendor == "amd" and a.elf_id == elf_id]
    return names[0] if names else f"AMDGPU mach 0x{elf_id:02x}"


def check_code_object(path: Path, arch: Arch) -> str | None:
    """None when `path` is a code object for `arch`, else what is wrong with it."""
    try:
        with open(path, "rb") as f:
            vendor, elf_id = read_target(f.read(64))
    except NotACodeObject as e:
        return f"{path}: {e}"
    if (vendor, elf_id) != (arch.vendor, arch.elf_id):
        return f"built for {describe_target(vendor, elf_id)}, expected {arch.name}"
    return None
