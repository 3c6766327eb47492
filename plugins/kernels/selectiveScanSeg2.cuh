// Segment-parallel schedule, second form (experimental; schedule 3). Included by selectiveScanKernel.cu inside its
// anonymous namespace, after the shared helpers, when built with -DMQ_SCAN_SEGMENTED=1.
//
// The first form (selectiveScanSeg.cuh) gave each token segment to a lane, so Bm/Cm reads were not broadcast and
// Δ / y went through shared memory per lane. Here lanes are channels, as in the token-serial loop, and the token
// segments are the warps of a block:
//   * warp w of a block owns tokens [w·kK, (w+1)·kK) of a kS·kK-token tile; in a warp, kQ adjacent lanes share a
//     channel (kNT = 16/kQ states each), so a warp covers 32/kQ channels and every Bm/Cm read is a broadcast;
//   * per tile each thread computes a_ik = exp(Δ_i·A_k) and b_ik = Δ_i·u_i·Bm_ik of its kK tokens × kNT states
//     (registers), the segment's transfer (Π a, the end state from zero) and writes it to shared memory;
//   * after the tile's one barrier, each thread composes the transfers of the warps before it with the carried
//     state (warp kS−1 also hands the tile's end state on), reruns h_ik = a_ik·h + b_ik with FMAs and accumulates
//     y_i; a reduce-scatter over the kQ lanes of a channel leaves token i of the segment with lane i (kK = kQ),
//     which adds D·u, applies SiLU(z) and stores.
// Per (token, channel) work (softplus, SiLU, D·u) is done once, by one thread each, while the next tile is
// staged; the staging buffers are triple-buffered so that one barrier a tile orders everything.
//
// Measured on an H200 (benchmarks/gpu/results/NOTES.md): correct, but slower than both the token-serial schedule and
// the first form (B1 L4096 D1536: 0.223 ms at 4×8 against 0.120 ms): ~12 instructions a (token, state) between
// barriers and a dependent chain over the earlier warps' transfers each tile, at 16 resident warps a SM.

