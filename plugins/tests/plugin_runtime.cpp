// Drives one mq-deploy TensorRT plugin through the calls TensorRT makes into it, build and runtime, on a GPU but
// without TensorRT's library (only its headers): benchmarks/gpu/plugin_check.py loads this as a shared library
// (benchmarks/gpu/run_all.sh builds it when TRT_INCLUDE is set) and compares what the plugins' enqueue writes with the float64 references
// and with the kernels' own C API. The steps, in TensorRT's order:
//   build:   getCreators -> the creator of (name, version "1", namespace "mq_deploy"), as the ONNX parser finds it;
//            createPlugin(fields, kBUILD); getNbOutputs; getOutputDataTypes; supportsFormatCombination for every
//            position in turn; configurePlugin with the profile (min = opt = the shape, max = the given maximum; the
//            tensors' own dims -1, as TensorRT passes a network's dynamic dimensions, or optionally the shape itself);
//            getWorkspaceSize; onShapeChange and enqueue on this instance, which no context attached (the builder's
//            timing runs); getFieldsToSerialize (what the engine stores);
//   runtime: createPlugin(the serialized fields, kRUNTIME), as deserialization does; attachToContext (the instance an
//            execution context runs; optionally while another thread holds a CUDA graph capture in global mode, as a
//            server capturing one context while it creates the next: attaching must neither fail nor break that
//            capture); onShapeChange; enqueue into a workspace of exactly getWorkspaceSize bytes, its outputs equal to
//            the builder instance's bit for bit; optionally another context's instance destroyed while another thread
//            captures (that capture must survive it too);
//            optionally a second context's instance (attachToContext again) whose onShapeChange and first enqueue are
//            captured into a CUDA graph (global capture mode: an allocation or a synchronizing call fails it) and
//            replayed, its outputs equal to the eager ones bit for bit (the outputs are filled with different bytes
//            before each, so a byte that enqueue leaves unwritten fails this too); or, capture only, the first
//            instance's first onShapeChange / enqueue captured with no eager run before it (in a fresh process: the
//            first launch of the plugin's kernels happens under capture); or, instead of the runtime runs above, the
//            contexts of one engine in several threads at once (each attaches its instance and enqueues on its own
//            stream, inputs and outputs; in a fresh process the first launches of the kernels race).
// Errors come back as text: the plugins report theirs through the ILogger this library hands them (setLoggerFinder).
#include "NvInferRuntime.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace nvinfer1;

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" void setLoggerFinder(ILoggerFinder* finder);

namespace
{
class Logger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        std::lock_guard<std::mutex> const lock(mutex);
        if (severity <= Severity::kWARNING)
            last = msg;
    }
    std::string lastMessage()
    {
        std::lock_guard<std::mutex> const lock(mutex);
        return last;
    }
    void clear()
    {
        std::lock_guard<std::mutex> const lock(mutex);
        last.clear();
    }

private:
    std::mutex mutex;
    std::string last;
};

class Finder : public ILoggerFinder
{
public:
    ILogger* findLogger() override { return &logger; }
    Logger logger;
};

Finder gFinder;

struct Failure : std::runtime_error
{
    using std::runtime_error::runtime_error;
};

void require(bool ok, std::string const& what)
{
    if (!ok)
    {
        std::string const last = gFinder.logger.lastMessage();
        throw Failure(what + (last.empty() ? "" : " (plugin: " + last + ")"));
    }
}

void cuda(cudaError_t e, char const* what)
{
    if (e != cudaSuccess)
        throw Failure(std::string(what) + ": " + cudaGetErrorString(e));
}

IPluginCreatorV3One* findCreator(char const* name)
{
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    for (int32_t i = 0; i < n; ++i)
    {
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(c->getPluginName(), name) == 0 && std::strcmp(c->getPluginVersion(), "1") == 0
            && std::strcmp(c->getPluginNamespace(), "mq_deploy") == 0)
            return c;
    }
    throw Failure(std::string("no creator ") + name + " version 1 in namespace mq_deploy from getCreators");
}

