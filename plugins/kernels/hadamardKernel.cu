// Hadamard kernels and the host port of the base-matrix constructions; see hadamardKernel.h.
#include "hadamardKernel.h"
#include "hadamardFast.cuh"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

namespace mq
{
namespace
{

constexpr int kThreads = 128;

template <typename T>
__device__ __forceinline__ void storeOut(T* y, int64_t i, float v, float /*scale*/)
{
    y[i] = fromFloat<T>(v);
}
__device__ __forceinline__ void storeOut(int8_t* y, int64_t i, float v, float scale)
{
    y[i] = quantizeInt8(v, scale);
}

__device__ __forceinline__ void load8(float const* src, float (&v)[8])
{
    float4 const a = reinterpret_cast<float4 const*>(src)[0];
    float4 const b = reinterpret_cast<float4 const*>(src)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void load8(__half const* src, float (&v)[8])
{
    uint4 const a = reinterpret_cast<uint4 const*>(src)[0];
    __half2 const* h = reinterpret_cast<__half2 const*>(&a);
#pragma unroll
    for (int i = 0; i < 4; ++i)
    {
        float2 const f = __half22float2(h[i]);
        v[2 * i] = f.x, v[2 * i + 1] = f.y;
    }
}

// kM > 0: unrolled base product for that m; kM == 0: any m (generic loop). kVec: 16-byte loads,
// stages h = 1, 2, 4 in registers (needs 2^k ≥ 8, n % 8 == 0, 16-byte aligned rows).
template <typename Tin, typename Tout, int kM, bool kVec>
__global__ void __launch_bounds__(kThreads) hadamardKernel(HadamardParams const p, int32_t logP)
{
    extern __shared__ float smem[];
    int const n = p.n;
    int const m = kM > 0 ? kM : p.m;
    int const P = 1 << logP;
    int const m4 = (m + 3) & ~3;
    float* s = smem;
    float* bt = smem + n; // bt[c * m4 + a] = B[a, c]
    int64_t const rowOff = static_cast<int64_t>(blockIdx.x) * n;
    auto const* x = static_cast<Tin const*>(p.x) + rowOff;

    if (m > 1)
        for (int i = threadIdx.x; i < m * m4; i += kThreads)
        {
            int const c = i / m4;
            int const a = i - c * m4;
            bt[i] = a < m ? p.baseMatrix[a * m + c] : 0.f;
        }

    int h0 = 1;
    if (kVec)
    {
        for (int g = threadIdx.x; g < n / 8; g += kThreads)
        {
            float v[8];
            load8(x + 8 * g, v);
#pragma unroll
            for (int h = 1; h < 8; h *= 2)
#pragma unroll
                for (int i = 0; i < 8; ++i)
                    if ((i & h) == 0)
                    {
                        float const a = v[i], b = v[i + h];
                        v[i] = a + b, v[i + h] = a - b;
                    }
            reinterpret_cast<float4*>(s + 8 * g)[0] = make_float4(v[0], v[1], v[2], v[3]);
            reinterpret_cast<float4*>(s + 8 * g)[1] = make_float4(v[4], v[5], v[6], v[7]);
        }
        h0 = 8;
    }
    else
    {
        for (int i = threadIdx.x; i < n; i += kThreads)
            s[i] = toFloat(x[i], 1.f);
    }
    __syncthreads();

    // Remaining butterfly stages on the m sub-rows of length P.
    int const half = n >> 1;
    for (int h = h0; h < P; h <<= 1)
    {
        for (int i = threadIdx.x; i < half; i += kThreads)
        {
            int const j = i & (h - 1);
            int const i0 = ((i - j) << 1) + j; // pairs (i0, i0 + h) never cross a sub-row: P is a multiple of 2h
            float const a = s[i0], b = s[i0 + h];
            s[i0] = a + b, s[i0 + h] = a - b;
        }
        __syncthreads();
    }

    float const norm = rsqrtf(static_cast<float>(n));
    auto* y = static_cast<Tout*>(p.y) + rowOff;
    if (kM == 1 || m == 1)
    {
        for (int i = threadIdx.x; i < n; i += kThreads)
            storeOut(y, i, s[i] * norm, p.outScale);
    }
    else
    for (int b = threadIdx.x; b < P; b += kThreads)
    {
        if constexpr (kM > 1)
        {
            float xa[kM > 0 ? kM : 1];
#pragma unroll
            for (int a = 0; a < kM; ++a)
                xa[a] = s[a * P + b];
#pragma unroll 2
            for (int c = 0; c < kM; ++c)
            {
                float acc = 0.f;
                float4 const* col = reinterpret_cast<float4 const*>(bt + c * m4);
#pragma unroll
                for (int a4 = 0; a4 < (kM + 3) / 4; ++a4)
                {
                    float4 const w = col[a4];
                    acc = fmaf(w.x, xa[4 * a4], acc);
                    if (4 * a4 + 1 < kM) acc = fmaf(w.y, xa[4 * a4 + 1], acc);
                    if (4 * a4 + 2 < kM) acc = fmaf(w.z, xa[4 * a4 + 2], acc);
                    if (4 * a4 + 3 < kM) acc = fmaf(w.w, xa[4 * a4 + 3], acc);
                }
                storeOut(y, static_cast<int64_t>(c) * P + b, acc * norm, p.outScale);
            }
        }
        else
        {
            for (int c = 0; c < m; ++c)
            {
                float acc = 0.f;
                for (int a = 0; a < m; ++a)
                    acc = fmaf(bt[c * m4 + a], s[a * P + b], acc);
                storeOut(y, static_cast<int64_t>(c) * P + b, acc * norm, p.outScale);
            }
        }
    }
}

// ---- fast path: n % 256 == 0, n ≤ 8192, 2^k ≥ 8, 16-byte aligned x and y ----
// One thread per 8 consecutive elements (16-byte loads/stores), n/8 threads per row (a whole number of
// warps), several rows per block; the grid is sized to the resident blocks and each block walks row groups
// grid-stride, with the next two groups' 16-byte loads issued before the current group is computed (so
// every thread keeps 32 bytes in flight while it computes). Butterfly stages h = 1, 2, 4 run in
// registers, h = 8 … 128 by warp shuffles (lane bit s ↔ element bit 3 + s); stages h ≥ 256 (2^k > 256) go
// through shared memory as register rounds: each thread gathers 8 elements that differ in 3 index bits
// (conflict-free: consecutive lanes read consecutive words), does up to 3 stages, scatters them back. The
// m×m base product reads shared memory. int8 output: one reciprocal of the scale, round-to-nearest-even
// conversion, saturation, 8 bytes a store. A row with m = 1 and 2^k ≤ 256 never touches shared memory.
constexpr int kFastMaxN = 8192;
constexpr int kFastThreadsTarget = 512;

//! 16 loaded bytes (8 fp16) or 32 (8 fp32), kept raw until used so that loads stay in flight.
template <typename T>
struct Raw8
{
    uint4 a;
};
template <>
struct Raw8<float>
{
    uint4 a, b;
};
__device__ __forceinline__ void loadRaw(Raw8<__half>& r, __half const* src) { r.a = __ldcs(reinterpret_cast<uint4 const*>(src)); }
__device__ __forceinline__ void loadRaw(Raw8<float>& r, float const* src)
{
    r.a = __ldcs(reinterpret_cast<uint4 const*>(src));
    r.b = __ldcs(reinterpret_cast<uint4 const*>(src) + 1);
}
__device__ __forceinline__ void unpack(Raw8<__half> const& r, float (&v)[8])
{
    __half2 const* h = reinterpret_cast<__half2 const*>(&r.a);
#pragma unroll
    for (int i = 0; i < 4; ++i)
    {
        float2 const f = __half22float2(h[i]);
        v[2 * i] = f.x, v[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void unpack(Raw8<float> const& r, float (&v)[8])
{
    v[0] = __uint_as_float(r.a.x), v[1] = __uint_as_float(r.a.y), v[2] = __uint_as_float(r.a.z), v[3] = __uint_as_float(r.a.w);
    v[4] = __uint_as_float(r.b.x), v[5] = __uint_as_float(r.b.y), v[6] = __uint_as_float(r.b.z), v[7] = __uint_as_float(r.b.w);
}

//! QuantizeLinear with a precomputed reciprocal: saturate(round_half_even(x · (1 / scale))); differs from
//! x / scale only where x / scale lies within an ulp of a .5 tie.
__device__ __forceinline__ uint32_t q8(float x, float inv)
{
    int const q = min(max(__float2int_rn(x * inv), -128), 127);
    return static_cast<uint32_t>(q) & 0xffu;
}

__device__ __forceinline__ void store8(float* dst, float const (&v)[8], float /*inv*/)
{
    reinterpret_cast<float4*>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store8(__half* dst, float const (&v)[8], float /*inv*/)
{
    uint4 o;
    __half2* h = reinterpret_cast<__half2*>(&o);
#pragma unroll
    for (int i = 0; i < 4; ++i)
        h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4*>(dst) = o;
}
__device__ __forceinline__ void store8(int8_t* dst, float const (&v)[8], float inv)
{
    uint32_t w[2] = {0u, 0u};
#pragma unroll
    for (int i = 0; i < 8; ++i)
        w[i >> 2] |= q8(v[i], inv) << (8 * (i & 3));
    *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
}

__device__ __forceinline__ void store2(float* dst, float a, float b, float /*inv*/)
{
    *reinterpret_cast<float2*>(dst) = make_float2(a, b);
}
__device__ __forceinline__ void store2(__half* dst, float a, float b, float /*inv*/)
{
    *reinterpret_cast<__half2*>(dst) = __floats2half2_rn(a, b);
}
__device__ __forceinline__ void store2(int8_t* dst, float a, float b, float inv)
{
    *reinterpret_cast<uint16_t*>(dst) = static_cast<uint16_t>(q8(a, inv) | (q8(b, inv) << 8));
}

template <typename Tin, typename Tout, int kM>
__global__ void __launch_bounds__(1024) hadamardFastKernel(HadamardParams const p, int32_t logP, int32_t rowsPerBlock)
{
    extern __shared__ __align__(16) float smem[];
    int const n = p.n;
    int const m = kM > 0 ? kM : p.m;
    int const P = 1 << logP;
    int const tr = n >> 3; // threads per row, a multiple of 32
    int const rib = threadIdx.x / tr;
    int const g = threadIdx.x - rib * tr;
    int const lane = threadIdx.x & 31;
    int const m4 = (m + 3) & ~3;
    bool const viaSmem = m > 1 || P > 256;
    float* s = smem + rib * n;
    float* bs = smem + rowsPerBlock * n; // bs[a * m4 + c] = B[a, c] (row-major, rows padded to m4)
    float const norm = rsqrtf(static_cast<float>(n));
    float const outArg = sizeof(Tout) == 1 ? 1.f / p.outScale : 0.f;
    auto const* xBase = static_cast<Tin const*>(p.x);

    if (m > 1)
        for (int i = threadIdx.x; i < m * m4; i += blockDim.x)
        {
            int const a = i / m4;
            int const c = i - a * m4;
            bs[i] = c < m ? p.baseMatrix[a * m + c] : 0.f;
        }

    int64_t const groups = (p.rows + rowsPerBlock - 1) / rowsPerBlock;
    auto rowOf = [&](int64_t grp) { return grp * rowsPerBlock + rib; };
    Raw8<Tin> r0{}, r1{}, r2{};
    auto fetch = [&](Raw8<Tin>& r, int64_t grp) {
        int64_t const row = rowOf(grp);
        if (grp < groups && row < p.rows)
            loadRaw(r, xBase + row * n + 8 * g);
    };
    int64_t grp = blockIdx.x;
    fetch(r0, grp);
    fetch(r1, grp + gridDim.x);
    for (; grp < groups; grp += gridDim.x)
    {
        fetch(r2, grp + 2 * static_cast<int64_t>(gridDim.x)); // two groups ahead, in flight during this one
        int64_t const row = rowOf(grp);
        bool const live = row < p.rows;
        float v[8];
        unpack(r0, v);
        r0 = r1, r1 = r2;

#pragma unroll
        for (int h = 1; h < 8; h *= 2)
#pragma unroll
            for (int i = 0; i < 8; ++i)
                if ((i & h) == 0)
                {
                    float const a = v[i], b = v[i + h];
                    v[i] = a + b, v[i + h] = a - b;
                }
#pragma unroll
        for (int sh = 0; sh < 5; ++sh)
        {
            if ((8 << sh) >= P)
                break;
            bool const upper = (lane >> sh) & 1;
#pragma unroll
            for (int i = 0; i < 8; ++i)
            {
                float const o = __shfl_xor_sync(0xffffffffu, v[i], 1 << sh);
                v[i] = upper ? o - v[i] : v[i] + o;
            }
        }

        auto* y = static_cast<Tout*>(p.y) + row * n + 8 * g;
        if (!viaSmem)
        {
            if (live)
            {
#pragma unroll
                for (int i = 0; i < 8; ++i)
                    v[i] *= norm;
                store8(y, v, outArg);
            }
            continue;
        }
        __syncthreads(); // the previous group's readers of s are done
        reinterpret_cast<float4*>(s + 8 * g)[0] = make_float4(v[0], v[1], v[2], v[3]);
        reinterpret_cast<float4*>(s + 8 * g)[1] = make_float4(v[4], v[5], v[6], v[7]);
        // stages h = 256 … P/2 in rounds of (up to) 3: gather 8 elements differing in index bits lo … lo+2
        for (int done = 8; done < logP; done += 3)
        {
            int const lo = min(done, logP - 3); // bits below `done` are already transformed: skip them
            __syncthreads();
            int const low = g & ((1 << lo) - 1);
            int const e0 = low | ((g >> lo) << (lo + 3));
            float u[8];
#pragma unroll
            for (int k = 0; k < 8; ++k)
                u[k] = s[e0 + (k << lo)];
#pragma unroll
            for (int hb = 0; hb < 3; ++hb)
            {
                if (lo + hb < done)
                    continue;
#pragma unroll
                for (int k = 0; k < 8; ++k)
                    if ((k & (1 << hb)) == 0)
                    {
                        float const a = u[k], b = u[k + (1 << hb)];
                        u[k] = a + b, u[k + (1 << hb)] = a - b;
                    }
            }
#pragma unroll
            for (int k = 0; k < 8; ++k)
                s[e0 + (k << lo)] = u[k];
        }
        __syncthreads();
        if (!live)
            continue;
        if (m > 1)
        {
            // Base product, m % 4 == 0: thread g of the row owns columns b, b + 1 of the (m, P) view and
            // outputs c0 … c0 + 3 (T = n / 8 = (P / 2)·(m / 4) threads). Per sub-row a: one 8-byte read of
            // x[a, b:b+2] (consecutive lanes, conflict-free), one broadcast 16-byte read of B[a, c0:c0+4],
            // 8 FMAs; every x element is read from shared memory m / 4 times instead of m times.
            int const cp = g & ((P >> 1) - 1);
            int const c0 = (g >> (logP - 1)) << 2;
            int const b = cp << 1;
            float acc[4][2];
#pragma unroll
            for (int c = 0; c < 4; ++c)
                acc[c][0] = 0.f, acc[c][1] = 0.f;
#pragma unroll(kM > 0 ? kM : 4)
            for (int a = 0; a < m; ++a)
            {
                float2 const xv = *reinterpret_cast<float2 const*>(s + a * P + b);
                float4 const w = *reinterpret_cast<float4 const*>(bs + a * m4 + c0);
                acc[0][0] = fmaf(w.x, xv.x, acc[0][0]), acc[0][1] = fmaf(w.x, xv.y, acc[0][1]);
                acc[1][0] = fmaf(w.y, xv.x, acc[1][0]), acc[1][1] = fmaf(w.y, xv.y, acc[1][1]);
                acc[2][0] = fmaf(w.z, xv.x, acc[2][0]), acc[2][1] = fmaf(w.z, xv.y, acc[2][1]);
                acc[3][0] = fmaf(w.w, xv.x, acc[3][0]), acc[3][1] = fmaf(w.w, xv.y, acc[3][1]);
            }
            auto* yr = static_cast<Tout*>(p.y) + row * n + b;
#pragma unroll
            for (int c = 0; c < 4; ++c)
                store2(yr + static_cast<int64_t>(c0 + c) * P, acc[c][0] * norm, acc[c][1] * norm, outArg);
            continue;
        }
        float out[8];
        {
            float4 const a = reinterpret_cast<float4 const*>(s + 8 * g)[0];
            float4 const b = reinterpret_cast<float4 const*>(s + 8 * g)[1];
            out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
        }
#pragma unroll
        for (int i = 0; i < 8; ++i)
            out[i] *= norm;
        store8(y, out, outArg);
    }
}

template <typename Tin, typename Tout, int kM>
cudaError_t launchFastM(HadamardParams const& p, int32_t logP, cudaStream_t stream)
{
    int32_t const tr = p.n / 8;
    int32_t const rpb = std::max(1, kFastThreadsTarget / tr);
    size_t const smem = (static_cast<size_t>(rpb) * p.n + static_cast<size_t>(p.m) * ((p.m + 3) & ~3)) * sizeof(float);
    auto kernel = hadamardFastKernel<Tin, Tout, kM>;
    if (smem > 48 * 1024)
    {
        cudaError_t const e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        if (e != cudaSuccess)
            return e;
    }
    int64_t const groups = (p.rows + rpb - 1) / rpb;
    // grid: the blocks that fit on the GPU at once (each walks row groups grid-stride)
    int dev = 0, sms = 0, perSm = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e == cudaSuccess)
        e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, kernel, tr * rpb, smem);
    if (e != cudaSuccess)
        return e;
    int64_t const blocks = std::min<int64_t>(groups, static_cast<int64_t>(std::max(1, sms)) * std::max(1, perSm));
    kernel<<<static_cast<unsigned>(blocks), tr * rpb, smem, stream>>>(p, logP, rpb);
    return cudaGetLastError();
}

// ---- register path (hadamardFast.cuh): fp16 input, fp16/int8 output, m ∈ {1, 12, 20, 28}, 2^k ≥ 64, n ≤ 8192 ----
// A block of 128 threads owns G rows at a time; by default the grid is the resident blocks, each walking groups
// grid-stride, with the next group's loads issued into registers while the current one is in its shared-memory
// passes (see setHadamardTuning for the alternatives).
template <int kM>
constexpr int regMinBlocks()
{
#ifdef MQ_HAD_MIN_BLOCKS
    return MQ_HAD_MIN_BLOCKS;
#else
    if (kM == 20 && MQ_HAD_HALF_L != 0)
        return 4; // half-width L phase (hadamardFast.cuh): 128 registers
    if (kM == 28 && MQ_HAD_HALF_L != 0 && MQ_HAD_HALF_L28 != 0)
        return 3; // half width: 168 registers (shared memory allows 3 blocks of n 3584 anyway)
    return kM <= 12 ? 4 : kM <= 20 ? 3 : 2; // registers: 128 / 168 / 255 a thread
#endif
}

//! Tuning of the register path (setHadamardTuning): row groups a block processes (0 = a grid of the resident
//! blocks walking the groups grid-stride, k > 0 = k consecutive groups a block) and flags: kRegAsync = the next
//! group's loads go by cp.async into a shared staging buffer as soon as the current group is unpacked (in flight
//! for the whole group, no registers held), else into registers after the L phase (in flight during the passes);
//! kRegStoreCs = evict-first (st.global.cs) output stores; kRegBalance = the resident grid's last, partial round of
//! groups is spread over all blocks in pieces of ≤ G rows (hfast::Sched). -1 = the defaults: on the H200
//! (benchmarks/gpu/results/hadamard-round) the resident grid with register prefetch and evict-first stores was the
//! fastest schedule for every benchmarked n and both outputs; cp.async prefetch measured 1-17 % slower, 2 groups a
//! block 15-26 % slower (and 1, 4 or 8 groups a block were slower than the resident grid in the round's second run).
//! The balanced tail measured no faster (n 5120: 1.13 against 1.12 × memcpy; n 768 1.07 against 1.04: a short piece
//! costs nearly a whole group, and more blocks get one; benchmarks/gpu/results/NOTES.md, "Hadamard: schedule as a
//! kernel parameter"), so it is not the default.
constexpr int kRegAsync = 1, kRegStoreCs = 2, kRegBalance = 4;
constexpr int kRegGroupsPerBlockDefault = 0, kRegFlagsDefault = kRegStoreCs;
std::atomic<int> gRegGroupsPerBlock{-1}, gRegFlags{-1};

//! The shared-memory passes of a group whose L phase is in shared memory (a barrier before each).
template <typename F, typename Tout>
__device__ __forceinline__ void regPasses(float4* hsm, Tout* y, hfast::Span g, int tid, float s, bool cs)
{
    __syncthreads();
    F::template pass<0>(hsm, y, g, tid, s, cs);
    if constexpr (F::C::NWIN > 1)
    {
        __syncthreads();
        F::template pass<1>(hsm, y, g, tid, s, cs);
    }
}

template <typename Tout, int kM, int kLogP>
__global__ void __launch_bounds__(hfast::kThreads, regMinBlocks<kM>())
    hadamardRegKernel(HadamardParams const p, hfast::Sched const sched, int32_t flags)
{
    using F = hfast::Fast<kM, kLogP>;
    using C = typename F::C;
    static_assert(C::NWIN <= 2, "more than two passes");
    extern __shared__ float4 hsm[];
    uint2* stage = reinterpret_cast<uint2*>(hsm + C::SMEM_F4); // kRegAsync: LREG × kThreads pieces of 8 bytes
    bool const async = (flags & kRegAsync) != 0, cs = (flags & kRegStoreCs) != 0;
    float const s = rsqrtf(static_cast<float>(C::N)) * (sizeof(Tout) == 1 ? 1.f / p.outScale : 1.f);
    auto const* x = static_cast<__half const*>(p.x);
    auto* y = static_cast<Tout*>(p.y);
    int const tid = threadIdx.x;
    int const qEnd = sched.end(blockIdx.x), qStep = sched.step(gridDim.x);
    typename F::Raw raw;
    if (sched.q0(blockIdx.x) < qEnd)
    {
        if (async)
            F::loadAsync(stage, x, sched.at(sched.q0(blockIdx.x)), tid);
        else
            F::load(raw, x, sched.at(sched.q0(blockIdx.x)), tid);
    }
    for (int q = sched.q0(blockIdx.x); q < qEnd; q += qStep)
    {
        hfast::Span const g = sched.at(q);
        int const qn = q + qStep;
        bool const more = qn < qEnd;
        bool const live = F::live(g, tid); // the thread's L-phase row is in the group (not so in a short group)
        if constexpr (C::HALF)
        {
            if (async)
            {
                F::readStage(raw, stage, tid);
                if (more)
                    F::loadAsync(stage, x, sched.at(qn), tid); // this thread's slots, already read
            }
            __syncthreads(); // the previous group's last pass is done with shared memory
            F::lHalves(raw, hsm, tid, s); // also where !live (zeros in, never stored out): skipping it made m = 20 spill
            if (!async && more)
                F::load(raw, x, sched.at(qn), tid); // in flight during the passes
            regPasses<F>(hsm, y, g, tid, s, cs);
        }
        else
        {
            float4 v[C::LREG];
            if (async)
            {
                F::readStage(raw, stage, tid);
                F::unpack(raw, v); // the staging reads are consumed before the next copies into the same slots
                if (more)
                    F::loadAsync(stage, x, sched.at(qn), tid);
            }
            else
                F::unpack(raw, v);
            if (live)
                F::math(v, s);
            if constexpr (C::R == 0)
            {
                if (!async && more)
                    F::load(raw, x, sched.at(qn), tid);
                F::storeDirect(v, y, g, tid, s, cs);
            }
            else
            {
                __syncthreads(); // the previous group's last pass is done with shared memory
                if (live)
                    F::storeSmem(v, hsm, tid);
                if (!async && more)
                    F::load(raw, x, sched.at(qn), tid); // in flight during the passes
                regPasses<F>(hsm, y, g, tid, s, cs);
            }
        }
    }
}

template <typename Tout, int kM, int kLogP>
cudaError_t launchReg(HadamardParams const& p, cudaStream_t stream)
{
    using C = hfast::Cfg<kM, kLogP>;
    int gpb = gRegGroupsPerBlock.load(std::memory_order_relaxed);
    int flags = gRegFlags.load(std::memory_order_relaxed);
    gpb = gpb < 0 ? kRegGroupsPerBlockDefault : gpb;
    flags = flags < 0 ? kRegFlagsDefault : flags;
    bool const async = (flags & kRegAsync) != 0;
    size_t const smem = static_cast<size_t>(C::SMEM_F4) * sizeof(float4) + (async ? sizeof(uint2) * C::LREG * hfast::kThreads : 0);
    auto kernel = hadamardRegKernel<Tout, kM, kLogP>;
    static std::atomic<int> gridCache[16][2]; // resident blocks on device d without / with the staging buffer (0 = unknown)
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess)
        return e;
    int grid = dev < 16 ? gridCache[dev][async].load(std::memory_order_relaxed) : 0;
    if (grid == 0)
    {
        size_t const smemMax = static_cast<size_t>(C::SMEM_F4) * sizeof(float4) + sizeof(uint2) * C::LREG * hfast::kThreads;
        if (smemMax > 48 * 1024)
        {
            e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smemMax));
            if (e != cudaSuccess)
                return e;
        }
        int sms = 0, perSm = 0;
        e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
        if (e == cudaSuccess)
            e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, kernel, hfast::kThreads, smem);
        if (e != cudaSuccess)
            return e;
        grid = std::max(1, sms) * std::max(1, perSm);
        if (dev < 16)
            gridCache[dev][async].store(grid, std::memory_order_relaxed);
    }
    int64_t const groups = (p.rows + C::G - 1) / C::G;
    // balanced: up to one block a row (a tensor of fewer rows than resident blocks spreads over more SMs)
    int64_t const blocks = gpb > 0 ? (groups + gpb - 1) / gpb : std::min<int64_t>((flags & kRegBalance) ? p.rows : groups, grid);
    hfast::Sched const sched = hfast::makeSched(static_cast<int>(p.rows), static_cast<int>(blocks), C::G, gpb, (flags & kRegBalance) != 0);
    kernel<<<static_cast<unsigned>(blocks), hfast::kThreads, smem, stream>>>(p, sched, flags);
    return cudaGetLastError();
}

//! The register path when it covers (input type, output type, m, 2^k) and the pointers are 16-byte aligned;
//! cudaErrorNotSupported otherwise (the caller falls back).
template <typename Tin, typename Tout, int kM>
cudaError_t tryReg(HadamardParams const& p, int32_t logP, cudaStream_t stream)
{
    if constexpr (std::is_same<Tin, __half>::value && !std::is_same<Tout, float>::value && (kM == 1 || kM == 12 || kM == 20 || kM == 28))
    {
        if ((reinterpret_cast<uintptr_t>(p.x) | reinterpret_cast<uintptr_t>(p.y)) % 16 != 0 || p.m != kM || p.rows > INT32_MAX / 2)
            return cudaErrorNotSupported; // (row indices are 32-bit there)
        switch (logP)
        {
        case 6: return launchReg<Tout, kM, 6>(p, stream);
        case 7: return launchReg<Tout, kM, 7>(p, stream);
        case 8: return launchReg<Tout, kM, 8>(p, stream);
        case 9:
            if constexpr (kM <= 12)
                return launchReg<Tout, kM, 9>(p, stream);
            break;
        case 10: case 11: case 12: case 13:
            if constexpr (kM == 1)
            {
                if (logP == 10)
                    return launchReg<Tout, 1, 10>(p, stream);
                if (logP == 11)
                    return launchReg<Tout, 1, 11>(p, stream);
                if (logP == 12)
                    return launchReg<Tout, 1, 12>(p, stream);
                return launchReg<Tout, 1, 13>(p, stream);
            }
            break;
        default: break;
        }
    }
    (void)p, (void)logP, (void)stream;
    return cudaErrorNotSupported;
}

template <typename Tin, typename Tout, int kM>
cudaError_t launchM(HadamardParams const& p, int32_t logP, bool vec, bool fast, cudaStream_t stream)
{
    cudaError_t const r = tryReg<Tin, Tout, kM>(p, logP, stream);
    if (r != cudaErrorNotSupported)
        return r;
    if (fast)
        return launchFastM<Tin, Tout, kM>(p, logP, stream);
    size_t const smem = hadamardSharedBytes(p.n, p.m);
    auto kernel = vec ? hadamardKernel<Tin, Tout, kM, true> : hadamardKernel<Tin, Tout, kM, false>;
    if (smem > 48 * 1024)
    {
        cudaError_t const e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        if (e != cudaSuccess)
            return e;
    }
    kernel<<<static_cast<unsigned>(p.rows), kThreads, smem, stream>>>(p, logP);
    return cudaGetLastError();
}

template <typename Tin, typename Tout>
cudaError_t dispatchM(HadamardParams const& p, int32_t logP, bool vec, bool fast, cudaStream_t stream)
{
    switch (p.m)
    {
    case 1: return launchM<Tin, Tout, 1>(p, logP, vec, fast, stream);
    case 12: return launchM<Tin, Tout, 12>(p, logP, vec, fast, stream);
    case 20: return launchM<Tin, Tout, 20>(p, logP, vec, fast, stream);
    case 28: return launchM<Tin, Tout, 28>(p, logP, vec, fast, stream);
    case 36: return launchM<Tin, Tout, 36>(p, logP, vec, fast, stream);
    case 44: return launchM<Tin, Tout, 44>(p, logP, vec, fast, stream);
    case 60: return launchM<Tin, Tout, 60>(p, logP, vec, fast, stream);
    default: return launchM<Tin, Tout, 0>(p, logP, vec, fast, stream);
    }
}

template <typename Tin>
cudaError_t dispatchOut(HadamardParams const& p, int32_t logP, bool vec, bool fast, cudaStream_t stream)
{
    switch (p.outType)
    {
    case DType::kFLOAT: return dispatchM<Tin, float>(p, logP, vec, fast, stream);
    case DType::kHALF: return dispatchM<Tin, __half>(p, logP, vec, fast, stream);
    case DType::kINT8: return dispatchM<Tin, int8_t>(p, logP, vec, fast, stream);
    }
    return cudaErrorInvalidValue;
}

// ---- host port of quant/hadamard.py ----
using hfast::isPrimeC; // the same test the fast path's compile-time base matrices use

std::vector<int32_t> jacobsthal(int32_t q) // Q[i, j] = χ(j - i)
{
    std::vector<int32_t> chi(q, -1);
    chi[0] = 0;
    for (int32_t x = 1; x < q; ++x)
        chi[(x * x) % q] = 1;
    std::vector<int32_t> Q(static_cast<size_t>(q) * q);
    for (int32_t i = 0; i < q; ++i)
        for (int32_t j = 0; j < q; ++j)
            Q[i * q + j] = chi[((j - i) % q + q) % q];
    return Q;
}

} // namespace

