// SelectiveScan kernels; see selectiveScanKernel.h for the math, layout and schedule.
//
// Cost model (what the inner loop is built around): per (token, channel) the scan needs 16 exponentials
// (one per state) plus, per state, dt·a, du·B, the h FMA and the y FMA; softplus(Δ) and SiLU(z) add one
// ex2 and one rcp each. On Hopper the MUFU unit does 16 of those per SM per clock (4 per sub-partition:
// 8 issue-cycles per warp instruction), so they, not the ~5 FMA-pipe instructions per state, bound the
// loop (20 MUFU operations per (token, channel) ≈ 0.80 ms at B8 L4096 D5120 on 132 SMs at 1.98 GHz).
//
// Schedule: two threads per channel (adjacent lanes), each owning 8 of the 16 states (N ≤ 16 is
// zero-padded: a = 0, B = C = 0), so a block of 128 threads covers 64 channels and B·D gives twice the
// threads of the one-thread-per-channel kernel. (Or four threads per channel with 4 states each, 32 channels a
// block: the same loop, the token's Δ handed round by shuffles and y reduce-scattered over the 4 lanes;
// selectiveScanPlan picks 2 or 4 and the chunk count from a cost model, planCost.) Per pair of tokens (2j, 2j+1) lane parity p computes Δ
// and Δ·u of token 2j+p (softplus once per channel, not per thread) and shuffles hand them to the pair; both threads
// update their 8 states for both tokens, then one more shuffle swaps the partial y of the token each does not own,
// and the owner adds D·u, applies SiLU(z) and stores. Tiles of u/Δ/z (16 tokens; 8 for fp32 → fp32 with 2 threads) are
// copied into double-buffered shared memory by 16-byte cp.async (Bm/Cm through registers), one barrier per tile;
// __launch_bounds__(128, 5) caps registers at 96 (5 resident blocks, 20 warps per SM), softplus/SiLU use
// MUFU ex2/rcp plus a short series, and all per-token addressing is 32-bit offsets from base pointers.
//
// Chunked schedule (where B·D is too small to fill the GPU and L long enough): pass 1 runs chunks 0 … C-2; chunk 0 already
// starts from the true initial state, so its blocks run the full output body (y for chunk 0 and its true
// end state), chunks 1 … C-2 compute a local state from zero and Σ Δ; the last chunk is never needed in
// pass 1. Pass 3 writes y of chunks 1 … C-1, each block first chaining its chunk's start state from pass 1's
// results (the chain of C − 1 steps that a separate kernel ran between the passes). Work: 2C - 2 chunk passes.
// With C ≥ 3, chunk 0 is shorter than the others (ChunkGeom): its pass-1 blocks run the output body, ~1.8× the
// issue of the local body per token, so at equal lengths they finished last and held pass 3 back.
#include "selectiveScanKernel.h"

#include <algorithm>
#include <atomic>
#include <type_traits>

#ifndef MQ_SCAN_SEGMENTED
#define MQ_SCAN_SEGMENTED 0 // 1: compile the experimental segment-parallel schedule (selectiveScanSeg.cuh)
#endif
#ifndef MQ_SCAN_WIDE
#define MQ_SCAN_WIDE 0 // 1: compile the experimental wide schedule (selectiveScanWide.cuh: 8 / 16 threads a channel, one pass)
#endif

