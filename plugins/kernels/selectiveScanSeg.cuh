// Segment-parallel schedule of the selective scan (experimental). Included by selectiveScanKernel.cu inside its
// anonymous namespace, after the shared helpers (ex2Approx, softplusFast, siluFast, kN, kLog2e), when built with
// -DMQ_SCAN_SEGMENTED=1; run only on request (SelectiveScanParams::schedule = 2 or setSelectiveScanTuning).
//
// Measured on an H200 (benchmarks/gpu/results/NOTES.md): correct (every test and compute-sanitizer case), but 1.4-2.1×
// slower than the chunked token-serial schedule on every benchmarked shape, including the small ones it is for
// (B1 L4096 D1536: best configuration 0.167 ms against 0.121 ms). ncu: issue- and L1-bound (0.42 issued warps a
// scheduler, L1/shared throughput 70 %): ~15 instructions a (token, state) against ~5 in the serial loop, because Bm/Cm
// reads are not broadcast (lanes read different tokens) and Δ, y go through shared memory. Kept, off by default, so that
// the measurement can be reproduced and improved on; see the notes for what did not work and what might.
//
// For B·D too small to fill the GPU with a thread pair per channel. The token-serial schedule then splits L into
// chunks and reruns every chunk past the first from its true start state, so every exponential of those chunks is
// computed twice. Here L is split inside a block instead, without recomputation:
//   * a group of kLanes lanes (a sub-warp) scans one (channel, state group) pair; lane s owns tokens
//     [s·kK, s·kK + kK) of a kLanes·kK-token tile;
//   * per state, each lane computes a_i = exp(Δ_i·A) and b_i = Δ_i·u_i·Bm_i of its tokens (registers), the
//     segment's transfer (exp(A·ΣΔ), end state from zero), a Kogge-Stone scan over the group composes the
//     transfers with the tile's carry-in state, and the lane reruns h_i = a_i·h_{i-1} + b_i from its start
//     state with FMAs only, accumulating y_i += Cm_i·h_i.
// Every exponential is computed once (plus one a segment and state for the transfer). The price: ~3 FMA-pipe
// instructions a (token, state) more than the serial loop, shared-memory staging and 4 barriers a tile.
//
// Block: 256 threads = kGroups state groups × kCb channels × kLanes lanes, kCb = 256 / (kLanes·kGroups); group g
// of a channel owns states [g·16/kGroups, (g+1)·16/kGroups) (states ≥ N are zero: a = 1, Bm = Cm = 0).
// Per tile: (1) all threads stage Bm/Cm (transposed to [state][token], fp32) and Δ, Δ·u of the block's channels
// (softplus once per (token, channel)); (2) each lane loads its Δ, Δ·u; (3) the state loop; (4) the groups' partial
// y go back through shared memory and all threads finish y (sum of the groups, D·u, SiLU(z)) with coalesced stores.
// Shared-memory rows are padded so that every lane's float4 reads are conflict-free (row stride ≡ 4 mod 32 words,
// segment stride kK + 4).

