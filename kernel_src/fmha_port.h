/* fmha_port.h: the one portability header of the kernels.

   One kernel source compiles as HIP (clang / hipcc / hiprtc, AMD), as CUDA (nvcc / NVRTC) and,
   for the tests, as plain C++ on the CPU (FMHA_CPU_EMULATION, see fmha_cpu_emulation.h).
   Everything vendor-specific lives here, behind platform or arch macros:
     FMHA_DEVICE, FMHA_LAUNCH_BOUNDS(n), FMHA_RESTRICT, FMHA_WAVE_SIZE, FMHA_INF,
     fmha_barrier(), fmha_shfl_xor(v, lane_mask), fmha_warp_any(p), fmha_exp2(x),
     element conversions fmha_{fp16,bf16,fp8_e4m3fn,fp8_e4m3fnuz}_to_float, fmha_float_to_{fp16,bf16}.
   bf16 and fp8 travel as raw bits (unsigned short / unsigned char) and are converted here with
   exact bit arithmetic, so no vendor bf16/fp8 header (absent from NVRTC setups and from HIP 5.2)
   is needed; conversions to bf16/fp16 round to nearest even, like fmha_bench.dtypes.encode. */
#ifndef FMHA_PORT_H
#define FMHA_PORT_H

#if defined(__HIP__) || defined(__HIPCC_RTC__)
/* ------------------------------------------------------------------ HIP (AMD) */
#define FMHA_HIP 1
#if !defined(__HIPCC_RTC__)
#include <hip/hip_runtime.h>
#endif
#define FMHA_DEVICE __device__ __forceinline__
#define FMHA_LAUNCH_BOUNDS(threads) __launch_bounds__(threads)
/* The wave size is a compile-time fact of the target; HIP 7 makes warpSize a run-time value. */
#if defined(__GFX9__)
#define FMHA_WAVE_SIZE 64
#elif defined(__GFX10__) || defined(__GFX11__) || defined(__GFX12__)
#define FMHA_WAVE_SIZE 32
#else /* the host pass of a HIP compile: no device code is generated from it */
#define FMHA_WAVE_SIZE 64
#endif
FMHA_DEVICE float fmha_shfl_xor(float v, int lane_mask) { return __shfl_xor(v, lane_mask); }
FMHA_DEVICE bool fmha_warp_any(bool p) { return __any(p); }   /* over the wave */
FMHA_DEVICE void fmha_barrier() { __syncthreads(); }
FMHA_DEVICE float fmha_bits_as_float(unsigned int u) { return __uint_as_float(u); }
FMHA_DEVICE unsigned int fmha_float_as_bits(float f) { return __float_as_uint(f); }
/* clang's native half type: exact widening, round-to-nearest-even narrowing. */
FMHA_DEVICE float fmha_fp16_to_float(unsigned short bits) { return (float)__builtin_bit_cast(_Float16, bits); }
FMHA_DEVICE unsigned short fmha_float_to_fp16(float f) { return __builtin_bit_cast(unsigned short, (_Float16)f); }

#elif defined(__CUDACC__)
/* ------------------------------------------------------------------ CUDA (NVIDIA) */
#define FMHA_CUDA 1
#include <cuda_fp16.h>
#define FMHA_DEVICE __device__ __forceinline__
#define FMHA_LAUNCH_BOUNDS(threads) __launch_bounds__(threads)
#define FMHA_WAVE_SIZE 32
/* Callers keep every lane of the warp converged at each shuffle, so the full mask is exact. */
FMHA_DEVICE float fmha_shfl_xor(float v, int lane_mask) { return __shfl_xor_sync(0xffffffffu, v, lane_mask); }
FMHA_DEVICE bool fmha_warp_any(bool p) { return __any_sync(0xffffffffu, p); }
FMHA_DEVICE void fmha_barrier() { __syncthreads(); }
FMHA_DEVICE float fmha_bits_as_float(unsigned int u) { return __uint_as_float(u); }
FMHA_DEVICE unsigned int fmha_float_as_bits(float f) { return __float_as_uint(f); }
FMHA_DEVICE float fmha_fp16_to_float(unsigned short bits) { return __half2float(__ushort_as_half(bits)); }
FMHA_DEVICE unsigned short fmha_float_to_fp16(float f) { return __half_as_ushort(__float2half_rn(f)); }

#elif defined(FMHA_CPU_EMULATION)
/* ------------------------------------------------------------------ CPU emulation (tests) */
#include "fmha_cpu_emulation.h"

#else
#error "fmha_port.h: compile as HIP, as CUDA, or with -DFMHA_CPU_EMULATION"
#endif

#define FMHA_RESTRICT __restrict__
/* NVRTC and hiprtc have no math.h, hence no INFINITY. */
#define FMHA_INF (fmha_bits_as_float(0x7f800000u))
#define FMHA_LOG2E 1.4426950408889634f
#define FMHA_LN2 0.6931471805599453f

/* 2^x on the hardware exponential unit (ex2.approx on NVIDIA, v_exp_f32 on AMD; ~2 ulp):
   the online softmax keeps its logits in base 2 so it never needs expf. exp2(-inf) = 0. */
FMHA_DEVICE float fmha_exp2(float x) { return exp2f(x); }

/* ------------------------------------------------------------------ element conversions */
FMHA_DEVICE float fmha_bf16_to_float(unsigned short bits) { return fmha_bits_as_float((unsigned int)bits << 16); }

FMHA_DEVICE unsigned short fmha_float_to_bf16(float f)
{
    unsigned int u = fmha_float_as_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)0x7fc0; /* NaN stays a quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                    /* round to nearest even */
    return (unsigned short)(u >> 16);
}

/* e4m3 (4 exponent bits with `bias`, 3 mantissa bits) -> float, exactly. Normal codes move
   their exponent and mantissa bits into a float; subnormals are m * 2^(1 - bias - 3), built
   from the integer so no float denormal (flushed on some targets) is involved. */
FMHA_DEVICE float fmha_e4m3_to_float(unsigned int code, int bias)
{
    const unsigned int sign = (code & 0x80u) << 24;
    const unsigned int mag = code & 0x7fu;
    float value;
    if (mag >> 3) {
        value = fmha_bits_as_float(sign | ((mag << 20) + ((unsigned int)(127 - bias) << 23)));
    } else {
        value = (float)mag * fmha_bits_as_float((unsigned int)(127 - bias - 2) << 23);
        value = sign ? -value : value;
    }
    return value;
}

/* OCP e4m3fn: bias 7, 0x7f/0xff are NaN, max 448. */
FMHA_DEVICE float fmha_fp8_e4m3fn_to_float(unsigned char code)
{
    return (code & 0x7fu) == 0x7fu ? fmha_bits_as_float(0x7fc00000u) : fmha_e4m3_to_float(code, 7);
}

/* AMD e4m3fnuz: bias 8, 0x80 is the only NaN (no -0), max 240. */
FMHA_DEVICE float fmha_fp8_e4m3fnuz_to_float(unsigned char code)
{
    return code == 0x80u ? fmha_bits_as_float(0x7fc00000u) : fmha_e4m3_to_float(code, 8);
}

#endif /* FMHA_PORT_H */
