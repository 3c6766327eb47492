// Register/shared-memory Hadamard path for fp16 input, m ∈ {1, 12, 20, 28}, 2^k ≥ 64, n ≤ 8192 (see
// hadamardKernel.h for the math). Shared by hadamardKernel.cu (the kernel) and
// plugins/tests/hadamard_host_sim.cu (a CPU run of the same phase functions, thread by thread, that checks the
// index logic against a float64 reference without a GPU).
//
// Layout. A block of kThreads threads owns G consecutive rows ("group", contiguous in memory); the group is
// viewed as float4 chunks g = (row·m + a)·2^K + c4 (a = sub-row, c4 = chunk of 4 columns, K = log2(2^k / 4)).
// Shared memory holds the group as fp32 with one float4 of padding per 16 (ph(g) = g + g/16): every access
// below is a 16-byte access, conflict-free (lanes vary either the low 3 or bits 4..6 of g), and because ph of
// a sum of disjoint bit fields is the sum of the ph's, every per-register offset is an immediate.
//
// Phases per group (no warp shuffles anywhere):
//  L: each thread loads 4 consecutive columns of every sub-row (m > 1: m 8-byte loads, coalesced across lanes)
//     or 16 chunks 2^(K-4) apart (m = 1), does the butterflies of column bits 0, 1 (and for m = 1 the 4 chunk
//     bits it holds) in registers, and for m > 1 the m×m base product by additions (Paley I: out[0] = x0 − Σx,
//     out[c] = out[0] + 2·Σ_{d ∈ {0} ∪ QR} x[c − d], ~m/2 additions per output instead of m; Paley II the same
//     on sums/differences of row pairs), with 1/sqrt(n) (and 1/scale for int8) folded into its last FMA;
//     writes the group to shared memory.
//  Passes: the remaining chunk bits in windows of 4 (a thread gathers 16 float4s differing in the window's
//     bits, 4 butterfly stages on 64 values, writes them back); the last window stores to global memory
//     (8-byte fp16 / 4-byte int8 stores of 4 consecutive columns; with 4 bits left they go [0, 3) then [3, 4) so
//     that the storing lanes vary chunk bits 0..2 and cover whole sectors). m = 1, 2^k = 64: L stores directly.
//  m = 20, 28: the L phase goes half width (lHalves: columns 0-1, then 2-3, stored as float2s; pass 0 does column
//     bit 1) so that the kernel fits in 128 / 168 registers (4 / 3 blocks a SM). Those float2 stores are swizzled
//     (Cfg::SWZ; unswizzled they are 2-way conflicted). plugins/tests/hadamard_host_sim.cu checks every access
//     conflict-free from these index functions.
//  A last pass of ≤ 2 chunk bits (every m > 1 size with 2^k ≤ 256) gathers 4 float4s a unit, so that its units spread
//     evenly over the threads (Cfg::narrow).
//  The next group's raw input is loaded into registers (load) or by cp.async into a staging buffer (loadAsync /
//  readStage); the kernel (hadamardKernel.cu) chooses, and places the barriers between the phases.
// Per element (m = 20, 2^k = 256): ~0.25 loads, 1 conversion, 2 + 4 + 2 butterfly adds, ~7.7 base-product
// instructions, 1.25 shared-memory accesses, 0.5 conversions and 0.25 stores out.
#pragma once
#include "common.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MQ_HD __host__ __device__ __forceinline__
#else
#define MQ_HD inline
#endif

