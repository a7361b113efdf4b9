/* fmha_amd_matrix.h: the AMD matrix-core primitives of fmha_fwd_mfma.hip, one wave-level
   D = A B + C (fp32 accumulate, 16-bit or fp8 inputs) per instruction family, and their CPU
   emulation.

     matrix_mfma32      v_mfma_f32_32x32x8{f16,bf16_1k}   CDNA2/3/4 (gfx90a, gfx942, gfx950), wave64
     matrix_mfma16      v_mfma_f32_16x16x16{f16,bf16_1k}  CDNA2/3/4, wave64
     matrix_wmma_gfx11  v_wmma_f32_16x16x16_{f16,bf16}    RDNA3 (gfx11), wave32
     matrix_wmma_gfx12  the same names, RDNA4 layout      RDNA4 (gfx12), wave32
     matrix_mfma32_fp8  v_mfma_f32_32x32x16_fp8_fp8       CDNA3/4 (gfx940-942, gfx950), wave64
     matrix_mfma16_fp8  v_mfma_f32_16x16x32_fp8_fp8       CDNA3/4, wave64
   Element types amd_fp16 / amd_bf16 pack two floats into one register of two 16-bit values
   (round to nearest even) and choose the builtin; amd_fp8_e4m3fnuz / amd_fp8_e4m3fn pack four
   one-byte e4m3 values. The fp8 instructions read and write the arch's own e4m3: fnuz on
   gfx940-942, OCP fn on gfx950 (same opcodes and builtins; LLVM PR 106160); a format built for
   the other arch does not compile.

   Nothing here ever ran on an AMD GPU (none is available to this project): the builtins are
   compiled by clang for gfx90a/gfx942/gfx950/gfx1100/gfx1201 (gfx950 needs clang >= 20: CI uses
   Debian's clang-22, tests/test_mfma_compile.py) and the kernels are checked on
   the CPU emulation below, which implements the layouts literally.

   Fragment layouts: lane l, element e (A/B: 16-bit element e sits in bits 16*(e%2) of 32-bit
   register e/2; C/D: fp32 register e). M = N = kM, ab_mn(l) = l % kM is A's row and B's column.
     mfma32: A[l%32][4(l/32)+e], B[4(l/32)+e][l%32], e < 4;  D[8(e/4) + 4(l/32) + e%4][l%32], e < 16
     mfma16: A[l%16][4(l/16)+e], B[4(l/16)+e][l%16], e < 4;  D[4(l/16) + e][l%16], e < 4
     gfx11:  A[l%16][e], B[e][l%16], e < 16 (lanes 16-31 repeat lanes 0-15);  D[2e + l/16][l%16], e < 8
     gfx12:  A[l%16][k], B[k][l%16], k = 8(e/4) + 4(l/16) + e%4, e < 8;  D[8(l/16) + e][l%16], e < 8
   fp8 (element e is byte e%4 of 32-bit register e/4, e < 8):
     mfma32_fp8: A[l%32][8(l/32)+e], B[8(l/32)+e][l%32];  D as mfma32
     mfma16_fp8: A[l%16][8(l/16)+e], B[8(l/16)+e][l%16];  D as mfma16
   Source: AMD's Matrix Instruction Calculator (github.com/ROCm/amd_matrix_instruction_calculator,
   commit 2ef9189, `--matrix-layout` for cdna2/cdna3 v_mfma_f32_{32x32x8,16x16x16}_{f16,bf16(_1k)},
   cdna3 v_mfma_f32_{32x32x16,16x16x32}_fp8_fp8 (--csv, every byte),
   rdna3 and rdna4 v_wmma_f32_16x16x16_{f16,bf16} -w 32): every lane and register of A, B and D
   compared with these formulas, all equal. gfx950 (CDNA4) is absent from the calculator; LLVM
   gives it every gfx940 instruction (FeatureISAVersion9_5_Common extends 9_4's, llvm-project PR
   116307), so the CDNA3 layouts are assumed. tests/test_amd_matrix_emulated.py pins the
   emulation to the same table.
   A and B order K by the same function of (lane, e), so a product never depends on that order;
   only rows, columns and which lanes hold them matter to the kernel.

   Under FMHA_CPU_EMULATION a matrix op publishes the lane's A and B registers, meets the other
   threads at a block barrier, scatters every lane of its wave into A and B by the layout above,
   computes its own D registers and meets them again before the slots are reused (as
   fmha_mma_sync.h does for mma.sync). Operands that the layout says are replicated (gfx11 lanes
   16-31) but differ make the whole result NaN, so a kernel that does not replicate fails.
   The fp8 families go through their own scatter (bytes, and K = 2 M for mfma16_fp8); products
   of decoded fp8 values are summed in fp32 in k order, as for the 16-bit families.
   Needs fmha_port.h first. */
