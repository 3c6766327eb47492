// SelectiveScan IPluginV3; see selectiveScanPlugin.h.
#include "selectiveScanPlugin.h"

using namespace nvinfer1;

namespace mq
{
namespace plugin
{
namespace
{
constexpr char const* kNAME = "SelectiveScan";
enum : int32_t { kU = 0, kDELTA, kA, kB, kC, kDSKIP, kBIAS };
//! The dequantization scales of the int8 inputs u, delta, Bm, Cm; 0 (the default, what a float graph's node carries)
//! means the node takes float inputs only.
constexpr char const* kScales[] = {"u_scale", "delta_scale", "B_scale", "C_scale"};

DType toDType(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return DType::kFLOAT;
    case DataType::kHALF: return DType::kHALF;
    case DataType::kINT8: return DType::kINT8;
    default: throw std::invalid_argument("SelectiveScan: unsupported data type");
    }
}
} // namespace

Attrs selectiveScanAttrs()
{
    return Attrs({{"delta_softplus", PluginFieldType::kINT32, 1}, {"has_z", PluginFieldType::kINT32, 0},
        {"has_initial_state", PluginFieldType::kINT32, 0}, {"u_scale", PluginFieldType::kFLOAT32, 0.0},
        {"delta_scale", PluginFieldType::kFLOAT32, 0.0}, {"B_scale", PluginFieldType::kFLOAT32, 0.0},
        {"C_scale", PluginFieldType::kFLOAT32, 0.0}});
}

SelectiveScanPlugin::SelectiveScanPlugin(Attrs attrs, std::string layer)
    : mAttrs(std::move(attrs))
    , mLayer(std::move(layer))
{
    require(mAttrs.getInt("delta_softplus") == 0 || mAttrs.getInt("delta_softplus") == 1, "delta_softplus must be 0 or 1");
    for (char const* s : kScales)
        require(std::isfinite(mAttrs.getFloat(s)) && mAttrs.getFloat(s) >= 0.f,
            std::string(s) + " must be >= 0 (0: a float node, which takes no int8 inputs)");
}

bool SelectiveScanPlugin::int8Scales() const
{
    for (char const* s : kScales)
        if (!mAttrs.isSet(s) || !(mAttrs.getFloat(s) > 0.f))
            return false;
    return true;
}

int32_t SelectiveScanPlugin::nbInputs() const
{
    return 7 + (mAttrs.getInt("has_z") ? 1 : 0) + (mAttrs.getInt("has_initial_state") ? 1 : 0);
}

IPluginCapability* SelectiveScanPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* SelectiveScanPlugin::clone() noexcept
{
    return guard<IPluginV3*>("SelectiveScan::clone", nullptr, [&] { return new SelectiveScanPlugin(mAttrs, mLayer); });
}

char const* SelectiveScanPlugin::getPluginName() const noexcept { return kNAME; }
char const* SelectiveScanPlugin::getPluginVersion() const noexcept { return kVERSION; }
char const* SelectiveScanPlugin::getPluginNamespace() const noexcept { return kNAMESPACE; }
int32_t SelectiveScanPlugin::getNbOutputs() const noexcept { return 2; }

int32_t SelectiveScanPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    return guard<int32_t>("SelectiveScan::getOutputDataTypes", -1, [&] {
        require(nbOutputs == 2 && nbInputs == this->nbInputs(), "wrong number of inputs/outputs");
        // y follows fp16 input; fp32 and int8 input give fp32 (what the ONNX graph computes: the int8 inputs are its
        // fused Q/DQ pairs, and the gate multiply after the node is fp32, which a strongly typed network, always the
        // case in TensorRT 11, requires to match). A weakly typed build may still pick fp16 (supportsFormatCombination).
        outputTypes[0] = inputTypes[kU] == DataType::kHALF ? DataType::kHALF : DataType::kFLOAT;
        if (mAttrs.getInt("has_z")) // y takes z's type (supportsFormatCombination)
            outputTypes[0] = inputTypes[7];
        outputTypes[1] = DataType::kFLOAT;
        return 0;
    });
}

int32_t SelectiveScanPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    return guard<int32_t>("SelectiveScan::getOutputShapes", -1, [&] {
        require(nbInputs == this->nbInputs() && nbOutputs == 2, "wrong number of inputs/outputs");
        require(inputs[kU].nbDims == 3 && inputs[kA].nbDims == 2, "u must be (B, L, D) and A (D, N)");
        outputs[0] = inputs[kU];
        outputs[1].nbDims = 3;
        outputs[1].d[0] = inputs[kU].d[0];
        outputs[1].d[1] = inputs[kU].d[2];
        outputs[1].d[2] = inputs[kA].d[1];
        return 0;
    });
}