namespace mq
{
namespace hfast
{

constexpr int kThreads = 128;
constexpr int kMaxN = 8192;
#ifndef MQ_HAD_HALF_L
#define MQ_HAD_HALF_L 1
#endif
#ifndef MQ_HAD_HALF_L28
#define MQ_HAD_HALF_L28 1 // 0: m = 28 takes the full-width L phase at 2 blocks a SM (255 registers)
#endif
#ifndef MQ_HAD_HALF_SWIZZLE
#define MQ_HAD_HALF_SWIZZLE 1 // 0: the half-width L phase's float2 stores unswizzled (2-way bank conflicts)
#endif
#ifndef MQ_HAD_NARROW_LAST
#define MQ_HAD_NARROW_LAST 1 // 0: a last pass of ≤ 2 chunk bits gathers 16 float4s a unit like the others (Cfg::narrow)
#endif
#ifndef MQ_HAD_NARROW_UNROLL
#define MQ_HAD_NARROW_UNROLL 1 // 0: a narrow last pass loops over its units (unroll 1) in a full group too
#endif

// ---------------------------------------------------------------- base matrices (compile time)
__host__ __device__ constexpr bool isPrimeC(int q)
{
    if (q < 2)
        return false;
    for (int i = 2; i * i <= q; ++i)
        if (q % i == 0)
            return false;
    return true;
}
__host__ __device__ constexpr uint64_t qrMask(int q) // bit r set for the nonzero quadratic residues r mod q
{
    uint64_t mk = 0;
    for (int x = 1; x < q; ++x)
        mk |= uint64_t{1} << ((x * x) % q);
    return mk;
}
//! 1: Paley I (q = m − 1 prime, q ≡ 3 mod 4), 2: Paley II (q = m/2 − 1 prime, q ≡ 1 mod 4), 0: m = 1, -1: none.
//! Same order of preference as quant/hadamard.py:base_matrix.
__host__ __device__ constexpr int paleyKind(int m)
{
    return m == 1 ? 0
        : (m % 4 == 0 && isPrimeC(m - 1) && (m - 1) % 4 == 3) ? 1
        : (m % 4 == 0 && m / 2 - 1 > 1 && isPrimeC(m / 2 - 1) && (m / 2 - 1) % 4 == 1) ? 2
                                                                                   : -1;
}

//! Pairwise sum of v[LO .. LO + CNT) (compile-time recursion: inlined, no call).
template <int LO, int CNT, int N>
MQ_HD float sumRange(float const (&v)[N])
{
    if constexpr (CNT == 1)
        return v[LO];
    else
        return sumRange<LO, CNT / 2>(v) + sumRange<LO + CNT / 2, CNT - CNT / 2>(v);
}
template <int N>
MQ_HD float treeSum(float const (&v)[N])
{
    return sumRange<0, N>(v);
}

//! Σ_{d ∈ {0} ∪ QR(q)} x[(i − d) mod q], with common pairs shared for q = 11 and 19 (p1[i] = x[i] + x[i − 1]).
template <int Q>
MQ_HD float windowSum(float const (&x)[Q], float const (&p1)[Q], int i)
{
    if constexpr (Q == 11) // {0,1,3,4,5,9} = {0,1} ∪ {3,4} ∪ {5} ∪ {9}
        return (p1[i] + p1[(i + 8) % 11]) + (x[(i + 6) % 11] + x[(i + 2) % 11]);
    else if constexpr (Q == 19) // {0,1,4,5,6,7,9,11,16,17}
        return ((p1[i] + p1[(i + 3) % 19]) + (p1[(i + 15) % 19] + p1[(i + 13) % 19])) + (x[(i + 10) % 19] + x[(i + 8) % 19]);
    else
    {
        constexpr uint64_t mk = qrMask(Q);
        float acc = x[i];
#pragma unroll
        for (int d = 1; d < Q; ++d)
            if ((mk >> d) & 1)
                acc += x[(i - d + Q) % Q];
        return acc;
    }
}

//! o = s · (x · B_M) (B_M row-major, out[c] = Σ_a x[a]·B[a, c]) by additions; o may not alias x.
template <int M>
MQ_HD void baseProduct(float const (&x)[M], float (&o)[M], float s)
{
    constexpr int kind = paleyKind(M);
    static_assert(kind >= 0, "no base matrix of this order");
    if constexpr (kind == 0)
        o[0] = x[0] * s;
    else if constexpr (kind == 1)
    {
        // out[0] = x0 − T, out[1 + i] = out[0] + 2·Σ_{d ∈ {0} ∪ QR} x'[i − d], x' = x[1..q], T = Σ x'
        constexpr int Q = M - 1;
        float xp[Q], p1[Q];
#pragma unroll
        for (int i = 0; i < Q; ++i)
            xp[i] = x[1 + i];
#pragma unroll
        for (int i = 0; i < Q; ++i)
            p1[i] = xp[i] + xp[(i + Q - 1) % Q];
        float const ks = (x[0] - treeSum(xp)) * s;
        float const s2 = 2.f * s;
        o[0] = ks;
#pragma unroll
        for (int i = 0; i < Q; ++i)
            o[1 + i] = fmaf(s2, windowSum<Q>(xp, p1, i), ks);
    }
    else
    {
        // Paley II, q = M/2 − 1, C = [[0, 1ᵀ], [1, Q]] with 2×2 blocks: u_i = x[2i] + x[2i+1], w_i = x[2i] − x[2i+1]
        // out[0] = U + w_0, out[1] = W − u_0 (U = Σ_{i≥1} u_i, W likewise), and for j ≥ 1
        // out[2j] = (u_0 − U) + 2·(x[2j] + Σ_{r∈QR} u[j − r]), out[2j+1] = (w_0 − W) + 2·(Σ_{r∈QR} w[j − r] − x[2j+1])
        // (indices j − r cyclic over 1..q).
        constexpr int Q = M / 2 - 1;
        constexpr uint64_t mk = qrMask(Q);
        float u[Q], w[Q];
#pragma unroll
        for (int i = 0; i < Q; ++i)
            u[i] = x[2 * i + 2] + x[2 * i + 3], w[i] = x[2 * i + 2] - x[2 * i + 3];
        float const u0 = x[0] + x[1], w0 = x[0] - x[1];
        float const U = treeSum(u), W = treeSum(w);
        o[0] = (U + w0) * s;
        o[1] = (W - u0) * s;
        float const ku = (u0 - U) * s, kw = (w0 - W) * s, s2 = 2.f * s;
#pragma unroll
        for (int j = 0; j < Q; ++j)
        {
            float ru = x[2 * j + 2], rw = -x[2 * j + 3];
#pragma unroll
            for (int r = 1; r < Q; ++r)
                if ((mk >> r) & 1)
                    ru += u[(j - r + Q) % Q], rw += w[(j - r + Q) % Q];
            o[2 * j + 2] = fmaf(s2, ru, ku);
            o[2 * j + 3] = fmaf(s2, rw, kw);
        }
    }
}

// ---------------------------------------------------------------- element helpers
MQ_HD void wht4(float4& v) // butterflies of column bits 0 and 1 inside a float4
{
    float const a = v.x + v.y, b = v.x - v.y, c = v.z + v.w, d = v.z - v.w;
    v = make_float4(a + c, b + d, a - c, b - d);
}
MQ_HD void bfly(float4& a, float4& b)
{
    float4 const s = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
    b = make_float4(a.x - b.x, a.y - b.y, a.z - b.z, a.w - b.w);
    a = s;
}
MQ_HD float4 scale4(float4 v, float s) { return make_float4(v.x * s, v.y * s, v.z * s, v.w * s); }
MQ_HD float comp(float4 const& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }
MQ_HD void setComp(float4& v, int i, float f)
{
    if (i == 0)
        v.x = f;
    else if (i == 1)
        v.y = f;
    else if (i == 2)
        v.z = f;
    else
        v.w = f;
}

//! 4 fp16 (8 bytes) as loaded, kept raw until used.
MQ_HD uint2 ldRaw(__half const* p)
{
#if defined(__CUDA_ARCH__)
    return __ldcs(reinterpret_cast<uint2 const*>(p));
#else
    return *reinterpret_cast<uint2 const*>(p);
#endif
}
//! 8-byte asynchronous copy global -> shared (cp.async, sm_80+), zero-filled when !valid; host: a plain copy.
MQ_HD void cpAsync8(uint2* dst, __half const* src, bool valid)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    uint32_t const d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 8 : 0) : "memory");
#elif defined(__CUDA_ARCH__)
    *dst = valid ? *reinterpret_cast<uint2 const*>(src) : make_uint2(0u, 0u);
