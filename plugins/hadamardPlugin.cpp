// Hadamard IPluginV3; see hadamardPlugin.h.
#include "hadamardPlugin.h"

#include <map>
#include <memory>
#include <mutex>
#include <utility>

using namespace nvinfer1;

namespace mq
{
namespace plugin
{
namespace
{
constexpr char const* kNAME = "Hadamard";
} // namespace

Attrs hadamardAttrs()
{
    return Attrs({{"n", PluginFieldType::kINT32, 0}, {"out_scale", PluginFieldType::kFLOAT32, 0.0}});
}

HadamardPlugin::HadamardPlugin(Attrs attrs)
    : mAttrs(std::move(attrs))
{
    int32_t const n = mAttrs.getInt("n");
    int32_t k = 0;
    require(n > 0 && hadamardSplit(n, mM, k), "Hadamard: n = " + std::to_string(n) + " is not m*2^k with a known base matrix");
    require(hadamardSharedBytes(n, mM) <= kHadamardMaxSharedBytes, "Hadamard: n = " + std::to_string(n) + " is too large for one block");
    require(mAttrs.getFloat("out_scale") >= 0.f, "Hadamard: out_scale must be >= 0");
    mBase = hadamardBaseMatrix(mM);
}

namespace
{
//! B_m on the current device, shared by every instance of the process: uploaded by the first instance of order m on
//! that device and never freed, so that creating and destroying execution contexts allocates and frees no device
//! memory after the first. Another thread may be capturing a CUDA graph in global mode meanwhile (a server capturing
//! one context while it creates or destroys the next): there a cudaMalloc or cudaFree in this thread's default mode
//! breaks that capture, and so does a copy on the legacy stream (it is implicitly ordered with every blocking stream).
//! So this runs in relaxed capture mode and copies on a non-blocking stream of its own, waiting for it (a copy from
//! pageable memory may return before the data has landed, and the kernels' stream is not ordered after this one). A
//! stored copy is read back and compared with B_m before it is handed out again (a few KB): a CUDA context torn down
//! by cudaDeviceReset and made anew would leave a stale pointer.
float const* sharedBaseMatrix(int32_t m, std::vector<float> const& base)
{
    static std::mutex mutex;
    static std::map<std::pair<int, int32_t>, float*> stored;
    struct Relaxed // this thread's capture mode relaxed and a private stream, both undone on every path
    {
        cudaStreamCaptureMode mode{cudaStreamCaptureModeRelaxed};
        cudaStream_t stream{nullptr};
        Relaxed()
        {
            if (cudaThreadExchangeStreamCaptureMode(&mode) != cudaSuccess)
                throw std::runtime_error("cudaThreadExchangeStreamCaptureMode failed");
            if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess)
            {
                cudaThreadExchangeStreamCaptureMode(&mode);
                throw std::runtime_error("creating a stream for the base matrix's copy failed");
            }
        }
        ~Relaxed()
        {
            cudaStreamDestroy(stream);
            cudaThreadExchangeStreamCaptureMode(&mode); // the caller's mode back
        }
    } const relaxed;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess)
        throw std::runtime_error("cudaGetDevice failed");
    size_t const bytes = base.size() * sizeof(float);
    std::lock_guard<std::mutex> const lock(mutex);
    auto const key = std::make_pair(dev, m);
    auto const it = stored.find(key);
    if (it != stored.end())
    {
        std::vector<float> back(base.size());
        if (cudaMemcpyAsync(back.data(), it->second, bytes, cudaMemcpyDeviceToHost, relaxed.stream) == cudaSuccess
            && cudaStreamSynchronize(relaxed.stream) == cudaSuccess && back == base)
            return it->second;
        cudaGetLastError(); // a stale pointer's copy error is not sticky; clear it and upload anew
        stored.erase(it);   // not freed: it belongs to a context that is gone, or to whoever wrote over it
    }
    float* d = nullptr;
    if (cudaMalloc(&d, bytes) != cudaSuccess)
        throw std::runtime_error("cudaMalloc of the base matrix failed");
    if (cudaMemcpyAsync(d, base.data(), bytes, cudaMemcpyHostToDevice, relaxed.stream) != cudaSuccess
        || cudaStreamSynchronize(relaxed.stream) != cudaSuccess)
    {
        cudaFree(d);
        throw std::runtime_error("copying the base matrix to the device failed");
    }
    stored[key] = d;
    return d;
}
} // namespace

void HadamardPlugin::uploadBase()
{
    if (mM > 1 && mBaseDev == nullptr)
        mBaseDev = sharedBaseMatrix(mM, mBase);
}

HadamardPlugin::~HadamardPlugin() = default; // mBaseDev is the process's (sharedBaseMatrix), not this instance's

int32_t HadamardPlugin::nbInputs() const { return 1; }

int32_t HadamardPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    return guard<int32_t>("Hadamard::getOutputDataTypes", -1, [&] {
        require(nbOutputs == 1 && nbInputs == 1, "wrong number of inputs/outputs");
        outputTypes[0] = mAttrs.getFloat("out_scale") > 0.f ? DataType::kINT8 : inputTypes[0];
        return 0;
    });
}

