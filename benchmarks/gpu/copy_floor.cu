// The copy floor of a read-transform-write kernel: plain copy kernels timed against cudaMemcpyAsync (device to
// device), among them the exact memory-access shape of the Hadamard register path (hadamardFast.cuh) with the
// transform left out. The Hadamard target is "≤ 1.1× memcpy time"; this says how close any kernel that reads and
// writes every byte once gets to memcpy on the machine at hand.
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -o build/copy_floor benchmarks/gpu/copy_floor.cu && build/copy_floor [MiB ...]
//
// (default sizes 64 256 MiB; run_all.sh runs it with BENCH=hadamard or all and writes $OUT/copy_floor.log). Every
// variant's output is checked against its input after the timing (exit status 1 on a mismatch).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(x)                                                                                                       \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const e_ = (x);                                                                                    \
        if (e_ != cudaSuccess)                                                                                         \
        {                                                                                                              \
            std::fprintf(stderr, "copy_floor: %s: %s\n", #x, cudaGetErrorString(e_));                                  \
            std::exit(2);                                                                                              \
        }                                                                                                              \
    } while (0)

namespace
{

template <int V>
struct VecT;
template <>
struct VecT<8>
{
    using T = uint2;
};
template <>
struct VecT<16>
{
    using T = uint4;
};
template <int V>
using Vec = typename VecT<V>::T;

// load / store flavours: evict-first (ld/st.global.cs, what the Hadamard uses) or plain
template <int V, bool kCs>
__device__ __forceinline__ Vec<V> ld(Vec<V> const* p)
{
    if constexpr (kCs)
        return __ldcs(p);
    else
        return *p;
}
template <int V, bool kCs>
__device__ __forceinline__ void st(Vec<V>* p, Vec<V> v)
{
    if constexpr (kCs)
        __stcs(p, v);
    else
        *p = v;
}

//! Grid-stride copy of V-byte elements, U independent loads a thread before its stores.
template <int V, int U>
__global__ void gridStride(char const* __restrict__ in, char* __restrict__ out, size_t n)
{
    size_t const stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    auto const* src = reinterpret_cast<Vec<V> const*>(in);
    auto* dst = reinterpret_cast<Vec<V>*>(out);
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += U * stride)
    {
        Vec<V> r[U];
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (i + u * stride < n)
                r[u] = ld<V, true>(src + i + u * stride);
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (i + u * stride < n)
                st<V, true>(dst + i + u * stride, r[u]);
    }
}

//! The Hadamard register path's access shape without its arithmetic: a resident grid of 128-thread blocks walks
//! kGroup-byte groups (block b takes groups b, b + gridDim.x, ...); a thread's access j of a group is at byte
//! j·(kGroup / kAcc) + tid·V (a warp covers 32·V contiguous bytes); kPrefetch: the next group's loads are issued into
//! registers before the current group is stored; kSmem: the group goes through shared memory between two barriers
//! (the kernel's L phase and passes, with no math).
template <int V, int kGroup, bool kLdCs, bool kStCs, bool kSmem, bool kPrefetch>
__global__ void __launch_bounds__(128) groupCopy(char const* __restrict__ in, char* __restrict__ out, int groups)
{
    constexpr int kAcc = kGroup / (128 * V);
    constexpr int kStride = kGroup / kAcc;
    __shared__ Vec<V> sm[kSmem ? kAcc * 128 : 1];
    Vec<V> cur[kAcc], nxt[kAcc];
    auto load = [&](Vec<V>(&r)[kAcc], int g) {
        char const* b = in + static_cast<size_t>(g) * kGroup + threadIdx.x * V;
#pragma unroll
        for (int j = 0; j < kAcc; ++j)
            r[j] = ld<V, kLdCs>(reinterpret_cast<Vec<V> const*>(b + j * kStride));
    };
    int g = blockIdx.x;
    if (g >= groups)
        return;
    if (kPrefetch)
        load(nxt, g);
    for (; g < groups; g += gridDim.x)
    {
        if (kPrefetch)
        {
#pragma unroll
            for (int j = 0; j < kAcc; ++j)
                cur[j] = nxt[j];
            if (g + static_cast<int>(gridDim.x) < groups)
                load(nxt, g + gridDim.x);
        }
        else
            load(cur, g);
        if (kSmem)
        {
#pragma unroll
            for (int j = 0; j < kAcc; ++j)
                sm[j * 128 + threadIdx.x] = cur[j];
            __syncthreads();
#pragma unroll
            for (int j = 0; j < kAcc; ++j) // another thread's values, as the passes read them
                cur[j] = sm[j * 128 + (threadIdx.x ^ 1)];
            __syncthreads();
        }
        char* o = out + static_cast<size_t>(g) * kGroup + (kSmem ? (threadIdx.x ^ 1) : threadIdx.x) * V;
#pragma unroll
        for (int j = 0; j < kAcc; ++j)
            st<V, kStCs>(reinterpret_cast<Vec<V>*>(o + j * kStride), cur[j]);
    }
}

