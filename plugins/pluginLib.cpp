// Entry points TensorRT looks up in a plugin library loaded with IPluginRegistry::loadLibrary or
// `trtexec --dynamicPlugins=libmq_trt_plugins.so`: for IPluginV3 creators these are `getCreators` and
// `setLoggerFinder` (the same pair as TensorRT OSS plugin/common/vfcCommon.cpp). polygraphy's `--plugins` only
// dlopens the library, which registers nothing (docs/deploy.md, "With polygraphy's command line").
#include "hadamardPlugin.h"
#include "selectiveScanPlugin.h"
#include "stateUpdatePlugin.h"

#include <mutex>

namespace mq
{
namespace plugin
{
namespace
{
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};
std::mutex gLoggerMutex;
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

} // namespace plugin
} // namespace mq

extern "C"
{
__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    mq::plugin::setLoggerFinder(finder);
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static mq::plugin::SelectiveScanPluginCreator scan;
    static mq::plugin::StateUpdatePluginCreator stateUpdate;
    static mq::plugin::HadamardPluginCreator hadamard;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&scan, &stateUpdate, &hadamard};
    nbCreators = 3;
    return creators;
}
}
