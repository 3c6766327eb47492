// SelectiveScan kernels; see selectiveScanKernel.h for the math, layout and schedule.
#include "selectiveScanKernel.h"

#include <algorithm>

namespace mq
{
namespace
{

constexpr int kThreads = 128; // channels per block
constexpr int kTile = 16;     // tokens staged per step
constexpr int kMaxState = 16;  // N ≤ 16 (Mamba-1 uses 16); the state lives in registers
constexpr int kDefaultPoly = 4; // of the 16 exponentials, these run on the FMA pipe (fp16/int8 inputs)
constexpr float kLog2e = 1.4426950408889634f;

//! 2^x on the FMA pipe (degree-5 fit on [-0.5, 0.5], rel. error ~1e-7); offloads the MUFU unit.
__device__ __forceinline__ float exp2Poly(float x)
{
    x = fminf(fmaxf(x, -126.f), 126.f);
    float const t = x + 12582912.f; // 1.5·2^23: rounds x to the nearest integer in the mantissa
    float const j = t - 12582912.f;
    float const f = x - j;
    int const ji = __float_as_int(t) - 0x4B400000;
    float p = 1.340043216e-03f;
    p = fmaf(p, f, 9.676037098e-03f);
    p = fmaf(p, f, 5.550327214e-02f);
    p = fmaf(p, f, 2.402210736e-01f);
    p = fmaf(p, f, 6.931472067e-01f);
    p = fmaf(p, f, 1.000000075e+00f);
    return __int_as_float(__float_as_int(p) + (ji << 23));
}

struct Work
{
    float* hChunk;   //!< (B, chunks, D, N): pass 1 writes local states, pass 2 turns them into start states
    float* sumDelta; //!< (B, chunks, D)
};

// kPass 1: chunk-local state from zero (+ Σ Δ). kPass 3: outputs from the chunk's start state.
template <typename Tin, typename Tout, int kMaxN, int kPoly, int kPass>
__global__ void __launch_bounds__(kThreads) scanKernel(SelectiveScanParams const p, Work const w, int32_t chunks, int32_t chunkLen)
{
    __shared__ float sB[kTile][kMaxN];
    __shared__ float sC[kPass == 3 ? kTile : 1][kMaxN];

    int const N = p.dState;
    int const D = p.dim;
    int const L = p.seqLen;
    int const d = blockIdx.x * kThreads + threadIdx.x;
    int const c = blockIdx.y;
    int const b = blockIdx.z;
    bool const active = d < D;
    int const tBegin = c * chunkLen;
    int const tEnd = min(L, tBegin + chunkLen);

    auto const* u = static_cast<Tin const*>(p.u);
    auto const* delta = static_cast<Tin const*>(p.delta);
    auto const* Bm = static_cast<Tin const*>(p.Bm);
    auto const* Cm = static_cast<Tin const*>(p.Cm);
    auto const* z = static_cast<Tout const*>(p.z);
    auto* y = static_cast<Tout*>(p.y);

    float a2[kMaxN];
    float h[kMaxN];
    int64_t const stateOff = (static_cast<int64_t>(b) * D + d) * N;
    int64_t const chunkOff = ((static_cast<int64_t>(b) * chunks + c) * D + d) * N;
#pragma unroll
    for (int n = 0; n < kMaxN; ++n)
    {
        a2[n] = (active && n < N) ? p.A[static_cast<int64_t>(d) * N + n] * kLog2e : 0.f;
        float h0 = 0.f;
        if (kPass == 3 && active && n < N)
        {
            if (chunks > 1)
                h0 = w.hChunk[chunkOff + n];
            else if (p.h0 != nullptr)
                h0 = p.h0[stateOff + n];
        }
        h[n] = h0;
    }
    float const bias = (active && p.deltaBias != nullptr) ? p.deltaBias[d] : 0.f;
    float const dSkip = (active && p.Dskip != nullptr) ? p.Dskip[d] : 0.f;
    float sumDelta = 0.f;

    for (int t0 = tBegin; t0 < tEnd; t0 += kTile)
    {
        int const nt = min(kTile, tEnd - t0);
        __syncthreads();
        int64_t const bcBase = (static_cast<int64_t>(b) * L + t0) * N;
        for (int i = threadIdx.x; i < nt * N; i += kThreads)
        {
            int const tt = i / N;
            int const n = i - tt * N;
            sB[tt][n] = toFloat(Bm[bcBase + i], p.bScale);
            if (kPass == 3)
                sC[tt][n] = toFloat(Cm[bcBase + i], p.cScale);
        }
        Tin ur[kTile];
        Tin dr[kTile];
        Tout zr[kTile];
        int64_t const rowBase = (static_cast<int64_t>(b) * L + t0) * D + d;
#pragma unroll
        for (int i = 0; i < kTile; ++i)
        {
            if (active && i < nt)
            {
                ur[i] = u[rowBase + static_cast<int64_t>(i) * D];
                dr[i] = delta[rowBase + static_cast<int64_t>(i) * D];
                if (kPass == 3 && z != nullptr)
                    zr[i] = z[rowBase + static_cast<int64_t>(i) * D];
            }
        }
        __syncthreads();
        if (!active)
            continue;
#pragma unroll
        for (int i = 0; i < kTile; ++i)
        {
            if (i < nt)
            {
                float const uv = toFloat(ur[i], p.uScale);
                float dt = toFloat(dr[i], p.deltaScale) + bias;
                if (p.deltaSoftplus)
                    dt = softplusTorch(dt);
                float const du = dt * uv;
                float yv = 0.f;
#pragma unroll
                for (int n = 0; n < kMaxN; ++n)
                {
                    if (n < N)
                    {
                        float const e = dt * a2[n];
                        float const dA = n < kPoly ? exp2Poly(e) : exp2f(e);
                        h[n] = fmaf(dA, h[n], du * sB[i][n]);
                        if (kPass == 3)
                            yv = fmaf(h[n], sC[i][n], yv);
                    }
                }
                if (kPass == 1)
                    sumDelta += dt;
                if (kPass == 3)
                {
                    yv = fmaf(dSkip, uv, yv);
                    if (z != nullptr)
                        yv *= siluf(toFloat(zr[i], 1.f));
                    y[rowBase + static_cast<int64_t>(i) * D] = fromFloat<Tout>(yv);
                }
            }
        }
    }
    if (!active)
        return;
    if (kPass == 1)
    {
#pragma unroll
        for (int n = 0; n < kMaxN; ++n)
            if (n < N)
                w.hChunk[chunkOff + n] = h[n];
        w.sumDelta[(static_cast<int64_t>(b) * chunks + c) * D + d] = sumDelta;
    }
    else if (p.lastState != nullptr && c == chunks - 1)
    {
#pragma unroll
        for (int n = 0; n < kMaxN; ++n)
            if (n < N)
                p.lastState[stateOff + n] = h[n];
    }
}

//! Pass 2: one thread per (b, d, n) chains the chunk states; hChunk[c] becomes chunk c's start state.
__global__ void chainKernel(SelectiveScanParams const p, Work const w, int32_t chunks)
{
    int64_t const idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int const N = p.dState;
    int const D = p.dim;
    int64_t const total = static_cast<int64_t>(p.batch) * D * N;
    if (idx >= total)
        return;
    int const n = static_cast<int>(idx % N);
    int const d = static_cast<int>((idx / N) % D);
    int const b = static_cast<int>(idx / (static_cast<int64_t>(N) * D));
    float const a = p.A[static_cast<int64_t>(d) * N + n];
    float h = p.h0 != nullptr ? p.h0[idx] : 0.f;
    for (int c = 0; c < chunks; ++c)
    {
        int64_t const cd = (static_cast<int64_t>(b) * chunks + c) * D + d;
        float const local = w.hChunk[cd * N + n];
        w.hChunk[cd * N + n] = h;
        h = fmaf(expf(a * w.sumDelta[cd]), h, local);
    }
}

int32_t chunkLength(SelectiveScanParams const& p, int32_t chunks)
{
    int32_t len = (p.seqLen + chunks - 1) / chunks;
    return ((len + kTile - 1) / kTile) * kTile;
}

template <typename Tin, typename Tout, int kMaxN, int kPoly>
cudaError_t run(SelectiveScanParams const& p, Work const& w, int32_t chunks, cudaStream_t stream)
{
    int32_t const len = chunkLength(p, chunks);
    chunks = (p.seqLen + len - 1) / len; // chunk count after rounding the length to whole tiles
    dim3 const grid((p.dim + kThreads - 1) / kThreads, chunks, p.batch);
    if (chunks > 1)
    {
        scanKernel<Tin, Tout, kMaxN, kPoly, 1><<<grid, kThreads, 0, stream>>>(p, w, chunks, len);
        int64_t const total = static_cast<int64_t>(p.batch) * p.dim * p.dState;
        chainKernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(p, w, chunks);
    }
    scanKernel<Tin, Tout, kMaxN, kPoly, 3><<<grid, kThreads, 0, stream>>>(p, w, chunks, len);
    return cudaGetLastError();
}

template <typename Tin, typename Tout>
cudaError_t dispatchN(SelectiveScanParams const& p, Work const& w, int32_t chunks, cudaStream_t stream)
{
    int poly = p.polyExp;
    if (poly < 0)
        poly = sizeof(Tin) == 4 ? 0 : kDefaultPoly;
    if (poly == 0)
        return run<Tin, Tout, kMaxState, 0>(p, w, chunks, stream);
    return run<Tin, Tout, kMaxState, kDefaultPoly>(p, w, chunks, stream);
}

} // namespace

int32_t selectiveScanChunks(SelectiveScanParams const& p)
{
    int32_t chunks = p.chunks;
    if (chunks <= 0)
    {
        int32_t sms = p.numSMs;
        if (sms <= 0)
        {
            int dev = 0;
            cudaGetDevice(&dev);
            if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
                sms = 80;
        }
        int64_t const rows = static_cast<int64_t>(p.batch) * p.dim;
        int64_t const target = static_cast<int64_t>(sms) * 1024; // resident threads wanted
        chunks = rows >= target ? 1 : static_cast<int32_t>((target + rows - 1) / rows);
        chunks = std::min<int32_t>(chunks, std::max(1, p.seqLen / 128));
    }
    chunks = std::max(1, std::min(chunks, std::max(1, p.seqLen)));
    int32_t const len = chunkLength(p, chunks);
    return std::max(1, (p.seqLen + len - 1) / len);
}

size_t selectiveScanWorkspaceSize(SelectiveScanParams const& p)
{
    int32_t const chunks = selectiveScanChunks(p);
    if (chunks <= 1)
        return 0;
    return static_cast<size_t>(p.batch) * chunks * p.dim * (p.dState + 1) * sizeof(float);
}

cudaError_t launchSelectiveScan(SelectiveScanParams const& p, void* workspace, size_t workspaceSize, cudaStream_t stream)
{
    if (p.batch < 0 || p.seqLen < 0 || p.dim < 0 || p.dState < 1 || p.dState > kMaxState || p.u == nullptr
        || p.delta == nullptr || p.A == nullptr || p.Bm == nullptr || p.Cm == nullptr || p.y == nullptr)
        return cudaErrorInvalidValue;
    if (p.batch == 0 || p.dim == 0)
        return cudaSuccess;
    if (p.seqLen == 0)
    {
        if (p.lastState == nullptr)
            return cudaSuccess;
        size_t const bytes = static_cast<size_t>(p.batch) * p.dim * p.dState * sizeof(float);
        return p.h0 != nullptr ? cudaMemcpyAsync(p.lastState, p.h0, bytes, cudaMemcpyDeviceToDevice, stream)
                               : cudaMemsetAsync(p.lastState, 0, bytes, stream);
    }
    int32_t const chunks = selectiveScanChunks(p);
    Work w{nullptr, nullptr};
    if (chunks > 1)
    {
        size_t const need = selectiveScanWorkspaceSize(p);
        if (workspace == nullptr || workspaceSize < need)
            return cudaErrorInvalidValue;
        w.hChunk = static_cast<float*>(workspace);
        w.sumDelta = w.hChunk + static_cast<size_t>(p.batch) * chunks * p.dim * p.dState;
    }
    if (p.inType == DType::kFLOAT && p.outType == DType::kFLOAT)
        return dispatchN<float, float>(p, w, chunks, stream);
    if (p.inType == DType::kHALF && p.outType == DType::kHALF)
        return dispatchN<__half, __half>(p, w, chunks, stream);
    if (p.inType == DType::kINT8 && p.outType == DType::kHALF)
        return dispatchN<int8_t, __half>(p, w, chunks, stream);
    if (p.inType == DType::kINT8 && p.outType == DType::kFLOAT)
        return dispatchN<int8_t, float>(p, w, chunks, stream);
    return cudaErrorInvalidValue;
}

} // namespace mq
