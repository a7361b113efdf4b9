/* fmha_cpu_emulation.h: run a kernel on the CPU, for tests on machines without a GPU.

   Included by fmha_port.h under -DFMHA_CPU_EMULATION (g++ -std=c++20). Every GPU thread of a
   block is a fiber (ucontext); a barrier switches back to a scheduler that resumes the block's
   threads in turn, and a shuffle is a block-wide exchange between two barriers. Blocks run one
   after another. The scheduler checks that every live thread reaches each barrier (a barrier
   or shuffle under divergent control flow raises an error instead of hanging). Speed is not
   a goal: tests use tiny problems. */
#ifndef FMHA_CPU_EMULATION_H
#define FMHA_CPU_EMULATION_H

#include <ucontext.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <vector>

#define __global__
#define __shared__ static
#define FMHA_DEVICE inline
#define FMHA_LAUNCH_BOUNDS(threads)
#define FMHA_WAVE_SIZE 32

struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct fmha_dim3 { unsigned int x = 0, y = 0, z = 0; };
inline fmha_dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace fmha_emu {

enum class State { runnable, at_barrier, done };

struct Block {
    std::function<void()> body;
    std::vector<ucontext_t> fibers;
    std::vector<std::vector<char>> stacks;
    std::vector<State> state;
    std::vector<float> exchange;
    ucontext_t scheduler;
    unsigned current = 0;
};

inline Block* g_block = nullptr;

inline void barrier()
{
    Block& b = *g_block;
    const unsigned me = b.current;
    b.state[me] = State::at_barrier;
    swapcontext(&b.fibers[me], &b.scheduler);
}

inline void fiber_entry()
{
    g_block->body();
    g_block->state[g_block->current] = State::done;  /* returning resumes uc_link: the scheduler */
}

/* Runs kernel(params) on grid (gx, gy, gz) with `threads` threads per block. */
template <class Params>
void run_grid(void (*kernel)(Params), const Params& params, unsigned gx, unsigned gy, unsigned gz, unsigned threads)
{
    constexpr size_t kStackBytes = 256 * 1024;
    Block b;
    b.body = [&] { kernel(params); };
    b.fibers.resize(threads);
    b.stacks.assign(threads, std::vector<char>(kStackBytes));
    b.state.resize(threads);
    b.exchange.resize(threads);
    g_block = &b;
    blockDim = {threads, 1, 1};
    gridDim = {gx, gy, gz};
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx = {x, y, z};
                for (unsigned t = 0; t < threads; ++t) {
                    getcontext(&b.fibers[t]);
                    b.fibers[t].uc_stack.ss_sp = b.stacks[t].data();
                    b.fibers[t].uc_stack.ss_size = kStackBytes;
                    b.fibers[t].uc_link = &b.scheduler;
                    makecontext(&b.fibers[t], fiber_entry, 0);
                    b.state[t] = State::runnable;
                }
                for (;;) {
                    for (unsigned t = 0; t < threads; ++t) {
                        if (b.state[t] == State::done) continue;
                        b.state[t] = State::runnable;
                        b.current = t;
                        threadIdx = {t, 0, 0};
                        swapcontext(&b.scheduler, &b.fibers[t]);
                    }
                    unsigned done = 0;
                    for (State s : b.state) done += s == State::done;
                    if (done == threads) break;
                    if (done != 0) {
                        g_block = nullptr;
                        throw std::runtime_error("divergent barrier: some threads exited while others wait");
                    }
                }
            }
    g_block = nullptr;
}

}  // namespace fmha_emu

inline void fmha_barrier() { fmha_emu::barrier(); }

inline float fmha_shfl_xor(float v, int lane_mask)
{
    std::vector<float>& exchange = fmha_emu::g_block->exchange;
    const unsigned me = threadIdx.x;
    exchange[me] = v;
    fmha_emu::barrier();
    const float other = exchange[me ^ (unsigned)lane_mask];
    fmha_emu::barrier();
    return other;
}

inline float fmha_bits_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned int fmha_float_as_bits(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float fmha_fp16_to_float(unsigned short bits) { return (float)__builtin_bit_cast(_Float16, bits); }
inline unsigned short fmha_float_to_fp16(float f) { return __builtin_bit_cast(unsigned short, (_Float16)f); }

namespace fmha_emu {

/* The e4m3 code nearest to x, ties to the even code, as the emulated matrix-unit conversions
   (cvt.rn.satfinite.e4m3x2.f32, v_cvt_pk_fp8_f32) produce it. fnuz: bias 8, max 240, NaN 0x80,
   no -0; fn: bias 7, max 448, NaN 0x7f. A magnitude that rounds past the max becomes the max
   with x's sign when `satfinite`, else NaN. */
inline unsigned float_to_e4m3(float x, bool fnuz, bool satfinite)
{
    const int bias = fnuz ? 8 : 7;
    const unsigned nan = fnuz ? 0x80u : 0x7fu;
    if (std::isnan(x)) return nan;
    const float mag = std::fabs(x);
    int e;
    std::frexp(mag, &e);                                        /* mag = f 2^e, f in [0.5, 1) */
    const int binade = e - 1 > 1 - bias ? e - 1 : 1 - bias;     /* subnormals share the lowest */
    const float r = std::nearbyint(std::ldexp(mag, 3 - binade)); /* 3 mantissa bits; ties to even */
    const float rounded = std::ldexp(r, binade - 3);
    unsigned code = 0;
    if (rounded > (fnuz ? 240.f : 448.f)) {
        if (!satfinite) return nan;
        code = fnuz ? 0x7fu : 0x7eu;
    } else if (rounded > 0) {
        std::frexp(rounded, &e);                                /* rounding may reach the next binade */
        code = e - 1 >= 1 - bias ? (unsigned)(e - 1 + bias) << 3 | ((unsigned)std::ldexp(rounded, 4 - e) - 8u)
                                 : (unsigned)std::ldexp(rounded, 3 - (1 - bias));
    }
    return std::signbit(x) && (code != 0 || !fnuz) ? code | 0x80u : code;
}

}  // namespace fmha_emu

#endif /* FMHA_CPU_EMULATION_H */
