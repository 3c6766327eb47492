// CPU check of the TensorRT plugins' build-phase interfaces, without a GPU or TensorRT's runtime: only TensorRT's
// headers (plugins/check_build.sh builds and runs it when TRT_INCLUDE is set). The creators come from the library's
// own `getCreators` entry point; each plugin is created from a field collection the way the ONNX parser does and
// asked what TensorRT's builder asks: output types, output shapes, format/type combinations, configurePlugin shape
// checks, workspace size, field names and serialization.
#include "NvInferRuntime.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

using namespace nvinfer1;

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" void setLoggerFinder(ILoggerFinder* finder);

namespace
{
int gFailures = 0;

void check(bool ok, char const* what)
{
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", what);
    gFailures += !ok;
}

IPluginCreatorV3One* creator(char const* name)
{
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    for (int32_t i = 0; i < n; ++i)
    {
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(c->getPluginName(), name) == 0)
            return c;
    }
    return nullptr;
}

DynamicPluginTensorDesc desc(DataType type, std::vector<int64_t> const& dims, int64_t dynamicMax = 0)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
        d.desc.dims.d[i] = dims[i];
    d.min = d.opt = d.max = d.desc.dims;
    for (int32_t i = 0; i < d.max.nbDims; ++i)
        if (d.max.d[i] < 0)
            d.max.d[i] = dynamicMax;
    return d;
}

//! What the plugins log, while setLoggerFinder hands this out as TensorRT's logger (loadLibrary does so).
struct CapturingLogger : ILogger
{
    std::vector<std::pair<Severity, std::string>> messages;
    void log(Severity severity, AsciiChar const* msg) noexcept override { messages.emplace_back(severity, msg); }
};
struct OneLoggerFinder : ILoggerFinder
{
    explicit OneLoggerFinder(ILogger* l)
        : logger(l)
    {
    }
    ILogger* findLogger() override { return logger; }
    ILogger* logger;
};

IPluginV3OneBuild* build(IPluginV3* p)
{
    return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}

//! Stand-ins for TensorRT's shape expressions: the plugins' getOutputShapes only pass input expressions through (they
//! never ask the builder for new ones), so each output dimension must be one of the input objects, compared by address.
struct Expr : IDimensionExpr
{
    Expr() { mImpl = nullptr; }
};
struct NoBuilder : IExprBuilder
{
    NoBuilder() { mImpl = nullptr; }
};

DimsExprs exprs(std::vector<Expr> const& dims)
{
    DimsExprs e{};
    e.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
        e.d[i] = &dims[i];
    return e;
}

bool sameExprs(DimsExprs const& got, std::vector<IDimensionExpr const*> const& want)
{
    if (got.nbDims != static_cast<int32_t>(want.size()))
        return false;
    for (size_t i = 0; i < want.size(); ++i)
        if (got.d[i] != want[i])
            return false;
    return true;
}

//! The plugin `name` created from `fc` as the ONNX parser does (build phase); null (and a failure) when either the
//! creator or the plugin is missing.
IPluginV3* create(char const* name, PluginFieldCollection const& fc, char const* what)
{
    IPluginCreatorV3One* c = creator(name);
    check(c != nullptr, (std::string(name) + " creator from getCreators").c_str());
    IPluginV3* p = c != nullptr ? c->createPlugin(name, &fc, TensorRTPhase::kBUILD) : nullptr;
    check(p != nullptr, what);
    return p;
}

