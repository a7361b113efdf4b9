"""GPU architectures the build knows: their vendor, code-object suffix and the ELF header facts
that `fmha-bench build --check` compares against."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Arch:
    name: str          # as the compilers spell it: gfx942, sm_90a
    vendor: str        # "amd" | "nvidia"
    elf_id: int        # AMD: EF_AMDGPU_MACH (e_flags low byte); NVIDIA: SM number (90 for sm_90a)

    @property
    def suffix(self) -> str:
        return "co" if self.vendor == "amd" else "cubin"

    @property
    def wave_size(self) -> int:
        """Threads per wave that HIP compiles for by default: CDNA (gfx9) has wave64 only, RDNA
        (gfx10 on) defaults to wave32, as do NVIDIA warps."""
        return 64 if self.name.startswith("gfx9") else 32

    @property
    def isa_version(self) -> str:
        """AMD device-lib spelling of the arch (`oclc_isa_version_<this>.bc`): gfx90a -> 90a."""
        return self.name[len("gfx"):]


def _amd(name: str, mach: int) -> Arch:
    return Arch(name, "amd", mach)


def _nvidia(name: str) -> Arch:
    return Arch(name, "nvidia", int(name[len("sm_"):].rstrip("af")))


# EF_AMDGPU_MACH values from LLVM's BinaryFormat/ELF.h.
ARCHS: dict[str, Arch] = {a.name: a for a in (
    _amd("gfx90a", 0x3F), _amd("gfx942", 0x4C), _amd("gfx950", 0x4F),
    _amd("gfx1100", 0x41), _amd("gfx1201", 0x4E),
    _nvidia("sm_80"), _nvidia("sm_86"), _nvidia("sm_89"), _nvidia("sm_90"), _nvidia("sm_90a"),
    _nvidia("sm_100a"), _nvidia("sm_120"),
)}


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise UserError(f"unknown arch {name!r}; known: {', '.join(ARCHS)}", "--arch") from None


def parse_arch_list(text: str) -> list[Arch]:
    """`gfx942,sm_90a` -> [Arch, Arch], in order, without repeats."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UserError("empty arch list", "--arch")
    return [get_arch(name) for name in dict.fromkeys(names)]
