/* selftest.hip: test-only kernels that misbehave on purpose (provider selftest:*, issue #6).
   They prove on a real GPU that a sweep survives a kernel that faults the context or never
   returns: the point gets a `crashed` / `timeout` row and the sweep goes on. Never dispatched
   for a real problem. */
#include "fmha_port.h"

struct SelftestParams {
    int* flag;          /* a device int that stays 0: the spin loop's exit condition */
    long long address;  /* where selftest_fault writes: an address no allocation holds */
};

/* Writes through a wild pointer: CUDA_ERROR_ILLEGAL_ADDRESS / a HIP memory access fault. */
extern "C" __global__ void selftest_fault(SelftestParams p)
{
    if (threadIdx.x == 0) *(volatile int*)(p.address) = 1;
}

/* Never returns: the flag is 0 and nothing writes it; volatile keeps the load in the loop. */
extern "C" __global__ void selftest_hang(SelftestParams p)
{
    while (*(volatile int*)p.flag != 0x5e1f7e57) {
    }
}

/* A device-side trap (what a failing device assert ends in): the context is lost. */
extern "C" __global__ void selftest_trap(SelftestParams p)
{
#if defined(__CUDACC__)
    if (*(volatile int*)p.flag == 0) __trap();
#else
    if (*(volatile int*)p.flag == 0) __builtin_trap();
#endif
}