namespace mq
{
namespace
{

constexpr int kThreads = 128;         // threads per block: 128 / kSplit channels (kSplit = 2 or 4 threads a channel)
template <int kSplit>
__host__ __device__ constexpr int chOf() { return kThreads / kSplit; } // channels per block
#ifndef MQ_SCAN_MIN_BLOCKS
#define MQ_SCAN_MIN_BLOCKS 5
#endif
// __launch_bounds__ minimum resident blocks per SM: 5 caps registers at 96 a thread. H200 fp16 sweeps: 64
// registers (8 blocks) spilled and ran 6-15 % slower than 80 (6 blocks), 80 with the tile-wide Δ first
// 1-6 % slower than 96; B8 D5120 (640 blocks) still fits in one wave at 5 blocks per SM.
constexpr int kMinBlocks = MQ_SCAN_MIN_BLOCKS;
#ifndef MQ_SCAN_PDL
#define MQ_SCAN_PDL 1 // 0: pass 3 launched after pass 1 ends (no programmatic dependent launch)
#endif

//! Programmatic dependent launch (sm_90+): pass 1 lets pass 3 be scheduled as soon as every pass-1 block runs, and
//! pass 3's blocks set up and start their first tile copies before they wait for pass 1's results (no-ops elsewhere
//! and in a kernel not launched as a dependent).
__device__ __forceinline__ void allowDependents()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void waitPrerequisites()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
constexpr int kN = 16;                // states per channel (N ≤ 16 is zero-padded to 16)
constexpr int kMaxTile = 16;          // tokens per shared-memory stage: 16, but 8 for fp32 → fp32 with 2 threads a channel
// Tokens a tile for fp32 output (8 or 16; the tile copies then take two 16-byte chunks a thread where one pass of the
// block's threads covers 8 rows). 16-token tiles halve the per-tile work a token that 8-token ones had for fp32 output;
// H200 (NOTES.md, "Scan: 16-token tiles for fp32 output"): int8 → fp32 (what the quantized graphs run) 7-18 % faster
// with 4 threads a channel, 2-4 % with 2. fp32 input with 2 threads keeps 8 (16 would take 56 KB of static shared
// memory in pass 1, over the 48 KB limit).
#ifndef MQ_SCAN_F32_TILE4
#define MQ_SCAN_F32_TILE4 16 // 4 threads a channel, int8 or fp32 input
#endif
#ifndef MQ_SCAN_I8_F32_TILE2
#define MQ_SCAN_I8_F32_TILE2 16 // 2 threads a channel, int8 input
#endif
template <int kSplit, typename Tin, typename Tout>
__host__ __device__ constexpr int tileFor()
{
    return sizeof(Tout) != 4 ? 16 : kSplit == 4 ? MQ_SCAN_F32_TILE4 : sizeof(Tin) == 1 ? MQ_SCAN_I8_F32_TILE2 : 8;
}
static_assert(MQ_SCAN_I8_F32_TILE2 <= kMaxTile && MQ_SCAN_F32_TILE4 <= kMaxTile, "a tile is at most kMaxTile tokens");
// int8 inputs (u, Δ, Bm, Cm) to fp32: 0 I2F everywhere, 1 int8ToFloat's ALU form everywhere, 2 ALU in the local body
// only (pass 1, chunks ≥ 1), 3 ALU in the output body only (pass 3, the single pass and chunk 0). H200, int8 → fp32
// (NOTES.md, "Scan: int8 inputs converted on the ALU"): 3 is within 0.5 % of I2F at B1 L4096 D1536 and 1-5 % faster
// elsewhere; 1 is 2-6 % faster than 3 on four of six shapes but 7 % slower than I2F at B1 L4096 D1536; 2 loses there too.
#ifndef MQ_SCAN_INT8_CVT
#define MQ_SCAN_INT8_CVT 3
#endif
#ifndef MQ_SCAN_FIRST_PCT
#define MQ_SCAN_FIRST_PCT 75 // chunk 0's length in % of the other chunks' when C ≥ 3 (100: equal chunks)
#endif
constexpr int kDefaultPoly = 0; // exps per thread on the FMA pipe by default (all on MUFU; 1-2 measured no better)
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
    float* hChunk;   //!< (B, chunks, D, N): pass 1 writes chunk end states (local from zero for c ≥ 1)
    float* sumDelta; //!< (B, chunks, D)
};

//! Chunk c covers tokens [start(c), start(c + 1)) ∩ [0, L): chunk 0 is `first` tokens, the others `len`.
struct ChunkGeom
{
    int32_t chunks;
    int32_t first;
    int32_t len;
    __host__ __device__ int32_t start(int c) const { return c == 0 ? 0 : first + (c - 1) * len; }
};

//! 16-byte cp.async global → shared; src_bytes 0 zero-fills the 16 bytes (src is then not read).
__device__ __forceinline__ void cpAsync16(void* smemDst, void const* src, bool valid)
{
    uint32_t const dst = static_cast<uint32_t>(__cvta_generic_to_shared(smemDst));
    int const n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cpAsyncWaitAll() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

//! One (B, L, D) tensor's tile copy, set up once a block: tile rows [t0, t0 + kTile) (relative to the chunk
//! start, clipped at `len`) of channels [d0, d0 + kCh) go to s[kTile][kRow]. kAsync: 16-byte cp.async chunks
//! (needs D % (16 / sizeof(T)) == 0 and a 16-byte aligned base); each thread owns at most one chunk of a tile,
//! whose tile row, shared-memory slot and global offset are computed here once, so a tile costs one address
//! computation and one cp.async (the per-tile index arithmetic was ~6 % of the executed fp16 instructions);
//! rows past `len` and channels past D are zero-filled. Otherwise the threads of a channel load its rows
//! synchronously (clamped to a valid channel and to the last valid row).
//! Shared-memory row (elements) of a u/Δ/z tile: the block's channels plus a pad of one warp's worth of them (at
//! least 16 bytes). The kSplit lanes of a channel read kSplit different token rows at once (each owner reads u/Δ/z of
//! its own token); with the pad the kSplit rows' windows of one warp's channels fall in disjoint banks for every
//! (kSplit, type) used (an unpadded 64-byte fp16 row put rows 0 and 2 in the same banks).
template <int kSplit, typename T>
__host__ __device__ constexpr int rowOf()
{
    return chOf<kSplit>() + ((32 / kSplit) * static_cast<int>(sizeof(T)) < 16 ? 16 / static_cast<int>(sizeof(T)) : 32 / kSplit);
}

template <int kSplit, bool kAsync, int kTile, typename T>
struct TileCopy
{
    static constexpr int kCh = chOf<kSplit>();
    static constexpr int kRow = rowOf<kSplit, T>();
    static constexpr int kPerChunk = 16 / static_cast<int>(sizeof(T));
    static constexpr int kChunksPerRow = kCh / kPerChunk;
    static constexpr int kRowsPerPass = kThreads / kChunksPerRow; // tile rows the block's threads copy a chunk each
    static constexpr int kPasses = kAsync ? (kTile + kRowsPerPass - 1) / kRowsPerPass : 1; // chunks a thread a tile
    static_assert(!kAsync || (kThreads % kChunksPerRow == 0 && kPasses <= 2), "at most two 16-byte chunks a thread");
    T const* base;
    size_t off; // async: this thread's (first) chunk in tile row r of token 0 of the chunk; sync: channel dc at token 0
    int D;
    int r;      // async: the (first) chunk's tile row, kTile if this thread copies nothing; a second one kRowsPerPass below
    int rLive;  // async: r where the chunk's channels are < D, else a row no tile reaches (zero-filled)
    int slot;   // async: element offset of the chunk in s

    __device__ __forceinline__ TileCopy(T const* base_, size_t rowBase, int d0, int dc, int D_) : base(base_), D(D_)
    {
        if constexpr (kAsync)
        {
            int const k = threadIdx.x;
            int const row = k / kChunksPerRow;
            int const q = k - row * kChunksPerRow;
            int const ch = d0 + q * kPerChunk;
            r = k < kTile * kChunksPerRow ? row : kTile;
            rLive = ch < D ? r : (1 << 30);
            slot = row * kRow + q * kPerChunk;
            off = (rowBase + static_cast<size_t>(row)) * D + ch;
        }
        else
        {
            r = rLive = slot = 0;
            off = rowBase * D + dc;
        }
    }
    __device__ __forceinline__ void operator()(T (*s)[kRow], int t0, int len) const
    {
        if constexpr (kAsync)
        {
#pragma unroll
            for (int i = 0; i < kPasses; ++i)
                if (r + i * kRowsPerPass < kTile)
                {
                    int const t = t0 + i * kRowsPerPass;
                    bool const valid = t + rLive < len;
                    cpAsync16(&s[0][0] + slot + i * kRowsPerPass * kRow, valid ? base + off + static_cast<size_t>(t) * D : base, valid);
                }
        }
        else
        {
            int const last = min(kTile, len - t0) - 1;
            int const lane = threadIdx.x & (kSplit - 1);
            T const* src = base + off + static_cast<size_t>(t0) * D;
#pragma unroll
            for (int i = lane; i < kTile; i += kSplit)
                s[i][threadIdx.x / kSplit] = src[static_cast<size_t>(min(i, last)) * D];
        }
    }
};

//! One (batch, chunk, 64-channel) block's scan. kOut: writes y (and starts from the true start state:
//! h0 / zero for chunk 0, else chained from pass 1's hChunk / sumDelta); else computes the chunk-local state from zero
//! and Σ Δ. The end state goes to lastState for the last chunk, else to hChunk[c].
template <int kSplit, typename Tin, typename Tout, int kPoly, bool kOut, bool kSoftplus, bool kGate, bool kAsync>
__device__ __forceinline__ void scanBody(SelectiveScanParams const& p, Work const& w, ChunkGeom const& g, int c)
{
    constexpr int kCh = chOf<kSplit>();
    constexpr int kNT = kN / kSplit; // states per thread
    static_assert(kSplit == 2 || kSplit == 4, "2 or 4 threads a channel");
    constexpr int kTile = tileFor<kSplit, Tin, Tout>();
    constexpr bool kCvtAlu = MQ_SCAN_INT8_CVT == 1 || (MQ_SCAN_INT8_CVT == 2 && !kOut) || (MQ_SCAN_INT8_CVT == 3 && kOut);
    constexpr int kBcPer = kTile * kN / kThreads; // Bm (and Cm) elements each thread stages per tile
    static_assert(kTile * kN % kThreads == 0, "tile must split evenly over the block");
    static_assert(kTile % kSplit == 0, "tokens are processed in groups of kSplit");
    __shared__ __align__(16) float sB[2][kTile][kN];
    __shared__ __align__(16) float sC[2][kOut ? kTile : 1][kN];
    constexpr int kRowIn = rowOf<kSplit, Tin>(), kRowOut = rowOf<kSplit, Tout>();
    __shared__ __align__(16) Tin sU[2][kTile][kRowIn];
    __shared__ __align__(16) Tin sD[2][kTile][kRowIn];
    __shared__ __align__(16) Tout sZ[2][kGate && kOut ? kTile : 1][kRowOut];

    int const N = p.dState;
    int const D = p.dim;
    int const L = p.seqLen;
    int const lane = threadIdx.x & (kSplit - 1); // which kNT states; owner of token lane of each group of kSplit
    int const ch = threadIdx.x / kSplit;
    int const d = blockIdx.x * kCh + ch;
    int const b = blockIdx.z;
    bool const active = d < D;
    int const chunks = g.chunks;
    int const tBegin = g.start(c);
    int const tEnd = min(L, g.start(c + 1));
    int const len = tEnd - tBegin;
    int const dc = active ? d : D - 1; // inactive lanes read a valid channel and store nothing
    int const d0 = blockIdx.x * kCh;
    int const n0 = lane * kNT;
    size_t const tokRow0 = static_cast<size_t>(b) * L + tBegin; // (b, tBegin) as a row of the (B·L, D) tensors

    Tin const* uBase = static_cast<Tin const*>(p.u);
    Tin const* dBase = static_cast<Tin const*>(p.delta);
    Tout const* zBase = kGate ? static_cast<Tout const*>(p.z) : nullptr;
    // y: a block-uniform tile pointer (channel d0) carried across tiles plus a small per-thread offset, so that a store
    // costs an IMAD and the address add instead of a rebuilt 64-bit (b, t, d) index (13 instructions a store)
    Tout* yT = static_cast<Tout*>(p.y) + tokRow0 * D + d0; // the current tile's; advanced by kTile rows a tile
    int const yLaneOff = lane * D + ch; // token `lane` of a group, this thread's channel
    size_t const bc0 = tokRow0 * N;
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

    float a2[kNT];
    float h[kNT];
    size_t const stateOff = (static_cast<size_t>(b) * D + dc) * N;
    size_t const chunkOff = ((static_cast<size_t>(b) * chunks + c) * D + dc) * N;
#pragma unroll
    for (int k = 0; k < kNT; ++k)
    {
        int const n = n0 + k;
        a2[k] = n < N ? p.A[static_cast<size_t>(dc) * N + n] * kLog2e : 0.f;
        h[k] = kOut && c == 0 && n < N && p.h0 != nullptr ? p.h0[stateOff + n] : 0.f;
    }
    float const bias = p.deltaBias != nullptr ? p.deltaBias[dc] : 0.f;
    float const dSkip = p.Dskip != nullptr ? p.Dskip[dc] : 0.f;
    float const uScale = p.uScale, dScale = p.deltaScale, bScale = p.bScale, cScale = p.cScale;
    float sumDelta = 0.f;

    float bN[kBcPer], cN[kBcPer];
    // Starts the copy of the tile at token t0 (relative to tBegin): u/Δ/z straight into shared buffer `buf`
    // (cp.async, waited for before the tile's barrier), Bm/Cm into registers (staged by `stage`).
    // Bm/Cm rows past the chunk's end re-read its last token (always in bounds); the compute masks them out.
    TileCopy<kSplit, kAsync, kTile, Tin> const copyU(uBase, tokRow0, d0, dc, D), copyD(dBase, tokRow0, d0, dc, D);
    TileCopy<kSplit, kAsync, kTile, Tout> const copyZ(zBase, tokRow0, d0, dc, D);
    auto prefetch = [&](int t0, int buf) {
        int const last = min(kTile, len - t0) - 1;
        copyU(sU[buf], t0, len);
        copyD(sD[buf], t0, len);
        if constexpr (kGate && kOut)
            copyZ(sZ[buf], t0, len);
        int const lim = (last + 1) * N - 1;
        Tin const* bT = bP + static_cast<size_t>(t0) * N;
        Tin const* cT = cP + static_cast<size_t>(t0) * N;
#pragma unroll
        for (int j = 0; j < kBcPer; ++j)
        {
            int const e = min(static_cast<int>(threadIdx.x) + j * kThreads, lim);
            bN[j] = toFloatAs<kCvtAlu>(bT[e], bScale);
            if constexpr (kOut)
                cN[j] = toFloatAs<kCvtAlu>(cT[e], cScale);
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
    if (kOut && c > 0)
    {
        // the start state of chunk c is chunk c-1's true end state, chained here from pass 1's results (chunk 0's
        // true end state, then each later chunk's local end state and Σ Δ): h ← exp(A·ΣΔ)·h + h_local. At most
        // C − 1 steps of kNT states, against a separate chain kernel and its launch between the passes. Nothing
        // before this point reads what pass 1 writes or writes what it reads (pass 3 is its programmatic dependent).
        waitPrerequisites();
        size_t const first = (static_cast<size_t>(b) * chunks * D + dc) * N, chunkStride = static_cast<size_t>(D) * N;
#pragma unroll
        for (int k = 0; k < kNT; ++k)
            h[k] = n0 + k < N ? w.hChunk[first + n0 + k] : 0.f;
        for (int cc = 1; cc < c; ++cc)
        {
            float const sd = w.sumDelta[(static_cast<size_t>(b) * chunks + cc) * D + dc];
#pragma unroll
            for (int k = 0; k < kNT; ++k)
                if (n0 + k < N)
                    h[k] = fmaf(exp2f(a2[k] * sd), h[k], w.hChunk[first + cc * chunkStride + n0 + k]);
        }
    }
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
        float4 const* sb = reinterpret_cast<float4 const*>(&sB[buf][0][0]) + lane * (kNT / 4);
        float4 const* sc = reinterpret_cast<float4 const*>(&sC[buf][0][0]) + lane * (kNT / 4);
        // Each thread computes Δ (softplus) and Δ·u of the tokens it owns (kSplit·j + lane) up front, so that the
        // MUFU work of the token loop never waits on a softplus; the token loop takes every token's pair by two
        // shuffles (cheaper than each lane loading and converting u and multiplying it again).
        float dtOwn[kTile / kSplit], duOwn[kTile / kSplit];
#pragma unroll
        for (int j = 0; j < kTile / kSplit; ++j)
        {
            int const iOwn = kSplit * j + lane;
            float v = toFloatAs<kCvtAlu>(sD[buf][iOwn][ch], dScale) + bias;
            if constexpr (kSoftplus)
                v = softplusFast(v);
            v = iOwn < nt ? v : 0.f; // tail tokens: dA = 1, du = 0 → state unchanged
            dtOwn[j] = v;
            duOwn[j] = v * toFloatAs<kCvtAlu>(sU[buf][iOwn][ch], uScale);
            if constexpr (!kOut)
                sumDelta += v;
        }
#pragma unroll
        for (int j = 0; j < kTile / kSplit; ++j)
        {
            int const iOwn = kSplit * j + lane;
            float yPart[kSplit];
#pragma unroll
            for (int e = 0; e < kSplit; ++e)
            {
                int const i = kSplit * j + e;
                float const dt = __shfl_sync(0xffffffffu, dtOwn[j], e, kSplit);
                float const du = __shfl_sync(0xffffffffu, duOwn[j], e, kSplit);
                float y0 = 0.f, y1 = 0.f;
#pragma unroll
                for (int q = 0; q < kNT / 4; ++q)
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
                        int const k = 4 * q + r;
                        float const ex = dt * a2[k];
                        float const dA = k < kPoly ? exp2Poly(ex) : ex2Approx(ex);
                        h[k] = fmaf(dA, h[k], du * bv[r]);
                        if constexpr (kOut)
                        {
                            if (kNT > 4 && (r & 1)) // two y chains for 8 states, one for 4
                                y1 = fmaf(h[k], cv[r], y1);
                            else
                                y0 = fmaf(h[k], cv[r], y0);
                        }
                    }
                }
                yPart[e] = kNT > 4 ? y0 + y1 : y0;
            }
            if constexpr (kOut)
            {
                // reduce-scatter the partial y: thread `lane` ends with token lane's sum; add D·u, gate, store
                float yv;
                if constexpr (kSplit == 2)
                {
                    float const send = lane ? yPart[0] : yPart[1];
                    float const recv = __shfl_xor_sync(0xffffffffu, send, 1);
                    yv = (lane ? yPart[1] : yPart[0]) + recv;
                }
                else
                {
                    bool const b1 = lane & 2, b0 = lane & 1;
                    float const k0 = b1 ? yPart[2] : yPart[0], k1 = b1 ? yPart[3] : yPart[1];
                    float const s0 = b1 ? yPart[0] : yPart[2], s1 = b1 ? yPart[1] : yPart[3];
                    float const p0 = k0 + __shfl_xor_sync(0xffffffffu, s0, 2);
                    float const p1 = k1 + __shfl_xor_sync(0xffffffffu, s1, 2);
                    yv = (b0 ? p1 : p0) + __shfl_xor_sync(0xffffffffu, b0 ? p0 : p1, 1);
                }
                yv = fmaf(dSkip, toFloatAs<kCvtAlu>(sU[buf][iOwn][ch], uScale), yv);
                if constexpr (kGate)
                    yv *= siluFast(toFloat(sZ[buf][iOwn][ch], 1.f));
                if (iOwn < nt && active)
                    yT[yLaneOff + kSplit * j * D] = fromFloat<Tout>(yv);
            }
        }
        yT += static_cast<size_t>(kTile) * D;
        if (more)
            stage(buf ^ 1);
        if constexpr (kAsync)
            cpAsyncWaitAll();
        __syncthreads();
    }
    if constexpr (!kOut)
    {
#pragma unroll
        for (int m = 1; m < kSplit; m *= 2) // each lane summed the Δ of its own tokens
            sumDelta += __shfl_xor_sync(0xffffffffu, sumDelta, m);
    }
    if (!active)
        return;
    // end state: the op's last state after the last chunk; chunk 0's true end state / a local state for
    // the chain after pass 1 (pass 3 of chunks 1 … C-2 has nothing to hand on)
    float* dst = nullptr;
    if (c == chunks - 1)
        dst = p.lastState != nullptr ? p.lastState + stateOff : nullptr;
    else if (!kOut || c == 0)
        dst = w.hChunk + chunkOff;
    if (dst != nullptr)
    {
#pragma unroll
        for (int k = 0; k < kNT; ++k)
            if (n0 + k < N)
                dst[n0 + k] = h[k];
    }
    if (!kOut && lane == 0)
        w.sumDelta[(static_cast<size_t>(b) * chunks + c) * D + d] = sumDelta;
}

#if MQ_SCAN_SEGMENTED
#include "selectiveScanSeg.cuh"
#include "selectiveScanSeg2.cuh"
#endif
#if MQ_SCAN_WIDE
#include "selectiveScanWide.cuh"
#endif

//! Pass 1 (chunks > 1), grid.y = chunks - 1: chunk 0 runs the output body from the true initial state,
//! chunks 1 … C-2 the local body.
template <int kSplit, typename Tin, typename Tout, int kPoly, bool kSoftplus, bool kGate, bool kAsync>
__global__ void __launch_bounds__(kThreads, kMinBlocks) scanPass1(SelectiveScanParams const p, Work const w, ChunkGeom const g)
{
    if (MQ_SCAN_PDL)
        allowDependents();
    if (blockIdx.y == 0)
        scanBody<kSplit, Tin, Tout, kPoly, true, kSoftplus, kGate, kAsync>(p, w, g, 0);
    else
        scanBody<kSplit, Tin, Tout, kPoly, false, kSoftplus, false, kAsync>(p, w, g, static_cast<int>(blockIdx.y));
}

//! Pass 3 (or the single pass): outputs of chunks cOffset … cOffset + grid.y - 1.
template <int kSplit, typename Tin, typename Tout, int kPoly, bool kSoftplus, bool kGate, bool kAsync>
__global__ void __launch_bounds__(kThreads, kMinBlocks) scanPass3(SelectiveScanParams const p, Work const w, ChunkGeom const g, int32_t cOffset)
{
    scanBody<kSplit, Tin, Tout, kPoly, true, kSoftplus, kGate, kAsync>(p, w, g, static_cast<int>(blockIdx.y) + cOffset);
}

//! Whether the current device runs programmatic dependent launches (compute capability 9.0+; cached per device).
bool pdlCapable()
{
    static std::atomic<int> cache[16]; // 0 unknown, 1 no, 2 yes
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess)
        return false;
    int v = dev < 16 ? cache[dev].load(std::memory_order_relaxed) : 0;
    if (v == 0)
    {
        int major = 0;
        v = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9 ? 2 : 1;
        if (dev < 16)
            cache[dev].store(v, std::memory_order_relaxed);
    }
    return v == 2;
}

