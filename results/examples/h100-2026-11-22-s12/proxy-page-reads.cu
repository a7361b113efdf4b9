// Proxy for paged decode reads: b64 x 8192 tokens, 8 KV heads x 128 dims fp16, HND cache.
// Kernel reads K and V tiles with cp.async (STAGES stages) and does nothing else.
// main() holds the variant list of the last run (proxy-page-reads-4-half-blocks.txt); runs 1-3 listed
// other heads / tile / thread / split combinations of the same kernel (their names are in their output).
// head blocks: a block reads one KV head's rows (256 B per token and page) as the wgmma decode does.
// page blocks: a block reads all 8 heads of its tokens (a page-1 page = 2 KB contiguous).
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <random>
#include <cuda_runtime.h>

constexpr int B = 64, S = 8192, HK = 8, D = 128, ROWB = D * 2;

__device__ __forceinline__ void cp16(void* dst, const void* src)
{
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
}

// H heads per block starting at blockIdx.y * H; tokens split over gridDim.x; T tokens per tile.
template <int H, int T, int THREADS, int STAGES>
__global__ void __launch_bounds__(THREADS) reader(const char* k, const char* v, const int* table, int page, int dense,
                                                  unsigned* sink)
{
    extern __shared__ __align__(128) char smem[];
    constexpr int CH = T * H * (ROWB / 16);  // 16-B chunks per tile of K
    constexpr int TILE = T * H * ROWB;
    const int b = blockIdx.z, h0 = blockIdx.y * H, split = blockIdx.x, nsplit = gridDim.x;
    const int per = S / nsplit, t0 = split * per, ntiles = per / T;
    const long page_bytes = (long)HK * page * ROWB;
    // the block's page ids live in shared memory (after the stages): never on a copy's critical path
    int* ids = (int*)(smem + STAGES * 2 * TILE);
    const int first_page = t0 / page, npages = per / page + 1;
    if (!dense)
        for (int i = threadIdx.x; i < npages && first_page + i < S / page; i += THREADS) ids[i] = table[b * (S / page) + first_page + i];
    __syncthreads();
    auto issue = [&](int tile, int stage) {
        char* sk = smem + stage * 2 * TILE;
        char* sv = sk + TILE;
        for (int c = threadIdx.x; c < CH; c += THREADS) {
            const int row = c / (ROWB / 16), part = c % (ROWB / 16);
            const int tok = t0 + tile * T + row / H, hh = h0 + row % H;
            long off;
            if (dense) off = (((long)b * HK + hh) * S + tok) * ROWB;
            else {
                const int pid = ids[tok / page - first_page];
                off = pid * page_bytes + ((long)hh * page + tok % page) * ROWB;
            }
            cp16(sk + c * 16, k + off + part * 16);
            cp16(sv + c * 16, v + off + part * 16);
        }
        asm volatile("cp.async.commit_group;\n");
    };
    unsigned acc = 0;
    for (int s = 0; s < STAGES - 1; ++s) issue(s, s);
    for (int t = 0; t < ntiles; ++t) {
        if (t + STAGES - 1 < ntiles) issue(t + STAGES - 1, (t + STAGES - 1) % STAGES);
        else asm volatile("cp.async.commit_group;\n");
        asm volatile("cp.async.wait_group %0;\n" ::"n"(STAGES - 1));
        __syncthreads();
        acc ^= ((unsigned*)(smem + (t % STAGES) * 2 * TILE))[threadIdx.x];
        __syncthreads();
    }
    if (acc == 0x12345678u) sink[0] = acc;
}

template <int H, int T, int THREADS, int STAGES>
float run(const char* k, const char* v, const int* table, int page, int dense, int nsplit, unsigned* sink)
{
    const int smem = STAGES * 2 * T * H * ROWB + 4 * (S / nsplit / page + 1);
    auto f = reader<H, T, THREADS, STAGES>;
    cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    dim3 grid(nsplit, HK / H, B);
    for (int i = 0; i < 3; ++i) f<<<grid, THREADS, smem>>>(k, v, table, page, dense, sink);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    const int reps = 20;
    cudaEventRecord(e0);
    for (int i = 0; i < reps; ++i) f<<<grid, THREADS, smem>>>(k, v, table, page, dense, sink);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) { printf("error %s\n", cudaGetErrorString(err)); exit(1); }
    ms /= reps;
    const double bytes = 2.0 * B * S * HK * ROWB;
    return (float)(bytes / (ms * 1e-3) / 1e12);
}

int main()
{
    const long bytes = (long)B * S * HK * ROWB + (1 << 22);
    char *k, *v;
    unsigned* sink;
    int* table;
    cudaMalloc(&k, bytes);
    cudaMalloc(&v, bytes);
    cudaMalloc(&sink, 4);
    cudaMemset(k, 1, bytes);
    cudaMemset(v, 1, bytes);
    cudaMalloc(&table, sizeof(int) * B * S);
    std::mt19937 rng(0);
    for (int page : {1, 16, 64}) {
        for (int order = 0; order < 2; ++order) {
            const int n = B * S / page;
            std::vector<int> ids(n);
            for (int i = 0; i < n; ++i) ids[i] = i;
            if (order) std::shuffle(ids.begin(), ids.end(), rng);
            cudaMemcpy(table, ids.data(), sizeof(int) * n, cudaMemcpyHostToDevice);
            const char* name = order ? "random" : "sequential";
            printf("page %2d %-10s head-block T128 s2 t256      %.3f TB/s\n", page, name,
                   run<1, 128, 256, 2>(k, v, table, page, 0, 1, sink));
            printf("page %2d %-10s page-block T16 s3 t512 split2 %.3f TB/s\n", page, name,
                   run<8, 16, 512, 3>(k, v, table, page, 0, 2, sink));
            printf("page %2d %-10s half-block T32 s3 t256 split1 %.3f TB/s\n", page, name,
                   run<4, 32, 256, 3>(k, v, table, page, 0, 1, sink));
            printf("page %2d %-10s half-block T32 s3 t128 split1 %.3f TB/s\n", page, name,
                   run<4, 32, 128, 3>(k, v, table, page, 0, 1, sink));
            printf("page %2d %-10s half-block T16 s4 t256 split1 %.3f TB/s\n", page, name,
                   run<4, 16, 256, 4>(k, v, table, page, 0, 1, sink));
            printf("page %2d %-10s half-block T32 s2 t256 split1 %.3f TB/s\n", page, name,
                   run<4, 32, 256, 2>(k, v, table, page, 0, 1, sink));
            printf("page %2d %-10s quarter-block T64 s2 t256 split1 %.3f TB/s\n", page, name,
                   run<2, 64, 256, 2>(k, v, table, page, 0, 1, sink));
        }
    }
    printf("dense head-block T128 s2 t256 %.3f TB/s\n", run<1, 128, 256, 2>(k, v, table, 1, 1, 1, sink));
    printf("dense page-block T16 s3 split4 %.3f TB/s\n", run<8, 16, 256, 3>(k, v, table, 1, 1, 4, sink));
    return 0;
}
