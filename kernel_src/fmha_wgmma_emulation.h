/* fmha_wgmma_emulation.h: Hopper's wgmma instructions on the CPU emulation (FMHA_CPU_EMULATION,
   fmha_cpu_emulation.h), so a wgmma kernel's descriptors, fragment indexing and synchronisation
   can be tested against the reference without a GPU.

   The layout side is the real one: this header includes fmha_wgmma.h (swizzled tiles and the
   descriptor encoders the GPU build runs) after defining smem_address as the byte offset into
   the block's emulated shared memory (set_shared_base). Its asm functions are never called here;
   namespace fmha::wgmma_emu holds the instruction side with the same names (WgmmaOps<Type, N>,
   wgmma_fence / commit / wait, touch_registers, fence_async_shared), so a kernel selects one set
   with a namespace alias.

   Each instruction computes its result when issued (fence, commit and wait do nothing) from this
   model of the hardware, the facts fmha_wgmma.h documents:
   - one instruction covers 32 bytes of each operand row: m64nNk16 for the 16-bit types,
     m64nNk32 for e4m3 (fmha_fwd_wgmma.hip's fp8 instances);
   - descriptor: bits [0,14) start address >> 4, [16,30) LBO >> 4, [32,46) SBO >> 4, [62,64) = 1
     (128-byte swizzle; other modes are refused);
   - K-major operand element (row r, k) of b bytes: start + (r / 8) SBO + (r % 8) 128 + b k;
     N-major B element (k, n), 16-bit only (wgmma transposes no 8-bit operand, so rs() takes an
     e4m3 B K-major): start + (n / 64) LBO + (k / 8) SBO + (k % 8) 128 + 2 (n % 64);
     then address bits [4,7) ^= bits [7,10) (the shared memory is 1024-byte aligned);
   - A from registers: warp w of the warpgroup holds rows 16 w .. 16 w + 15 in mma.m16n8k16's
     (16-bit) or mma.m16n8k32's (e4m3) A layout: lane 4 g + q, register j holds
     A[g + 8 (j % 2)][4 / b (q + 4 (j / 2)) ..], 4 / b elements, the first in the low bits;
   - D: warp w, lane 4 g + q, element i: row 16 w + g + 8 ((i / 2) % 2), column 8 (i / 4) + 2 q + i % 2.
   rs() exchanges A fragments among the 128 threads of the caller's warpgroup (threadIdx.x / 128)
   at warpgroup barriers, so every thread of a warpgroup must issue the same sequence of rs()
   calls, as on the GPU (wgmma is .sync.aligned over the warpgroup); other warpgroups are not
   involved: two may issue wgmma at different times, and a producer warpgroup never calls it. */
#ifndef FMHA_WGMMA_EMULATION_H
#define FMHA_WGMMA_EMULATION_H

#if !defined(FMHA_CPU_EMULATION)
#error "fmha_wgmma_emulation.h is for -DFMHA_CPU_EMULATION builds; GPU builds include fmha_wgmma.h"
#endif

namespace fmha {
namespace wgmma_emu {

inline const unsigned char* g_shared_base = nullptr;

/* The emulated kernel's shared memory (1024-byte aligned), before any descriptor is formed. */
inline void set_shared_base(const void* base) { g_shared_base = (const unsigned char*)base; }

}  // namespace wgmma_emu

inline unsigned smem_address(const void* p)
{
    const long offset = (const unsigned char*)p - wgmma_emu::g_shared_base;
    if (wgmma_emu::g_shared_base == nullptr || offset < 0 || offset >= (1 << 18))
        throw std::runtime_error("wgmma emulation: operand outside the block's shared memory");
    return (unsigned)offset;
}

}  // namespace fmha

#include "fmha_wgmma.h"

namespace fmha {
namespace wgmma_emu {

struct Descriptor {
    unsigned start, lbo, sbo;