namespace seg
{

constexpr int kThreads = 256;
constexpr int kK = 8; // tokens a lane owns in a tile
#ifndef MQ_SCAN_SEG_MIN_BLOCKS
#define MQ_SCAN_SEG_MIN_BLOCKS 4
#endif
constexpr int kMinBlocks = MQ_SCAN_SEG_MIN_BLOCKS; // 4 blocks of 256 threads: 64 registers a thread

template <int kLanes>
struct Layout
{
    static constexpr int kT = kLanes * kK;       // tokens a tile
    static constexpr int kSeg = kK + 4;          // words a segment (padding: conflict-free float4 reads)
    static constexpr int kRow = kLanes * kSeg + 4; // words a (state or channel) row, ≡ 4 mod 32
    static_assert(kLanes * kSeg % 32 == 0, "row padding assumes whole bank rounds");
    __device__ static __forceinline__ int at(int r) { return (r / kK) * kSeg + (r % kK); }
};

//! Shared memory (bytes) of one block.
template <int kLanes, int kGroups>
constexpr size_t sharedBytes()
{
    constexpr int kCb = kThreads / (kLanes * kGroups);
    constexpr int kSubs = kThreads / kLanes;
    constexpr int kWork = (2 * kCb > kSubs ? 2 * kCb : kSubs);
    return static_cast<size_t>(2 * kN + kWork) * Layout<kLanes>::kRow * sizeof(float);
}

template <typename Tin, typename Tout, int kLanes, int kGroups, bool kSoftplus, bool kGate>
__global__ void __launch_bounds__(kThreads, kMinBlocks) scanSegKernel(SelectiveScanParams const p)
{
    using Lay = Layout<kLanes>;
    constexpr int kT = Lay::kT;
    constexpr int kRow = Lay::kRow;
    constexpr int kCb = kThreads / (kLanes * kGroups); // channels a block
    constexpr int kNS = kN / kGroups;                  // states a group
    static_assert(kCb >= 1 && kThreads % (kLanes * kGroups) == 0, "whole channels a block");
    extern __shared__ __align__(16) float smem[];
    float* const sB = smem;
    float* const sC = sB + kN * kRow;
    float* const sDt = sC + kN * kRow; // Δ, then (after every lane has read it) the partial y of each sub-warp
    float* const sDu = sDt + kCb * kRow;
    float* const sY = sDt;

    int const N = p.dState;
    int const D = p.dim;
    int const L = p.seqLen;
    int const b = blockIdx.y;
    int const d0 = blockIdx.x * kCb;
    int const sub = threadIdx.x / kLanes; // sub-warp: (channel, group)
    int const lane = threadIdx.x % kLanes;
    int const subBase = threadIdx.x & 31 & ~(kLanes - 1); // first lane of the sub-warp within the warp
    int const chL = sub / kGroups;
    int const nBase = (sub % kGroups) * kNS;
    int const d = d0 + chL;
    bool const active = d < D;
    int const dc = active ? d : D - 1;
    unsigned const full = 0xffffffffu;

    // lane j holds the A·log2(e) and carried state of states nBase + j + kLanes·k, k < kPer
    constexpr int kPer = (kNS + kLanes - 1) / kLanes;
    float a2Lane[kPer], carry[kPer];
#pragma unroll
    for (int k = 0; k < kPer; ++k)
    {
        int const j = lane + k * kLanes;
        int const n = nBase + j;
        a2Lane[k] = 0.f, carry[k] = 0.f;
        if (j < kNS && n < N)
        {
            a2Lane[k] = p.A[static_cast<size_t>(dc) * N + n] * kLog2e;
            if (p.h0 != nullptr)
                carry[k] = p.h0[(static_cast<size_t>(b) * D + dc) * N + n];
        }
    }
    // rows of states ≥ N stay zero for the whole kernel (the staging writes states < N only)
    for (int i = threadIdx.x; i < 2 * kN * kRow; i += kThreads)
        smem[i] = 0.f;

    Tin const* const uP = static_cast<Tin const*>(p.u);
    Tin const* const dP = static_cast<Tin const*>(p.delta);
    Tin const* const bP = static_cast<Tin const*>(p.Bm);
    Tin const* const cP = static_cast<Tin const*>(p.Cm);
    Tout const* const zP = kGate ? static_cast<Tout const*>(p.z) : nullptr;
    Tout* const yP = static_cast<Tout*>(p.y);
    float const uScale = p.uScale, dScale = p.deltaScale, bScale = p.bScale, cScale = p.cScale;

    for (int t0 = 0; t0 < L; t0 += kT)
    {
        int const cnt = min(kT, L - t0);
        size_t const row0 = static_cast<size_t>(b) * L + t0; // (b, t0) as a row of the (B·L, ·) tensors
        __syncthreads(); // the previous tile's readers are done with every buffer
        // (1a) Bm, Cm: (cnt, N) elements from row0, transposed to [state][token]
        {
            Tin const* const bT = bP + row0 * N;
            Tin const* const cT = cP + row0 * N;
            if (N == kN)
            {
                int const n = threadIdx.x % kN;
                for (int r = threadIdx.x / kN; r < cnt; r += kThreads / kN)
                {
                    sB[n * kRow + Lay::at(r)] = toFloat(bT[r * kN + n], bScale);
                    sC[n * kRow + Lay::at(r)] = toFloat(cT[r * kN + n], cScale);
                }
            }
            else
            {
                for (int e = threadIdx.x; e < cnt * N; e += kThreads)
                {
                    int const r = e / N;
                    int const n = e - r * N;
                    sB[n * kRow + Lay::at(r)] = toFloat(bT[e], bScale);
                    sC[n * kRow + Lay::at(r)] = toFloat(cT[e], cScale);
                }
            }
            for (int e = cnt * N + threadIdx.x; e < kT * N; e += kThreads) // tail tokens: Bm = Cm = 0
            {
                int const r = e / N;
                int const n = e - r * N;
                sB[n * kRow + Lay::at(r)] = 0.f;
                sC[n * kRow + Lay::at(r)] = 0.f;
            }
        }
        // (1b) Δ and Δ·u of the block's channels; tail tokens and channels past D get Δ = 0 (a = 1, b = 0)
#pragma unroll 2
        for (int k = 0; k < kT * kCb / kThreads; ++k)
        {
            int const e = threadIdx.x + k * kThreads;
            int const r = e / kCb;
            int const c = e % kCb;
            int const dd = d0 + c;
            float dt = 0.f, du = 0.f;
            if (r < cnt && dd < D)
            {
                size_t const off = (row0 + r) * D + dd;
                dt = toFloat(dP[off], dScale) + (p.deltaBias != nullptr ? p.deltaBias[dd] : 0.f);
                if constexpr (kSoftplus)
                    dt = softplusFast(dt);
                du = dt * toFloat(uP[off], uScale);
            }
            sDt[c * kRow + Lay::at(r)] = dt;
            sDu[c * kRow + Lay::at(r)] = du;
        }
        __syncthreads();
        // (2) this lane's Δ, Δ·u
        float dt[kK], du[kK];
        {
            float4 const* const sd = reinterpret_cast<float4 const*>(sDt + chL * kRow + lane * Lay::kSeg);
            float4 const* const su = reinterpret_cast<float4 const*>(sDu + chL * kRow + lane * Lay::kSeg);
#pragma unroll
            for (int q = 0; q < kK / 4; ++q)
            {
                float4 const v = sd[q];
                float4 const w = su[q];
                dt[4 * q] = v.x, dt[4 * q + 1] = v.y, dt[4 * q + 2] = v.z, dt[4 * q + 3] = v.w;
                du[4 * q] = w.x, du[4 * q + 1] = w.y, du[4 * q + 2] = w.z, du[4 * q + 3] = w.w;
            }
        }
        float sumDt = 0.f;
#pragma unroll
        for (int i = 0; i < kK; ++i)
            sumDt += dt[i];
        __syncthreads(); // sY overwrites sDt / sDu
        // (3) the states of this group
        float y[kK];
#pragma unroll
        for (int i = 0; i < kK; ++i)
            y[i] = 0.f;
#pragma unroll
        for (int k = 0; k < kPer; ++k)
#pragma unroll 1
        for (int jl = 0; jl < (kNS - k * kLanes < kLanes ? kNS - k * kLanes : kLanes); ++jl)
        {
            int const n = nBase + k * kLanes + jl;
            float const a2 = __shfl_sync(full, a2Lane[k], subBase + jl);
            float const cIn = __shfl_sync(full, carry[k], subBase + jl);
            float4 const* const sb = reinterpret_cast<float4 const*>(sB + n * kRow + lane * Lay::kSeg);
            float a[kK], bb[kK];
#pragma unroll
            for (int q = 0; q < kK / 4; ++q)
            {
                float4 const v = sb[q];
                float const bv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int r = 0; r < 4; ++r)
                {
                    int const i = 4 * q + r;
                    a[i] = ex2Approx(dt[i] * a2);
                    bb[i] = du[i] * bv[r];
                }
            }
            // segment transfer h_end = tA·h_start + tB
            float tA = ex2Approx(sumDt * a2);
            float tB = bb[0];
#pragma unroll
            for (int i = 1; i < kK; ++i)
                tB = fmaf(a[i], tB, bb[i]);
            // inclusive scan over the sub-warp: (earlier ∘ later) = (A·A', A·B' + B)
#pragma unroll
            for (int off = 1; off < kLanes; off *= 2)
            {
                float const pA = __shfl_up_sync(full, tA, off, kLanes);
                float const pB = __shfl_up_sync(full, tB, off, kLanes);
                if (lane >= off)
                {
                    tB = fmaf(tA, pB, tB);
                    tA *= pA;
                }
            }
            float const hEnd = fmaf(tA, cIn, tB); // true state at the end of this lane's segment
            float h = __shfl_up_sync(full, hEnd, 1, kLanes);
            if (lane == 0)
                h = cIn;
            float const next = __shfl_sync(full, hEnd, subBase + kLanes - 1);
            if (lane == jl)
                carry[k] = next;
            float4 const* const sc = reinterpret_cast<float4 const*>(sC + n * kRow + lane * Lay::kSeg);
#pragma unroll
            for (int q = 0; q < kK / 4; ++q)
            {
                float4 const v = sc[q];
                float const cv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int r = 0; r < 4; ++r)
                {
                    int const i = 4 * q + r;
                    h = fmaf(a[i], h, bb[i]);
                    y[i] = fmaf(cv[r], h, y[i]);
                }
            }
        }
        // (4) partial y → shared memory; every thread finishes (token, channel) outputs
        {
            float4* const sy = reinterpret_cast<float4*>(sY + sub * kRow + lane * Lay::kSeg);
#pragma unroll
            for (int q = 0; q < kK / 4; ++q)
                sy[q] = make_float4(y[4 * q], y[4 * q + 1], y[4 * q + 2], y[4 * q + 3]);
        }
        __syncthreads();
#pragma unroll 2
        for (int k = 0; k < kT * kCb / kThreads; ++k)
        {
            int const e = threadIdx.x + k * kThreads;
            int const r = e / kCb;
            int const c = e % kCb;
            int const dd = d0 + c;
            if (r < cnt && dd < D)
            {
                float acc = 0.f;
#pragma unroll
                for (int g = 0; g < kGroups; ++g)
                    acc += sY[(c * kGroups + g) * kRow + Lay::at(r)];
                size_t const off = (row0 + r) * D + dd;
                if (p.Dskip != nullptr)
                    acc = fmaf(p.Dskip[dd], toFloat(uP[off], uScale), acc);
                if constexpr (kGate)
                    acc *= siluFast(toFloat(zP[off], 1.f));
                yP[off] = fromFloat<Tout>(acc);
            }
        }
    }
    if (p.lastState != nullptr && active)
    {
#pragma unroll
        for (int k = 0; k < kPer; ++k)
        {
            int const j = lane + k * kLanes;
            if (j < kNS && nBase + j < N)
                p.lastState[(static_cast<size_t>(b) * D + d) * N + nBase + j] = carry[k];
        }
    }
}