//! Byte offset, within a 16 KB group, of access j (< 16, 8 bytes) of thread t (< 128) in store/load shape P:
//! 0: j·1024 + 8t (a warp instruction covers 256 contiguous bytes, as the L phase of m = 1 loads);
//! 1, 2: half-warps write 128-byte pieces 2 KB / 512 bytes apart (the last pass of m = 1 at n 4096 / of the narrow
//! last passes: lanes 0-15 vary chunk bits 0-3, lanes 16-31 one bit above the unit's).
__device__ __forceinline__ int shapeOffset(int P, int j, int t)
{
    int const w = t >> 5, l = t & 31, piece = j * 4 + w; // 64 pieces of 128 bytes … per half-warp
    if (P == 0)
        return j * 1024 + t * 8;
    if (P == 1)
        return (piece >> 4) * 4096 + (l >> 4) * 2048 + (piece & 15) * 128 + (l & 15) * 8;
    return (piece >> 2) * 1024 + (l >> 4) * 512 + (piece & 3) * 128 + (l & 15) * 8;
}

//! The Hadamard shape (4 blocks/SM, 16 KB groups, next group in registers, evict-first), each group permuted through
//! shared memory: loaded in shape 0, stored in shape kStore (every byte still lands where it came from).
template <int kStore>
__global__ void __launch_bounds__(128) shapedCopy(char const* __restrict__ in, char* __restrict__ out, int groups)
{
    __shared__ uint2 sm[2048];
    uint2 cur[16], nxt[16];
    auto load = [&](uint2(&r)[16], int g) {
        char const* b = in + static_cast<size_t>(g) * 16384;
#pragma unroll
        for (int j = 0; j < 16; ++j)
            r[j] = __ldcs(reinterpret_cast<uint2 const*>(b + shapeOffset(0, j, threadIdx.x)));
    };
    int g = blockIdx.x;
    if (g >= groups)
        return;
    load(nxt, g);
    for (; g < groups; g += gridDim.x)
    {
#pragma unroll
        for (int j = 0; j < 16; ++j)
            cur[j] = nxt[j];
        if (g + static_cast<int>(gridDim.x) < groups)
            load(nxt, g + gridDim.x);
        __syncthreads(); // the previous group's stores have read sm
#pragma unroll
        for (int j = 0; j < 16; ++j)
            sm[shapeOffset(0, j, threadIdx.x) / 8] = cur[j];
        __syncthreads();
        char* o = out + static_cast<size_t>(g) * 16384;
#pragma unroll
        for (int j = 0; j < 16; ++j)
        {
            int const off = shapeOffset(kStore, j, threadIdx.x);
            __stcs(reinterpret_cast<uint2*>(o + off), sm[off / 8]);
        }
    }
}

