/* fmha_cpu_emulation.h: run a kernel on the CPU, for tests on machines without a GPU.

   Included by fmha_port.h under -DFMHA_CPU_EMULATION (g++ -std=c++20). Every GPU thread of a
   block is a fiber (ucontext) that runs until it has to wait, then switches back to a scheduler
   that resumes the threads of a FIFO run queue. A waiting fiber records what it waits for:
   - a group barrier: every thread of its group (an aligned range of the block: the block for
     fmha_barrier(), the warp for shuffles and warp collectives, the warpgroup for wgmma's
     register operands) has arrived at a barrier of that group size;
   - a wake-up on an object (an mbarrier phase, a named barrier generation; see
     fmha_async_barrier_emulation.h), given by the thread that completes it.
   Emulated cp.async copies stay in flight until the synchronisation the GPU needs for them (see
   CopyInFlight). The thread that completes a wait queues the waiters in thread order, so the threads of a block
   barrier resume in order 0, 1, ... Each wait costs O(1) plus O(threads) per completion; blocks
   run one after another. Errors raise std::runtime_error from run_grid instead of hanging:
   a thread exits while others of its group wait at a group barrier, or reaches one after a thread
   of its group exited ("divergent barrier"); the threads of a group barrier are at different
   collectives (a shuffle meets an ldmatrix); the run queue empties while threads still wait
   ("deadlock", naming what each waits for); an exception a kernel thread throws. Speed is not a
   goal: tests use tiny problems. */
#ifndef FMHA_CPU_EMULATION_H
#define FMHA_CPU_EMULATION_H

#include <ucontext.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
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

/* Errors are printf-formatted (cheaper to compile into every kernel than string arithmetic). */
[[noreturn, gnu::format(printf, 1, 2)]] inline void fail(const char* format, ...)
{
    char text[1024];
    va_list args;
    va_start(args, format);
    std::vsnprintf(text, sizeof text, format, args);
    va_end(args);
    throw std::runtime_error(text);
}

/* "thread 5" or "threads 0-127". */
struct Threads {
    char text[32];
    Threads(unsigned first, unsigned last)
    {
        if (first == last)
            std::snprintf(text, sizeof text, "thread %u", first);
        else
            std::snprintf(text, sizeof text, "threads %u-%u", first, last);
    }
};

/* What a waiting fiber waits for: the group barrier `scope` of threads [base, base + size)
   (clamped to the block), or, when `object` is set, a wake() on it; describe(object, token,
   text, n) says what that is in a deadlock report. */
struct Wait {
    const char* scope;
    unsigned base, size;
    const void* object;
    unsigned token;
    void (*describe)(const void* object, unsigned token, char* text, size_t n);
};

enum class State { queued, waiting, done };

/* Arrivals at the group barriers of one group size, a counter per group. */
struct GroupArrivals {
    unsigned size;
    std::vector<unsigned> arrived;
};

struct Block {
    std::function<void()> body;
    unsigned threads = 0;
    std::vector<ucontext_t> fibers;
    char* stacks = nullptr;   /* left uninitialised: only the pages a fiber uses are touched */
    std::vector<State> state;
    std::vector<Wait> waits;
    std::vector<unsigned> queue;      /* a ring: a thread is queued at most once */
    unsigned head = 0, queued = 0, exited = 0;
    std::vector<GroupArrivals> groups;
    std::vector<float> exchange;
    std::vector<std::vector<struct CopyInFlight>> copies;   /* per thread: issued, not landed */
    std::exception_ptr error;         /* thrown by a kernel thread, rethrown by run_grid */
    ucontext_t scheduler;
    ~Block() { delete[] stacks; }
};

/* An emulated cp.async: its 16 bytes are read when it is issued and land in shared memory only
   when its thread waits for its copies (wait_copies), or when a thread sees the mbarrier phase they
   were attached to complete (fmha_async_barrier_emulation.h), or when its thread exits: a reader
   that skips the wait the GPU requires finds the old contents. */
struct CopyInFlight {
    unsigned char* dst;
    unsigned char bytes[16];
    void land() const { std::memcpy(dst, bytes, 16); }
};

inline Block* g_block = nullptr;
/* Blocks started so far, in every launch: state kept outside Block (fmha_async_barrier_emulation.h)
   resets when it changes. */
inline unsigned long long g_block_serial = 0;

inline unsigned group_end(const Block& b, unsigned base, unsigned size)
{
    return base + size < b.threads ? base + size : b.threads;
}

inline void make_runnable(Block& b, unsigned t)
{
    b.state[t] = State::queued;
    b.queue[(b.head + b.queued++) % b.threads] = t;
}