bool SelectiveScanPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return guard<bool>("SelectiveScan::supportsFormatCombination", false, [&] {
        require(nbInputs == this->nbInputs() && nbOutputs == 2, "wrong number of inputs/outputs");
        auto const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR)
            return false;
        DataType const in = inOut[kU].desc.type;
        // z and y (the "out" type): fp32 in → fp32, fp16 in → fp16, int8 in → fp32 or fp16 (z, when present, decides y;
        // only positions before pos are determined when pos is asked)
        auto const outOk = [&](DataType t) {
            return in == DataType::kINT8 ? (t == DataType::kFLOAT || t == DataType::kHALF) : t == in;
        };
        bool const hasZ = mAttrs.getInt("has_z") != 0;
        int32_t const zPos = hasZ ? 7 : -1;
        int32_t const h0Pos = mAttrs.getInt("has_initial_state") ? (hasZ ? 8 : 7) : -1;
        // int8 only where the node carries the four scales (> 0): a float graph's node (scales 0) offered int8 would
        // be given it by an implicitly quantized build (trtexec --int8 with a calibrator or dynamic ranges), whose
        // scales come in PluginTensorDesc::scale, which the kernel does not read: it would dequantize at 0
        if (pos == kU)
        {
            if (in == DataType::kINT8 && !int8Scales())
                // where the network's u is int8 (a strongly typed network: TensorRT 11's only kind) TensorRT's own
                // error says only that no implementation of the layer was found. INFO, not WARNING: a weakly typed
                // build with the INT8 flag (TensorRT 10, e.g. a W4A16 graph's) asks a float node this too, and builds
                // it in fp32 / fp16 as it should (trtexec prints INFO; mq-deploy build shows WARNING and worse)
                reportOnce(ILogger::Severity::kINFO, layerWhere("SelectiveScan::supportsFormatCombination", mLayer),
                    "int8 inputs refused: the node does not carry the four int8 scales (u_scale, delta_scale, B_scale, "
                    "C_scale, each > 0), so it takes fp32 or fp16 u / delta / Bm / Cm only; a network that feeds it "
                    "int8 tensors has no implementation for it (the int8 graphs of mq-deploy compile set the scales: "
                    "`mq-deploy lint` checks a graph)");
            return in == DataType::kFLOAT || in == DataType::kHALF || (in == DataType::kINT8 && int8Scales());
        }
        if (pos == kDELTA || pos == kB || pos == kC)
            return d.type == in;
        if (pos == kA || pos == kDSKIP || pos == kBIAS || pos == h0Pos)
            return d.type == DataType::kFLOAT;
        if (pos == zPos)
            return outOk(d.type);
        if (pos == nbInputs)
            return hasZ ? d.type == inOut[zPos].desc.type : outOk(d.type);
        return d.type == DataType::kFLOAT; // last_state
    });
}

int32_t SelectiveScanPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
    DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    return guard<int32_t>("SelectiveScan::configurePlugin", -1, [&] {
        require(nbInputs == this->nbInputs() && nbOutputs == 2, "wrong number of inputs/outputs");
        // int8 u, delta, Bm, Cm (one type: supportsFormatCombination) are dequantized with their scale fields; one the
        // node did not carry (the ONNX parser skips a missing field, and drops a misspelt one) would run at 0
        if (in[kU].desc.type == DataType::kINT8)
            for (char const* s : kScales)
                require(mAttrs.isSet(s) && mAttrs.getFloat(s) > 0.f,
                    std::string("int8 inputs need attribute ") + s + " > 0 (the node leaves it unset or 0)");
        // shapes the kernel indexes by u's (B, L, D) and A's N; -1 (dynamic) dims are checked where both are known
        auto const same = [](int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; };
        Dims const& u = in[kU].desc.dims;
        Dims const& a = in[kA].desc.dims;
        require(u.nbDims == 3 && a.nbDims == 2, "u must be (B, L, D) and A (D, N)");
        require(a.d[1] < 0 || (a.d[1] >= 1 && a.d[1] <= 16), "d_state N must be in 1..16");
        require(same(a.d[0], u.d[2]), "A's first dimension must be u's D");
        Dims const& dl = in[kDELTA].desc.dims;
        require(dl.nbDims == 3 && same(dl.d[0], u.d[0]) && same(dl.d[1], u.d[1]) && same(dl.d[2], u.d[2]),
            "delta must have u's shape (B, L, D)");
        for (int32_t i : {kB, kC})
        {
            Dims const& m = in[i].desc.dims;
            require(m.nbDims == 3 && same(m.d[0], u.d[0]) && same(m.d[1], u.d[1]) && same(m.d[2], a.d[1]),
                "Bm and Cm must be (B, L, N)");
        }
        return 0;
    });
}

