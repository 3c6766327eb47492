// SelectiveStateUpdate kernel; see stateUpdateKernel.h.
#include "stateUpdateKernel.h"

namespace mq
{
namespace
{

constexpr int kLanes = 4;     // threads per (batch, channel)
constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) stateUpdateKernel(StateUpdateParams const p)
{
    int64_t const gid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
    int64_t const row = gid / kLanes; // b * D + d
    int const lane = static_cast<int>(gid % kLanes);
    int64_t const rows = static_cast<int64_t>(p.batch) * p.dim;
    bool const active = row < rows;
    int const N = p.dState;
    int const d = active ? static_cast<int>(row % p.dim) : 0;
    int64_t const b = active ? row / p.dim : 0;

    float yv = 0.f;
    float xv = 0.f;
    if (active)
    {
        xv = toFloat(static_cast<T const*>(p.x)[row], 1.f);
        float dt = toFloat(static_cast<T const*>(p.dt)[row], 1.f) + (p.dtBias != nullptr ? p.dtBias[d] : 0.f);
        if (p.dtSoftplus)
            dt = softplusTorch(dt);
        float const dx = dt * xv;
        auto const* Bm = static_cast<T const*>(p.Bm) + b * N;
        auto const* Cm = static_cast<T const*>(p.Cm) + b * N;
        float const* A = p.A + static_cast<int64_t>(d) * N;
        for (int n = lane; n < N; n += kLanes)
        {
            float const h = fmaf(expf(dt * A[n]), p.stateIn[row * N + n], dx * toFloat(Bm[n], 1.f));
            p.stateOut[row * N + n] = h;
            yv = fmaf(h, toFloat(Cm[n], 1.f), yv);
        }
    }
#pragma unroll
    for (int o = kLanes / 2; o > 0; o /= 2)
        yv += __shfl_xor_sync(0xffffffffu, yv, o, kLanes);
    if (active && lane == 0)
    {
        yv = fmaf(p.Dskip != nullptr ? p.Dskip[d] : 0.f, xv, yv);
        if (p.z != nullptr)
            yv *= siluf(toFloat(static_cast<T const*>(p.z)[row], 1.f));
        static_cast<T*>(p.y)[row] = fromFloat<T>(yv);
    }
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
        stateUpdateKernel<float><<<blocks, kThreads, 0, stream>>>(p);
    else if (p.type == DType::kHALF)
        stateUpdateKernel<__half><<<blocks, kThreads, 0, stream>>>(p);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

} // namespace mq
