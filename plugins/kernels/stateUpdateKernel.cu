// SelectiveStateUpdate kernel; see stateUpdateKernel.h.
#include "stateUpdateKernel.h"

namespace mq
{
namespace
{

constexpr int kLanes = 4;     // threads per (batch, channel)
constexpr int kThreads = 64;  // small blocks: a decode step has only B·D·4 threads, spread them over the SMs

//! The 4 consecutive values src[n0 .. n0 + 3] (n0 + 3 < N, 8-byte aligned for fp16 / 16-byte for fp32) as one load.
__device__ __forceinline__ void load4(float const* src, float (&v)[4], int n0)
{
    float4 const q = *reinterpret_cast<float4 const*>(src + n0);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void load4(__half const* src, float (&v)[4], int n0)
{
    uint2 const q = *reinterpret_cast<uint2 const*>(src + n0);
    float2 const lo = __half22float2(*reinterpret_cast<__half2 const*>(&q.x));
    float2 const hi = __half22float2(*reinterpret_cast<__half2 const*>(&q.y));
    v[0] = lo.x, v[1] = lo.y, v[2] = hi.x, v[3] = hi.y;
}

// kVec (N == 16, 16-byte aligned state / A / Bm / Cm rows): lane l owns states 4l … 4l+3 and reads them, A, Bm
// and Cm with one vector load each; every load of the thread is issued before any arithmetic, so a step costs
// about one memory latency. Otherwise lane l owns states l, l + 4, … (any N).
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) stateUpdateKernel(StateUpdateParams const p)
{
    int64_t const gid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
    int64_t const row = gid / kLanes; // b * D + d
    int const lane = static_cast<int>(gid % kLanes);
    int64_t const rows = static_cast<int64_t>(p.batch) * p.dim;
    bool const active = row < rows;
    int const N = p.dState;
    int64_t const r = active ? row : rows - 1; // inactive lanes read a valid row and store nothing
    int const d = static_cast<int>(r % p.dim);
    int64_t const b = r / p.dim;

    float const xv = toFloat(static_cast<T const*>(p.x)[r], 1.f);
    float dt = toFloat(static_cast<T const*>(p.dt)[r], 1.f) + (p.dtBias != nullptr ? p.dtBias[d] : 0.f);
    float const dSkip = p.Dskip != nullptr ? p.Dskip[d] : 0.f;
    float const zv = p.z != nullptr ? toFloat(static_cast<T const*>(p.z)[r], 1.f) : 0.f;
    auto const* Bm = static_cast<T const*>(p.Bm) + b * N;
    auto const* Cm = static_cast<T const*>(p.Cm) + b * N;
    float const* A = p.A + static_cast<int64_t>(d) * N;
    float yv = 0.f;
    if constexpr (kVec)
    {
        int const n0 = 4 * lane;
        float4 const h4 = *reinterpret_cast<float4 const*>(p.stateIn + r * N + n0);
        float4 const a4 = *reinterpret_cast<float4 const*>(A + n0);
        float bv[4], cv[4];
        load4(Bm, bv, n0);
        load4(Cm, cv, n0);
        if (p.dtSoftplus)
            dt = softplusTorch(dt);
        float const dx = dt * xv;
        float const hv[4] = {h4.x, h4.y, h4.z, h4.w};
        float const av[4] = {a4.x, a4.y, a4.z, a4.w};
        float ho[4];
#pragma unroll
        for (int k = 0; k < 4; ++k)
        {
            ho[k] = fmaf(expf(dt * av[k]), hv[k], dx * bv[k]);
            yv = fmaf(ho[k], cv[k], yv);
        }
        if (active)
            *reinterpret_cast<float4*>(p.stateOut + r * N + n0) = make_float4(ho[0], ho[1], ho[2], ho[3]);
    }
    else
    {
        if (p.dtSoftplus)
            dt = softplusTorch(dt);
        float const dx = dt * xv;
        for (int n = lane; n < N; n += kLanes)
        {
            float const h = fmaf(expf(dt * A[n]), p.stateIn[r * N + n], dx * toFloat(Bm[n], 1.f));
            if (active)
                p.stateOut[r * N + n] = h;
            yv = fmaf(h, toFloat(Cm[n], 1.f), yv);
        }
    }
#pragma unroll
    for (int o = kLanes / 2; o > 0; o /= 2)
        yv += __shfl_xor_sync(0xffffffffu, yv, o, kLanes);
    if (active && lane == 0)
    {
        yv = fmaf(dSkip, xv, yv);
        if (p.z != nullptr)
            yv *= siluf(zv);
        static_cast<T*>(p.y)[row] = fromFloat<T>(yv);
    }
}

template <typename T>
void launchTyped(StateUpdateParams const& p, unsigned blocks, cudaStream_t stream)
{
    bool const vec = p.dState == 16 && (reinterpret_cast<uintptr_t>(p.stateIn) & 15u) == 0
        && (reinterpret_cast<uintptr_t>(p.stateOut) & 15u) == 0 && (reinterpret_cast<uintptr_t>(p.A) & 15u) == 0
        && (reinterpret_cast<uintptr_t>(p.Bm) & 15u) == 0 && (reinterpret_cast<uintptr_t>(p.Cm) & 15u) == 0;
    if (vec)
        stateUpdateKernel<T, true><<<blocks, kThreads, 0, stream>>>(p);
    else
        stateUpdateKernel<T, false><<<blocks, kThreads, 0, stream>>>(p);
}

} // namespace

cudaError_t launchStateUpdate(StateUpdateParams const& p, cudaStream_t stream)
{
    if (p.batch < 0 || p.dim < 0 || p.dState < 1 || p.stateIn == nullptr || p.stateOut == nullptr || p.x == nullptr
        || p.dt == nullptr || p.A == nullptr || p.Bm == nullptr || p.Cm == nullptr || p.y == nullptr)
        return cudaErrorInvalidValue;
    int64_t const threads = static_cast<int64_t>(p.batch) * p.dim * kLanes;
    if (threads == 0)
        return cudaSuccess;
    unsigned const blocks = static_cast<unsigned>((threads + kThreads - 1) / kThreads);
    if (p.type == DType::kFLOAT)
        launchTyped<float>(p, blocks, stream);
    else if (p.type == DType::kHALF)
        launchTyped<__half>(p, blocks, stream);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

} // namespace mq