#else
    *dst = valid ? *reinterpret_cast<uint2 const*>(src) : make_uint2(0u, 0u);
#endif
}
MQ_HD void cpAsyncCommit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
MQ_HD void cpAsyncWaitAll()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}
MQ_HD float4 unpack4(uint2 r)
{
    __half2 h0, h1;
    static_assert(sizeof(__half2) == sizeof(uint32_t), "");
    memcpy(&h0, &r.x, 4);
    memcpy(&h1, &r.y, 4);
    float2 const a = __half22float2(h0), b = __half22float2(h1);
    return make_float4(a.x, a.y, b.x, b.y);
}

MQ_HD int rnInt(float x)
{
#if defined(__CUDA_ARCH__)
    return __float2int_rn(x);
#else
    float const r = std::nearbyint(x); // round half to even (default rounding mode)
    return r >= 2147483647.f ? 2147483647 : r <= -2147483648.f ? (-2147483647 - 1) : static_cast<int>(r);
#endif
}

//! Store 4 consecutive outputs (already scaled): fp16 8 bytes, int8 4 bytes (round half even, saturate); cs:
//! st.global.cs (evict-first) instead of a plain store.
MQ_HD void store4(__half* y, float4 v, bool cs)
{
    __half2 const a = __floats2half2_rn(v.x, v.y), b = __floats2half2_rn(v.z, v.w);
    uint2 o;
    memcpy(&o.x, &a, 4);
    memcpy(&o.y, &b, 4);
#if defined(__CUDA_ARCH__)
    if (cs)
    {
        __stcs(reinterpret_cast<uint2*>(y), o);
        return;
    }
#endif
    (void)cs;
    *reinterpret_cast<uint2*>(y) = o;
}
MQ_HD void store4(int8_t* y, float4 v, bool cs)
{
    int const q0 = rnInt(v.x), q1 = rnInt(v.y), q2 = rnInt(v.z), q3 = rnInt(v.w);
    uint32_t o;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 720
    uint32_t hi;
    asm("cvt.pack.sat.s8.s32.b32 %0, %1, %2, 0;" : "=r"(hi) : "r"(q3), "r"(q2));
    asm("cvt.pack.sat.s8.s32.b32 %0, %1, %2, %3;" : "=r"(o) : "r"(q1), "r"(q0), "r"(hi));
#else
    auto sat = [](int q) { return static_cast<uint32_t>(q < -128 ? -128 : q > 127 ? 127 : q) & 0xffu; };
    o = sat(q0) | (sat(q1) << 8) | (sat(q2) << 16) | (sat(q3) << 24);
#endif
#if defined(__CUDA_ARCH__)
    if (cs)
    {
        __stcs(reinterpret_cast<unsigned int*>(y), o);
        return;
    }
#endif
    (void)cs;
    *reinterpret_cast<uint32_t*>(y) = o;
}