void setHadamardTuning(int32_t groupsPerBlock, int32_t flags)
{
    gRegGroupsPerBlock.store(groupsPerBlock, std::memory_order_relaxed);
    gRegFlags.store(flags, std::memory_order_relaxed);
}

std::vector<float> hadamardBaseMatrix(int32_t m)
{
    if (m == 1)
        return {1.f};
    if (m == 2)
        return {1.f, 1.f, 1.f, -1.f};
    if (m % 4 != 0)
        return {};
    int32_t q = m - 1;
    if (isPrimeC(q) && q % 4 == 3) // Paley I: S + I with S = [[0, 1ᵀ], [-1, Q]]
    {
        auto const Q = jacobsthal(q);
        std::vector<float> H(static_cast<size_t>(m) * m, 0.f);
        for (int32_t i = 0; i < m; ++i)
            for (int32_t j = 0; j < m; ++j)
            {
                int32_t v = 0;
                if (i == 0 && j > 0)
                    v = 1;
                else if (i > 0 && j == 0)
                    v = -1;
                else if (i > 0 && j > 0)
                    v = Q[(i - 1) * q + (j - 1)];
                H[i * m + j] = static_cast<float>(v + (i == j ? 1 : 0));
            }
        return H;
    }
    q = m / 2 - 1;
    if (q > 1 && isPrimeC(q) && q % 4 == 1) // Paley II: C = [[0, 1ᵀ], [1, Q]], 2×2 blocks
    {
        auto const Q = jacobsthal(q);
        int32_t const c = q + 1;
        std::vector<float> H(static_cast<size_t>(m) * m, 0.f);
        for (int32_t i = 0; i < c; ++i)
            for (int32_t j = 0; j < c; ++j)
            {
                int32_t cij = 0;
                if (i == 0 && j > 0)
                    cij = 1;
                else if (i > 0 && j == 0)
                    cij = 1;
                else if (i > 0 && j > 0)
                    cij = Q[(i - 1) * q + (j - 1)];
                int32_t const blk[4] = {cij == 0 ? 1 : cij, cij == 0 ? -1 : cij, cij == 0 ? -1 : cij, cij == 0 ? -1 : -cij};
                H[(2 * i) * m + 2 * j] = static_cast<float>(blk[0]);
                H[(2 * i) * m + 2 * j + 1] = static_cast<float>(blk[1]);
                H[(2 * i + 1) * m + 2 * j] = static_cast<float>(blk[2]);
                H[(2 * i + 1) * m + 2 * j + 1] = static_cast<float>(blk[3]);
            }
        return H;
    }
    return {};
}