int32_t roundUpTile(int64_t t) { return static_cast<int32_t>((t + kMaxTile - 1) / kMaxTile * kMaxTile); }

//! The chunks of an L-token sequence asked to split in `chunks` (≥ 1): every chunk but the last `len` = L / chunks
//! tokens rounded up to a multiple of every kernel's tile, so the last one takes what is left. From 3 chunks on, that
//! slack goes to chunk 0 instead, down to MQ_SCAN_FIRST_PCT % of `len`: pass 1 runs chunk 0 with the output body,
//! which issues ~1.8× the instructions a token of the other chunks' local body (ncu, B1 L4096 D1536: the SMs holding a
//! chunk-0 block stayed busy ~20 % longer than the rest). `len` is never lengthened for it (that cost more in pass 3
//! than it saved in pass 1 at B2 L4096 D1536 and B4 L4096 D1024: NOTES.md, "Scan: a shorter chunk 0"). The count can
//! come out below `chunks` after rounding, never above.
ChunkGeom chunkGeometry(int32_t seqLen, int32_t chunks)
{
    int32_t const L = std::max(1, seqLen);
    int32_t const len = roundUpTile((static_cast<int64_t>(L) + chunks - 1) / std::max(1, chunks));
    if (chunks <= 1 || len >= L)
        return ChunkGeom{1, L, L};
    int32_t first = len;
    if (chunks >= 3 && MQ_SCAN_FIRST_PCT < 100)
    {
        int32_t const shortest = std::max(kMaxTile, len * MQ_SCAN_FIRST_PCT / 100 / kMaxTile * kMaxTile);
        first = std::min(len, std::max(shortest, roundUpTile(static_cast<int64_t>(L) - static_cast<int64_t>(chunks - 1) * len)));
    }
    return ChunkGeom{1 + (L - first + len - 1) / len, first, len};
}