inline GroupArrivals& arrivals_of(Block& b, unsigned size)
{
    for (GroupArrivals& g : b.groups)
        if (g.size == size) return g;
    b.groups.push_back({size, std::vector<unsigned>((b.threads + size - 1) / size)});
    return b.groups.back();
}

/* The scope a waiting member of thread t's group of `size` is at (only called while one waits). */
inline const char* scope_waited_at(const Block& b, unsigned t, unsigned size)
{
    const unsigned base = t - t % size;
    for (unsigned u = base; u < group_end(b, base, size); ++u)
        if (b.state[u] == State::waiting && b.waits[u].object == nullptr && b.waits[u].size == size)
            return b.waits[u].scope;
    return "barrier";
}

/* A barrier of the calling thread's group of `size` threads (threads t - t % size .., fewer in a
   last partial group): returns once each of them has arrived at a group barrier of that size.
   `scope` names the collective; the group's threads must all be at the same one. */
inline void group_barrier(unsigned size, const char* scope)
{
    Block& b = *g_block;
    const unsigned me = threadIdx.x, base = me - me % size, end = group_end(b, base, size);
    if (b.exited != 0)
        for (unsigned t = base; t < end; ++t)
            if (b.state[t] == State::done)
                fail("divergent barrier: thread %u reaches a %s of %s after thread %u exited", me, scope,
                     Threads(base, end - 1).text, t);
    b.state[me] = State::waiting;
    b.waits[me] = Wait{scope, base, size, nullptr, 0, nullptr};
    unsigned& arrived = arrivals_of(b, size).arrived[me / size];
    if (++arrived == end - base) {
        arrived = 0;
        for (unsigned t = base; t < end; ++t) {
            if (std::strcmp(b.waits[t].scope, scope) != 0)
                fail("mismatched collectives: thread %u is at a %s while thread %u of %s is at a %s", t,
                     b.waits[t].scope, me, Threads(base, end - 1).text, scope);
            make_runnable(b, t);
        }
    }
    swapcontext(&b.fibers[me], &b.scheduler);
}

/* Suspends the calling thread until a wake() on `object`; `token` is the waiter's detail for
   `describe` (an mbarrier's phase). */
inline void wait_on(const void* object, unsigned token, void (*describe)(const void*, unsigned, char*, size_t))
{
    Block& b = *g_block;
    const unsigned me = threadIdx.x;
    b.state[me] = State::waiting;
    b.waits[me] = Wait{nullptr, 0, 0, object, token, describe};
    swapcontext(&b.fibers[me], &b.scheduler);
}

/* Queues, in thread order, every thread waiting on `object`. */
inline void wake(const void* object)
{
    Block& b = *g_block;
    for (unsigned t = 0; t < b.threads; ++t)
        if (b.state[t] == State::waiting && b.waits[t].object == object) make_runnable(b, t);
}

/* FMHA_EMU_EARLY_COPIES 1: every copy lands when it is issued, the earliest the GPU may land it,
   so a producer that refills a stage (or Q) before the consumers released it shows; the default,
   the latest landing, shows a reader that skips the wait the GPU requires. */
#ifndef FMHA_EMU_EARLY_COPIES
#define FMHA_EMU_EARLY_COPIES 0
#endif

/* A cp.async of 16 bytes from src (zeros when src is null) to dst; outside a block it lands at once. */
inline void issue_copy(void* dst, const void* src)
{
    CopyInFlight c{(unsigned char*)dst, {}};
    if (src) std::memcpy(c.bytes, src, 16);
    if (g_block == nullptr || FMHA_EMU_EARLY_COPIES)
        c.land();
    else
        g_block->copies[threadIdx.x].push_back(c);
}

/* The calling thread's copies in flight, handed over (to an mbarrier) and no longer its own. */
inline std::vector<CopyInFlight> take_copies()
{
    std::vector<CopyInFlight> taken;
    taken.swap(g_block->copies[threadIdx.x]);
    return taken;
}

inline void land_copies()
{
    if (g_block == nullptr) return;
    for (const CopyInFlight& c : take_copies()) c.land();
}

inline void exit_thread(Block& b)
{
    const unsigned me = threadIdx.x;
    land_copies();
    b.state[me] = State::done;
    ++b.exited;
    for (const GroupArrivals& g : b.groups)
        if (const unsigned waiting = g.arrived[me / g.size]) {
            const unsigned base = me - me % g.size;
            fail("divergent barrier: thread %u exited while %u of %s wait at a %s", me, waiting,
                 Threads(base, group_end(b, base, g.size) - 1).text, scope_waited_at(b, me, g.size));
        }
}

inline void fiber_entry()
{
    Block& b = *g_block;
    try {
        b.body();
        exit_thread(b);
    } catch (...) {
        b.error = std::current_exception();
    }
    /* returning resumes uc_link: the scheduler */
}