void selectiveScan()
{
    int32_t one = 1;
    float scale = 0.02f;
    std::vector<PluginField> f = {{"delta_softplus", &one, PluginFieldType::kINT32, 1}, {"u_scale", &scale, PluginFieldType::kFLOAT32, 1},
        {"delta_scale", &scale, PluginFieldType::kFLOAT32, 1}, {"B_scale", &scale, PluginFieldType::kFLOAT32, 1},
        {"C_scale", &scale, PluginFieldType::kFLOAT32, 1}};
    IPluginV3* p = create("SelectiveScan", PluginFieldCollection{static_cast<int32_t>(f.size()), f.data()}, "SelectiveScan createPlugin");
    // B_scale missing, as when the node's attribute is misspelt (the parser drops it): int8 refused, float accepted
    std::vector<PluginField> noB = {f[0], f[1], f[2], f[4]};
    IPluginV3* pNoB = create("SelectiveScan", PluginFieldCollection{static_cast<int32_t>(noB.size()), noB.data()},
        "SelectiveScan createPlugin without B_scale");
    if (p == nullptr || pNoB == nullptr)
    {
        delete p;
        delete pNoB;
        return;
    }
    IPluginV3OneBuild* b = build(p);

    // y: fp16 for fp16 input, fp32 for fp32 and for int8 (the quantized graph's gate multiply is fp32)
    bool typesOk = true;
    for (DataType t : {DataType::kINT8, DataType::kHALF, DataType::kFLOAT})
    {
        DataType in[7] = {t, t, DataType::kFLOAT, t, t, DataType::kFLOAT, DataType::kFLOAT}, out[2];
        typesOk &= b->getOutputDataTypes(out, 2, in, 7) == 0
            && out[0] == (t == DataType::kHALF ? DataType::kHALF : DataType::kFLOAT) && out[1] == DataType::kFLOAT;
    }
    check(typesOk, "SelectiveScan output types: int8 -> fp32, fp16 -> fp16, fp32 -> fp32; state fp32");

    // inputs u, delta, A, Bm, Cm, Dskip, delta_bias; outputs y, last_state (B, L dynamic; D 384, N 16)
    auto io = [](DataType in, DataType y, int64_t bmN, int64_t aD, int64_t aN) {
        return std::vector<DynamicPluginTensorDesc>{desc(in, {-1, -1, 384}, 4100), desc(in, {-1, -1, 384}, 4100),
            desc(DataType::kFLOAT, {aD, aN}), desc(in, {-1, -1, bmN}, 4100), desc(in, {-1, -1, 16}, 4100),
            desc(DataType::kFLOAT, {384}), desc(DataType::kFLOAT, {384}), desc(y, {-1, -1, 384}, 4100),
            desc(DataType::kFLOAT, {-1, 384, 16}, 4100)};
    };
    auto supported = [&](std::vector<DynamicPluginTensorDesc> const& v) {
        bool ok = true;
        for (int32_t pos = 0; pos < 9; ++pos)
            ok &= b->supportsFormatCombination(pos, v.data(), 7, 2);
        return ok;
    };
    check(supported(io(DataType::kINT8, DataType::kFLOAT, 16, 384, 16)), "SelectiveScan supports int8 in, fp32 y");
    check(supported(io(DataType::kINT8, DataType::kHALF, 16, 384, 16)), "SelectiveScan supports int8 in, fp16 y");
    check(supported(io(DataType::kHALF, DataType::kHALF, 16, 384, 16)), "SelectiveScan supports fp16 in, fp16 y");
    check(supported(io(DataType::kFLOAT, DataType::kFLOAT, 16, 384, 16)), "SelectiveScan supports fp32 in, fp32 y");
    check(!supported(io(DataType::kHALF, DataType::kFLOAT, 16, 384, 16)), "SelectiveScan refuses fp16 in, fp32 y");

    auto good = io(DataType::kINT8, DataType::kFLOAT, 16, 384, 16);
    good[0].max.d[0] = 1; // the profile: max B 1, max L 4100
    check(b->configurePlugin(good.data(), 7, good.data() + 7, 2) == 0, "SelectiveScan configurePlugin accepts (B, L, D), A (D, N)");
    auto badBm = io(DataType::kINT8, DataType::kFLOAT, 8, 384, 16);
    check(b->configurePlugin(badBm.data(), 7, badBm.data() + 7, 2) != 0, "SelectiveScan configurePlugin refuses Bm (B, L, 8) with N 16");
    auto badA = io(DataType::kINT8, DataType::kFLOAT, 16, 383, 16);
    check(b->configurePlugin(badA.data(), 7, badA.data() + 7, 2) != 0, "SelectiveScan configurePlugin refuses A with D 383");
    auto badN = io(DataType::kINT8, DataType::kFLOAT, 17, 384, 17);
    check(b->configurePlugin(badN.data(), 7, badN.data() + 7, 2) != 0, "SelectiveScan configurePlugin refuses N 17");
    check(build(pNoB)->configurePlugin(good.data(), 7, good.data() + 7, 2) != 0,
        "SelectiveScan configurePlugin refuses int8 inputs without B_scale");
    auto fp32 = io(DataType::kFLOAT, DataType::kFLOAT, 16, 384, 16);
    check(build(pNoB)->configurePlugin(fp32.data(), 7, fp32.data() + 7, 2) == 0,
        "SelectiveScan configurePlugin accepts fp32 inputs with default scales");
    check(!build(pNoB)->supportsFormatCombination(0, good.data(), 7, 2) && build(pNoB)->supportsFormatCombination(0, fp32.data(), 7, 2),
        "SelectiveScan without B_scale offers no int8 formats (fp32 still)");
    {
        // a float graph's node: every field written, the scales 0 (ops/plugin_fields.py), as TensorRT's ONNX parser
        // passes them. An implicitly quantized build (trtexec --int8 with a calibrator) must not be offered int8 u:
        // its scales would come in PluginTensorDesc::scale, which the kernel does not read
        float zero = 0.f;
        std::vector<PluginField> fz = {f[0], {"u_scale", &zero, PluginFieldType::kFLOAT32, 1},
            {"delta_scale", &zero, PluginFieldType::kFLOAT32, 1}, {"B_scale", &zero, PluginFieldType::kFLOAT32, 1},
            {"C_scale", &zero, PluginFieldType::kFLOAT32, 1}};
        for (auto const& fc : {PluginFieldCollection{static_cast<int32_t>(fz.size()), fz.data()}, PluginFieldCollection{0, nullptr}})
        {
            IPluginV3* pf = create("SelectiveScan", fc, "SelectiveScan createPlugin of a float node (scales 0 / defaults)");
            if (pf == nullptr)
                continue;
            auto half = io(DataType::kHALF, DataType::kHALF, 16, 384, 16);
            check(!build(pf)->supportsFormatCombination(0, good.data(), 7, 2)
                    && build(pf)->supportsFormatCombination(0, fp32.data(), 7, 2)
                    && build(pf)->supportsFormatCombination(0, half.data(), 7, 2),
                "SelectiveScan float node (scales 0) offers fp32 / fp16 u, no int8");
            check(build(pf)->configurePlugin(good.data(), 7, good.data() + 7, 2) != 0,
                "SelectiveScan float node (scales 0) refuses int8 inputs in configurePlugin");
            delete pf;
        }
        {
            // int8 u asked of a node without the scales (a strongly typed network fed int8: TensorRT's error would
            // name no cause): said once, at INFO, naming the layer, however often the builder asks, clone or not;
            // nothing for a node with them, nor for float u
            CapturingLogger log;
            OneLoggerFinder finder(&log);
            setLoggerFinder(&finder);
            IPluginCreatorV3One* c = creator("SelectiveScan");
            PluginFieldCollection const fcz{static_cast<int32_t>(fz.size()), fz.data()};
            PluginFieldCollection const fcs{static_cast<int32_t>(f.size()), f.data()};
            IPluginV3* bare = c != nullptr ? c->createPlugin("layers.3.mixer/scan", &fcz, TensorRTPhase::kBUILD) : nullptr;
            IPluginV3* scaled = c != nullptr ? c->createPlugin("layers.4.mixer/scan", &fcs, TensorRTPhase::kBUILD) : nullptr;
            IPluginV3* twin = bare != nullptr ? bare->clone() : nullptr;
            bool refused = bare != nullptr && scaled != nullptr && twin != nullptr;
            for (int32_t i = 0; refused && i < 3; ++i)
                refused = !build(bare)->supportsFormatCombination(0, good.data(), 7, 2)
                    && !build(twin)->supportsFormatCombination(0, good.data(), 7, 2)
                    && build(bare)->supportsFormatCombination(0, fp32.data(), 7, 2)
                    && build(scaled)->supportsFormatCombination(0, good.data(), 7, 2);
            setLoggerFinder(nullptr);
            bool const once = log.messages.size() == 1 && log.messages[0].first == ILogger::Severity::kINFO;
            std::string const msg = once ? log.messages[0].second : "";
            for (auto const& m : log.messages)
                std::printf("  logged: %s\n", m.second.c_str());
            check(refused && once && msg.find("layer 'layers.3.mixer/scan'") != std::string::npos
                    && msg.find("int8 inputs refused") != std::string::npos && msg.find("C_scale") != std::string::npos,
                "SelectiveScan without scales says once (INFO, its layer named) why it refuses int8 u");
            delete bare;
            delete scaled;
            delete twin;
        }
        float neg = -0.5f;
        std::vector<PluginField> fn = {f[0], {"u_scale", &neg, PluginFieldType::kFLOAT32, 1}};
        PluginFieldCollection const fcNeg{static_cast<int32_t>(fn.size()), fn.data()};
        IPluginCreatorV3One* c = creator("SelectiveScan");
        IPluginV3* pn = c != nullptr ? c->createPlugin("scan_neg", &fcNeg, TensorRTPhase::kBUILD) : nullptr;
        check(c != nullptr && pn == nullptr, "SelectiveScan createPlugin refuses u_scale < 0");
        delete pn;
    }
    {
        // has_z: y takes z's type (int8 u with an fp16 z gives fp16 y: the type supportsFormatCombination allows)
        std::vector<PluginField> fzg = f;
        fzg.push_back({"has_z", &one, PluginFieldType::kINT32, 1});
        IPluginV3* pz = create("SelectiveScan", PluginFieldCollection{static_cast<int32_t>(fzg.size()), fzg.data()},
            "SelectiveScan createPlugin with has_z");
        if (pz != nullptr)
        {
            DataType in[8] = {DataType::kINT8, DataType::kINT8, DataType::kFLOAT, DataType::kINT8, DataType::kINT8,
                DataType::kFLOAT, DataType::kFLOAT, DataType::kHALF};
            DataType out[2];
            check(build(pz)->getOutputDataTypes(out, 2, in, 8) == 0 && out[0] == DataType::kHALF && out[1] == DataType::kFLOAT,
                "SelectiveScan with has_z: y has z's type (int8 u, fp16 z -> fp16 y)");
            delete pz;
        }
    }
    IPluginV3* cloned = pNoB->clone(); // the clone keeps which fields were set
    check(cloned != nullptr && build(cloned)->configurePlugin(good.data(), 7, good.data() + 7, 2) != 0,
        "SelectiveScan clone still refuses int8 inputs without B_scale");
    delete cloned;
    delete pNoB;

    // workspace of a profile with max B 1, max L 4100: every shape's plan fits in max(1, 4100 / 128) = 32 chunks
    size_t const ws = b->getWorkspaceSize(good.data(), 7, good.data() + 7, 2);
    check(ws == size_t{1} * 32 * 384 * 17 * sizeof(float), "SelectiveScan workspace = max B x 32 chunks x D x (N + 1) floats");
    // a longer profile (max B 8, max L 32768) still needs at most 32 chunks: the plan never makes more (kPlanChunks)
    auto longer = good;
    longer[0].max.d[0] = 8;
    longer[0].max.d[1] = 32768;
    size_t const wsLong = b->getWorkspaceSize(longer.data(), 7, longer.data() + 7, 2);
    check(wsLong == size_t{8} * 32 * 384 * 17 * sizeof(float), "SelectiveScan workspace at max L 32768 = max B x 32 chunks x D x (N + 1) floats");

    // output shapes: y = u's (B, L, D), last_state = (B, D, N) from u and A
    std::vector<Expr> u(3), a(2), bm(3), vec(1);
    std::vector<DimsExprs> in = {exprs(u), exprs(u), exprs(a), exprs(bm), exprs(bm), exprs(vec), exprs(vec)};
    DimsExprs out[2]{};
    NoBuilder nb;
    check(b->getOutputShapes(in.data(), 7, nullptr, 0, out, 2, nb) == 0 && sameExprs(out[0], {&u[0], &u[1], &u[2]})
            && sameExprs(out[1], {&u[0], &u[2], &a[1]}),
        "SelectiveScan output shapes: y (B, L, D) of u, last_state (B, D, N) of u and A");
    std::vector<Expr> u2(2);
    in[0] = exprs(u2);
    check(b->getOutputShapes(in.data(), 7, nullptr, 0, out, 2, nb) != 0, "SelectiveScan output shapes refuse a 2-D u");
    delete p;
}

