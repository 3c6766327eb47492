// The scan's automatic plan on Jetson-sized GPUs, emulated on a big one: each run is confined to 8 or 16 SMs by a
// CUDA green context (Orin NX / Nano have 8 SMs, AGX Orin 16; Hopper partitions come in multiples of 8), the plan is
// told that SM count (SelectiveScanParams::numSMs, what the device query gives on a Jetson), and its choice is
// timed against every (threads a channel, chunks) it could have made. The plan's chunk rule and its 2-or-4-threads
// choice were fitted on an H200 (132 SMs); this says whether they carry over to the SM counts users deploy on.
//
// What it does not emulate: memory bandwidth (a 16-SM partition still draws on the big GPU's HBM; an AGX Orin has
// ~205 GB/s, ~10 bytes a clock an SM, against the scan's ~6 at its MUFU floor in fp16, so the scan stays
// compute-bound there too), clocks (times scale, rankings should not), and PDL (Orin, sm_87, has none: build
// selectiveScanKernel.cu with -DMQ_SCAN_PDL=0 for the emulation; edge_sms.sh does).
//
//   edge_sms [SMS...]   e.g. `edge_sms 8 16 0` (0 = the whole GPU, its primary context)
// Env: EDGE_SHAPES "BxLxD ..." (default below), EDGE_ITERS (timed launches a configuration, default 9), EDGE_TYPES
// ("fp16", "int8" for int8 → fp32, or both: the default).
// Prints one line a (SM count, shape, type) to stderr as it goes, a JSON array of every timing to stdout.
#include "selectiveScanKernel.h"

#ifndef MQ_SCAN_PDL
#define MQ_SCAN_PDL 1 // as selectiveScanKernel.cu (the build of it linked in must agree: edge_sms.sh passes the same -D)
#endif