int32_t deviceSMs(SelectiveScanParams const& p)
{
    int32_t sms = p.numSMs;
    if (sms <= 0)
    {
        int dev = 0;
        cudaGetDevice(&dev);
        if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
            sms = 80;
    }
    return sms;
}

//! Blocks of one chunk: B·⌈D / channels a block⌉.
int64_t blocksPerChunk(SelectiveScanParams const& p, int32_t split)
{
    int32_t const ch = kThreads / split;
    return static_cast<int64_t>(p.batch) * ((p.dim + ch - 1) / ch);
}

//! Whether pass 1 of `chunks` chunks holds ≥ kMinBlocks − 1 blocks an SM on average. Below that, pass 3 is not a dependent
//! launch (its early blocks would fill pass 1's free slots unevenly: H200, NOTES.md, "Scan: a shorter chunk 0"; see
//! runSplit).
bool pass1FillsSMs(SelectiveScanParams const& p, int32_t split, int32_t chunks, int32_t sms)
{
    return (chunks - 1) * blocksPerChunk(p, split) >= static_cast<int64_t>(kMinBlocks - 1) * sms;
}

template <int kSplit, typename Tin, typename Tout, int kPoly, bool kSoftplus, bool kGate, bool kAsync>
cudaError_t runSplit(SelectiveScanParams const& p, Work const& w, ChunkGeom const& g, cudaStream_t stream)
{
    constexpr int kCh = chOf<kSplit>();
    unsigned const gx = static_cast<unsigned>((p.dim + kCh - 1) / kCh);
    int32_t const chunks = g.chunks;
    if (chunks > 1)
    {
        scanPass1<kSplit, Tin, Tout, kPoly, kSoftplus, kGate, kAsync><<<dim3(gx, chunks - 1, p.batch), kThreads, 0, stream>>>(p, w, g);
        cudaError_t const e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(gx, chunks - 1, p.batch);
        cfg.blockDim = dim3(kThreads);
        cfg.stream = stream;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        // Pass 3 as a dependent launch only where pass 1 holds ≥ kMinBlocks − 1 blocks on an SM on average, so that its
        // early blocks take the one slot left on each SM. With fewer pass-1 blocks they fill the free slots unevenly
        // and the rest go to the SMs that finish pass 1 first: H200, 4 threads a channel at 5 chunks (384 pass-1
        // blocks), B2 L4096 D1536 0.207 ms with PDL against 0.173 without, B4 L2048 D768 0.110 / 0.094; at 528-640
        // blocks it saves 1-3 % (NOTES.md, "Scan: a shorter chunk 0").
        bool const pdl = MQ_SCAN_PDL && pdlCapable() && pass1FillsSMs(p, kSplit, chunks, deviceSMs(p));
        cfg.numAttrs = pdl ? 1 : 0;
        return cudaLaunchKernelEx(&cfg, scanPass3<kSplit, Tin, Tout, kPoly, kSoftplus, kGate, kAsync>, p, w, g, int32_t{1});
    }
    else
        scanPass3<kSplit, Tin, Tout, kPoly, kSoftplus, kGate, kAsync><<<dim3(gx, 1, p.batch), kThreads, 0, stream>>>(p, w, g, 0);
    return cudaGetLastError();
}