// ---------------------------------------------------------------- schedule
__host__ __device__ constexpr int ilog2(int v) { return v <= 1 ? 0 : 1 + ilog2(v / 2); }

//! Rows [r0, rEnd) of one group: G rows, or fewer at the end of the tensor or in a balanced tail piece (32-bit: the
//! register path takes tensors of < 2^31 rows).
struct Span
{
    int r0, rEnd;
};

//! Which rows each block of a grid of nb processes: block b takes the group indices q = q0(b), q0 + step, … < end(b)
//! and at(q) gives their rows. gpb > 0: gpb consecutive groups of G rows a block. gpb == 0: the groups grid-stride (a
//! resident grid); with `balance`, grid-stride only over the w groups of the rounds in which every block gets a whole
//! group, then the rows left spread over the blocks in pieces of s = ⌈left / nb⌉ ≤ G rows (q = w + b), so that no block
//! does a whole group more than another (m = 20 at n 5120 × 6553 rows runs 6.2 groups a block on average and 7 at
//! most; measured no faster, since a short piece costs nearly a whole group: not the default). Block-independent and
//! computed on the host: the kernel takes it as a parameter, so its fields are constant-bank operands, not registers
//! (schedule state held in registers made the m = 20 kernel spill).
struct Sched
{
    int rows, g, w, s, qEnd, gpb;
    MQ_HD int q0(int b) const { return gpb > 0 ? b * gpb : b; }
    MQ_HD int step(int nb) const { return gpb > 0 ? 1 : nb; }
    MQ_HD int end(int b) const { return gpb > 0 && q0(b) + gpb < qEnd ? q0(b) + gpb : qEnd; }
    MQ_HD Span at(int q) const
    {
        int const r0 = q < w ? q * g : w * g + (q - w) * s;
        int const e = r0 + (q < w ? g : s);
        return Span{r0, e < rows ? e : rows};
    }
};
inline Sched makeSched(int rows, int nb, int G, int gpb, bool balance)
{
    int const groups = (rows + G - 1) / G;
    Sched sc{rows, G, groups, G, groups, gpb > 0 ? gpb : 0};
    if (gpb <= 0 && balance && nb > 0)
    {
        sc.w = rows / (nb * G) * nb;
        int const left = rows - sc.w * G;
        sc.s = left > 0 ? (left + nb - 1) / nb : G;
        sc.qEnd = sc.w + (left + sc.s - 1) / sc.s;
    }
    return sc;
}