void stateUpdate()
{
    IPluginV3* p = create("SelectiveStateUpdate", PluginFieldCollection{0, nullptr}, "SelectiveStateUpdate createPlugin (defaults)");
    if (p == nullptr)
        return;
    IPluginV3OneBuild* b = build(p);
    DataType const F = DataType::kFLOAT;
    // state, x, dt, A, Bm, Cm, Dskip, dt_bias; outputs y, new state (ops/state_update.py layouts)
    std::vector<DynamicPluginTensorDesc> good = {desc(F, {-1, 384, 16}, 8), desc(F, {-1, 1, 384}, 8),
        desc(F, {-1, 1, 384}, 8), desc(F, {384, 16}), desc(F, {-1, 1, 16}, 8), desc(F, {-1, 1, 16}, 8), desc(F, {384}),
        desc(F, {384}), desc(F, {-1, 1, 384}, 8), desc(F, {-1, 384, 16}, 8)};
    check(b->configurePlugin(good.data(), 8, good.data() + 8, 2) == 0, "SelectiveStateUpdate configurePlugin accepts x (B, 1, D)");
    auto badX = good;
    badX[1] = desc(F, {-1, 384}, 8);
    check(b->configurePlugin(badX.data(), 8, badX.data() + 8, 2) != 0, "SelectiveStateUpdate configurePlugin refuses x (B, D)");
    auto badB = good;
    badB[4] = desc(F, {-1, 1, 12}, 8);
    check(b->configurePlugin(badB.data(), 8, badB.data() + 8, 2) != 0, "SelectiveStateUpdate configurePlugin refuses Bm with N 12");
    std::vector<Expr> st(3), x(3), a(2), bm(3), vec(1);
    std::vector<DimsExprs> in = {exprs(st), exprs(x), exprs(x), exprs(a), exprs(bm), exprs(bm), exprs(vec), exprs(vec)};
    DimsExprs out[2]{};
    NoBuilder nb;
    check(b->getOutputShapes(in.data(), 8, nullptr, 0, out, 2, nb) == 0 && sameExprs(out[0], {&x[0], &x[1], &x[2]})
            && sameExprs(out[1], {&st[0], &st[1], &st[2]}),
        "SelectiveStateUpdate output shapes: y of x (B, 1, D), new state of state (B, D, N)");
    delete p;
}