    explicit Descriptor(unsigned long long d)
        : start((unsigned)(d & 0x3FFF) << 4), lbo((unsigned)((d >> 16) & 0x3FFF) << 4),
          sbo((unsigned)((d >> 32) & 0x3FFF) << 4)
    {
        if ((d >> 62) != 1) throw std::runtime_error("wgmma emulation: only the 128-byte swizzle is modelled");
    }
    unsigned short at(unsigned address) const
    {
        const unsigned swizzled = address ^ (((address >> 7) & 7u) << 4);
        unsigned short v;
        std::memcpy(&v, g_shared_base + swizzled, 2);
        return v;
    }
    /* The bits of K-major element (row, k) of `Bytes` bytes (an 8-bit one in the low byte). */
    template <int Bytes>
    unsigned kmajor(int row, int k) const
    {
        const unsigned address = start + row / 8 * sbo + row % 8 * 128 + Bytes * k;
        const unsigned short pair = at(address & ~1u);   /* the swizzle moves address bits 4-6 only */
        return address & 1u ? pair >> 8 : pair;
    }
    unsigned short nmajor(int k, int n) const
    {
        return at(start + n / 64 * lbo + k / 8 * sbo + k % 8 * 128 + 2 * (n % 64));
    }
};

/* An operand type's element size, and the value of an element's bits (higher bits ignored). */
template <class Type>
constexpr int kElementBytes = 2;
template <>
constexpr int kElementBytes<wg_e4m3> = 1;
template <class Type>
float decode(unsigned bits);
template <>
inline float decode<wg_fp16>(unsigned bits) { return fmha_fp16_to_float((unsigned short)bits); }
template <>
inline float decode<wg_bf16>(unsigned bits) { return fmha_bf16_to_float((unsigned short)bits); }
template <>
inline float decode<wg_e4m3>(unsigned bits) { return fmha_fp8_e4m3fn_to_float((unsigned char)bits); }

/* Where this thread's accumulator element i sits in the 64 x N result. */
inline void d_position(int i, int& row, int& col)
{
    const int t = (int)(threadIdx.x % 128u), lane = t % 32;
    row = 16 * (t / 32) + lane / 4 + 8 * ((i / 2) % 2);
    col = 8 * (i / 4) + 2 * (lane % 4) + i % 2;
}

inline std::vector<unsigned>& a_slots()
{
    static std::vector<unsigned> slots;
    if (slots.size() < 4 * blockDim.x) slots.resize(4 * blockDim.x);
    return slots;
}

/* d[i] (+)= sum over k < K of a(row, k) b(k, col) for this thread's accumulator elements (the
   instruction's arithmetic, whatever the operand types). */
template <int N, int K, class A, class B>
void accumulate_products(float* d, int accumulate, const A& a, const B& b)
{
    for (int i = 0; i < N / 2; ++i) {
        int row, col;
        d_position(i, row, col);
        float acc = accumulate ? d[i] : 0.f;
        for (int k = 0; k < K; ++k) acc = std::fma(a(row, k), b(k, col), acc);
        d[i] = acc;
    }
}

/* An A operand from registers: every thread of the warpgroup publishes its 4 words, then
   word(row, q, upper) reads the word of the warpgroup's thread that holds that row (rows 16 w ..
   of warp w; lane 4 (r % 8) + q; words r >= 8 and the upper k half at + 1 and + 2). The
   destructor meets the warpgroup again, so the slots are not overwritten while others read them. */
struct RegisterA {
    std::vector<unsigned>& slots = a_slots();
    const unsigned group = threadIdx.x & ~127u;
    explicit RegisterA(const unsigned* a)
    {
        std::memcpy(&slots[4 * threadIdx.x], a, 16);
        fmha_emu::group_barrier(128, "wgmma register operand");
    }
    /* q: the lane's k quarter (k16: (k % 8) / 2; k32: (k % 16) / 4); upper: k in the upper half */
    unsigned word(int row, int q, bool upper) const
    {
        const int r = row % 16;
        return slots[4 * (group + 32 * (row / 16) + 4 * (r % 8) + q) + (r >= 8) + 2 * upper];
    }
    ~RegisterA() noexcept(false) { fmha_emu::group_barrier(128, "wgmma register operand"); }   /* may report a divergence */
};

template <class Type, int N>
struct WgmmaOps {
    static constexpr int kBytes = kElementBytes<Type>, K = 32 / kBytes, kPerWord = 4 / kBytes;

    /* D (+)= A B, A and B K-major in shared memory. */
    static void ss(float* d, unsigned long long a, unsigned long long b, int accumulate)
    {
        const Descriptor da(a), db(b);
        accumulate_products<N, K>(d, accumulate,
                                  [&](int row, int k) { return decode<Type>(da.kmajor<kBytes>(row, k)); },
                                  [&](int k, int col) { return decode<Type>(db.kmajor<kBytes>(col, k)); });
    }
    /* D (+)= A B, A in registers, B in shared memory: N-major (16-bit) or K-major (e4m3). */
    static void rs(float* d, const unsigned* a, unsigned long long b, int accumulate)
    {
        const Descriptor db(b);   /* before the exchange: its error must not unwind through ~RegisterA */
        const RegisterA ra(a);
        accumulate_products<N, K>(
            d, accumulate,
            [&](int row, int k) {
                const unsigned word = ra.word(row, k % (K / 2) / kPerWord, k >= K / 2);
                return decode<Type>(word >> 8 * kBytes * (k % kPerWord));
            },
            [&](int k, int col) { return decode<Type>(kBytes == 2 ? db.nmajor(k, col) : db.kmajor<1>(col, k)); });
    }
};

inline void wgmma_fence() {}
inline void wgmma_commit() {}
template <int Pending>
inline void wgmma_wait() {}
template <int N>
inline void touch_registers(float (&)[N]) {}
inline void fence_async_shared() {}

/* fp8 helpers, as fmha_wgmma.h's GPU versions: pack_e4m3x4 (cvt.rn.satfinite.e4m3x2.f32, twice)
   and byte_perm (prmt, selector nibbles 0..7: the sign-replicating nibbles are not modelled). */
inline unsigned pack_e4m3x4(float x0, float x1, float x2, float x3)
{
    const auto code = [](float x) { return fmha_emu::float_to_e4m3(x, false, true); };   /* e4m3fn, satfinite */
    return code(x0) | code(x1) << 8 | code(x2) << 16 | code(x3) << 24;
}

inline unsigned byte_perm(unsigned a, unsigned b, unsigned selector)
{
    const unsigned long long pair = a | (unsigned long long)b << 32;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)(pair >> 8 * ((selector >> 4 * i) & 7) & 0xffu) << 8 * i;
    return r;
}

}  // namespace wgmma_emu
}  // namespace fmha

#endif /* FMHA_WGMMA_EMULATION_H */