inline void waiting_for(Block& b, unsigned t, char* text, size_t n)
{
    const Wait& w = b.waits[t];
    if (b.state[t] == State::done)
        std::snprintf(text, n, "exited");
    else if (w.object != nullptr)
        w.describe(w.object, w.token, text, n);
    else
        std::snprintf(text, n, "wait at a %s of %s (%u arrived)", w.scope,
                      Threads(w.base, group_end(b, w.base, w.size) - 1).text,
                      arrivals_of(b, w.size).arrived[w.base / w.size]);
}

/* Consecutive threads waiting for the same thing share an entry. */
[[noreturn]] inline void report_deadlock(Block& b)
{
    char what[256], next[256];
    std::snprintf(what, sizeof what, "deadlock: no thread of block (%u, %u, %u) can make progress:", blockIdx.x,
                  blockIdx.y, blockIdx.z);
    std::string report = what;
    for (unsigned first = 0; first < b.threads;) {
        waiting_for(b, first, what, sizeof what);
        unsigned last = first;
        for (; last + 1 < b.threads; ++last) {
            waiting_for(b, last + 1, next, sizeof next);
            if (std::strcmp(next, what) != 0) break;
        }
        report += first == 0 ? " " : "; ";
        report += Threads(first, last).text;
        report += " ";
        report += what;
        first = last + 1;
    }
    throw std::runtime_error(report);
}

/* Runs kernel(params) on grid (gx, gy, gz) with `threads` threads per block. */
template <class Params>
void run_grid(void (*kernel)(Params), const Params& params, unsigned gx, unsigned gy, unsigned gz, unsigned threads)
{
    constexpr size_t kStackBytes = 256 * 1024;
    Block b;
    b.body = [&] { kernel(params); };
    b.threads = threads;
    b.fibers.resize(threads);
    b.stacks = new char[threads * kStackBytes];
    b.state.resize(threads);
    b.waits.resize(threads);
    b.queue.resize(threads);
    b.exchange.resize(threads);
    b.copies.resize(threads);
    struct Detach {
        ~Detach() { g_block = nullptr; }
    } detach;
    g_block = &b;
    blockDim = {threads, 1, 1};
    gridDim = {gx, gy, gz};
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx = {x, y, z};
                ++g_block_serial;
                b.head = b.queued = b.exited = 0;
                b.groups.clear();
                for (std::vector<CopyInFlight>& copies : b.copies) copies.clear();
                for (unsigned t = 0; t < threads; ++t) {
                    getcontext(&b.fibers[t]);
                    b.fibers[t].uc_stack.ss_sp = b.stacks + t * kStackBytes;
                    b.fibers[t].uc_stack.ss_size = kStackBytes;
                    b.fibers[t].uc_link = &b.scheduler;
                    makecontext(&b.fibers[t], fiber_entry, 0);
                    make_runnable(b, t);
                }
                while (b.queued != 0) {
                    const unsigned t = b.queue[b.head];
                    b.head = (b.head + 1) % threads;
                    --b.queued;
                    threadIdx = {t, 0, 0};
                    swapcontext(&b.scheduler, &b.fibers[t]);
                    if (b.error) std::rethrow_exception(b.error);
                }
                if (b.exited != threads) report_deadlock(b);
            }
}

}  // namespace fmha_emu

inline void fmha_barrier() { fmha_emu::group_barrier(blockDim.x, "block barrier"); }

/* An exchange among the caller's warp (threads t - t % 32 ..), or its 64-lane wave when the mask
   reaches across 32 lanes (AMD's wave64 kernels shuffle with masks up to 32), so other warps may
   be anywhere meanwhile. Every lane of that group calls it. */
inline float fmha_shfl_xor(float v, int lane_mask)
{
    unsigned size = 32;
    while (size <= (unsigned)lane_mask) size *= 2;
    std::vector<float>& exchange = fmha_emu::g_block->exchange;
    const unsigned me = threadIdx.x;
    exchange[me] = v;
    fmha_emu::group_barrier(size, "shuffle");
    const float other = exchange[me ^ (unsigned)lane_mask];
    fmha_emu::group_barrier(size, "shuffle");
    return other;
}

/* Whether p holds on any lane of the caller's warp (every lane calls it). */
inline bool fmha_warp_any(bool p)
{
    std::vector<float>& exchange = fmha_emu::g_block->exchange;
    const unsigned me = threadIdx.x, first = me - me % 32;
    exchange[me] = p ? 1.f : 0.f;
    fmha_emu::group_barrier(32, "vote");
    bool any = false;
    for (unsigned lane = 0; lane < 32; ++lane) any = any || exchange[first + lane] != 0.f;
    fmha_emu::group_barrier(32, "vote");
    return any;
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