Dims dims(int32_t rank, int64_t const* d)
{
    Dims out{};
    require(rank >= 0 && rank <= Dims::MAX_DIMS, "bad rank");
    out.nbDims = rank;
    for (int32_t i = 0; i < rank; ++i)
        out.d[i] = d[i];
    return out;
}

//! A deep copy of a PluginFieldCollection (getFieldsToSerialize's storage belongs to the plugin).
struct Fields
{
    explicit Fields(PluginFieldCollection const* fc)
    {
        require(fc != nullptr, "getFieldsToSerialize returned null");
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            size_t const bytes = f.type == PluginFieldType::kINT32 || f.type == PluginFieldType::kFLOAT32 ? 4 : 8;
            names.emplace_back(f.name);
            data.emplace_back(static_cast<char const*>(f.data), static_cast<char const*>(f.data) + bytes * f.length);
            types.push_back(f.type);
            lengths.push_back(f.length);
        }
        for (size_t i = 0; i < names.size(); ++i)
            fields.emplace_back(names[i].c_str(), data[i].data(), types[i], lengths[i]);
        fc_ = PluginFieldCollection{static_cast<int32_t>(fields.size()), fields.data()};
    }
    std::vector<std::string> names;
    std::vector<std::vector<char>> data;
    std::vector<PluginFieldType> types;
    std::vector<int32_t> lengths;
    std::vector<PluginField> fields;
    PluginFieldCollection fc_{};
};

struct DeviceBuffer
{
    explicit DeviceBuffer(size_t bytes)
    {
        if (bytes > 0)
            cuda(cudaMalloc(&p, bytes), "cudaMalloc");
    }
    ~DeviceBuffer()
    {
        if (p != nullptr)
            cudaFree(p);
    }
    void* p{nullptr};
};

size_t elementBytes(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return 4;
    case DataType::kHALF: return 2;
    case DataType::kINT8: return 1;
    default: throw Failure("unexpected data type");
    }
}

int64_t volume(Dims const& d)
{
    int64_t v = 1;
    for (int32_t i = 0; i < d.nbDims; ++i)
        v *= d.d[i];
    return v;
}

//! Runs `body` while another thread holds a CUDA graph capture (global mode, one memset captured) on a blocking stream,
//! which any call on the legacy stream is implicitly ordered with; throws if that capture did not survive `body`.
template <typename F>
auto whileAnotherThreadCaptures(char const* what, F&& body) -> decltype(body())
{
    DeviceBuffer scratch(256);
    std::promise<void> begun, done;
    std::future<void> begunF = begun.get_future();
    std::shared_future<void> doneF = done.get_future().share();
    cudaError_t captureRc = cudaSuccess;
    std::thread capturer([&, doneF] {
        cudaStream_t s{};
        cudaError_t e = cudaStreamCreate(&s);
        bool began = false;
        if (e == cudaSuccess)
            began = (e = cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal)) == cudaSuccess;
        if (e == cudaSuccess)
            e = cudaMemsetAsync(scratch.p, 0, 256, s);
        begun.set_value();
        doneF.wait();
        if (began)
        {
            cudaGraph_t g{};
            cudaError_t const endRc = cudaStreamEndCapture(s, &g);
            if (endRc == cudaSuccess)
                cudaGraphDestroy(g);
            if (e == cudaSuccess)
                e = endRc;
        }
        if (s != nullptr)
            cudaStreamDestroy(s);
        captureRc = e;
    });
    begunF.wait();
    struct Join
    {
        std::promise<void>& done;
        std::thread& t;
        ~Join()
        {
            done.set_value();
            t.join();
        }
    };
    auto result = [&] {
        Join const join{done, capturer};
        return body();
    }();
    cuda(captureRc, (std::string("another thread's CUDA graph capture (global mode) during ") + what).c_str());
    return result;
}
} // namespace

