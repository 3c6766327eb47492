// A stand-in for the libnvinfer entry points the plugin libraries call (getPluginRegistry, getLogger), built by
// plugins/check_build.sh as a `libnvinfer.so` in a temporary directory, so that tests/plugin_register_check.cpp can
// load libmq_trt_plugins_register.so the way polygraphy's `--plugins` does, without TensorRT.
// The registry keys creators by (name, version, namespace) as TensorRT's does (registering a taken key returns
// false), and its loadLibrary does what TensorRT documents: dlopen, `getCreators`, and nullptr with nothing
// registered if any of the library's plugins is registered already.
#include "NvInferRuntime.h"

#include <dlfcn.h>

#include <cstring>
#include <mutex>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
class RecordingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        std::lock_guard<std::mutex> lock(mMutex);
        mText += (severity == Severity::kWARNING ? "[W] " : severity <= Severity::kERROR ? "[E] " : "[I] ");
        mText += msg;
        mText += "\n";
    }
    std::string text()
    {
        std::lock_guard<std::mutex> lock(mMutex);
        return mText;
    }

private:
    std::mutex mMutex;
    std::string mText;
};

struct Entry
{
    IPluginCreatorV3One* creator;
    std::string ns;
    void* library; //!< loadLibrary's handle, null for registerCreator
};

class FakeRegistry : public IPluginRegistry
{
public:
#if NV_TENSORRT_MAJOR < 11
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override { return false; }
    IPluginCreator* const* getPluginCreatorList(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override { return false; }
#else
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept override
    {
        return getAllCreators(numCreators);
    }
#endif
    void setErrorRecorder(IErrorRecorder* const recorder) noexcept override { mRecorder = recorder; }
    IErrorRecorder* getErrorRecorder() const noexcept override { return mRecorder; }
    bool isParentSearchEnabled() const override { return true; }
    void setParentSearchEnabled(bool const) override {}

    PluginLibraryHandle loadLibrary(AsciiChar const* pluginPath) noexcept override
    {
        void* h = dlopen(pluginPath, RTLD_LAZY | RTLD_LOCAL);
        using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
        auto get = h != nullptr ? reinterpret_cast<GetCreators>(dlsym(h, "getCreators")) : nullptr;
        if (get == nullptr)
            return nullptr;
        int32_t n = 0;
        IPluginCreatorInterface* const* list = get(n);
        std::lock_guard<std::mutex> lock(mMutex);
        for (int32_t i = 0; i < n; ++i)
        {
            auto* c = v3(*list[i]);
            if (c == nullptr || findLocked(c->getPluginName(), c->getPluginVersion(), c->getPluginNamespace()) != nullptr)
                return nullptr;
        }
        for (int32_t i = 0; i < n; ++i)
            mEntries.push_back({v3(*list[i]), v3(*list[i])->getPluginNamespace(), h});
        return h;
    }
    void deregisterLibrary(PluginLibraryHandle handle) noexcept override
    {
        std::lock_guard<std::mutex> lock(mMutex);
        for (size_t i = mEntries.size(); i-- > 0;)
            if (mEntries[i].library == handle)
                mEntries.erase(mEntries.begin() + static_cast<std::ptrdiff_t>(i));
    }

    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const pluginNamespace) noexcept override
    {
        IPluginCreatorV3One* c = v3(creator);
        std::lock_guard<std::mutex> lock(mMutex);
        if (c == nullptr || pluginNamespace == nullptr
            || findLocked(c->getPluginName(), c->getPluginVersion(), pluginNamespace) != nullptr)
            return false;
        mEntries.push_back({c, pluginNamespace, nullptr});
        return true;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override
    {
        std::lock_guard<std::mutex> lock(mMutex);
        mList.clear();
        for (auto const& e : mEntries)
            mList.push_back(e.creator);
        *numCreators = static_cast<int32_t>(mList.size());
        return mList.empty() ? nullptr : mList.data();
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const pluginName, AsciiChar const* const pluginVersion,
        AsciiChar const* const pluginNamespace) noexcept override
    {
        std::lock_guard<std::mutex> lock(mMutex);
        return findLocked(pluginName, pluginVersion, pluginNamespace);
    }
    bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override
    {
        std::lock_guard<std::mutex> lock(mMutex);
        for (size_t i = 0; i < mEntries.size(); ++i)
            if (mEntries[i].creator == &creator)
            {
                mEntries.erase(mEntries.begin() + static_cast<std::ptrdiff_t>(i));
                return true;
            }
        return false;
    }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
    int32_t releasePluginResource(AsciiChar const*) noexcept override { return -1; }

    //! The namespace `creator` was registered under, or null.
    char const* namespaceOf(IPluginCreatorInterface const* creator)
    {
        std::lock_guard<std::mutex> lock(mMutex);
        for (auto const& e : mEntries)
            if (e.creator == creator)
                return e.ns.c_str();
        return nullptr;
    }

private:
    static IPluginCreatorV3One* v3(IPluginCreatorInterface& c)
    {
        return std::strcmp(c.getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0 ? static_cast<IPluginCreatorV3One*>(&c)
                                                                                   : nullptr;
    }
    IPluginCreatorV3One* findLocked(char const* name, char const* version, char const* ns) const
    {
        for (auto const& e : mEntries)
            if (std::strcmp(e.creator->getPluginName(), name) == 0 && std::strcmp(e.creator->getPluginVersion(), version) == 0
                && e.ns == (ns != nullptr ? ns : ""))
                return e.creator;
        return nullptr;
    }

    mutable std::mutex mMutex;
    std::vector<Entry> mEntries;
    mutable std::vector<IPluginCreatorInterface*> mList;
    IErrorRecorder* mRecorder{nullptr};
};

FakeRegistry& registry()
{
    static FakeRegistry* r = new FakeRegistry; // never destroyed: the libraries' creators may outlive any order
    return *r;
}
RecordingLogger& globalLogger()
{
    static RecordingLogger* l = new RecordingLogger;
    return *l;
}
} // namespace

extern "C"
{
__attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry();
}
__attribute__((visibility("default"))) ILogger* getLogger() noexcept
{
    return &globalLogger();
}
//! Test hooks: what the global logger received; the namespace a creator was registered under (null: not registered).
__attribute__((visibility("default"))) char const* fakeNvinferLog()
{
    static std::string copy;
    copy = globalLogger().text();
    return copy.c_str();
}
__attribute__((visibility("default"))) char const* fakeNvinferNamespaceOf(IPluginCreatorInterface const* creator)
{
    return registry().namespaceOf(creator);
}
//! For callers without the C++ interface (ctypes): 1 if a creator of that name, version and namespace is registered
//! and reports that name, else 0.
__attribute__((visibility("default"))) int fakeNvinferHas(char const* name, char const* version, char const* ns)
{
    auto* c = static_cast<IPluginCreatorV3One*>(registry().getCreator(name, version, ns));
    return c != nullptr && std::strcmp(c->getPluginName(), name) == 0 ? 1 : 0;
}
}