//! Bulk (TMA) copy, sm_90+: one thread a block moves kGroup-byte groups global → shared (cp.async.bulk, mbarrier
//! completion, kStages groups in flight) → global (cp.async.bulk bulk_group store).
template <int kGroup, int kStages>
__global__ void __launch_bounds__(32) bulkCopy(char const* __restrict__ in, char* __restrict__ out, int groups)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) char buf[];
    __shared__ __align__(8) uint64_t bar[kStages];
    if (threadIdx.x != 0)
        return;
    auto sa = [](void const* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); };
    for (int s = 0; s < kStages; ++s)
        asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(sa(&bar[s])));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    auto issue = [&](int s, int g) {
        asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" ::"r"(sa(&bar[s])), "r"(kGroup) : "memory");
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                         sa(buf + s * kGroup)),
            "l"(in + static_cast<size_t>(g) * kGroup), "r"(kGroup), "r"(sa(&bar[s]))
                     : "memory");
    };
    int const nb = static_cast<int>(gridDim.x);
    for (int s = 0; s < kStages && static_cast<int>(blockIdx.x) + s * nb < groups; ++s)
        issue(s, blockIdx.x + s * nb);
    int i = 0;
    for (int g = blockIdx.x; g < groups; g += nb, ++i)
    {
        int const s = i % kStages;
        asm volatile("{ .reg .pred p; W%=: mbarrier.try_wait.parity.shared.b64 p, [%0], %1; @!p bra W%=; }" ::"r"(
                         sa(&bar[s])),
            "r"((i / kStages) & 1)
                     : "memory");
        asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(out + static_cast<size_t>(g) * kGroup),
            "r"(sa(buf + s * kGroup)), "r"(kGroup)
                     : "memory");
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        if (g + kStages * nb < groups)
        {
            asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); // stage s read out before it is refilled
            issue(s, g + kStages * nb);
        }
    }
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

__global__ void fillPattern(uint32_t* p, size_t n, uint32_t seed)
{
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<size_t>(gridDim.x) * blockDim.x)
        p[i] = static_cast<uint32_t>(i * 2654435761u) ^ seed;
}
__global__ void countMismatch(uint32_t const* a, uint32_t const* b, size_t n, unsigned long long* bad)
{
    unsigned long long c = 0;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<size_t>(gridDim.x) * blockDim.x)
        c += a[i] != b[i];
    if (c)
        atomicAdd(bad, c);
}

template <class F>
float timeMs(F&& f)
{
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    for (int i = 0; i < 3; ++i)
        f();
    float best = 1e30f;
    for (int r = 0; r < 3; ++r) // best of 3 averages of 20 launches, like benchmarks/gpu/harness.py timeit
    {
        CHECK(cudaEventRecord(a));
        for (int i = 0; i < 20; ++i)
            f();
        CHECK(cudaEventRecord(b));
        CHECK(cudaEventSynchronize(b));
        float ms = 0.f;
        CHECK(cudaEventElapsedTime(&ms, a, b));
        best = ms / 20 < best ? ms / 20 : best;
    }
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    return best;
}

} // namespace