void hadamard()
{
    int32_t n = 1536;
    std::vector<PluginField> f = {{"n", &n, PluginFieldType::kINT32, 1}};
    PluginFieldCollection fc{1, f.data()};
    IPluginV3* p = create("Hadamard", fc, "Hadamard createPlugin n 1536");
    if (p == nullptr)
        return;
    IPluginCreatorV3One* c = creator("Hadamard");
    PluginFieldCollection const* names = c->getFieldNames();
    check(names != nullptr && names->nbFields == 2 && std::strcmp(names->fields[0].name, "n") == 0
            && std::strcmp(names->fields[1].name, "out_scale") == 0,
        "Hadamard field names n, out_scale");
    IPluginV3* q = p->clone();
    check(q != nullptr, "Hadamard clone");
    if (q != nullptr)
    {
        auto* rt = static_cast<IPluginV3OneRuntime*>(q->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* ser = rt->getFieldsToSerialize();
        check(ser != nullptr && ser->nbFields == 2 && *static_cast<int32_t const*>(ser->fields[0].data) == 1536,
            "Hadamard clone serializes n 1536");
        delete q;
    }
    std::vector<Expr> x(4);
    DimsExprs in = exprs(x), out{};
    NoBuilder nb;
    check(build(p)->getOutputShapes(&in, 1, nullptr, 0, &out, 1, nb) == 0 && sameExprs(out, {&x[0], &x[1], &x[2], &x[3]}),
        "Hadamard output shape: the input's");
    int32_t bad = 105; // 3·5·7: no base matrix of that order
    f[0].data = &bad;
    check(c->createPlugin("Hadamard", &fc, TensorRTPhase::kBUILD) == nullptr, "Hadamard createPlugin refuses n 105");
    delete p;
}
} // namespace

int main()
{
    selectiveScan();
    stateUpdate();
    hadamard();
    std::printf("%s: %d failures\n", gFailures ? "FAILED" : "OK", gFailures);
    return gFailures ? 1 : 0;
}
