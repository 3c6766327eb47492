// CPU check of the scan's automatic plan (threads a channel, chunks) on the H200 benchmark shapes (132 SMs given
// in the params, so no device is queried), and of the workspace bound the TensorRT plugin reserves for a profile.
// Built and run by plugins/check_build.sh. On the five benchmark shapes the expected plans are the fastest measured
// ones (benchmarks/gpu/results/NOTES.md, "Scan: chunk rule": 4 threads at 12 / 5 chunks for B1 D1536 / D5120); the last
// four follow the rule.
#include "selectiveScanKernel.h"

#include <cstdio>

int main()
{
    struct Case
    {
        int b, l, d, split, chunks;
    };
    Case const cases[] = {{1, 4096, 1536, 4, 12}, {1, 4096, 5120, 4, 5}, {8, 2048, 1536, 4, 1}, {8, 4096, 2560, 4, 1},
        {8, 4096, 5120, 2, 1}, {1, 100, 768, 4, 1}, {4, 4096, 1024, 4, 6}, {16, 1024, 1024, 4, 1}, {24, 1024, 1024, 2, 1}};
    int failures = 0;
    for (Case const& c : cases)
    {
        mq::SelectiveScanParams p;
        p.batch = c.b, p.seqLen = c.l, p.dim = c.d, p.dState = 16, p.numSMs = 132;
        mq::SelectiveScanPlan const plan = mq::selectiveScanPlan(p);
        bool const ok = plan.schedule == 1 && plan.split == c.split && plan.chunks == c.chunks;
        failures += !ok;
        std::printf("%s B%d L%d D%d: %d threads a channel, %d chunks (want %d, %d)\n", ok ? "PASS" : "FAIL", c.b, c.l,
            c.d, plan.split, plan.chunks, c.split, c.chunks);
    }
    // forced: schedule 1 with 2 / 4 lanes, and explicit chunks keep 2 threads unless forced
    mq::SelectiveScanParams p;
    p.batch = 8, p.seqLen = 2048, p.dim = 1536, p.dState = 16, p.numSMs = 132, p.schedule = 1, p.segLanes = 2;
    failures += mq::selectiveScanPlan(p).split != 2;
    p.segLanes = 4, p.batch = 1;
    failures += mq::selectiveScanPlan(p).split != 4;
    p.schedule = 0, p.segLanes = 0, p.batch = 8, p.chunks = 3;
    failures += mq::selectiveScanPlan(p).split != 2 || mq::selectiveScanPlan(p).chunks != 3;
    // the TensorRT plugin reserves selectiveScanMaxWorkspaceSize for a profile's largest shape: every smaller shape's
    // automatic plan must fit in it, on small and large GPUs (the largest shape's own plan is not enough: at
    // D 384, max L 4100 it takes 29 chunks of 144 tokens, L 4096 takes 32 of 128)
    int wsFailures = 0;
    for (int sms : {8, 16, 132})
        for (int d : {64, 384, 1536, 5120})
            for (int maxL : {100, 129, 255, 2000, 4096, 4100})
                for (int maxB : {1, 3, 8})
                {
                    size_t const cap = mq::selectiveScanMaxWorkspaceSize(maxB, maxL, d, 16);
                    for (int b = 1; b <= maxB; ++b)
                        for (int l = 1; l <= maxL; l += (l < 300 || l > maxL - 300) ? 1 : 37)
                        {
                            mq::SelectiveScanParams q;
                            q.batch = b, q.seqLen = l, q.dim = d, q.dState = 16, q.numSMs = sms;
                            size_t const need = mq::selectiveScanWorkspaceSize(q);
                            if (need > cap && wsFailures++ < 5)
                                std::printf("FAIL workspace: %d SMs, D %d, profile max B%d L%d: B%d L%d needs %zu > %zu bytes\n",
                                    sms, d, maxB, maxL, b, l, need, cap);
                        }
                }
    std::printf("%s workspace bound over the profile grid (%d shapes over it)\n", wsFailures ? "FAIL" : "PASS", wsFailures);
    failures += wsFailures;
    std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
    return failures ? 1 : 0;
}