extern "C"
{
//! Runs plugin `name` once as TensorRT would (see the top of this file).
//! fields: names, kinds (0 int32, 1 float32), values; tensors: TensorRT DataType values, ranks, dims (8 a tensor);
//! inMaxDims: the profile's largest input shapes (8 a tensor; null: the shapes themselves); options: bit 0
//! strongly typed (the output types must be getOutputDataTypes'; else any the plugin accepts in
//! supportsFormatCombination), bit 1 the build phase's tensor descriptions carry the shapes themselves instead of -1
//! in every dimension, bit 2 the first attachToContext, and the destruction of another instance, run while another
//! thread captures; graphReplays: CUDA graph replays checked against the eager outputs (0: none; negative: no eager
//! run, the first enqueue is captured and replayed -graphReplays times, its outputs left for the caller to check);
//! threads > 1: instead of both, `threads` contexts' instances in as many threads at once, each enqueuing three times
//! on its own inputs into its own outputs (inPtrs / outPtrs then hold threads × nbIn / nbOut pointers, thread by
//! thread, all of the same shapes and types) and workspace, the outputs left for the caller to check (no
//! builder-instance run first, so in a fresh process the first launches of the plugin's kernels race). wsBytes
//! receives getWorkspaceSize. Returns 0, or 1 with the reason in err.
__attribute__((visibility("default"))) int mqpr_run(char const* name, int32_t nbFields, char const* const* fieldNames,
    int32_t const* fieldKinds, double const* fieldValues, int32_t nbIn, int32_t const* inTypes, int32_t const* inRanks,
    int64_t const* inDims, int64_t const* inMaxDims, void const* const* inPtrs, int32_t nbOut, int32_t const* outTypes,
    int32_t const* outRanks, int64_t const* outDims, void* const* outPtrs, int32_t options, int32_t graphReplays,
    int32_t threads, uint64_t* wsBytes, char* err, int32_t errLen)
{
    static bool const finderSet = (setLoggerFinder(&gFinder), true);
    (void) finderSet;
    gFinder.logger.clear();
    std::unique_ptr<IPluginV3> built, deserialized, attached;
    bool const strongly = (options & 1) != 0, concreteBuildDims = (options & 2) != 0, attachDuringCapture = (options & 4) != 0;
    try
    {
        IPluginCreatorV3One* creator = findCreator(name);
        // the fields as the ONNX parser forwards a node's attributes: INT -> kINT32, FLOAT -> kFLOAT32
        std::vector<int32_t> ints(nbFields);
        std::vector<float> floats(nbFields);
        std::vector<PluginField> f;
        for (int32_t i = 0; i < nbFields; ++i)
        {
            ints[i] = static_cast<int32_t>(fieldValues[i]);
            floats[i] = static_cast<float>(fieldValues[i]);
            f.emplace_back(fieldNames[i], fieldKinds[i] == 0 ? static_cast<void const*>(&ints[i]) : &floats[i],
                fieldKinds[i] == 0 ? PluginFieldType::kINT32 : PluginFieldType::kFLOAT32, 1);
        }
        PluginFieldCollection const fc{nbFields, f.data()};

        // ---- build phase
        built.reset(creator->createPlugin(name, &fc, TensorRTPhase::kBUILD));
        require(built != nullptr, "createPlugin (build phase) failed");
        auto* core = static_cast<IPluginV3OneCore*>(built->getCapabilityInterface(PluginCapabilityType::kCORE));
        auto* build = static_cast<IPluginV3OneBuild*>(built->getCapabilityInterface(PluginCapabilityType::kBUILD));
        require(core != nullptr && build != nullptr, "core / build capability missing");
        require(std::strcmp(core->getPluginName(), name) == 0 && std::strcmp(core->getPluginNamespace(), "mq_deploy") == 0,
            "plugin name / namespace differ from the creator's");
        require(build->getNbOutputs() == nbOut, "getNbOutputs is " + std::to_string(build->getNbOutputs()));
        std::vector<DataType> inT(nbIn), outT(nbOut), want(nbOut);
        for (int32_t i = 0; i < nbIn; ++i)
            inT[i] = static_cast<DataType>(inTypes[i]);
        for (int32_t i = 0; i < nbOut; ++i)
            want[i] = static_cast<DataType>(outTypes[i]);
        require(build->getOutputDataTypes(outT.data(), nbOut, inT.data(), nbIn) == 0, "getOutputDataTypes failed");
        for (int32_t i = 0; i < nbOut && strongly; ++i)
            require(outT[i] == want[i], "getOutputDataTypes gives output " + std::to_string(i) + " type "
                    + std::to_string(static_cast<int32_t>(outT[i])) + ", the caller expects "
                    + std::to_string(static_cast<int32_t>(want[i])));

        std::vector<DynamicPluginTensorDesc> dyn(nbIn + nbOut);
        std::vector<PluginTensorDesc> desc(nbIn + nbOut);
        for (int32_t i = 0; i < nbIn + nbOut; ++i)
        {
            bool const in = i < nbIn;
            int32_t const j = in ? i : i - nbIn;
            PluginTensorDesc& d = desc[i];
            d.dims = in ? dims(inRanks[j], inDims + 8 * j) : dims(outRanks[j], outDims + 8 * j);
            d.type = in ? inT[j] : want[j];
            d.format = TensorFormat::kLINEAR;
            d.scale = -1.F; // what TensorRT sets where it has no int8 scale (explicit quantization)
            dyn[i].desc = d;
            dyn[i].min = dyn[i].opt = dyn[i].max = d.dims;
            if (in && inMaxDims != nullptr)
                dyn[i].max = dims(inRanks[j], inMaxDims + 8 * j);
            for (int32_t k = 0; k < d.dims.nbDims && !concreteBuildDims; ++k)
                dyn[i].desc.dims.d[k] = -1; // a dynamic dimension; its range is min / max
        }
        for (int32_t pos = 0; pos < nbIn + nbOut; ++pos)
            require(build->supportsFormatCombination(pos, dyn.data(), nbIn, nbOut),
                "supportsFormatCombination refuses position " + std::to_string(pos));
        require(build->configurePlugin(dyn.data(), nbIn, dyn.data() + nbIn, nbOut) == 0, "configurePlugin failed");
        size_t const ws = build->getWorkspaceSize(dyn.data(), nbIn, dyn.data() + nbIn, nbOut);
        *wsBytes = ws;
        auto* builtRt = static_cast<IPluginV3OneRuntime*>(built->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        require(builtRt != nullptr, "runtime capability missing");

        DeviceBuffer workspace(ws);
        cudaStream_t stream{};
        cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
        std::unique_ptr<CUstream_st, void (*)(cudaStream_t)> streamGuard(stream, [](cudaStream_t s) { cudaStreamDestroy(s); });
        std::vector<size_t> outBytes(nbOut);
        for (int32_t j = 0; j < nbOut; ++j)
            outBytes[j] = volume(desc[nbIn + j].dims) * elementBytes(want[j]);
        // outputs are filled with 0x7F before the eager enqueue and 0xFF before each replay, so a byte enqueue does not
        // write differs between the two; the workspace starts as 0xFF too (TensorRT does not clear it)
        auto const fill = [&](int value) {
            for (int32_t j = 0; j < nbOut; ++j)
                cuda(cudaMemsetAsync(outPtrs[j], value, outBytes[j], stream), "cudaMemset");
            if (ws > 0)
                cuda(cudaMemsetAsync(workspace.p, 0xFF, ws, stream), "cudaMemset");
        };
        auto const copyOutputs = [&] {
            std::vector<std::vector<char>> host(nbOut);
            for (int32_t j = 0; j < nbOut; ++j)
            {
                host[j].resize(outBytes[j]);
                cuda(cudaMemcpy(host[j].data(), outPtrs[j], outBytes[j], cudaMemcpyDeviceToHost), "copy of the outputs");
            }
            return host;
        };
        bool const captureOnly = graphReplays < 0;
        int32_t const replays = captureOnly ? -graphReplays : graphReplays;
        std::vector<std::vector<char>> fromBuilder, eager;
        if (!captureOnly && threads <= 1) // the builder's timing runs: this instance, no context attached, outputs 0x3F
        {
            require(builtRt->onShapeChange(desc.data(), nbIn, desc.data() + nbIn, nbOut) == 0, "onShapeChange (builder's instance) failed");
            fill(0x3F);
            require(builtRt->enqueue(desc.data(), desc.data() + nbIn, inPtrs, outPtrs, workspace.p, stream) == 0,
                "enqueue (builder's instance) failed");
            cuda(cudaStreamSynchronize(stream), "enqueue's kernels (builder's instance)");
            fromBuilder = copyOutputs();
        }
        Fields const stored(builtRt->getFieldsToSerialize());

        // ---- runtime phase: deserialized from the stored fields, then attached to an execution context
        deserialized.reset(creator->createPlugin(name, &stored.fc_, TensorRTPhase::kRUNTIME));
        require(deserialized != nullptr, "createPlugin (runtime phase, from the serialized fields) failed");
        auto* rt0 = static_cast<IPluginV3OneRuntime*>(deserialized->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        require(rt0 != nullptr, "runtime capability missing after deserialization");
        if (threads > 1)
        {
            // the contexts of one engine in `threads` threads at once (a server's instances of one model): each
            // attaches its own instance, then enqueues three times on a stream of its own, on its own inputs into its
            // own outputs and workspace (so a buffer two contexts share shows as another thread's values)
            std::vector<std::string> errors(threads);
            std::promise<void> go;
            std::shared_future<void> goF = go.get_future().share();
            std::vector<std::thread> pool;
            pool.reserve(threads);
            struct Release // on every path: the threads let go, then joined
            {
                std::promise<void>& go;
                std::vector<std::thread>& pool;
                bool released{false};
                void now()
                {
                    if (!released)
                        go.set_value();
                    released = true;
                    for (auto& th : pool)
                        if (th.joinable())
                            th.join();
                }
                ~Release() { now(); }
            } release{go, pool};
            for (int32_t t = 0; t < threads; ++t)
                pool.emplace_back([&, t, goF] {
                    try
                    {
                        void const* const* ins = inPtrs + static_cast<size_t>(t) * nbIn;
                        void* const* outs = outPtrs + static_cast<size_t>(t) * nbOut;
                        goF.wait();
                        std::unique_ptr<IPluginV3> mine(rt0->attachToContext(nullptr));
                        require(mine != nullptr, "attachToContext failed");
                        auto* r = static_cast<IPluginV3OneRuntime*>(mine->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
                        require(r != nullptr, "runtime capability missing");
                        cudaStream_t s{};
                        cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
                        std::unique_ptr<CUstream_st, void (*)(cudaStream_t)> sGuard(s, [](cudaStream_t x) { cudaStreamDestroy(x); });
                        DeviceBuffer mineWs(ws);
                        for (int32_t j = 0; j < nbOut; ++j)
                            cuda(cudaMemsetAsync(outs[j], 0x7F, outBytes[j], s), "cudaMemset");
                        if (ws > 0)
                            cuda(cudaMemsetAsync(mineWs.p, 0xFF, ws, s), "cudaMemset");
                        for (int32_t k = 0; k < 3; ++k)
                        {
                            require(r->onShapeChange(desc.data(), nbIn, desc.data() + nbIn, nbOut) == 0, "onShapeChange failed");
                            require(r->enqueue(desc.data(), desc.data() + nbIn, ins, outs, mineWs.p, s) == 0, "enqueue failed");
                        }
                        cuda(cudaStreamSynchronize(s), "enqueue's kernels");
                    }
                    catch (std::exception const& e)
                    {
                        errors[t] = e.what();
                    }
                });
            release.now();
            for (int32_t t = 0; t < threads; ++t)
                if (!errors[t].empty()) // the thread's own message carries the plugin's
                    throw Failure("thread " + std::to_string(t) + ": " + errors[t]);
            return 0;
        }
        if (attachDuringCapture)
            attached = whileAnotherThreadCaptures(
                "attachToContext", [&] { return std::unique_ptr<IPluginV3>(rt0->attachToContext(nullptr)); });
        else
            attached.reset(rt0->attachToContext(nullptr));
        require(attached != nullptr, "attachToContext failed");
        auto* rt = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));

        if (!captureOnly)
        {
            require(rt->onShapeChange(desc.data(), nbIn, desc.data() + nbIn, nbOut) == 0, "onShapeChange failed");
            fill(0x7F);
            require(rt->enqueue(desc.data(), desc.data() + nbIn, inPtrs, outPtrs, workspace.p, stream) == 0, "enqueue failed");
            cuda(cudaStreamSynchronize(stream), "enqueue's kernels");
            eager = copyOutputs();
            for (int32_t j = 0; j < nbOut; ++j)
                require(eager[j] == fromBuilder[j], "output " + std::to_string(j)
                        + " of the context's instance differs from the builder's instance (no context attached)");
        }
        if (attachDuringCapture) // a context destroyed while another thread captures: its instance with it
        {
            std::unique_ptr<IPluginV3> doomed(rt0->attachToContext(nullptr));
            require(doomed != nullptr, "attachToContext (a context to destroy) failed");
            whileAnotherThreadCaptures("the destruction of a context's instance", [&] {
                doomed.reset();
                return 0;
            });
        }
        if (replays > 0)
        {
            // a context's instance captured from its first onShapeChange / enqueue on (as Torch-TensorRT captures its
            // first run), in global mode, so any allocation or synchronizing call in them breaks the capture: a second
            // context's instance after the eager run, or with captureOnly the first one, whose enqueue then holds the
            // process's first launch of the plugin's kernels
            std::unique_ptr<IPluginV3> second(captureOnly ? nullptr : rt0->attachToContext(nullptr));
            require(captureOnly || second != nullptr, "attachToContext (second context) failed");
            auto* rtc = captureOnly ? rt
                                    : static_cast<IPluginV3OneRuntime*>(second->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            cudaGraph_t graph{};
            cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
            int32_t rc = rtc->onShapeChange(desc.data(), nbIn, desc.data() + nbIn, nbOut);
            if (rc == 0)
                rc = rtc->enqueue(desc.data(), desc.data() + nbIn, inPtrs, outPtrs, workspace.p, stream);
            cudaError_t const endRc = cudaStreamEndCapture(stream, &graph);
            if (rc != 0 && endRc == cudaSuccess)
                cudaGraphDestroy(graph);
            require(rc == 0, "onShapeChange / the first enqueue failed under CUDA graph capture");
            cuda(endRc, "cudaStreamEndCapture");
            cudaGraphExec_t exec{};
            cudaError_t const instRc = cudaGraphInstantiate(&exec, graph, 0);
            cudaGraphDestroy(graph);
            cuda(instRc, "cudaGraphInstantiate");
            std::unique_ptr<CUgraphExec_st, void (*)(cudaGraphExec_t)> execGuard(exec, [](cudaGraphExec_t e) { cudaGraphExecDestroy(e); });
            for (int32_t r = 0; r < replays; ++r)
            {
                fill(0xFF); // 0xFF: NaN in fp32 and fp16
                cuda(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
            }
            cuda(cudaStreamSynchronize(stream), "the replayed graph");
            for (int32_t j = 0; j < nbOut && !captureOnly; ++j)
            {
                std::vector<char> replay(outBytes[j]);
                cuda(cudaMemcpy(replay.data(), outPtrs[j], replay.size(), cudaMemcpyDeviceToHost), "copy of the outputs");
                require(replay == eager[j], "CUDA graph replay: output " + std::to_string(j) + " differs from the eager run");
            }
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        std::snprintf(err, static_cast<size_t>(errLen), "%s", e.what());
    }
    return 1;
}
}
