/* fmha_mma_sync.h: the warp-level tensor-core primitives of NVIDIA sm_80+ that the tensor-core
   kernels share (fmha_fwd_mma.hip, fmha_mla_decode.hip):
     Mma types mma_fp16 / mma_bf16: mma.sync m16n8k16 (row.col, fp32 accumulate) and the pack of
       two floats into one register of two 16-bit values (round to nearest even);
     ldmatrix_x4 / ldmatrix_x4_trans: four 8x8 matrices of 16-bit values from shared memory;
     copy16_async (cp.async, 16 bytes, zero fill when absent), commit_copies, wait_copies<N>;
     exp2_approx (ex2.approx.ftz), sync_warp (__syncwarp);
     swizzle<D>: where 16-byte chunk c of row r of a [rows][D] tile lives (c ^ r % 8, so the 8 rows
       one ldmatrix reads fall into 8 different bank groups; D / 8 must be a multiple of 8).
   Shared-memory operands are generic pointers; the conversion to shared addresses happens here.

   Under FMHA_CPU_EMULATION (tests without a GPU, see fmha_cpu_emulation.h) the same functions are
   emulated: a warp collective (ldmatrix, mma, sync_warp) publishes the lane's operands, meets the
   other lanes of its warp at a warp barrier, computes the lane's own result from its warp's
   operands and meets them again before the slots are reused. So every lane of a warp must run the
   same sequence of collectives, as on the GPU; other warps may be elsewhere meanwhile.
   The fragment layouts are those of the PTX ISA (mma.m16n8k16 with .f16/.bf16 operands):
   lane l = 4 g + q holds A[g][2q..2q+1], A[g+8][2q..], A[g][2q+8..], A[g+8][2q+8..] (4 registers),
   B[2q..2q+1][g], B[2q+8..2q+9][g] (2) and C[g][2q..2q+1], C[g+8][2q..2q+1] (4 floats).
   Needs fmha_port.h first. */
#ifndef FMHA_MMA_SYNC_H
#define FMHA_MMA_SYNC_H

namespace fmha {

template <int D>
FMHA_DEVICE int swizzle(int row, int chunk) { return row * D + ((chunk ^ (row & 7)) << 3); }

#if defined(FMHA_CUDA)
/* ------------------------------------------------------------------ PTX */
FMHA_DEVICE unsigned smem_address(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

/* `present` false: 16 zero bytes, nothing read. The ignore-src predicate form maps onto the copy's
   own predicate; a src-size operand (present ? 16 : 0) cost ~4 more instructions per copy. */
FMHA_DEVICE void copy16_async(void* dst, const void* src, bool present)
{
    asm volatile("{\n.reg .pred absent;\nsetp.eq.u32 absent, %2, 0;\n"
                 "cp.async.cg.shared.global [%0], [%1], 16, absent;\n}\n" ::"r"(smem_address(dst)), "l"(src),
                 "r"((unsigned)present));
}
FMHA_DEVICE void commit_copies() { asm volatile("cp.async.commit_group;\n" ::); }
template <int Pending>
FMHA_DEVICE void wait_copies() { asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending)); }