template <int M, int LOGP>
struct Cfg
{
    static constexpr int P = 1 << LOGP;
    static constexpr int N = M * P;
    static constexpr int K = LOGP - 2;                  // chunk bits of a sub-row (2^K float4s)
    static constexpr int HL = M == 1 ? 4 : 0;           // chunk bits the L phase holds (m = 1: the top 4)
    static constexpr int LREG = M == 1 ? 16 : M;        // float4s a thread holds in the L phase
    static constexpr int LUNITS = (1 << K) >> HL;       // L-phase threads per row
    static constexpr int G = kThreads / LUNITS;         // rows per group
    static constexpr int R = K - HL;                    // chunk bits left to the passes
    static constexpr int F4 = G * N / 4;                // float4s per group
    static constexpr int SMEM_F4 = R > 0 ? F4 + F4 / 16 : 0;
    static constexpr int MAXB = K + (M % 8 == 0 ? 3 : M % 4 == 0 ? 2 : M % 2 == 0 ? 1 : 0) + ilog2(G); // 2^MAXB | F4
    // Half-width L phase (m = 20 unless MQ_HAD_HALF_L=0, m = 28 unless MQ_HAD_HALF_L28=0): columns 0-1 and then 2-3
    // of the thread's float4s, each pair's column-bit-0 butterfly and base products written to shared memory as
    // float2s, column bit 1 done by pass 0. Holds half the L-phase values, so m = 20 fits in 128 registers instead of
    // 168 (4 blocks a SM instead of 3) and m = 28 in 168 instead of 255 (3 instead of 2; no spills since the
    // butterfly comes before the base products). Not m = 12 (spills at 5 blocks): benchmarks/gpu/results/NOTES.md,
    // "Hadamard: half-width L phase" and "Hadamard: schedule as a kernel parameter, m = 28 half width".
    static constexpr bool HALF = MQ_HAD_HALF_L != 0 && (M == 20 || (M == 28 && MQ_HAD_HALF_L28 != 0));
    // HALF's float2 stores: a thread whose float4 chunk has bit 3 set writes column pair h to the other half of its
    // slots, so that the 16 lanes of a store (chunks c … c + 15) hit 16 different bank pairs instead of 8 (2-way);
    // pass 0 knows each slot's order at compile time (chunk bit 3 is bit 3 of its unit index j).
    static constexpr bool SWZ = HALF && MQ_HAD_HALF_SWIZZLE != 0;
    static_assert(K >= 4 && LUNITS <= kThreads && G * LUNITS == kThreads, "unsupported size");
    static_assert(N <= kMaxN, "unsupported size");

    // Passes: window w does the butterflies of chunk bits [lo, hi); its thread unit is the 2^B float4s that
    // differ in bits [lo, lo + B) (B = 4 where the group has the bits: done bits above the window are
    // carried along). The storing pass starts at chunk bit ≥ 3 whenever R ≥ 4, so that lanes vary chunk bits
    // 0..2 and every warp store covers whole 32-byte sectors: with R = 4 the bits go [0, 3) then [3, 4).
    static constexpr bool SPLIT4 = R == 4;
    static constexpr int NWIN = R == 0 ? 0 : SPLIT4 ? 2 : (R + 3) / 4;
    __host__ __device__ static constexpr int lo(int w) { return SPLIT4 ? 3 * w : 4 * w; }
    __host__ __device__ static constexpr int hi(int w) { return SPLIT4 ? 3 + w : (4 * w + 4 < R ? 4 * w + 4 : R); }
    __host__ __device__ static constexpr int ulo(int w) { return lo(w); }
    __host__ __device__ static constexpr int B4(int w) { return (lo(w) + 4 < MAXB ? lo(w) + 4 : MAXB) - lo(w); }
    // Narrow last pass: a group has F4 = 128·m' float4s (m' = m, or 16 for m = 1), so 16-float4 units leave threads
    // idle unless 16 | m' (m 12 / 20 / 28: 96 / 160 / 224 units for 128 threads, i.e. the pass takes 1 / 2 / 2 rounds
    // for 0.75 / 1.25 / 1.75 of work). A last window of ≤ 2 stage bits (every m > 1 size with 2^k ≤ 256) needs no
    // more than 4 float4s a unit, and 32·m' such units spread evenly (3 / 5 / 7 a thread).
    __host__ __device__ static constexpr bool narrow(int w)
    {
        return MQ_HAD_NARROW_LAST != 0 && w == NWIN - 1 && hi(w) - lo(w) <= 2 && B4(w) > 2 && ((F4 >> B4(w)) % kThreads) != 0
            && ((F4 >> 2) % kThreads) == 0;
    }
    __host__ __device__ static constexpr int B(int w) { return narrow(w) ? 2 : B4(w); }
    __host__ __device__ static constexpr int units(int w) { return F4 >> B(w); }
};

