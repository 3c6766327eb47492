// SelectiveScan kernels; see selectiveScanKernel.h for the math, layout and schedule.
//
// Cost model (what the inner loop is built around): per (token, channel) the scan needs 16 exponentials
// (one per state) plus, per state, dt·a, du·B, the h FMA and the y FMA. On Hopper the MUFU unit does
// 16 exponentials per SM per clock, so the exponentials alone cost ~8 issue-cycles per state per warp;
// a degree-5 polynomial on the FMA pipe costs ~11 issue slots. Everything else is kept off the hot path:
// N is a compile-time 16 (smaller N is zero-padded: a = 0, B = C = 0), the tail tile is handled with a
// "valid" select instead of branches, Bm/Cm tiles are double-buffered in shared memory (one barrier per
// 16-token tile), the next tile's u/Δ/z are copied straight into double-buffered shared memory by
// 16-byte cp.async (B/C through 8 registers) while the current tile is computed, __launch_bounds__(64, 8)
// caps registers at 128 (8 resident blocks per SM), softplus/SiLU use MUFU ex2/rcp plus a short series (no log1pf/expf library calls), and all
// per-token addressing is 32-bit offsets from per-thread base pointers.
#include "selectiveScanKernel.h"

#include <algorithm>

namespace mq
{
namespace
{

constexpr int kThreads = 64;   // channels per block (small blocks spread B·D·chunks evenly over the SMs)
constexpr int kMinBlocks = 8;  // __launch_bounds__ minimum resident blocks per SM: caps registers at 128 a thread
constexpr int kN = 16;         // states per thread (N ≤ 16 is zero-padded to 16)
constexpr int kMaxTile = 16;   // tokens per shared-memory stage: 16, or 8 where 4-byte z/y would spill registers
template <typename Tout>
__host__ __device__ constexpr int tileFor() { return sizeof(Tout) == 4 ? 8 : 16; }
constexpr int kDefaultPoly = 0; // exponentials on the FMA pipe by default: the SASS has ~174 issue slots vs 144 MUFU cycles per warp-token with 2, so all-MUFU balances better
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float ex2Approx(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float rcpApprox(float x)
{
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

//! 2^x on the FMA pipe (degree-5 fit on [-0.5, 0.5], rel. error ~1e-7); offloads the MUFU unit.
__device__ __forceinline__ float exp2Poly(float x)
{
    x = fminf(fmaxf(x, -127.f), 127.f);
    float const t = x + 12582912.f; // 1.5·2^23: rounds x to the nearest integer j in the mantissa
    float const j = t - 12582912.f;
    float const f = x - j;
    float p = 1.340043216e-03f;
    p = fmaf(p, f, 9.676037098e-03f);
    p = fmaf(p, f, 5.550327214e-02f);
    p = fmaf(p, f, 2.402210736e-01f);
    p = fmaf(p, f, 6.931472067e-01f);
    p = fmaf(p, f, 1.000000075e+00f);
    // bits(t) = 0x4B400000 + j and 0x4B400000 << 23 wraps to 0, so bits(t) << 23 == j << 23
    return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
}

//! softplus(x) = max(x, 0) + log1p(e^-|x|), log1p(t) = 2·atanh(t / (2 + t)) by its series (s ≤ 1/3,
//! truncation < 2e-8 relative); matches torch's x for x > 20 to ~2e-9.
__device__ __forceinline__ float softplusFast(float x)
{
    float const t = ex2Approx(-fabsf(x) * kLog2e);
    float const s = t * rcpApprox(2.f + t);
    float const s2 = s * s;
    float q = fmaf(s2, 1.f / 13.f, 1.f / 11.f);
    q = fmaf(s2, q, 1.f / 9.f);
    q = fmaf(s2, q, 1.f / 7.f);
    q = fmaf(s2, q, 1.f / 5.f);
    q = fmaf(s2, q, 1.f / 3.f);
    q = fmaf(s2, q, 1.f);
    return fmaf(2.f * s, q, fmaxf(x, 0.f));
}

__device__ __forceinline__ float siluFast(float z) { return z * rcpApprox(1.f + ex2Approx(-z * kLog2e)); }

struct Work
{
    float* hChunk;   //!< (B, chunks, D, N): pass 1 writes local states, pass 2 turns them into start states
    float* sumDelta; //!< (B, chunks, D)
};

// kPass 1: chunk-local state from zero (+ Σ Δ). kPass 3: outputs from the chunk's start state.
//! 16-byte cp.async global → shared; src_bytes 0 zero-fills the 16 bytes (src is then not read).
__device__ __forceinline__ void cpAsync16(void* smemDst, void const* src, bool valid)
{
    uint32_t const dst = static_cast<uint32_t>(__cvta_generic_to_shared(smemDst));
    int const n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cpAsyncWaitAll() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

//! Copies tile rows [t0, t0 + kTile) (relative to the chunk start, clipped at `len`) of a (B, L, D)
//! tensor's channels [d0, d0 + kThreads) into s[kTile][kThreads]. kAsync: 16-byte cp.async chunks
//! (needs D % (16 / sizeof(T)) == 0 and a 16-byte aligned base); rows past `len` and channels past D
//! are zero-filled. Otherwise each thread loads its own channel (clamped to a valid one) synchronously.
template <bool kAsync, int kTile, typename T>
__device__ __forceinline__ void fillTile(T (*s)[kThreads], T const* base, size_t rowBase, int t0, int len, int d0, int dc, int D)
{
    if constexpr (kAsync)
    {
        constexpr int kPerChunk = 16 / sizeof(T);
        constexpr int kChunksPerRow = kThreads / kPerChunk;
        for (int k = threadIdx.x; k < kTile * kChunksPerRow; k += kThreads)
        {
            int const r = k / kChunksPerRow;
            int const q = k - r * kChunksPerRow;
            int const ch = d0 + q * kPerChunk;
            bool const valid = t0 + r < len && ch < D;
            T const* src = valid ? base + (rowBase + static_cast<size_t>(t0 + r)) * D + ch : base;
            cpAsync16(&s[r][q * kPerChunk], src, valid);
        }
    }
    else
    {
        int const last = min(kTile, len - t0) - 1;
        T const* src = base + (rowBase + static_cast<size_t>(t0)) * D + dc;
#pragma unroll
        for (int i = 0; i < kTile; ++i)
            s[i][threadIdx.x] = src[static_cast<size_t>(min(i, last)) * D];
    }
}

template <typename Tin, typename Tout, int kPoly, int kPass, bool kSoftplus, bool kGate, bool kAsync>
__global__ void __launch_bounds__(kThreads, kMinBlocks) scanKernel(SelectiveScanParams const p, Work const w, int32_t chunks, int32_t chunkLen)
{
    constexpr bool kOut = kPass == 3;
    constexpr int kTile = tileFor<Tout>();
    constexpr int kBcPer = kTile * kN / kThreads; // Bm (and Cm) elements each thread stages per tile
    static_assert(kTile * kN % kThreads == 0, "tile must split evenly over the block");
    __shared__ __align__(16) float sB[2][kTile][kN];
    __shared__ __align__(16) float sC[2][kOut ? kTile : 1][kN];
    __shared__ __align__(16) Tin sU[2][kTile][kThreads];
    __shared__ __align__(16) Tin sD[2][kTile][kThreads];
    __shared__ __align__(16) Tout sZ[2][kGate ? kTile : 1][kThreads];

    int const N = p.dState;
    int const D = p.dim;
    int const L = p.seqLen;
    int const d = blockIdx.x * kThreads + threadIdx.x;
    int const c = blockIdx.y;
    int const b = blockIdx.z;
    bool const active = d < D;
    int const tBegin = c * chunkLen;
    int const tEnd = min(L, tBegin + chunkLen);
    int const len = tEnd - tBegin;
    int const dc = active ? d : D - 1; // inactive lanes read a valid channel and store nothing
    int const d0 = blockIdx.x * kThreads;
    size_t const tokRow0 = static_cast<size_t>(b) * L + tBegin; // (b, tBegin) as a row of the (B·L, D) tensors

    // per-thread base pointers (64-bit once); per-token offsets are 32-bit
    size_t const row0 = (static_cast<size_t>(b) * L + tBegin) * D + dc;
    Tin const* uBase = static_cast<Tin const*>(p.u);
    Tin const* dBase = static_cast<Tin const*>(p.delta);
    Tout const* zBase = kGate ? static_cast<Tout const*>(p.z) : nullptr;
    Tout* yP = static_cast<Tout*>(p.y) + row0;
    size_t const bc0 = (static_cast<size_t>(b) * L + tBegin) * N;
    Tin const* bP = static_cast<Tin const*>(p.Bm) + bc0;
    Tin const* cP = static_cast<Tin const*>(p.Cm) + bc0;

    // staging map: element e = threadIdx.x + j·kThreads of a tile's (token, state) block of N-wide rows
    int sOff[kBcPer];
#pragma unroll
    for (int j = 0; j < kBcPer; ++j)
    {
        int const e = threadIdx.x + j * kThreads;
        int const tt = e / N;
        sOff[j] = tt < kTile ? tt * kN + (e - tt * N) : -1;
    }
    {
        float* sb = &sB[0][0][0];
        for (int i = threadIdx.x; i < 2 * kTile * kN; i += kThreads)
            sb[i] = 0.f;
        float* sc = &sC[0][0][0];
        for (int i = threadIdx.x; i < 2 * (kOut ? kTile : 1) * kN; i += kThreads)
            sc[i] = 0.f;
    }

    float a2[kN];
    float h[kN];
    size_t const stateOff = (static_cast<size_t>(b) * D + dc) * N;
    size_t const chunkOff = ((static_cast<size_t>(b) * chunks + c) * D + dc) * N;
#pragma unroll
    for (int n = 0; n < kN; ++n)
    {
        a2[n] = n < N ? p.A[static_cast<size_t>(dc) * N + n] * kLog2e : 0.f;
        float h0 = 0.f;
        if (kOut && n < N)
        {
            if (chunks > 1)
                h0 = w.hChunk[chunkOff + n];
            else if (p.h0 != nullptr)
                h0 = p.h0[stateOff + n];
        }
        h[n] = h0;
    }
    float const bias = p.deltaBias != nullptr ? p.deltaBias[dc] : 0.f;
    float const dSkip = p.Dskip != nullptr ? p.Dskip[dc] : 0.f;
    float const uScale = p.uScale, dScale = p.deltaScale, bScale = p.bScale, cScale = p.cScale;
    float sumDelta = 0.f;

    float bN[kBcPer], cN[kBcPer];
    // Starts the copy of the tile at token t0 (relative to tBegin): u/Δ/z straight into shared buffer `buf`
    // (cp.async, waited for before the tile's barrier), Bm/Cm into registers (staged by `stage`).
    // Bm/Cm rows past the chunk's end re-read its last token (always in bounds); the compute masks them out.
    auto prefetch = [&](int t0, int buf) {
        int const last = min(kTile, tEnd - tBegin - t0) - 1;
        fillTile<kAsync, kTile>(sU[buf], uBase, tokRow0, t0, len, d0, dc, D);
        fillTile<kAsync, kTile>(sD[buf], dBase, tokRow0, t0, len, d0, dc, D);
        if constexpr (kGate)
            fillTile<kAsync, kTile>(sZ[buf], zBase, tokRow0, t0, len, d0, dc, D);
        int const lim = (last + 1) * N - 1;
        Tin const* bT = bP + static_cast<size_t>(t0) * N;
        Tin const* cT = cP + static_cast<size_t>(t0) * N;
#pragma unroll
        for (int j = 0; j < kBcPer; ++j)
        {
            int const e = min(static_cast<int>(threadIdx.x) + j * kThreads, lim);
            bN[j] = toFloat(bT[e], bScale);
            if constexpr (kOut)
                cN[j] = toFloat(cT[e], cScale);
        }
    };
    auto stage = [&](int buf) {
#pragma unroll
        for (int j = 0; j < kBcPer; ++j)
            if (sOff[j] >= 0)
            {
                (&sB[buf][0][0])[sOff[j]] = bN[j];
                if constexpr (kOut)
                    (&sC[buf][0][0])[sOff[j]] = cN[j];
            }
    };

    __syncthreads(); // zero fill done
    if (len > 0)
        prefetch(0, 0);
    stage(0);
    if constexpr (kAsync)
        cpAsyncWaitAll();
    __syncthreads();

    int buf = 0;
    for (int t0 = 0; t0 < len; t0 += kTile, buf ^= 1)
    {
        bool const more = t0 + kTile < len;
        if (more)
            prefetch(t0 + kTile, buf ^ 1);

        int const nt = min(kTile, len - t0);
        Tout* yT = yP + static_cast<size_t>(t0) * D;
        float4 const* sb = reinterpret_cast<float4 const*>(&sB[buf][0][0]);
        float4 const* sc = reinterpret_cast<float4 const*>(&sC[buf][0][0]);
#pragma unroll
        for (int i = 0; i < kTile; ++i)
        {
            bool const valid = i < nt;
            float const uv = toFloat(sU[buf][i][threadIdx.x], uScale);
            float dt = toFloat(sD[buf][i][threadIdx.x], dScale) + bias;
            if constexpr (kSoftplus)
                dt = softplusFast(dt);
            dt = valid ? dt : 0.f; // tail tokens: dA = 1, du = 0 → state unchanged
            float const du = dt * uv;
            float y0 = 0.f, y1 = 0.f;
#pragma unroll
            for (int q = 0; q < kN / 4; ++q)
            {
                float4 const bq = sb[i * (kN / 4) + q];
                float const bv[4] = {bq.x, bq.y, bq.z, bq.w};
                float cv[4] = {0.f, 0.f, 0.f, 0.f};
                if constexpr (kOut)
                {
                    float4 const cq = sc[i * (kN / 4) + q];
                    cv[0] = cq.x, cv[1] = cq.y, cv[2] = cq.z, cv[3] = cq.w;
                }
#pragma unroll
                for (int r = 0; r < 4; ++r)
                {
                    int const n = 4 * q + r;
                    float const e = dt * a2[n];
                    float const dA = n < kPoly ? exp2Poly(e) : ex2Approx(e);
                    h[n] = fmaf(dA, h[n], du * bv[r]);
                    if constexpr (kOut)
                    {
                        if (r & 1)
                            y1 = fmaf(h[n], cv[r], y1);
                        else
                            y0 = fmaf(h[n], cv[r], y0);
                    }
                }
            }
            if constexpr (kPass == 1)
                sumDelta += dt;
            if constexpr (kOut)
            {
                float yv = fmaf(dSkip, uv, y0 + y1);
                if constexpr (kGate)
                    yv *= siluFast(toFloat(sZ[buf][i][threadIdx.x], 1.f));
                if (valid && active)
                    yT[i * D] = fromFloat<Tout>(yv);
            }
        }
        if (more)
            stage(buf ^ 1);
        if constexpr (kAsync)
            cpAsyncWaitAll();
        __syncthreads();
    }
    if (!active)
        return;
    if constexpr (kPass == 1)
    {
#pragma unroll
        for (int n = 0; n < kN; ++n)
            if (n < N)
                w.hChunk[chunkOff + n] = h[n];
        w.sumDelta[(static_cast<size_t>(b) * chunks + c) * D + d] = sumDelta;
    }
    else if (p.lastState != nullptr && c == chunks - 1)
    {
#pragma unroll
        for (int n = 0; n < kN; ++n)
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
    return ((len + kMaxTile - 1) / kMaxTile) * kMaxTile; // a multiple of every kernel's tile
}

template <typename Tin, typename Tout, int kPoly, bool kSoftplus, bool kGate, bool kAsync>
cudaError_t runAs(SelectiveScanParams const& p, Work const& w, int32_t chunks, int32_t len, cudaStream_t stream)
{
    dim3 const grid((p.dim + kThreads - 1) / kThreads, chunks, p.batch);
    if (chunks > 1)
    {
        scanKernel<Tin, Tout, kPoly, 1, kSoftplus, false, kAsync><<<grid, kThreads, 0, stream>>>(p, w, chunks, len);
        int64_t const total = static_cast<int64_t>(p.batch) * p.dim * p.dState;
        chainKernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(p, w, chunks);
    }
    scanKernel<Tin, Tout, kPoly, 3, kSoftplus, kGate, kAsync><<<grid, kThreads, 0, stream>>>(p, w, chunks, len);
    return cudaGetLastError();
}

bool aligned16(void const* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

template <typename Tin, typename Tout, int kPoly, bool kSoftplus, bool kGate>
cudaError_t run(SelectiveScanParams const& p, Work const& w, int32_t chunks, cudaStream_t stream)
{
    int32_t const len = chunkLength(p, chunks);
    chunks = (p.seqLen + len - 1) / len; // chunk count after rounding the length to whole tiles
    // u/Δ/z tiles go to shared memory by 16-byte cp.async when every row starts 16-byte aligned
    bool const async = p.dim % (16 / sizeof(Tin)) == 0 && aligned16(p.u) && aligned16(p.delta)
        && (!kGate || (p.dim % (16 / sizeof(Tout)) == 0 && aligned16(p.z)));
    return async ? runAs<Tin, Tout, kPoly, kSoftplus, kGate, true>(p, w, chunks, len, stream)
                 : runAs<Tin, Tout, kPoly, kSoftplus, kGate, false>(p, w, chunks, len, stream);
}

template <typename Tin, typename Tout, int kPoly>
cudaError_t dispatchFlags(SelectiveScanParams const& p, Work const& w, int32_t chunks, cudaStream_t stream)
{
    bool const gate = p.z != nullptr;
    if (p.deltaSoftplus)
        return gate ? run<Tin, Tout, kPoly, true, true>(p, w, chunks, stream)
                    : run<Tin, Tout, kPoly, true, false>(p, w, chunks, stream);
    return gate ? run<Tin, Tout, kPoly, false, true>(p, w, chunks, stream)
                : run<Tin, Tout, kPoly, false, false>(p, w, chunks, stream);
}

template <typename Tin, typename Tout>
cudaError_t dispatchPoly(SelectiveScanParams const& p, Work const& w, int32_t chunks, cudaStream_t stream)
{
    int const poly = p.polyExp < 0 ? kDefaultPoly : p.polyExp;
    if (poly == 0)
        return dispatchFlags<Tin, Tout, 0>(p, w, chunks, stream);
    if (poly <= 2)
        return dispatchFlags<Tin, Tout, 2>(p, w, chunks, stream);
    return dispatchFlags<Tin, Tout, 4>(p, w, chunks, stream);
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
        // Chunking re-does every exponential (pass 1 + pass 3). First fitted to the H200 chunk sweep at
        // 176 registers (4 resident 64-thread blocks per SM): one pass for B·D ≥ 128 per SM, else ~2.5 waves
        // of resident blocks, chunks of ≥ 192 tokens. The kernel is now capped at 128 registers
        // (kMinBlocks = 8 resident blocks, twice the warps), so both bounds scale with the residency: a
        // single pass only when B·D fills 3/8 of the resident threads, else ~2.5 waves (not yet re-fitted).
        int64_t const rows = static_cast<int64_t>(p.batch) * p.dim;
        int64_t const resident = static_cast<int64_t>(sms) * kThreads * kMinBlocks;
        if (rows * 8 >= resident * 3)
            chunks = 1;
        else
        {
            int64_t const target = resident * 5 / 2;
            chunks = static_cast<int32_t>(std::min<int64_t>((target + rows - 1) / rows, 1 << 20));
            chunks = std::min<int32_t>(chunks, std::max(1, p.seqLen / 192));
        }
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
    if (p.batch < 0 || p.seqLen < 0 || p.dim < 0 || p.dState < 1 || p.dState > kN || p.u == nullptr
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
    if (static_cast<int64_t>(kMaxTile) * p.dim > INT32_MAX / 2)
        return cudaErrorInvalidValue; // in-tile offsets i·D are 32-bit
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
        return dispatchPoly<float, float>(p, w, chunks, stream);
    if (p.inType == DType::kHALF && p.outType == DType::kHALF)
        return dispatchPoly<__half, __half>(p, w, chunks, stream);
    if (p.inType == DType::kINT8 && p.outType == DType::kHALF)
        return dispatchPoly<int8_t, __half>(p, w, chunks, stream);
    if (p.inType == DType::kINT8 && p.outType == DType::kFLOAT)
        return dispatchPoly<int8_t, float>(p, w, chunks, stream);
    return cudaErrorInvalidValue;
}

} // namespace mq