int32_t HadamardPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    return guard<int32_t>("Hadamard::getOutputShapes", -1, [&] {
        require(nbInputs == 1 && nbOutputs == 1 && inputs[0].nbDims >= 1, "wrong inputs/outputs");
        outputs[0] = inputs[0];
        return 0;
    });
}

bool HadamardPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return guard<bool>("Hadamard::supportsFormatCombination", false, [&] {
        require(nbInputs == 1 && nbOutputs == 1, "wrong number of inputs/outputs");
        auto const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR)
            return false;
        if (pos == 0)
            return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
        return d.type == (mAttrs.getFloat("out_scale") > 0.f ? DataType::kINT8 : inOut[0].desc.type);
    });
}

int32_t HadamardPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    return guard<int32_t>("Hadamard::configurePlugin", -1, [&] {
        require(nbInputs == 1 && nbOutputs == 1, "wrong number of inputs/outputs");
        auto const& d = in[0].desc.dims;
        require(d.d[d.nbDims - 1] == -1 || d.d[d.nbDims - 1] == mAttrs.getInt("n"), "Hadamard: last axis must be n");
        // a size the faster schedules do not take runs one block a row with the row in shared memory: say so here,
        // on the GPU the engine is built for, rather than fail every tactic's launch
        int dev = 0, optin = 0;
        if (cudaGetDevice(&dev) == cudaSuccess
            && cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess && optin > 0)
        {
            size_t const need = hadamardSharedBytes(mAttrs.getInt("n"), mM);
            require(need <= static_cast<size_t>(optin),
                "Hadamard: n = " + std::to_string(mAttrs.getInt("n")) + " needs " + std::to_string(need / 1024)
                    + " KB of shared memory a block; this GPU allows " + std::to_string(optin / 1024) + " KB");
        }
        return 0;
    });
}

size_t HadamardPlugin::getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return 0;
}

int32_t HadamardPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    return guard<int32_t>("Hadamard::onShapeChange", -1, [&] {
        require(nbInputs == 1 && nbOutputs == 1, "wrong number of inputs/outputs");
        require(in[0].dims.d[in[0].dims.nbDims - 1] == mAttrs.getInt("n"), "Hadamard: last axis must be n");
        return 0;
    });
}

int32_t HadamardPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept
{
    return guard<int32_t>("Hadamard::enqueue", -1, [&] {
        if (mM > 1 && mBaseDev == nullptr) // an instance no execution context attached: the builder's own runs
        {
            cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
            if (cudaStreamIsCapturing(stream, &capturing) != cudaSuccess || capturing != cudaStreamCaptureStatusNone)
                throw std::runtime_error("the base matrix is not on the device and a stream under CUDA graph capture cannot "
                                         "upload it; run this plugin through an execution context (attachToContext)");
            uploadBase();
        }
        HadamardParams p;
        p.n = mAttrs.getInt("n");
        p.m = mM;
        p.rows = volume(inputDesc[0].dims) / p.n;
        p.inType = inputDesc[0].type == DataType::kHALF ? DType::kHALF : DType::kFLOAT;
        p.outType = outputDesc[0].type == DataType::kINT8 ? DType::kINT8
            : (outputDesc[0].type == DataType::kHALF ? DType::kHALF : DType::kFLOAT);
        p.outScale = mAttrs.getFloat("out_scale");
        p.x = inputs[0];
        p.y = outputs[0];
        p.baseMatrix = mBaseDev;
        cudaError_t const e = launchHadamard(p, stream);
        if (e != cudaSuccess)
            throw std::runtime_error(cudaGetErrorString(e));
        return 0;
    });
}

IPluginCapability* HadamardPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* HadamardPlugin::clone() noexcept
{
    return guard<IPluginV3*>("Hadamard::clone", nullptr, [&] { return new HadamardPlugin(mAttrs); });
}

char const* HadamardPlugin::getPluginName() const noexcept { return kNAME; }
char const* HadamardPlugin::getPluginVersion() const noexcept { return kVERSION; }
char const* HadamardPlugin::getPluginNamespace() const noexcept { return kNAMESPACE; }
int32_t HadamardPlugin::getNbOutputs() const noexcept { return 1; }

IPluginV3* HadamardPlugin::attachToContext(IPluginResourceContext*) noexcept
{
    return guard<IPluginV3*>("Hadamard::attachToContext", nullptr, [&] {
        auto p = std::make_unique<HadamardPlugin>(mAttrs);
        p->uploadBase();
        return p.release();
    });
}

PluginFieldCollection const* HadamardPlugin::getFieldsToSerialize() noexcept { return mAttrs.serialize(); }

HadamardPluginCreator::HadamardPluginCreator()
    : mAttrs(hadamardAttrs())
{
}
char const* HadamardPluginCreator::getPluginName() const noexcept { return kNAME; }
char const* HadamardPluginCreator::getPluginVersion() const noexcept { return kVERSION; }
char const* HadamardPluginCreator::getPluginNamespace() const noexcept { return kNAMESPACE; }
PluginFieldCollection const* HadamardPluginCreator::getFieldNames() noexcept { return mAttrs.declared(); }

IPluginV3* HadamardPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    return guard<IPluginV3*>(creatorWhere(kNAME, name).c_str(), nullptr, [&] {
        Attrs a = hadamardAttrs();
        a.parse(fc);
        return new HadamardPlugin(std::move(a));
    });
}

} // namespace plugin
} // namespace mq