MQ_HD constexpr int ph(int g) { return g + (g >> 4); }

template <int M, int LOGP>
struct Fast
{
    using C = Cfg<M, LOGP>;
    static_assert(!C::SWZ || (C::lo(0) == 0 && C::B(0) == 4), "pass 0 undoes the swizzle from bit 3 of its unit index");
    struct Raw
    {
        uint2 r[C::LREG];
    };

    //! Global element offset (within the group) of the thread's L-phase float4 0; float4 j is lStep(j) further.
    MQ_HD static int lOffset(int tid)
    {
        if constexpr (M > 1)
            return (tid >> C::K) * C::N + 4 * (tid & ((1 << C::K) - 1));
        else
            return (tid >> (C::K - 4)) * C::N + 4 * (tid & ((1 << (C::K - 4)) - 1));
    }
    MQ_HD static constexpr int lStep(int j) { return M > 1 ? j * C::P : 4 * (j << (C::K - 4)); }
    MQ_HD static int lRow(int tid) { return M > 1 ? tid >> C::K : tid >> (C::K - 4); }

    //! Whether the thread's L-phase row is one of the group's rows.
    MQ_HD static bool live(Span g, int tid) { return g.r0 + lRow(tid) < g.rEnd; }

    MQ_HD static void load(Raw& raw, __half const* x, Span g, int tid)
    {
        if (live(g, tid))
        {
            __half const* base = x + static_cast<int64_t>(g.r0) * C::N + lOffset(tid);
#pragma unroll
            for (int j = 0; j < C::LREG; ++j)
                raw.r[j] = ldRaw(base + lStep(j));
        }
        else
        {
#pragma unroll
            for (int j = 0; j < C::LREG; ++j)
                raw.r[j] = make_uint2(0u, 0u);
        }
    }

    //! Asynchronous variant of load: the thread's 8-byte pieces go to its own slots of a staging buffer
    //! (stage[j·kThreads + tid], conflict-free), read back with readStage after cpAsyncWaitAll.
    MQ_HD static void loadAsync(uint2* stage, __half const* x, Span g, int tid)
    {
        bool const valid = live(g, tid);
        __half const* base = valid ? x + static_cast<int64_t>(g.r0) * C::N + lOffset(tid) : x;
#pragma unroll
        for (int j = 0; j < C::LREG; ++j)
            cpAsync8(stage + j * kThreads + tid, valid ? base + lStep(j) : x, valid);
        cpAsyncCommit();
    }
    MQ_HD static void readStage(Raw& raw, uint2 const* stage, int tid)
    {
        cpAsyncWaitAll();
#pragma unroll
        for (int j = 0; j < C::LREG; ++j)
            raw.r[j] = stage[j * kThreads + tid];
    }

    MQ_HD static void unpack(Raw const& raw, float4 (&v)[C::LREG])
    {
#pragma unroll
        for (int j = 0; j < C::LREG; ++j)
            v[j] = unpack4(raw.r[j]);
    }

    //! L phase arithmetic on the unpacked float4s: its butterflies (and base product), scaled by outMul·norm when
    //! M > 1 (M = 1 scales where it stores).
    MQ_HD static void math(float4 (&v)[C::LREG], float s)
    {
#pragma unroll
        for (int j = 0; j < C::LREG; ++j)
            wht4(v[j]);
        if constexpr (M == 1)
        {
#pragma unroll
            for (int h = 1; h < 16; h <<= 1)
#pragma unroll
                for (int j = 0; j < 16; ++j)
                    if ((j & h) == 0)
                        bfly(v[j], v[j + h]);
        }
        else
        {
#pragma unroll
            for (int i = 0; i < 4; ++i)
            {
                float xa[M], o[M];
#pragma unroll
                for (int a = 0; a < M; ++a)
                    xa[a] = comp(v[a], i);
                baseProduct<M>(xa, o, s);
#pragma unroll
                for (int c = 0; c < M; ++c)
                    setComp(v[c], i, o[c]);
            }
        }
    }