template <typename Tin, typename Tout, int kPoly, bool kSoftplus, bool kGate, bool kAsync>
cudaError_t runAs(SelectiveScanParams const& p, Work const& w, int32_t split, ChunkGeom const& g, cudaStream_t stream)
{
    return split == 4 ? runSplit<4, Tin, Tout, kPoly, kSoftplus, kGate, kAsync>(p, w, g, stream)
                      : runSplit<2, Tin, Tout, kPoly, kSoftplus, kGate, kAsync>(p, w, g, stream);
}

bool aligned16(void const* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

template <typename Tin, typename Tout, int kPoly, bool kSoftplus, bool kGate>
cudaError_t run(SelectiveScanParams const& p, Work const& w, int32_t split, ChunkGeom const& g, cudaStream_t stream)
{
    // u/Δ/z tiles go to shared memory by 16-byte cp.async when every row starts 16-byte aligned
    bool const async = p.dim % (16 / sizeof(Tin)) == 0 && aligned16(p.u) && aligned16(p.delta)
        && (!kGate || (p.dim % (16 / sizeof(Tout)) == 0 && aligned16(p.z)));
    return async ? runAs<Tin, Tout, kPoly, kSoftplus, kGate, true>(p, w, split, g, stream)
                 : runAs<Tin, Tout, kPoly, kSoftplus, kGate, false>(p, w, split, g, stream);
}

//! Calls fn(softplus, gate) with std::bool_constant arguments for the params' Δ softplus and z gate, so that each
//! schedule's dispatch names its kernel template once instead of once per flag combination.
template <typename Fn>
cudaError_t withFlags(SelectiveScanParams const& p, Fn&& fn)
{
    using T = std::true_type;
    using F = std::false_type;
    bool const gate = p.z != nullptr;
    if (p.deltaSoftplus)
        return gate ? fn(T{}, T{}) : fn(T{}, F{});
    return gate ? fn(F{}, T{}) : fn(F{}, F{});
}

template <typename Tin, typename Tout, int kPoly>
cudaError_t dispatchFlags(SelectiveScanParams const& p, Work const& w, int32_t split, ChunkGeom const& g, cudaStream_t stream)
{
    return withFlags(p, [&](auto sp, auto gate) {
        return run<Tin, Tout, kPoly, decltype(sp)::value, decltype(gate)::value>(p, w, split, g, stream);
    });
}

template <typename Tin, typename Tout>
cudaError_t dispatchSegmented(SelectiveScanParams const& p, int schedule, int lanes, int groups, cudaStream_t stream)
{
#if !MQ_SCAN_SEGMENTED
    (void) p, (void) schedule, (void) lanes, (void) groups, (void) stream;
    return cudaErrorInvalidValue;
#else
    return withFlags(p, [&](auto sp, auto gate) {
        return schedule == 3 ? seg2::run<Tin, Tout, decltype(sp)::value, decltype(gate)::value>(p, lanes, groups, stream)
                             : seg::run<Tin, Tout, decltype(sp)::value, decltype(gate)::value>(p, lanes, groups, stream);
    });
#endif
}

template <typename Tin, typename Tout>
cudaError_t dispatchWide(SelectiveScanParams const& p, int32_t lanes, int32_t block, cudaStream_t stream)
{
#if !MQ_SCAN_WIDE
    (void) p, (void) lanes, (void) block, (void) stream;
    return cudaErrorInvalidValue;
#else
    return withFlags(p, [&](auto sp, auto gate) {
        return wide::run<Tin, Tout, decltype(sp)::value, decltype(gate)::value>(p, lanes, block, stream);
    });
#endif
}

template <typename Tin, typename Tout>
cudaError_t dispatch(SelectiveScanParams const& p, SelectiveScanPlan const& plan, Work const& w, cudaStream_t stream)
{
    if (plan.schedule == 4)
        return dispatchWide<Tin, Tout>(p, plan.lanes, plan.groups, stream);
    if (plan.schedule >= 2)
        return dispatchSegmented<Tin, Tout>(p, plan.schedule, plan.lanes, plan.groups, stream);
    int const poly = p.polyExp < 0 ? kDefaultPoly : p.polyExp;
    ChunkGeom const g{plan.chunks, plan.chunkFirst, plan.chunkLen};
    if (poly == 0)
        return dispatchFlags<Tin, Tout, 0>(p, w, plan.split, g, stream);
    if (poly <= 2) // polyExp counts exps of the 16 per (token, channel); each thread of a channel does its share
        return dispatchFlags<Tin, Tout, 1>(p, w, plan.split, g, stream);
    return dispatchFlags<Tin, Tout, 2>(p, w, plan.split, g, stream);
}

std::atomic<int32_t> gSchedule{0}, gSegLanes{0}, gSegGroups{0};


//! Workspace of `chunks` chunks (hChunk (B, C, D, N), then sumDelta (B, C, D), fp32); none for one chunk.
size_t workspaceBytes(int32_t batch, int32_t chunks, int32_t dim, int32_t dState)
{
    if (chunks <= 1 || batch <= 0 || dim <= 0 || dState <= 0)
        return 0;
    return static_cast<size_t>(batch) * chunks * dim * (dState + 1) * sizeof(float);
}

//! Chunk counts the automatic plan considers (each ≤ maxAutoChunks(L); after chunkGeometry's rounding, each distinct
//! count once): the grid it was fitted and checked on (benchmarks/gpu/edge_sms.cu times exactly these).
constexpr int32_t kPlanChunks[] = {1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 32};

//! The most chunks the automatic plan makes for L tokens: chunks of at least 128 tokens, and no more than the last
//! count of kPlanChunks (which bounds the workspace the plugin asks TensorRT for: B8 L32768 D5120 89 MB, not 713).
int32_t maxAutoChunks(int32_t seqLen)
{
    return std::max(1, std::min(seqLen / 128, kPlanChunks[sizeof(kPlanChunks) / sizeof(kPlanChunks[0]) - 1]));
}
constexpr double kPlanMargin = 0.01; //!< selectiveScanPlan takes the fewest chunks within 1 % of the least modelled time

//! Modelled time (ns) of the token-serial schedule with `split` threads a channel and chunk geometry g on `sms` SMs; the
//! automatic plan takes the (split, chunks) that minimises it. A block walking its tokens beside k − 1 others on its SM
//! takes a·(k + b) ns a token (2 threads a channel: a 38.7, b 1.6; 4 threads: 22.5, 1.35), blocks past kMinBlocks an SM
//! run in later waves, and the busiest SM sets the pass's time. One pass: L tokens (×1.03 / ×1.015: measured slower a
//! token than the chunked kernels). Chunked: pass 1 (chunk 0 with outputs, first tokens; the others local, 0.9 of a
//! token each) then pass 3 (len tokens), 5.4 µs a pass and 0.11 µs a chunk of pass 3's start-state chain. Fitted on the
//! fp16 scan at 64 shapes (B 1–8, L 256–4096, D 768–5120) on H200 partitions of 8, 16, 32 and 64 SMs and the whole GPU
//! (benchmarks/gpu/edge_sms.sh, benchmarks/gpu/fit_plan.py; benchmarks/gpu/results/NOTES.md, "Scan: one cost model for
//! threads and chunks"): with kPlanMargin, 0.4 % over the fastest timed plan on average, 8 % at worst; on 48 other
//! shapes, fp16 and int8 → fp32, on 8 / 16 / 48 SMs and the whole GPU, 0.7 % and 22 %. The rules it replaced (4 threads where one wave
//! fits, chunks from a model of 4 threads on 132 SMs, 2 threads where 4 under-fill pass 1) lost 5 % on average and up to
//! 66 % on the first set (short prompts on many SMs: 2 threads at 2 chunks, where 4 threads in one pass are faster).
double planCost(SelectiveScanParams const& p, int32_t split, ChunkGeom const& g, int32_t sms)
{
    double const a = split == 4 ? 22.5 : 38.7, b = split == 4 ? 1.35 : 1.6;
    auto perToken = [&](int64_t blocks) { // ns a token of the busiest SM's blocks, over its waves
        int64_t const k = (blocks + sms - 1) / sms, full = k / kMinBlocks, rest = k % kMinBlocks;
        return static_cast<double>(full) * a * (kMinBlocks + b) + (rest > 0 ? a * (static_cast<double>(rest) + b) : 0.);
    };
    constexpr double kPassNs = 5400., kChainNs = 110.;
    int64_t const perChunk = blocksPerChunk(p, split);
    if (g.chunks <= 1)
        return (split == 4 ? 1.015 : 1.03) * p.seqLen * perToken(perChunk) + kPassNs;
    return perToken((g.chunks - 1) * perChunk) * (std::max(static_cast<double>(g.first), 0.9 * g.len) + g.len)
        + 2 * kPassNs + kChainNs * (g.chunks - 1);
}

} // namespace

