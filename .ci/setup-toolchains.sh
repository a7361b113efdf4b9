# Prepares the compilers that build kernels without a GPU, and exports FMHA_BENCH_ROCM_PATH.
#   source .ci/setup-toolchains.sh      (from .ci/run, or a developer's shell)
#   bash .ci/setup-toolchains.sh        (prepares only; prints the export line to use)
# AMD: Debian's clang-22 + lld-22 (bookworm-security; where apt has no clang-22, clang-19 + lld-19
# from bookworm, which cannot build gfx950), plus HIP 5.2 headers and device bitcode unpacked (not
# installed) from Debian's libamdhip64-dev and rocm-device-libs into .toolchain/hip/. Those device
# libs stop at gfx940, so the one-constant oclc_isa_version_<N>.bc modules clang needs for newer
# arches are generated. fmha_bench/build/compilers.py adds the flags clang-22 needs for HIP 5.2.
# NVIDIA: nvcc when the machine has it; otherwise NVRTC from the [cuda] extra (pip).
# A second run finds everything in place and returns at once.

fmha_setup_toolchains() {
  local repo toolchain bitcode stamp clang sudo=""
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  toolchain="$repo/.toolchain/hip"
  bitcode="$toolchain/usr/lib/x86_64-linux-gnu/amdgcn/bitcode"
  stamp="$toolchain/.complete-2"     # bump the number when the recipe changes
  [ "$(id -u)" -eq 0 ] || sudo="sudo"

  local apt_updated=""
  _fmha_apt_update_once() {
    [ -n "$apt_updated" ] && return 0
    $sudo apt-get update -qq && apt_updated=1
  }

  # The newer of the two clangs whose lld is there too ("" if neither).
  _fmha_clang() {
    local major
    for major in 22 19; do
      if command -v "clang++-$major" >/dev/null && command -v "ld.lld-$major" >/dev/null; then
        echo "$major" && return 0
      fi
    done
    return 0
  }
  _fmha_apt_has() {
    apt-cache show "$1" >/dev/null 2>&1 && return 0
    _fmha_apt_update_once && apt-cache show "$1" >/dev/null 2>&1
  }
  _fmha_apt_install() {
    echo "setup-toolchains: installing $*"
    _fmha_apt_update_once || return 1   # stale lists may name versions the archive has dropped
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" \
      >/dev/null
  }
  local no22="setup-toolchains: apt has no clang-22 (Debian 12: bookworm-security)"
  clang="$(_fmha_clang)"
  # Asked once per recipe (the stamp), so a machine that keeps clang-19 is not re-asked each run.
  if [ "$clang" != 22 ] && { [ ! -f "$stamp" ] || [ -z "$clang" ]; }; then
    if _fmha_apt_has clang-22; then
      _fmha_apt_install clang-22 lld-22 || return 1
    elif [ -z "$clang" ]; then
      echo "$no22; installing clang-19, which cannot build gfx950" >&2
      _fmha_apt_install clang-19 lld-19 || return 1
    else
      echo "$no22; keeping clang-19, which cannot build gfx950" >&2
    fi
    clang="$(_fmha_clang)"
    [ -n "$clang" ] || { echo "setup-toolchains: no clang-22 + lld-22 nor clang-19 + lld-19" >&2
                         return 1; }
  fi

  if [ ! -f "$stamp" ]; then
    echo "setup-toolchains: unpacking HIP headers and device libraries into $toolchain"
    rm -rf "$toolchain" && mkdir -p "$toolchain/debs" || return 1
    if ! (cd "$toolchain/debs" && apt-get download -qq libamdhip64-dev rocm-device-libs 2>/dev/null); then
      _fmha_apt_update_once || return 1
      (cd "$toolchain/debs" && apt-get download -qq libamdhip64-dev rocm-device-libs) \
        || { echo "setup-toolchains: apt-get download failed" >&2; return 1; }
    fi
    local deb
    for deb in "$toolchain"/debs/*.deb; do
      dpkg-deb -x "$deb" "$toolchain" || return 1
    done
    local pair isa value
    for pair in 942:9402 950:9500 1100:11000 1201:12001; do
      isa="${pair%%:*}" value="${pair##*:}"
      [ -f "$bitcode/oclc_isa_version_$isa.bc" ] && continue
      printf '%s\n%s\n' 'target triple = "amdgcn-amd-amdhsa"' \
        "@__oclc_ISA_version = linkonce_odr protected local_unnamed_addr addrspace(4) constant i32 $value, align 4" \
        > "$toolchain/isa_$isa.ll"
      "clang-$clang" -c -emit-llvm -x ir --target=amdgcn-amd-amdhsa -nogpulib \
        "$toolchain/isa_$isa.ll" -o "$bitcode/oclc_isa_version_$isa.bc" || return 1
    done
    touch "$stamp"
  fi

  export FMHA_BENCH_ROCM_PATH="$toolchain/usr"
  echo "setup-toolchains: clang-$clang; export FMHA_BENCH_ROCM_PATH=$FMHA_BENCH_ROCM_PATH"
  if command -v nvcc >/dev/null; then
    echo "setup-toolchains: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
  else
    echo "setup-toolchains: no nvcc; NVIDIA builds use NVRTC (pip install -e '.[cuda]')"
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  fmha_setup_toolchains
else
  fmha_setup_toolchains || return 1
fi