    MQ_HD static void compute(Raw const& raw, float4 (&v)[C::LREG], float s)
    {
        unpack(raw, v);
        math(v, s);
    }

    //! Shared-memory float4 index (padded) of the thread's L-phase float4 j.
    //! (ph(g) of a sum of disjoint bit fields is the sum of their ph's: base + a compile-time step per j.)
    MQ_HD static int lSlot(int tid)
    {
        if constexpr (M > 1)
            return ph(tid & ((1 << C::K) - 1)) + ph(((tid >> C::K) * M) << C::K);
        else
            return ph(tid & ((1 << (C::K - 4)) - 1)) + ph((tid >> (C::K - 4)) << C::K);
    }
    MQ_HD static constexpr int lSlotStep(int j) { return M > 1 ? ph(j << C::K) : ph(j << (C::K - 4)); }

    MQ_HD static void storeSmem(float4 const (&v)[C::LREG], float4* s, int tid)
    {
        float4* sp = s + lSlot(tid);
#pragma unroll
        for (int j = 0; j < C::LREG; ++j)
            sp[lSlotStep(j)] = v[j];
    }

    //! C::HALF: the whole L phase from the raw input into shared memory, one pair of columns at a time (the bit-0
    //! butterfly of columns 2h and 2h + 1 and the base products of their sum and difference, stored as the float2 half
    //! h of each float4 slot); pass 0 then does column bit 1. The butterfly comes first (it commutes with the base
    //! product, which mixes sub-rows, not columns; the fp16 sums are exact in fp32), so that only the sum, the
    //! difference and the two products are live (m = 28 at 168 registers: no spills, against 64-92 bytes with the
    //! butterfly after the products).
    //! Same values as compute + storeSmem once pass 0 has run.
    MQ_HD static void lHalves(Raw const& raw, float4* sm, int tid, float s)
    {
        float* sf = reinterpret_cast<float*>(sm + lSlot(tid));
#pragma unroll
        for (int h = 0; h < 2; ++h)
        {
            float* const sh = sf + 2 * lHalf(tid, h);
            float xs[M], xd[M], os[M], od[M];
#pragma unroll
            for (int a = 0; a < M; ++a)
            {
                __half2 hh;
                memcpy(&hh, h == 0 ? &raw.r[a].x : &raw.r[a].y, 4);
                float2 const f = __half22float2(hh);
                xs[a] = f.x + f.y, xd[a] = f.x - f.y;
            }
            baseProduct<M>(xs, os, s);
            baseProduct<M>(xd, od, s);
#pragma unroll
            for (int c = 0; c < M; ++c)
                *reinterpret_cast<float2*>(sh + 4 * lSlotStep(c)) = make_float2(os[c], od[c]);
        }
    }
    //! Which float2 half of its slots the thread's column pair h goes to (C::SWZ: swapped where chunk bit 3 is set;
    //! c4 = tid mod 2^K and K ≥ 4, so that is bit 3 of tid).
    MQ_HD static int lHalf(int tid, int h) { return C::SWZ ? h ^ ((tid >> 3) & 1) : h; }

    //! R == 0 (M = 1, P = 64): the L phase holds whole rows; scale and store.
    template <typename Tout>
    MQ_HD static void storeDirect(float4 const (&v)[C::LREG], Tout* y, Span g, int tid, float s, bool cs)
    {
        if (!live(g, tid))
            return;
        Tout* base = y + static_cast<int64_t>(g.r0) * C::N + lOffset(tid);
#pragma unroll
        for (int j = 0; j < C::LREG; ++j)
            store4(base + lStep(j), scale4(v[j], s), cs);
    }

    //! First float4 (unpadded group index) of pass W's unit u: u with the window's B bits inserted as zeros at bit
    //! ulo; the unit's float4s are unitBase + (j << ulo), j < 2^B, at padded slots ph(unitBase) + ph(j << ulo).
    template <int W>
    MQ_HD static constexpr int unitBase(int u)
    {
        return (u & ((1 << C::ulo(W)) - 1)) | ((u >> C::ulo(W)) << (C::ulo(W) + C::B(W)));
    }

