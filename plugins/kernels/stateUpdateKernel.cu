// SelectiveStateUpdate kernel; see stateUpdateKernel.h.
#include "stateUpdateKernel.h"

namespace mq
{
namespace
{

#ifndef MQ_SU_LANES
#define MQ_SU_LANES 0 // threads per (batch, channel): 0 = automatic (4 or 2, see launchStateUpdate), or 1, 2, 4, 8, 16
#endif
#ifndef MQ_SU_THREADS
#define MQ_SU_THREADS 128 // threads per block (a multiple of 32)
#endif
#ifndef MQ_SU_LANES_2_ROWS
#define MQ_SU_LANES_2_ROWS 8192 // automatic lanes: 2 from this many (batch, channel) rows on, else 4
#endif
constexpr int kThreads = MQ_SU_THREADS;
constexpr int kVecN = 16; // the vector path's N
static_assert(kThreads % 32 == 0 && (MQ_SU_LANES == 0 || (MQ_SU_LANES <= 16 && (MQ_SU_LANES & (MQ_SU_LANES - 1)) == 0)),
    "bad MQ_SU_LANES / MQ_SU_THREADS");

//! 4 / 2 consecutive values as one vector load (fp32: 16 / 8 bytes, fp16: 8 / 4 bytes), converted to float.
template <typename T>
__device__ __forceinline__ float4 ld4(T const* p)
{
    if constexpr (sizeof(T) == 4)
        return *reinterpret_cast<float4 const*>(p);
    else
    {
        uint2 const q = *reinterpret_cast<uint2 const*>(p);
        float2 const lo = __half22float2(*reinterpret_cast<__half2 const*>(&q.x));
        float2 const hi = __half22float2(*reinterpret_cast<__half2 const*>(&q.y));
        return make_float4(lo.x, lo.y, hi.x, hi.y);
    }
}
template <typename T>
__device__ __forceinline__ float2 ld2(T const* p)
{
    if constexpr (sizeof(T) == 4)
        return *reinterpret_cast<float2 const*>(p);
    else
        return __half22float2(*reinterpret_cast<__half2 const*>(p));
}

//! The S consecutive values src[n0 .. n0 + S) (n0 a multiple of S; rows 16-byte aligned) in as few vector
//! loads as their size allows.
template <int S, typename T>
__device__ __forceinline__ void loadSpl(T const* src, float (&v)[S], int n0)
{
    if constexpr (S % 4 == 0)
    {
#pragma unroll
        for (int i = 0; i < S; i += 4)
        {
            float4 const q = ld4(src + n0 + i);
            v[i] = q.x, v[i + 1] = q.y, v[i + 2] = q.z, v[i + 3] = q.w;
        }
    }
    else if constexpr (S == 2)
    {
        float2 const q = ld2(src + n0);
        v[0] = q.x, v[1] = q.y;
    }
    else
        v[0] = toFloat(src[n0], 1.f);
}
template <int S>
__device__ __forceinline__ void storeSpl(float* dst, float const (&v)[S], int n0)
{
    if constexpr (S % 4 == 0)
    {
#pragma unroll
        for (int i = 0; i < S; i += 4)
            *reinterpret_cast<float4*>(dst + n0 + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
    }
    else if constexpr (S == 2)
        *reinterpret_cast<float2*>(dst + n0) = make_float2(v[0], v[1]);
    else
        dst[n0] = v[0];
}

// kLanes threads per (batch, channel) row. kVec (N == 16, 16-byte aligned state / A / Bm / Cm rows): lane l owns
// states kSpl·l … kSpl·l + kSpl − 1 and reads them, A, Bm and Cm with vector loads; every load of the thread is
// issued before any arithmetic, so a step costs about one memory latency. Otherwise lane l owns states l,
// l + kLanes, … (any N).
template <typename T, bool kVec, int kLanes>
__global__ void __launch_bounds__(kThreads) stateUpdateKernel(StateUpdateParams const p)
{
    constexpr int kSpl = kVecN / kLanes; // states a lane owns on the vector path
    // grid (batch, channel blocks): the row's (b, d) come without a division (a 64-bit (b·D + d) / D stood ~95
    // instructions, a dependent MUFU.RCP chain, before the first load of a latency-bound step)
    int const lane = static_cast<int>(threadIdx.x) % kLanes;
    int const dRaw = static_cast<int>(blockIdx.y) * (kThreads / kLanes) + static_cast<int>(threadIdx.x) / kLanes;
    bool const active = dRaw < p.dim;
    int const d = active ? dRaw : p.dim - 1; // inactive lanes read a valid row and store nothing
    int64_t const b = blockIdx.x;
    int64_t const r = b * p.dim + d; // the (batch, channel) row
    int const N = p.dState;

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
        int const n0 = kSpl * lane;
        float hv[kSpl], av[kSpl], bv[kSpl], cv[kSpl], ho[kSpl];
        loadSpl(p.stateIn + r * N, hv, n0);
        loadSpl(A, av, n0);
        loadSpl(Bm, bv, n0);
        loadSpl(Cm, cv, n0);
        if (p.dtSoftplus)
            dt = softplusTorch(dt);
        float const dx = dt * xv;
#pragma unroll
        for (int k = 0; k < kSpl; ++k)
        {
            ho[k] = fmaf(expf(dt * av[k]), hv[k], dx * bv[k]);
            yv = fmaf(ho[k], cv[k], yv);
        }
        if (active)
            storeSpl(p.stateOut + r * N, ho, n0);
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
        static_cast<T*>(p.y)[r] = fromFloat<T>(yv);
    }
}

template <typename T, int kLanes>
cudaError_t launchTyped(StateUpdateParams const& p, cudaStream_t stream)
{
    int64_t const channelBlocks = (static_cast<int64_t>(p.dim) + kThreads / kLanes - 1) / (kThreads / kLanes);
    if (channelBlocks > 65535) // grid.y
        return cudaErrorInvalidValue;
    dim3 const blocks(static_cast<unsigned>(p.batch), static_cast<unsigned>(channelBlocks));
    bool const vec = p.dState == kVecN && (reinterpret_cast<uintptr_t>(p.stateIn) & 15u) == 0
        && (reinterpret_cast<uintptr_t>(p.stateOut) & 15u) == 0 && (reinterpret_cast<uintptr_t>(p.A) & 15u) == 0
        && (reinterpret_cast<uintptr_t>(p.Bm) & 15u) == 0 && (reinterpret_cast<uintptr_t>(p.Cm) & 15u) == 0;
    if (vec)
        stateUpdateKernel<T, true, kLanes><<<blocks, kThreads, 0, stream>>>(p);
    else
        stateUpdateKernel<T, false, kLanes><<<blocks, kThreads, 0, stream>>>(p);
    return cudaSuccess;
}

//! Lanes per row: fewer rows than MQ_SU_LANES_2_ROWS are latency-bound (4 lanes, the shortest chain a thread);
//! from there on the per-thread work that every lane repeats (the loads of x / Δ / z, softplus) counts, 2 lanes.
template <typename T>
cudaError_t launchLanes(StateUpdateParams const& p, cudaStream_t stream)
{
#if MQ_SU_LANES == 0
    if (static_cast<int64_t>(p.batch) * p.dim >= MQ_SU_LANES_2_ROWS)
        return launchTyped<T, 2>(p, stream);
    return launchTyped<T, 4>(p, stream);
#else
    return launchTyped<T, MQ_SU_LANES>(p, stream);
#endif
}

} // namespace

cudaError_t launchStateUpdate(StateUpdateParams const& p, cudaStream_t stream)
{
    if (p.batch < 0 || p.dim < 0 || p.dState < 1)
        return cudaErrorInvalidValue;
    if (static_cast<int64_t>(p.batch) * p.dim == 0) // empty tensors (TensorRT may pass null for them): nothing to do
        return cudaSuccess;
    if (p.stateIn == nullptr || p.stateOut == nullptr || p.x == nullptr || p.dt == nullptr || p.A == nullptr
        || p.Bm == nullptr || p.Cm == nullptr || p.y == nullptr)
        return cudaErrorInvalidValue;
    cudaError_t const e = p.type == DType::kFLOAT ? launchLanes<float>(p, stream)
        : p.type == DType::kHALF                  ? launchLanes<__half>(p, stream)
                                                  : cudaErrorInvalidValue;
    return e != cudaSuccess ? e : cudaGetLastError();
}

} // namespace mq