#ifndef FMHA_AMD_MATRIX_H
#define FMHA_AMD_MATRIX_H

namespace fmha {

/* ------------------------------------------------------------------ element types */
struct amd_fp16 {
    static constexpr bool kBf16 = false;
    static constexpr int kPScaleLog2 = 0;   /* P in [0, 1] as it is */
    typedef unsigned short storage;
    typedef amd_fp16 Out;
    static FMHA_DEVICE unsigned short bits(float x) { return fmha_float_to_fp16(x); }
    static FMHA_DEVICE float value(unsigned short b) { return fmha_fp16_to_float(b); }
    static FMHA_DEVICE unsigned pack(float lo, float hi) { return bits(lo) | (unsigned)bits(hi) << 16; }
};
struct amd_bf16 {
    static constexpr bool kBf16 = true;
    static constexpr int kPScaleLog2 = 0;   /* P in [0, 1] as it is */
    typedef unsigned short storage;
    typedef amd_bf16 Out;
    static FMHA_DEVICE unsigned short bits(float x) { return fmha_float_to_bf16(x); }
    static FMHA_DEVICE float value(unsigned short b) { return fmha_bf16_to_float(b); }
    static FMHA_DEVICE unsigned pack(float lo, float hi) { return bits(lo) | (unsigned)bits(hi) << 16; }
};

/* e4m3 inputs: the kernel reads `storage` and writes bf16 (`Out`: fp8 attention writes bf16, as
   dtypes.output_dtype says). P goes into P V as fp8 scaled by 2^kPScaleLog2, the largest power
   of two within the format's max (240 fnuz, 448 fn): P keeps its 4 significant bits down to
   2^-14 (unscaled: down to 2^-7 or 2^-6, and 0 below 2^-10); the scale is exact and folds into
   the softmax exponent.
   pack4 rounds four floats to nearest even into one register, the first in the low byte. */
template <bool Fnuz>
struct amd_fp8 {
    static constexpr bool kFnuz = Fnuz;
    static constexpr int kPScaleLog2 = Fnuz ? 7 : 8;
    typedef unsigned char storage;
    typedef amd_bf16 Out;
    static FMHA_DEVICE float value(unsigned short code)
    {
        return Fnuz ? fmha_fp8_e4m3fnuz_to_float((unsigned char)code) : fmha_fp8_e4m3fn_to_float((unsigned char)code);
    }
    static FMHA_DEVICE unsigned pack4(float a, float b, float c, float d);
};
typedef amd_fp8<true> amd_fp8_e4m3fnuz;
typedef amd_fp8<false> amd_fp8_e4m3fn;

FMHA_DEVICE unsigned short half_of(unsigned word, int e) { return (unsigned short)(e % 2 ? word >> 16 : word); }

/* Scheduling fences. Matrix ops touch no memory, so the compiler sinks them below later LDS
   loads and hoists those loads: a tile's fragment loads all went up front and spilled (gfx11
   hdim 64: 624 bytes of scratch). settle(x) ties the ops producing x to this point (an empty
   asm reading and writing x); sched_fence() then lets no instruction cross. Neither changes a
   result; both are no-ops under the emulation. */
#if defined(FMHA_CPU_EMULATION)
template <class V>
inline void settle(V&) {}
inline void sched_fence() {}
#else
template <class V>
FMHA_DEVICE void settle(V& v) { asm volatile("" : "+v"(v)); }
FMHA_DEVICE void sched_fence()
{
    asm volatile("" ::: "memory");
    __builtin_amdgcn_sched_barrier(0);
}
#endif

/* ------------------------------------------------------------------ fragment registers */
/* Fragments are vectors (clang's ext_vector_type on the GPU, GCC's vector_size in the
   emulation; both index with []) that go into the builtins whole, by bit casts. */
#if defined(FMHA_CPU_EMULATION)
#define FMHA_VECTOR(T, n) __attribute__((vector_size((n) * sizeof(T))))
#else
#define FMHA_VECTOR(T, n) __attribute__((ext_vector_type(n)))
#endif
typedef unsigned amd_u32x2 FMHA_VECTOR(unsigned, 2);
typedef unsigned amd_u32x4 FMHA_VECTOR(unsigned, 4);
typedef unsigned amd_u32x8 FMHA_VECTOR(unsigned, 8);
typedef float amd_f32x4 FMHA_VECTOR(float, 4);
typedef float amd_f32x8 FMHA_VECTOR(float, 8);
typedef float amd_f32x16 FMHA_VECTOR(float, 16);

/* ------------------------------------------------------------------ instruction families */
/* Each family: kWave lanes, an M x N x K = kM x kM x kK product, kAB 16-bit A/B elements in an
   AB vector of 32-bit registers and kC fp32 registers in a C vector per lane; ab_mn / ab_k /
   c_row / c_col: the layout above.

   The attention kernel multiplies S^T = K Q^T and then O^T = V^T P^T, so P^T goes from the C
   registers of the first product into the B registers of the second without a trip through
   LDS: c_col (a query) is B's column in both. to_b<E>(c, sub) rounds C registers to E and
   builds the B fragment of k-step `sub` (kM / kK k-steps per C tile); element e of that fragment
   then holds the C row (key) p_key(lane, e, sub), which is where the A operand (V^T) must take
   its element e from. p_key(lane, e, sub) = p_key(lane, 0, sub) + e: a lane's keys are
   consecutive. */
template <class Mx, class E>
FMHA_DEVICE typename Mx::AB b_from_c_registers(const typename Mx::C& c, int sub)
{
    typename Mx::AB b;
#pragma unroll
    for (int w = 0; w < Mx::kAB / 2; ++w) b[w] = E::pack(c[sub * Mx::kAB + 2 * w], c[sub * Mx::kAB + 2 * w + 1]);
    return b;
}

/* MFMA: C register 4 s + e of a lane is B element e of k-step s (row 8 s + 4 (l / 32) + e and
   k = 4 (l / 32) + e: the same lanes, the same order). */
struct matrix_mfma32 {
    static constexpr int kWave = 64, kM = 32, kK = 8, kAB = 4, kC = 16;
    typedef amd_u32x2 AB;
    typedef amd_f32x16 C;
    static FMHA_DEVICE int ab_mn(int lane) { return lane % 32; }
    static FMHA_DEVICE int ab_k(int lane, int e) { return 4 * (lane / 32) + e; }
    static FMHA_DEVICE int c_row(int lane, int r) { return 8 * (r / 4) + 4 * (lane / 32) + r % 4; }
    static FMHA_DEVICE int c_col(int lane) { return lane % 32; }
    static FMHA_DEVICE int p_key(int lane, int e, int sub) { return c_row(lane, sub * kAB + e); }
    template <class E>
    static FMHA_DEVICE AB to_b(const C& c, int sub) { return b_from_c_registers<matrix_mfma32, E>(c, sub); }
};

struct matrix_mfma16 {
    static constexpr int kWave = 64, kM = 16, kK = 16, kAB = 4, kC = 4;
    typedef amd_u32x2 AB;
    typedef amd_f32x4 C;
    static FMHA_DEVICE int ab_mn(int lane) { return lane % 16; }
    static FMHA_DEVICE int ab_k(int lane, int e) { return 4 * (lane / 16) + e; }
    static FMHA_DEVICE int c_row(int lane, int r) { return 4 * (lane / 16) + r; }
    static FMHA_DEVICE int c_col(int lane) { return lane % 16; }
    static FMHA_DEVICE int p_key(int lane, int e, int) { return c_row(lane, e); }
    template <class E>
    static FMHA_DEVICE AB to_b(const C& c, int sub) { return b_from_c_registers<matrix_mfma16, E>(c, sub); }
};

/* gfx11: a lane holds every other C row (2 r + l / 16) but B wants all 16 k of its column in
   both half-waves, so the half-waves swap their (rounded) values: 4 shuffles per C tile. */
struct matrix_wmma_gfx11 {
    static constexpr int kWave = 32, kM = 16, kK = 16, kAB = 16, kC = 8;
    typedef amd_u32x8 AB;
    typedef amd_f32x8 C;
    static FMHA_DEVICE int ab_mn(int lane) { return lane % 16; }
    static FMHA_DEVICE int ab_k(int, int e) { return e; }
    static FMHA_DEVICE int c_row(int lane, int r) { return 2 * r + lane / 16; }
    static FMHA_DEVICE int c_col(int lane) { return lane % 16; }
    static FMHA_DEVICE int p_key(int, int e, int) { return e; }
    template <class E>
    static FMHA_DEVICE AB to_b(const C& c, int)
    {
        const bool odd = (threadIdx.x % 32) >= 16;   /* this half-wave holds the odd rows */
        unsigned mine[4], other[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            mine[i] = E::pack(c[2 * i], c[2 * i + 1]);
            other[i] = fmha_float_as_bits(fmha_shfl_xor(fmha_bits_as_float(mine[i]), 16));
        }
        AB b;
#pragma unroll
        for (int w = 0; w < 8; ++w) {   /* rows 2w (even half-wave's register w), 2w + 1 (odd's) */
            const unsigned own = half_of(mine[w / 2], w), peer = half_of(other[w / 2], w);
            b[w] = odd ? peer | own << 16 : own | peer << 16;
        }
        return b;
    }
};

/* gfx12: C register e of a lane is row 8 (l / 16) + e; taken in that order as B elements, the
   lane's k = 8 (e / 4) + 4 (l / 16) + e % 4 maps one-to-one onto those rows, so the fragment is
   the C registers as they are and V^T follows p_key. */
struct matrix_wmma_gfx12 {
    static constexpr int kWave = 32, kM = 16, kK = 16, kAB = 8, kC = 8;
    typedef amd_u32x4 AB;
    typedef amd_f32x8 C;
    static FMHA_DEVICE int ab_mn(int lane) { return lane % 16; }
    static FMHA_DEVICE int ab_k(int lane, int e) { return 8 * (e / 4) + 4 * (lane / 16) + e % 4; }
    static FMHA_DEVICE int c_row(int lane, int r) { return 8 * (lane / 16) + r; }
    static FMHA_DEVICE int c_col(int lane) { return lane % 16; }
    static FMHA_DEVICE int p_key(int lane, int e, int) { return c_row(lane, e); }
    template <class E>
    static FMHA_DEVICE AB to_b(const C& c, int sub) { return b_from_c_registers<matrix_wmma_gfx12, E>(c, sub); }
};

/* fp8 MFMA: the C layouts of mfma32 / mfma16, 8 one-byte A/B elements per lane. B element e of
   k-step `sub` is C register 8 sub + e for mfma32_fp8 (keys 16 sub + 8 (e / 4) + 4 (l / 32) +
   e % 4). mfma16_fp8's k-step of 32 keys spans two C tiles of 16: element e < 4 is register e of
   the first, e >= 4 register e - 4 of the second (key 16 (e / 4) + 4 (l / 16) + e % 4), so its
   to_b takes both tiles and p_key counts from the first. Either way the lanes of one k-range hold
   the same keys, and each register's four keys are consecutive. */
struct matrix_mfma32_fp8 {
    static constexpr int kWave = 64, kM = 32, kK = 16, kAB = 8, kC = 16;
    typedef amd_u32x2 AB;
    typedef amd_f32x16 C;
    static FMHA_DEVICE int ab_mn(int lane) { return lane % 32; }
    static FMHA_DEVICE int ab_k(int lane, int e) { return 8 * (lane / 32) + e; }
    static FMHA_DEVICE int c_row(int lane, int r) { return matrix_mfma32::c_row(lane, r); }
    static FMHA_DEVICE int c_col(int lane) { return lane % 32; }
    static FMHA_DEVICE int p_key(int lane, int e, int sub) { return c_row(lane, sub * kAB + e); }
    template <class E>
    static FMHA_DEVICE AB to_b(const C& c, int sub)
    {
        AB b;
#pragma unroll
        for (int w = 0; w < kAB / 4; ++w) {
            const int r = sub * kAB + 4 * w;
            b[w] = E::pack4(c[r], c[r + 1], c[r + 2], c[r + 3]);
        }
        return b;
    }
};

struct matrix_mfma16_fp8 {
    static constexpr int kWave = 64, kM = 16, kK = 32, kAB = 8, kC = 4;
    typedef amd_u32x2 AB;
    typedef amd_f32x4 C;
    static FMHA_DEVICE int ab_mn(int lane) { return lane % 16; }
    static FMHA_DEVICE int ab_k(int lane, int e) { return 8 * (lane / 16) + e; }
    static FMHA_DEVICE int c_row(int lane, int r) { return 4 * (lane / 16) + r; }
    static FMHA_DEVICE int c_col(int lane) { return lane % 16; }
    static FMHA_DEVICE int p_key(int lane, int e, int) { return 16 * (e / 4) + c_row(lane, e % 4); }
    template <class E>
    static FMHA_DEVICE AB to_b(const C& first, const C& second)
    {
        AB b;
        b[0] = E::pack4(first[0], first[1], first[2], first[3]);
        b[1] = E::pack4(second[0], second[1], second[2], second[3]);
        return b;
    }
};

/* ------------------------------------------------------------------ D = A B + C */
#if defined(FMHA_CPU_EMULATION)
namespace amd_emu {

struct Slot {
    unsigned a[8], b[8];   /* the lane's A and B registers (at most 16 16-bit elements) */
};

inline Slot* slots()
{
    static std::vector<Slot> all;
    if (all.size() < blockDim.x) all.resize(blockDim.x);
    return all.data();
}

/* Scatters element e of every lane of the wave into matrix[row][col] (16-bit bits) by the
   layout; false when two lanes put different values into one entry or an entry stays unset. */
template <class Mx, bool IsA>
inline bool gather(unsigned short (&matrix)[Mx::kM][Mx::kM], unsigned base)
{
    bool set[Mx::kM][Mx::kM] = {};
    const Slot* s = slots();
    for (int lane = 0; lane < Mx::kWave; ++lane)
        for (int e = 0; e < Mx::kAB; ++e) {
            const unsigned short v = half_of((IsA ? s[base + lane].a : s[base + lane].b)[e / 2], e);
            const int mn = Mx::ab_mn(lane), k = Mx::ab_k(lane, e);
            const int row = IsA ? mn : k, col = IsA ? k : mn;
            if (set[row][col] && matrix[row][col] != v) return false;
            matrix[row][col] = v;
            set[row][col] = true;
        }
    for (int r = 0; r < (IsA ? Mx::kM : Mx::kK); ++r)
        for (int c = 0; c < (IsA ? Mx::kK : Mx::kM); ++c)
            if (!set[r][c]) return false;
    return true;
}

}  // namespace amd_emu

template <class E, class Mx>
inline void matrix_mma(Mx, typename Mx::C& c, const typename Mx::AB& a, const typename Mx::AB& b)
{
    amd_emu::Slot* s = amd_emu::slots();
    std::memcpy(s[threadIdx.x].a, &a, sizeof a);
    std::memcpy(s[threadIdx.x].b, &b, sizeof b);
    fmha_barrier();
    const unsigned lane = threadIdx.x % Mx::kWave, base = threadIdx.x - lane;
    unsigned short am[Mx::kM][Mx::kM], bm[Mx::kM][Mx::kM];   /* A [M][K], B [K][N] (K <= M) */
    const bool ok = amd_emu::gather<Mx, true>(am, base) && amd_emu::gather<Mx, false>(bm, base);
    for (int r = 0; r < Mx::kC; ++r) {
        const int row = Mx::c_row(lane, r), col = Mx::c_col(lane);
        float acc = c[r];
        for (int k = 0; k < Mx::kK; ++k) acc = std::fma(E::value(am[row][k]), E::value(bm[k][col]), acc);
        c[r] = ok ? acc : fmha_bits_as_float(0x7fc00000u);
    }
    fmha_barrier();
}

/* ------------------------------------------------------------------ fp8 (emulation) */
namespace amd_emu {

/* Operand bytes of one wave scattered by the layout (element e = byte e % 4 of register e / 4);
   K may exceed M. ok is false when two lanes put different bytes into one entry or one stays unset. */
template <class Mx>
struct ByteOperands {
    unsigned char a[Mx::kM][Mx::kK], b[Mx::kK][Mx::kM];
    bool ok = true;