int main(int argc, char** argv)
{
    std::vector<size_t> mibs;
    for (int i = 1; i < argc; ++i)
    {
        char* end = nullptr;
        long const v = std::strtol(argv[i], &end, 10);
        if (end == argv[i] || *end != '\0' || v < 1 || v > 16384)
        {
            std::fprintf(stderr, "usage: copy_floor [MiB ...] (sizes from 1 to 16384 MiB; default 64 256)\n");
            return 2;
        }
        mibs.push_back(static_cast<size_t>(v));
    }
    if (mibs.empty())
        mibs = {64, 256};
    int dev = 0, sms = 0, major = 0;
    CHECK(cudaGetDevice(&dev));
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    cudaDeviceProp prop{};
    CHECK(cudaGetDeviceProperties(&prop, dev));
    std::printf("GPU %s, %d SMs\n", prop.name, sms);
    unsigned long long* bad = nullptr;
    CHECK(cudaMalloc(&bad, sizeof *bad));
    int failures = 0;
    for (size_t mib : mibs)
    {
        size_t const bytes = mib << 20;
        char *in = nullptr, *out = nullptr;
        CHECK(cudaMalloc(&in, bytes));
        CHECK(cudaMalloc(&out, bytes));
        fillPattern<<<sms * 4, 256>>>(reinterpret_cast<uint32_t*>(in), bytes / 4, static_cast<uint32_t>(mib));
        CHECK(cudaGetLastError());
        float tMemcpy = 0.f;
        float best = 1e30f;
        char const* bestName = "";
        auto run = [&](char const* name, auto&& launch) {
            CHECK(cudaMemset(out, 0, bytes));
            float const t = timeMs([&] { launch(); });
            CHECK(cudaGetLastError());
            CHECK(cudaMemset(bad, 0, sizeof *bad));
            countMismatch<<<sms * 4, 256>>>(reinterpret_cast<uint32_t const*>(in), reinterpret_cast<uint32_t const*>(out), bytes / 4, bad);
            unsigned long long nbad = 0;
            CHECK(cudaMemcpy(&nbad, bad, sizeof nbad, cudaMemcpyDeviceToHost));
            if (tMemcpy == 0.f)
                tMemcpy = t;
            else if (t < best)
                best = t, bestName = name;
            std::printf("%5zu MiB %-52s %8.4f ms %6.0f GB/s  %.3f x memcpy%s\n", mib, name, t, 2.0 * bytes / t / 1e6, t / tMemcpy,
                nbad ? "  MISMATCH" : "");
            failures += nbad != 0;
        };
        run("cudaMemcpyAsync (device to device)", [&] { CHECK(cudaMemcpyAsync(out, in, bytes, cudaMemcpyDeviceToDevice)); });
        run("grid-stride 16 B", [&] { gridStride<16, 1><<<sms * 16, 256>>>(in, out, bytes / 16); });
        run("grid-stride 16 B, 4 loads in flight", [&] { gridStride<16, 4><<<sms * 8, 256>>>(in, out, bytes / 16); });
        run("grid-stride 8 B", [&] { gridStride<8, 1><<<sms * 16, 256>>>(in, out, bytes / 8); });
        int const groups = static_cast<int>(bytes / 16384);
        run("Hadamard shape: 16 KB groups, 4 blocks/SM", [&] {
            groupCopy<8, 16384, true, true, true, true><<<sms * 4, 128>>>(in, out, groups);
        });
        run("Hadamard shape, 3 blocks/SM", [&] { groupCopy<8, 16384, true, true, true, true><<<sms * 3, 128>>>(in, out, groups); });
        run("Hadamard shape, no shared round trip", [&] {
            groupCopy<8, 16384, true, true, false, true><<<sms * 4, 128>>>(in, out, groups);
        });
        run("Hadamard shape, no prefetch", [&] { groupCopy<8, 16384, true, true, true, false><<<sms * 4, 128>>>(in, out, groups); });
        run("Hadamard shape, no prefetch, 8 blocks/SM", [&] {
            groupCopy<8, 16384, true, true, true, false><<<sms * 8, 128>>>(in, out, groups);
        });
        run("Hadamard shape, plain loads", [&] { groupCopy<8, 16384, false, true, true, true><<<sms * 4, 128>>>(in, out, groups); });
        run("Hadamard shape, plain stores", [&] { groupCopy<8, 16384, true, false, true, true><<<sms * 4, 128>>>(in, out, groups); });
        run("Hadamard shape, 16 B accesses", [&] { groupCopy<16, 16384, true, true, true, true><<<sms * 4, 128>>>(in, out, groups); });
        run("Hadamard shape through shared memory, stores 256 B a warp", [&] { shapedCopy<0><<<sms * 4, 128>>>(in, out, groups); });
        run("  ... stores 2 x 128 B 2 KB apart (m = 1 last pass)", [&] { shapedCopy<1><<<sms * 4, 128>>>(in, out, groups); });
        run("  ... stores 2 x 128 B 512 B apart (narrow last pass)", [&] { shapedCopy<2><<<sms * 4, 128>>>(in, out, groups); });
        if (major >= 9)
        {
            auto bulk = [&](auto kern, int group, int stages, int bps, char const* name) {
                CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, group * stages));
                int const ng = static_cast<int>(bytes / group);
                run(name, [&] { kern<<<sms * bps, 32, group * stages>>>(in, out, ng); });
            };
            bulk(bulkCopy<16384, 2>, 16384, 2, 4, "bulk (TMA) 16 KB x 2 stages, 4 blocks/SM");
            bulk(bulkCopy<16384, 4>, 16384, 4, 3, "bulk (TMA) 16 KB x 4 stages, 3 blocks/SM");
            bulk(bulkCopy<32768, 2>, 32768, 2, 2, "bulk (TMA) 32 KB x 2 stages, 2 blocks/SM");
        }
        std::printf("%5zu MiB best kernel copy: %.3f x memcpy (%s)\n", mib, best / tMemcpy, bestName);
        CHECK(cudaFree(in));
        CHECK(cudaFree(out));
    }
    CHECK(cudaFree(bad));
    if (failures)
        std::fprintf(stderr, "copy_floor: %d copies differ from their input\n", failures);
    return failures ? 1 : 0;
}