/* 2^x on the special-function unit, denormals flushed (P below 2^-126 is zero either way). */
FMHA_DEVICE float exp2_approx(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

FMHA_DEVICE void ldmatrix_x4(unsigned* r, const void* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}
FMHA_DEVICE void ldmatrix_x4_trans(unsigned* r, const void* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}

FMHA_DEVICE void sync_warp() { __syncwarp(); }

struct mma_fp16 {
    static FMHA_DEVICE void mma(float* c, const unsigned* a, const unsigned* b)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
    static FMHA_DEVICE unsigned pack(float lo, float hi)
    {
        unsigned r;
        asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    }
};
struct mma_bf16 {
    static FMHA_DEVICE void mma(float* c, const unsigned* a, const unsigned* b)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
    static FMHA_DEVICE unsigned pack(float lo, float hi)
    {
        unsigned r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    }
};

#elif defined(FMHA_CPU_EMULATION)
/* ------------------------------------------------------------------ CPU emulation */
namespace mma_emu {

struct Slot {
    const unsigned char* row;   /* ldmatrix: the row this lane addresses */
    unsigned a[4], b[2];        /* mma: this lane's A and B fragments */
};

inline Slot* slots()
{
    static std::vector<Slot> all;
    if (all.size() < blockDim.x) all.resize(blockDim.x);
    return all.data();
}

inline unsigned warp_base() { return threadIdx.x & ~31u; }
inline unsigned lane() { return threadIdx.x & 31u; }
inline unsigned short half_of(unsigned word, unsigned k) { return (unsigned short)(k % 2 ? word >> 16 : word); }

/* Matrix i of an x4 load comes from the rows that lanes 8i..8i+7 address. Plain: lane l gets
   row l / 4, elements 2 (l % 4) and + 1; transposed: elements (2 (l % 4), l / 4) and (+ 1, l / 4). */
inline void ldmatrix(unsigned* r, const void* p, bool trans)
{
    Slot* s = slots();
    s[threadIdx.x].row = (const unsigned char*)p;
    fmha_emu::group_barrier(32, "ldmatrix");
    const unsigned base = warp_base(), l = lane();
    for (unsigned i = 0; i < 4; ++i) {
        if (!trans) {
            std::memcpy(&r[i], s[base + 8 * i + l / 4].row + 4 * (l % 4), 4);
        } else {
            unsigned short lo, hi;
            std::memcpy(&lo, s[base + 8 * i + 2 * (l % 4)].row + 2 * (l / 4), 2);
            std::memcpy(&hi, s[base + 8 * i + 2 * (l % 4) + 1].row + 2 * (l / 4), 2);
            r[i] = lo | (unsigned)hi << 16;
        }
    }
    fmha_emu::group_barrier(32, "ldmatrix");
}

template <float (*Decode)(unsigned short)>
inline void mma_m16n8k16(float* c, const unsigned* a, const unsigned* b)
{
    Slot* s = slots();
    std::memcpy(s[threadIdx.x].a, a, sizeof s[0].a);
    std::memcpy(s[threadIdx.x].b, b, sizeof s[0].b);
    fmha_emu::group_barrier(32, "mma.sync");
    const unsigned base = warp_base(), g = lane() / 4, q = lane() % 4;
    for (unsigned e = 0; e < 4; ++e) {
        const unsigned row = g + 8 * (e / 2), col = 2 * q + e % 2;
        float acc = c[e];
        for (unsigned k = 0; k < 16; ++k) {
            const unsigned a_word = s[base + (row % 8) * 4 + (k % 8) / 2].a[(row >= 8) + 2 * (k >= 8)];
            const unsigned b_word = s[base + col * 4 + (k % 8) / 2].b[k >= 8];
            acc = std::fma(Decode(half_of(a_word, k)), Decode(half_of(b_word, k)), acc);
        }
        c[e] = acc;
    }
    fmha_emu::group_barrier(32, "mma.sync");
}

}  // namespace mma_emu

/* In flight until the thread waits for them (fmha_cpu_emulation.h); wait_copies<N> lands all of
   them, N included: a stricter wait than the GPU's never hides a missing one. */
inline void copy16_async(void* dst, const void* src, bool present) { fmha_emu::issue_copy(dst, present ? src : nullptr); }
inline void commit_copies() {}
template <int Pending>
inline void wait_copies() { fmha_emu::land_copies(); }
inline float exp2_approx(float x) { return std::exp2(x); }
inline void ldmatrix_x4(unsigned* r, const void* p) { mma_emu::ldmatrix(r, p, false); }
inline void ldmatrix_x4_trans(unsigned* r, const void* p) { mma_emu::ldmatrix(r, p, true); }
inline void sync_warp() { fmha_emu::group_barrier(32, "sync_warp"); }

struct mma_fp16 {
    static void mma(float* c, const unsigned* a, const unsigned* b)
    {
        mma_emu::mma_m16n8k16<fmha_fp16_to_float>(c, a, b);
    }
    static unsigned pack(float lo, float hi) { return fmha_float_to_fp16(lo) | (unsigned)fmha_float_to_fp16(hi) << 16; }
};
struct mma_bf16 {
    static void mma(float* c, const unsigned* a, const unsigned* b)
    {
        mma_emu::mma_m16n8k16<fmha_bf16_to_float>(c, a, b);
    }
    static unsigned pack(float lo, float hi) { return fmha_float_to_bf16(lo) | (unsigned)fmha_float_to_bf16(hi) << 16; }
};

#else
#error "fmha_mma_sync.h: NVIDIA mma.sync; build for sm_80 and newer (or -DFMHA_CPU_EMULATION for tests)"
#endif

}  // namespace fmha

#endif /* FMHA_MMA_SYNC_H */