SelectiveScanPlan selectiveScanPlan(SelectiveScanParams const& p)
{
    SelectiveScanPlan plan;
    int32_t schedule = p.schedule > 0 ? p.schedule : gSchedule.load(std::memory_order_relaxed);
    int32_t chunks = p.chunks;
    // token-serial: 2 or 4 threads a channel (forced by schedule 1 with lanes 2 / 4, else chosen below)
    int32_t const lanesReq = p.segLanes > 0 ? p.segLanes : gSegLanes.load(std::memory_order_relaxed);
    int32_t split = schedule == 1 && (lanesReq == 2 || lanesReq == 4) ? lanesReq : 0;
    // the SM count: for the automatic plan and schedule 2's automatic configuration only
    int32_t const sms = (p.chunks > 0 && schedule < 2) || schedule >= 3 ? 0 : deviceSMs(p);
    if (schedule < 2 && chunks <= 0)
    {
        // the (threads a channel, chunks) of least modelled time (planCost) over kPlanChunks, forced lanes fixing the
        // split; of those within kPlanMargin of it, the fewest chunks (the model's error is larger than such a gain:
        // H200 B8 L4096 D2560, 2 chunks modelled 0.5 % faster than one pass, measured 0.8 % / 3.6 % slower in fp16 /
        // int8 → fp32, benchmarks/gpu/results/edge-plan/repeat)
        struct Cand
        {
            double cost;
            int32_t split, request, chunks;
        } cand[2 * sizeof(kPlanChunks) / sizeof(kPlanChunks[0])];
        int32_t n = 0;
        double best = 0.;
        for (int32_t s2 : {4, 2})
        {
            if (split != 0 && s2 != split)
                continue;
            int32_t last = 0;
            for (int32_t c : kPlanChunks)
            {
                if (c > maxAutoChunks(p.seqLen))
                    break;
                ChunkGeom const g = chunkGeometry(p.seqLen, c);
                if (g.chunks == last)
                    continue;
                last = g.chunks;
                cand[n] = Cand{planCost(p, s2, g, sms), s2, c, g.chunks};
                best = n == 0 || cand[n].cost < best ? cand[n].cost : best;
                ++n;
            }
        }
        Cand const* pick = nullptr;
        for (int32_t i = 0; i < n; ++i)
            if (cand[i].cost <= best * (1 + kPlanMargin)
                && (pick == nullptr || cand[i].chunks < pick->chunks || (cand[i].chunks == pick->chunks && cand[i].cost < pick->cost)))
                pick = &cand[i];
        split = pick->split;
        chunks = pick->request; // not pick->chunks: the geometry below is chunkGeometry(L, request)
    }
    else if (split == 0)
        split = 2; // explicit chunks: 2 threads a channel unless schedule 1 forces 4
    if (schedule == 4) // only on request: threads a channel 8 / 16 (0: 8), threads a block 64 / 128 (0: 64); others are
    {                  // kept, so that launchSelectiveScan refuses them (selectiveScanSegmentedAvailable)
        plan.schedule = 4;
        int32_t const groupsReq = p.segGroups > 0 ? p.segGroups : gSegGroups.load(std::memory_order_relaxed);
        plan.lanes = lanesReq > 0 ? lanesReq : 8;
        plan.groups = groupsReq > 0 ? groupsReq : 64;
        return plan;
    }
    if (schedule == 3) // only on request (selectiveScanSeg2.cuh); (lanes a channel, warps a block), default (4, 8)
    {
        plan.schedule = 3;
        plan.lanes = p.segLanes > 0 ? p.segLanes : gSegLanes.load(std::memory_order_relaxed);
        plan.groups = p.segGroups > 0 ? p.segGroups : gSegGroups.load(std::memory_order_relaxed);
        if (plan.lanes <= 0 || plan.groups <= 0)
            plan.lanes = 4, plan.groups = 8;
        return plan;
    }
    if (schedule == 2) // only on request: measured slower than the chunked token-serial schedule (selectiveScanSeg.cuh)
    {
        plan.schedule = 2;
        int32_t lanes = p.segLanes > 0 ? p.segLanes : gSegLanes.load(std::memory_order_relaxed);
        int32_t groups = p.segGroups > 0 ? p.segGroups : gSegGroups.load(std::memory_order_relaxed);
        if (lanes <= 0 || groups <= 0)
        {
            // threads a channel P = lanes·groups: the largest of 128 … 8 with B·D·P within the resident threads
            // (4 blocks of 256 a SM); P → (lanes, groups): 8 → (8, 1), 16 → (16, 1), 32 → (16, 2), 64 → (16, 4),
            // 128 → (32, 4)
            int64_t const segResident = static_cast<int64_t>(sms) * 1024; // 4 blocks of 256 threads a SM
            int64_t const bd = static_cast<int64_t>(p.batch) * p.dim;
            int32_t P = 128;
            while (P > 8 && bd * P > segResident)
                P /= 2;
            lanes = P >= 128 ? 32 : (P >= 16 ? 16 : 8);
            groups = P / lanes;
        }
        plan.lanes = lanes;
        plan.groups = groups;
        return plan;
    }
    ChunkGeom const g = chunkGeometry(p.seqLen, std::max(1, std::min(chunks, std::max(1, p.seqLen))));
    plan.chunks = g.chunks, plan.chunkFirst = g.first, plan.chunkLen = g.len;
    plan.split = split;
    return plan;
}

