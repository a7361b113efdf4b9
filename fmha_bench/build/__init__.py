"""JIT build of kernel instances: specs, compilers, the on-disk cache, code-object checks."""
from .arch import ARCHS, Arch, get_arch, parse_arch_list
from .cache import BuildResult, build, build_all, cache_root
from .compilers import CompileError, Compiler, compiler_for, compiler_report, compiler_versions
from .elfcheck import check_code_object
from .instance import KernelSpec, instance_name

__all__ = ["ARCHS", "Arch", "BuildResult", "CompileError", "Compiler", "KernelSpec", "build",
           "build_all", "cache_root", "check_code_object", "compiler_for", "compiler_report",
           "compiler_versions", "get_arch", "instance_name", "parse_arch_list"]
