// Wide token-serial scan (experimental, schedule 4; compiled only with -DMQ_SCAN_WIDE=1, run only on request):
// 8 or 16 threads a channel (2 states or 1 state each), one pass over L. Included by selectiveScanKernel.cu inside its
// anonymous namespace (uses kN, kLog2e, ex2Approx, softplusFast, siluFast, SelectiveScanParams).
//
// Idea: where B·D is small (B1 D1536: 24 576 (channel, state) pairs), 2 or 4 threads a channel cannot fill the GPU, so
// the default schedule splits L into chunks and runs every chunk past the first twice (~1.8× the exponentials at
// B1 L4096 D1536, 12 chunks). Here the 16 states of a channel are spread over 8 or 16 lanes and B·D·16 threads walk the
// whole sequence once, with everything done once per (token, channel) out of the token loop:
// - staging (one thread per (token, channel) of a 16-token tile, in the global layout's order): Δ (softplus), Δ·u,
//   D·u and SiLU(z) are computed once and written to shared memory as fp32 rows [channel][token]; Bm / Cm go
//   transposed to [state][token], so the token loop reads 4 tokens of each by one broadcast float4;
// - the loop: per (token, state) Δ·a, the ex2, Δu·B, the h FMA and the y FMA;
// - y: each lane writes its per-token partial sums to a warp-private shared row; lane l then finishes tokens l,
//   l + kSplit, … (sum over the channel's lanes, + D·u, × SiLU(z)) and stores them;
// - the raw inputs of the next kDepth tiles are in flight in registers; one barrier a tile.
// Measured (H200, fp16, benchmarks/gpu/results/NOTES.md, "Scan: 8 or 16 threads a channel in one pass"): correct, but
// slower than the chunked default on every shape tried (B1 L4096 D1536 0.150 ms against 0.090). At 1-2 warps a
// scheduler the loop is latency-bound: ncu samples the warp issuing 43 % of the time and waiting on fixed-latency
// dependencies 35 %, at ~30 instructions a warp-token (2 states a lane).
namespace wide
{

constexpr int kT = 16; //!< tokens a tile (B1 L4096 D1536, best configuration: 32-token tiles 0.154 ms, 16-token 0.150)
constexpr int kRowT = kT + 4;         //!< fp32 row of a tile's tokens, padded: 8 consecutive rows start in distinct banks
#ifndef MQ_SCAN_WIDE_DEPTH
#define MQ_SCAN_WIDE_DEPTH 4
#endif
constexpr int kDepth = MQ_SCAN_WIDE_DEPTH; //!< tiles whose raw inputs are in flight (registers) ahead of the one staged
static_assert(kDepth % 2 == 0, "an even ring: a round of kDepth tiles starts on shared buffer 0");

template <int kSplit, int kBlock, typename Tin, typename Tout, bool kSoftplus, bool kGate>
__global__ void __launch_bounds__(kBlock, 1) scanWide(SelectiveScanParams const p)
{
    constexpr int kCh = kBlock / kSplit;                 // channels a block
    constexpr int kNT = kN / kSplit;                     // states a thread: n = k·kSplit + lane
    constexpr int kOwn = kT / kSplit;                    // tokens a thread finishes a tile
    constexpr int kStep = kBlock / kCh;                  // tile rows one pass of the block's threads stages
    constexpr int kE = kT / kStep;                       // u/Δ/z elements a thread stages a tile
    constexpr int kBC = kT * kN / kBlock;                // Bm/Cm elements a thread stages a tile
    constexpr int kWarpCh = 32 / kSplit;                 // channels a warp
    constexpr int kYRow = kSplit + 4;                    // one token's partial sums of a channel's lanes, padded
    // channel stride ≡ kSplit (mod 32): the warp's channels' rows start in distinct banks
    constexpr int kYCh = kT * kYRow + ((kSplit - kT * kYRow) % 32 + 32) % 32;
    static_assert(kSplit == 8 || kSplit == 16, "8 or 16 threads a channel");
    static_assert(kBlock % 32 == 0 && kT % kStep == 0 && (kT * kN) % kBlock == 0, "tile must split evenly over the block");

    __shared__ __align__(16) float sDt[2][kCh][kRowT];  // Δ
    __shared__ __align__(16) float sDu[2][kCh][kRowT];  // Δ·u
    __shared__ __align__(16) float sSk[2][kCh][kRowT];  // D·u
    __shared__ __align__(16) float sG[2][kGate ? kCh : 1][kRowT]; // SiLU(z)
    __shared__ __align__(16) float sB[2][kN][kRowT];
    __shared__ __align__(16) float sC[2][kN][kRowT];
    __shared__ __align__(16) float sY[kBlock / 32][kWarpCh * kYCh];

    int const N = p.dState;
    int const D = p.dim;
    int const L = p.seqLen;
    int const b = blockIdx.y;
    int const d0 = blockIdx.x * kCh;
    int const lane = threadIdx.x % kSplit;
    int const chB = threadIdx.x / kSplit; // this thread's channel in the block
    int const d = d0 + chB;
    bool const active = d < D;
    int const dc = active ? d : D - 1;
    size_t const row0 = static_cast<size_t>(b) * L; // (b, 0) as a row of the (B·L, ·) tensors

    float a2[kNT], h[kNT];
    size_t const stateOff = (static_cast<size_t>(b) * D + dc) * N;
#pragma unroll
    for (int k = 0; k < kNT; ++k)
    {
        int const n = k * kSplit + lane;
        a2[k] = n < N ? p.A[static_cast<size_t>(dc) * N + n] * kLog2e : 0.f; // padded states: dA = 1, B = C = 0
        h[k] = n < N && p.h0 != nullptr ? p.h0[stateOff + n] : 0.f;
    }

    // staging role: tile element (row st0 + j·kStep, channel sc) of u/Δ/z, in the global layout's order
    int const sc = threadIdx.x % kCh;
    int const st0 = threadIdx.x / kCh;
    int const sd = min(d0 + sc, D - 1);
    float const biasS = p.deltaBias != nullptr ? p.deltaBias[sd] : 0.f;
    float const skipS = p.Dskip != nullptr ? p.Dskip[sd] : 0.f;
    float const uScale = p.uScale, dScale = p.deltaScale, bScale = p.bScale, cScale = p.cScale;
    Tin const* uG = static_cast<Tin const*>(p.u) + row0 * D + sd;
    Tin const* dG = static_cast<Tin const*>(p.delta) + row0 * D + sd;
    Tout const* zG = kGate ? static_cast<Tout const*>(p.z) + row0 * D + sd : nullptr;
    Tin const* bG = static_cast<Tin const*>(p.Bm) + row0 * N;
    Tin const* cG = static_cast<Tin const*>(p.Cm) + row0 * N;

    // raw inputs of the next kDepth tiles in registers (tile j in slot j % kDepth): a tile's loads are issued kDepth tiles
    // before it is staged, which at 1-2 warps a scheduler is what hides the global-memory latency
    Tin ru[kDepth][kE], rd[kDepth][kE], rb[kDepth][kBC], rc[kDepth][kBC];
    Tout rz[kDepth][kGate ? kE : 1];
    auto prefetch = [&](int slot, int t0) { // rows past L re-read the last token (always in bounds)
#pragma unroll
        for (int j = 0; j < kE; ++j)
        {
            size_t const off = static_cast<size_t>(min(t0 + st0 + j * kStep, L - 1)) * D;
            ru[slot][j] = uG[off];
            rd[slot][j] = dG[off];
            if constexpr (kGate)
                rz[slot][j] = zG[off];
        }
#pragma unroll
        for (int j = 0; j < kBC; ++j)
        {
            int const e = threadIdx.x + j * kBlock;
            int const tt = e / kN, n = e % kN;
            size_t const off = static_cast<size_t>(min(t0 + tt, L - 1)) * N + (n < N ? n : 0);
            rb[slot][j] = bG[off];
            rc[slot][j] = cG[off];
        }
    };
    auto stage = [&](int slot, int t0, int buf) {
#pragma unroll
        for (int j = 0; j < kE; ++j)
        {
            int const t = st0 + j * kStep;
            float dv = toFloat(rd[slot][j], dScale) + biasS;
            if constexpr (kSoftplus)
                dv = softplusFast(dv);
            dv = t0 + t < L ? dv : 0.f; // tokens past L: dA = 1, Δ·u = 0 → state unchanged
            float const uv = toFloat(ru[slot][j], uScale);
            sDt[buf][sc][t] = dv;
            sDu[buf][sc][t] = dv * uv;
            sSk[buf][sc][t] = skipS * uv;
            if constexpr (kGate)
                sG[buf][sc][t] = siluFast(toFloat(rz[slot][j], 1.f));
        }
#pragma unroll
        for (int j = 0; j < kBC; ++j)
        {
            int const e = threadIdx.x + j * kBlock;
            int const tt = e / kN, n = e % kN;
            sB[buf][n][tt] = n < N ? toFloat(rb[slot][j], bScale) : 0.f;
            sC[buf][n][tt] = n < N ? toFloat(rc[slot][j], cScale) : 0.f;
        }
    };

    int const tiles = (L + kT - 1) / kT;
    prefetch(0, 0);
    stage(0, 0, 0);
#pragma unroll
    for (int j = 1; j <= kDepth; ++j)
        prefetch(j % kDepth, j * kT);
    __syncthreads();

    float* yw = &sY[threadIdx.x / 32][((threadIdx.x % 32) / kSplit) * kYCh];
    Tout* yG = static_cast<Tout*>(p.y) + row0 * D + dc; // stored through only where active (dc == d)
    for (int k0 = 0; k0 < tiles; k0 += kDepth)
    {
        // kDepth tiles a round, unrolled, so that every ring slot and shared buffer index is a constant
#pragma unroll
        for (int r = 0; r < kDepth; ++r)
        {
            int const k = k0 + r;
            if (k >= tiles)
                break;
            int const t0 = k * kT;
            int const buf = r & 1, nbuf = buf ^ 1, slot = (r + 1) % kDepth;
            // the next tile's stage first (its softplus / SiLU overlap this tile's loop; past the last tile it stages
            // re-read rows nobody uses), then its slot takes the tile kDepth further on
            stage(slot, t0 + kT, nbuf);
            prefetch(slot, t0 + (kDepth + 1) * kT);
            float4 const* pdt = reinterpret_cast<float4 const*>(&sDt[buf][chB][0]);
            float4 const* pdu = reinterpret_cast<float4 const*>(&sDu[buf][chB][0]);
            float yp[kT];
#pragma unroll
            for (int q = 0; q < kT / 4; ++q)
            {
                float4 const dt4 = pdt[q], du4 = pdu[q];
                float4 b4[kNT], c4[kNT];
#pragma unroll
                for (int kk = 0; kk < kNT; ++kk)
                {
                    b4[kk] = reinterpret_cast<float4 const*>(&sB[buf][kk * kSplit + lane][0])[q];
                    c4[kk] = reinterpret_cast<float4 const*>(&sC[buf][kk * kSplit + lane][0])[q];
                }
                float const dtv[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, duv[4] = {du4.x, du4.y, du4.z, du4.w};
#pragma unroll
                for (int i = 0; i < 4; ++i)
                {
                    float y = 0.f;
#pragma unroll
                    for (int kk = 0; kk < kNT; ++kk)
                    {
                        float const bv[4] = {b4[kk].x, b4[kk].y, b4[kk].z, b4[kk].w};
                        float const cv[4] = {c4[kk].x, c4[kk].y, c4[kk].z, c4[kk].w};
                        float const dA = ex2Approx(dtv[i] * a2[kk]);
                        h[kk] = fmaf(dA, h[kk], duv[i] * bv[i]);
                        y = fmaf(h[kk], cv[i], y);
                    }
                    yp[4 * q + i] = y;
                }
            }
            // y: the channel's kSplit partial sums of each token meet in the warp's shared rows; lane l finishes
            // tokens l, l + kSplit, … of its channel
#pragma unroll
            for (int t = 0; t < kT; ++t)
                yw[t * kYRow + lane] = yp[t];
            __syncwarp();
#pragma unroll
            for (int o = 0; o < kOwn; ++o)
            {
                int const tt = o * kSplit + lane;
                float4 const* rr = reinterpret_cast<float4 const*>(&yw[tt * kYRow]);
                float s0 = 0.f, s1 = 0.f;
#pragma unroll
                for (int v = 0; v < kSplit / 4; v += 2)
                {
                    float4 const x0 = rr[v], x1 = rr[v + 1];
                    s0 += (x0.x + x0.y) + (x0.z + x0.w);
                    s1 += (x1.x + x1.y) + (x1.z + x1.w);
                }
                float yv = s0 + s1 + sSk[buf][chB][tt];
                if constexpr (kGate)
                    yv *= sG[buf][chB][tt];
                if (active && t0 + tt < L)
                    yG[static_cast<size_t>(t0 + tt) * D] = fromFloat<Tout>(yv);
            }
            __syncthreads(); // the next tile's stage is visible; this tile's rows are read before they are rewritten
        }
    }
    if (active && p.lastState != nullptr)
    {
#pragma unroll
        for (int k = 0; k < kNT; ++k)
            if (k * kSplit + lane < N)
                p.lastState[stateOff + k * kSplit + lane] = h[k];
    }
}

template <int kSplit, int kBlock, typename Tin, typename Tout, bool kSoftplus, bool kGate>
cudaError_t runBlock(SelectiveScanParams const& p, cudaStream_t stream)
{
    constexpr int kCh = kBlock / kSplit;
    scanWide<kSplit, kBlock, Tin, Tout, kSoftplus, kGate><<<dim3((p.dim + kCh - 1) / kCh, p.batch), kBlock, 0, stream>>>(p);
    return cudaGetLastError();
}

//! (threads a channel, threads a block): (16, 128), (16, 64), (8, 128) or (8, 64) (selectiveScanSegmentedAvailable)
template <typename Tin, typename Tout, bool kSoftplus, bool kGate>
cudaError_t run(SelectiveScanParams const& p, int32_t lanes, int32_t block, cudaStream_t stream)
{
    if (lanes == 16)
        return block == 64 ? runBlock<16, 64, Tin, Tout, kSoftplus, kGate>(p, stream)
                           : runBlock<16, 128, Tin, Tout, kSoftplus, kGate>(p, stream);
    return block == 64 ? runBlock<8, 64, Tin, Tout, kSoftplus, kGate>(p, stream)
                       : runBlock<8, 128, Tin, Tout, kSoftplus, kGate>(p, stream);
}

} // namespace wide