int32_t selectiveScanChunks(SelectiveScanParams const& p) { return selectiveScanPlan(p).chunks; }

bool selectiveScanSegmentedAvailable(int32_t schedule, int32_t lanes, int32_t groups)
{
    if (schedule == 4)
        return MQ_SCAN_WIDE && (lanes == 8 || lanes == 16) && (groups == 64 || groups == 128);
#if MQ_SCAN_SEGMENTED
    return schedule == 3 ? seg2::compiled(lanes, groups) : schedule == 2 && seg::compiled(lanes, groups);
#else
    (void) schedule, (void) lanes, (void) groups;
    return false;
#endif
}

void setSelectiveScanTuning(int32_t schedule, int32_t lanes, int32_t groups)
{
    gSchedule.store(schedule, std::memory_order_relaxed);
    gSegLanes.store(lanes, std::memory_order_relaxed);
    gSegGroups.store(groups, std::memory_order_relaxed);
}

size_t selectiveScanWorkspaceSize(SelectiveScanParams const& p)
{
    return workspaceBytes(p.batch, selectiveScanChunks(p), p.dim, p.dState);
}

size_t selectiveScanMaxWorkspaceSize(int32_t maxBatch, int32_t maxSeqLen, int32_t dim, int32_t dState)
{
    return workspaceBytes(maxBatch, maxAutoChunks(maxSeqLen), dim, dState);
}

