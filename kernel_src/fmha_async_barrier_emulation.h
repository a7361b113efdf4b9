/* fmha_async_barrier_emulation.h: fmha_async_barrier.h's mbarriers, named barriers and register
   reallocation on the CPU emulation (FMHA_CPU_EMULATION, fmha_cpu_emulation.h), with the
   semantics documented there, so warp-specialised kernels run in the CPU tests.

   A thread that has to wait is a suspended fiber; the arrival that completes an mbarrier phase or
   a named barrier generation wakes its waiters. mbarrier_arrive_after_copies arrives now and hands
   the thread's emulated cp.async copies, still in flight (fmha_cpu_emulation.h), to the phase: they
   land when a thread's mbarrier_wait sees that phase complete, so a consumer that skips its wait
   reads the stage's old contents. Misuse raises std::runtime_error (out of
   fmha_emu::run_grid) instead of going unnoticed:
   - arriving on, or waiting for, an mbarrier this block has not initialised (__shared__ is static
     storage here and outlives blocks, so the check keeps its own record per block);
   - over-arrival: an mbarrier completes phase k + 1 before a thread that waited for phase k has
     resumed. That thread would find its parity again and miss phase k (on the GPU: a hang, or a
     stage overwritten under its readers): the phases got more arrivals than they expect;
   - a named barrier id outside 1..15, a count that is not a positive multiple of 32 within the
     block, participants of one generation giving different counts;
   - deadlock: the scheduler's report names the mbarrier (phase, arrivals) or named barrier
     (arrivals) each stuck thread waits for.
   Named barriers count threads, where the GPU counts 32 per warp: every lane of a warp must call
   them, as the .aligned instructions require. */
#ifndef FMHA_ASYNC_BARRIER_EMULATION_H
#define FMHA_ASYNC_BARRIER_EMULATION_H

#if !defined(FMHA_CPU_EMULATION)
#error "fmha_async_barrier_emulation.h is for -DFMHA_CPU_EMULATION builds"
#endif

#include "fmha_cpu_emulation.h"

