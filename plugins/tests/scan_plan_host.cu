// CPU check of the scan's automatic plan (threads a channel, chunks) on the H200 benchmark shapes (132 SMs given
// in the params, so no device is queried) and on Jetson-sized SM counts, and of the workspace bound the TensorRT plugin
// reserves for a profile. Built and run by plugins/check_build.sh. The expected plans are planCost's choices
// (benchmarks/gpu/fit_plan.py computes the same ones, tests/test_scan_plan_model.py holds it to the compiled plan's
// picks); on the benchmark shapes they are the fastest measured (benchmarks/gpu/results/NOTES.md, "Scan: one cost
// model for threads and chunks": 4 threads at 12 / 5 chunks for B1 D1536 / D5120, 2 threads at 2 chunks at B8 L4096 D5120),
// and a 256-token prompt takes 4 threads in one pass (the old rules took 2 threads at 2 chunks: 1.6× slower). Also the
// chunk geometry: chunk 0 shortened into the rounding slack, the others unchanged; and common.h's int8 → fp32
// conversions (the ALU form the scan's output body uses, and the cast) on every int8 value.
#include "selectiveScanKernel.h"

#ifndef MQ_SCAN_WIDE
#define MQ_SCAN_WIDE 0 // as the selectiveScanKernel.o it is linked with (check_build.sh links the default build)
#endif

#include <cstdio>

