// CPU run of the fp16 register path of the Hadamard kernel (plugins/kernels/hadamardFast.cuh): the same phase
// functions the kernel calls, executed thread by thread (each phase over all threads of a block before the
// next, as the kernel's barriers order them), against a float64 reference built from mq::hadamardBaseMatrix.
// Checks the index/layout logic and the base products without a GPU, and (checkBanks) that the float4 shared-memory
// accesses of the L phase and the passes are free of bank conflicts, from the same index functions:
//   nvcc -std=c++17 -O2 -arch=sm_90 -Iplugins/kernels plugins/tests/hadamard_host_sim.cu \
//        plugins/kernels/hadamardKernel.cu -o /tmp/hsim && /tmp/hsim
// (plugins/check_build.sh does this unless HOST_SIM=0.) Exit status 1 on any mismatch.
#include "hadamardFast.cuh"
#include "hadamardKernel.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

using namespace mq;

namespace
{

int failures = 0;

template <int M>
void checkBase()
{
    auto const B = hadamardBaseMatrix(M);
    std::mt19937 gen(M);
    std::normal_distribution<float> nd;
    double worst = 0;
    for (int t = 0; t < 20; ++t)
    {
        float x[M], o[M];
        for (float& v : x)
            v = nd(gen);
        hfast::baseProduct<M>(x, o, 0.5f);
        for (int c = 0; c < M; ++c)
        {
            double ref = 0;
            for (int a = 0; a < M; ++a)
                ref += static_cast<double>(x[a]) * B[a * M + c];
            worst = std::max(worst, std::fabs(0.5 * ref - o[c]));
        }
    }
    bool const ok = worst < 1e-4;
    failures += !ok;
    std::printf("%s base product m=%d: max |err| %.3g\n", ok ? "PASS" : "FAIL", M, worst);
}

std::vector<double> reference(std::vector<float> const& x, int64_t rows, int n, int m)
{
    int const P = n / m;
    auto const B = m > 1 ? hadamardBaseMatrix(m) : std::vector<float>{1.f};
    std::vector<double> y(x.size()), t(n);
    for (int64_t r = 0; r < rows; ++r)
    {
        for (int i = 0; i < n; ++i)
            t[i] = x[r * n + i];
        for (int a = 0; a < m; ++a)
            for (int h = 1; h < P; h <<= 1)
                for (int i = 0; i < P; ++i)
                    if ((i & h) == 0)
                    {
                        double const u = t[a * P + i], v = t[a * P + i + h];
                        t[a * P + i] = u + v, t[a * P + i + h] = u - v;
                    }
        for (int c = 0; c < m; ++c)
            for (int b = 0; b < P; ++b)
            {
                double acc = 0;
                for (int a = 0; a < m; ++a)
                    acc += t[a * P + b] * B[a * m + c];
                y[r * n + c * P + b] = acc / std::sqrt(static_cast<double>(n));
            }
    }
    return y;
}

template <int M, int LOGP>
void runCase(int64_t rows)
{
    using F = hfast::Fast<M, LOGP>;
    using C = typename F::C;
    constexpr int n = C::N;
    std::mt19937 gen(static_cast<unsigned>(n + rows));
    std::normal_distribution<float> nd;
    std::vector<__half> xh(rows * n);
    std::vector<float> xf(rows * n);
    for (size_t i = 0; i < xh.size(); ++i)
    {
        xh[i] = __float2half_rn(nd(gen));
        xf[i] = __half2float(xh[i]);
    }
    auto const ref = reference(xf, rows, n, M);
    double refMax = 0;
    for (double v : ref)
        refMax = std::max(refMax, std::fabs(v));
    float const scale = static_cast<float>(refMax / 100.0);
    std::vector<__half> yh(rows * n, __float2half_rn(NAN));
    std::vector<int8_t> yq(rows * n, 99);
    std::vector<float4> sm(C::SMEM_F4 > 0 ? C::SMEM_F4 : 1);
    std::vector<uint2> stage(C::LREG * hfast::kThreads);
    float const norm = 1.f / std::sqrt(static_cast<float>(n));
    // the kernel's group order (hfast::Spans) for a grid of nb blocks: out 0 (fp16) one block walking consecutive
    // groups, out 1 (int8) 3 blocks grid-stride with the balanced tail (pieces of < G rows at any row)
    for (int out = 0; out < 2; ++out)
    {
        float const s = out == 0 ? norm : norm * (1.f / scale);
        int const nb = out == 0 ? 1 : 3;
        int64_t seq = 0;
        hfast::Sched const sched = hfast::makeSched(static_cast<int>(rows), nb, C::G, out == 0 ? 1 << 20 : 0, out == 1);
        for (int b = 0; b < nb; ++b)
        {
            for (int q = sched.q0(b); q < sched.end(b); q += sched.step(nb), ++seq)
            {
                hfast::Span const g = sched.at(q);
                for (auto& f : sm)
                    f = make_float4(NAN, NAN, NAN, NAN); // rows outside the group stay NaN and must not leak
                for (int tid = 0; tid < hfast::kThreads; ++tid)
                {
                    typename F::Raw raw;
                    if (seq % 2 == 0)
                        F::load(raw, xh.data(), g, tid);
                    else
                    {
                        F::loadAsync(stage.data(), xh.data(), g, tid);
                        F::readStage(raw, stage.data(), tid);
                    }
                    if (!F::live(g, tid))
                        continue; // as the kernel: no L phase for a row the group does not have
                    if constexpr (C::HALF)
                    {
                        F::lHalves(raw, sm.data(), tid, s);
                        continue;
                    }
                    float4 v[C::LREG];
                    F::compute(raw, v, s);
                    if constexpr (C::R == 0)
                    {
                        if (out == 0)
                            F::storeDirect(v, yh.data(), g, tid, s, false);
                        else
                            F::storeDirect(v, yq.data(), g, tid, s, false);
                    }
                    else
                        F::storeSmem(v, sm.data(), tid);
                }
                if constexpr (C::R > 0)
                {
                    for (int tid = 0; tid < hfast::kThreads; ++tid)
                        out == 0 ? F::template pass<0>(sm.data(), yh.data(), g, tid, s, false)
                                 : F::template pass<0>(sm.data(), yq.data(), g, tid, s, false);
                    if constexpr (C::NWIN > 1)
                        for (int tid = 0; tid < hfast::kThreads; ++tid)
                            out == 0 ? F::template pass<1>(sm.data(), yh.data(), g, tid, s, false)
                                     : F::template pass<1>(sm.data(), yq.data(), g, tid, s, false);
                }
            }
        }
    }
    double err = 0;
    int64_t mism = 0;
    double dqMax = 0;
    for (size_t i = 0; i < ref.size(); ++i)
    {
        double const g = __half2float(yh[i]);
        err = std::isnan(g) ? INFINITY : std::max(err, std::fabs(g - ref[i]));
        double const qr = std::nearbyint(ref[i] / scale);
        double const dq = std::fabs(yq[i] - std::min(127.0, std::max(-128.0, qr)));
        dqMax = std::max(dqMax, dq);
        mism += dq > 0;
    }
    double const rel = err / refMax;
    double const frac = static_cast<double>(mism) / static_cast<double>(ref.size());
    bool const ok = rel <= 2e-3 && dqMax <= 1 && frac <= 0.01;
    failures += !ok;
    std::printf("%s n=%d (m=%d, 2^k=%d, G=%d, passes=%d) rows=%lld: fp16 rel %.3g, int8 max|dq| %.0f, mismatches %.2g\n",
                ok ? "PASS" : "FAIL", n, M, 1 << LOGP, C::G, C::NWIN, static_cast<long long>(rows), rel, dqMax, frac);
}

//! Shared-memory bank model of the path's accesses, from the kernel's own index functions: a warp's 16-byte accesses
//! are served 8 lanes at a time (each lane covers the 4 banks of float4 slot mod 8), its 8-byte ones 16 lanes at a time
//! (float2 slot mod 16). Returns the worst number of different slots one bank group gets within such a phase (1 = no
//! conflict) over every access of every warp of a group.
int phaseDegree(std::vector<int> const& slot, int lanesPerPhase, int groups)
{
    int worst = 1;
    for (size_t p0 = 0; p0 < slot.size(); p0 += lanesPerPhase)
    {
        std::vector<std::vector<int>> seen(groups);
        for (size_t l = p0; l < p0 + lanesPerPhase && l < slot.size(); ++l)
        {
            if (slot[l] < 0)
                continue;
            auto& v = seen[slot[l] % groups];
            if (std::find(v.begin(), v.end(), slot[l]) == v.end())
                v.push_back(slot[l]);
        }
        for (auto const& v : seen)
            worst = std::max(worst, static_cast<int>(v.size()));
    }
    return worst;
}

template <int M, int LOGP, int W>
int passDegree()
{
    using F = hfast::Fast<M, LOGP>;
    using C = typename F::C;
    int worst = 1;
    for (int k = 0; k * hfast::kThreads < C::units(W); ++k)
        for (int w = 0; w < hfast::kThreads / 32; ++w)
            for (int j = 0; j < (1 << C::B(W)); ++j)
            {
                std::vector<int> slot(32, -1);
                for (int l = 0; l < 32; ++l)
                {
                    int const u = k * hfast::kThreads + 32 * w + l;
                    if (u < C::units(W))
                        slot[l] = hfast::ph(F::template unitBase<W>(u)) + hfast::ph(j << C::ulo(W));
                }
                worst = std::max(worst, phaseDegree(slot, 8, 8));
            }
    return worst;
}

template <int M, int LOGP>
void checkBanks()
{
    using F = hfast::Fast<M, LOGP>;
    using C = typename F::C;
    int lDeg = 1;
    char const* lKind = "float4";
    if constexpr (C::R > 0)
    {
        for (int w = 0; w < hfast::kThreads / 32; ++w)
        {
            if constexpr (C::HALF) // float2 halves of the slots: 8-byte stores
            {
                lKind = "float2";
                for (int c = 0; c < M; ++c)
                    for (int h = 0; h < 2; ++h)
                    {
                        std::vector<int> slot(32);
                        for (int l = 0; l < 32; ++l)
                            slot[l] = 2 * (F::lSlot(32 * w + l) + F::lSlotStep(c)) + F::lHalf(32 * w + l, h);
                        lDeg = std::max(lDeg, phaseDegree(slot, 16, 16));
                    }
            }
            else
            {
                for (int j = 0; j < C::LREG; ++j)
                {
                    std::vector<int> slot(32);
                    for (int l = 0; l < 32; ++l)
                        slot[l] = F::lSlot(32 * w + l) + F::lSlotStep(j);
                    lDeg = std::max(lDeg, phaseDegree(slot, 8, 8));
                }
            }
        }
    }
    int const p0 = C::NWIN > 0 ? passDegree<M, LOGP, 0>() : 1;
    int const p1 = C::NWIN > 1 ? passDegree<M, LOGP, (C::NWIN > 1 ? 1 : 0)>() : 1;
    // the float4 accesses are claimed conflict-free (hadamardFast.cuh, "Layout"), and the half-width L phase's float2
    // stores where they are swizzled (C::SWZ); unswizzled (2-way) they are reported, not held to it
    bool const ok = (lDeg == 1 || (C::HALF && !C::SWZ)) && p0 == 1 && p1 == 1;
    failures += !ok;
    std::printf("%s banks n=%d (m=%d): L-phase %s stores %d-way, pass 0 %d-way, pass 1 %d-way; float4s a unit / units a "
                "thread: %d / %.2f, %d / %.2f\n",
                ok ? "PASS" : "FAIL", C::N, M, lKind, lDeg, p0, p1, C::NWIN > 0 ? 1 << C::B(0) : 0,
                C::NWIN > 0 ? C::units(0) / double(hfast::kThreads) : 0.0, C::NWIN > 1 ? 1 << C::B(C::NWIN - 1) : 0,
                C::NWIN > 1 ? C::units(C::NWIN - 1) / double(hfast::kThreads) : 0.0);
}

template <int M, int LOGP>
void runSizes()
{
    runCase<M, LOGP>(1);
    runCase<M, LOGP>(hfast::Cfg<M, LOGP>::G + 3);
    runCase<M, LOGP>(7 * hfast::Cfg<M, LOGP>::G + 5); // 3 blocks: whole rounds, then a tail split in pieces
    checkBanks<M, LOGP>();
}

} // namespace

int main()
{
    checkBase<12>();
    checkBase<20>();
    checkBase<28>();
    checkBase<36>();
    checkBase<44>();
    checkBase<60>();
    runSizes<1, 6>();
    runSizes<1, 7>();
    runSizes<1, 8>();
    runSizes<1, 9>();
    runSizes<1, 10>();
    runSizes<1, 11>();
    runSizes<1, 12>();
    runSizes<1, 13>();
    runSizes<12, 6>();
    runSizes<12, 7>();
    runSizes<12, 8>();
    runSizes<12, 9>();
    runSizes<20, 6>();
    runSizes<20, 7>();
    runSizes<20, 8>();
    runSizes<28, 6>();
    runSizes<28, 7>();
    runSizes<28, 8>();
    std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
    return failures ? 1 : 0;
}