size_t SelectiveScanPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return guard<size_t>("SelectiveScan::getWorkspaceSize", 0, [&] {
        // every shape of the profile, not only the largest: a shorter sequence can take more (smaller) chunks
        return selectiveScanMaxWorkspaceSize(static_cast<int32_t>(inputs[kU].max.d[0]),
            static_cast<int32_t>(inputs[kU].max.d[1]), static_cast<int32_t>(inputs[kU].max.d[2]),
            static_cast<int32_t>(inputs[kA].max.d[1]));
    });
}

int32_t SelectiveScanPlugin::onShapeChange(PluginTensorDesc const*, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    return guard<int32_t>("SelectiveScan::onShapeChange", -1, [&] {
        require(nbInputs == this->nbInputs() && nbOutputs == 2, "wrong number of inputs/outputs");
        return 0;
    });
}

int32_t SelectiveScanPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    return guard<int32_t>("SelectiveScan::enqueue", -1, [&] {
        SelectiveScanParams p;
        auto const& ud = inputDesc[kU].dims;
        p.batch = static_cast<int32_t>(ud.d[0]);
        p.seqLen = static_cast<int32_t>(ud.d[1]);
        p.dim = static_cast<int32_t>(ud.d[2]);
        p.dState = static_cast<int32_t>(inputDesc[kA].dims.d[1]);
        p.deltaSoftplus = mAttrs.getInt("delta_softplus") != 0;
        p.inType = toDType(inputDesc[kU].type);
        p.outType = toDType(outputDesc[0].type);
        p.uScale = mAttrs.getFloat("u_scale");
        p.deltaScale = mAttrs.getFloat("delta_scale");
        p.bScale = mAttrs.getFloat("B_scale");
        p.cScale = mAttrs.getFloat("C_scale");
        p.u = inputs[kU];
        p.delta = inputs[kDELTA];
        p.A = static_cast<float const*>(inputs[kA]);
        p.Bm = inputs[kB];
        p.Cm = inputs[kC];
        p.Dskip = static_cast<float const*>(inputs[kDSKIP]);
        p.deltaBias = static_cast<float const*>(inputs[kBIAS]);
        int32_t next = 7;
        if (mAttrs.getInt("has_z"))
            p.z = inputs[next++];
        if (mAttrs.getInt("has_initial_state"))
            p.h0 = static_cast<float const*>(inputs[next++]);
        p.y = outputs[0];
        p.lastState = static_cast<float*>(outputs[1]);
        // p.chunks stays 0: the automatic plan (threads a channel and chunks) makes at most max(1, L / 128)
        // chunks, and no more than 32, which getWorkspaceSize (selectiveScanMaxWorkspaceSize) covers for every shape of the profile
        // (setting it here would also pin 2 threads a channel)
        size_t const ws = selectiveScanWorkspaceSize(p);
        cudaError_t const e = launchSelectiveScan(p, workspace, ws, stream);
        if (e != cudaSuccess)
            throw std::runtime_error(cudaGetErrorString(e));
        return 0;
    });
}

IPluginV3* SelectiveScanPlugin::attachToContext(IPluginResourceContext*) noexcept { return clone(); }

PluginFieldCollection const* SelectiveScanPlugin::getFieldsToSerialize() noexcept { return mAttrs.serialize(); }

SelectiveScanPluginCreator::SelectiveScanPluginCreator()
    : mAttrs(selectiveScanAttrs())
{
}
char const* SelectiveScanPluginCreator::getPluginName() const noexcept { return kNAME; }
char const* SelectiveScanPluginCreator::getPluginVersion() const noexcept { return kVERSION; }
char const* SelectiveScanPluginCreator::getPluginNamespace() const noexcept { return kNAMESPACE; }
PluginFieldCollection const* SelectiveScanPluginCreator::getFieldNames() noexcept { return mAttrs.declared(); }

IPluginV3* SelectiveScanPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    return guard<IPluginV3*>(creatorWhere(kNAME, name).c_str(), nullptr, [&] {
        Attrs a = selectiveScanAttrs();
        a.parse(fc);
        return new SelectiveScanPlugin(std::move(a), name != nullptr ? name : "");
    });
}

} // namespace plugin
} // namespace mq