    //! Pass W over its units (u = tid, tid + kThreads, ...): gather, butterflies of the window's bits, then
    //! write back (W < NWIN − 1) or scale by s and store to y (last pass). Units whose first float4 lies past the
    //! group's rows hold no row of it (a unit's float4s are gf + (j << ulo) ≥ gf, and gf grows with u) and are skipped;
    //! the float4s of missing rows in the others are never mixed with the group's rows (no butterfly crosses a row).
    template <int W, typename Tout>
    MQ_HD static void pass(float4* sm, Tout* y, Span g, int tid, float s, bool cs)
    {
        constexpr int ulo = C::ulo(W), uhi = ulo + C::B(W);
        constexpr int U = C::units(W);
        int const nRows = g.rEnd - g.r0;
        bool const full = nRows >= C::G;
        int const gEnd = nRows * (C::N / 4); // float4s of the group's rows
        // units u < uEnd are those with gf(u) ≤ gl = gEnd − 1, the group's last float4 (gf(u) is u with B zero bits
        // inserted at bit ulo, so the last such u keeps gl's bits above uhi and, below ulo, gl's bits or all ones)
        int const gl = gEnd - 1;
        int const low = gl & ((1 << uhi) - 1);
        int const uEnd = full ? U : ((gl >> uhi) << ulo) + (low < (1 << ulo) ? low : (1 << ulo) - 1) + 1;
        Tout* ybase = y + static_cast<int64_t>(g.r0) * C::N;
        if constexpr (MQ_HAD_NARROW_UNROLL != 0 && C::narrow(W) && U % kThreads == 0)
        {
            if (full)
            {
#pragma unroll
                for (int i = 0; i < U / kThreads; ++i)
                    unit<W>(sm, ybase, tid + i * kThreads, true, gEnd, s, cs);
                return;
            }
        }
#pragma unroll 1
        for (int u = tid; u < uEnd; u += kThreads)
            unit<W>(sm, ybase, u, full, gEnd, s, cs);
    }

    //! Pass W's unit u (see pass).
    template <int W, typename Tout>
    MQ_HD static void unit(float4* sm, Tout* ybase, int u, bool full, int gEnd, float s, bool cs)
    {
        constexpr int ulo = C::ulo(W), B = C::B(W);
        constexpr int slo = C::lo(W) - ulo, shi = C::hi(W) - ulo; // stage bits within the unit index j
        constexpr bool last = W == C::NWIN - 1;
        int const gf = unitBase<W>(u);
        float4* sp = sm + ph(gf);
        float4 v[1 << B];
#pragma unroll
        for (int j = 0; j < (1 << B); ++j)
            v[j] = sp[ph(j << ulo)];
        if constexpr (C::HALF && W == 0) // column bit 1, left by lHalves
        {
#pragma unroll
            for (int j = 0; j < (1 << B); ++j) // (ulo = 0 and B = 4 here: bit 3 of j is chunk bit 3)
                v[j] = C::SWZ && (j & 8) ? make_float4(v[j].z + v[j].x, v[j].w + v[j].y, v[j].z - v[j].x, v[j].w - v[j].y)
                                         : make_float4(v[j].x + v[j].z, v[j].y + v[j].w, v[j].x - v[j].z, v[j].y - v[j].w);
        }
#pragma unroll
        for (int b = slo; b < shi; ++b)
#pragma unroll
            for (int j = 0; j < (1 << B); ++j)
                if ((j & (1 << b)) == 0)
                    bfly(v[j], v[j + (1 << b)]);
        if constexpr (!last)
        {
#pragma unroll
            for (int j = 0; j < (1 << B); ++j)
                sp[ph(j << ulo)] = v[j];
        }
        else
        {
            Tout* yu = ybase + 4 * gf; // g = gf + (j << ulo): gf has no bits in [ulo, ulo + B)
#pragma unroll
            for (int j = 0; j < (1 << B); ++j)
            {
                if (!full && gf + (j << ulo) >= gEnd)
                    continue;
                store4(yu + 4 * (j << ulo), M == 1 ? scale4(v[j], s) : v[j], cs);
            }
        }
    }
};

} // namespace hfast
} // namespace mq