int main()
{
    struct Case
    {
        int b, l, d;
        mq::DType out;
        int split, chunks, first, len; // first / len 0: not checked
        int sms = 132;
    };
    mq::DType const h = mq::DType::kHALF, f = mq::DType::kFLOAT;
    Case const cases[] = {{1, 4096, 1536, h, 4, 12, 256, 352}, {1, 4096, 5120, h, 4, 5, 768, 832},
        {8, 2048, 1536, h, 4, 1, 2048, 2048}, {8, 4096, 2560, h, 4, 1}, {8, 4096, 5120, h, 2, 2, 2048, 2048},
        {1, 100, 768, h, 4, 1}, {1, 256, 1536, h, 4, 1, 256, 256}, {1, 1024, 1536, h, 4, 6, 144, 176},
        {4, 4096, 1024, h, 4, 5, 768, 832}, {16, 1024, 1024, h, 4, 1}, {24, 1024, 1024, h, 2, 1},
        {1, 8192, 768, h, 2, 32, 256, 256}, {2, 4096, 1536, h, 2, 12, 256, 352}, {4, 2048, 768, h, 2, 12, 128, 176},
        {2, 4096, 768, h, 4, 12, 256, 352}, {1, 4096, 1536, f, 4, 12, 256, 352}, {2, 4096, 1536, f, 2, 12},
        {4, 1024, 1536, h, 2, 2, 512, 512, 16}, {1, 4096, 1536, h, 4, 1, 4096, 4096, 16}, {1, 4096, 1536, h, 2, 2, 2048, 2048, 8}};
    int failures = 0;
    for (Case const& c : cases)
    {
        mq::SelectiveScanParams p;
        p.batch = c.b, p.seqLen = c.l, p.dim = c.d, p.dState = 16, p.numSMs = c.sms, p.outType = c.out;
        mq::SelectiveScanPlan const plan = mq::selectiveScanPlan(p);
        bool const ok = plan.schedule == 1 && plan.split == c.split && plan.chunks == c.chunks
            && (c.len == 0 || (plan.chunkFirst == c.first && plan.chunkLen == c.len));
        failures += !ok;
        std::printf("%s %d SMs B%d L%d D%d %s: %d threads a channel, %d chunks of %d + %d (want %d, %d, %d + %d)\n",
            ok ? "PASS" : "FAIL", c.sms, c.b, c.l, c.d, c.out == h ? "fp16" : "fp32", plan.split, plan.chunks,
            plan.chunkFirst, plan.chunkLen, c.split, c.chunks, c.first, c.len);
    }
    // chunk geometry over a grid of lengths and requested counts: never more chunks than asked, every chunk but the
    // last a whole number of 16-token tiles, the chunks cover [0, L) exactly, chunk 0 no longer than the others
    int geomFailures = 0;
    for (int l = 1; l <= 9000; l += l < 600 ? 1 : 7)
        for (int c = 1; c <= 40; ++c)
        {
            mq::SelectiveScanParams p;
            p.batch = 1, p.seqLen = l, p.dim = 64, p.dState = 16, p.numSMs = 132, p.chunks = c, p.outType = h;
            mq::SelectiveScanPlan const g = mq::selectiveScanPlan(p);
            int64_t const lastStart = g.chunks > 1 ? g.chunkFirst + static_cast<int64_t>(g.chunks - 2) * g.chunkLen : 0;
            int64_t const end = g.chunks > 1 ? lastStart + g.chunkLen : g.chunkFirst;
            bool const ok = g.chunks >= 1 && g.chunks <= c && g.chunkFirst >= 1 && g.chunkFirst <= g.chunkLen
                && (g.chunks == 1 || (g.chunkFirst % 16 == 0 && g.chunkLen % 16 == 0 && lastStart < l && end >= l))
                && (g.chunks > 1 || g.chunkFirst == l);
            if (!ok && geomFailures++ < 5)
                std::printf("FAIL geometry L%d C%d: %d chunks of %d + %d\n", l, c, g.chunks, g.chunkFirst, g.chunkLen);
        }
    std::printf("%s chunk geometry over the (L, chunks) grid (%d bad)\n", geomFailures ? "FAIL" : "PASS", geomFailures);
    failures += geomFailures;
    // forced: schedule 1 with 2 / 4 lanes, and explicit chunks keep 2 threads unless forced
    mq::SelectiveScanParams p;
    p.batch = 8, p.seqLen = 2048, p.dim = 1536, p.dState = 16, p.numSMs = 132, p.schedule = 1, p.segLanes = 2;
    p.outType = mq::DType::kHALF;
    failures += mq::selectiveScanPlan(p).split != 2;
    p.segLanes = 4, p.batch = 1;
    failures += mq::selectiveScanPlan(p).split != 4;
    p.schedule = 0, p.segLanes = 0, p.batch = 8, p.chunks = 3;
    failures += mq::selectiveScanPlan(p).split != 2 || mq::selectiveScanPlan(p).chunks != 3;
    // the experimental wide schedule (4) only on request: (lanes, block) as asked, each 0 meaning 8 / 64; one chunk, no
    // workspace. Configurations it lacks, and every one in a default build (this object), are refused before any CUDA call
    {
        int wideFailures = 0;
        mq::SelectiveScanParams w = p;
        w.chunks = 0, w.schedule = 4, w.segLanes = 16, w.segGroups = 128;
        mq::SelectiveScanPlan pw = mq::selectiveScanPlan(w);
        wideFailures += pw.schedule != 4 || pw.lanes != 16 || pw.groups != 128 || pw.chunks != 1;
        wideFailures += mq::selectiveScanWorkspaceSize(w) != 0;
        w.segGroups = 0;
        pw = mq::selectiveScanPlan(w);
        wideFailures += pw.lanes != 16 || pw.groups != 64;
        w.segLanes = 0, w.segGroups = 128;
        pw = mq::selectiveScanPlan(w);
        wideFailures += pw.lanes != 8 || pw.groups != 128;
        wideFailures += mq::selectiveScanSegmentedAvailable(4, 8, 64) != (MQ_SCAN_WIDE != 0);
        wideFailures += mq::selectiveScanSegmentedAvailable(4, 4, 64) || mq::selectiveScanSegmentedAvailable(4, 8, 96);
        float dummy[1] = {0.f};
        w.u = w.delta = w.Bm = w.Cm = w.y = dummy;
        w.A = dummy;
        if (!MQ_SCAN_WIDE)
            wideFailures += mq::launchSelectiveScan(w, nullptr, 0, nullptr) != cudaErrorInvalidValue;
        w.segLanes = 4, w.segGroups = 96; // not a configuration of the schedule: refused in every build
        pw = mq::selectiveScanPlan(w);
        wideFailures += pw.lanes != 4 || pw.groups != 96;
        wideFailures += mq::launchSelectiveScan(w, nullptr, 0, nullptr) != cudaErrorInvalidValue;
        std::printf("%s wide schedule on request (%d wrong)\n", wideFailures ? "FAIL" : "PASS", wideFailures);
        failures += wideFailures;
    }
    // the TensorRT plugin reserves selectiveScanMaxWorkspaceSize for a profile's largest shape: every smaller shape's
    // automatic plan must fit in it, on small and large GPUs (the largest shape's own plan is not enough: at
    // D 384, max L 4100 it takes 29 chunks of 144 tokens, L 4096 takes 32 of 128)
    int wsFailures = 0;
    for (mq::DType out : {h, f})
    for (int sms : {8, 16, 132})
        for (int d : {64, 384, 1536, 5120})
            for (int maxL : {100, 129, 255, 2000, 4096, 4100, 32768})
                for (int maxB : {1, 3, 8})
                {
                    size_t const cap = mq::selectiveScanMaxWorkspaceSize(maxB, maxL, d, 16);
                    for (int b = 1; b <= maxB; ++b)
                        for (int l = 1; l <= maxL; l += (l < 300 || l > maxL - 300) ? 1 : 37)
                        {
                            mq::SelectiveScanParams q;
                            q.batch = b, q.seqLen = l, q.dim = d, q.dState = 16, q.numSMs = sms, q.outType = out;
                            size_t const need = mq::selectiveScanWorkspaceSize(q);
                            if (need > cap && wsFailures++ < 5)
                                std::printf("FAIL workspace: %d SMs, D %d, profile max B%d L%d: B%d L%d needs %zu > %zu bytes\n",
                                    sms, d, maxB, maxL, b, l, need, cap);
                        }
                }
    std::printf("%s workspace bound over the profile grid (%d shapes over it)\n", wsFailures ? "FAIL" : "PASS", wsFailures);
    failures += wsFailures;
    // ... and no larger than the most chunks the plan makes (32): B8 L32768 D5120 89 MB, not 256 chunks' 713 MB
    int capFailures = 0;
    for (int maxL : {4096, 4223, 8192, 32768, 1 << 20})
        capFailures += mq::selectiveScanMaxWorkspaceSize(8, maxL, 5120, 16) != size_t{8} * 32 * 5120 * 17 * sizeof(float);
    capFailures += mq::selectiveScanMaxWorkspaceSize(8, 2000, 5120, 16) != size_t{8} * 15 * 5120 * 17 * sizeof(float);
    std::printf("%s workspace bound at most 32 chunks (%d wrong)\n", capFailures ? "FAIL" : "PASS", capFailures);
    failures += capFailures;
    // empty tensors (a profile's zero batch or length): TensorRT may hand null pointers for them; nothing to launch
    int emptyFailures = 0;
    {
        mq::SelectiveScanParams e;
        e.dim = 64, e.dState = 16, e.seqLen = 10, e.batch = 0;
        emptyFailures += mq::launchSelectiveScan(e, nullptr, 0, nullptr) != cudaSuccess;
        e.batch = 2, e.dim = 0;
        emptyFailures += mq::launchSelectiveScan(e, nullptr, 0, nullptr) != cudaSuccess;
        e.dim = 64, e.seqLen = 0; // no tokens, no state asked for: nothing
        emptyFailures += mq::launchSelectiveScan(e, nullptr, 0, nullptr) != cudaSuccess;
        e.seqLen = 10; // tokens but no inputs: refused before any launch
        emptyFailures += mq::launchSelectiveScan(e, nullptr, 0, nullptr) != cudaErrorInvalidValue;
        e.batch = -1;
        emptyFailures += mq::launchSelectiveScan(e, nullptr, 0, nullptr) != cudaErrorInvalidValue;
    }
    std::printf("%s empty scans with null pointers (%d wrong)\n", emptyFailures ? "FAIL" : "PASS", emptyFailures);
    failures += emptyFailures;
    // the scan's ALU int8 → fp32 conversion is exact: equal to the cast for every int8 value (both forms, host side)
    int cvtFailures = 0;
    for (int q = -128; q <= 127; ++q)
        cvtFailures += mq::int8ToFloat<true>(static_cast<int8_t>(q)) != static_cast<float>(q)
            || mq::int8ToFloat<false>(static_cast<int8_t>(q)) != static_cast<float>(q);
    std::printf("%s int8 -> fp32 conversion, ALU form and cast, all 256 values (%d wrong)\n", cvtFailures ? "FAIL" : "PASS",
        cvtFailures);
    failures += cvtFailures;
    std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
    return failures ? 1 : 0;
}
