// Entry points of the two plugin libraries CMake builds from the same sources (plugins/CMakeLists.txt):
//
//  libmq_trt_plugins.so: `getCreators` and `setLoggerFinder`, the pair TensorRT looks up in a library loaded with
//    IPluginRegistry::loadLibrary (`mq-deploy build` / `validate`, `trtexec --dynamicPlugins`; the same pair as TensorRT
//    OSS plugin/common/vfcCommon.cpp). It finds libmq_kernels.so beside it ($ORIGIN), so it cannot be one of the
//    plugin libraries serialized into a version-compatible engine (the copy TensorRT extracts has no neighbour). Loading
//    it with dlopen registers nothing, and loadLibrary fails if any of its plugins is registered already.
//
//  libmq_trt_plugins_register.so (compiled with MQ_PLUGINS_REGISTER_ON_LOAD=1): the same plugins, registered with
//    TensorRT's plugin registry when the library is loaded, for the tools that only dlopen a plugin library:
//    polygraphy's `--plugins` (ctypes.CDLL), `trtexec --staticPlugins`, `ctypes.CDLL(...)` in a script. It exports
//    neither entry point. Linked with `-z nodelete`: the registry keeps pointers to its creators, so dlclose must not
//    unmap it. Loading both libraries in one process keeps whichever registered first (a warning says so).
#include "hadamardPlugin.h"
#include "selectiveScanPlugin.h"
#include "stateUpdatePlugin.h"

#include <mutex>

#ifndef MQ_PLUGINS_REGISTER_ON_LOAD
#define MQ_PLUGINS_REGISTER_ON_LOAD 0
#endif

namespace mq
{
namespace plugin
{
namespace
{
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};
std::mutex gLoggerMutex;

//! The three creators (constructed on first use; may throw, so callers guard it).
nvinfer1::IPluginCreatorInterface* const* creators(int32_t& nbCreators)
{
    static SelectiveScanPluginCreator scan;
    static StateUpdatePluginCreator stateUpdate;
    static HadamardPluginCreator hadamard;
    static nvinfer1::IPluginCreatorInterface* const list[] = {&scan, &stateUpdate, &hadamard};
    nbCreators = 3;
    return list;
}
} // namespace

nvinfer1::ILogger* logger() noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    return gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
}

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    gLoggerFinder = finder;
}

#if MQ_PLUGINS_REGISTER_ON_LOAD
namespace
{
//! TensorRT's global logger (getLogger(): the builder's or runtime's, once one exists), asked at each message.
class GlobalLoggerFinder : public nvinfer1::ILoggerFinder
{
public:
    nvinfer1::ILogger* findLogger() override { return getLogger(); }
};

//! Registers every creator under the plugins' namespace; a creator of the same name / version / namespace already
//! there (libmq_trt_plugins.so loaded through loadLibrary in this process) is kept, with a warning.
void registerEach()
{
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr)
    {
        reportError("libmq_trt_plugins_register", "TensorRT's getPluginRegistry() returned null: nothing registered");
        return;
    }
    int32_t n = 0;
    nvinfer1::IPluginCreatorInterface* const* list = creators(n);
    for (int32_t i = 0; i < n; ++i)
    {
        auto* c = static_cast<nvinfer1::IPluginCreatorV3One*>(list[i]);
        std::string const what = std::string("registering ") + c->getPluginName() + " version " + c->getPluginVersion()
            + " in namespace " + c->getPluginNamespace();
        if (registry->registerCreator(*c, c->getPluginNamespace()))
            continue;
        if (registry->getCreator(c->getPluginName(), c->getPluginVersion(), c->getPluginNamespace()) != nullptr)
            report(nvinfer1::ILogger::Severity::kWARNING, what,
                "a creator of that name is registered already (libmq_trt_plugins.so loaded through loadLibrary?); "
                "TensorRT keeps that one");
        else
            reportError(what, "TensorRT's plugin registry refused it");
    }
}

struct RegisterOnLoad
{
    RegisterOnLoad() noexcept
    {
        guard("libmq_trt_plugins_register", 0, [] {
            // never destroyed: a plugin may log while TensorRT's objects are torn down at exit, after this library's
            setLoggerFinder(new GlobalLoggerFinder);
            registerEach();
            return 0;
        });
    }
};
RegisterOnLoad const gRegisterOnLoad; // constructed when the library is loaded
} // namespace
#endif

} // namespace plugin
} // namespace mq

#if !MQ_PLUGINS_REGISTER_ON_LOAD
extern "C"
{
__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    mq::plugin::setLoggerFinder(finder);
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    nbCreators = 0;
    return mq::plugin::guard("getCreators", static_cast<nvinfer1::IPluginCreatorInterface* const*>(nullptr),
        [&] { return mq::plugin::creators(nbCreators); });
}
}
#endif