namespace seg2
{

constexpr int kWarpLanes = 32;

template <int kQ, int kS>
struct Cfg
{
    static constexpr int kK = kQ;              // tokens a warp segment (= lanes a channel: one output each)
    static constexpr int kNT = kN / kQ;        // states a thread
    static constexpr int kThreads = kS * kWarpLanes;
    static constexpr int kCb = kWarpLanes / kQ; // channels a block
    static constexpr int kT = kS * kK;         // tokens a tile
    static constexpr int kTP = kT + 4;         // padded per-channel row (words)
    static constexpr int kPerThread = kT * kCb / kThreads; // (token, channel) elements a thread stages
    // one staging buffer: Bm, Cm [kT][16] fp32; Δ, Δ·u, SiLU(z), D·u [kCb][kTP]
    static constexpr int kStageWords = 2 * kT * kN + 4 * kCb * kTP;
    // transfers [2][kS][2 (A, B)][kThreads/kS lanes][kNT], carried state [2][lanes][kNT]
    static constexpr int kXferWords = 2 * kS * 2 * kWarpLanes * kNT;
    static constexpr int kCarryWords = 2 * kWarpLanes * kNT;
    static constexpr size_t kSmemBytes = (3 * kStageWords + kXferWords + kCarryWords) * sizeof(float);
    static_assert(kPerThread == 1, "one (token, channel) element a thread a tile");
    static_assert(kNT == 2 || kNT == 4, "float2 / float4 state groups");
};

template <int kNT>
struct Vec;
template <>
struct Vec<4>
{
    using T = float4;
    __device__ static __forceinline__ void get(T v, float* o) { o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w; }
    __device__ static __forceinline__ T make(float const* o) { return make_float4(o[0], o[1], o[2], o[3]); }
};
template <>
struct Vec<2>
{
    using T = float2;
    __device__ static __forceinline__ void get(T v, float* o) { o[0] = v.x, o[1] = v.y; }
    __device__ static __forceinline__ T make(float const* o) { return make_float2(o[0], o[1]); }
};

template <typename Tin, typename Tout, int kQ, int kS, bool kSoftplus, bool kGate>
__global__ void __launch_bounds__(Cfg<kQ, kS>::kThreads, 512 / Cfg<kQ, kS>::kThreads) scanSeg2Kernel(SelectiveScanParams const p)
{
    using C = Cfg<kQ, kS>;
    constexpr int kK = C::kK, kNT = C::kNT, kCb = C::kCb, kT = C::kT, kTP = C::kTP;
    using V = Vec<kNT>;
    using VT = typename V::T;
    extern __shared__ __align__(16) float smem[];
    float* const sStage = smem;
    float* const sXfer = smem + 3 * C::kStageWords;
    float* const sCarry = sXfer + C::kXferWords;

    int const N = p.dState;
    int const D = p.dim;
    int const L = p.seqLen;
    int const b = blockIdx.y;
    int const d0 = blockIdx.x * kCb;
    int const w = threadIdx.x / kWarpLanes;   // segment
    int const lane = threadIdx.x % kWarpLanes;
    int const c = lane / kQ;                  // channel in the block
    int const q = lane % kQ;                  // state group; also the token of the segment this lane outputs
    int const d = d0 + c;
    bool const active = d < D;
    int const dc = active ? d : D - 1;
    int const n0 = q * kNT;

    float a2[kNT];
#pragma unroll
    for (int k = 0; k < kNT; ++k)
        a2[k] = n0 + k < N ? p.A[static_cast<size_t>(dc) * N + n0 + k] * kLog2e : 0.f;

    Tin const* const uP = static_cast<Tin const*>(p.u);
    Tin const* const dP = static_cast<Tin const*>(p.delta);
    Tin const* const bP = static_cast<Tin const*>(p.Bm);
    Tin const* const cP = static_cast<Tin const*>(p.Cm);
    Tout const* const zP = kGate ? static_cast<Tout const*>(p.z) : nullptr;
    Tout* const yP = static_cast<Tout*>(p.y);

    // staging element of this thread: (token sr, channel sc) of the tile; Bm/Cm elements e = threadIdx.x + j·kThreads
    int const sr = threadIdx.x / kCb;
    int const sc = threadIdx.x % kCb;
    int const sd = d0 + sc;
    float const sBias = sd < D && p.deltaBias != nullptr ? p.deltaBias[sd] : 0.f;
    float const sDskip = sd < D && p.Dskip != nullptr ? p.Dskip[sd] : 0.f;
    constexpr int kBcPer = kT * kN / C::kThreads;

    // raw loads of one tile's staging data into registers (issued a tile ahead)
    Tin rawD{}, rawU{};
    Tout rawZ{};
    Tin rawB[kBcPer], rawC[kBcPer];
    auto load = [&](int t0) {
        int const cnt = min(kT, L - t0);
        size_t const row0 = static_cast<size_t>(b) * L + t0;
        if (sr < cnt && sd < D)
        {
            size_t const off = (row0 + sr) * D + sd;
            rawD = dP[off];
            rawU = uP[off];
            if constexpr (kGate)
                rawZ = zP[off];
        }
#pragma unroll
        for (int j = 0; j < kBcPer; ++j)
        {
            int const e = threadIdx.x + j * C::kThreads;
            int const r = e / kN;
            int const n = e % kN;
            if (r < cnt && n < N)
            {
                rawB[j] = bP[(row0 + r) * N + n];
                rawC[j] = cP[(row0 + r) * N + n];
            }
        }
    };
    // converts the raw registers into staging buffer `buf` (tail tokens / padded states: Δ = 0, Bm = Cm = 0)
    auto stage = [&](int t0, int buf) {
        int const cnt = min(kT, L - t0);
        float* const st = sStage + buf * C::kStageWords;
        float* const sB = st;
        float* const sC = sB + kT * kN;
        float* const sDt = sC + kT * kN;
        float* const sDu = sDt + kCb * kTP;
        float* const sG = sDu + kCb * kTP;
        float* const sDU = sG + kCb * kTP;
        float dt = 0.f, du = 0.f, g = 0.f, dU = 0.f;
        if (sr < cnt && sd < D)
        {
            float const u = toFloat(rawU, p.uScale);
            dt = toFloat(rawD, p.deltaScale) + sBias;
            if constexpr (kSoftplus)
                dt = softplusFast(dt);
            du = dt * u;
            dU = sDskip * u;
            g = kGate ? siluFast(toFloat(rawZ, 1.f)) : 1.f;
        }
        sDt[sc * kTP + sr] = dt;
        sDu[sc * kTP + sr] = du;
        sG[sc * kTP + sr] = g;
        sDU[sc * kTP + sr] = dU;
#pragma unroll
        for (int j = 0; j < kBcPer; ++j)
        {
            int const e = threadIdx.x + j * C::kThreads;
            int const r = e / kN;
            int const n = e % kN;
            bool const ok = r < cnt && n < N;
            sB[e] = ok ? toFloat(rawB[j], p.bScale) : 0.f;
            sC[e] = ok ? toFloat(rawC[j], p.cScale) : 0.f;
        }
    };

    // carried state of (channel, state group) = lane, starting from h0 / zero
    if (w == 0)
    {
        float h0[kNT];
#pragma unroll
        for (int k = 0; k < kNT; ++k)
            h0[k] = p.h0 != nullptr && n0 + k < N ? p.h0[(static_cast<size_t>(b) * D + dc) * N + n0 + k] : 0.f;
        reinterpret_cast<VT*>(sCarry)[lane] = V::make(h0);
    }
    if (L > 0)
    {
        load(0);
        stage(0, 0);
    }
    __syncthreads();

    int tile = 0;
    for (int t0 = 0; t0 < L; t0 += kT, ++tile)
    {
        int const buf = tile % 3;
        bool const more = t0 + kT < L;
        if (more)
            load(t0 + kT);
        float const* const st = sStage + buf * C::kStageWords;
        float const* const sB = st;
        float const* const sC = sB + kT * kN;
        float const* const sDt = sC + kT * kN;
        float const* const sDu = sDt + kCb * kTP;
        float const* const sG = sDu + kCb * kTP;
        float const* const sDU = sG + kCb * kTP;

        // (1) a, b of this segment's tokens × this thread's states, and the segment transfer
        float a[kK][kNT], bb[kK][kNT];
        float tA[kNT], tB[kNT];
#pragma unroll
        for (int i = 0; i < kK; ++i)
        {
            int const r = w * kK + i;
            float const dt = sDt[c * kTP + r];
            float const du = sDu[c * kTP + r];
            float bv[kNT];
            V::get(reinterpret_cast<VT const*>(sB + r * kN)[q], bv);
#pragma unroll
            for (int k = 0; k < kNT; ++k)
            {
                a[i][k] = ex2Approx(dt * a2[k]);
                bb[i][k] = du * bv[k];
                tA[k] = i == 0 ? a[i][k] : tA[k] * a[i][k];
                tB[k] = i == 0 ? bb[i][k] : fmaf(a[i][k], tB[k], bb[i][k]);
            }
        }
        float* const xf = sXfer + (tile & 1) * (kS * 2 * kWarpLanes * kNT);
        reinterpret_cast<VT*>(xf + (w * 2) * kWarpLanes * kNT)[lane] = V::make(tA);
        reinterpret_cast<VT*>(xf + (w * 2 + 1) * kWarpLanes * kNT)[lane] = V::make(tB);
        // (2) next tile's staging (its buffer was last read two tiles ago, before the previous barrier)
        if (more)
            stage(t0 + kT, (tile + 1) % 3);
        __syncthreads();
        // (3) start state: the carried state through the transfers of the segments before this one
        float h[kNT];
        V::get(reinterpret_cast<VT const*>(sCarry + (tile & 1) * kWarpLanes * kNT)[lane], h);
        for (int v = 0; v < w; ++v)
        {
            float pa[kNT], pb[kNT];
            V::get(reinterpret_cast<VT const*>(xf + (v * 2) * kWarpLanes * kNT)[lane], pa);
            V::get(reinterpret_cast<VT const*>(xf + (v * 2 + 1) * kWarpLanes * kNT)[lane], pb);
#pragma unroll
            for (int k = 0; k < kNT; ++k)
                h[k] = fmaf(pa[k], h[k], pb[k]);
        }
        if (w == kS - 1) // the tile's end state, carried into the next tile
        {
            float e[kNT];
#pragma unroll
            for (int k = 0; k < kNT; ++k)
                e[k] = fmaf(tA[k], h[k], tB[k]);
            reinterpret_cast<VT*>(sCarry + ((tile + 1) & 1) * kWarpLanes * kNT)[lane] = V::make(e);
            if (!more && p.lastState != nullptr && active)
            {
#pragma unroll
                for (int k = 0; k < kNT; ++k)
                    if (n0 + k < N)
                        p.lastState[(static_cast<size_t>(b) * D + d) * N + n0 + k] = e[k];
            }
        }
        // (4) rerun from the start state; y partial over this thread's states
        float yp[kK];
#pragma unroll
        for (int i = 0; i < kK; ++i)
        {
            int const r = w * kK + i;
            float cv[kNT];
            V::get(reinterpret_cast<VT const*>(sC + r * kN)[q], cv);
            float acc = 0.f;
#pragma unroll
            for (int k = 0; k < kNT; ++k)
            {
                h[k] = fmaf(a[i][k], h[k], bb[i][k]);
                acc = fmaf(cv[k], h[k], acc);
            }
            yp[i] = acc;
        }
        // (5) reduce-scatter over the kQ lanes of the channel: lane q ends with token q's sum
#pragma unroll
        for (int m = kQ / 2, width = kK; m >= 1; m /= 2, width /= 2)
        {
            bool const upper = (q & m) != 0;
#pragma unroll
            for (int j = 0; j < width / 2; ++j)
            {
                float const send = upper ? yp[j] : yp[j + width / 2];
                float const recv = __shfl_xor_sync(0xffffffffu, send, m);
                yp[j] = (upper ? yp[j + width / 2] : yp[j]) + recv;
            }
        }
        int const r = w * kK + q;
        if (active && t0 + r < L)
        {
            float const yv = (yp[0] + sDU[c * kTP + r]) * sG[c * kTP + r];
            yP[(static_cast<size_t>(b) * L + t0 + r) * D + d] = fromFloat<Tout>(yv);
        }
    }
}

template <typename Tin, typename Tout, int kQ, int kS, bool kSoftplus, bool kGate>
cudaError_t launch(SelectiveScanParams const& p, cudaStream_t stream)
{
    using C = Cfg<kQ, kS>;
    return seg::launchChannels(scanSeg2Kernel<Tin, Tout, kQ, kS, kSoftplus, kGate>, p, C::kCb, C::kThreads, C::kSmemBytes, stream);
}

//! (kQ = lanes a channel, kS = warps a block) configurations that are compiled.
constexpr bool compiled(int lanes, int warps)
{
    return (lanes == 4 || lanes == 8) && (warps == 4 || warps == 8);
}

template <typename Tin, typename Tout, bool kSoftplus, bool kGate>
cudaError_t run(SelectiveScanParams const& p, int lanes, int warps, cudaStream_t stream)
{
    switch (lanes * 16 + warps)
    {
    case 4 * 16 + 4: return launch<Tin, Tout, 4, 4, kSoftplus, kGate>(p, stream);
    case 4 * 16 + 8: return launch<Tin, Tout, 4, 8, kSoftplus, kGate>(p, stream);
    case 8 * 16 + 4: return launch<Tin, Tout, 8, 4, kSoftplus, kGate>(p, stream);
    case 8 * 16 + 8: return launch<Tin, Tout, 8, 8, kSoftplus, kGate>(p, stream);
    default: return cudaErrorInvalidValue;
    }
}

} // namespace seg2