namespace fmha {

/* 8 bytes, like the GPU's, so shared-memory layouts have the same size in both builds. */
struct alignas(8) MBarrier {
    unsigned long long arrivals : 20;   /* per phase (PTX: 1 .. 2^20 - 1) */
    unsigned long long arrived : 20;    /* in the current phase */
    unsigned long long phase : 24;      /* the current phase, mod 2^24 (even: parities stay exact) */
};
static_assert(sizeof(MBarrier) == 8, "an mbarrier is 8 bytes of shared memory");

namespace async_emu {

using fmha_emu::fail;

constexpr unsigned kPhaseMask = (1u << 24) - 1;

struct NamedBarrier {
    unsigned expected, arrived, generation;
};

/* The current block's initialised mbarriers and named barriers (index: id). */
/* Copies attached to an mbarrier phase by mbarrier_arrive_after_copies, in phase order. */
struct AttachedCopies {
    const MBarrier* bar;
    unsigned phase;
    std::vector<fmha_emu::CopyInFlight> copies;
};

/* An mbarrier's transaction count: bytes its current phase still waits for (expect_tx adds,
   tensor copies complete). */
struct PendingBytes {
    const MBarrier* bar;
    long long bytes;
};

struct BlockState {
    unsigned long long serial;
    std::vector<const MBarrier*> mbarriers;
    NamedBarrier named[16];
    std::vector<AttachedCopies> attached;
    std::vector<PendingBytes> pending;
};


inline BlockState& block_state()
{
    static BlockState state{};
    if (state.serial != fmha_emu::g_block_serial) state = BlockState{fmha_emu::g_block_serial, {}, {}};
    return state;
}

inline long long& pending_bytes(const MBarrier* bar)
{
    for (PendingBytes& p : block_state().pending)
        if (p.bar == bar) return p.bytes;
    block_state().pending.push_back({bar, 0});
    return block_state().pending.back().bytes;
}

/* The phase completes once its arrivals are made and its transaction count is back to zero. */
inline void complete_if_done(MBarrier& m)
{
    if (m.arrived < m.arrivals || pending_bytes(&m) != 0) return;
    m.arrived = 0;
    ++m.phase;
    fmha_emu::wake(&m);   /* every waiter waits for the phase just completed */
}

inline bool is_initialised(const MBarrier* bar)
{
    for (const MBarrier* known : block_state().mbarriers)
        if (known == bar) return true;
    return false;
}

inline MBarrier& initialised(MBarrier* bar, const char* op)
{
    if (!is_initialised(bar))
        fail("%s by thread %u on mbarrier %p, which this block has not initialised (mbarrier_init)", op, threadIdx.x,
             (void*)bar);
    return *bar;
}

inline void describe_mbarrier(const void* object, unsigned phase, char* text, size_t n)
{
    const MBarrier& bar = *(const MBarrier*)object;
    std::snprintf(text, n, "wait on mbarrier %p for phase %u (parity %u) to complete, %u of %u arrivals made", object,
                  phase, phase % 2, (unsigned)bar.arrived, (unsigned)bar.arrivals);
}

inline void describe_named(const void* object, unsigned, char* text, size_t n)
{
    const NamedBarrier& nb = *(const NamedBarrier*)object;
    std::snprintf(text, n, "wait at named barrier %d, %u of %u threads arrived", (int)(&nb - block_state().named),
                  nb.arrived, nb.expected);
}

/* One arrival at named barrier `id`; returns the generation it arrived in. */
inline unsigned named_arrival(int id, int threads, const char* op)
{
    if (id < 1 || id > 15) fail("%s by thread %u: id %d is not in 1..15", op, threadIdx.x, id);
    if (threads <= 0 || threads % 32 != 0 || (unsigned)threads > blockDim.x)
        fail("%s by thread %u: %d threads is not a positive multiple of 32 within the block of %u", op, threadIdx.x,
             threads, blockDim.x);
    NamedBarrier& nb = block_state().named[id];
    if (nb.arrived == 0)
        nb.expected = (unsigned)threads;
    else if (nb.expected != (unsigned)threads)
        fail("named barrier %d count mismatch: thread %u arrives for %d threads, while %u arrived for %u", id,
             threadIdx.x, threads, nb.arrived, nb.expected);
    const unsigned generation = nb.generation;
    if (++nb.arrived == nb.expected) {
        nb.arrived = 0;
        ++nb.generation;
        fmha_emu::wake(&nb);   /* its syncers all wait for this generation */
    }
    return generation;
}

}  // namespace async_emu

/* By one thread; a block barrier publishes it. */
inline void mbarrier_init(MBarrier* bar, unsigned arrivals)
{
    if (arrivals == 0 || arrivals >= 1u << 20)
        async_emu::fail("mbarrier_init by thread %u: %u arrivals is not in 1 .. 2^20 - 1", threadIdx.x, arrivals);
    *bar = MBarrier{arrivals, 0, 0};
    if (!async_emu::is_initialised(bar)) async_emu::block_state().mbarriers.push_back(bar);
    async_emu::pending_bytes(bar) = 0;
}

inline void mbarrier_arrive(MBarrier* bar)
{
    MBarrier& m = async_emu::initialised(bar, "mbarrier_arrive");
    if (m.arrived == m.arrivals)
        async_emu::fail("mbarrier over-arrival: thread %u arrives on mbarrier %p, whose phase %u has all its %u "
                        "arrivals and waits for %lld bytes", threadIdx.x, (void*)bar, (unsigned)m.phase,
                        (unsigned)m.arrivals, async_emu::pending_bytes(bar));
    ++m.arrived;
    async_emu::complete_if_done(m);
}

inline void mbarrier_arrive_expect_tx(MBarrier* bar, unsigned bytes)
{
    async_emu::initialised(bar, "mbarrier_arrive_expect_tx");
    async_emu::pending_bytes(bar) += bytes;
    mbarrier_arrive(bar);
}

/* The emulation's tensor map (the test backend writes it, fmha_bench's geometry in words 0-12):
   global address, 4 dims (elements), strides of dims 1-3 (bytes), 4 box dims, element bytes. Rows
   of the box's first dim must be 128 bytes: they land 128-byte swizzled (16-byte chunk c of box row
   r at chunk c ^ r % 8), as the GPU's CU_TENSOR_MAP_SWIZZLE_128B writes them. The copies land when
   a waiter sees the phase complete (or at once with FMHA_EMU_EARLY_COPIES). */
inline void tma_load_4d(void* dst, const TensorMap* map, int c0, int c1, int c2, int c3, MBarrier* bar)
{
    MBarrier& m = async_emu::initialised(bar, "tma_load_4d");
    const unsigned long long* w = map->words;
    const unsigned long long elem = w[12], dims[4] = {w[1], w[2], w[3], w[4]}, stride[4] = {elem, w[5], w[6], w[7]};
    const unsigned long long box[4] = {w[8], w[9], w[10], w[11]};
    if (box[0] * elem != 128)
        async_emu::fail("tma_load_4d by thread %u: box rows of %llu bytes, the emulation's swizzle takes 128",
                        threadIdx.x, box[0] * elem);
    const int chunk_values = (int)(16 / elem);
    std::vector<fmha_emu::CopyInFlight> copies;
    int r = 0;
    for (unsigned long long i3 = 0; i3 < box[3]; ++i3)
        for (unsigned long long i2 = 0; i2 < box[2]; ++i2)
            for (unsigned long long i1 = 0; i1 < box[1]; ++i1, ++r)
                for (int chunk = 0; chunk < 8; ++chunk) {
                    const long long at[4] = {c0 + chunk * chunk_values, c1 + (long long)i1, c2 + (long long)i2,
                                             c3 + (long long)i3};
                    fmha_emu::CopyInFlight c{(unsigned char*)dst + r * 128 + ((chunk ^ (r % 8)) << 4), {}};
                    bool inside = true;
                    unsigned long long offset = 0;
                    for (int d = 0; d < 4; ++d) {
                        inside = inside && at[d] >= 0 && (unsigned long long)at[d] < dims[d];
                        offset += (unsigned long long)at[d] * stride[d];
                    }
                    if (inside) std::memcpy(c.bytes, (const unsigned char*)w[0] + offset, 16);
                    copies.push_back(c);
                }
    long long& pending = async_emu::pending_bytes(bar);
    if (pending < (long long)copies.size() * 16)
        async_emu::fail("tma_load_4d by thread %u: %lld bytes copied past the %lld its phase expects (expect_tx first)",
                        threadIdx.x, (long long)copies.size() * 16, pending);
    if (FMHA_EMU_EARLY_COPIES)
        for (const fmha_emu::CopyInFlight& c : copies) c.land();
    else
        async_emu::block_state().attached.push_back({bar, (unsigned)m.phase, std::move(copies)});
    pending -= r * 128;
    async_emu::complete_if_done(m);
}

/* The thread's copies in flight land when a waiter sees this phase complete (mbarrier_wait). */
inline void mbarrier_arrive_after_copies(MBarrier* bar)
{
    const MBarrier& m = async_emu::initialised(bar, "mbarrier_arrive_after_copies");
    std::vector<async_emu::AttachedCopies>& attached = async_emu::block_state().attached;
    attached.push_back({bar, (unsigned)m.phase, fmha_emu::take_copies()});
    mbarrier_arrive(bar);
}

/* Returns once the barrier's current phase has another parity than `parity` (PTX try_wait.parity):
   at once when the phase of that parity has completed, else when it completes. */
namespace async_emu {

/* Lands the copies attached to the completed phases of `bar` (the current phase is still open). */
inline void land_attached(const MBarrier* bar)
{
    std::vector<AttachedCopies>& attached = block_state().attached;
    size_t kept = 0;
    for (size_t i = 0; i < attached.size(); ++i) {
        if (attached[i].bar == bar && attached[i].phase != (unsigned)bar->phase)
            for (const fmha_emu::CopyInFlight& c : attached[i].copies) c.land();
        else if (kept++ != i)   /* (a self-move would empty the vector) */
            attached[kept - 1] = std::move(attached[i]);
    }
    attached.resize(kept);
}

}  // namespace async_emu

inline void mbarrier_wait(MBarrier* bar, unsigned parity)
{
    MBarrier& m = async_emu::initialised(bar, "mbarrier_wait");
    const unsigned phase = (unsigned)m.phase;
    if (phase % 2 == parity % 2) {
        fmha_emu::wait_on(bar, phase, async_emu::describe_mbarrier);
        if ((((unsigned)m.phase - phase) & async_emu::kPhaseMask) != 1)
            async_emu::fail("mbarrier over-arrival: mbarrier %p completed phases %u and %u before thread %u, waiting "
                            "for phase %u, resumed: more arrivals than a phase expects (%u)",
                            (void*)bar, phase, phase + 1, threadIdx.x, phase, (unsigned)m.arrivals);
    }
    async_emu::land_attached(bar);
}

inline void named_barrier_sync(int id, int threads)
{
    const unsigned generation = async_emu::named_arrival(id, threads, "named_barrier_sync");
    async_emu::NamedBarrier& nb = async_emu::block_state().named[id];
    if (nb.generation == generation) fmha_emu::wait_on(&nb, generation, async_emu::describe_named);
}

inline void named_barrier_arrive(int id, int threads) { async_emu::named_arrival(id, threads, "named_barrier_arrive"); }

template <int Registers>
inline void raise_registers()
{
    static_assert(Registers % 8 == 0 && Registers >= 24 && Registers <= 256, "setmaxnreg: a multiple of 8 in [24, 256]");
}

template <int Registers>
inline void lower_registers()
{
    static_assert(Registers % 8 == 0 && Registers >= 24 && Registers <= 256, "setmaxnreg: a multiple of 8 in [24, 256]");
}

}  // namespace fmha

#endif /* FMHA_ASYNC_BARRIER_EMULATION_H */