cudaError_t launchSelectiveScan(SelectiveScanParams const& p, void* workspace, size_t workspaceSize, cudaStream_t stream)
{
    if (p.batch < 0 || p.seqLen < 0 || p.dim < 0 || p.dState < 1 || p.dState > kN)
        return cudaErrorInvalidValue;
    if (p.batch == 0 || p.dim == 0) // empty tensors (TensorRT may pass null for them): nothing to do
        return cudaSuccess;
    if (p.seqLen == 0) // only the state: u, delta, Bm, Cm, y are empty
    {
        if (p.lastState == nullptr)
            return cudaSuccess;
        size_t const bytes = static_cast<size_t>(p.batch) * p.dim * p.dState * sizeof(float);
        return p.h0 != nullptr ? cudaMemcpyAsync(p.lastState, p.h0, bytes, cudaMemcpyDeviceToDevice, stream)
                               : cudaMemsetAsync(p.lastState, 0, bytes, stream);
    }
    if (p.u == nullptr || p.delta == nullptr || p.A == nullptr || p.Bm == nullptr || p.Cm == nullptr || p.y == nullptr)
        return cudaErrorInvalidValue;
    if (static_cast<int64_t>(kMaxTile) * p.dim > INT32_MAX / 2)
        return cudaErrorInvalidValue; // in-tile offsets i·D are 32-bit
    SelectiveScanPlan const plan = selectiveScanPlan(p);
    if (plan.schedule >= 2 && !selectiveScanSegmentedAvailable(plan.schedule, plan.lanes, plan.groups))
        return cudaErrorInvalidValue;
    int32_t const chunks = plan.chunks;
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
        return dispatch<float, float>(p, plan, w, stream);
    if (p.inType == DType::kHALF && p.outType == DType::kHALF)
        return dispatch<__half, __half>(p, plan, w, stream);
    if (p.inType == DType::kINT8 && p.outType == DType::kHALF)
        return dispatch<int8_t, __half>(p, plan, w, stream);
    if (p.inType == DType::kINT8 && p.outType == DType::kFLOAT)
        return dispatch<int8_t, float>(p, plan, w, stream);
    return cudaErrorInvalidValue;
}

} // namespace mq
