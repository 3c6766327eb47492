// SelectiveStateUpdate IPluginV3; see stateUpdatePlugin.h.
#include "stateUpdatePlugin.h"

using namespace nvinfer1;

namespace mq
{
namespace plugin
{
namespace
{
constexpr char const* kNAME = "SelectiveStateUpdate";
enum : int32_t { kSTATE = 0, kX, kDT, kA, kB, kC, kDSKIP, kBIAS, kZ };
} // namespace

Attrs stateUpdateAttrs()
{
    return Attrs({{"dt_softplus", PluginFieldType::kINT32, 1}, {"has_z", PluginFieldType::kINT32, 0}});
}

StateUpdatePlugin::StateUpdatePlugin(Attrs attrs)
    : mAttrs(std::move(attrs))
{
    require(mAttrs.getInt("dt_softplus") == 0 || mAttrs.getInt("dt_softplus") == 1, "dt_softplus must be 0 or 1");
}

int32_t StateUpdatePlugin::nbInputs() const { return mAttrs.getInt("has_z") ? 9 : 8; }


int32_t StateUpdatePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    return guard<int32_t>("SelectiveStateUpdate::getOutputDataTypes", -1, [&] {
        require(nbOutputs == 2 && nbInputs == this->nbInputs(), "wrong number of inputs/outputs");
        outputTypes[0] = inputTypes[kX];
        outputTypes[1] = DataType::kFLOAT;
        return 0;
    });
}

int32_t StateUpdatePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    return guard<int32_t>("SelectiveStateUpdate::getOutputShapes", -1, [&] {
        require(nbInputs == this->nbInputs() && nbOutputs == 2, "wrong number of inputs/outputs");
        require(inputs[kSTATE].nbDims == 3 && inputs[kX].nbDims == 3, "state must be (B, D, N) and x (B, 1, D)");
        outputs[0] = inputs[kX];
        outputs[1] = inputs[kSTATE];
        return 0;
    });
}

bool StateUpdatePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return guard<bool>("SelectiveStateUpdate::supportsFormatCombination", false, [&] {
        require(nbInputs == this->nbInputs() && nbOutputs == 2, "wrong number of inputs/outputs");
        auto const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR)
            return false;
        DataType const t = inOut[kX].desc.type;
        if (pos == kX)
            return t == DataType::kFLOAT || t == DataType::kHALF;
        if (pos == kDT || pos == kB || pos == kC || (pos == kZ && nbInputs == 9) || pos == nbInputs)
            return d.type == t;
        return d.type == DataType::kFLOAT; // state, A, Dskip, dt_bias, new_state
    });
}

int32_t StateUpdatePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    return guard<int32_t>("SelectiveStateUpdate::configurePlugin", -1, [&] {
        require(nbInputs == this->nbInputs() && nbOutputs == 2, "wrong number of inputs/outputs");
        // the kernel indexes everything by the state's (B, D, N); -1 (dynamic) dims are checked where both are known
        auto const same = [](int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; };
        Dims const& st = in[kSTATE].desc.dims;
        require(st.nbDims == 3, "state must be (B, D, N)");
        require(st.d[2] < 0 || (st.d[2] >= 1 && st.d[2] <= 16), "d_state N must be in 1..16");
        // per-token inputs keep SelectiveScan's token-major layout at L = 1 (ops/state_update.py)
        auto const token = [&](Dims const& t, int64_t last) {
            return t.nbDims == 3 && same(t.d[0], st.d[0]) && same(t.d[1], 1) && same(t.d[2], last);
        };
        for (int32_t i : {kX, kDT})
            require(token(in[i].desc.dims, st.d[1]), "x and dt must be (B, 1, D)");
        for (int32_t i : {kB, kC})
            require(token(in[i].desc.dims, st.d[2]), "Bm and Cm must be (B, 1, N)");
        require(in[kA].desc.dims.nbDims == 2 && same(in[kA].desc.dims.d[0], st.d[1]) && same(in[kA].desc.dims.d[1], st.d[2]),
            "A must be (D, N)");
        return 0;
    });
}

size_t StateUpdatePlugin::getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return 0;
}

int32_t StateUpdatePlugin::onShapeChange(PluginTensorDesc const*, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    return guard<int32_t>("SelectiveStateUpdate::onShapeChange", -1, [&] {
        require(nbInputs == this->nbInputs() && nbOutputs == 2, "wrong number of inputs/outputs");
        return 0;
    });
}

int32_t StateUpdatePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept
{
    return guard<int32_t>("SelectiveStateUpdate::enqueue", -1, [&] {
        StateUpdateParams p;
        auto const& sd = inputDesc[kSTATE].dims;
        p.batch = static_cast<int32_t>(sd.d[0]);
        p.dim = static_cast<int32_t>(sd.d[1]);
        p.dState = static_cast<int32_t>(sd.d[2]);
        p.dtSoftplus = mAttrs.getInt("dt_softplus") != 0;
        p.type = inputDesc[kX].type == DataType::kHALF ? DType::kHALF : DType::kFLOAT;
        p.stateIn = static_cast<float const*>(inputs[kSTATE]);
        p.stateOut = static_cast<float*>(outputs[1]);
        p.x = inputs[kX];
        p.dt = inputs[kDT];
        p.A = static_cast<float const*>(inputs[kA]);
        p.Bm = inputs[kB];
        p.Cm = inputs[kC];
        p.Dskip = static_cast<float const*>(inputs[kDSKIP]);
        p.dtBias = static_cast<float const*>(inputs[kBIAS]);
        p.z = mAttrs.getInt("has_z") ? inputs[kZ] : nullptr;
        p.y = outputs[0];
        cudaError_t const e = launchStateUpdate(p, stream);
        if (e != cudaSuccess)
            throw std::runtime_error(cudaGetErrorString(e));
        return 0;
    });
}

IPluginCapability* StateUpdatePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* StateUpdatePlugin::clone() noexcept
{
    return guard<IPluginV3*>("SelectiveStateUpdate::clone", nullptr, [&] { return new StateUpdatePlugin(mAttrs); });
}

char const* StateUpdatePlugin::getPluginName() const noexcept { return kNAME; }
char const* StateUpdatePlugin::getPluginVersion() const noexcept { return kVERSION; }
char const* StateUpdatePlugin::getPluginNamespace() const noexcept { return kNAMESPACE; }
int32_t StateUpdatePlugin::getNbOutputs() const noexcept { return 2; }

IPluginV3* StateUpdatePlugin::attachToContext(IPluginResourceContext*) noexcept { return clone(); }

PluginFieldCollection const* StateUpdatePlugin::getFieldsToSerialize() noexcept { return mAttrs.serialize(); }

StateUpdatePluginCreator::StateUpdatePluginCreator()
    : mAttrs(stateUpdateAttrs())
{
}
char const* StateUpdatePluginCreator::getPluginName() const noexcept { return kNAME; }
char const* StateUpdatePluginCreator::getPluginVersion() const noexcept { return kVERSION; }
char const* StateUpdatePluginCreator::getPluginNamespace() const noexcept { return kNAMESPACE; }
PluginFieldCollection const* StateUpdatePluginCreator::getFieldNames() noexcept { return mAttrs.declared(); }

IPluginV3* StateUpdatePluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    return guard<IPluginV3*>(creatorWhere(kNAME, name).c_str(), nullptr, [&] {
        Attrs a = stateUpdateAttrs();
        a.parse(fc);
        return new StateUpdatePlugin(std::move(a));
    });
}

} // namespace plugin
} // namespace mq