#include <cuda.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace
{

void die(char const* what, long long code)
{
    std::fprintf(stderr, "edge_sms: %s failed (%lld)\n", what, code);
    std::exit(1);
}
#define CU(x)                                                                                                          \
    do                                                                                                                 \
    {                                                                                                                  \
        CUresult const r_ = (x);                                                                                       \
        if (r_ != CUDA_SUCCESS)                                                                                        \
            die(#x, r_);                                                                                               \
    } while (0)
#define RT(x)                                                                                                          \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const r_ = (x);                                                                                    \
        if (r_ != cudaSuccess)                                                                                         \
            die(#x, r_);                                                                                               \
    } while (0)

struct Shape
{
    int b, l, d;
};

//! A context confined to `want` SMs (0: the device's primary context, every SM) and a stream in it; use() makes it
//! current (what the runtime calls below then run in).
struct Partition
{
    int sms = 0;
    CUgreenCtx green = nullptr;
    CUcontext ctx = nullptr;
    cudaStream_t stream = nullptr;

    void use() const { CU(cuCtxSetCurrent(ctx)); }

    Partition(CUdevice dev, int want)
    {
        CUdevResource all{};
        CU(cuDeviceGetDevResource(dev, &all, CU_DEV_RESOURCE_TYPE_SM));
        if (want <= 0)
        {
            CU(cuDevicePrimaryCtxRetain(&ctx, dev));
            CU(cuCtxSetCurrent(ctx));
            RT(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
            sms = static_cast<int>(all.sm.smCount);
            return;
        }
        CUdevResource part{}, rest{};
        unsigned groups = 1;
        CU(cuDevSmResourceSplitByCount(&part, &groups, &all, &rest, 0, static_cast<unsigned>(want)));
        if (groups != 1)
            die("cuDevSmResourceSplitByCount: no partition", groups);
        CUdevResourceDesc desc{};
        CU(cuDevResourceGenerateDesc(&desc, &part, 1));
        CU(cuGreenCtxCreate(&green, desc, dev, CU_GREEN_CTX_DEFAULT_STREAM));
        CU(cuCtxFromGreenCtx(&ctx, green));
        CU(cuCtxSetCurrent(ctx));
        CUstream s = nullptr;
        CU(cuGreenCtxStreamCreate(&s, green, CU_STREAM_NON_BLOCKING, 0));
        stream = reinterpret_cast<cudaStream_t>(s);
        sms = static_cast<int>(part.sm.smCount);
    }
};

uint64_t gRng = 0x9E3779B97F4A7C15ull;
float normal() // Box-Muller on a 64-bit LCG: inputs like benchmarks/gpu/harness.py's make_scan_inputs
{
    auto uni = [] {
        gRng = gRng * 6364136223846793005ull + 1442695040888963407ull;
        return (static_cast<double>(gRng >> 11) + 0.5) / 9007199254740992.0;
    };
    double const a = uni(), b = uni();
    return static_cast<float>(std::sqrt(-2.0 * std::log(a)) * std::cos(6.283185307179586 * b));
}

template <typename T>
T* upload(std::vector<T> const& h)
{
    T* d = nullptr;
    RT(cudaMalloc(&d, h.size() * sizeof(T)));
    RT(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

//! Host inputs for both timed type pairs, fp16 → fp16 and int8 → fp32 (the quantized graphs' scan), like
//! benchmarks/gpu/harness.py's make_scan_inputs: generated once for the largest B·L, B·L·D and D of all shapes and
//! uploaded once into each partition's context; every shape reads a prefix of them.
struct HostInputs
{
    std::vector<__half> u16, d16, b16, c16, z16;
    std::vector<int8_t> u8, d8, b8, c8;
    std::vector<float> z32, A, Dskip, bias;
    size_t nd = 0, state = 0;

    explicit HostInputs(std::vector<Shape> const& shapes)
    {
        size_t tok = 0, dim = 0;
        for (Shape const& s : shapes)
        {
            tok = std::max(tok, static_cast<size_t>(s.b) * s.l), dim = std::max(dim, static_cast<size_t>(s.d));
            nd = std::max(nd, static_cast<size_t>(s.b) * s.l * s.d), state = std::max(state, static_cast<size_t>(s.b) * s.d * 16);
        }
        size_t const nn = tok * 16;
        auto halves = [](size_t n, float mul, float add) {
            std::vector<__half> h(n);
            for (auto& v : h)
                v = __float2half(normal() * mul + add);
            return h;
        };
        auto int8s = [](std::vector<__half> const& from) { // the fp16 values at a scale of 1/40 (|q| ≤ 127)
            std::vector<int8_t> h(from.size());
            for (size_t i = 0; i < h.size(); ++i)
                h[i] = static_cast<int8_t>(std::max(-127.f, std::min(127.f, std::nearbyint(__half2float(from[i]) * 40.f))));
            return h;
        };
        auto floats = [](size_t n, float mul) {
            std::vector<float> h(n);
            for (auto& v : h)
                v = normal() * mul;
            return h;
        };
        u16 = halves(nd, 1.f, 0.f), d16 = halves(nd, 0.5f, -1.f), b16 = halves(nn, 1.f, 0.f), c16 = halves(nn, 1.f, 0.f);
        z16 = halves(nd, 1.f, 0.f);
        u8 = int8s(u16), b8 = int8s(b16), c8 = int8s(c16);
        d8.resize(nd);
        for (size_t i = 0; i < nd; ++i) // Δ (mean -1, sd 0.5) at a scale of 1/40
            d8[i] = static_cast<int8_t>(std::max(-127.f, std::min(127.f, std::nearbyint(__half2float(d16[i]) * 40.f))));
        z32.resize(nd);
        for (size_t i = 0; i < nd; ++i)
            z32[i] = __half2float(z16[i]);
        A.resize(dim * 16);
        for (auto& v : A) // A = -exp(U(0, log 16))
        {
            gRng = gRng * 6364136223846793005ull + 1442695040888963407ull;
            v = -std::exp(static_cast<float>(gRng >> 40) / 16777216.f * std::log(16.f));
        }
        Dskip = floats(dim, 1.f), bias = floats(dim, 0.1f);
    }
};

//! The inputs on the current context's device, and the outputs.
struct Inputs
{
    std::vector<void*> owned;
    void *u16, *d16, *b16, *c16, *z16, *y16, *u8, *d8, *b8, *c8, *z32, *y32;
    float *A, *Dskip, *bias, *state;

    template <typename T>
    void* put(std::vector<T> const& h)
    {
        void* d = upload(h);
        owned.push_back(d);
        return d;
    }
    void* scratch(size_t bytes)
    {
        void* d = nullptr;
        RT(cudaMalloc(&d, bytes));
        owned.push_back(d);
        return d;
    }
    explicit Inputs(HostInputs const& h)
    {
        u16 = put(h.u16), d16 = put(h.d16), b16 = put(h.b16), c16 = put(h.c16), z16 = put(h.z16);
        u8 = put(h.u8), d8 = put(h.d8), b8 = put(h.b8), c8 = put(h.c8), z32 = put(h.z32);
        A = static_cast<float*>(put(h.A)), Dskip = static_cast<float*>(put(h.Dskip)), bias = static_cast<float*>(put(h.bias));
        y16 = scratch(h.nd * 2), y32 = scratch(h.nd * 4), state = static_cast<float*>(scratch(h.state * 4));
    }
    ~Inputs()
    {
        for (void* p : owned)
            cudaFree(p);
    }
    Inputs(Inputs const&) = delete;
    Inputs& operator=(Inputs const&) = delete;
};

mq::SelectiveScanParams params(Shape const& s, Inputs const& in, bool int8, int sms)
{
    mq::SelectiveScanParams p;
    p.batch = s.b, p.seqLen = s.l, p.dim = s.d, p.dState = 16, p.deltaSoftplus = true, p.numSMs = sms;
    p.A = in.A, p.Dskip = in.Dskip, p.deltaBias = in.bias, p.lastState = in.state;
    if (int8)
    {
        p.inType = mq::DType::kINT8, p.outType = mq::DType::kFLOAT;
        p.uScale = 1.f / 40, p.deltaScale = 1.f / 40, p.bScale = 1.f / 40, p.cScale = 1.f / 40;
        p.u = in.u8, p.delta = in.d8, p.Bm = in.b8, p.Cm = in.c8, p.z = in.z32, p.y = in.y32;
    }
    else
    {
        p.inType = p.outType = mq::DType::kHALF;
        p.u = in.u16, p.delta = in.d16, p.Bm = in.b16, p.Cm = in.c16, p.z = in.z16, p.y = in.y16;
    }
    return p;
}

//! Median ms of `iters` launches (each timed alone by events, after 2 untimed ones).
double timeScan(mq::SelectiveScanParams const& p, cudaStream_t stream, int iters)
{
    size_t const ws = mq::selectiveScanWorkspaceSize(p);
    void* w = nullptr;
    if (ws > 0)
        RT(cudaMalloc(&w, ws));
    cudaEvent_t e0, e1;
    RT(cudaEventCreate(&e0));
    RT(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int i = 0; i < iters + 2; ++i)
    {
        RT(cudaEventRecord(e0, stream));
        RT(mq::launchSelectiveScan(p, w, ws, stream));
        RT(cudaEventRecord(e1, stream));
        RT(cudaEventSynchronize(e1));
        float t = 0.f;
        RT(cudaEventElapsedTime(&t, e0, e1));
        if (i >= 2)
            ms.push_back(t);
    }
    RT(cudaEventDestroy(e0));
    RT(cudaEventDestroy(e1));
    if (w)
        RT(cudaFree(w));
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}

} // namespace

int main(int argc, char** argv)
{
    std::vector<int> want;
    for (int i = 1; i < argc; ++i)
        want.push_back(std::atoi(argv[i]));
    if (want.empty())
        want = {8, 16, 0};
    std::vector<Shape> shapes;
    std::istringstream ss(std::getenv("EDGE_SHAPES") ? std::getenv("EDGE_SHAPES")
            : "1x256x1536 1x1024x1536 1x4096x1536 1x256x2560 1x1024x2560 1x4096x2560 1x1024x4096 1x4096x4096 "
              "4x256x1536 4x1024x1536 4x4096x1536 4x1024x2560 4x4096x2560");
    for (std::string t; ss >> t;)
    {
        Shape s{};
        if (std::sscanf(t.c_str(), "%dx%dx%d", &s.b, &s.l, &s.d) != 3 || s.b < 1 || s.l < 1 || s.d < 1)
            die("EDGE_SHAPES entry BxLxD", 0);
        shapes.push_back(s);
    }
    int const iters = std::getenv("EDGE_ITERS") ? std::max(1, std::atoi(std::getenv("EDGE_ITERS"))) : 9;
    std::string const types = std::getenv("EDGE_TYPES") ? std::getenv("EDGE_TYPES") : "fp16 int8";
    bool const doType[2] = {types.find("fp16") != std::string::npos, types.find("int8") != std::string::npos};
    int const chunkChoices[] = {1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 32};

    CU(cuInit(0));
    CUdevice dev = 0;
    CU(cuDeviceGet(&dev, 0));
    std::vector<Partition> parts;
    for (int w : want)
        parts.emplace_back(dev, w);
    std::printf("[\n");
    bool first = true;
    HostInputs const host(shapes);
    for (Partition const& part : parts)
    {
        part.use();
        Inputs const in(host);
        for (Shape const& s : shapes)
        {
            for (int int8 = 0; int8 < 2; ++int8)
            {
                if (!doType[int8])
                    continue;
                mq::SelectiveScanParams const base = params(s, in, int8 != 0, part.sms);
                mq::SelectiveScanPlan const autoPlan = mq::selectiveScanPlan(base);
                timeScan(base, part.stream, iters); // warm-up: timed first, the auto plan measured up to 6 % slow
                double const tAuto = timeScan(base, part.stream, iters);
                auto emit = [&](char const* kind, int split, int chunks, double ms) {
                    std::printf("%s{\"sms\": %d, \"B\": %d, \"L\": %d, \"D\": %d, \"type\": \"%s\", \"config\": \"%s\", "
                                "\"threads\": %d, \"chunks\": %d, \"pdl\": %d, \"ms\": %.5f}",
                        first ? "  " : ",\n  ", part.sms, s.b, s.l, s.d, int8 ? "int8->fp32" : "fp16", kind, split,
                        chunks, MQ_SCAN_PDL, ms);
                    first = false;
                };
                emit("auto", autoPlan.split, autoPlan.chunks, tAuto);
                double best = tAuto;
                int bestSplit = autoPlan.split, bestChunks = autoPlan.chunks;
                for (int split : {2, 4})
                {
                    int lastChunks = -1;
                    for (int c : chunkChoices)
                    {
                        if (c > std::max(1, s.l / 128))
                            break;
                        mq::SelectiveScanParams p = base;
                        p.schedule = 1, p.segLanes = split, p.chunks = c;
                        int const real = mq::selectiveScanPlan(p).chunks;
                        if (real == lastChunks)
                            continue; // rounding to whole tiles gave the same geometry
                        lastChunks = real;
                        double const t = timeScan(p, part.stream, iters);
                        emit("forced", split, real, t);
                        if (t < best)
                            best = t, bestSplit = split, bestChunks = real;
                    }
                }
                std::fprintf(stderr, "PDL %d SMs %3d B%d L%-5d D%-5d %-10s auto T%d C%-2d %.4f ms  best T%d C%-2d %.4f ms  auto/best %.3f\n", MQ_SCAN_PDL,
                    part.sms, s.b, s.l, s.d, int8 ? "int8->fp32" : "fp16", autoPlan.split, autoPlan.chunks, tAuto,
                    bestSplit, bestChunks, best, tAuto / best);
            }
            RT(cudaStreamSynchronize(part.stream));
        }
    }
    std::printf("\n]\n");
    return 0;
}
