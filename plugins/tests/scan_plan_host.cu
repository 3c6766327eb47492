// CPU check of the scan's automatic plan (threads a channel, chunks) on the H200 benchmark shapes: 132 SMs given
// in the params, so no device is queried. Built and run by plugins/check_build.sh; on the five benchmark shapes the
// expected plans are the fastest measured ones (benchmarks/gpu/results/NOTES.md, "Scan: tile copies set up once"),
// the last three follow the rule.
#include "selectiveScanKernel.h"

#include <cstdio>

int main()
{
    struct Case
    {
        int b, l, d, split, chunks;
    };
    Case const cases[] = {{1, 4096, 1536, 4, 12}, {1, 4096, 5120, 4, 4}, {8, 2048, 1536, 4, 1}, {8, 4096, 2560, 4, 1},
        {8, 4096, 5120, 2, 1}, {1, 100, 768, 4, 1}, {4, 4096, 1024, 4, 5}, {16, 1024, 1024, 4, 1}, {24, 1024, 1024, 2, 1}};
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
    std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
    return failures ? 1 : 0;
}
