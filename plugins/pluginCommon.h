// Helpers shared by the mq-deploy TensorRT plugins: error reporting through TensorRT's logger,
// attribute (PluginField) lookup and serialization, and the exception guard of noexcept entry points.
#pragma once
#include "NvInferRuntime.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace mq
{
namespace plugin
{

constexpr char const* kNAMESPACE = "mq_deploy";
constexpr char const* kVERSION = "1";

//! Set by setLoggerFinder() in pluginLib.cpp: by TensorRT's loadLibrary, or, in the library that registers its
//! plugins when loaded, to TensorRT's global logger. Null until then (messages go to stderr).
nvinfer1::ILogger* logger() noexcept;
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

inline void report(nvinfer1::ILogger::Severity severity, std::string const& where, char const* what) noexcept
{
    std::string const msg = "mq_deploy plugin: " + where + ": " + what;
    if (nvinfer1::ILogger* l = logger())
        l->log(severity, msg.c_str());
    else
        fprintf(stderr, "%s\n", msg.c_str());
}

inline void reportError(std::string const& where, char const* what) noexcept
{
    report(nvinfer1::ILogger::Severity::kERROR, where, what);
}

//! A message said once a process for each `where` (the builder asks supportsFormatCombination many times, of the
//! network's plugin and of its clones).
inline void reportOnce(nvinfer1::ILogger::Severity severity, std::string const& where, char const* what) noexcept
{
    static std::mutex mutex;
    static std::set<std::string> said;
    try
    {
        std::lock_guard<std::mutex> lock(mutex);
        if (!said.insert(where).second)
            return;
    }
    catch (...) // (no memory for the set: say it anyway)
    {
    }
    report(severity, where, what);
}

//! Runs f(); any exception is reported and `fail` returned (every noexcept entry point goes through this).
template <typename R, typename F>
R guard(char const* where, R fail, F&& f) noexcept
{
    try
    {
        return f();
    }
    catch (std::exception const& e)
    {
        reportError(where, e.what());
    }
    catch (...)
    {
        reportError(where, "unknown exception");
    }
    return fail;
}

//! Where a creator's createPlugin reports its errors: the plugin and the network layer (the ONNX node) it creates.
inline std::string creatorWhere(char const* plugin, char const* layer)
{
    return std::string(plugin) + "::createPlugin (layer '" + (layer != nullptr ? layer : "") + "')";
}

//! Where a plugin's build-phase calls report: the plugin, the call and the layer (createPlugin's name; "" for one
//! deserialized from an engine).
inline std::string layerWhere(char const* call, std::string const& layer)
{
    return std::string(call) + (layer.empty() ? "" : " (layer '" + layer + "')");
}

//! One attribute: name, type, default; read from a PluginFieldCollection and written back to one.
struct Attr
{
    char const* name;
    nvinfer1::PluginFieldType type; //!< kINT32 or kFLOAT32
    double value;                   //!< default, then the parsed value
    bool set{false};                //!< present in a parsed collection (the ONNX parser skips a node's missing fields)
};

//! Attributes declared once per plugin: the creator's field names, parsing and serialization use this list.
class Attrs
{
public:
    explicit Attrs(std::vector<Attr> attrs)
        : mAttrs(std::move(attrs))
    {
        for (auto const& a : mAttrs)
            mDecl.emplace_back(a.name, nullptr, a.type, 1);
        mDeclFc.nbFields = static_cast<int32_t>(mDecl.size());
        mDeclFc.fields = mDecl.data();
    }

    //! Field names for IPluginCreatorV3One::getFieldNames (the pointer is refreshed here: a copied Attrs, e.g. in a
    //! clone, must not hand out its source's field array).
    nvinfer1::PluginFieldCollection const* declared() const noexcept
    {
        mDeclFc.nbFields = static_cast<int32_t>(mDecl.size());
        mDeclFc.fields = mDecl.data();
        return &mDeclFc;
    }

    //! Reads known fields from fc (unknown names are an error, missing ones keep their default).
    void parse(nvinfer1::PluginFieldCollection const* fc)
    {
        if (fc == nullptr)
            return;
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            auto const& f = fc->fields[i];
            Attr* a = find(f.name);
            if (a == nullptr)
                throw std::invalid_argument(std::string("unknown attribute '") + (f.name ? f.name : "") + "'");
            if (f.length < 1 || f.data == nullptr)
                throw std::invalid_argument(std::string("attribute '") + a->name + "' has no value");
            switch (f.type)
            {
            case nvinfer1::PluginFieldType::kINT32: a->value = *static_cast<int32_t const*>(f.data); break;
            case nvinfer1::PluginFieldType::kINT64: a->value = static_cast<double>(*static_cast<int64_t const*>(f.data)); break;
            case nvinfer1::PluginFieldType::kFLOAT32: a->value = *static_cast<float const*>(f.data); break;
            case nvinfer1::PluginFieldType::kFLOAT64: a->value = *static_cast<double const*>(f.data); break;
            default: throw std::invalid_argument(std::string("attribute '") + a->name + "' must be int32 or float32");
            }
            a->set = true;
        }
    }

    int32_t getInt(char const* name) const { return static_cast<int32_t>(at(name).value); }
    float getFloat(char const* name) const { return static_cast<float>(at(name).value); }
    //! Whether `name` came from a parsed collection rather than its default (a deserialized plugin has every field).
    bool isSet(char const* name) const { return at(name).set; }

    //! Fields for getFieldsToSerialize, under the declared names (storage owned by this object).
    nvinfer1::PluginFieldCollection const* serialize() noexcept
    {
        mInts.resize(mAttrs.size());
        mFloats.resize(mAttrs.size());
        mSer.clear();
        for (size_t i = 0; i < mAttrs.size(); ++i)
        {
            auto const& a = mAttrs[i];
            if (a.type == nvinfer1::PluginFieldType::kINT32)
            {
                mInts[i] = static_cast<int32_t>(a.value);
                mSer.emplace_back(a.name, &mInts[i], a.type, 1);
            }
            else
            {
                mFloats[i] = static_cast<float>(a.value);
                mSer.emplace_back(a.name, &mFloats[i], a.type, 1);
            }
        }
        mSerFc.nbFields = static_cast<int32_t>(mSer.size());
        mSerFc.fields = mSer.data();
        return &mSerFc;
    }

private:
    Attr* find(char const* name)
    {
        for (auto& a : mAttrs)
            if (name != nullptr && std::strcmp(a.name, name) == 0)
                return &a;
        return nullptr;
    }
    Attr const& at(char const* name) const
    {
        for (auto const& a : mAttrs)
            if (std::strcmp(a.name, name) == 0)
                return a;
        throw std::logic_error(std::string("undeclared attribute ") + name);
    }

    std::vector<Attr> mAttrs;
    std::vector<nvinfer1::PluginField> mDecl, mSer;
    std::vector<int32_t> mInts;
    std::vector<float> mFloats;
    mutable nvinfer1::PluginFieldCollection mDeclFc{};
    nvinfer1::PluginFieldCollection mSerFc{};
};

inline void require(bool ok, std::string const& what)
{
    if (!ok)
        throw std::invalid_argument(what);
}

inline int64_t volume(nvinfer1::Dims const& d, int32_t from = 0, int32_t to = -1)
{
    int64_t v = 1;
    for (int32_t i = from; i < (to < 0 ? d.nbDims : to); ++i)
        v *= d.d[i];
    return v;
}

} // namespace plugin
} // namespace mq