//! Launches `kernel(p)` over (⌈D / channels⌉, B) blocks with `smem` bytes of dynamic shared memory (opted in above 48 KB).
template <typename Kernel>
cudaError_t launchChannels(Kernel* kernel, SelectiveScanParams const& p, int channels, int threads, size_t smem, cudaStream_t stream)
{
    if (smem > 48 * 1024)
    {
        cudaError_t const e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        if (e != cudaSuccess)
            return e;
    }
    dim3 const grid(static_cast<unsigned>((p.dim + channels - 1) / channels), static_cast<unsigned>(p.batch));
    kernel<<<grid, threads, smem, stream>>>(p);
    return cudaGetLastError();
}

template <typename Tin, typename Tout, int kLanes, int kGroups, bool kSoftplus, bool kGate>
cudaError_t launch(SelectiveScanParams const& p, cudaStream_t stream)
{
    return launchChannels(scanSegKernel<Tin, Tout, kLanes, kGroups, kSoftplus, kGate>, p, kThreads / (kLanes * kGroups), kThreads,
        sharedBytes<kLanes, kGroups>(), stream);
}

//! (lanes, groups) configurations that are compiled; anything else is refused by `run`.
template <typename Tin, typename Tout, bool kSoftplus, bool kGate>
cudaError_t run(SelectiveScanParams const& p, int lanes, int groups, cudaStream_t stream)
{
    switch (lanes * 8 + groups)
    {
    case 8 * 8 + 1: return launch<Tin, Tout, 8, 1, kSoftplus, kGate>(p, stream);
    case 16 * 8 + 1: return launch<Tin, Tout, 16, 1, kSoftplus, kGate>(p, stream);
    case 16 * 8 + 2: return launch<Tin, Tout, 16, 2, kSoftplus, kGate>(p, stream);
    case 16 * 8 + 4: return launch<Tin, Tout, 16, 4, kSoftplus, kGate>(p, stream);
    case 32 * 8 + 2: return launch<Tin, Tout, 32, 2, kSoftplus, kGate>(p, stream);
    case 32 * 8 + 4: return launch<Tin, Tout, 32, 4, kSoftplus, kGate>(p, stream);
    default: return cudaErrorInvalidValue;
    }
}

//! True when (lanes, groups) is one of the compiled configurations.
constexpr bool compiled(int lanes, int groups)
{
    return (lanes == 8 && groups == 1) || (lanes == 16 && (groups == 1 || groups == 2 || groups == 4))
        || (lanes == 32 && (groups == 2 || groups == 4));
}

} // namespace seg