bool hadamardSplit(int32_t n, int32_t& m, int32_t& k)
{
    if (n < 1)
        return false;
    int32_t k0 = 0;
    while (n % (1 << (k0 + 1)) == 0)
        ++k0;
    int32_t const odd = n >> k0;
    for (int32_t extra = 0; extra <= k0; ++extra)
    {
        int32_t const mm = odd << extra;
        if (mm == 1 || (mm == 2 && odd == 1))
        {
            m = 1, k = k0;
            return true;
        }
        if (!hadamardBaseMatrix(mm).empty())
        {
            m = mm, k = k0 - extra;
            return true;
        }
    }
    return false;
}

size_t hadamardSharedBytes(int32_t n, int32_t m)
{
    return (static_cast<size_t>(n) + static_cast<size_t>(m) * ((m + 3) & ~3)) * sizeof(float);
}

cudaError_t launchHadamard(HadamardParams const& p, cudaStream_t stream)
{
    if (p.n < 1 || p.m < 1 || p.n % p.m != 0 || p.rows < 0)
        return cudaErrorInvalidValue;
    int32_t const P = p.n / p.m;
    if ((P & (P - 1)) != 0)
        return cudaErrorInvalidValue;
    if (hadamardSharedBytes(p.n, p.m) > kHadamardMaxSharedBytes)
        return cudaErrorInvalidValue;
    if (p.rows == 0) // empty tensors (TensorRT may pass null for them): nothing to do
        return cudaSuccess;
    if (p.rows > 0x7fffffff || p.x == nullptr || p.y == nullptr || (p.m > 1 && p.baseMatrix == nullptr))
        return cudaErrorInvalidValue;
    int32_t logP = 0;
    while ((1 << logP) < P)
        ++logP;
    bool const vec = P >= 8 && p.n % 8 == 0 && (reinterpret_cast<uintptr_t>(p.x) % 16) == 0;
    // Register/shuffle path: m = 1, or m % 4 == 0 (base product with 2 columns × 4 outputs a thread, see
    // hadamardFastKernel); the previous H200 run measured its old m > 1 product (every thread re-reading all m
    // sub-rows at a 32-byte stride) at 3.7-6.1× memcpy, slower than the shared-memory kernel's 3.0-3.6×.
    bool const fastM = p.m == 1 || (p.m % 4 == 0 && static_cast<size_t>(p.n + p.m * p.m) * sizeof(float) <= 96 * 1024);
    bool const fast = fastM && vec && p.n % 256 == 0 && p.n <= kFastMaxN && (reinterpret_cast<uintptr_t>(p.y) % 16) == 0;
    if (p.inType == DType::kFLOAT)
        return dispatchOut<float>(p, logP, vec, fast, stream);
    if (p.inType == DType::kHALF)
        return dispatchOut<__half>(p, logP, vec, fast, stream);
    return cudaErrorInvalidValue;
}

} // namespace mq