    explicit ByteOperands(unsigned base)
    {
        bool a_set[Mx::kM][Mx::kK] = {}, b_set[Mx::kK][Mx::kM] = {};
        const Slot* s = slots();
        for (int lane = 0; lane < Mx::kWave; ++lane)
            for (int e = 0; e < Mx::kAB; ++e) {
                const int mn = Mx::ab_mn(lane), k = Mx::ab_k(lane, e), shift = 8 * (e % 4);
                put(a[mn][k], a_set[mn][k], (unsigned char)(s[base + lane].a[e / 4] >> shift));
                put(b[k][mn], b_set[k][mn], (unsigned char)(s[base + lane].b[e / 4] >> shift));
            }
        for (int m = 0; m < Mx::kM; ++m)
            for (int k = 0; k < Mx::kK; ++k) ok = ok && a_set[m][k] && b_set[k][m];
    }

    void put(unsigned char& entry, bool& set, unsigned char v)
    {
        ok = ok && !(set && entry != v);
        entry = v;
        set = true;
    }
};

template <class E, class Mx>
inline void mma_fp8(typename Mx::C& c, const typename Mx::AB& a, const typename Mx::AB& b)
{
    Slot* s = slots();
    std::memcpy(s[threadIdx.x].a, &a, sizeof a);
    std::memcpy(s[threadIdx.x].b, &b, sizeof b);
    fmha_barrier();
    const unsigned lane = threadIdx.x % Mx::kWave;
    const ByteOperands<Mx> m(threadIdx.x - lane);
    for (int r = 0; r < Mx::kC; ++r) {
        const int row = Mx::c_row(lane, r), col = Mx::c_col(lane);
        float acc = c[r];
        for (int k = 0; k < Mx::kK; ++k) acc = std::fma(E::value(m.a[row][k]), E::value(m.b[k][col]), acc);
        c[r] = m.ok ? acc : fmha_bits_as_float(0x7fc00000u);
    }
    fmha_barrier();
}

}  // namespace amd_emu

/* v_cvt_pk_fp8_f32 as the kernel uses it, into the arch's e4m3. A value rounding past the max
   becomes NaN: the kernel never converts one (P <= 2^kPScaleLog2), and the hardware's overflow
   handling is not modelled. */
template <bool Fnuz>
inline unsigned amd_fp8<Fnuz>::pack4(float a, float b, float c, float d)
{
    const auto code = [](float x) { return fmha_emu::float_to_e4m3(x, Fnuz, false); };
    return code(a) | code(b) << 8 | code(c) << 16 | code(d) << 24;
}

template <class E>
inline void matrix_mma(matrix_mfma32_fp8, amd_f32x16& c, const amd_u32x2& a, const amd_u32x2& b)
{
    amd_emu::mma_fp8<E, matrix_mfma32_fp8>(c, a, b);
}
template <class E>
inline void matrix_mma(matrix_mfma16_fp8, amd_f32x4& c, const amd_u32x2& a, const amd_u32x2& b)
{
    amd_emu::mma_fp8<E, matrix_mfma16_fp8>(c, a, b);
}

#elif defined(FMHA_HIP)
typedef _Float16 amd_f16x4 __attribute__((ext_vector_type(4)));
typedef _Float16 amd_f16x8 __attribute__((ext_vector_type(8)));
typedef _Float16 amd_f16x16 __attribute__((ext_vector_type(16)));
typedef short amd_i16x4 __attribute__((ext_vector_type(4)));
typedef short amd_i16x8 __attribute__((ext_vector_type(8)));
typedef short amd_i16x16 __attribute__((ext_vector_type(16)));

/* fp16 builtins take _Float16 vectors, the bf16 ones short vectors: the fragment's bits, cast. */
#define FMHA_AMD_MMA(builtin, T, ...) \
    c = builtin(__builtin_bit_cast(T, a), __builtin_bit_cast(T, b), c __VA_OPT__(, ) __VA_ARGS__)

/* Each builtin exists on its arch only: a family instantiated for another arch is an error on
   the device; the host pass of a HIP compile emits no device code and gets an empty body. */
template <class E>
struct amd_wrong_arch { static constexpr bool value = false; };
#if defined(__HIP_DEVICE_COMPILE__)
#define FMHA_AMD_NOT_HERE(family) static_assert(amd_wrong_arch<E>::value, family " is not available on this arch")
#else
#define FMHA_AMD_NOT_HERE(family) (void)0
#endif

template <class E>
FMHA_DEVICE void matrix_mma(matrix_mfma32, amd_f32x16& c, amd_u32x2 a, amd_u32x2 b)
{
#if defined(__GFX9__)
    if constexpr (E::kBf16)
        FMHA_AMD_MMA(__builtin_amdgcn_mfma_f32_32x32x8bf16_1k, amd_i16x4, 0, 0, 0);
    else
        FMHA_AMD_MMA(__builtin_amdgcn_mfma_f32_32x32x8f16, amd_f16x4, 0, 0, 0);
#else
    FMHA_AMD_NOT_HERE("MFMA (CDNA)");
#endif
}
template <class E>
FMHA_DEVICE void matrix_mma(matrix_mfma16, amd_f32x4& c, amd_u32x2 a, amd_u32x2 b)
{
#if defined(__GFX9__)
    if constexpr (E::kBf16)
        FMHA_AMD_MMA(__builtin_amdgcn_mfma_f32_16x16x16bf16_1k, amd_i16x4, 0, 0, 0);
    else
        FMHA_AMD_MMA(__builtin_amdgcn_mfma_f32_16x16x16f16, amd_f16x4, 0, 0, 0);
#else
    FMHA_AMD_NOT_HERE("MFMA (CDNA)");
#endif
}
template <class E>
FMHA_DEVICE void matrix_mma(matrix_wmma_gfx11, amd_f32x8& c, amd_u32x8 a, amd_u32x8 b)
{
#if defined(__GFX11__)
    if constexpr (E::kBf16)
        FMHA_AMD_MMA(__builtin_amdgcn_wmma_f32_16x16x16_bf16_w32, amd_i16x16);
    else
        FMHA_AMD_MMA(__builtin_amdgcn_wmma_f32_16x16x16_f16_w32, amd_f16x16);
#else
    FMHA_AMD_NOT_HERE("WMMA of gfx11");
#endif
}
template <class E>
FMHA_DEVICE void matrix_mma(matrix_wmma_gfx12, amd_f32x8& c, amd_u32x4 a, amd_u32x4 b)
{
#if defined(__GFX12__)
    if constexpr (E::kBf16)
        FMHA_AMD_MMA(__builtin_amdgcn_wmma_f32_16x16x16_bf16_w32_gfx12, amd_i16x8);
    else
        FMHA_AMD_MMA(__builtin_amdgcn_wmma_f32_16x16x16_f16_w32_gfx12, amd_f16x8);
#else
    FMHA_AMD_NOT_HERE("WMMA of gfx12");
#endif
}

/* fp8: the arch's e4m3 (FMHA_AMD_FP8_FNUZ 1 on gfx940-942, 0 on gfx950; undefined without fp8
   MFMA). A kernel built for the other format fails here rather than misreading its bytes. */
#if defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__)
#define FMHA_AMD_FP8_FNUZ 1
#elif defined(__gfx950__)
#define FMHA_AMD_FP8_FNUZ 0
#endif
#if defined(FMHA_AMD_FP8_FNUZ)
#define FMHA_AMD_FP8_FORMAT_CHECK(fnuz) \
    static_assert((fnuz) == FMHA_AMD_FP8_FNUZ, "this fp8 format is not the arch's (gfx942: e4m3fnuz, gfx950: e4m3fn)")
#endif

template <bool Fnuz>
FMHA_DEVICE unsigned amd_fp8<Fnuz>::pack4(float a, float b, float c, float d)
{
#if defined(FMHA_AMD_FP8_FNUZ)
    FMHA_AMD_FP8_FORMAT_CHECK(Fnuz);
    const int low = __builtin_amdgcn_cvt_pk_fp8_f32(a, b, 0, false);   /* bytes 0, 1 */
    return (unsigned)__builtin_amdgcn_cvt_pk_fp8_f32(c, d, low, true); /* bytes 2, 3 */
#else
    typedef amd_fp8 E;
    FMHA_AMD_NOT_HERE("fp8 conversion (gfx940-942, gfx950)");
    return 0;
#endif
}

#define FMHA_AMD_MMA_FP8(builtin) \
    c = builtin(__builtin_bit_cast(long, a), __builtin_bit_cast(long, b), c, 0, 0, 0)

template <class E>
FMHA_DEVICE void matrix_mma(matrix_mfma32_fp8, amd_f32x16& c, amd_u32x2 a, amd_u32x2 b)
{
#if defined(FMHA_AMD_FP8_FNUZ)
    FMHA_AMD_FP8_FORMAT_CHECK(E::kFnuz);
    FMHA_AMD_MMA_FP8(__builtin_amdgcn_mfma_f32_32x32x16_fp8_fp8);
#else
    FMHA_AMD_NOT_HERE("fp8 MFMA (gfx940-942, gfx950)");
#endif
}
template <class E>
FMHA_DEVICE void matrix_mma(matrix_mfma16_fp8, amd_f32x4& c, amd_u32x2 a, amd_u32x2 b)
{
#if defined(FMHA_AMD_FP8_FNUZ)
    FMHA_AMD_FP8_FORMAT_CHECK(E::kFnuz);
    FMHA_AMD_MMA_FP8(__builtin_amdgcn_mfma_f32_16x16x32_fp8_fp8);
#else
    FMHA_AMD_NOT_HERE("fp8 MFMA (gfx940-942, gfx950)");
#endif
}
#else
#error "fmha_amd_matrix.h: AMD matrix instructions; build with HIP for gfx9/gfx11/gfx12 (or -DFMHA_CPU_EMULATION)"
#endif

}  // namespace fmha

#endif /* FMHA_AMD_MATRIX_H */
